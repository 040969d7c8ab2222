"""Splits, scene crops and category-restricted triplet sampling for the scene-based task.

Scene preparation, as in both papers: a scene shows the product it is paired with, and training
on it would teach the model to match pixels. So the scene is cut to the largest of the four
rectangles left of, right of, above and below the product's box, and the pair is dropped when
that rectangle is under a fraction of the image (`complement_crops`, `split_pairs`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.readers.stl import StlData
from input_pipeline.splits import VALIDATION_SALT, is_test_signature


def complement_crops(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The largest rectangle of each scene that excludes its product box.

  The candidates are the rectangles left of, right of, above and below the box, in this order;
  of equal areas the first is kept.

  Args:
    boxes: [N, 4] normalised (left, top, right, bottom) product boxes.

  Returns:
    crops: [N, 4] normalised (left, top, right, bottom) of the kept rectangle.
    fractions: [N] its area as a fraction of the image.
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  left, top, right, bottom = boxes.T
  zeros, ones = np.zeros_like(left), np.ones_like(left)
  candidates = np.stack([
      np.stack([zeros, zeros, left, ones], -1),     # left of the box
      np.stack([right, zeros, ones, ones], -1),     # right of the box
      np.stack([zeros, zeros, ones, top], -1),      # above the box
      np.stack([zeros, bottom, ones, ones], -1),    # below the box
  ], axis=1)  # [N, 4 sides, 4 coords]
  areas = (candidates[..., 2] - candidates[..., 0]) * (candidates[..., 3] - candidates[..., 1])
  best = np.argmax(areas, axis=1)  # argmax takes the first of equal areas
  rows = np.arange(len(boxes))
  return candidates[rows, best], areas[rows, best]


@dataclasses.dataclass
class ScenePairs:
  """Pairs usable for one split: indices into StlData plus each pair's scene crop."""

  pairs: np.ndarray  # [n] int32 indices into the StlData pair arrays
  crops: np.ndarray  # [n, 4] normalised (left, top, right, bottom) of the kept scene rectangle
  num_too_small: int  # pairs of this split dropped because the kept rectangle was too small


SPLITS = ("train", "validation", "test")


def scene_splits(scenes: list[str], test_fraction: float,
                 validation_fraction: float = 0.0) -> np.ndarray:
  """[len(scenes)] the index in SPLITS of each scene's split, by signature hash: the test split
  first (as the TFDS builders split), then `validation_fraction` of the remaining scenes."""
  out = np.zeros(len(scenes), np.int8)
  for i, s in enumerate(scenes):
    if is_test_signature(s, test_fraction):
      out[i] = 2
    elif validation_fraction and is_test_signature(s, validation_fraction, VALIDATION_SALT):
      out[i] = 1
  return out


