"""R@K and FITB of the product-based protocol on hand-built corpora with known answers."""

import numpy as np
import pytest

from ctl_jax import metrics
from ctl_jax.product import evaluation as product_eval
from input_pipeline.product import dataset as product_data
from input_pipeline.readers import ctl
from input_pipeline.readers.drops import DropReport


def test_recall_at_k_by_hand():
  d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
  positive = np.array([[True, False, True, False, True]])  # ranks 1, 3 and 5
  r = metrics.recall_at_k(d, positive, [1, 2, 3, 5])
  # top 1: 1 of min(3, 1); top 2: 1 of 2; top 3: 2 of 3; top 5: 3 of 3.
  assert r == {1: pytest.approx(1.0), 2: pytest.approx(0.5), 3: pytest.approx(2 / 3),
               5: pytest.approx(1.0)}


def test_recall_ties_count_in_expectation():
  # One positive tied with three negatives: each of 4 places with p = 1/4.
  r = metrics.recall_at_k(np.zeros((1, 4)), np.array([[False, True, False, False]]), [1, 2, 4])
  assert r == {1: pytest.approx(0.25), 2: pytest.approx(0.5), 4: pytest.approx(1.0)}
  # Two tied positives behind one closer negative: exactly one of them is in the top 2.
  r = metrics.recall_at_k(np.array([[0.5, 0.5, 0.1]]), np.array([[True, True, False]]), [1, 2, 3])
  assert r == {1: 0.0, 2: pytest.approx(0.5), 3: pytest.approx(1.0)}


def test_recall_ignores_padding_and_averages_rows():
  d = np.array([[0.3, 0.1, 0.0, 0.0], [0.1, 0.9, 0.2, 0.3]])
  positive = np.array([[True, False, False, False], [True, False, False, False]])
  valid = np.array([[True, True, False, False], [True, True, True, True]])
  # Row 0: rank 2 of 2 (padding ignored); row 1: rank 1.
  assert metrics.recall_at_k(d, positive, [1, 2], valid) == {1: 0.5, 2: 1.0}
  with pytest.raises(ValueError, match="no positive"):
    metrics.recall_at_k(d, np.zeros_like(positive), [1])


def _ctl(outfits):
  """CtlData from [[category, ...] per outfit]; items in order, boxes unused."""
  cats = sorted({c for o in outfits for c in o})
  rows = [(f"o{i}", c) for i, o in enumerate(outfits) for c in o]
  return ctl.CtlData(
      outfits=[f"o{i}" for i in range(len(outfits))], categories=cats,
      item_outfit=np.array([int(s[1:]) for s, _ in rows], np.int32),
      item_box=np.tile(np.array([0, 0, 1, 1], np.float32), (len(rows), 1)),
      item_category=np.array([cats.index(c) for _, c in rows], np.int32), image_paths={},
      drops=DropReport(), item_keys=[f"{s}#{k}" for k, (s, _) in enumerate(rows)])


FIVE = ["a", "b", "c", "d", "e"]


def test_corpora_follow_the_protocol():
  test = _ctl([FIVE, FIVE, ["a", "b", "c"], FIVE, ["a", "b", "c", "d", "e", "f"]])
  full, restricted = product_eval.retrieval_corpora(test, corpus_size=10, outfit_size=5, seed=0)
  queried_outfits = set(test.item_outfit[full.query])
  assert queried_outfits == {0, 1, 3}  # exactly five items
  assert len(full.query) == 15 and np.all(full.valid) and np.all(full.positive.sum(1) == 4)
  for q, items, pos in zip(full.query, full.items, full.positive):
    own = test.item_outfit[q]
    assert q not in items and len(set(items)) == 10
    assert np.all(test.item_outfit[items[pos]] == own)
    assert np.all(test.item_outfit[items[~pos]] != own)
  assert len(restricted.query) == 15 * 4
  for q, items, pos, valid, c in zip(restricted.query, restricted.items, restricted.positive,
                                     restricted.valid, restricted.category):
    assert pos.sum() == 1 and np.all(test.item_category[items[valid]] == c)
    assert c != test.item_category[q]
    # The corpus (10) exceeds the category: it holds every test item of c (a-c: 5, d-e: 4).
    assert valid.sum() == np.sum(test.item_category == c) == (5 if c < 3 else 4)


