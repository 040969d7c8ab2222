"""Training throughput suite: four ways to train the same CTL heads, side by side in one run.

  python -m bench.train_throughput [--json FILE]

On a generated STL dataset (written to a temporary folder) with configs/default.py, i.e.
ResNet-50 at 224 px with a frozen backbone, it measures triplets/s of:
  seed_style      what the popular Keras blog version does: every step pushes the scene, 16 crops
                  of the scene (its "regions") and both products through ResNet-50: 19 passes per
                  triplet. Timed on in-memory batches, so its input cost is not even counted.
  end_to_end      ctl-jax from images: the tf.data pipeline decodes and crops, and one backbone
                  pass per image gives the global vector and the region map (3 passes/triplet).
  cached          ctl-jax from the feature cache (`data.source='features'`): the backbone ran once
                  per image beforehand (its time is reported as extraction images/s), steps train
                  the heads only.
  cached_inbatch  the same with `loss.in_batch_negatives`: every scene is also scored against
                  every same-category product of the batch; each scored (scene, positive,
                  negative) term of the loss counts as a triplet.
Also: this machine's fp32 matmul rate and the fraction of it the backbone forward reaches
(FLOPs from XLA's cost analysis), the projected epoch time at STL-Fashion scale for each mode,
and the peak resident memory of extraction and of cached training at two dataset sizes (each
in its own process; the demo config, to keep it quick).

Figures on a shared machine are noisy; compare the rows of one run (the ratios), not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

from ctl_jax import task as task_lib  # noqa: E402
from ctl_jax.scene import model as scene_model  # noqa: E402
from ctl_jax.trainer import features, loop, optimizer, sharding  # noqa: E402
from ctl_jax.trainer import state as train_state  # noqa: E402
from input_pipeline.tools import synthetic_stl  # noqa: E402

STL_PAIRS, STL_SCENES, STL_PRODUCTS = 72_198, 47_739, 38_111  # published STL-Fashion scale
SEED_CROPS = 16  # the blog's 4 x 4 grid of scene crops


class SeedStyleModel(scene_model.SceneModel):
  """The blog's model: region features are backbone passes over a 4x4 grid of scene crops."""

  def _triplet_features(self, batch, train: bool):
    scene, crops, positive, negative = (batch["scene"], batch["crops"], batch["positive"],
                                        batch["negative"])
    b, n = negative.shape[:2]
    images = jnp.concatenate([scene, crops.reshape((-1,) + crops.shape[2:]), positive,
                              negative.reshape((-1,) + negative.shape[2:])])
    glob = self.features(images, train)["global"]
    k = crops.shape[1]
    side = int(round(k ** 0.5))
    regions = glob[b:b + b * k].reshape(b, side, side, -1)
    rest = glob[b + b * k:]
    return glob[:b], regions, rest[:b], rest[b:].reshape(b, n, -1)

  def init_all(self, images, category):
    glob = self.features(images)["global"]
    regions = jnp.broadcast_to(glob[:, None, None, :], (glob.shape[0], 4, 4, glob.shape[-1]))
    return self.heads(glob, regions, category)