def split_pairs(data: StlData, split: str, test_fraction: float, min_crop_fraction: float,
                validation_fraction: float = 0.0) -> ScenePairs:
  """Pairs of `split` (one of SPLITS) whose scene keeps a large enough rectangle."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  which = scene_splits(data.scenes, test_fraction, validation_fraction)
  in_split = which[data.pair_scene] == SPLITS.index(split)
  crops, fractions = complement_crops(data.pair_box)
  keep = in_split & (fractions >= min_crop_fraction)
  return ScenePairs(pairs=np.flatnonzero(keep).astype(np.int32), crops=crops[keep],
                    num_too_small=int(np.sum(in_split & ~keep)))


class NegativeSampler:
  """Draws, per pair, products of the positive's category that its scene does not contain.

  Negatives come from `pool` only (the training products: a held-out product must stay unseen
  by training, or cold-start figures would be flattered).
  """

  def __init__(self, data: StlData, pool: np.ndarray | None = None):
    self.num_products = len(data.products)
    pool = np.arange(self.num_products) if pool is None else np.asarray(pool)
    self.by_category = [np.sort(pool[data.product_category[pool] == c]).astype(np.int32)
                        for c in range(len(data.categories))]
    # Products of each scene, as sorted keys scene * num_products + product.
    self._scene_product = np.unique(data.pair_scene.astype(np.int64) * self.num_products
                                    + data.pair_product)
    self._pair_scene = data.pair_scene
    self._pair_category = data.pair_category
    # How many pool products of each (scene, category) the scene contains.
    scenes, products = np.divmod(self._scene_product, self.num_products)
    in_pool = np.zeros(self.num_products, bool)
    in_pool[pool] = True
    num_categories = len(data.categories)
    keys = scenes[in_pool[products]] * num_categories + data.product_category[
        products[in_pool[products]]]
    self._own_keys, self._own_counts = np.unique(keys, return_counts=True)
    self._num_categories = num_categories

  def can_sample(self, pairs: np.ndarray) -> np.ndarray:
    """Pairs whose category has a pool product outside their scene."""
    cats = self._pair_category[pairs]
    keys = self._pair_scene[pairs].astype(np.int64) * self._num_categories + cats
    own = np.zeros(len(keys), np.int64)
    if len(self._own_keys):
      at = np.minimum(np.searchsorted(self._own_keys, keys), len(self._own_keys) - 1)
      own = np.where(self._own_keys[at] == keys, self._own_counts[at], 0)
    sizes = np.array([len(p) for p in self.by_category])
    return sizes[cats] > own

  def sample(self, pairs: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """[len(pairs), num] negatives for `pairs` (all must satisfy `can_sample`)."""
    cats = self._pair_category[pairs]
    scenes = self._pair_scene[pairs].astype(np.int64)
    out = np.empty((len(pairs), num), np.int32)
    for c in np.unique(cats):
      rows = np.flatnonzero(cats == c)
      pool = self.by_category[c]
      draw = pool[rng.integers(len(pool), size=(len(rows), num))]
      for _ in range(100):  # resample the few that hit their own scene
        bad = self._in_scene(scenes[rows, None], draw)
        if not bad.any():
          break
        draw[bad] = pool[rng.integers(len(pool), size=int(bad.sum()))]
      for r in np.flatnonzero(bad.any(axis=1)):  # scenes holding most of a tiny pool
        allowed = pool[~self._in_scene(scenes[rows[r]], pool)]
        draw[r] = np.where(bad[r], allowed[rng.integers(len(allowed), size=num)], draw[r])
      out[rows] = draw
    return out

  def _in_scene(self, scenes: np.ndarray, products: np.ndarray) -> np.ndarray:
    return np.isin(scenes * self.num_products + products, self._scene_product)


def scene_product_table(data: StlData) -> np.ndarray:
  """[num_scenes, K] the products of each scene, padded with -1 (K = most products per scene).

  Rows carry this so that in-batch negatives can exclude every product of their own scene.
  """
  counts = np.bincount(data.pair_scene, minlength=len(data.scenes))
  table = np.full((len(data.scenes), max(1, counts.max())), -1, np.int32)
  order = np.argsort(data.pair_scene, kind="stable")
  scenes = data.pair_scene[order]
  slot = np.arange(len(order)) - np.searchsorted(scenes, scenes)
  table[scenes, slot] = data.pair_product[order]
  return table


class TripletSampler:
  """One epoch of training triplets: a permutation of the pairs and a negative per pair.

  Epoch `e` depends only on (seed, e), so any step of any epoch can be rebuilt on resume.
  """

  def __init__(self, data: StlData, split: ScenePairs, seed: int, num_negatives: int = 1):
    # Negatives among the products of this split only (its pairs' products).
    self.negatives = NegativeSampler(data, np.unique(data.pair_product[split.pairs]))
    usable = self.negatives.can_sample(split.pairs)
    self.pairs = split.pairs[usable]
    self.crops = split.crops[usable]
    self.num_unusable = int((~usable).sum())
    self.seed = seed
    self.num_negatives = num_negatives
    self._data = data
    self.scene_products = scene_product_table(data)

  def __len__(self) -> int:
    return len(self.pairs)

  def epoch(self, epoch: int) -> dict[str, np.ndarray]:
    """Arrays of one epoch in training order: scene, positive, negative, category, crop, pair."""
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.pairs))
    pairs = self.pairs[order]
    negatives = self.negatives.sample(pairs, self.num_negatives, rng)
    return {
        "scene_index": self._data.pair_scene[pairs],
        "positive_index": self._data.pair_product[pairs],
        "negative_index": negatives,
        "category": self._data.pair_category[pairs],
        "crop": self.crops[order],
        "pair_index": pairs,
        "scene_products": self.scene_products[self._data.pair_scene[pairs]],
    }
