"""ANN indexes (ctl_jax/serving/ann.py) against the exact ranker, on one synthetic catalogue.

  python -m bench.ann [--rows 1000000] [--dim 128] [--queries 200] [--threads CORES]
                      [--index faiss:IVF1024,Flat@nprobe=8,16,32 ...] [--json FILE]

The catalogue: a mixture of clustered unit vectors like the exported embeddings (`synthetic`);
the queries: scene-model queries [v, -1] near catalogue rows. Printed side by side, in one run:

  exact      ranker.Ranker (the whole catalogue on the device, float32): per-query latency at
             batch 1 (p50, p99), queries/s at batch 1 and at batch 64;
  each ANN   an index of the spec (ann.build_index, the code `run.py export --index` runs) and
             its searcher (ann.Searcher, exact re-scoring included) per search-parameter
             setting: build time, the same latencies and rates, recall@10 against the exact
             ranker's top 10, and the speed-up over the exact queries/s (batch 1 and batch 64).

`--index faiss:FACTORY@NAME=V1,V2` tries the values V1, V2 of one search parameter. FAISS uses
`--threads` OpenMP threads (default: every core) for building and for batch-64 search; at batch
1 it answers a query on one thread, while XLA's exact search uses every core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from ctl_jax.serving import ann, ranker  # noqa: E402

DEFAULT_INDEXES = ("faiss:HNSW32@efSearch=64,128,256", "faiss:IVF1024,Flat@nprobe=8,16,32",
                   "faiss:IVF4096,Flat@nprobe=16,32,64", "faiss:IVF4096,PQ32@rerank=1,4")
BATCH = 64


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=int, default=1_000_000)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--queries", type=int, default=200)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--index", action="append", default=None,
                 help="faiss:FACTORY@PARAM=V1,V2 (repeatable; default: DEFAULT_INDEXES)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None)
  return p.parse_args(argv)


def synthetic(rows: int, dim: int, rng: np.random.Generator, *, per_cluster: int = 500,
              subspace: int = 16, spread: float = 0.7, noise: float = 0.25) -> np.ndarray:
  """[rows, dim] unit vectors: a mixture of rows/per_cluster clusters ("styles") of Zipf-like
  sizes; each varies around its random unit centre in its own random `subspace`-d subspace (norm
  ~`spread`) plus isotropic noise (norm ~`noise`), then is normalised like the embeddings."""
  clusters = max(1, rows // per_cluster)
  centres = rng.standard_normal((clusters, dim)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  bases = (rng.standard_normal((clusters, subspace, dim)) / np.sqrt(dim * subspace)
           ).astype(np.float32)
  sizes = np.minimum(rng.zipf(1.3, clusters), 50).astype(np.float64)
  labels = rng.choice(clusters, rows, p=sizes / sizes.sum())
  out = np.empty((rows, dim), np.float32)
  for s in range(0, rows, 20_000):
    lab = labels[s:s + 20_000]
    z = rng.standard_normal((len(lab), subspace)).astype(np.float32)
    x = (centres[lab] + spread * np.einsum("ns,nsd->nd", z, bases[lab])
         + noise / np.sqrt(dim) * rng.standard_normal((len(lab), dim)).astype(np.float32))
    out[s:s + len(lab)] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def scene_queries(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
  """[n, D + 1] queries [v, -1]: v a catalogue row plus noise (norm 0.3), of norm 1.5 (as
  v = f_s + q_c of unit f_s and q_c)."""
  v = rows[rng.choice(len(rows), n, replace=False)]
  v = v + 0.3 / np.sqrt(rows.shape[1]) * rng.standard_normal(v.shape).astype(np.float32)
  v = 1.5 * v / np.linalg.norm(v, axis=1, keepdims=True)
  return np.concatenate([v, -np.ones((n, 1), np.float32)], 1)


def measure(search, queries: np.ndarray, k: int) -> dict:
  """Latencies of batch-1 searches, queries/s at batch 1 and at BATCH, and the batch-1 ids."""
  search(queries[:1], k)  # compile, warm up
  search(queries[:BATCH], k)
  times, ids = [], []
  for q in queries:
    t = time.perf_counter()
    ids.append(search(q[None], k)[1][0])
    times.append(time.perf_counter() - t)
  batches = [queries[i:i + BATCH] for i in range(0, len(queries) - BATCH + 1, BATCH)]
  t = time.perf_counter()
  for b in batches:
    search(b, k)
  batched = (time.perf_counter() - t) / (len(batches) * BATCH)
  times = np.asarray(times)
  return {"p50_ms": 1e3 * float(np.median(times)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
          "qps_batch1": 1.0 / float(times.mean()), f"qps_batch{BATCH}": 1.0 / batched,
          "ids": np.stack(ids)}


def _spec_values(text: str, dim: int) -> tuple[ann.Spec, list[str]]:
  """(spec without parameters, one parameter string per value) of faiss:F@NAME=V1,V2."""
  head, _, params = text.partition("@")
  spec = ann.parse_spec(head, dim)
  if not params:
    return spec, [""]
  name, _, values = params.partition("=")
  settings = [f"{name}={v}" for v in values.split(",")]
  for one in settings:
    ann.parse_spec(f"{head}@{one}", dim)
  return spec, settings


def main(args) -> dict:
  specs = [_spec_values(t, args.dim) for t in args.index or DEFAULT_INDEXES]  # mistakes first
  faiss.omp_set_num_threads(args.threads)
  rng = np.random.default_rng(args.seed)
  start = time.perf_counter()
  rows = synthetic(args.rows, args.dim, rng)
  queries = scene_queries(rows, args.queries, rng)
  print(f"catalogue: {args.rows:,} synthetic {args.dim}-d unit rows, {args.rows // 500:,} "
        f"clusters of Zipf sizes (16-d spread 0.7 + isotropic noise 0.25, normalised); "
        f"{args.queries} scene queries [v, -1] near rows; made in "
        f"{time.perf_counter() - start:.0f} s; FAISS threads {args.threads}", flush=True)

  exact = ranker.Ranker(rows)
  base = measure(exact.search, queries, args.k)
  exact = None  # frees its device copy
  truth = base.pop("ids")
  v = queries[:, :-1] / np.linalg.norm(queries[:, :-1], axis=1, keepdims=True)
  cos = np.einsum("bd,bkd->bk", v, rows[truth])
  sample = v @ rows[rng.choice(len(rows), 1000, replace=False)].T
  print(f"cosine of a query to its 1st / 10th nearest row: {cos[:, 0].mean():.3f} / "
        f"{cos[:, -1].mean():.3f}; to a random row: median {np.median(sample):.3f}")
  results = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k,
             "threads": args.threads, "exact": base, "indexes": []}
  head = (f"{'searcher':<30} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'q/s b1':>8} "
          f"{'q/s b64':>8} {'recall@10':>9} {'x b1':>7} {'x b64':>7}")
  lines = [head, f"{'exact ranker (XLA)':<30} {'':>8} {base['p50_ms']:>8.2f} "
                 f"{base['p99_ms']:>8.2f} {base['qps_batch1']:>8.1f} "
                 f"{base[f'qps_batch{BATCH}']:>8.1f} {1.0:>9.3f} {1.0:>7.1f} {1.0:>7.1f}"]
  print(f"\nq/s b1, b{BATCH}: queries/s at batch 1 and {BATCH}; x b1, x b{BATCH}: over the exact "
        f"ranker's at the same batch; recall@10: of the exact top {args.k}")
  print(lines[0] + "\n" + lines[1], flush=True)
  for spec, settings in specs:
    t = time.perf_counter()
    index, entry = ann.build_index(rows, spec, min_rows=0)  # entry: Flat when too few rows
    built = time.perf_counter() - t
    searcher = ann.Searcher(index, rows)
    for params in settings:
      searcher.set_params(ann.resolve_params(index, params))
      m = measure(searcher.search, queries, args.k)
      ids = m.pop("ids")
      m.update(spec=str(ann.Spec(entry["type"], searcher.params)), build_s=built,
               recall=float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, truth)])),
               speedup_batch1=m["qps_batch1"] / base["qps_batch1"],
               speedup_batch64=m[f"qps_batch{BATCH}"] / base[f"qps_batch{BATCH}"],
               fallbacks=searcher.fallbacks)
      results["indexes"].append(m)
      name = f"{entry['type']} {searcher.params}"
      lines.append(f"{name:<30} {built:>8.1f} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} "
                   f"{m['qps_batch1']:>8.0f} {m[f'qps_batch{BATCH}']:>8.0f} {m['recall']:>9.3f} "
                   f"{m['speedup_batch1']:>7.0f} {m['speedup_batch64']:>7.0f}")
      print(lines[-1], flush=True)
    index = searcher = None
  print()
  for batch in (1, BATCH):
    met = [m["spec"] for m in results["indexes"]
           if m["recall"] >= 0.95 and m[f"speedup_batch{batch}"] >= 20]
    results[f"meets_target_batch{batch}"] = met
    print(f"recall@10 >= 0.95 at >= 20x the exact queries/s, batch {batch}: "
          f"{', '.join(met) or 'none'}")
  print(f"total {time.perf_counter() - start:.0f} s")
  results["table"] = lines
  return results


if __name__ == "__main__":
  ARGS = _parse()
  out = main(ARGS)
  if ARGS.json:
    with open(ARGS.json, "w") as f:
      json.dump(out, f, indent=2)
  sys.exit(0)