def test_perfect_scorer_gets_one_and_constant_scorer_gets_random():
  test = _ctl([FIVE] * 6)
  full, restricted = product_eval.retrieval_corpora(test, corpus_size=12, outfit_size=5, seed=1)
  fitb = product_eval.sample_fitb(test, 5, seed=1)
  assert len(fitb.answers) == 6 and np.all(fitb.answers >= 0)
  style = np.eye(6)[test.item_outfit]  # every outfit its own direction
  perfect = product_eval.ranking_metrics(product_eval.embedding_scorer(style),
                                         product_eval.Protocol(full, restricted, fitb),
                                         (1, 5, 10))
  assert all(v == pytest.approx(1.0) for v in perfect.values())
  chance = product_eval.ranking_metrics(product_eval.constant_scorer,
                                        product_eval.Protocol(full, restricted, fitb),
                                        (1, 5, 10))
  assert chance["r@1"] == pytest.approx(4 / 12 / 1)  # E[positives in top 1] = 4/12
  assert chance["r@10"] == pytest.approx(10 * 4 / 12 / 4)
  assert chance["restricted_r@1"] == pytest.approx(1 / 6)  # 1 positive among 6 of its category
  assert chance["fitb"] == pytest.approx(0.25)


def test_oracle_is_perfect_and_unseen_figures_cover_only_untrained_products():
  test = _ctl([FIVE] * 6)
  full, restricted = product_eval.retrieval_corpora(test, corpus_size=12, outfit_size=5, seed=1)
  fitb = product_eval.sample_fitb(test, 5, seed=1)
  latents = {"item_style": {k: int(o) for k, o in zip(test.item_keys, test.item_outfit)}}
  best = product_eval.ranking_metrics(product_eval.oracle_scorer(latents, test),
                                      product_eval.Protocol(full, restricted, fitb), (1, 10))
  assert all(v == pytest.approx(1.0) for v in best.values())
  # Outfit 0 shows products that training also shows: its queries drop out of *_unseen.
  ds = product_data.ProductDataset(root="", train=test, test=test,
                                   train_outfits=np.array([0], np.int32), train_fraction=1.0,
                                   file_triplets=None)
  latents["item_product"] = {k: f"p{i}" for i, k in enumerate(test.item_keys)}
  a, r, f = product_eval.unseen_queries(latents, ds, test, full, restricted, fitb)
  assert not a[test.item_outfit[full.query] == 0].any()
  assert a[test.item_outfit[full.query] != 0].all()
  assert r.sum() == np.sum(test.item_outfit[restricted.query] != 0)
  assert f.sum() == len(f) - 1
  metrics = product_eval.ranking_metrics(product_eval.constant_scorer,
                                         product_eval.Protocol(full, restricted, fitb, (a, r, f)),
                                         (1,))
  assert metrics["r@1_unseen"] == pytest.approx(4 / 12)
  assert metrics["fitb_unseen"] == pytest.approx(0.25)


def test_fitb_by_hand():
  # Items 0-1: the questions' items; 2-4: answers (correct first), 2-d style vectors.
  style = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0.6, 0.8]], float)
  fitb = product_eval.Fitb(
      question=np.array([[0, 1], [0, -1], [0, -1]]),
      answers=np.array([[2, 3, 4, -1], [3, 2, 4, -1], [2, 2, 3, 4]]), source="hand")
  # q0: the correct answer is nearest (1); q1: it is farther than item 2 (0); q2: tied with one
  # wrong answer (1/2). Mean 0.5.
  assert product_eval.fitb_accuracy(product_eval.embedding_scorer(style), fitb) == \
      pytest.approx(0.5)


def test_popularity_is_category_cooccurrence_then_visual_frequency():
  item_category = np.array([0, 1, 1, 2])
  cooccurrence = np.array([[0, 5, 1], [5, 0, 2], [1, 2, 0]])
  frequency = np.array([0.0, 0.9, -0.9, 1.0])
  score = product_eval.popularity_scorer(item_category, cooccurrence, frequency)
  d = score(np.array([0]), np.array([[1, 2, 3]]))
  # Category 1 co-occurs 5 times with category 0, category 2 once: item 3 is last whatever its
  # frequency; within category 1, the more frequent look first.
  assert list(np.argsort(d[0])) == [0, 1, 2]
