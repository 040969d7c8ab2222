"""Losses of the product-based task against hand-computed values, and the triplet sampler's rules
(anchor and positive: one outfit, two categories; negatives never from the anchor's outfit)."""

import math

import numpy as np
import pytest

from ctl_jax.product import losses
from ctl_jax.product import steps as product_steps
from input_pipeline.product import dataset as product_data
from input_pipeline.product import sampler as product_sampler
from input_pipeline.readers import ctl
from input_pipeline.readers.drops import DropReport


def test_contrastive_by_hand():
  d_pos = np.array([0.25, 1.0], np.float32)
  d_neg = np.array([[0.04, 1.44], [4.0, 0.81]], np.float32)  # distances 0.2, 1.2, 2, 0.9
  # Positive pairs cost D^2; negatives max(0, 1 - D)^2 = 0.64, 0, 0, 0.01; mean over 6 pairs.
  expected = (0.25 + 0.64 + 0.0 + 1.0 + 0.0 + 0.01) / 6
  assert float(losses.contrastive(d_pos, d_neg, 1.0)) == pytest.approx(expected, rel=1e-5)
  # One negative per positive (1:1): [B] works as [B, 1].
  assert float(losses.contrastive(d_pos, d_neg[:, 0], 1.0)) == pytest.approx(
      (0.25 + 0.64 + 1.0 + 0.0) / 4, rel=1e-5)


def test_contrastive_sixteen_to_one_weighs_every_pair_alike():
  # 16 negatives, all at distance 0.5 (cost 0.25 each), one positive at D^2 = 0.1: the
  # positive is 1 of 17 equally weighted pairs.
  d_neg = np.full((3, 16), 0.25, np.float32)
  d_pos = np.full((3,), 0.1, np.float32)
  assert float(losses.contrastive(d_pos, d_neg, 1.0)) == pytest.approx(
      (0.1 + 16 * 0.25) / 17, rel=1e-5)


def test_collapsed_negative_pair_has_a_finite_gradient():
  import jax
  grad = jax.grad(lambda d: losses.contrastive(np.zeros(1, np.float32), d, 1.0))(
      np.zeros((1, 1), np.float32))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_sampled_proxy_softmax_by_hand():
  x = np.array([[1.0, 0.0]], np.float32)
  proxies = np.array([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]], np.float32)  # any norm
  # Cosines 1, 0, -1 over temperature 0.5: logits 2, 0, -2; the true proxy is first.
  expected = math.log(math.exp(2) + 1 + math.exp(-2)) - 2
  assert float(losses.sampled_proxy_softmax(x, proxies, 0.5)) == pytest.approx(expected,
                                                                               rel=1e-5)


def test_proxy_step_loss_classifies_anchor_and_positive_into_their_outfit():
  out = {"anchor": np.array([[1.0, 0.0]], np.float32),
         "positive": np.array([[0.0, 1.0]], np.float32),
         "proxies": np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)}
  # Anchor: logits (1, 0) -> log(1 + e) - 1; positive: logits (0, 1) -> log(1 + e).
  expected = (math.log(1 + math.e) - 1 + math.log(1 + math.e)) / 2
  loss = product_steps.STYLE_LOSSES["proxy"](out, None, None, {"temperature": 1.0})
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_triplet_step_loss_by_hand():
  d_pos = np.array([0.5, 0.1], np.float32)
  d_neg = np.array([[0.6, 0.2], [1.0, 0.0]], np.float32)
  # max(0, dp - dn + 0.2): 0.1, 0.5 | 0, 0.3.
  settings = {"margin": 0.2, "reduction": "mean"}
  loss = product_steps.STYLE_LOSSES["triplet"](None, d_pos, d_neg, settings)
  assert float(loss) == pytest.approx((0.1 + 0.5 + 0.0 + 0.3) / 4, rel=1e-5)


