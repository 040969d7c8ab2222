"""Does a recipe learn style or remember products? Held-out figures across generator seeds and
sizes, as fractions of the oracle, all pairs and cold-start (`*_unseen`) side by side.

  python -m bench.generalisation --task scene --sizes 1000,3000 --seeds 0,1,2 --out runs/gen
  python -m bench.generalisation --task product --sizes 1000,4000 --seeds 0,1,2 --out runs/gen

Each (size, seed) generates its data (`--reuse`, default STL-Fashion's 1.89 pairs per product;
the generator's latents beside it give the oracle) into `<out>/data/`, and trains the task's demo
config (`configs/demo.py`, `configs/product_demo.py`; `--set field=value` overrides, repeatable)
as `run.py train` would, in `<out>/<task>_<size>_<seed>/`. Finished runs are reused. Prints the
table of mean +- spread (half the range over seeds) and writes `<out>/<task>_summary.json`.

`--renderer cross` draws the data with `bench/cross_renderer.py` instead: real CTL outfits,
another drawing and another colour rule, every product in one outfit. The demo configs were not
tuned on it: it checks that a recipe learns a rule rather than the project generator's quirks.

  python -m bench.generalisation --renderer cross --task scene --sizes 1000 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from absl import logging  # noqa: E402

from bench import cross_renderer  # noqa: E402
from configs import demo, product_demo  # noqa: E402
from ctl_jax.trainer import loop  # noqa: E402
from input_pipeline.tools import synthetic_ctl, synthetic_stl, synthetic_world  # noqa: E402

METRICS = {"scene": ("auc", "hr@10"), "product": ("r@10", "fitb")}


def generate(task: str, out: Path, size: int, seed: int, reuse: float,
             renderer: str = "world") -> Path:
  if renderer == "cross":
    root = out / "data" / f"cross_{task}_{size}_{seed}"
    if not (root / ("generator.json" if task == "scene" else "ctl_generator.json")).exists():
      cross_renderer.write_cross_dataset(root, size, seed, fmt="stl" if task == "scene" else "ctl")
    return root
  root = out / "data" / f"{task}_{size}_{seed}_reuse{reuse:g}"
  if not (root / "generator.json").exists() and not (root / "ctl_generator.json").exists():
    if task == "scene":
      synthetic_stl.write_stl_dataset(root, num_scenes=size, seed=seed, reuse=reuse)
    else:
      synthetic_ctl.write_ctl_dataset(root, num_outfits=size, seed=seed, reuse=reuse)
  assert synthetic_world.latents_path(root).exists()
  return root


def train(task: str, root: Path, workdir: Path, overrides: list[str]) -> dict:
  done = workdir / "eval_metrics.json"
  if done.exists():
    return json.loads(done.read_text())
  config = (demo if task == "scene" else product_demo).get_config()
  config.data.root = str(root)
  for item in overrides:
    field, value = item.split("=", 1)
    section, name = field.rsplit(".", 1)
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = type(node[name])(yaml.safe_load(value)) if node[name] is not None else value
  return loop.train_and_evaluate(config, str(workdir))


def summarise(task: str, results: dict[tuple[int, int], dict]) -> dict:
  """Per size: mean and spread over seeds of the model, the oracle, model/oracle and unseen."""
  out = {}
  for size in sorted({s for s, _ in results}):
    runs = [r for (s, _), r in sorted(results.items()) if s == size]
    row = {"seeds": len(runs)}
    for m in METRICS[task]:
      for name, values in (
          (m, [r[m] for r in runs]),
          (f"{m}_unseen", [r.get(f"{m}_unseen", np.nan) for r in runs]),
          (f"oracle_{m}", [r["baselines"]["oracle"][m] for r in runs]),
          (f"untrained_{m}", [r["baselines"]["untrained"][m] for r in runs]),
          (f"{m}_of_oracle", [r[m] / r["baselines"]["oracle"][m] for r in runs])):
        values = np.asarray(values, np.float64)
        row[name] = (float(np.mean(values)), float(np.ptp(values) / 2))
    out[size] = row
  return out


def format_table(task: str, summary: dict) -> str:
  cols = [c for m in METRICS[task] for c in (m, f"{m}_unseen", f"oracle_{m}", f"{m}_of_oracle",
                                               f"untrained_{m}")]
  lines = ["| size | " + " | ".join(cols) + " |", "| ---: |" + " ---: |" * len(cols)]
  for size, row in summary.items():
    lines.append(f"| {size} | " + " | ".join(f"{row[c][0]:.3f} ± {row[c][1]:.3f}" for c in cols)
                 + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--task", choices=sorted(METRICS), default="scene")
  p.add_argument("--sizes", default="1000,3000", help="scenes (scene) or outfits (product)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--reuse", type=float, default=synthetic_world.STL_PAIRS_PER_PRODUCT)
  p.add_argument("--renderer", choices=("world", "cross"), default="world",
                 help="world: the project's generator (run.py generate-data); cross: "
                 "bench/cross_renderer.py, real CTL outfits, another colour rule, every product "
                 "once (--reuse does not apply)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, e.g. --set train.num_steps=1000")
  p.add_argument("--out", default="runs/generalisation")
  args = p.parse_args()
  logging.set_verbosity(logging.WARNING)
  out = Path(args.out)
  results = {}
  for size in map(int, args.sizes.split(",")):
    for seed in map(int, args.seeds.split(",")):
      root = generate(args.task, out, size, seed, args.reuse, args.renderer)
      name = root.name
      results[size, seed] = train(args.task, root, out / name, args.set)
      r = results[size, seed]
      m = METRICS[args.task][1]
      print(f"{name}: {m} {r[m]:.4f} (unseen {r.get(m + '_unseen', float('nan')):.4f}, "
            f"oracle {r['baselines']['oracle'][m]:.4f})", flush=True)
  summary = summarise(args.task, results)
  prefix = "cross_" if args.renderer == "cross" else ""
  (out / f"{prefix}{args.task}_summary.json").write_text(json.dumps(
      {"renderer": args.renderer, "reuse": args.reuse, "overrides": args.set,
       "sizes": {str(k): v for k, v in summary.items()}}, indent=1))
  print(format_table(args.task, summary))


if __name__ == "__main__":
  main()
