"""`run.py recommend`: rank an exported catalogue for a scene (or a product) and report it.

Scene flow (Kang et al. 2019): the scene gives one ranking query per category (its attention
depends on the category); each category is ranked exactly by inner product (ranker.py). With
several categories the lists are blended: categories take turns, best first distance first, each
giving at most its quota.

Product flow (Li et al. 2020, KDD): a product-task model predicts the product's category, expands
it to the categories that complete it (co-occurrence in the training outfits), ranks each of
those by style distance and blends them, quotas proportional to the co-occurrence.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from ctl_jax.serving import catalogue as catalogue_lib
from ctl_jax.serving import html_report, ranker
from ctl_jax.serving.errors import ServingError, UnknownCategoryError
from input_pipeline import storage

if TYPE_CHECKING:  # annotations only: the predictor is imported when a command runs
  import ml_collections

  from ctl_jax.serving.scene_predictor import ScenePredictor


@dataclasses.dataclass(frozen=True)
class Item:
  category: str
  signature: str
  image: str
  distance: float


def resolve_categories(values: list[str] | None, known: list[str]) -> list[str]:
  """The category names asked for, in order, without repeats: each value is a name (names may
  hold commas: "Handbags, Wallets & Cases"), or else a comma-separated list of names.

  Raises:
    UnknownCategoryError: a value that is neither, listing the valid names.
  """
  out: list[str] = []
  for value in values or []:
    if value in known:
      names = [value]
    else:
      names = [part.strip() for part in value.split(",") if part.strip()]
      unknown = [n for n in names if n not in known]
      if unknown or not names:
        raise UnknownCategoryError(
            f"unknown category {value.strip()!r}; valid categories: {'; '.join(known)} (give "
            f"one --category per name when a name holds a comma)")
    out += [n for n in names if n not in out]
  return out


def uniform_quotas(categories: list[str], k: int, quota: int = 0) -> dict[str, int]:
  """Every category may give `quota` products (default: ceil(k / categories))."""
  q = quota if quota > 0 else math.ceil(k / max(len(categories), 1))
  return {c: q for c in categories}


def proportional_quotas(weights: dict[str, float], k: int) -> dict[str, int]:
  """Quotas summing to k in proportion to `weights` (largest remainders get the rest)."""
  total = sum(weights.values())
  if not weights or total <= 0:
    return {c: 0 for c in weights}
  exact = {c: k * w / total for c, w in weights.items()}
  quotas = {c: int(math.floor(v)) for c, v in exact.items()}
  rest = sorted(weights, key=lambda c: (quotas[c] - exact[c], list(weights).index(c)))
  for c in rest[:k - sum(quotas.values())]:
    quotas[c] += 1
  return quotas


def blend(lists: dict[str, list[Item]], k: int, quotas: dict[str, int],
          order: list[str]) -> list[Item]:
  """Up to k items: categories in `order` take turns, each giving its next best item, until it
  has given its quota or has none left. When every quota is used up and fewer than k items are
  out, the remaining items fill in by distance."""
  taken = {c: 0 for c in order}
  out: list[Item] = []
  while len(out) < k:
    progressed = False
    for c in order:
      if len(out) < k and taken[c] < min(quotas.get(c, 0), len(lists.get(c, []))):
        out.append(lists[c][taken[c]])
        taken[c] += 1
        progressed = True
    if not progressed:
      break
  if len(out) < k:  # quotas too small for k: fill with the best of what is left
    rest = sorted((it for c in order for it in lists.get(c, [])[taken[c]:]),
                  key=lambda it: it.distance)
    out += rest[:k - len(out)]
  return out


def rank_category(cat: catalogue_lib.Catalogue, category: str, query: np.ndarray,
                  constant: float, k: int, chunk_rows: int | None = None) -> list[Item]:
  """The k nearest products of `category` to one augmented query (exact)."""
  r = ranker.Ranker(cat.embeddings(category), chunk_rows=chunk_rows)
  dist, ids = r.nearest(np.asarray(query)[None], np.asarray([constant]), k)
  meta = cat.products(category)
  return [Item(category, str(meta["signature"][i]), str(meta["image"][i]), float(d))
          for d, i in zip(dist[0], ids[0])]


def check_k(cat: catalogue_lib.Catalogue, categories: list[str], k: int, explicit: bool) -> None:
  if k < 1:
    raise ServingError(f"-k {k}: ask for at least one product")
  for c in categories:
    n = cat.check_category(c)["count"]
    if explicit and k > n:
      raise ServingError(f"-k {k} but category {c!r} has only {n} products in {cat.root}")


def scene_flow(predictor: ScenePredictor, cat: catalogue_lib.Catalogue, image_path: str,
               categories: list[str] | None, k: int, quota: int = 0,
               chunk_rows: int | None = None) -> tuple[list[Item], dict[str, np.ndarray]]:
  """(ranked items, {category: attention [h, w]}) of one scene image."""
  if cat.manifest["kind"] != "scene_hybrid":
    raise catalogue_lib.ManifestMismatch(f"{cat.root} holds {cat.manifest['kind']} embeddings; "
                                         "a scene query needs the scene model's export")
  cat.check_model(predictor.step, predictor.fingerprint)
  categories = resolve_categories(categories, predictor.categories)
  explicit = bool(categories)
  categories = categories or [c for c in cat.categories
                              if cat.manifest["categories"][c]["count"] > 0]
  check_k(cat, categories, k, explicit)
  image = load_model_input(image_path, predictor.config)
  ids = [predictor.categories.index(c) for c in categories]
  queries, consts, attention = predictor.scene(image, ids)
  lists = {c: rank_category(cat, c, queries[j], consts[j],
                            min(k, cat.manifest["categories"][c]["count"]), chunk_rows)
           for j, c in enumerate(categories)}
  if len(categories) == 1:
    items = lists[categories[0]]
  else:
    order = sorted(categories, key=lambda c: lists[c][0].distance)
    items = blend(lists, k, uniform_quotas(categories, k, quota), order)
  return items, {c: attention[j] for j, c in enumerate(categories)}


def product_flow(config: ml_collections.ConfigDict | None, workdir: str,
                 cat: catalogue_lib.Catalogue, image_path: str, k: int,
                 categories: list[str] | None = None,
                 max_categories: int = 4) -> tuple[list[Item], str, dict[str, float]]:
  """(ranked items, predicted category, complementary categories with weights) of a product
  (`config` None: the checkpoint's)."""
  from ctl_jax.serving import product_predictor  # restores checkpoints: imported when needed
  html_report.open_image(image_path)  # a clear error before any model work
  predictor = product_predictor.restore_product_predictor(workdir, config)
  if cat.manifest["kind"] != "style_l2":
    raise catalogue_lib.ManifestMismatch(f"{cat.root} holds {cat.manifest['kind']} embeddings; "
                                         "a product query needs the product model's export")
  cat.check_model(predictor.step,
                  catalogue_lib.model_fingerprint(predictor.config, predictor.categories))
  images = predictor.load_items([image_path])
  out = predictor.embed(images)
  probs = out["probs"][0]
  predicted = predictor.categories[int(np.argmax(probs))]
  categories = resolve_categories(categories, predictor.categories)
  if categories:
    weights = {c: 1.0 for c in categories}
  else:
    weights = dict(predictor.complementary_categories(predicted, top_k=max_categories))
  # The query item itself is no recommendation when it is in the catalogue (file named by sig).
  exclude = {os.path.splitext(os.path.basename(image_path))[0]}
  return (product_items(cat, out["style"][0], weights, k, exclude), predicted, weights)


def product_items(cat: catalogue_lib.Catalogue, style: np.ndarray, weights: dict[str, float],
                  k: int, exclude: set[str] = frozenset()) -> list[Item]:
  """Blend of the categories in `weights` ranked by squared L2 distance to `style`, leaving out
  the signatures in `exclude`."""
  available = {c: w for c, w in weights.items()
               if c in cat.manifest["categories"] and cat.manifest["categories"][c]["count"]}
  if not available:
    raise ServingError(f"none of the categories {list(weights)} has products in {cat.root}")
  query, const = ranker.l2_query(np.asarray(style)[None])
  lists = {}
  for c in available:
    n = min(k + len(exclude), cat.manifest["categories"][c]["count"])
    ranked = rank_category(cat, c, np.asarray(query[0]), float(const[0]), n)
    lists[c] = [it for it in ranked if it.signature not in exclude][:k]
  order = sorted(available, key=lambda c: -available[c])
  return blend(lists, k, proportional_quotas(available, k), order)


def load_model_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """[S, S, 3] model input of an image file, preprocessed as in training."""
  import tensorflow as tf

  from input_pipeline import preprocess
  html_report.open_image(path)  # names the file when it is missing or not an image
  return preprocess.load_image(tf.constant(path), tf.constant(preprocess.FULL_IMAGE, tf.float32),
                               config.input.image_size, config.input.normalization).numpy()


def format_items(items: list[Item]) -> str:
  width = max([8] + [len(it.category) for it in items])
  lines = [f"{'rank':>4}  {'category':<{width}}  {'distance':>9}  signature"]
  lines += [f"{i:>4}  {it.category:<{width}}  {it.distance:>9.4f}  {it.signature}"
            for i, it in enumerate(items, 1)]
  return "\n".join(lines)


def write_report(out: str, title: str, image_path: str, items: list[Item],
                 attention: dict[str, np.ndarray]) -> dict[str, str]:
  query = html_report.open_image(image_path)
  overlays = {c: html_report.attention_overlay(query, a) for c, a in attention.items()}
  rows = [{"rank": i, **dataclasses.asdict(it)} for i, it in enumerate(items, 1)]
  return html_report.write(out, title, query, overlays, rows)


def recommend(workdir: str, *, scene: str | None = None, product: str | None = None,
              categories: list[str] | None = None, k: int = 10, quota: int = 0,
              embeddings: str | None = None, out: str | None = None,
              config: ml_collections.ConfigDict | None = None,
              predictor: ScenePredictor | None = None) -> dict:
  """The whole command: rank, print, write the report. Returns the items and report paths.

  Args:
    predictor: an already restored `ScenePredictor` of `workdir` (default: restore it).
  """
  if (scene is None) == (product is None):
    raise ServingError("pass exactly one of --scene IMG or --product IMG")
  html_report.open_image(scene or product)  # a clear error before any checkpoint is restored
  cat = catalogue_lib.Catalogue(embeddings or storage.join(workdir, "export"))
  out = out or storage.join(workdir, "recommend")
  from ctl_jax.serving import scene_predictor  # restores checkpoints: imported when a command runs
  if scene is not None:
    predictor = predictor or scene_predictor.restore_scene_predictor(workdir, config)
    items, attention = scene_flow(predictor, cat, scene, categories, k, quota)
    title, query = f"Complete the look: {os.path.basename(scene)}", scene
  else:
    items, predicted, weights = product_flow(config, workdir, cat, product, k, categories)
    print(f"predicted category: {predicted}; complementary: "
          + ", ".join(f"{c} ({w:.2f})" for c, w in weights.items()))
    title, query, attention = f"Complete the look for a {predicted}", product, {}
  print(format_items(items))
  paths = write_report(out, title, query, items, attention)
  print(f"wrote {paths['html']} and {paths['contact_sheet']}")
  return {"items": items, **paths}
