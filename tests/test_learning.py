"""The demo configs learn the planted complementary rule on products they have never seen.

The data makes every product unique (`reuse=1`, as most real STL and CTL products are), so no test
positive occurs in training: remembering products cannot help, only the style rule can. Each run
takes a couple of minutes on 2 CPU cores; the bars are the measured gaps over the untrained model
with room for seed-to-seed spread (README, "Learning style on unseen products").
"""

import json

import pytest

from bench import cross_renderer
from configs import demo, product_demo
from ctl_jax.trainer import loop
from input_pipeline.tools import synthetic_ctl, synthetic_stl


def _train_briefly(config, root, workdir) -> dict:
  """600 steps of `config` on `root`, validated every 150; the held-out results."""
  config.data.root = str(root)
  config.train.num_steps = 600
  config.eval.every_steps = 150
  return loop.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_demo_config_learns_style_on_unseen_products(tmp_path, optimized_compilation):
  root = tmp_path / "data"
  # Not the README's seed; every product in one scene.
  synthetic_stl.write_stl_dataset(root, num_scenes=1000, seed=1, reuse=1.0)
  results = _train_briefly(demo.get_config(), root, tmp_path / "run")

  saved = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
  for key in ("auc", "hr@10", "auc_unseen", "hr@10_unseen", "category_hr@10", "protocol"):
    assert key in saved
  assert set(saved["baselines"]) == {"random", "popularity", "untrained", "oracle"}
  assert saved["num_unseen"] == saved["num_queries"]  # every test positive is a new product
  base = results["baselines"]
  assert base["oracle"]["hr@10"] > 0.6 and base["oracle"]["auc"] > 0.85
  assert results["auc_unseen"] > base["untrained"]["auc"] + 0.07, results
  assert results["hr@10_unseen"] > base["untrained"]["hr@10"] + 0.04, results
  assert results["hr@10"] < base["oracle"]["hr@10"]
  # Popularity only knows training products: on new ones it ranks the positive last.
  assert base["popularity"]["auc"] < 0.5


@pytest.mark.slow
def test_product_demo_config_learns_style_on_unseen_products(tmp_path, optimized_compilation):
  root = tmp_path / "ctl"
  # Not the README's seed; every product in one outfit.
  synthetic_ctl.write_ctl_dataset(root, num_outfits=1000, seed=1, image_size=128, reuse=1.0)
  config = product_demo.get_config()
  config.eval.popularity_train_items = 300
  results = _train_briefly(config, root, tmp_path / "run")

  saved = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
  for key in ("r@1", "r@10", "fitb", "r@10_unseen", "fitb_unseen", "category_accuracy"):
    assert key in saved
  assert saved["num_unseen_queries"] == saved["num_queries"]
  base = results["baselines"]
  assert base["random"]["r@10"] == pytest.approx(10 * 4 / 200 / 4)  # E[hits in top 10] / min(P, 10)
  assert base["oracle"]["fitb"] > 0.7  # other outfits of the same style tie with the answer
  assert results["r@10_unseen"] > base["untrained"]["r@10"] + 0.05, results
  assert results["fitb_unseen"] > base["untrained"]["fitb"] + 0.1, results
  assert results["category_accuracy"] > 0.7, results  # 13 categories; state chosen by r@10
  assert results["fitb"] < base["oracle"]["fitb"]


@pytest.mark.slow
def test_demo_configs_learn_a_rule_they_were_not_tuned_on(tmp_path, optimized_compilation):
  # bench/cross_renderer shares no code with the generator the demos were tuned on: real CTL
  # outfits' boxes and labels, other shapes, complementary colours, every product in one outfit.
  root = tmp_path / "cross"
  cross_renderer.write_cross_dataset(root, num_outfits=400, seed=7, fmt="both", workers=1)

  results = _train_briefly(demo.get_config(), root, tmp_path / "scene")
  base = results["baselines"]
  assert results["num_unseen"] == results["num_queries"]
  assert results["auc_unseen"] > base["untrained"]["auc"] + 0.2, results
  assert results["hr@10_unseen"] > base["untrained"]["hr@10"] + 0.25, results
  assert results["hr@10_unseen"] > 0.5 * base["oracle"]["hr@10"], results

  product = product_demo.get_config()
  product.eval.popularity_train_items = 100
  results = _train_briefly(product, root, tmp_path / "product")
  base = results["baselines"]
  assert results["num_unseen_queries"] == results["num_queries"]
  assert results["r@10_unseen"] > base["untrained"]["r@10"] + 0.15, results
  assert results["fitb_unseen"] > base["untrained"]["fitb"] + 0.25, results