def load_config(name: str, data_root: str, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.root = data_root
  config.eval.baselines = False
  config.input.num_parallel_calls = 2
  for dotted, value in overrides.items():
    node = config
    *path, leaf = dotted.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def timed_steps(step_fn, state, device_batches, steps: int):
  """(state, seconds for `steps` steps after one warm-up step, summed `loss_terms`)."""
  state, metrics = step_fn(state, next(device_batches))
  jax.block_until_ready(metrics)
  start, terms = time.perf_counter(), []
  for _ in range(steps):
    state, metrics = step_fn(state, next(device_batches))
    terms.append(metrics["loss_terms"])
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start, int(sum(jax.device_get(terms)))


def measure_matmul(n: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a jitted fp32 n x n matmul (median of `repeats`)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / float(np.median(times)) / 1e9


def measure_backbone(config, batch: int = 16, repeats: int = 3) -> dict:
  """Forward images/s and GFLOP/s of the config's backbone (FLOPs from XLA's cost analysis)."""
  model = scene_model.create_model(config.model, num_categories=1)
  size = config.input.image_size
  x = jnp.zeros((batch, size, size, 3), jnp.float32)
  variables = jax.jit(lambda x: model.backbone.init(jax.random.PRNGKey(0), x))(x[:1])
  compiled = jax.jit(lambda v, x: model.backbone.apply(v, x)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  jax.block_until_ready(compiled(variables, x))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(variables, x))
    times.append(time.perf_counter() - t)
  seconds = float(np.median(times))
  return {"images_per_s": batch / seconds, "gflops_per_image": flops / batch / 1e9,
          "gflops": flops / seconds / 1e9}


def seed_style(config, steps: int) -> dict:
  """The blog's 19 passes per triplet, on one in-memory batch repeated."""
  base = scene_model.create_model(config.model, num_categories=8)
  model = SeedStyleModel(backbone=base.backbone, heads=base.heads, freeze_backbone=True)
  mesh = sharding.make_mesh()
  tx, schedule = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  size, b = config.input.image_size, config.input.batch_size
  state = train_state.create_train_state(model, tx, jax.random.PRNGKey(0), size, mesh)
  rng = np.random.default_rng(0)
  image = lambda *shape: rng.normal(size=shape + (size, size, 3)).astype(np.float32)
  batch = sharding.to_global({"scene": image(b), "crops": image(b, SEED_CROPS),
                              "positive": image(b), "negative": image(b, 1),
                              "category": np.arange(b, dtype=np.int32) % 8}, mesh)
  run = argparse.Namespace(config=config, model=model, schedule=schedule, mesh=mesh,
                           task=task_lib.get_task("scene"))
  step_fn = loop.make_train_step(run, state)
  _, seconds, terms = timed_steps(step_fn, state, iter(lambda: batch, None), steps)
  return {"seconds": seconds, "triplets": terms, "pairs": steps * b}


def trainer_mode(config, workdir: str, steps: int) -> dict:
  """The real trainer's step and input pipeline (images or the feature cache)."""
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  step_fn = loop.make_train_step(run, state)
  cache = run.feature_cache(state)
  host_batches = run.task.train_batches(run.config, run.data, 0, cache)
  batches = sharding.prefetch_to_device(host_batches, run.mesh, size=config.input.prefetch,
                                        keys=run.task.step_inputs)
  device_batches = (device for _, device in batches)
  _, seconds, terms = timed_steps(step_fn, state, device_batches, steps)
  return {"seconds": seconds, "triplets": terms, "pairs": steps * config.input.batch_size}


def extraction(config, workdir: str) -> dict:
  """Runs the one-off feature extraction and times it (images/s over every cached image).

  The backbone is compiled first, as the training modes exclude their compiling step: on a
  small dataset the compile would otherwise dominate, at STL scale it does not matter."""
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  items = run.task.cache_items(run.data)
  size = config.input.image_size
  warm = features.backbone_forward(run.model, sharding.make_mesh(jax.local_devices()))
  jax.block_until_ready(warm(features.backbone_variables(state),
                             np.zeros((config.features.batch_size, size, size, 3), np.float32)))
  start = time.perf_counter()
  run.feature_cache(state)
  seconds = time.perf_counter() - start
  images = sum(len(keys) for keys, _, _ in items.values())
  return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def peak_memory(scenes: list[int], steps: int) -> list[dict]:
  """Peak RSS of extraction and of cached training of the demo config, each in a fresh process."""
  rows = []
  for n in scenes:
    with tempfile.TemporaryDirectory() as root:
      synthetic_stl.write_stl_dataset(os.path.join(root, "data"), n, seed=0)
      row = {"scenes": n}
      for probe in ("extract", "train"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.train_throughput", "--probe", probe, "--probe-root",
             root, "--steps-cached", str(steps)], check=True, capture_output=True, text=True)
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
      rows.append(row)
  return rows


def probe(kind: str, root: str, steps: int) -> None:
  """Child process of peak_memory: does one job and prints its peak RSS as JSON."""
  config = load_config("demo", os.path.join(root, "data"), **{
      "features.shard_size": 512, "train.num_steps": steps, "train.log_every_steps": steps,
      "train.checkpoint_every_steps": 10 * steps})
  workdir = os.path.join(root, "run")
  with contextlib.redirect_stdout(sys.stderr):
    if kind == "extract":
      cache = loop.extract_features(config, workdir)
      rows = sum(len(keys) for keys in cache.manifest.keys.values())
    else:
      loop.train(loop.setup(config, workdir))
      rows = steps * config.input.batch_size
  peak_mb = _peak_rss_mb()
  print(json.dumps({f"{kind}_peak_rss_mb": round(peak_mb, 1), f"{kind}_rows": rows}))


def _peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: unlike getrusage's maxrss, not inherited from
  the parent through fork)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024  # kB
  raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="default")
  parser.add_argument("--scenes", type=int, default=120, help="scenes of the generated dataset")
  parser.add_argument("--image-batch", type=int, default=8, help="batch of the image modes")
  parser.add_argument("--cached-batch", type=int, default=256, help="batch of the cached modes")
  parser.add_argument("--steps-seed", type=int, default=2)
  parser.add_argument("--steps-images", type=int, default=6)
  parser.add_argument("--steps-cached", type=int, default=30)
  parser.add_argument("--memory-scenes", default="500,2000")
  parser.add_argument("--json", default="")
  parser.add_argument("--probe", choices=("extract", "train"), help=argparse.SUPPRESS)
  parser.add_argument("--probe-root", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.probe:
    return probe(args.probe, args.probe_root, args.steps_cached)

  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, cores: {os.cpu_count()}")
  figures = {}
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    synthetic_stl.write_stl_dataset(data, args.scenes, seed=0, scene_size=(384, 512),
                                product_size=256)
    images = load_config(args.config, data, **{"input.batch_size": args.image_batch})
    cached = load_config(args.config, data, **{
        "input.batch_size": args.cached_batch, "data.source": "features",
        "data.feature_dir": os.path.join(tmp, "features")})
    inbatch = load_config(args.config, data, **{
        "input.batch_size": args.cached_batch, "data.source": "features",
        "data.feature_dir": os.path.join(tmp, "features"), "loss.in_batch_negatives": True})
    print(f"{images.model.backbone} at {images.input.image_size} px, frozen backbone; "
          f"batch {args.image_batch} from images, {args.cached_batch} from the cache")

    figures["matmul_gflops"] = measure_matmul()
    backbone = measure_backbone(images)
    figures["backbone_forward"] = backbone
    figures["backbone_fraction_of_matmul"] = backbone["gflops"] / figures["matmul_gflops"]
    print(f"fp32 matmul {figures['matmul_gflops']:.0f} GFLOP/s; backbone forward "
          f"{backbone['images_per_s']:.1f} images/s x {backbone['gflops_per_image']:.2f} GFLOP = "
          f"{backbone['gflops']:.0f} GFLOP/s ({figures['backbone_fraction_of_matmul']:.0%} of "
          f"matmul)")

    modes = {}
    modes["seed_style"] = seed_style(images, args.steps_seed)
    modes["end_to_end"] = trainer_mode(images, os.path.join(tmp, "e2e"), args.steps_images)
    figures["extraction"] = extraction(cached, os.path.join(tmp, "extract"))
    modes["cached"] = trainer_mode(cached, os.path.join(tmp, "cached"), args.steps_cached)
    modes["cached_inbatch"] = trainer_mode(inbatch, os.path.join(tmp, "inbatch"),
                                           args.steps_cached)

  ex = figures["extraction"]
  print(f"extraction: {ex['images']} images in {ex['seconds']:.1f} s = "
        f"{ex['images_per_s']:.1f} images/s (decode + ResNet forward + write)")
  stl_images = STL_PAIRS + STL_PRODUCTS  # one scene crop per pair + every product
  extraction_hours = stl_images / ex["images_per_s"] / 3600
  print(f"\n{'mode':<15} {'triplets/s':>11} {'vs seed':>8} {'vs e2e':>7} {'pairs/s':>9} "
        f"{'STL epoch':>10}")
  for name, m in modes.items():
    figures[name] = m["triplets"] / m["seconds"]
    figures[f"{name}_pairs_per_s"] = m["pairs"] / m["seconds"]
    figures[f"{name}_stl_epoch_hours"] = STL_PAIRS / figures[f"{name}_pairs_per_s"] / 3600
  for name in modes:
    rate, pairs_rate = figures[name], figures[f"{name}_pairs_per_s"]
    epoch_h = figures[f"{name}_stl_epoch_hours"]
    print(f"{name:<15} {rate:>11.1f} {rate / figures['seed_style']:>7.1f}x "
          f"{rate / figures['end_to_end']:>6.1f}x {pairs_rate:>9.1f} "
          f"{_hours(epoch_h):>10}")
  figures["stl_extraction_hours"] = extraction_hours
  print(f"(cached modes first extract {stl_images:,} STL images once: {_hours(extraction_hours)};"
        f" STL epoch = {STL_PAIRS:,} pairs)")
  for key, (num, den) in {"end_to_end_vs_seed_style": ("end_to_end", "seed_style"),
                          "cached_vs_end_to_end": ("cached", "end_to_end"),
                          "cached_inbatch_vs_end_to_end": ("cached_inbatch", "end_to_end"),
                          "cached_vs_seed_style": ("cached", "seed_style")}.items():
    figures[key] = figures[num] / figures[den]

  scenes = [int(s) for s in args.memory_scenes.split(",") if s]
  if scenes:
    figures["peak_memory"] = peak_memory(scenes, steps=args.steps_cached)
    print("\npeak resident memory (demo config, each job in a fresh process):")
    for r in figures["peak_memory"]:
      print(f"  {r['scenes']:>6} scenes: extraction of {r['extract_rows']:>6} images "
            f"{r['extract_peak_rss_mb']:>7.0f} MiB; cached training "
            f"{r['train_rows']:>6} triplets {r['train_peak_rss_mb']:>7.0f} MiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=2)
    print(f"wrote {args.json}")


def _hours(h: float) -> str:
  return f"{h:.1f} h" if h >= 1 else f"{h * 60:.1f} min"


if __name__ == "__main__":
  main()
