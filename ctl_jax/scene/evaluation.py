"""Held-out evaluation of the scene-based model next to its baselines.

For each test (scene, positive, category), the scene is cropped exactly as in training (the
positive cut out). Every product is embedded once and every test scene gives one ranking query
v = f_s + q_c, so a product's hybrid distance is 2 - v.f_p (see `distances.ranking_query`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ctl_jax import metrics, oracle
from ctl_jax.metrics import Scorer
from ctl_jax.scene import steps as scene_steps
from ctl_jax.scene.model import SceneModel
from ctl_jax.trainer import inference
from ctl_jax.trainer.config_fields import ConfigError
from ctl_jax.trainer.state import TrainState
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows
from input_pipeline.scene.dataset import SceneDataset
from input_pipeline.scene.sampler import ScenePairs


def protocol(num_candidates: int, ks: Sequence[int]) -> str:
  return (f"scene-based CTL (Kang et al. 2019). Per held-out (scene, positive, category) with the "
          f"positive cut out of the scene: 'auc' = fraction of sampled same-category negatives "
          f"farther than the positive; 'hr@K' (K in {list(ks)}) = positive in the top K among "
          f"itself + {num_candidates - 1} same-category negatives sampled once (fixed seed) from "
          f"the whole catalogue, excluding the scene's own products (fewer when a category is "
          f"smaller; a query with none is left out of every metric and counted in "
          f"'num_without_negatives'); '*_unseen' = the same over the queries whose positive "
          f"occurs in no training pair (cold start, 'num_unseen' of them); 'category_*' = the "
          f"same ranking among all products of the category that occur in the split. Ties "
          f"count half (auc) or in expectation (hr). The same candidates are used for every "
          f"method in 'baselines'; 'oracle' knows each scene's latent style (generated data "
          f"only) and ranks the products of that style first: the ceiling.")


class Candidates:
  """Which products each query of a split is ranked against: sampled, and the whole category."""

  def __init__(self, ds: SceneDataset, split: ScenePairs, num_candidates: int, seed: int):
    data = ds.stl
    self.rows = split.pairs
    self.positive = data.pair_product[self.rows]
    self.category = data.pair_category[self.rows]
    self.scene = data.pair_scene[self.rows]
    self.unseen = ds.product_popularity()[self.positive] == 0
    # Products each scene contains: never negatives of that scene.
    own: dict[int, set[int]] = {}
    for s, p in zip(data.pair_scene, data.pair_product):
      own.setdefault(int(s), set()).add(int(p))
    self.excluded = [own[int(s)] for s in self.scene]
    rng = np.random.default_rng(seed)
    by_cat = [np.flatnonzero(data.product_category == c) for c in range(len(data.categories))]
    k = num_candidates - 1
    self.sampled = np.zeros((len(self.rows), k), np.int64)
    self.sampled_valid = np.zeros((len(self.rows), k), bool)
    for i, (c, excl) in enumerate(zip(self.category, self.excluded)):
      pool = by_cat[c][~np.isin(by_cat[c], list(excl))]
      pick = rng.permutation(pool)[:k]
      self.sampled[i, :len(pick)] = pick
      self.sampled_valid[i, :len(pick)] = True
    split_products = np.unique(self.positive)  # sorted, as `not_excluded` expects
    self.category_products = [split_products[data.product_category[split_products] == c]
                              for c in range(len(data.categories))]

  def not_excluded(self, queries: np.ndarray, products: np.ndarray) -> np.ndarray:
    """[len(queries), len(products)] mask: False where a product is in the query's scene."""
    valid = np.ones((len(queries), len(products)), bool)
    for j, i in enumerate(queries):
      own = np.fromiter(self.excluded[i], np.int64)
      at = np.minimum(np.searchsorted(products, own), len(products) - 1)
      valid[j, at[products[at] == own]] = False
    return valid


