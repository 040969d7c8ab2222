"""In-batch negatives: the mask, the loss by hand, and agreement with the plain triplet loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctl_jax.scene import losses
from ctl_jax.scene import model as scene_model
from ctl_jax.scene import steps as scene_steps
from ctl_jax.trainer import optimizer, sharding
from ctl_jax.trainer import state as train_state
from input_pipeline.readers import stl
from input_pipeline.scene import sampler as scene_sampler


def test_mask_by_hand():
  category = jnp.array([0, 0, 1])
  positive = jnp.array([10, 11, 12])
  scene_products = jnp.array([[10, 20, -1], [11, -1, -1], [12, 13, -1]])
  # Candidates: the three positives, then one negative per row.
  cand_index = jnp.array([10, 11, 12, 20, 21, 13])
  cand_category = jnp.array([0, 0, 1, 0, 0, 1])
  mask = losses.in_batch_negative_mask(category, positive, scene_products, cand_category,
                                       cand_index)
  expected = [
      [False, True, False, False, True, False],  # 20 is in row 0's scene
      [True, False, False, True, True, False],
      [False, False, False, False, False, False],  # 13 is in row 2's scene: no negative left
  ]
  np.testing.assert_array_equal(mask, expected)


def test_a_product_repeated_in_the_batch_is_one_negative():
  category = jnp.array([0, 0])
  positive = jnp.array([10, 11])
  scene_products = jnp.array([[10], [11]])
  # Product 30 is row 0's and row 1's sampled negative, and 11 is also row 0's negative.
  cand_index = jnp.array([10, 11, 30, 30, 11])
  cand_category = jnp.zeros(5, jnp.int32)
  mask = losses.in_batch_negative_mask(category, positive, scene_products, cand_category,
                                       cand_index)
  np.testing.assert_array_equal(mask, [[False, True, True, False, False],
                                       [True, False, True, False, False]])


def test_in_batch_hinge_by_hand():
  d_pos = jnp.array([0.5, 1.0])
  d_cand = jnp.array([[0.4, 0.9, 2.0], [0.0, 1.1, 0.5]])
  valid = jnp.array([[True, True, False], [False, True, True]])
  # Valid terms: row 0: 0.3, 0 | row 1: 0.1, 0.7
  assert losses.in_batch_triplet_hinge(d_pos, d_cand, valid, 0.2, "sum") == pytest.approx(1.1)
  assert losses.in_batch_triplet_hinge(d_pos, d_cand, valid, 0.2, "mean") == pytest.approx(1.1 / 4)


def test_in_batch_loss_equals_triplet_loss_when_only_own_negatives_are_valid(smoke_config):
  """Rows of distinct categories: the in-batch candidates reduce to each row's own negatives,
  scored through the ranking query instead of the hybrid distance: same loss."""
  model = scene_model.create_model(smoke_config.model, num_categories=8)
  tx, _ = optimizer.make_optimizer(smoke_config.optimizer, 10)
  size = smoke_config.input.image_size
  mesh = sharding.make_mesh()
  state = train_state.create_train_state(model, tx, jax.random.PRNGKey(0), size, mesh)
  rng = np.random.default_rng(0)
  b, n = 8, 2
  batch = {"scene": rng.normal(size=(b, size, size, 3)).astype(np.float32),
           "positive": rng.normal(size=(b, size, size, 3)).astype(np.float32),
           "negative": rng.normal(size=(b, n, size, size, 3)).astype(np.float32),
           "category": np.arange(b, dtype=np.int32),
           "positive_index": np.arange(b, dtype=np.int32),
           "negative_index": (100 + np.arange(b * n, dtype=np.int32)).reshape(b, n),
           "scene_products": np.arange(b, dtype=np.int32)[:, None]}
  batch = sharding.to_global(batch, mesh)
  loss = lambda in_batch: jax.jit(functools.partial(
      scene_steps.triplet_loss, model=model, margin=1.5, reduction="sum", in_batch=in_batch))(
          state.params, state, batch)
  plain, (_, plain_metrics) = loss(False)
  in_batch, (_, metrics) = loss(True)
  assert int(metrics["loss_terms"]) == int(plain_metrics["loss_terms"]) == b * n
  assert float(plain) > 0
  np.testing.assert_allclose(in_batch, plain, rtol=1e-5)


def test_scene_product_table_lists_every_product_of_each_scene(stl_root):
  data = stl.read_stl(stl_root)
  table = scene_sampler.scene_product_table(data)
  for s in range(len(data.scenes)):
    expected = sorted(data.pair_product[data.pair_scene == s])
    row = table[s]
    assert sorted(row[row >= 0]) == expected
