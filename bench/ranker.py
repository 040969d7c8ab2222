"""Exact catalogue ranking on this machine, with the figures it is judged by, in one run.

  python -m bench.ranker [--products 1000000] [--dim 128] [--dtype float32] [--devices 1]
                         [--pair-products 300] [--json FILE]

Measures, on a random catalogue of unit vectors (ranking cost does not depend on the values):
  latency_ms p50/p99   one scene query (batch 1), top 10, resident catalogue, result on host;
  queries_per_second   at batch 64 (the catalogue is read once per batch);
  bytes_per_second     catalogue bytes scanned per second at batch 1, next to the machine's
                       memory bandwidth measured here (numpy copy, read + write bytes counted,
                       and an XLA sum reading an array of the catalogue's size);
  streaming            the same batch-64 search with the catalogue streamed from host memory in
                       chunks (for catalogues larger than device memory);
  per_pair             the model called once per (scene, product) pair, as popular
                       re-implementations rank: heads of configs/default.py on cached backbone
                       features (ResNet-50 sizes), so the backbone is not even counted. Measured
                       on --pair-products pairs, reported per product, and the speed-up of the
                       ranker per product over it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--products", type=int, default=1_000_000)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--devices", type=int, default=1, help="fake CPU devices to shard rows over")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--repeats", type=int, default=50)
  p.add_argument("--pair-products", type=int, default=300)
  p.add_argument("--json", default=None)
  return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices > 1:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={ARGS.devices}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ctl_jax.serving import ranker  # noqa: E402


def _times(fn, repeats: int) -> np.ndarray:
  fn()  # compile and warm up
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return np.asarray(out)


def memory_bandwidth(num_bytes: int) -> dict:
  """Bytes/s of a numpy copy (read + write) and of an XLA sum (read) over `num_bytes`."""
  a = np.ones(num_bytes // 4, np.float32)
  b = np.empty_like(a)
  copy = _times(lambda: np.copyto(b, a), 5)
  x = jax.device_put(a)
  total = jax.jit(jnp.sum)
  read = _times(lambda: total(x).block_until_ready(), 5)
  return {"numpy_copy": 2 * a.nbytes / float(np.median(copy)),
          "xla_read": a.nbytes / float(np.median(read))}


def per_pair_seconds(num_pairs: int) -> float:
  """Seconds per (scene, product) pair when the model is called once per pair."""
  from configs import default
  from ctl_jax.scene import model as scene_model
  config = default.get_config()
  model = scene_model.create_model(config.model, 10)
  rng = np.random.default_rng(0)
  g = 2048  # ResNet-50 global features; the regions below are its conv4_6 map
  heads = model.heads.init(jax.random.PRNGKey(0), jnp.zeros((1, g)), jnp.zeros((1, 14, 14, 1024)),
                           jnp.zeros((1,), jnp.int32))
  # Cached-feature batches never call the backbone, so the heads' variables are all it needs.
  variables = {"params": {"heads": heads["params"]}, "batch_stats": {"heads": heads["batch_stats"]}}
  batch = {"scene_global": rng.normal(size=(1, g)).astype(np.float32),
           "scene_regions": rng.normal(size=(1, 14, 14, 1024)).astype(np.float32),
           "category": np.zeros((1,), np.int32),
           "negative_global": rng.normal(size=(1, 1, g)).astype(np.float32)}
  products = rng.normal(size=(num_pairs, 1, g)).astype(np.float32)
  call = jax.jit(lambda v, b: model.apply(v, b)[0])

  def rank_all():
    for p in products:
      call(variables, {**batch, "positive_global": p}).block_until_ready()

  return float(np.median(_times(rank_all, 3))) / num_pairs


def main(args) -> dict:
  rng = np.random.default_rng(0)
  m, d = args.products, args.dim
  emb = rng.standard_normal((m, d), np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  r = ranker.Ranker(emb, dtype=dtype)
  queries, _ = ranker.l2_query(rng.standard_normal((64, d)).astype(np.float32))
  queries = np.asarray(queries)
  one = _times(lambda: r.search(queries[:1], args.k), args.repeats)
  many = _times(lambda: r.search(queries, args.k), max(5, args.repeats // 5))
  scanned = m * (d + 1) * jnp.dtype(dtype).itemsize
  bandwidth = memory_bandwidth(scanned)
  bytes_per_s = scanned / float(np.median(one))
  stream = ranker.Ranker(emb, dtype=dtype, chunk_rows=1 << 17)
  streamed = _times(lambda: stream.search(queries, args.k), 3)
  stream = None  # frees its device copy before the next measurement
  pair = per_pair_seconds(args.pair_products)
  ranker_per_product = float(np.median(one)) / m
  return {
      "products": m, "dim": d, "dtype": args.dtype, "k": args.k,
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "latency_ms_batch1": {"p50": 1e3 * float(np.median(one)),
                            "p99": 1e3 * float(np.percentile(one, 99))},
      "queries_per_second_batch64": 64 / float(np.median(many)),
      "bytes_scanned_per_query": scanned,
      "bytes_per_second_batch1": bytes_per_s,
      "memory_bandwidth": bandwidth,
      "fraction_of_bandwidth": {k: bytes_per_s / v for k, v in bandwidth.items()},
      "streaming_queries_per_second_batch64": 64 / float(np.median(streamed)),
      "per_pair_seconds": pair, "per_pair_products": args.pair_products,
      "ranker_seconds_per_product_batch1": ranker_per_product,
      "speedup_over_per_pair": pair / ranker_per_product,
  }


if __name__ == "__main__":
  results = main(ARGS)
  json.dump(results, sys.stdout, indent=2)
  print()
  if ARGS.json:
    with open(ARGS.json, "w") as f:
      json.dump(results, f, indent=2)
