"""bench.style_probe's read-out: a softmax regression that recovers classes it can separate."""

import numpy as np

from bench import style_probe


def test_softmax_read_out_separates_shifted_classes_and_not_noise():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 3
  y = rng.integers(4, size=600)
  x = centres[y] + rng.normal(size=(600, 16)) + 100.0  # an offset: standardisation handles it
  predict = style_probe.fit_softmax(x[:400], y[:400], 4)
  probs = predict(x[400:])
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
  assert np.mean(probs.argmax(1) == y[400:]) > 0.95
  # Labels unrelated to the features: near chance on held-out rows.
  noise = rng.integers(4, size=600)
  chance = np.mean(style_probe.fit_softmax(x[:400], noise[:400], 4)(x[400:]).argmax(1)
                   == noise[400:])
  assert chance < 0.45
