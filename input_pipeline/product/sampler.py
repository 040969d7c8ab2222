"""Training tuples of the product-based task: pairs of one outfit, negatives from other outfits.

Training pairs follow the paper: an anchor and a positive are two items of one outfit of
different categories; a negative is an item of the positive's category from another outfit
("category-restricted"), or any item from another outfit ("random", the paper's comparison).
With triplets read from `triplet_train.tsv`, their pairs and first negatives are used as given.
"""

from __future__ import annotations

import numpy as np

from input_pipeline.product.dataset import ProductDataset, items_by_outfit
from input_pipeline.readers import ctl
from input_pipeline.readers.drops import DataError

NEGATIVE_RULES = ("category", "random")
# loss.negatives='auto': the paper's rule for each loss. Its triplets take a negative of the
# positive's category; its siamese pairs and proxy rows take any item of another outfit.
AUTO_NEGATIVES = {"triplet": "category", "contrastive": "random", "proxy": "random"}


def negative_rule(loss) -> str:
  """The rule of the `loss` config section's `negatives` ('auto' resolved by `AUTO_NEGATIVES`)."""
  if loss.negatives == "auto":
    return AUTO_NEGATIVES.get(loss.name, "category")
  return loss.negatives


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
      raise ValueError(f"loss.negatives={negatives!r}; choose from {('auto',) + NEGATIVE_RULES}")
    self.data = ds.train
    self.seed, self.rule = seed, negatives
    # Proxies are drawn with replacement: no more than there are other outfits to draw.
    self.num_negatives = num_negatives
    self.num_proxies = min(num_proxies, max(len(ds.train_outfits) - 1, 1)) if num_proxies else 0
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
