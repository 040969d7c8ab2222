"""Backbone outputs: the stage of the regions and of the global vector, and hypercolumns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctl_jax.nn import backbones


def _outputs(region_stage, global_stage, multiscale, images):
  net = backbones.create_backbone("resnet_tiny", "float32", region_stage, global_stage,
                                  multiscale)
  variables = net.init(jax.random.key(0), images)
  return net.apply(variables, images)


def test_stages_and_hypercolumns():
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  plain = _outputs(3, 5, False, images)
  # resnet_tiny: stage outputs 16, 32, 64, 128 channels on grids 16, 8, 4, 2 at 64 px.
  assert plain["regions"].shape == (2, 8, 8, 32) and plain["global"].shape == (2, 128)
  multi = _outputs(3, 5, True, images)
  assert multi["regions"].shape == (2, 8, 8, 16 + 32)
  assert multi["global"].shape == (2, 16 + 32 + 64 + 128)
  # Same parameters: the last stage's part of each hypercolumn is the plain output.
  np.testing.assert_allclose(multi["regions"][..., 16:], plain["regions"], rtol=1e-6)
  np.testing.assert_allclose(multi["global"][:, -128:], plain["global"], rtol=1e-6)
  # Stage 2's part: its 16x16 map averaged over each 2x2 block of the 8x8 grid.
  stage2 = _outputs(2, 2, False, images)["regions"]
  blocks = stage2.reshape(2, 8, 2, 8, 2, 16).mean(axis=(2, 4))
  np.testing.assert_allclose(multi["regions"][..., :16], blocks, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(multi["global"][:, :16], jnp.mean(stage2, axis=(1, 2)), rtol=1e-5)


def test_unknown_stage_is_refused():
  with pytest.raises(ValueError, match="model.region_stage=6"):
    backbones.create_backbone("resnet_tiny", "float32", 6, 5)


def test_mean_std_pooling_by_hand():
  images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
  net = backbones.create_backbone("resnet_tiny", "float32", 3, 2, global_pool="mean_std")
  variables = net.init(jax.random.key(0), images)
  out = net.apply(variables, images)
  stage2 = np.asarray(_outputs(2, 2, False, images)["regions"], np.float64)  # same parameters
  flat = stage2.reshape(2, -1, 16)
  assert out["global"].shape == (2, 32)
  np.testing.assert_allclose(out["global"][:, :16], flat.mean(1), rtol=1e-5, atol=1e-6)
  # The standard deviation, kept off 0 (a dead channel) by an epsilon of 1e-6 on the variance.
  np.testing.assert_allclose(out["global"][:, 16:], np.sqrt(flat.var(1) + 1e-6), rtol=1e-3,
                             atol=1e-5)
  with pytest.raises(ValueError, match="model.global_pool='max'"):
    backbones.create_backbone("resnet_tiny", "float32", 3, 2, global_pool="max")


def test_spatial_pyramid_pooling_by_hand():
  # A 4 x 4 map of 1 channel: the whole map, then its quadrants (row-major), mean then std each.
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  out = np.asarray(backbones.pool(jnp.asarray(x), "mean_std_2x2"))
  assert out.shape == (1, 10)
  quadrants = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
  want = [7.5, np.sqrt(np.var(np.arange(16)) + 1e-6)]
  for q in quadrants:
    want += [np.mean(q), np.sqrt(np.var(q) + 1e-6)]  # each quadrant: var 4.25, wherever it is
  np.testing.assert_allclose(out[0], want, rtol=1e-5)
  # Where things are changes the vector; the whole map's statistics alone cannot tell.
  flipped = np.asarray(backbones.pool(jnp.asarray(x[:, ::-1]), "mean_std_2x2"))
  np.testing.assert_allclose(flipped[0, :2], out[0, :2], rtol=1e-5)
  assert not np.allclose(flipped[0, 2:], out[0, 2:])
