"""How much style do a run's frozen features hold? A read-out of the generator's latent styles.

  python -m bench.style_probe --workdir runs/demo

A diagnostic, not a model: it uses the labels the trainer never sees (the latents file beside a
generated data folder). From the run's feature cache it fits softmax regressions (L2-regularised,
on standardised features) of the scene's style from the scene crop's global vector (training
pairs) and, per category, of a product's style from its global vector (training products only);
then it ranks each test pair's positive against other products of its category by the
agreement of the two read-outs, sum_s P(s | scene) P(s | product), on exactly the candidates and
metrics of the run's evaluation (`eval.num_candidates`, `eval.seed`). It prints the read-out
accuracies (test scenes, products no training pair shows) and the auc and hr@10 of that
ranking: a rough ceiling for heads trained on the same features, next to the run's
eval_metrics.json and the oracle. Scene task only.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ctl_jax import oracle  # noqa: E402
from ctl_jax.scene import evaluation  # noqa: E402
from input_pipeline import storage  # noqa: E402
from input_pipeline.feature_cache import FeatureCache  # noqa: E402
from input_pipeline.scene.dataset import load_scene_dataset  # noqa: E402
from input_pipeline.tools import synthetic_world  # noqa: E402


def fit_softmax(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-2,
                steps: int = 300):
  """Standardised softmax regression; returns predict(x) -> [n, num_classes] probabilities."""
  mean, std = x.mean(0), x.std(0) + 1e-6
  z = jnp.asarray((x - mean) / std)
  labels = jnp.asarray(y)
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
  tx = optax.adam(0.05)

  def loss(p):
    logits = z @ p[0] + p[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + (
        l2 * jnp.sum(p[0] ** 2))

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return lambda q: np.asarray(jax.nn.softmax(jnp.asarray((q - mean) / std) @ params[0]
                                             + params[1]))


def probe(config: ml_collections.ConfigDict, cache_dir: str) -> dict:
  """Read-out accuracies, and the read-outs' ranking metrics on the test split: the same
  candidates, protocol and metrics as the run's eval_metrics.json (`scene.evaluation`)."""
  data = load_scene_dataset(config.data)
  stl = data.stl
  latents = oracle.load_latents(config.eval.latents, config.data.root)
  if latents is None or "scene_style" not in latents:
    raise SystemExit(f"bench.style_probe: error: no generator latents for {config.data.root} "
                     f"(generated data only)")
  cache = FeatureCache(cache_dir)
  k = synthetic_world.NUM_STYLES
  scene_style = oracle.styles(latents["scene_style"], stl.scenes)

  def scenes(split):
    pairs = data.split(split)
    x = cache.gather("scenes", "global", cache.rows("scenes", data.scene_keys(pairs)))
    return pairs, x.astype(np.float32), scene_style[stl.pair_scene[pairs.pairs]]

  _, x_train, y_train = scenes("train")
  test, x_test, y_test = scenes("test")
  scene_posterior = fit_softmax(x_train, y_train, k)(x_test)
  products = cache.gather("products", "global", cache.rows("products", stl.products))
  products = products.astype(np.float32)
  style = oracle.styles(latents["product_style"], stl.products)
  category = np.asarray(stl.product_category)
  trained = data.training_products()
  product_posterior = np.full((len(products), k), 1.0 / k)
  for c in np.unique(category):
    fit_on = trained[category[trained] == c]
    if len(np.unique(style[fit_on])) > 1:
      rows = np.flatnonzero(category == c)
      product_posterior[rows] = fit_softmax(products[fit_on], style[fit_on], k)(products[rows])
  unseen_product = np.ones(len(products), bool)
  unseen_product[trained] = False

  def agreement_distance(rows, cols):  # a Scorer: lower is better
    if cols.ndim == 1:
      return -scene_posterior[rows] @ product_posterior[cols].T
    return -np.einsum("mk,mck->mc", scene_posterior[rows], product_posterior[cols])

  cands = evaluation.Candidates(data, test, config.eval.num_candidates, config.eval.seed)
  out = {"scene_style_accuracy": float(np.mean(scene_posterior.argmax(1) == y_test)),
         "unseen_product_style_accuracy": float(np.mean(
             product_posterior[unseen_product].argmax(1) == style[unseen_product]))}
  out.update(evaluation.ranking_metrics(agreement_distance, cands, tuple(config.eval.ks)))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a trained scene run with a feature cache")
  args = p.parse_args()
  config = ml_collections.ConfigDict(json.loads(
      storage.read_text(storage.join(args.workdir, "config.json"))))
  base = config.data.feature_dir or storage.join(args.workdir, "features")
  caches = sorted(str(d) for d in storage.path(base).iterdir() if (d / "index.json").exists())
  if not caches:
    raise SystemExit(f"bench.style_probe: error: no feature cache under {base}")
  out = probe(config, caches[-1])
  shown = ("scene_style_accuracy", "unseen_product_style_accuracy", "auc", "hr@10", "auc_unseen",
           "hr@10_unseen")
  print("probe", " ".join(f"{m} {out[m]:.3f}" for m in shown))
  results = storage.path(storage.join(args.workdir, "eval_metrics.json"))
  if results.exists():
    run = json.loads(results.read_text())
    for name, row in (("model", run), ("oracle", run["baselines"].get("oracle", {}))):
      print(name, " ".join(f"{m} {row[m]:.3f}" for m in ("auc", "hr@10", "auc_unseen",
                                                          "hr@10_unseen") if m in row))


if __name__ == "__main__":
  main()