def embedding_scorer(queries: np.ndarray, products: np.ndarray) -> Scorer:
  """Hybrid distance 2 - v.f_p from ranking queries and product embeddings."""

  def score(rows, cols):
    q = queries[rows].astype(np.float64)
    if cols.ndim == 1:
      return 2.0 - q @ products[cols].astype(np.float64).T
    return 2.0 - np.einsum("md,mkd->mk", q, products[cols].astype(np.float64))

  return score


def popularity_scorer(popularity: np.ndarray) -> Scorer:
  """Most frequent training products first, whatever the scene."""
  return lambda rows, cols: np.broadcast_to(-popularity[cols], (len(rows),) + cols.shape[-1:])


def random_scorer(seed: int) -> Scorer:
  rng = np.random.default_rng(seed)
  return lambda rows, cols: rng.random((len(rows),) + cols.shape[-1:])


def oracle_scorer(latents: dict, ds: SceneDataset, cands: Candidates) -> Scorer:
  """The generator's latent styles: products of the query scene's style first."""
  scene_style = oracle.styles(latents["scene_style"], ds.stl.scenes)[cands.scene]
  return oracle.style_scorer(scene_style, oracle.styles(latents["product_style"], ds.stl.products))


def _sampled_metrics(d_pos: np.ndarray, d_neg: np.ndarray, valid: np.ndarray,
                     ks: Sequence[int], suffix: str = "") -> dict[str, float]:
  out = {f"auc{suffix}": metrics.auc(d_pos, d_neg, valid)}
  out.update({f"hr@{k}{suffix}": v for k, v in metrics.hit_rates(d_pos, d_neg, ks, valid).items()})
  return out


def ranking_metrics(score: Scorer, cands: Candidates, ks: Sequence[int]) -> dict[str, float]:
  """auc, hr@K over sampled candidates, for all queries and for the unseen ones (`*_unseen`),
  and the same over whole categories."""
  rows = np.arange(len(cands.rows))
  d_pos = score(rows, cands.positive[:, None])[:, 0]
  d_neg = np.concatenate([score(rows[i:i + 4096], cands.sampled[i:i + 4096])
                          for i in range(0, len(rows), 4096)])
  out = _sampled_metrics(d_pos, d_neg, cands.sampled_valid, ks)
  u = cands.unseen
  out.update(_sampled_metrics(d_pos[u], d_neg[u], cands.sampled_valid[u], ks, "_unseen"))
  # Whole category: each category's queries against all its products of the split at once;
  # the mean over queries weighs each category by its queries that have a negative.
  weighted: dict[str, float] = {}
  total = 0
  for c, products in enumerate(cands.category_products):
    q = np.flatnonzero(cands.category == c)
    valid = cands.not_excluded(q, products)
    n = len(q) - metrics.without_negatives(valid)
    if n == 0:
      continue
    d_all = score(q, products)
    part = {"category_auc": metrics.auc(d_pos[q], d_all, valid)}
    part.update({f"category_hr@{k}": v for k, v in
                 metrics.hit_rates(d_pos[q], d_all, ks, valid).items()})
    for key, v in part.items():
      weighted[key] = weighted.get(key, 0.0) + v * n
    total += n
  out.update({k: v / total for k, v in weighted.items()})
  return out


