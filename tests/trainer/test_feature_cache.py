"""The feature cache: same loss as the image path, resumable extraction, stale caches refused."""

import functools

import jax
import numpy as np
import pytest

from ctl_jax.scene import steps as scene_steps
from ctl_jax.trainer import loop, sharding
from input_pipeline import feature_cache
from input_pipeline.readers.drops import DataError


def _features_config(smoke_config):
  smoke_config.data.source = "features"
  smoke_config.features.shard_size = 300  # several shards per kind
  return smoke_config


def test_cached_features_give_the_image_path_loss(smoke_config, tmp_path):
  config = _features_config(smoke_config)
  run = loop.setup(config, str(tmp_path))
  state = run.fresh_state()
  cache = run.feature_cache(state)
  images = next(run.task.train_batches(run.config, run.data, 5, None))
  cached = next(run.task.train_batches(run.config, run.data, 5, cache))
  for key in ("pair_index", "positive_index", "negative_index", "category"):
    np.testing.assert_array_equal(images[key], cached[key])  # the same triplets
  loss = lambda batch: jax.jit(functools.partial(
      scene_steps.triplet_loss, model=run.model, margin=0.5, reduction="sum"))(
          state.params, state, sharding.to_global(
              {k: v for k, v in batch.items() if k in run.task.step_inputs}, run.mesh))[0]
  image_loss, cached_loss = float(loss(images)), float(loss(cached))
  assert image_loss > 0
  assert cached_loss == pytest.approx(image_loss, rel=2e-3)  # float16 storage


def test_extraction_resumes_and_keeps_finished_shards(smoke_config, tmp_path):
  config = _features_config(smoke_config)
  run = loop.setup(config, str(tmp_path))
  state = run.fresh_state()
  cache = run.feature_cache(state)
  root = cache.root
  shards = sorted(root.glob("*.done"))
  assert len(shards) >= 4
  before = {p: p.stat().st_mtime_ns for p in root.glob("*.npy")}
  reference = cache.gather("scenes", "regions", np.arange(5))
  # A killed extraction: one shard never finished (its marker and files are missing).
  victim = shards[1].name[:-len(".done")]
  for p in root.glob(victim + ".*"):
    p.unlink()
  with pytest.raises(DataError, match="incomplete"):
    feature_cache.FeatureCache(root)
  cache = run.feature_cache(state)
  after = {p: p.stat().st_mtime_ns for p in root.glob("*.npy")}
  redone = {p for p in after if before.get(p) != after[p]}
  assert redone and all(p.name.startswith(victim) for p in redone)
  np.testing.assert_array_equal(cache.gather("scenes", "regions", np.arange(5)), reference)


def test_other_backbone_weights_use_another_cache(smoke_config, tmp_path):
  config = _features_config(smoke_config)
  run = loop.setup(config, str(tmp_path))
  first = run.feature_cache(run.fresh_state())
  other = run.fresh_state()
  other = other.replace(frozen_params=jax.tree.map(lambda x: x * 1.5, other.frozen_params))
  second = run.feature_cache(other)
  assert first.root != second.root
  assert not np.allclose(first.gather("products", "global", np.arange(3)),
                         second.gather("products", "global", np.arange(3)))


def test_features_need_a_frozen_backbone(smoke_config, tmp_path):
  config = _features_config(smoke_config)
  config.model.freeze_backbone = False
  run = loop.setup(config, str(tmp_path))
  with pytest.raises(ValueError, match="freeze_backbone"):
    run.feature_cache(run.fresh_state())
