"""The product-based results tables: training methods (like Table 4 of Li et al., KDD 2020) and a
training-set-size sweep (like its Table 6), from one command.

  python run.py generate-data --format ctl --out data/ctl_demo --outfits 4000 --seed 0
  python -m bench.product_tables --data data/ctl_demo --out runs/product_tables

Every run is `configs/product_demo.py` (or `--config default`) with the overrides below, trained
and evaluated as `run.py train` would, in `<out>/<run name>/` (each with its eval_metrics.json).
All runs share one feature cache (`<out>/features`). Methods:
  triplet_category     triplet loss, negatives of the positive's category (the paper's choice)
  triplet_random       triplet loss, negatives of any category
  contrastive_1_1      siamese contrastive loss, 1 negative pair per positive pair
  contrastive_16_1     siamese contrastive loss, 16 negative pairs per positive pair
  proxy                classification of anchor and positive into their outfit's proxy, among
                       sampled other outfits' proxies
The sweep trains triplet_category on nested fractions of the training outfits
(`data.train_fraction`),
same number of steps. Baselines (random, popularity, untrained) come from the first run; they do
not depend on the method, and popularity and untrained see the whole training split.
Writes `<out>/tables.md` (the README's tables) and `<out>/tables.json`; finished runs are reused,
so an interrupted command resumes.
"""

from __future__ import annotations

import argparse
import json
import logging as std_logging
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

from absl import logging  # noqa: E402

from configs import product_default, product_demo  # noqa: E402
from ctl_jax.trainer import loop  # noqa: E402

CONFIGS = {"demo": product_demo.get_config, "default": product_default.get_config}
METHODS = {
    "triplet_category": dict(name="triplet", negatives="category", num_negatives=1),
    "triplet_random": dict(name="triplet", negatives="random", num_negatives=1),
    # The paper's siamese pairs take negatives of any category (`loss.negatives=auto`).
    "contrastive_1_1": dict(name="contrastive", negatives="random", num_negatives=1),
    "contrastive_16_1": dict(name="contrastive", negatives="random", num_negatives=16),
    "proxy": dict(name="proxy", negatives="random", num_negatives=1),
}
LABELS = {
    "triplet_category": "Triplet, category-restricted negatives",
    "triplet_random": "Triplet, random negatives",
    "contrastive_1_1": "Siamese contrastive, 1:1",
    "contrastive_16_1": "Siamese contrastive, 16:1",
    "proxy": "Classification, sampled proxies",
}
COLUMNS = (("r@1", "R@1"), ("r@5", "R@5"), ("r@10", "R@10"), ("restricted_r@10", "R@10 (1 cat.)"),
           ("fitb", "FITB"), ("category_accuracy", "Cat. acc."))


def run_one(base_config, out: Path, name: str, loss: dict, fraction: float, steps: int | None,
            baselines: bool) -> dict:
  """Trains and evaluates one setting in out/name (or reads its finished eval_metrics.json)."""
  workdir = out / name
  done = workdir / "eval_metrics.json"
  if done.exists():
    return json.loads(done.read_text())
  config = base_config()
  config.data.feature_dir = str(out / "features")
  config.data.train_fraction = fraction
  config.eval.baselines = baselines
  if steps is not None:
    config.train.num_steps = steps
  for key, value in loss.items():
    config.loss[key] = value
  return loop.train_and_evaluate(config, str(workdir))


def _row(label: str, values: dict) -> str:
  return f"| {label} | " + " | ".join(f"{100 * values[k]:.1f}" for k, _ in COLUMNS) + " |"


def format_tables(methods: dict, sweep: dict, first: dict) -> str:
  header = "| Method | " + " | ".join(h for _, h in COLUMNS) + " |"
  rule = "|" + "---|" * (len(COLUMNS) + 1)
  lines = ["Training methods (held-out, %):", "", header, rule]
  lines += [_row(LABELS[name], values) for name, values in methods.items()]
  for name, values in first.get("baselines", {}).items():
    lines.append(_row(f"Baseline: {name}", values))
  lines += ["", "Training-set size (triplet, category-restricted negatives; held-out, %):", "",
            "| Training outfits | " + " | ".join(h for _, h in COLUMNS) + " |", rule]
  for fraction, values in sorted(sweep.items()):
    lines.append(_row(f"{values['num_train_outfits']} ({100 * fraction:g}%)", values))
  lines += ["", f"Protocol: {first['protocol']}"]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="a CTL-format folder")
  parser.add_argument("--out", required=True, help="folder of the runs and tables")
  parser.add_argument("--config", default="demo", choices=sorted(CONFIGS))
  parser.add_argument("--steps", type=int, default=None, help="override train.num_steps")
  parser.add_argument("--fractions", default="0.125,0.25,0.5,1",
                      help="training-set fractions of the sweep")
  parser.add_argument("--methods", default=",".join(METHODS))
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  # Our progress lines only; libraries (orbax) log warnings and errors.
  std_logging.getLogger("absl").addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/ctl_jax/" in r.pathname
      or "/input_pipeline/" in r.pathname)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  def base():
    config = CONFIGS[args.config]()
    config.data.root = args.data
    return config

  methods = {}
  for i, name in enumerate(args.methods.split(",")):
    methods[name] = run_one(base, out, name, METHODS[name], 1.0, args.steps, baselines=i == 0)
  first = methods[next(iter(methods))]
  sweep = {}
  for fraction in sorted(float(f) for f in args.fractions.split(",")):
    name = "triplet_category" if fraction == 1.0 else f"triplet_category_fraction_{fraction:g}"
    values = (methods["triplet_category"] if fraction == 1.0 and "triplet_category" in methods
              else run_one(base, out, name, METHODS["triplet_category"], fraction, args.steps,
                           baselines=False))
    sweep[fraction] = values
  table = format_tables(methods, sweep, first)
  (out / "tables.md").write_text(table + "\n")
  (out / "tables.json").write_text(json.dumps({"methods": methods, "sweep": {
      str(f): v for f, v in sweep.items()}}, indent=2))
  print(table)
  print(f"wrote {out / 'tables.md'} and {out / 'tables.json'}")


if __name__ == "__main__":
  main()
