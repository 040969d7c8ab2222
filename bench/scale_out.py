"""Scale-out and fault-tolerance costs on this machine, measured side by side in one run.

  python -m bench.scale_out [--config smoke] [--batch 32] [--steps 10] [--json FILE]

Scaling: the same config and global batch on 1, 2 and 4 fake CPU devices in one process, and on
2 processes x 2 devices joined by jax.distributed (gloo over 127.0.0.1). Each setting runs in
its own processes (the device count is fixed when JAX starts). Per setting:
  step_only   ms per step of the jitted train step on one global batch held on the devices;
  end_to_end  ms per step with the real input pipeline (each process reads its own rows);
and triplets/s from end_to_end. On 2 shared cores more devices cannot be faster: what the rows
show is the per-step overhead of splitting the batch and of the cross-process collectives.

Checkpoints of the ResNet-50 config (configs/default.py: 224 px, frozen backbone, Adam on the
heads), one process: the time the training loop is held by a save (first save, which compiles
the checksum program, and a later one), the time until the save is complete on disk, its size,
the time to restore the newest checkpoint with verification, and what a resume costs over a
fresh start: restoring instead of initialising, and positioning the input at the resumed step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker_env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def _import_trainer():
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  from ctl_jax.trainer import loop  # after TensorFlow lets go of the accelerators
  return loop


def _config(name: str, data_root: str, batch: int):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.root = data_root
  config.data.source = "images"
  config.input.batch_size = batch
  config.eval.baselines = False
  config.train.tensorboard = False
  return config


def scaling_worker(args) -> dict:
  """ms per step on this process's devices (a collective run when args.num_processes > 1)."""
  from ctl_jax.trainer import cluster
  if args.num_processes > 1:
    cluster.join(cluster.spec_from(f"127.0.0.1:{args.port}", args.num_processes,
                                   args.process_id))
  loop = _import_trainer()
  import jax

  from ctl_jax.trainer import sharding
  config = _config(args.config, args.data, args.batch)
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.setup(config, workdir)
    state = run.fresh_state()
    step_fn = loop.make_train_step(run, state)
    batches = run.task.train_batches(run.config, run.data, 0, None)
    inputs = run.task.step_inputs
    to_device = lambda: sharding.to_global(
        {k: v for k, v in next(batches).items() if k in inputs}, run.mesh)

    def timed(get_batch, steps):
      nonlocal state
      state, metrics = step_fn(state, get_batch())  # compiles on first use
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step_fn(state, get_batch())
      jax.block_until_ready(metrics)
      return 1000 * (time.perf_counter() - start) / steps

    fixed = to_device()
    step_only = timed(lambda: fixed, args.steps)
    end_to_end = timed(to_device, args.steps)
  return {"processes": jax.process_count(), "devices": jax.device_count(),
          "step_only_ms": step_only, "end_to_end_ms": end_to_end,
          "triplets_per_second": args.batch / end_to_end * 1000}


