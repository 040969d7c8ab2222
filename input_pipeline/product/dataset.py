"""The product-based dataset (CTL format, Li et al. 2020) as the trainer sees it, and its scene_sampler.

Items are crops of outfit collages. Training pairs follow the paper: an anchor and a positive are
two items of one outfit of different categories; a negative is an item of the positive's
category from another outfit ("category-restricted"), or any item from another outfit ("random",
the paper's comparison). Triplets can also be read from `triplet_train.tsv`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import ml_collections
import numpy as np

from input_pipeline.readers import ctl
from input_pipeline.scene import sampler as scene_sampler
from input_pipeline.readers.drops import DataError, DropReport

NEGATIVE_RULES = ("category", "random")


def crops_of(data: ctl.CtlData) -> np.ndarray:
  """[num_items, 4] normalised (left, top, right, bottom) crops of CTL (x, y, w, h) boxes."""
  x, y, w, h = data.item_box.T
  return np.clip(np.stack([x, y, x + w, y + h], axis=1), 0.0, 1.0).astype(np.float32)


def paths_of(data: ctl.CtlData) -> list[str]:
  """The collage file of every item."""
  return [data.image_paths[data.outfits[o]] for o in data.item_outfit]


def items_by_outfit(data: ctl.CtlData) -> list[np.ndarray]:
  """Item ids of each outfit, in file order."""
  order = np.argsort(data.item_outfit, kind="stable")
  bounds = np.searchsorted(data.item_outfit[order], np.arange(len(data.outfits) + 1))
  return [order[bounds[o]:bounds[o + 1]] for o in range(len(data.outfits))]


def category_cooccurrence(data: ctl.CtlData, outfits: np.ndarray | None = None) -> np.ndarray:
  """[C, C] int64: how many outfits hold an item of category i and another item of category j
  (the diagonal counts outfits with two or more items of one category)."""
  num = len(data.categories)
  counts = np.zeros((num, num), np.int64)
  groups = items_by_outfit(data)
  for o in (range(len(groups)) if outfits is None else outfits):
    cats = np.bincount(data.item_category[groups[o]], minlength=num)
    present = cats > 0
    counts += np.outer(present, present).astype(np.int64)
    counts[np.diag_indices(num)] -= present & (cats < 2)  # one item does not pair with itself
  return counts


@dataclasses.dataclass
class ProductDataset:
  root: str
  train: ctl.CtlData
  test: ctl.CtlData
  train_outfits: np.ndarray  # ids of the training outfits kept by data.train_fraction
  train_fraction: float
  file_triplets: np.ndarray | None  # [T, 3] (anchor, positive, negative) train items, or None

  @property
  def categories(self) -> list[str]:
    return self.train.categories

  def train_items(self) -> np.ndarray:
    """Items of the kept training outfits."""
    return np.flatnonzero(np.isin(self.train.item_outfit, self.train_outfits))

  def cooccurrence(self) -> np.ndarray:
    return category_cooccurrence(self.train, self.train_outfits)

  def summary(self) -> str:
    triplet_text = ("sampled on the fly" if self.file_triplets is None
                    else f"{len(self.file_triplets)} from triplet_train.tsv")
    return (f"CTL {self.root}: {len(self.categories)} categories; train {len(self.train_outfits)}"
            f"/{len(self.train.outfits)} outfits (fraction {self.train_fraction}), "
            f"{len(self.train_items())} items; test {len(self.test.outfits)} outfits, "
            f"{len(self.test)} items; triplets {triplet_text}; train {self.train.drops.summary()}; "
            f"test {self.test.drops.summary()}")


def load_product_dataset(data_config: ml_collections.ConfigDict) -> ProductDataset:
  """Reads raw_train.tsv and raw_test.tsv (and triplet_train.tsv when asked) under data.root."""
  if data_config.format != "ctl":
    raise ValueError(f"data.format={data_config.format!r}: the product task reads 'ctl' folders")
  if not data_config.root:
    raise ValueError("data.root is empty: pass --config.data.root=DIR (a CTL-format folder)")
  if not 0.0 < data_config.train_fraction <= 1.0:
    raise ValueError(f"data.train_fraction={data_config.train_fraction} must be in (0, 1]")
  read = lambda split, categories=None: ctl.read_ctl(
      data_config.root, split, images_dir=data_config.images_dir, strict=data_config.strict,
      categories=categories)
  train = read("train")
  test = read("test", train.categories)
  for split, data in (("train", train), ("test", test)):
    if len(data.drops):
      logging.warning("%s raw_%s.tsv: %s", data_config.root, split, data.drops.summary())
  keep = np.array([data_config.train_fraction >= 1.0 or scene_sampler.is_test_signature(
      sig, data_config.train_fraction, salt="ctl-train-subset") for sig in train.outfits])
  kept = np.flatnonzero(keep).astype(np.int32)
  if len(kept) == 0:
    raise DataError(f"{data_config.root}: data.train_fraction={data_config.train_fraction} "
                    f"keeps none of the {len(train.outfits)} training outfits")
  if data_config.triplets not in ("sample", "file"):
    raise ValueError(f"data.triplets={data_config.triplets!r}; choose 'sample' or 'file'")
  file_triplets = None
  if data_config.triplets == "file":
    file_triplets = read_triplet_indices(Path(data_config.root) / "triplet_train.tsv", train,
                                         keep, DropReport(strict=data_config.strict))
  return ProductDataset(root=str(data_config.root), train=train, test=test, train_outfits=kept,
                        train_fraction=float(data_config.train_fraction),
                        file_triplets=file_triplets)


def read_triplet_indices(path: str | os.PathLike, train: ctl.CtlData, keep_outfit: np.ndarray,
                         report: DropReport) -> np.ndarray:
  """[T, 3] item ids of the triplets of `path` whose anchor outfit is kept.

  Triplets naming an item missing from raw_train.tsv, or breaking the paper's rule (anchor and
  positive of one outfit and different categories, the negative from another outfit), are
  dropped and reported.
  """
  rows = []
  for lineno, *items in ctl.read_triplets(path, report):
    try:
      a, p, n = (train.index_of(sig, box) for sig, box, _ in items)
    except KeyError:
      report.drop(path, lineno, "line", "item not in raw_train.tsv")
      continue
    o, c = train.item_outfit, train.item_category
    if o[a] != o[p] or c[a] == c[p] or o[n] == o[a]:
      report.drop(path, lineno, "line", "not (anchor, positive of one outfit and two "
                  "categories; negative from another outfit)")
      continue
    if keep_outfit[o[a]]:
      rows.append((a, p, n))
  if len(report):
    logging.warning("%s: %s", path, report.summary())
  if not rows:
    raise DataError(f"{path}: no usable triplets ({report.summary()})")
  return np.asarray(rows, np.int32)


def outfit_pairs(data: ctl.CtlData, outfits: np.ndarray) -> np.ndarray:
  """[P, 2] every ordered (anchor, positive) of one outfit's items of different categories."""
  groups = items_by_outfit(data)
  pairs = []
  for o in outfits:
    items = groups[o]
    a, p = np.meshgrid(items, items, indexing="ij")
    ok = data.item_category[a] != data.item_category[p]
    pairs.append(np.stack([a[ok], p[ok]], axis=1))
  return np.concatenate(pairs).astype(np.int32) if pairs else np.zeros((0, 2), np.int32)


