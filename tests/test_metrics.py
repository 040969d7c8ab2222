"""Ranking metrics on hand-built cases, ties included."""

import numpy as np
import pytest

from ctl_jax import metrics


def test_auc_and_hit_rates_by_hand():
  d_pos = np.array([0.5, 0.5, 0.5])
  d_neg = np.array([
      [0.1, 0.2, 0.9, 0.8],  # 2 closer, 2 farther: rank 3
      [0.6, 0.7, 0.8, 0.9],  # rank 1
      [0.1, 0.2, 0.3, 0.4],  # rank 5
  ])
  assert metrics.auc(d_pos, d_neg) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
  hr = metrics.hit_rates(d_pos, d_neg, [1, 3, 5])
  assert hr == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 5: pytest.approx(1.0)}


def test_ties_count_in_expectation():
  # Everything tied: a random order puts the positive at each of 5 places with p = 1/5.
  d_pos = np.zeros(1)
  d_neg = np.zeros((1, 4))
  assert metrics.auc(d_pos, d_neg) == pytest.approx(0.5)
  hr = metrics.hit_rates(d_pos, d_neg, [1, 2, 5])
  assert hr[1] == pytest.approx(0.2) and hr[2] == pytest.approx(0.4) and hr[5] == pytest.approx(1)


def test_valid_mask_ignores_padding():
  d_pos = np.array([0.5])
  d_neg = np.array([[0.1, 0.9, 0.0, 0.0]])
  valid = np.array([[True, True, False, False]])
  assert metrics.auc(d_pos, d_neg, valid) == pytest.approx(0.5)
  assert metrics.hit_rates(d_pos, d_neg, [1, 2], valid) == {1: 0.0, 2: 1.0}


def test_rows_without_a_negative_are_left_out_and_counted():
  d_pos = np.array([0.5, 0.1, 0.3])
  d_neg = np.array([[0.2, 0.9], [0.0, 0.0], [0.1, 0.4]])
  valid = np.array([[True, True], [False, False], [True, True]])
  # Row 1 ranks nothing: neither a perfect HR nor an AUC of 0.
  assert metrics.without_negatives(valid) == 1
  assert metrics.auc(d_pos, d_neg, valid) == pytest.approx((0.5 + 0.5) / 2)
  assert metrics.hit_rates(d_pos, d_neg, [1, 2], valid) == pytest.approx({1: 0.0, 2: 1.0})
  assert np.isnan(metrics.auc(d_pos[1:2], d_neg[1:2], valid[1:2]))