def test_categorical_cross_entropy_by_hand():
  logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
  labels = np.array([2, 0])
  expected = ((math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3) + math.log(3)) / 2
  assert float(losses.categorical_cross_entropy(logits, labels)) == pytest.approx(expected,
                                                                                  rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The sampler.


def random_ctl(num_outfits: int, num_categories: int, seed: int) -> ctl.CtlData:
  """Outfits of 2-6 items of random categories (repeats allowed, as in real collages)."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(2, 7, size=num_outfits)
  item_outfit = np.repeat(np.arange(num_outfits), sizes).astype(np.int32)
  item_category = rng.integers(num_categories - 1, size=len(item_outfit)).astype(np.int32)
  item_category[-1] = num_categories - 1  # a rare category: one item in one outfit
  outfits = [f"o{i}" for i in range(num_outfits)]
  item_box = np.array([(0.1 * (i % 7), 0.1, 0.2, 0.3) for i in range(len(item_outfit))],
                      np.float32)
  return ctl.CtlData(
      outfits=outfits, categories=[f"c{i}" for i in range(num_categories)],
      item_outfit=item_outfit, item_box=item_box, item_category=item_category, image_paths={},
      drops=DropReport(),
      item_keys=[ctl.item_key(outfits[o], b) for o, b in zip(item_outfit, item_box)])


def dataset(train: ctl.CtlData, kept=None, file_triplets=None) -> product_data.ProductDataset:
  kept = np.arange(len(train.outfits), dtype=np.int32) if kept is None else kept
  return product_data.ProductDataset(root="", train=train, test=train, train_outfits=kept,
                                     train_fraction=1.0, file_triplets=file_triplets)


@pytest.mark.parametrize("rule", ["category", "random"])
def test_sampler_follows_the_papers_rules(rule):
  train = random_ctl(60, 6, seed=0)
  kept = np.arange(0, 60, 2, dtype=np.int32)  # a training subset: half the outfits
  sampler = product_sampler.ProductTripletSampler(dataset(train, kept), seed=3, negatives=rule,
                                                  num_negatives=16, num_proxies=5)
  epoch = sampler.epoch(0)
  a, p, n = epoch["anchor_index"], epoch["positive_index"], epoch["negative_index"]
  outfit, cat = train.item_outfit, train.item_category
  assert len(a) == len(sampler) > 100 and n.shape == (len(a), 16)
  assert np.all(outfit[a] == outfit[p]) and np.all(cat[a] != cat[p])
  assert np.all(np.isin(outfit[a], kept)) and np.all(np.isin(outfit[n], kept))
  assert np.all(outfit[n] != outfit[a][:, None])  # never from the anchor's outfit
  if rule == "category":
    assert np.all(cat[n] == cat[p][:, None])
  else:
    assert np.mean(cat[n] != cat[p][:, None]) > 0.5  # any category
  assert np.array_equal(epoch["negative_category"], cat[n])
  # Every (anchor, positive) of the kept outfits once per epoch, and nothing else.
  expected = product_sampler.outfit_pairs(train, kept)
  got = np.stack([a, p], axis=1)
  usable = sampler.pairs
  assert sorted(map(tuple, got)) == sorted(map(tuple, usable))
  assert set(map(tuple, usable)) <= set(map(tuple, expected))
  assert len(expected) - len(usable) == sampler.num_unusable
  # Proxies: the anchor's own outfit first, then other kept outfits.
  proxies = epoch["proxy_outfits"]
  assert np.all(proxies[:, 0] == outfit[a]) and np.all(proxies[:, 1:] != outfit[a][:, None])
  assert np.all(np.isin(proxies, kept))
  # Epochs depend on (seed, epoch) only.
  again = product_sampler.ProductTripletSampler(dataset(train, kept), seed=3, negatives=rule,
                                                num_negatives=16, num_proxies=5).epoch(0)
  assert all(np.array_equal(epoch[k], again[k]) for k in epoch)
  assert not np.array_equal(sampler.epoch(1)["anchor_index"], a)


def test_sampler_skips_pairs_whose_category_lives_in_their_outfit_only():
  train = random_ctl(30, 5, seed=1)
  rare = len(train.categories) - 1
  sampler = product_sampler.ProductTripletSampler(dataset(train), seed=0)
  # The rare category's single item: no other outfit has a negative for it as a positive.
  rare_positive = np.sum(train.item_category[product_sampler.outfit_pairs(
      train, np.arange(30))[:, 1]] == rare)
  assert rare_positive > 0 and sampler.num_unusable == rare_positive
  assert not np.any(train.item_category[sampler.pairs[:, 1]] == rare)


def test_triplet_file_rows_breaking_the_rule_are_dropped(tmp_path):
  train = random_ctl(10, 4, seed=2)
  groups = product_data.items_by_outfit(train)
  o0 = groups[0]
  good_a, good_p = next((x, y) for x in o0 for y in o0
                        if train.item_category[x] != train.item_category[y])
  neg = groups[1][0]

  def fields(i):
    x, y, w, h = train.item_box[i]
    return [train.outfits[train.item_outfit[i]], *(f"{v:.6f}" for v in (x, y, w, h)),
            train.categories[train.item_category[i]]]

  path = tmp_path / "triplet_train.tsv"
  path.write_text("\n".join("\t".join(fields(a) + fields(p) + fields(n)) for a, p, n in (
      (good_a, good_p, neg),  # fine
      (good_a, good_p, good_a),  # negative from the anchor's outfit
      (good_a, groups[2][0], neg),  # positive from another outfit
  )) + "\n")
  report = DropReport(strict=False)
  rows = product_data.read_triplet_indices(path, train, np.ones(10, bool), report)
  assert rows.tolist() == [[good_a, good_p, neg]] and len(report) == 2
