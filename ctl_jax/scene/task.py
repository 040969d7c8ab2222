"""The scene-based task (Kang et al. 2019) as the trainer sees it.

A task gives the trainer its data, model, step function, input batches, feature-cache items and
evaluation; the loop, checkpoints, sharding and logging in `train.py` are shared by all tasks.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from ctl_jax.scene import evaluation as scene_eval
from ctl_jax.scene import steps as scene_steps
from ctl_jax.trainer import state as train_state
from input_pipeline import feature_cache
from input_pipeline.scene import pipeline as scene_pipeline
from input_pipeline.scene import dataset as scene_data
from input_pipeline.scene import sampler as scene_sampler
from input_pipeline.image_source import ImageRows


class SceneTask:
  """Rank products of a category for a scene (the STL format)."""

  name = "scene"
  # What the jitted step reads from a host batch (the rest is bookkeeping for logs).
  step_inputs = ("scene", "positive", "negative", "scene_global", "scene_regions",
                 "positive_global", "negative_global", "category", "positive_index",
                 "negative_index", "scene_products")
  region_kinds = ("scenes",)  # feature-cache kinds that also keep the region map
  # Host-batch entries that name a row's images (for the report of a non-finite step).
  id_keys = ("scene_index", "positive_index", "negative_index")
  # Config fields that shape the train state: a checkpoint written with other values is refused.
  checkpoint_fields = ("model.backbone", "model.embed_dim", "model.global_hidden",
                       "model.local_hidden", "model.attention_hidden", "model.freeze_backbone",
                       "optimizer.name")

  def load_data(self, config) -> scene_data.SceneDataset:
    return scene_data.load_scene_dataset(config.data)

  def categories(self, data: scene_data.SceneDataset) -> list[str]:
    return data.categories

  def checkpoint_meta(self, data: scene_data.SceneDataset) -> dict:
    """Task-specific facts saved with every checkpoint, besides the config and categories."""
    return {}
  def signatures(self, data: scene_data.SceneDataset, ids: dict) -> dict[str, list[str]]:
    """Image signatures of the rows `ids` (entries `id_keys` of a host or global batch)."""
    return {"scene": [data.stl.scenes[i] for i in np.ravel(ids["scene_index"])],
            "positive": [data.stl.products[i] for i in np.ravel(ids["positive_index"])],
            "negative": [data.stl.products[i] for i in np.ravel(ids["negative_index"])]}

  def create_model(self, config, data: scene_data.SceneDataset):
    return train_state.create_model(config.model, len(data.categories))

  def train_step(self, config, model, schedule):
    """The pure step function, with the task's settings bound."""
    return functools.partial(scene_steps.train_step, model=model, margin=config.loss.margin,
                             reduction=config.loss.reduction, schedule=schedule,
                             in_batch=config.loss.in_batch_negatives)

  def train_batches(self, run, start_step: int, cache: feature_cache.FeatureCache | None):
    """Host batches from `start_step` on: images, or cached features when `cache` is given."""
    c, data = run.config, run.data
    sampler = scene_sampler.TripletSampler(data.stl, data.train, seed=c.seed,
                                      num_negatives=c.loss.num_negatives)
    if sampler.num_unusable:
      logging.warning("%d training pairs have no possible negative (their category has one "
                      "product) and are skipped", sampler.num_unusable)
    hosts = dict(global_batch=c.input.batch_size, start_step=start_step,
                 process_index=jax.process_index(), process_count=jax.process_count(),
                 prefetch=c.input.prefetch)
    if cache is None:
      return scene_pipeline.train_triplets(
          sampler, data.scene_images, data.product_images, image_size=c.input.image_size,
          normalization=c.input.normalization, num_parallel_calls=c.input.num_parallel_calls,
          **hosts)
    scene_rows = np.full(len(data.stl), -1, np.int64)
    scene_rows[data.train.pairs] = cache.rows("scenes", data.scene_keys(data.train))
    product_rows = cache.rows("products", data.stl.products)
    return scene_pipeline.train_features(sampler, cache, scene_rows, product_rows, **hosts)

  def cache_items(self, data: scene_data.SceneDataset):
    """Per cache kind: (keys, ImageRows, crops or None) of every image the model needs:
    every product whole, and every (scene, crop) of the train and test pairs."""
    products = (list(data.stl.products),
                ImageRows(data.product_images, np.arange(len(data.stl.products))), None)
    keys, scenes, crops = [], [], []
    seen = set()
    for split in (data.train, data.test):
      for key, pair, crop in zip(data.scene_keys(split), split.pairs, split.crops):
        if key not in seen:
          seen.add(key)
          keys.append(key)
          scenes.append(data.stl.pair_scene[pair])
          crops.append(crop)
    scenes = ImageRows(data.scene_images, np.asarray(scenes, np.int64))
    return {"products": products, "scenes": (keys, scenes, np.asarray(crops, np.float32))}

  def evaluate(self, run, state, cache, untrained_state=None) -> dict:
    embedder = scene_eval.Embedder(run.model, run.mesh, jax.tree.map(lambda x: x.sharding, state),
                                 run.config, cache=cache)
    return scene_eval.evaluate(state, embedder, run.data, run.config,
                             untrained_state=untrained_state)

  def format_table(self, results: dict) -> str:
    return scene_eval.format_table(results)
