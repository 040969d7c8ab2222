"""Ranking metrics as pure numpy functions of distances (smaller distance = better match).

Ties are resolved in expectation over a random order, so a scorer that gives every product the
same score (e.g. popularity among equally rare products) gets exactly the random-order value.

Shapes: d_pos [M] distance of each query to its positive; d_neg [M, N] distances to N
negatives; valid [M, N] optional mask of real negatives (rows may have fewer than N).
"""

from __future__ import annotations

import numpy as np


def _closer_and_tied(d_pos, d_neg, valid):
  """Per row: negatives strictly closer than the positive, negatives tied with it, and all."""
  d_pos = np.asarray(d_pos, np.float64)[:, None]
  d_neg = np.asarray(d_neg, np.float64)
  valid = np.ones(d_neg.shape, bool) if valid is None else np.asarray(valid, bool)
  closer = np.sum((d_neg < d_pos) & valid, axis=1)
  tied = np.sum((d_neg == d_pos) & valid, axis=1)
  return closer, tied, valid.sum(axis=1)


def auc(d_pos: np.ndarray, d_neg: np.ndarray, valid: np.ndarray | None = None) -> float:
  """Mean over rows of the fraction of negatives farther than the positive (ties count 1/2)."""
  closer, tied, total = _closer_and_tied(d_pos, d_neg, valid)
  farther = total - closer - tied
  return float(np.mean((farther + 0.5 * tied) / np.maximum(total, 1)))


def hit_rates(d_pos: np.ndarray, d_neg: np.ndarray, ks,
              valid: np.ndarray | None = None) -> dict[int, float]:
  """HR@K: how often the positive ranks in the top K among itself plus its negatives.

  With `closer` negatives strictly closer and `tied` equal, a random order among ties puts the
  positive in the top K with probability clip((K - closer) / (tied + 1), 0, 1).
  """
  closer, tied, _ = _closer_and_tied(d_pos, d_neg, valid)
  return {k: float(np.mean(np.clip((k - closer) / (tied + 1.0), 0.0, 1.0))) for k in ks}


def mean_rank(d_pos: np.ndarray, d_neg: np.ndarray, valid: np.ndarray | None = None) -> float:
  """Expected 1-based rank of the positive (ties at their mean position)."""
  closer, tied, _ = _closer_and_tied(d_pos, d_neg, valid)
  return float(np.mean(1.0 + closer + 0.5 * tied))
