"""`run.py serve` under a bounded load from a local client, with and without micro-batching.

  python -m bench.serve_load [--products 100000] [--requests 500] [--concurrency 1,8,32]
                             [--config configs/demo.py] [--index SPEC] [--json FILE]

Builds, in a scratch folder: a small generated dataset (its scene photos are the requests), a
workdir holding the config's freshly initialised model (serving cost does not depend on training)
and an export of `--products` products spread over the model's categories (unit vectors; each
product's image one of the dataset's products). Then starts the service twice as a subprocess on
a free 127.0.0.1 port, `--max_batch 32` and `--max_batch 1`, and for each concurrency sends
`--requests` requests (a random scene photo, every category blended, k = 10) from that many
client threads with keep-alive connections; it prints requests/s, p50/p99 latency and errors,
and the throughput ratios. The client runs on the same cores as the service: compare rows of one
run, not across machines.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--products", type=int, default=100_000)
  p.add_argument("--requests", type=int, default=500)
  p.add_argument("--concurrency", default="1,8,32")
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--index", default=None, help="also build this ANN index (e.g. faiss:HNSW32)")
  p.add_argument("--scenes", type=int, default=60, help="scene photos generated for requests")
  p.add_argument("--json", default=None)
  return p.parse_args()


def build(folder: str, config_file: str, products: int, scenes: int, index: str | None) -> dict:
  """The dataset, workdir and export the service loads (see module doc)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import importlib.util

  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  from ctl_jax.serving import catalogue
  from ctl_jax.trainer import loop
  from input_pipeline.tools import synthetic_stl
  data = os.path.join(folder, "data")
  synthetic_stl.write_stl_dataset(data, num_scenes=scenes, seed=0, workers=1)
  spec = importlib.util.spec_from_file_location("bench_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.root = data
  if "source" in config.data:
    config.data.source = "images"
  workdir = os.path.join(folder, "work")
  run = loop.setup(config, workdir)
  state = run.fresh_state()
  run.checkpointer.save(0, state, run.meta(), force=True)
  run.checkpointer.wait()
  rng = np.random.default_rng(0)
  dim = config.model.embed_dim
  emb = rng.normal(size=(products, dim)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  ids = rng.integers(0, len(run.data.categories), products)
  images = [run.data.product_paths[i % len(run.data.product_paths)] for i in range(products)]
  manifest = catalogue.write(
      os.path.join(workdir, "export"), emb, [f"p{i:07d}" for i in range(products)], ids,
      run.data.categories, images, kind="scene_hybrid", step=0,
      fingerprint=catalogue.model_fingerprint(config, run.data.categories), image_root=data)
  if index:
    from ctl_jax.serving import ann
    ann.build(os.path.join(workdir, "export"), index, log=None)
  photos = [run.data.stl.image_paths[s] for s in run.data.stl.scenes]
  return {"workdir": workdir, "photos": photos, "products": manifest["num_products"],
          "categories": len(run.data.categories)}


def start(workdir: str, *flags: str):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen([sys.executable, "run.py", "serve", f"--workdir={workdir}",
                           "--port=0", *flags], cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env=env)
  line = proc.stdout.readline()
  if not line:
    raise SystemExit(f"serve did not start (exit code {proc.wait()})")
  return proc, json.loads(line)["serving"]


def load(url: str, photos: list[bytes], requests: int, concurrency: int) -> dict:
  """Sends `requests` requests from `concurrency` threads; latency and throughput figures."""
  import httpx
  rng = np.random.default_rng(concurrency)
  order = rng.integers(0, len(photos), requests)
  clients = [httpx.Client(timeout=120) for _ in range(concurrency)]
  latencies, errors = [], 0

  def one(i: int):
    client = clients[i % concurrency]
    t = time.perf_counter()
    r = client.post(url + "recommend", files={"image": ("scene.jpg", photos[order[i]])},
                    data={"k": "10"})
    return time.perf_counter() - t, r.status_code == 200 and len(r.json()["products"]) == 10

  start_time = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for seconds, ok in pool.map(one, range(requests)):
      latencies.append(seconds)
      errors += not ok
  wall = time.perf_counter() - start_time
  for c in clients:
    c.close()
  ms = np.asarray(latencies) * 1e3
  return {"concurrency": concurrency, "requests": requests, "requests_per_s": requests / wall,
          "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
          "errors": errors}


def main():
  args = _parse()
  levels = [int(c) for c in args.concurrency.split(",")]
  import httpx
  with tempfile.TemporaryDirectory() as folder:
    t = time.perf_counter()
    setup = build(folder, args.config, args.products, args.scenes, args.index)
    print(f"set-up: {setup['products']:,} products over {setup['categories']} categories, "
          f"{len(setup['photos'])} scene photos ({time.perf_counter() - t:.0f} s)", flush=True)
    photos = [open(p, "rb").read() for p in setup["photos"]]
    rows = []
    for max_batch in (32, 1):
      proc, url = start(setup["workdir"], f"--max_batch={max_batch}")
      try:
        load(url, photos, 2 * max(levels), max(levels))  # compile every batch shape once
        for c in levels:
          row = {"max_batch": max_batch, **load(url, photos, args.requests, c)}
          health = httpx.get(url + "healthz").json()
          row["mean_batch"] = health["requests"] / max(health["batches"], 1)
          rows.append(row)
          print(f"max_batch {max_batch:>2}  concurrency {c:>2}: {row['requests_per_s']:6.1f} "
                f"req/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors "
                f"{row['errors']}", flush=True)
      finally:
        proc.terminate()
        proc.wait()
  by = {(r["max_batch"], r["concurrency"]): r for r in rows}
  lo, hi = min(levels), max(levels)
  ratios = {
      f"batched c{hi} / c{lo}": by[(32, hi)]["requests_per_s"] / by[(32, lo)]["requests_per_s"],
      f"unbatched c{hi} / c{lo}": by[(1, hi)]["requests_per_s"] / by[(1, lo)]["requests_per_s"],
      f"batched / unbatched at c{hi}": (by[(32, hi)]["requests_per_s"]
                                         / by[(1, hi)]["requests_per_s"])}
  print("\n| micro-batching | concurrency | requests/s | p50 ms | p99 ms | errors |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    print(f"| {'max_batch 32' if r['max_batch'] > 1 else 'off (max_batch 1)'} | "
          f"{r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | "
          f"{r['p99_ms']:.0f} | {r['errors']} |")
  for name, value in ratios.items():
    print(f"{name}: {value:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "ratios": ratios, "products": setup["products"]}, f, indent=2)


if __name__ == "__main__":
  main()
