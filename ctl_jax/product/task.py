"""The product-based task (Li et al., KDD 2020) as the trainer sees it (`config.task='product'`):
given one item (a crop of an outfit collage, the CTL format), recommend compatible items of other
categories. The interface is `ctl_jax/task.py`; the loop, checkpoints, sharding and logging are
the trainer's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from ctl_jax.product import evaluation as product_eval
from ctl_jax.product import model as product_model
from ctl_jax.product import steps as product_steps
from ctl_jax.product.model import ProductModel
from ctl_jax.trainer import sharding
from ctl_jax.trainer.state import TrainState
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ConcatImages, ImageRows
from input_pipeline.product import dataset as product_data
from input_pipeline.product import pipeline as product_pipeline
from input_pipeline.product.sampler import ProductTripletSampler, negative_rule


class ProductTask:
  """Style embeddings and a category classifier for items of outfits (the CTL format)."""

  name = "product"
  config_base = "configs.product_default"
  example_unit = "tuples"
  step_inputs = ("anchor", "positive", "negative", "anchor_global", "positive_global",
                 "negative_global", "anchor_category", "positive_category", "negative_category",
                 "proxy_outfits")
  id_keys = ("anchor_index", "positive_index", "negative_index")
  region_kinds = ()  # the feature cache keeps global vectors only
  checkpoint_fields = ("model.backbone", "model.global_stage", "model.global_pool",
                       "model.embed_dim", "model.style_hidden",
                       "model.classifier_hidden", "model.freeze_backbone", "loss.name",
                       "optimizer.name")
  selection_metric = "r@10"

  def load_data(self, config: ml_collections.ConfigDict) -> product_data.ProductDataset:
    return product_data.load_product_dataset(config.data, fitb=config.eval.fitb)

  def checkpoint_meta(self, data: product_data.ProductDataset) -> dict:
    """What serving needs besides the weights: co-occurrence of categories in training outfits
    (for complementary categories) and the number of outfit proxies."""
    outfits = np.zeros(len(data.categories), np.int64)
    groups = product_data.items_by_outfit(data.train)
    for o in data.train_outfits:
      outfits[np.unique(data.train.item_category[groups[o]])] += 1
    return {"categories": data.categories, "cooccurrence": data.cooccurrence().tolist(),
            "category_outfits": outfits.tolist(),
            "num_proxies": len(data.train.outfits)}

  def signatures(self, data: product_data.ProductDataset, ids: dict) -> dict[str, list[str]]:
    """Item keys (collage signature and box) of the training rows `ids` (entries `id_keys`)."""
    return {role: [data.train.item_keys[i] for i in np.ravel(ids[f"{role}_index"])]
            for role in ("anchor", "positive", "negative")}

  def create_model(self, config: ml_collections.ConfigDict, meta: dict) -> ProductModel:
    """With one outfit proxy per training outfit when the loss uses proxies."""
    proxies = meta["num_proxies"] if config.loss.name == "proxy" else 0
    return product_model.create_model(config.model, len(meta["categories"]), proxies)

  def train_step(self, config: ml_collections.ConfigDict, model: ProductModel,
                 schedule: Callable) -> Callable:
    """The pure step function, with the loss settings bound."""
    loss = config.loss
    if loss.name not in product_steps.STYLE_LOSSES:
      raise ValueError(f"loss.name={loss.name!r}; choose from {list(product_steps.STYLE_LOSSES)}")
    settings = dict(margin=loss.margin, reduction=loss.reduction,
                    contrastive_margin=loss.contrastive_margin, temperature=loss.temperature)
    return functools.partial(product_steps.train_step, model=model, loss_name=loss.name,
                             settings=settings, category_weight=loss.category_weight,
                             schedule=schedule)

  def sampler(self, config: ml_collections.ConfigDict,
              data: product_data.ProductDataset) -> ProductTripletSampler:
    loss = config.loss
    return ProductTripletSampler(
        data, seed=config.seed, negatives=negative_rule(loss), num_negatives=loss.num_negatives,
        num_proxies=loss.num_proxies if loss.name == "proxy" else 0)

  def train_batches(self, config: ml_collections.ConfigDict, data: product_data.ProductDataset,
                    start_step: int, cache: FeatureCache | None) -> Iterator[dict]:
    """Host batches from `start_step` on: item crops, or cached features when `cache` is given."""
    c = config
    sampler = self.sampler(c, data)
    if sampler.num_unusable:
      logging.warning("%d training pairs have no possible negative and are skipped",
                      sampler.num_unusable)
    hosts = dict(global_batch=c.input.batch_size, start_step=start_step,
                 process_index=jax.process_index(), process_count=jax.process_count(),
                 prefetch=c.input.prefetch)
    if cache is None:
      return product_pipeline.train_images(
          sampler, product_data.item_images(data.train), product_data.crops_of(data.train),
          image_size=c.input.image_size, normalization=c.input.normalization,
          num_parallel_calls=c.input.num_parallel_calls, **hosts)
    return product_pipeline.train_features(sampler, cache,
                                           cache.rows("items", data.train.item_keys), **hosts)

  def cache_items(self, data: product_data.ProductDataset) -> dict:
    """Every item crop of both splits (the whole training split, whatever data.train_fraction
    keeps, so that runs on subsets share one cache)."""
    splits = (data.train, data.test)
    sources = [product_data.outfit_images(d) for d in splits]
    ids = np.concatenate([data.train.item_outfit, len(sources[0]) + data.test.item_outfit])
    return {"items": ([k for d in splits for k in d.item_keys],
                      ImageRows(ConcatImages(sources), ids.astype(np.int64)),
                      np.concatenate([product_data.crops_of(d) for d in splits]))}

  def evaluate(self, config: ml_collections.ConfigDict, data: product_data.ProductDataset,
               model: ProductModel, mesh: jax.sharding.Mesh, state: TrainState,
               cache: FeatureCache | None, untrained_state: TrainState | None = None,
               split: str = "test") -> dict:
    embed = product_eval.ItemEmbedder(model, mesh, sharding.shardings_of(state), config,
                                      cache=cache)
    return product_eval.evaluate(state, embed, data, config, untrained_state=untrained_state,
                                 split=split)

  def table_columns(self, results: dict) -> tuple[str, ...]:
    return product_eval.TABLE_COLUMNS
