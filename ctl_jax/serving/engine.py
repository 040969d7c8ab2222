"""Ranking for the recommend command and the service: many photos answered by one model call
and one search per category.

Scene flow (Kang et al. 2019): a scene gives one ranking query per category (its attention
depends on the category); each category is ranked exactly by inner product (ranker.py), or by the
export's ANN index when it has one (ann.py; `exact=True` bypasses it). The backbone and the
global and local heads run once per photo, the attention once per (photo, category) pair, and
each category's catalogue is searched once with the queries of every pair that asks for it. With
several categories the lists are blended: categories take turns, best first distance first, each
giving at most its quota.

Product flow (Li et al. 2020, KDD): a product-task model predicts the product's category, expands
it to the categories that complete it (co-occurrence in the training outfits), ranks each of
those by style distance and blends them, quotas proportional to the co-occurrence.

`serve` runs one batch per micro-batch of concurrent requests; `recommend` a batch of one, so
both rank exactly alike. Shapes are padded to powers of two (photos, pairs, queries per
category), so a long-running service compiles a handful of programs, not one per batch.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from ctl_jax.serving import catalogue as catalogue_lib
from ctl_jax.serving import ranker
from ctl_jax.serving.errors import ServingError, UnknownCategoryError


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
                  constant: float, k: int, chunk_rows: int | None = None,
                  exact: bool = False) -> list[Item]:
  """The k nearest products of `category` to one augmented query: by the export's ANN index
  when it has one and `exact` is False, else exactly (`Catalogue.searcher`, kept loaded).
  `chunk_rows` streams an exact ranker built for this call (implies exact)."""
  r = (cat.searcher(category, exact) if chunk_rows is None
       else ranker.Ranker(cat.embeddings(category), chunk_rows=chunk_rows))
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


def product_items(cat: catalogue_lib.Catalogue, style: np.ndarray, weights: dict[str, float],
                  k: int, exclude: set[str] = frozenset(), exact: bool = False) -> list[Item]:
  """Blend of the categories in `weights` ranked by squared L2 distance to `style`, leaving out
  the signatures in `exclude` (`exact`: bypass the export's ANN index)."""
  available = {c: w for c, w in weights.items()
               if c in cat.manifest["categories"] and cat.manifest["categories"][c]["count"]}
  if not available:
    raise ServingError(f"none of the categories {list(weights)} has products in {cat.root}")
  query, const = ranker.l2_query(np.asarray(style)[None])
  lists = {}
  for c in available:
    n = min(k + len(exclude), cat.manifest["categories"][c]["count"])
    ranked = rank_category(cat, c, np.asarray(query[0]), float(const[0]), n, exact=exact)
    lists[c] = [it for it in ranked if it.signature not in exclude][:k]
  order = sorted(available, key=lambda c: -available[c])
  return blend(lists, k, proportional_quotas(available, k), order)


@dataclasses.dataclass
class Request:
  """One photo to complete. `categories` are validated names ([]: every category)."""

  image: np.ndarray  # [S, S, 3] model input, preprocessed as in training
  categories: list[str] = dataclasses.field(default_factory=list)
  k: int = 10
  quota: int = 0
  name: str = ""  # the photo's file name: a product query leaves out the product it shows


@dataclasses.dataclass
class Result:
  items: list[Item]
  attention: dict[str, np.ndarray]  # scene model: [h, w] attention over the photo per category
  predicted: str | None = None  # product model: the photo's predicted category
  complementary: dict[str, float] | None = None  # product model: categories ranked, weights


def bucket(n: int) -> int:
  """The power of two >= n that a dimension of n is padded to."""
  return 1 << max(n - 1, 0).bit_length()


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """`x` [m, ...] padded to n rows with copies of its first row."""
  if len(x) >= n:
    return x
  return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)])