class SceneEmbedder:
  """Ranking queries of scenes and embeddings of products, batched and sharded, from images or,
  when a feature cache is given, from cached backbone features (heads only)."""

  def __init__(self, model: SceneModel, mesh: jax.sharding.Mesh, state_sharding: Any,
               config: ml_collections.ConfigDict, cache: FeatureCache | None = None):
    self.config, self.cache = config, cache
    apply = lambda fn: inference.ShardedApply(fn, model, mesh, state_sharding)
    if cache is None:
      self._scene = apply(scene_steps.scene_query_step)
      self._product = apply(scene_steps.product_embedding_step)
    else:
      self._scene = apply(scene_steps.scene_query_from_features_step)
      self._product = apply(scene_steps.product_embedding_from_features_step)

  def products(self, state: TrainState, ds: SceneDataset) -> np.ndarray:
    """[num_products, D] embeddings of every catalogue product."""
    if self.cache is None:
      products = ImageRows(ds.product_images, np.arange(len(ds.stl.products)))
      return self.product_images(state, products)
    batches = inference.cached_batches(self.cache, "products",
                                       self.cache.rows("products", ds.stl.products),
                                       self.config.eval.batch_size)
    return self._product.over(state, batches, len(ds.stl.products), ["embedding"])["embedding"]

  def product_images(self, state: TrainState, images: ImageRows | list[str]) -> np.ndarray:
    """[len(images), D] embeddings of whole product images (ImageRows, or one file per row;
    needs an embedder without cache)."""
    batches = inference.image_batches(self.config, images, None)
    return self._product.over(state, batches, len(images), ["embedding"])["embedding"]

  def queries(self, state: TrainState, ds: SceneDataset, split: ScenePairs) -> np.ndarray:
    """[len(split.pairs), D] ranking queries of the split's cropped scenes."""
    rows = split.pairs
    category = ds.stl.pair_category[rows]
    if self.cache is None:
      scenes = ImageRows(ds.scene_images, ds.stl.pair_scene[rows])
      batches = inference.image_batches(self.config, scenes, split.crops,
                                        {"category": category})
    else:
      batches = inference.cached_batches(
          self.cache, "scenes", self.cache.rows("scenes", ds.scene_keys(split)),
          self.config.eval.batch_size, fields=("global", "regions"),
          extras={"category": category})
    return self._scene.over(state, batches, len(rows), ["query"])["query"]


def evaluate(state: TrainState, embedder: SceneEmbedder, ds: SceneDataset,
             config: ml_collections.ConfigDict, untrained_state: TrainState | None = None,
             split: str = "test") -> dict:
  """The model's metrics on `split` ('test' or 'validation') and, on the test split with
  `config.eval.baselines`, its baselines (random, popularity, untrained, and the oracle when
  the generator's latents are found: see `ctl_jax/oracle.py`)."""
  pairs = ds.split(split)
  if len(pairs.pairs) == 0:
    fraction = "test_fraction" if split == "test" else "validation_fraction"
    raise ConfigError(f"the {split} split is empty: raise data.{fraction} or add scenes")
  ks = tuple(config.eval.ks)
  cands = Candidates(ds, pairs, config.eval.num_candidates, config.eval.seed)

  def model_metrics(s):
    queries = embedder.queries(s, ds, pairs)
    return ranking_metrics(embedding_scorer(queries, embedder.products(s, ds)), cands, ks)

  results = model_metrics(state)
  results.update(step=int(jax.device_get(state.step)), num_queries=len(cands.rows),
                 num_unseen=int(cands.unseen.sum()),
                 num_without_negatives=metrics.without_negatives(cands.sampled_valid),
                 num_products=len(ds.stl.products),
                 protocol=protocol(config.eval.num_candidates, ks))
  if config.eval.baselines and split == "test":
    results["baselines"] = {
        "random": ranking_metrics(random_scorer(config.eval.seed), cands, ks),
        "popularity": ranking_metrics(popularity_scorer(ds.product_popularity()), cands, ks),
    }
    if untrained_state is not None:
      results["baselines"]["untrained"] = model_metrics(untrained_state)
    latents = oracle.load_latents(config.eval.latents, config.data.root)
    if latents is not None and "scene_style" in latents:
      results["baselines"]["oracle"] = ranking_metrics(oracle_scorer(latents, ds, cands),
                                                       cands, ks)
  return results


def table_columns(results: dict) -> list[str]:
  """Every metric of `results`, in order (auc, hr@K, then their whole-category versions)."""
  return [k for k, v in results.items() if isinstance(v, float)]
