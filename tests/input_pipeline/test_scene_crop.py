"""Scene cropping: the largest of the four rectangles around the product, dropped when tiny."""

import numpy as np
import pytest

from input_pipeline.readers import stl
from input_pipeline.scene import sampler as scene_sampler


def test_picks_the_largest_rectangle_by_hand():
  boxes = np.array([
      [0.1, 0.2, 0.3, 0.9],   # left 0.1, right 0.7, above 0.2, below 0.1 -> right
      [0.6, 0.1, 0.9, 0.4],   # left 0.6, right 0.1, above 0.1, below 0.6 -> left (first of ties)
      [0.2, 0.85, 0.8, 1.0],  # shoes: above 0.85 wins
      [0.0, 0.0, 1.0, 0.7],   # top 70%: below 0.3
  ], np.float32)
  crops, fractions = scene_sampler.complement_crops(boxes)
  np.testing.assert_allclose(crops, [[0.3, 0, 1, 1], [0, 0, 0.6, 1], [0, 0, 1, 0.85],
                                     [0, 0.7, 1, 1]], atol=1e-6)
  np.testing.assert_allclose(fractions, [0.7, 0.6, 0.85, 0.3], atol=1e-6)


def test_crop_never_overlaps_the_product():
  rng = np.random.default_rng(0)
  lo = rng.uniform(0, 0.9, (500, 2))
  hi = lo + rng.uniform(0.01, 1.0, (500, 2)) * (1 - lo)
  boxes = np.concatenate([lo, hi], 1)[:, [0, 1, 2, 3]]
  crops, _ = scene_sampler.complement_crops(boxes)
  overlap_w = np.minimum(crops[:, 2], boxes[:, 2]) - np.maximum(crops[:, 0], boxes[:, 0])
  overlap_h = np.minimum(crops[:, 3], boxes[:, 3]) - np.maximum(crops[:, 1], boxes[:, 1])
  assert np.all((overlap_w <= 1e-6) | (overlap_h <= 1e-6))


@pytest.mark.parametrize("min_fraction", [0.0, 0.5, 0.9])
def test_split_drops_small_crops(stl_root, min_fraction):
  data = stl.read_stl(stl_root)
  train = scene_sampler.split_pairs(data, "train", 0.2, min_fraction)
  test = scene_sampler.split_pairs(data, "test", 0.2, min_fraction)
  _, fractions = scene_sampler.complement_crops(data.pair_box)
  assert (len(train.pairs) + len(test.pairs) + train.num_too_small + test.num_too_small
          == len(data))
  assert np.all(fractions[train.pairs] >= min_fraction)
  assert np.all(fractions[test.pairs] >= min_fraction)
  # Scenes never straddle the split.
  assert not set(data.pair_scene[train.pairs]) & set(data.pair_scene[test.pairs])
