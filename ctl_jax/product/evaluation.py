"""Held-out evaluation of the product-based model, as in Li et al. (KDD 2020), with baselines.

Retrieval (R@K): every item of a test outfit with exactly `eval.outfit_size` items is a query.
  - all categories: the corpus is the outfit's other items (the positives) plus random test items
    of other outfits, `eval.corpus_size` in all; R@K = positives in the top K / min(P, K).
  - restricted: for each category c among the outfit's other items, the corpus is the outfit's
    items of c plus random test items of c from other outfits (up to `eval.corpus_size`; fewer
    when the category is smaller); R@K is averaged within each category, then over categories.
FITB: a test outfit with one item hidden; the choices are the hidden item and three items of its
category from other outfits; a choice's distance is its mean distance to the outfit's items.
Corpora and questions are drawn once with `eval.seed`; every method is scored on the same ones.
Ties count in expectation, so a method that scores everything equal gets the exact random value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ctl_jax import metrics, oracle
from ctl_jax.metrics import Scorer
from ctl_jax.product import steps as product_steps
from ctl_jax.product.model import ProductModel
from ctl_jax.trainer import inference
from ctl_jax.trainer.config_fields import ConfigError
from ctl_jax.trainer.state import TrainState
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows
from input_pipeline.product import dataset as product_data
from input_pipeline.product.sampler import negative_rule
from input_pipeline.readers import ctl

NUM_FITB_CHOICES = 4


def protocol(config: ml_collections.ConfigDict, fitb_source: str) -> str:
  e = config.eval
  size = f"exactly {e.outfit_size}" if e.outfit_size else "2 or more"
  return (
      f"product-based CTL (Li et al. 2020). Queries: every item of each test outfit with {size} "
      f"items. 'r@K' (K in {list(e.ks)}): corpus of {e.corpus_size} items = the outfit's other "
      f"items (positives) + random test items of other outfits; R@K = positives in top K / "
      f"min(positives, K), averaged over queries. 'restricted_r@K': per (query, category c of "
      f"another item of the outfit), corpus = the outfit's items of c + random test items of c "
      f"from other outfits ({e.corpus_size} in all, fewer if c has fewer test items); R@K "
      f"averaged within each category, then over categories. 'fitb': accuracy over "
      f"{NUM_FITB_CHOICES} same-category choices ({fitb_source}), a choice's distance = its mean "
      f"squared distance to the outfit's items. 'category_accuracy': the category classifier on "
      f"every test item. Distances: squared Euclidean between unit style embeddings. Corpora and "
      f"questions drawn once (seed {e.seed}), the same for every method; ties count in "
      f"expectation. Baselines: 'random' scores all equal (exact expected value); 'popularity' "
      f"ranks by how often the candidate's category co-occurs with the query's in training "
      f"outfits, then by visual frequency (mean cosine similarity of the item's frozen-backbone "
      f"vector to its {e.popularity_neighbors} nearest training items of its category: CTL items "
      f"are crops without product ids, so 'most frequent product' becomes 'looks like the most "
      f"training items'); its category_accuracy predicts the most frequent training category; "
      f"'untrained' is the model at initialisation.")


@dataclasses.dataclass
class Corpus:
  """Rows of queries against corpora of test items (padded with -1, masked by `valid`)."""

  query: np.ndarray  # [M] query item
  items: np.ndarray  # [M, N] corpus items
  positive: np.ndarray  # [M, N] bool
  valid: np.ndarray  # [M, N] bool
  category: np.ndarray  # [M] the restricted category (-1 for all categories)

  def rows(self, keep: np.ndarray) -> Corpus:
    """The queries `keep` (a bool mask or ids) only."""
    return Corpus(self.query[keep], self.items[keep], self.positive[keep], self.valid[keep],
                  self.category[keep])


def _fill(rng, pool: np.ndarray, outfit: np.ndarray, own: int, num: int) -> np.ndarray:
  """Up to `num` distinct items of `pool` outside outfit `own`, at random."""
  if num <= 0:
    return pool[:0]
  if len(pool) <= 4 * num:  # small pool: filter and permute
    others = pool[outfit[pool] != own]
    return rng.permutation(others)[:num]
  picked: list[int] = []
  seen = set()
  while len(picked) < num:
    for i in pool[rng.integers(len(pool), size=2 * num)]:
      if outfit[i] != own and i not in seen:
        seen.add(i)
        picked.append(int(i))
        if len(picked) == num:
          break
  return np.asarray(picked, np.int64)


def _pack(rows: list[tuple[int, np.ndarray, np.ndarray, int]], size: int) -> Corpus:
  m = len(rows)
  items = np.full((m, size), -1, np.int64)
  positive = np.zeros((m, size), bool)
  for r, (_, pos, fill, _) in enumerate(rows):
    both = np.concatenate([pos, fill])[:size]
    items[r, :len(both)] = both
    positive[r, :min(len(pos), size)] = True
  return Corpus(query=np.array([r[0] for r in rows], np.int64), items=items, positive=positive,
                valid=items >= 0, category=np.array([r[3] for r in rows], np.int64))


def query_outfits(test: ctl.CtlData, outfit_size: int) -> list[np.ndarray]:
  groups = product_data.items_by_outfit(test)
  return [g for g in groups if (len(g) == outfit_size if outfit_size else len(g) >= 2)]


def retrieval_corpora(test: ctl.CtlData, corpus_size: int, outfit_size: int,
                      seed: int) -> tuple[Corpus, Corpus]:
  """(all-categories, restricted) corpora of every query of the protocol."""
  rng = np.random.default_rng([seed, 0])
  outfit, category = test.item_outfit, test.item_category
  everything = np.arange(len(test))
  by_category = [np.flatnonzero(category == c) for c in range(len(test.categories))]
  all_rows, restricted_rows = [], []
  for group in query_outfits(test, outfit_size):
    own = int(outfit[group[0]])
    for q in group:
      others = group[group != q]
      all_rows.append((q, others, _fill(rng, everything, outfit, own, corpus_size - len(others)),
                       -1))
      for c in np.unique(category[others]):
        pos = others[category[others] == c]
        restricted_rows.append((q, pos, _fill(rng, by_category[c], outfit, own,
                                               corpus_size - len(pos)), int(c)))
  if not all_rows:
    raise ConfigError(f"no held-out outfit has {outfit_size} items ({len(test.outfits)} outfits): "
                      f"set eval.outfit_size (0 = any size) to match the data")
  return _pack(all_rows, corpus_size), _pack(restricted_rows, corpus_size)


@dataclasses.dataclass
class Fitb:
  question: np.ndarray  # [Q, L] outfit items shown, -1 padded
  answers: np.ndarray  # [Q, A] choices, the correct one first, -1 padded
  source: str
  num_dropped: int = 0

  def rows(self, keep: np.ndarray) -> Fitb:
    return Fitb(self.question[keep], self.answers[keep], self.source, 0)


def _pad(rows: list[list[int]]) -> np.ndarray:
  out = np.full((len(rows), max((len(r) for r in rows), default=1)), -1, np.int64)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def sample_fitb(test: ctl.CtlData, outfit_size: int, seed: int) -> Fitb:
  """One question per query outfit: one item hidden among three of its category elsewhere."""
  rng = np.random.default_rng([seed, 1])
  by_category = [np.flatnonzero(test.item_category == c) for c in range(len(test.categories))]
  questions, answers = [], []
  for group in query_outfits(test, outfit_size):
    hidden = int(group[rng.integers(len(group))])
    wrong = _fill(rng, by_category[test.item_category[hidden]], test.item_outfit,
                  int(test.item_outfit[hidden]), NUM_FITB_CHOICES - 1)
    if len(wrong) == NUM_FITB_CHOICES - 1:
      questions.append([int(i) for i in group if i != hidden])
      answers.append([hidden, *map(int, wrong)])
  return Fitb(_pad(questions), _pad(answers), source="sampled from the test outfits")


def fitb_questions(ds: product_data.ProductDataset, held: ctl.CtlData,
                   config: ml_collections.ConfigDict, split: str = "test") -> Fitb:
  """The questions of fitb_eval.json (read with the dataset, see `product_data.fitb_from_file`),
  else sampled; always sampled for the validation split (the file's questions are of test
  outfits)."""
  if split == "test" and ds.fitb_file is not None:
    questions, answers = ds.fitb_file
    dropped = sum(d.file.endswith(product_data.FITB_FILE) for d in ds.other_drops.drops)
    return Fitb(_pad(questions), _pad(answers), source=product_data.FITB_FILE,
                num_dropped=dropped)
  return sample_fitb(held, config.eval.outfit_size, config.eval.seed)


def embedding_scorer(style: np.ndarray) -> Scorer:
  """Squared Euclidean distance between unit style embeddings: 2 - 2 cos."""
  style = style.astype(np.float64)

  def score(queries, items):
    out = np.empty(items.shape)
    for lo in range(0, len(queries), 4096):
      q, c = style[queries[lo:lo + 4096]], style[np.maximum(items[lo:lo + 4096], 0)]
      out[lo:lo + 4096] = 2.0 - 2.0 * np.einsum("md,mnd->mn", q, c)
    return out

  return score


def constant_scorer(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
  return np.zeros(items.shape)


def popularity_scorer(item_category: np.ndarray, cooccurrence: np.ndarray,
                      visual_frequency: np.ndarray) -> Scorer:
  """Category co-occurrence with the query first, then visual frequency (see `protocol`)."""
  # Co-occurrence counts are integers and 0.49 * frequency lies in [-0.49, 0.49]: lexicographic.
  score = lambda queries, items: -(
      cooccurrence[item_category[queries][:, None], item_category[np.maximum(items, 0)]]
      + 0.49 * visual_frequency[np.maximum(items, 0)])
  return score


def visual_frequency(test_global: np.ndarray, test_category: np.ndarray, train_global: np.ndarray,
                     train_category: np.ndarray, k: int) -> np.ndarray:
  """[num_test] mean cosine similarity of each item to its k nearest training items of its
  category (backbone vectors): high for looks that many training items share."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  test_global, train_global = unit(test_global.astype(np.float32)), unit(
      train_global.astype(np.float32))
  out = np.zeros(len(test_global))
  for c in np.unique(test_category):
    rows, ref = np.flatnonzero(test_category == c), train_global[train_category == c]
    if len(ref) == 0:
      continue
    kk = min(k, len(ref))
    for lo in range(0, len(rows), 2048):
      sims = test_global[rows[lo:lo + 2048]] @ ref.T
      out[rows[lo:lo + 2048]] = np.mean(-np.partition(-sims, kk - 1, axis=1)[:, :kk], axis=1)
  return out


