"""Frozen-backbone feature extraction into the on-disk cache (see input_pipeline/feature_cache.py).

Each unique image a task needs (its `cache_items`, {kind: (keys, paths, crops)}: for the scene
task every product and every (scene, crop) of the train and test pairs, for the product task every
item crop) is run through the backbone once; kinds in the task's `region_kinds` also keep the
region map. Shards are assigned round-robin to processes and each
process runs its shards on its own devices, so extraction scales over hosts without collectives.
The cache folder is named by a fingerprint of the backbone weights, the preprocessing and the
items, so a changed backbone or dataset never reads stale features.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from ctl_jax.trainer import sharding
from ctl_jax.trainer.state import TrainState
from input_pipeline import batching, feature_cache, storage
from input_pipeline.storage import Path

VERIFY_CHOICES = ("checksum", "size")  # features.verify: how finished shards are checked


def weights_hash(variables: Any) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()[:16]


def backbone_variables(state: TrainState) -> dict:
  """Host copy of the backbone's variables (the cache is only valid for a frozen backbone)."""
  return jax.device_get({"params": {"backbone": state.frozen_params["backbone"]},
                         "batch_stats": {"backbone": state.batch_stats["backbone"]}})


def cache_root(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
               items: dict) -> tuple[Path, feature_cache.Manifest]:
  """Folder and manifest of the cache for this backbone, preprocessing and dataset."""
  if not config.model.freeze_backbone:
    raise ValueError("data.source='features' needs model.freeze_backbone=True: a trained "
                     "backbone changes its features every step")
  description = {"backbone": config.model.backbone,
                 "weights": weights_hash(backbone_variables(state)),
                 "image_size": config.input.image_size,
                 "normalization": config.input.normalization, "dtype": config.model.dtype,
                 "region_stage": config.model.get("region_stage", 4),
                 "global_stage": config.model.get("global_stage", 5),
                 "multiscale": config.model.get("multiscale", False),
                 "global_pool": config.model.get("global_pool", "mean")}
  keys = {kind: items[kind][0] for kind in items}
  fp = feature_cache.fingerprint(description, keys)
  base = storage.path(config.data.feature_dir or storage.join(workdir, "features"))
  manifest = feature_cache.Manifest(fingerprint=fp, description=description,
                                    shard_size=config.features.shard_size, keys=keys)
  return base / fp, manifest


def extract_features(config: ml_collections.ConfigDict, workdir: str, model: nn.Module,
                     state: TrainState, items: dict, *,
                     region_kinds: Sequence[str]) -> feature_cache.FeatureCache:
  """Fills the cache of `items` (a task's `cache_items`) with the backbone of `model` at
  `state`, skipping finished shards, and returns it for reading.

  Kinds in `region_kinds` also keep the region map. Finished shards are verified first
  (`config.features.verify`: 'checksum', the default, or 'size'; see feature_cache); a damaged
  one is reported and extracted again, and a damaged or stale index.json rewritten."""
  root, manifest = cache_root(config, workdir, state, items)
  verify = config.features.verify
  if jax.process_index() == 0:
    feature_cache.repair_index(root, manifest)
  fields = {kind: ("global", "regions") if kind in region_kinds else ("global",) for kind in items}
  mine = [(kind, s) for kind in items for s in range(manifest.num_shards(kind))
          if s % jax.process_count() == jax.process_index()]
  todo = list(feature_cache.shards_to_extract(root, manifest, mine, fields=fields,
                                              checksum=verify == "checksum"))
  if todo:
    _extract_shards(config, model, state, items, root, manifest, todo, region_kinds)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"feature cache {manifest.fingerprint}")
  return feature_cache.FeatureCache(root)


@functools.lru_cache(maxsize=8)
def backbone_forward(model: nn.Module, mesh: jax.sharding.Mesh) -> Callable:
  """The jitted backbone pass of extraction: batch split over `mesh`, features gathered.

  Cached per (model, mesh), so repeated extractions in one process compile once."""
  return jax.jit(lambda v, x: model.apply(v, x, method="features"),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
                 out_shardings=sharding.replicated(mesh))


def _extract_shards(config, model, state, items, root: Path, manifest, todo,
                    region_kinds) -> None:
  if not (root / feature_cache.INDEX).exists():  # process 0 wrote it in extract_features
    feature_cache.write_index(root, manifest)
  mesh = sharding.make_mesh(jax.local_devices())  # each process runs its own shards
  variables = jax.device_put(backbone_variables(state), sharding.replicated(mesh))
  forward = backbone_forward(model, mesh)
  batch = config.features.batch_size
  sharding.global_batch_size_check(batch, mesh, field="features.batch_size")
  size = manifest.shard_size
  total = sum(min(size, len(items[k][0]) - s * size) for k, s in todo)
  logging.info("extracting %d images into %s (%d shards)", total, root, len(todo))
  with tqdm.tqdm(total=total, unit="img", desc="features", disable=jax.process_index() != 0,
                 mininterval=2.0) as bar:
    for kind, shard in todo:
      _, images, crops = items[kind]
      lo, hi = shard * size, min((shard + 1) * size, len(images))
      data = batching.eval_images(
          images[lo:hi], None if crops is None else crops[lo:hi], {}, global_batch=batch,
          image_size=config.input.image_size, normalization=config.input.normalization)
      writer = feature_cache.ShardWriter(root, kind, shard, hi - lo)
      for b in data.as_numpy_iterator():
        out = forward(variables, jax.device_put(b["image"], sharding.batch_sharded(mesh)))
        real = int(b["_mask"].sum())  # padding rows come last
        writer.append("global", np.asarray(out["global"][:real], np.float16))
        if kind in region_kinds:
          writer.append("regions", np.asarray(out["regions"][:real], np.float16))
        bar.update(real)
      writer.commit()
