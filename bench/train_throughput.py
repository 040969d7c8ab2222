"""Training throughput of experiment configs on this machine, measured side by side in one run.

  python -m bench.train_throughput [--configs demo,demo_finetune,default] [--steps 10] [--json FILE]

For each config it times, on a generated STL dataset written to a temporary folder:
  step_only   the jitted train step alone on one in-memory batch (the compute ceiling);
  end_to_end  the real input pipeline feeding the same step: tf.data reading, decoding, cropping
              and resizing images, or reading the feature cache for `data.source='features'`
              (whose one-off extraction is not counted).
Both in triplets/s, with the first (compiling) step excluded. Figures on a shared machine are
noisy; compare rows of one run rather than runs of different days.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

from ctl_jax import sharding, train  # noqa: E402
from input_pipeline import synthetic  # noqa: E402

# Per config: overrides that keep one measurement to a few minutes on 2 CPU cores.
BATCH_OVERRIDES = {"default": 8}


def _timed(step_fn, state, batches, steps: int):
  """(state, seconds for `steps` steps after one warm-up step)."""
  state, metrics = step_fn(state, next(batches))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step_fn(state, next(batches))
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def measure(config_name: str, data_root: str, steps: int) -> dict:
  config = importlib.import_module(f"configs.{config_name}").get_config()
  config.data.root = data_root
  config.eval.baselines = False
  if config_name in BATCH_OVERRIDES:
    config.input.batch_size = BATCH_OVERRIDES[config_name]
  with tempfile.TemporaryDirectory() as workdir:
    run = train.setup(config, workdir)
    state = run.fresh_state()
    step_fn = train.make_train_step(run, state)
    host_batches = train.train_batches(run, 0, run.feature_cache(state))

    def device_batches():
      for batch in host_batches:
        yield sharding.to_global(train.step_inputs(run, batch),
                                 run.mesh)

    fixed = next(device_batches())

    def repeat():
      while True:
        yield fixed

    state, step_only = _timed(step_fn, state, repeat(), steps)
    state, end_to_end = _timed(step_fn, state, device_batches(), steps)
  b = config.input.batch_size
  return {
      "config": config_name, "backbone": config.model.backbone,
      "image_size": config.input.image_size, "batch_size": b,
      "freeze_backbone": config.model.freeze_backbone,
      "step_only_triplets_per_s": steps * b / step_only,
      "end_to_end_triplets_per_s": steps * b / end_to_end,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="demo,demo_finetune,default")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--scenes", type=int, default=300)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, cores: {os.cpu_count()}")
  rows = []
  with tempfile.TemporaryDirectory() as data_root:
    synthetic.write_stl_dataset(data_root, args.scenes, seed=0)
    for name in args.configs.split(","):
      rows.append(measure(name, data_root, args.steps))
      r = rows[-1]
      print(f"{name:<10} {r['backbone']:<13} {r['image_size']:>4}px batch {r['batch_size']:>3} "
            f"frozen={r['freeze_backbone']!s:<5}  step only {r['step_only_triplets_per_s']:8.1f} "
            f"triplets/s   end to end {r['end_to_end_triplets_per_s']:8.1f} triplets/s  "
            f"(pipeline keeps {r['end_to_end_triplets_per_s'] / r['step_only_triplets_per_s']:.0%})")
  if len(rows) > 1:
    base = rows[0]["end_to_end_triplets_per_s"]
    for r in rows[1:]:
      print(f"{rows[0]['config']} / {r['config']} end-to-end ratio: "
            f"{base / r['end_to_end_triplets_per_s']:.1f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
