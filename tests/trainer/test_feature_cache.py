"""The feature cache: same loss as the image path, resumable extraction, stale caches refused."""

import functools
import os

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


def _small_cache(root, shard_size=4, num=10):
  """A cache written by ShardWriter without a model: scenes with global and region rows."""
  manifest = feature_cache.Manifest("test", {}, shard_size,
                                    {"scenes": [f"s{i}" for i in range(num)]})
  feature_cache.write_index(root, manifest)
  rows = np.random.default_rng(0).standard_normal((num, 2, 3, 5)).astype(np.float16)
  for s in range(manifest.num_shards("scenes")):
    part = rows[s * shard_size:(s + 1) * shard_size]
    writer = feature_cache.ShardWriter(root, "scenes", s, len(part))
    for lo in range(0, len(part), 3):  # streamed in batches
      writer.append("global", part[lo:lo + 3, 0, 0])
      writer.append("regions", part[lo:lo + 3])
    writer.commit()
  return manifest, rows


def test_shards_record_size_and_checksum_and_old_shards_are_checked_by_size(tmp_path, caplog):
  manifest, rows = _small_cache(tmp_path)
  cache = feature_cache.FeatureCache(tmp_path, checksum=True)
  np.testing.assert_array_equal(cache.gather("scenes", "regions", np.arange(10)), rows)
  cache.close()
  shards = [("scenes", s) for s in range(3)]
  fields = {"scenes": ("global", "regions")}
  assert feature_cache.shards_to_extract(tmp_path, manifest, shards, fields=fields) == {}
  # A cache from before the integrity records: empty markers, kept and checked by size.
  for marker in tmp_path.glob("*.done"):
    marker.write_text("")
  assert feature_cache.shards_to_extract(tmp_path, manifest, shards, fields=fields) == {}
  victim = tmp_path / "scenes-00001.regions.npy"
  os.truncate(victim, victim.stat().st_size - 1)
  (tmp_path / "scenes-00002.global.npy").unlink()
  with pytest.raises(DataError, match="scenes-00001.regions.npy: .*truncated"):
    feature_cache.FeatureCache(tmp_path)
  todo = feature_cache.shards_to_extract(tmp_path, manifest, shards, fields=fields)
  assert sorted(todo) == [("scenes", 1), ("scenes", 2)]
  assert "scenes-00002.global.npy: missing" in todo[("scenes", 2)]
  assert "re-extracting scenes-00001" in caplog.text
  assert sorted(p.name for p in tmp_path.glob("*.done")) == ["scenes-00000.done"]


def test_a_file_cut_under_a_running_reader_is_an_error_naming_it(tmp_path):
  _small_cache(tmp_path)
  cache = feature_cache.FeatureCache(tmp_path)
  cache.gather("scenes", "regions", np.arange(10))
  os.truncate(tmp_path / "scenes-00002.regions.npy", 128 + 60 + 10)  # row 1 half there
  with pytest.raises(DataError, match="scenes-00002.regions.npy: row 1 is cut short"):
    cache.gather("scenes", "regions", np.arange(10))
  cache.close()
  (tmp_path / feature_cache.INDEX).write_text("[]")
  with pytest.raises(DataError, match="index.json: damaged feature-cache index"):
    feature_cache.FeatureCache(tmp_path)
