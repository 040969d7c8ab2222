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
from input_pipeline.splits import is_test_signature


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


def split_pairs(data: StlData, split: str, test_fraction: float,
                min_crop_fraction: float) -> ScenePairs:
  """Pairs of `split` ('train' or 'test') whose scene keeps a large enough rectangle."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  scene_is_test = np.array([is_test_signature(s, test_fraction) for s in data.scenes], bool)
  in_split = scene_is_test[data.pair_scene] == (split == "test")
  crops, fractions = complement_crops(data.pair_box)
  keep = in_split & (fractions >= min_crop_fraction)
  return ScenePairs(pairs=np.flatnonzero(keep).astype(np.int32), crops=crops[keep],
                    num_too_small=int(np.sum(in_split & ~keep)))


class NegativeSampler:
  """Draws, per pair, products of the positive's category that its scene does not contain."""

  def __init__(self, data: StlData):
    self.num_products = len(data.products)
    self.by_category = [np.flatnonzero(data.product_category == c).astype(np.int32)
                        for c in range(len(data.categories))]
    # Products of each scene, as sorted keys scene * num_products + product.
    self._scene_product = np.unique(data.pair_scene.astype(np.int64) * self.num_products
                                    + data.pair_product)
    self._pair_scene = data.pair_scene
    self._pair_category = data.pair_category

  def can_sample(self, pairs: np.ndarray) -> np.ndarray:
    """Pairs whose category has a product outside their scene."""
    sizes = np.array([len(p) for p in self.by_category])
    return sizes[self._pair_category[pairs]] > 1

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
        bad = np.isin(scenes[rows, None] * self.num_products + draw, self._scene_product)
        if not bad.any():
          break
        draw[bad] = pool[rng.integers(len(pool), size=int(bad.sum()))]
      out[rows] = draw
    return out


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
    self.negatives = NegativeSampler(data)
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