def checkpoint_worker(args) -> dict:
  """Save/restore times of configs/default.py (ResNet-50) and the cost of a resume."""
  loop = _import_trainer()
  import jax

  from ctl_jax.trainer import checkpoint
  config = _config("default", args.data, 8)
  out = {}
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.setup(config, workdir)
    jax.block_until_ready(run.restore_or_init())  # compiles the initialisation once
    t = time.perf_counter()
    state = run.restore_or_init()  # empty workdir: a fresh start
    jax.block_until_ready(state)
    out["start_fresh_s"] = time.perf_counter() - t
    leaves = jax.tree.leaves(jax.device_get(state))
    out["state_mb"] = sum(x.nbytes for x in leaves) / 2**20
    meta = run.meta()
    for step, name in ((1, "first"), (2, "later")):
      t = time.perf_counter()
      run.checkpointer.save(step, state, meta, force=True)
      out[f"save_{name}_blocking_s"] = time.perf_counter() - t
      run.checkpointer.wait()
      out[f"save_{name}_complete_s"] = time.perf_counter() - t
    directory = os.path.join(run.checkpointer.directory, "2")
    out["checkpoint_mb"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in
                               os.walk(directory) for f in files) / 2**20
    t = time.perf_counter()
    restored = run.restore_or_init()  # the same command again: fresh init + newest good step
    jax.block_until_ready(restored)
    out["start_resumed_s"] = time.perf_counter() - t
    t = time.perf_counter()
    run.checkpointer.restore(state)
    out["restore_verified_s"] = time.perf_counter() - t
    t = time.perf_counter()
    checkpoint.state_checksums(restored)
    out["verify_s"] = time.perf_counter() - t
    next(run.task.train_batches(run.config, run.data, 0, None))  # tf.data's one-off start-up
    for start, name in ((0, "step_0"), (1_000_000, "step_1M")):
      t = time.perf_counter()
      next(run.task.train_batches(run.config, run.data, start, None))
      out[f"first_batch_{name}_s"] = time.perf_counter() - t
  out["resume_extra_s"] = (out["start_resumed_s"] - out["start_fresh_s"]
                           + out["first_batch_step_1M_s"] - out["first_batch_step_0_s"])
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_workers(base: list[str], devices: int, processes: int) -> dict:
  """Starts `processes` workers with `devices` devices each; returns process 0's result."""
  port = _free_port()
  procs = [subprocess.Popen(base + [f"--devices={devices}", f"--num_processes={processes}",
                                    f"--process_id={i}", f"--port={port}"],
                            env=_worker_env(devices), stdout=subprocess.PIPE, text=True,
                            cwd=ROOT) for i in range(processes)]
  outputs = [p.communicate()[0] for p in procs]
  for p in procs:
    if p.returncode:
      raise RuntimeError(f"worker failed ({p.returncode}): {' '.join(p.args)}")
  return json.loads([line for line in outputs[0].splitlines() if line.startswith("{")][-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="smoke", help="config of the scaling rows")
  parser.add_argument("--batch", type=int, default=32, help="global batch of the scaling rows")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--scenes", type=int, default=200)
  parser.add_argument("--json", default="")
  parser.add_argument("--skip_checkpoint", action="store_true")
  parser.add_argument("--skip_scaling", action="store_true")
  # Worker-only arguments.
  parser.add_argument("--worker", choices=["scaling", "checkpoint"], help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--num_processes", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = {"scaling": scaling_worker, "checkpoint": checkpoint_worker}[args.worker](args)
    if args.process_id == 0:
      print(json.dumps(result), flush=True)
    return

  from input_pipeline.tools import synthetic_stl
  with tempfile.TemporaryDirectory() as data:
    synthetic_stl.write_stl_dataset(data, num_scenes=args.scenes, seed=0, scene_size=(96, 128),
                                product_size=64, workers=1)
    module = [sys.executable, "-m", "bench.scale_out", f"--data={data}"]
    scaling = [module + ["--worker=scaling", f"--config={args.config}", f"--batch={args.batch}",
                         f"--steps={args.steps}"]]
    rows = [] if args.skip_scaling else [
        _run_workers(scaling[0], devices, processes)
        for devices, processes in ((1, 1), (2, 1), (4, 1), (2, 2))]
    ckpt = None if args.skip_checkpoint else _run_workers(module + ["--worker=checkpoint"], 1, 1)

  if rows:
    base = rows[0]
    print(f"Scaling, config {args.config}, global batch {args.batch}, {args.steps} timed steps:")
    print(f"{'processes x devices':>20} {'step only ms':>13} {'end-to-end ms':>14} "
          f"{'triplets/s':>11} {'overhead ms/step':>17}")
    for r in rows:
      label = f"{r['processes']} x {r['devices'] // r['processes']}"
      print(f"{label:>20} {r['step_only_ms']:13.1f} {r['end_to_end_ms']:14.1f} "
            f"{r['triplets_per_second']:11.1f} "
            f"{r['end_to_end_ms'] - base['end_to_end_ms']:17.1f}")
  if ckpt:
    print("\nCheckpoints of configs/default.py (ResNet-50), one process:")
    for k, v in ckpt.items():
      print(f"  {k:28s} {v:10.3f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"scaling": rows, "checkpoint": ckpt}, f, indent=2)


if __name__ == "__main__":
  main()
