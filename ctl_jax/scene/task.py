"""The scene-based task (Kang et al. 2019) as the trainer sees it (`config.task='scene'`): rank
the products of a category for a scene photo (the STL format). The interface is
`ctl_jax/task.py`; the loop, checkpoints, sharding and logging are the trainer's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from ctl_jax.scene import evaluation as scene_eval
from ctl_jax.scene import steps as scene_steps
from ctl_jax.scene.model import SceneModel, create_model
from ctl_jax.trainer import sharding
from ctl_jax.trainer.state import TrainState
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows
from input_pipeline.scene import pipeline as scene_pipeline
from input_pipeline.scene import sampler as scene_sampler
from input_pipeline.scene.dataset import SceneDataset, load_scene_dataset


class SceneTask:
  """Rank products of a category for a scene (the STL format)."""

  name = "scene"
  config_base = "configs.default"
  example_unit = "triplets"
  step_inputs = ("scene", "positive", "negative", "scene_global", "scene_regions",
                 "positive_global", "negative_global", "category", "positive_index",
                 "negative_index", "scene_products")
  id_keys = ("scene_index", "positive_index", "negative_index")
  region_kinds = ("scenes",)
  checkpoint_fields = ("model.backbone", "model.region_stage", "model.global_stage",
                       "model.multiscale", "model.global_pool", "model.embed_dim",
                       "model.global_hidden", "model.local_hidden", "model.attention_hidden",
                       "model.freeze_backbone", "optimizer.name")
  selection_metric = "hr@10"

  def load_data(self, config: ml_collections.ConfigDict) -> SceneDataset:
    return load_scene_dataset(config.data)

  def checkpoint_meta(self, data: SceneDataset) -> dict:
    return {"categories": data.categories}

  def create_model(self, config: ml_collections.ConfigDict, meta: dict) -> SceneModel:
    return create_model(config.model, len(meta["categories"]))

  def train_step(self, config: ml_collections.ConfigDict, model: SceneModel,
                 schedule: Callable) -> Callable:
    """The pure step function, with the loss settings bound."""
    return functools.partial(scene_steps.train_step, model=model, margin=config.loss.margin,
                             reduction=config.loss.reduction, schedule=schedule,
                             in_batch=config.loss.in_batch_negatives)

  def train_batches(self, config: ml_collections.ConfigDict, data: SceneDataset,
                    start_step: int, cache: FeatureCache | None) -> Iterator[dict]:
    """Host batches from `start_step` on: images, or cached features when `cache` is given."""
    c = config
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

  def cache_items(self, data: SceneDataset) -> dict:
    """Every product whole, and every (scene, crop) of the train, validation and test pairs."""
    products = (list(data.stl.products),
                ImageRows(data.product_images, np.arange(len(data.stl.products))), None)
    keys, scenes, crops = [], [], []
    seen = set()
    for split in (data.train, data.validation, data.test):
      for key, pair, crop in zip(data.scene_keys(split), split.pairs, split.crops):
        if key not in seen:
          seen.add(key)
          keys.append(key)
          scenes.append(data.stl.pair_scene[pair])
          crops.append(crop)
    scenes = ImageRows(data.scene_images, np.asarray(scenes, np.int64))
    return {"products": products, "scenes": (keys, scenes, np.asarray(crops, np.float32))}

  def signatures(self, data: SceneDataset, ids: dict) -> dict[str, list[str]]:
    return {"scene": [data.stl.scenes[i] for i in np.ravel(ids["scene_index"])],
            "positive": [data.stl.products[i] for i in np.ravel(ids["positive_index"])],
            "negative": [data.stl.products[i] for i in np.ravel(ids["negative_index"])]}

  def evaluate(self, config: ml_collections.ConfigDict, data: SceneDataset, model: SceneModel,
               mesh: jax.sharding.Mesh, state: TrainState, cache: FeatureCache | None,
               untrained_state: TrainState | None = None, split: str = "test") -> dict:
    embedder = scene_eval.SceneEmbedder(model, mesh, sharding.shardings_of(state), config,
                                        cache=cache)
    return scene_eval.evaluate(state, embedder, data, config, untrained_state=untrained_state,
                               split=split)

  def table_columns(self, results: dict) -> list[str]:
    return scene_eval.table_columns(results)