def restricted_recall(score: Scorer, corpus: Corpus, ks: Sequence[int]) -> dict:
  d = score(corpus.query, corpus.items)
  per_row = metrics.recall_at_k(d, corpus.positive, ks, corpus.valid, reduce=False)
  cats = np.unique(corpus.category)
  return {k: float(np.mean([per_row[k][corpus.category == c].mean() for c in cats])) for k in ks}


def fitb_accuracy(score: Scorer, fitb: Fitb) -> float:
  """Accuracy of picking the hidden item: lowest mean distance to the question's items."""
  valid_q = fitb.question >= 0
  total = np.zeros(fitb.answers.shape)
  for slot in range(fitb.question.shape[1]):
    rows = np.flatnonzero(valid_q[:, slot])
    total[rows] += score(fitb.question[rows, slot], fitb.answers[rows])
  d = total / np.maximum(valid_q.sum(axis=1, keepdims=True), 1)
  return metrics.hit_rates(d[:, 0], d[:, 1:], [1], fitb.answers[:, 1:] >= 0)[1]


@dataclasses.dataclass
class Protocol:
  """Every query of one evaluation, and which of them ask for products never trained on."""

  all_corpus: Corpus
  restricted: Corpus
  fitb: Fitb
  # Masks of the queries whose positives (R@K) or hidden item (FITB) are all products that no
  # training item shows; None when the products are not known (no generator latents).
  unseen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _metrics(score: Scorer, all_corpus: Corpus, restricted: Corpus, fitb: Fitb,
             ks: Sequence[int], suffix: str = "") -> dict[str, float]:
  recall = metrics.recall_at_k(score(all_corpus.query, all_corpus.items), all_corpus.positive,
                               ks, all_corpus.valid) if len(all_corpus.query) else {}
  out = {f"r@{k}{suffix}": recall.get(k, float("nan")) for k in ks}
  restricted_r = restricted_recall(score, restricted, ks) if len(restricted.query) else {}
  out.update({f"restricted_r@{k}{suffix}": restricted_r.get(k, float("nan")) for k in ks})
  out[f"fitb{suffix}"] = fitb_accuracy(score, fitb) if len(fitb.answers) else float("nan")
  return out


