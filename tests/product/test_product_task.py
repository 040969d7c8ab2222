"""The product task end to end on generated CTL data: train, evaluate (eval_metrics.json), the
feature cache, and the serving API the product-query flow uses."""

import json

import numpy as np

from ctl_jax.product import evaluation as product_eval
from ctl_jax.serving import product_predictor
from ctl_jax.trainer import loop, sharding
from input_pipeline.product import dataset as product_data


def test_train_fraction_keeps_nested_subsets(product_smoke_config):
  config = product_smoke_config
  kept = {}
  for fraction in (0.25, 0.5, 1.0):
    config.data.train_fraction = fraction
    kept[fraction] = set(product_data.load_product_dataset(config.data).train_outfits)
  assert kept[0.25] < kept[0.5] < kept[1.0]
  assert 0.15 < len(kept[0.25]) / len(kept[1.0]) < 0.35


def test_train_evaluate_feature_cache_and_predictor(product_smoke_config, tmp_path):
  config = product_smoke_config
  config.eval.popularity_train_items = 20
  workdir = str(tmp_path / "run")
  results = loop.train_and_evaluate(config, workdir)

  saved = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
  for key in ("r@1", "r@5", "r@10", "restricted_r@10", "fitb", "category_accuracy", "protocol",
              "r@10_unseen", "fitb_unseen"):
    assert key in saved
  # The generator's latents sit beside the folder: the oracle is the ceiling of every method.
  assert set(saved["baselines"]) == {"random", "popularity", "untrained", "oracle"}
  for method in ("random", "popularity", "untrained"):
    for key in ("r@10", "restricted_r@10", "fitb"):
      assert saved["baselines"]["oracle"][key] >= saved["baselines"][method][key]
  assert saved["baselines"]["oracle"]["r@10"] > 2 * saved["baselines"]["random"]["r@10"]
  # Validated during training; the final figures are those of the best validated state.
  validated = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()
               if "validation/r@10" in line]
  assert validated and validated[0]["step"] == 0
  best_steps = [int(p.name) for p in (tmp_path / "run" / "best").iterdir() if p.name.isdigit()]
  assert len(best_steps) == 1 and best_steps[0] in [v["step"] for v in validated]
  assert "fitb_eval.json" in saved["protocol"] and saved["num_fitb_questions"] > 0
  assert saved["step"] == best_steps[0]
  # Random: exact expectations, e.g. R@10 = 10 * P / N / min(P, 10) with P = 4 positives.
  assert results["baselines"]["random"]["r@10"] == np.float64(10 / config.eval.corpus_size)
  assert results["baselines"]["random"]["fitb"] == 0.25

  # Evaluating the checkpoint again gives the same numbers (corpora drawn from eval.seed).
  config.eval.baselines = False
  again = loop.evaluate_checkpoint(config, workdir)
  assert all(again[k] == results[k] for k in ("r@1", "r@10", "fitb", "category_accuracy"))

  # The feature cache holds the same backbone vectors as the image path (to float16).
  run = loop.setup(config, workdir)
  state = loop.selected_state(run, run.restore_or_init())  # what serving restores
  cache = loop.extract_features(config, workdir)
  sharding_of = sharding.shardings_of(state)
  from_images = product_eval.ItemEmbedder(run.model, run.mesh, sharding_of, config)(
      state, run.data.test)
  from_cache = product_eval.ItemEmbedder(run.model, run.mesh, sharding_of, config,
                                         cache=cache)(state, run.data.test)
  np.testing.assert_allclose(from_cache["global"], from_images["global"], rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(from_cache["style"], from_images["style"], atol=2e-2)

  # The serving API: same embeddings as evaluation, categories and their complements.
  predictor = product_predictor.restore_product_predictor(workdir, config)
  test = run.data.test
  items = np.arange(5)
  files = [test.image_paths[test.outfits[test.item_outfit[i]]] for i in items]
  images = predictor.load_items(files, test.item_box[items])
  out = predictor.embed(images)
  np.testing.assert_allclose(out["style"], from_images["style"][items], atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(out["style"], axis=1), 1.0, atol=1e-5)
  top = predictor.predict_category(images, top_k=2)
  assert [t[0][0] for t in top] == [predictor.categories[j]
                                    for j in np.argmax(from_images["logits"][items], axis=1)]
  assert predictor.categories == run.data.categories
  co = run.data.cooccurrence()
  name = predictor.categories[int(np.argmax(np.diag(co)))]
  ranked = predictor.complementary_categories(name)
  c = predictor.categories.index(name)
  assert name not in [n for n, _ in ranked]
  assert [v for _, v in ranked] == sorted((v for _, v in ranked), reverse=True)
  first = predictor.categories.index(ranked[0][0])
  assert co[c, first] == max(co[c, j] for j in range(len(co)) if j != c)