class SceneEngine:
  """Ranks scene photos against a scene model's exported catalogue (see module doc)."""

  task = "scene"

  def __init__(self, predictor, cat: catalogue_lib.Catalogue, exact: bool = False):
    if cat.manifest["kind"] != "scene_hybrid":
      raise catalogue_lib.ManifestMismatch(f"{cat.root} holds {cat.manifest['kind']} "
                                           "embeddings; a scene query needs the scene model's "
                                           "export")
    cat.check_model(predictor.step, predictor.fingerprint)
    self.predictor, self.cat, self.exact = predictor, cat, exact
    self.categories = list(predictor.categories)
    self.stocked = [c for c in cat.categories if cat.manifest["categories"][c]["count"] > 0]

  @property
  def config(self):
    return self.predictor.config

  def validate(self, categories: list[str] | None, k: int, quota: int = 0) -> list[str]:
    """The category names a request asks for (resolved; [] for all); ServingError naming what
    is wrong (unknown or empty category, k or quota out of range)."""
    names = resolve_categories(categories, self.categories)
    if quota < 0:
      raise ServingError(f"quota={quota}: must be 0 (ceil(k / categories)) or more")
    check_k(self.cat, names or self.stocked, k, explicit=bool(names))
    return names

  def run(self, requests: list[Request]) -> list[Result]:
    """The ranked products and attention maps of every request (validated ones)."""
    asked = [r.categories or self.stocked for r in requests]
    image_of = np.asarray([i for i, names in enumerate(asked) for _ in names], np.int32)
    ids = {c: i for i, c in enumerate(self.categories)}
    category = np.asarray([ids[c] for names in asked for c in names], np.int32)
    images = np.stack([r.image for r in requests]).astype(np.float32)
    n = len(category)
    out = self.predictor.pairs(pad_rows(images, bucket(len(images))),
                               pad_rows(image_of, bucket(n)), pad_rows(category, bucket(n)))
    query, const, attention = out["query"][:n], out["constant"][:n], out["attention"][:n]
    pair_names = [c for names in asked for c in names]
    pair_k = [min(r.k, self.cat.manifest["categories"][c]["count"])
              for r, names in zip(requests, asked) for c in names]
    ranked = rank_pairs(self.cat, pair_names, query, const, pair_k, self.exact)
    results, p = [], 0
    for r, names in zip(requests, asked):
      lists = dict(zip(names, ranked[p:p + len(names)]))
      maps = dict(zip(names, attention[p:p + len(names)]))
      p += len(names)
      if len(names) == 1:
        items = lists[names[0]]
      else:
        order = sorted(names, key=lambda c: lists[c][0].distance)
        items = blend(lists, r.k, uniform_quotas(names, r.k, r.quota), order)
      results.append(Result(items, maps))
    return results


def rank_pairs(cat: catalogue_lib.Catalogue, categories: list[str], queries: np.ndarray,
               constants: np.ndarray, ks: list[int], exact: bool = False) -> list[list[Item]]:
  """The ks[j] nearest products of categories[j] to the augmented query j: one search per
  category, over all the queries that ask for it."""
  out: list[list[Item]] = [[] for _ in categories]
  for name in dict.fromkeys(categories):
    rows = np.asarray([j for j, c in enumerate(categories) if c == name])
    k = min(bucket(max(ks[j] for j in rows)), cat.manifest["categories"][name]["count"])
    m = bucket(len(rows))
    dist, ids = cat.searcher(name, exact).nearest(
        pad_rows(np.asarray(queries[rows], np.float32), m),
        pad_rows(np.asarray(constants[rows], np.float32), m), k)
    meta = cat.products(name)
    for at, j in enumerate(rows):
      out[j] = [Item(name, str(meta["signature"][i]), str(meta["image"][i]), float(d))
                for d, i in zip(dist[at][:ks[j]], ids[at][:ks[j]]) if i >= 0]
  return out


class ProductEngine:
  """Ranks product photos against a product model's exported catalogue (the KDD flow)."""

  task = "product"

  def __init__(self, predictor, cat: catalogue_lib.Catalogue, exact: bool = False,
               max_categories: int = 4):
    if cat.manifest["kind"] != "style_l2":
      raise catalogue_lib.ManifestMismatch(f"{cat.root} holds {cat.manifest['kind']} "
                                           "embeddings; a product query needs the product model's "
                                           "export")
    cat.check_model(predictor.step, catalogue_lib.model_fingerprint(predictor.config,
                                                                    predictor.categories))
    self.predictor, self.cat, self.exact = predictor, cat, exact
    self.categories = list(predictor.categories)
    self.max_categories = max_categories

  @property
  def config(self):
    return self.predictor.config

  def validate(self, categories: list[str] | None, k: int, quota: int = 0) -> list[str]:
    """The category names a request asks for (resolved; [] for the complementary ones of the
    predicted category); ServingError naming an unknown or empty category or a bad k."""
    names = resolve_categories(categories, self.categories)
    check_k(self.cat, names, k, explicit=False)
    return names

  def run(self, requests: list[Request]) -> list[Result | ServingError]:
    """Per request, its Result, or the ServingError that only this request meets."""
    images = np.stack([r.image for r in requests]).astype(np.float32)
    out = self.predictor.embed(pad_rows(images, bucket(len(images))))
    results = []
    for j, r in enumerate(requests):
      predicted = self.categories[int(np.argmax(out["probs"][j]))]
      if r.categories:
        weights = {c: 1.0 for c in r.categories}
      else:
        weights = dict(self.predictor.complementary_categories(predicted,
                                                               top_k=self.max_categories))
      exclude = {os.path.splitext(os.path.basename(r.name))[0]} if r.name else set()
      try:
        items = product_items(self.cat, out["style"][j], weights, r.k, exclude,
                                        self.exact)
      except ServingError as e:  # e.g. no complementary category has products: this request's
        results.append(e)
        continue
      results.append(Result(items, {}, predicted, weights))
    return results