def ranking_metrics(score: Scorer, queries: Protocol, ks: Sequence[int]) -> dict[str, float]:
  """r@K, restricted_r@K and fitb over every query and, when known, over the unseen ones
  (`*_unseen`)."""
  out = _metrics(score, queries.all_corpus, queries.restricted, queries.fitb, ks)
  if queries.unseen is not None:
    a, r, f = queries.unseen
    out.update(_metrics(score, queries.all_corpus.rows(a), queries.restricted.rows(r),
                        queries.fitb.rows(f), ks, "_unseen"))
  return out


def unseen_queries(latents: dict, ds: product_data.ProductDataset, held: ctl.CtlData,
                   all_corpus: Corpus, restricted: Corpus, fitb: Fitb
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """Masks of the queries whose positives are products absent from the training items."""
  table = latents.get("item_product")
  if table is None:
    return None
  trained = {table.get(ds.train.item_keys[i]) for i in ds.train_items()}
  unseen = np.array([table.get(k) not in trained for k in held.item_keys] + [False])

  def all_unseen(corpus):
    return np.all(np.where(corpus.positive, unseen[corpus.items], True), axis=1)

  return all_unseen(all_corpus), all_unseen(restricted), unseen[fitb.answers[:, 0]]


def oracle_scorer(latents: dict, held: ctl.CtlData) -> Scorer:
  """The generator's latent styles: items of the query's outfit style first."""
  style = oracle.styles(latents["item_style"], held.item_keys)
  return oracle.style_scorer(style, style)


class ItemEmbedder:
  """Style, logits and backbone vector of items, batched and sharded, from crops or from the
  feature cache."""

  def __init__(self, model: ProductModel, mesh: jax.sharding.Mesh, state_sharding: Any,
               config: ml_collections.ConfigDict, cache: FeatureCache | None = None):
    self.config, self.cache = config, cache
    fn = product_steps.item_step if cache is None else product_steps.item_from_features_step
    self._apply = inference.ShardedApply(fn, model, mesh, state_sharding)

  def __call__(self, state: TrainState, data: ctl.CtlData,
               items: np.ndarray | None = None) -> dict:
    """{'style' [n, D], 'logits' [n, C], 'global' [n, G]} of `items` (default: all) of `data`."""
    items = np.arange(len(data)) if items is None else np.asarray(items)
    if self.cache is None:
      rows = product_data.item_images(data)
      batches = inference.image_batches(self.config, ImageRows(rows.source, rows.ids[items]),
                                        product_data.crops_of(data)[items])
    else:
      rows = self.cache.rows("items", [data.item_keys[i] for i in items])
      batches = inference.cached_batches(self.cache, "items", rows, self.config.eval.batch_size)
    return self._apply.over(state, batches, len(items))


def _popularity_frequency(embed: ItemEmbedder, untrained_state, ds, test_global, test_category,
                          config):
  """Visual frequency of every test item against a seeded sample of training items per category
  (at most eval.popularity_train_items each), in the initial backbone's feature space."""
  rng = np.random.default_rng([config.eval.seed, 2])
  train_items = ds.train_items()
  cats = ds.train.item_category[train_items]
  cap = config.eval.popularity_train_items
  sample = np.sort(np.concatenate([rng.permutation(train_items[cats == c])[:cap]
                                   for c in np.unique(cats)]))
  train_global = embed(untrained_state, ds.train, sample)["global"]
  return visual_frequency(test_global, test_category, train_global,
                          ds.train.item_category[sample], config.eval.popularity_neighbors)


def evaluate(state: TrainState, embed: ItemEmbedder, ds: product_data.ProductDataset,
             config: ml_collections.ConfigDict, untrained_state: TrainState | None = None,
             split: str = "test") -> dict:
  """The model's held-out metrics on `split` ('test' or 'validation') and, on test with
  `config.eval.baselines`, its baselines (random, popularity, untrained, and the oracle when the
  generator's latents are found: see `ctl_jax/oracle.py`)."""
  e = config.eval
  ks = tuple(e.ks)
  held = ds.split(split)
  all_corpus, restricted = retrieval_corpora(held, e.corpus_size, e.outfit_size, e.seed)
  fitb = fitb_questions(ds, held, config, split)
  latents = oracle.load_latents(e.latents, ds.root)
  unseen = (None if latents is None
            else unseen_queries(latents, ds, held, all_corpus, restricted, fitb))
  queries = Protocol(all_corpus, restricted, fitb, unseen)
  labels = held.item_category

  def model_metrics(s):
    out = embed(s, held)
    values = ranking_metrics(embedding_scorer(out["style"]), queries, ks)
    values["category_accuracy"] = float(np.mean(np.argmax(out["logits"], -1) == labels))
    return values, out

  results, _ = model_metrics(state)
  results.update(
      step=int(jax.device_get(state.step)), split=split, num_queries=len(all_corpus.query),
      num_restricted_queries=len(restricted.query), num_fitb_questions=len(fitb.answers),
      num_fitb_dropped=fitb.num_dropped, num_test_items=len(held),
      num_unseen_queries=None if unseen is None else int(unseen[0].sum()),
      train_fraction=ds.train_fraction, num_train_outfits=len(ds.train_outfits),
      loss=config.loss.name, negatives=negative_rule(config.loss),
      num_negatives=config.loss.num_negatives,
      protocol=protocol(config, fitb.source))
  if e.baselines and split == "test":
    train_counts = np.bincount(ds.train.item_category[ds.train_items()],
                               minlength=len(ds.categories))
    baselines = {"random": ranking_metrics(constant_scorer, queries, ks)}
    baselines["random"]["category_accuracy"] = 1.0 / len(ds.categories)
    if untrained_state is not None:
      untrained, untrained_out = model_metrics(untrained_state)
      frequency = _popularity_frequency(embed, untrained_state, ds, untrained_out["global"],
                                        labels, config)
      popularity = ranking_metrics(
          popularity_scorer(labels, ds.cooccurrence(), frequency), queries, ks)
      popularity["category_accuracy"] = float(np.mean(labels == np.argmax(train_counts)))
      baselines.update(popularity=popularity, untrained=untrained)
    if latents is not None and "item_style" in latents:
      baselines["oracle"] = ranking_metrics(oracle_scorer(latents, held), queries, ks)
      baselines["oracle"]["category_accuracy"] = float("nan")
    results["baselines"] = baselines
  return results


TABLE_COLUMNS = ("r@1", "r@5", "r@10", "restricted_r@1", "restricted_r@5", "restricted_r@10",
                 "fitb", "category_accuracy")
