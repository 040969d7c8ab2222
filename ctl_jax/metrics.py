"""Ranking metrics as pure numpy functions of distances (smaller distance = better match).

Ties are resolved in expectation over a random order, so a scorer that gives every product the
same score (e.g. popularity among equally rare products) gets exactly the random-order value.

Shapes: d_pos [M] distance of each query to its positive; d_neg [M, N] distances to N
negatives; valid [M, N] optional mask of real negatives (rows may have fewer than N). A row with
no valid negative ranks nothing: `auc` and `hit_rates` leave it out (`without_negatives`
counts such rows, for the report), and both are NaN when no row is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# How an evaluation scores a method: scorer(query ids [M], candidate ids [M, N], or [N] shared
# by every query) -> distances [M, N]. Candidate ids of -1 are padding (any value).
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _closer_and_tied(d_pos, d_neg, valid):
  """Per row: negatives strictly closer than the positive, negatives tied with it, and all."""
  d_pos = np.asarray(d_pos, np.float64)[:, None]
  d_neg = np.asarray(d_neg, np.float64)
  valid = np.ones(d_neg.shape, bool) if valid is None else np.asarray(valid, bool)
  closer = np.sum((d_neg < d_pos) & valid, axis=1)
  tied = np.sum((d_neg == d_pos) & valid, axis=1)
  return closer, tied, valid.sum(axis=1)


def _mean(values: np.ndarray, rows: np.ndarray) -> float:
  return float(np.mean(values[rows])) if rows.any() else float("nan")


def without_negatives(valid: np.ndarray) -> int:
  """How many rows have no valid negative (left out of `auc` and `hit_rates`)."""
  return int(np.sum(~np.asarray(valid, bool).any(axis=1)))


def auc(d_pos: np.ndarray, d_neg: np.ndarray, valid: np.ndarray | None = None) -> float:
  """Mean over rows of the fraction of negatives farther than the positive (ties count 1/2)."""
  closer, tied, total = _closer_and_tied(d_pos, d_neg, valid)
  farther = total - closer - tied
  return _mean((farther + 0.5 * tied) / np.maximum(total, 1), total > 0)


def hit_rates(d_pos: np.ndarray, d_neg: np.ndarray, ks: Sequence[int],
              valid: np.ndarray | None = None) -> dict[int, float]:
  """HR@K: how often the positive ranks in the top K among itself plus its negatives.

  With `closer` negatives strictly closer and `tied` equal, a random order among ties puts the
  positive in the top K with probability clip((K - closer) / (tied + 1), 0, 1).
  """
  closer, tied, total = _closer_and_tied(d_pos, d_neg, valid)
  return {k: _mean(np.clip((k - closer) / (tied + 1.0), 0.0, 1.0), total > 0) for k in ks}


def recall_at_k(d: np.ndarray, positive: np.ndarray, ks: Sequence[int],
                valid: np.ndarray | None = None,
                reduce: bool = True) -> dict[int, float] | dict[int, np.ndarray]:
  """R@K of the product-based protocol (Li et al. 2020): positives in the top K / min(P, K).

  Each row ranks a corpus by distance `d`; `positive` marks the row's P positives. With ties in
  random order, positive i lands in the top K with probability clip((K - c_i) / (t_i + 1), 0, 1),
  where c_i corpus items are strictly closer and t_i others tie with it, so the expected count
  of positives in the top K is the sum of those probabilities (exact for any tie pattern).

  Args:
    d: [M, N] distances of each query to its corpus.
    positive: [M, N] bool, the query's positives (rows without one are an error).
    ks: the cut-offs.
    valid: [M, N] optional mask of real corpus entries (rows may hold fewer than N).
    reduce: mean over rows (default), or return the [M] values per K.

  Returns:
    {K: mean R@K} (or {K: [M] R@K per row} when not `reduce`).
  """
  d = np.asarray(d, np.float64)
  valid = np.ones(d.shape, bool) if valid is None else np.asarray(valid, bool)
  positive = np.asarray(positive, bool) & valid
  num_pos = positive.sum(axis=1)
  if np.any(num_pos == 0):
    raise ValueError(f"{int(np.sum(num_pos == 0))} rows have no positive in their corpus")
  out = {k: np.zeros(len(d)) for k in ks}
  for j in range(positive.shape[1]):  # scan positives column by column: [M, N] work each
    rows = np.flatnonzero(positive[:, j])
    if len(rows) == 0:
      continue
    dj = d[rows, j][:, None]
    closer = np.sum((d[rows] < dj) & valid[rows], axis=1)
    tied = np.sum((d[rows] == dj) & valid[rows], axis=1) - 1  # minus itself
    for k in ks:
      out[k][rows] += np.clip((k - closer) / (tied + 1.0), 0.0, 1.0)
  per_row = {k: out[k] / np.minimum(num_pos, k) for k in ks}
  return {k: float(np.mean(v)) for k, v in per_row.items()} if reduce else per_row
