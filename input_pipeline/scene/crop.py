"""The papers' scene preparation: cut the positive product out of its scene.

A scene shows the product it is paired with; training on it would teach the model to match
pixels. Both papers instead keep the largest of the four rectangles left of, right of, above and
below the product's box, and drop the pair when that rectangle is under a fraction of the image.
"""

from __future__ import annotations

import numpy as np


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