class ProductTripletSampler:
  """One epoch of training tuples: a permutation of the (anchor, positive) pairs, negatives and
  sampled proxies. Epoch `e` depends only on (seed, e), so a resumed run rebuilds any step.

  Every tuple carries `num_negatives` negatives (drawn by `negatives`: the positive's category
  from another outfit, or any item of another outfit) and `num_proxies` other training outfits
  for the proxy loss, after the anchor's own.
  """

  def __init__(self, ds: ProductDataset, seed: int, negatives: str = "category",
               num_negatives: int = 1, num_proxies: int = 0):
    if negatives not in NEGATIVE_RULES:
      raise ValueError(f"loss.negatives={negatives!r}; choose from {NEGATIVE_RULES}")
    self.data = ds.train
    self.seed, self.rule = seed, negatives
    self.num_negatives, self.num_proxies = num_negatives, num_proxies
    self.outfits = ds.train_outfits
    items = ds.train_items()
    self.pool_all = items
    self.pool_by_category = [items[self.data.item_category[items] == c]
                             for c in range(len(ds.categories))]
    if ds.file_triplets is None:
      pairs = outfit_pairs(self.data, ds.train_outfits)
      self.file_negative = None
    else:
      pairs, self.file_negative = ds.file_triplets[:, :2], ds.file_triplets[:, 2]
    usable = self._can_sample(pairs)
    self.num_unusable = int((~usable).sum())
    self.pairs = pairs[usable]
    if self.file_negative is not None:
      self.file_negative = self.file_negative[usable]
    if num_proxies and len(self.outfits) < 2:
      raise DataError("the proxy loss needs two or more training outfits")

  def _can_sample(self, pairs: np.ndarray) -> np.ndarray:
    """Pairs whose negative pool has an item outside their outfit."""
    outfit = self.data.item_outfit
    if self.rule == "random":
      return np.full(len(pairs), len(np.unique(outfit[self.pool_all])) > 1)
    ok = np.zeros(len(pairs), bool)
    for c, pool in enumerate(self.pool_by_category):
      at = np.flatnonzero(self.data.item_category[pairs[:, 1]] == c)
      outfits = np.unique(outfit[pool])
      # Usable unless every item of the category sits in the pair's own outfit.
      ok[at] = (len(outfits) > 1) | ((len(outfits) == 1) & (outfit[pairs[at, 0]] != outfits[:1]))
    return ok

  def __len__(self) -> int:
    return len(self.pairs)

  def sample_negatives(self, anchors: np.ndarray, positives: np.ndarray, num: int,
                       rng: np.random.Generator) -> np.ndarray:
    """[len(anchors), num] negatives by the sampler's rule, never from the anchor's outfit."""
    outfit = self.data.item_outfit
    own = outfit[anchors]
    out = np.empty((len(anchors), num), np.int32)
    if self.rule == "random":
      groups = [(np.arange(len(anchors)), self.pool_all)]
    else:
      cats = self.data.item_category[positives]
      groups = [(np.flatnonzero(cats == c), self.pool_by_category[c]) for c in np.unique(cats)]
    for rows, pool in groups:
      draw = pool[rng.integers(len(pool), size=(len(rows), num))]
      for _ in range(1000):  # resample the few that hit the anchor's own outfit
        bad = outfit[draw] == own[rows, None]
        if not bad.any():
          break
        draw[bad] = pool[rng.integers(len(pool), size=int(bad.sum()))]
      else:
        raise RuntimeError("could not draw negatives outside the anchor's outfit")
      out[rows] = draw
    return out

  def sample_proxies(self, own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[len(own), 1 + num_proxies] outfit ids: each row's own outfit, then other kept outfits."""
    draw = self.outfits[rng.integers(len(self.outfits), size=(len(own), self.num_proxies))]
    for _ in range(1000):
      bad = draw == own[:, None]
      if not bad.any():
        break
      draw[bad] = self.outfits[rng.integers(len(self.outfits), size=int(bad.sum()))]
    return np.concatenate([own[:, None], draw], axis=1).astype(np.int32)

  def epoch(self, epoch: int) -> dict[str, np.ndarray]:
    """Arrays of one epoch in training order (item ids index the training split)."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.pairs))
    anchors, positives = self.pairs[order, 0], self.pairs[order, 1]
    if self.file_negative is not None and self.rule == "category":
      extra = self.sample_negatives(anchors, positives, self.num_negatives - 1, rng)
      negatives = np.concatenate([self.file_negative[order, None], extra], axis=1)
    else:
      negatives = self.sample_negatives(anchors, positives, self.num_negatives, rng)
    cat = self.data.item_category
    out = {"anchor_index": anchors, "positive_index": positives, "negative_index": negatives,
           "anchor_category": cat[anchors], "positive_category": cat[positives],
           "negative_category": cat[negatives]}
    if self.num_proxies:
      out["proxy_outfits"] = self.sample_proxies(self.data.item_outfit[anchors], rng)
    return out
