"""Example-major flattening of per-example roles and its inverse."""

import numpy as np

from ctl_jax.nn import example_major


def test_merge_puts_each_examples_items_together_and_split_inverts_it():
  b = 3
  scene = np.arange(b)[:, None, None] * 100 + np.zeros((b, 1, 2))        # 0, 100, 200
  positive = scene + 1                                                     # 1, 101, 201
  negative = scene + np.array([2, 3])[None, :, None]                       # 2-3, 102-103, ...
  flat = np.asarray(example_major.merge([scene, positive, negative]))
  assert flat.shape == (b * 4, 2)
  np.testing.assert_array_equal(flat[:, 0], [0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203])
  back = example_major.split(flat, (1, 1, 2))
  for got, want in zip(back, (scene, positive, negative)):
    np.testing.assert_array_equal(np.asarray(got), want)
