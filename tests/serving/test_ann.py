"""ANN indexes of an export (ann.py): files, manifest, recall and exact distances against the
exact ranker, the -1 fallback, recommend's use of the index, and the spec errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from ctl_jax.serving import ann, catalogue, engine, ranker

ROOT = Path(__file__).resolve().parents[2]


def _clustered(rng, n, d=16, clusters=40):
  """Rows around `clusters` centres with norms that vary (log-normal): not unit vectors, so the
  inner-product graph that fails on them (see ann.py) would fail this test too."""
  centres = rng.normal(size=(clusters, d))
  rows = centres[rng.integers(clusters, size=n)] + 0.5 * rng.normal(size=(n, d))
  rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  return (rows * np.exp(0.3 * rng.normal(size=(n, 1)))).astype(np.float32)


def _queries(rng, rows, b):
  """Hybrid-form queries [v, -1] near catalogue rows (v of norm ~1.5, as f_s + q_c)."""
  v = rows[rng.integers(len(rows), size=b)] + 0.3 * rng.normal(size=(b, rows.shape[1]))
  v = 1.5 * v / np.linalg.norm(v, axis=1, keepdims=True)
  return np.concatenate([v, -np.ones((b, 1))], 1).astype(np.float32)


def _export(path, groups, kind="scene_hybrid"):
  """An export whose categories hold the row blocks `groups` ({name: [n, D]})."""
  names = list(groups)
  emb = np.concatenate(list(groups.values()))
  ids = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups.values())])
  catalogue.write(path, emb, [f"p{i}" for i in range(len(emb))], ids, names + ["Empty"],
                  [""] * len(emb), kind=kind, step=5, fingerprint="f")
  return catalogue.Catalogue(path)


def _recall(ids, exact_ids):
  return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact_ids)])


def test_index_files_manifest_and_cached_searchers(tmp_path):
  rng = np.random.default_rng(0)
  before = _export(tmp_path, {"Big Bags": _clustered(rng, 1500),
                              "Hats": _clustered(rng, 300)}).manifest
  entry = ann.build(tmp_path, "faiss:HNSW16", log=None)
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest == {**before, "index": entry}  # the rest of the manifest as it was
  assert (entry["spec"], entry["factory"], entry["params"]) == ("faiss:HNSW16", "HNSW16",
                                                                 "efSearch=64")
  big, hats = entry["categories"]["Big Bags"], entry["categories"]["Hats"]
  assert set(entry["categories"]) == {"Big Bags", "Hats"}  # none for the empty category
  assert (big["file"], big["type"], big["exact"], big["rows"]) == (
      "index/000_Big_Bags.faiss", "HNSW16", False, 1500)
  assert (hats["file"], hats["type"], hats["exact"]) == ("index/001_Hats.faiss", "Flat", True)
  assert hats["reason"] == "exact flat index: fewer than 1000 rows"
  # Readable without our code: the exported rows, in row order.
  index = faiss.read_index(str(tmp_path / big["file"]))
  assert index.ntotal == 1500 and faiss.downcast_index(index).hnsw.efSearch == 64
  np.testing.assert_array_equal(index.reconstruct_n(0, 3),
                                np.load(tmp_path / "embeddings/000_Big_Bags.npy")[:3])
  cat = catalogue.Catalogue(tmp_path)
  searcher = cat.searcher("Big Bags")
  assert isinstance(searcher, ann.Searcher) and cat.searcher("Big Bags") is searcher
  assert isinstance(cat.searcher("Big Bags", exact=True), ranker.Ranker)
  assert isinstance(cat.searcher("Hats"), ann.Searcher) and cat.searcher("Hats").params == ""
  with pytest.raises(KeyError, match="unknown category 'Shoes'"):
    cat.searcher("Shoes")


def test_recall_and_exact_distances_of_the_returned_ids(tmp_path):
  rng = np.random.default_rng(1)
  rows = _clustered(rng, 4000)
  _export(tmp_path, {"Shoes": rows})
  queries = _queries(rng, rows, 100)
  const = rng.uniform(0.5, 1.5, size=100).astype(np.float32)
  exact_dist, exact_ids = ranker.Ranker(rows).nearest(queries, const, 10)

  ann.build(tmp_path, "faiss:HNSW32", log=None)
  dist, ids = catalogue.Catalogue(tmp_path).searcher("Shoes").nearest(queries, const, 10)
  assert _recall(ids, exact_ids) >= 0.9
  # By hand: d = c - q.p for each returned id, ascending.
  p = np.concatenate([rows, (rows ** 2).sum(1, keepdims=True)], 1).astype(np.float64)
  by_hand = const[:, None] - np.einsum("bd,bkd->bk", queries.astype(np.float64), p[ids])
  np.testing.assert_allclose(dist, by_hand, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(dist, axis=1) >= 0)

  # IVF: the default nprobe (8 of 64 lists) against 1 list; the flat index is exact.
  ann.build(tmp_path, "faiss:IVF64,Flat", log=None)
  ivf = catalogue.Catalogue(tmp_path).searcher("Shoes")
  assert ivf.params == "nprobe=8"
  good = _recall(ivf.search(queries, 10)[1], exact_ids)
  ivf.set_params("nprobe=1")
  poor = _recall(ivf.search(queries, 10)[1], exact_ids)
  assert good >= 0.9 and poor < good - 0.1, (good, poor)
  ann.build(tmp_path, "faiss:IVF64,Flat", min_rows=5000, log=None)  # every category is small
  flat = catalogue.Catalogue(tmp_path)
  assert flat.manifest["index"]["categories"]["Shoes"]["type"] == "Flat"
  flat_dist, flat_ids = flat.searcher("Shoes").nearest(queries, const, 10)
  np.testing.assert_array_equal(flat_ids, exact_ids)
  np.testing.assert_allclose(flat_dist, exact_dist, rtol=1e-5, atol=1e-5)


def test_fewer_than_k_results_fall_back_to_exact(tmp_path):
  rng = np.random.default_rng(2)
  rows = _clustered(rng, 1000)
  _export(tmp_path, {"Shoes": rows})
  queries = _queries(rng, rows, 8)
  exact_scores, exact_ids = ranker.Ranker(rows).search(queries, 200)
  ann.build(tmp_path, "faiss:IVF16,Flat@nprobe=1", log=None)  # ~60 rows per list < k = 200
  searcher = catalogue.Catalogue(tmp_path).searcher("Shoes")
  assert np.any(searcher.index.search(ann.l2_queries(queries), 200)[1] < 0)  # faiss's -1
  scores, ids = searcher.search(queries, 200)
  assert searcher.fallbacks == 8
  np.testing.assert_array_equal(ids, exact_ids)
  np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
  # HNSW returns at most efSearch ids: k above it raises efSearch for the call, no fallback.
  ann.build(tmp_path, "faiss:HNSW16@efSearch=16", log=None)
  hnsw = catalogue.Catalogue(tmp_path).searcher("Shoes")
  _, ids = hnsw.search(queries, 200)
  assert hnsw.fallbacks == 0 and np.all(ids >= 0) and _recall(ids, exact_ids) > 0.9
  assert len(set(ids[0])) == 200


def test_recommend_uses_the_index_and_exact_bypasses_it(tmp_path, monkeypatch):
  rng = np.random.default_rng(3)
  rows = {c: _clustered(rng, 1200, d=8) for c in ("Shoes", "Pants")}
  _export(tmp_path, rows, kind="style_l2")
  ann.build(tmp_path, "faiss:HNSW16", log=None)
  calls = []
  for cls in (ann.Searcher, ranker.Ranker):
    search = cls.search
    monkeypatch.setattr(cls, "search", lambda self, q, k, _s=search, _c=cls: (
        calls.append(_c.__name__), _s(self, q, k))[1])
  style = rows["Pants"][7] + 0.01
  cat = catalogue.Catalogue(tmp_path)
  got = engine.product_items(cat, style, {"Pants": 0.5, "Shoes": 0.5}, 6)
  assert calls == ["Searcher", "Searcher"]
  calls.clear()
  exact = engine.product_items(cat, style, {"Pants": 0.5, "Shoes": 0.5}, 6, exact=True)
  assert calls == ["Ranker", "Ranker"]
  assert [it.signature for it in got] == [it.signature for it in exact]  # easy queries
  np.testing.assert_allclose([it.distance for it in got], [it.distance for it in exact],
                             rtol=1e-5, atol=1e-5)
  calls.clear()  # chunk_rows: an exact streaming ranker of its own
  engine.rank_category(cat, "Shoes", np.append(2 * style, -1), 0.0, 3, chunk_rows=256)
  assert calls == ["Ranker"]


def test_search_parameters_override_the_defaults_by_name():
  ivf, hnsw = faiss.index_factory(8, "IVF4096,Flat"), faiss.index_factory(8, "HNSW32")
  assert ann.resolve_params(ivf, "") == "nprobe=32"  # nlist / 128
  assert ann.resolve_params(ivf, "rerank=4") == "nprobe=32,rerank=4"
  assert ann.resolve_params(ivf, "nprobe=2") == "nprobe=2"
  assert ann.resolve_params(faiss.index_factory(8, "IVF64,Flat"), "") == "nprobe=8"  # at least 8
  assert ann.resolve_params(hnsw, "") == "efSearch=64"
  assert ann.resolve_params(faiss.IndexFlatL2(8), "") == ""


@pytest.mark.parametrize("spec, message", [
    ("foo", "--index foo: give faiss:<index_factory string>"),
    ("faiss:", "give faiss:<index_factory string>"),
    ("faiss:Nonsense", "--index faiss:Nonsense: not a FAISS index for 16-d rows (could not "
                       "parse index string Nonsense)"),
    ("faiss:IVF16,PQ5", "multiple of the number of subquantizers"),
    ("faiss:HNSW32@nprobe=4", "--index faiss:HNSW32@nprobe=4: could not set parameter nprobe"),
    ("faiss:HNSW32@rerank=1.5", "rerank=1.5: give a whole number >= 1"),
    ("faiss:IVF16,Flat@nprobe=-3", "nprobe=-3: give NAME=VALUE with a value > 0"),
    ("faiss:IVF16,Flat@nprobe", "nprobe: give NAME=VALUE"),
])
def test_bad_specs_are_one_line_serving_errors(spec, message):
  with pytest.raises(ann.IndexSpecError, match="^--index ") as error:
    ann.parse_spec(spec, dim=16)
  assert message in str(error.value) and "\n" not in str(error.value)
  assert isinstance(error.value, ann.ServingError)


def test_remote_paths_go_through_serialized_bytes(tmp_path, monkeypatch):
  """gs:// exports: the index is written and read as one object (storage's bytes)."""
  rng = np.random.default_rng(4)
  index = faiss.IndexFlatL2(4)
  index.add(rng.normal(size=(10, 4)).astype(np.float32))
  monkeypatch.setattr(ann.storage, "is_remote", lambda p: True)
  calls = []
  for name in ("serialize_index", "deserialize_index"):
    fn = getattr(faiss, name)
    monkeypatch.setattr(faiss, name, lambda *a, _f=fn, _n=name: (calls.append(_n), _f(*a))[1])
  ann.write_index(tmp_path / "x.faiss", index)
  back = ann.read_index(tmp_path / "x.faiss")
  assert calls == ["serialize_index", "deserialize_index"] and back.ntotal == 10
  (tmp_path / "bad.faiss").write_bytes(b"junk")
  with pytest.raises(ann.ServingError, match="bad.faiss: unreadable index"):
    ann.read_index(tmp_path / "bad.faiss")


def test_build_index_command(tmp_path):
  """`run.py build-index`: what it built, then a bad spec as one line and exit code 1."""
  rng = np.random.default_rng(5)
  _export(tmp_path, {"Shoes": _clustered(rng, 1100), "Hats": _clustered(rng, 50)})
  run = lambda *a: subprocess.run(
      [sys.executable, str(ROOT / "run.py"), "build-index", "--embeddings", str(tmp_path), *a],
      capture_output=True, text=True, timeout=120, cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
  result = run("--index", "faiss:IVF16,Flat")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Shoes: IVF16,Flat over 1100 rows" in result.stdout
  assert "Hats: Flat over 50 rows" in result.stdout
  assert "index faiss:IVF16,Flat (nprobe=8) of 2 categories (1 exact flat)" in result.stdout
  assert json.loads((tmp_path / "manifest.json").read_text())["index"]["params"] == "nprobe=8"
  result = run("--index", "faiss:Nonsense")
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "--index faiss:Nonsense: not a FAISS index" in lines[-1]
