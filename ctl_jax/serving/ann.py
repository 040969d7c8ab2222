"""Approximate nearest-neighbour (ANN) indexes of an exported catalogue, one per category (FAISS).

Exact ranking (ranker.py) reads every row of a category per query: 30-160 ms for 1M products on
two CPU cores, with the machine's load. An ANN index answers in a fraction of a millisecond, at a
recall below 1.

Which form is indexed. Both models rank by the largest inner product of an augmented query
[u, a] (a = -1: [v, -1] of the scene model, [2x, -1] of the product model) with the rows
[f_p, ||f_p||^2] (ranker.py). For a < 0 that is exactly a squared L2 distance on the raw rows:

  u.f_p + a ||f_p||^2 = -|a| ||f_p - u / (2|a|)||^2 + ||u||^2 / (4|a|)

so the index holds the exported rows f_p unchanged ([n, D], metric L2) and is queried with
x = u / (2|a|). We measured the alternatives on 200k clustered 128-d rows (HNSW32, recall@10 of the
exact top 10): with unit-norm rows all forms agree (every augmented row has the same norm), but
with norms that vary (log-normal, sigma 0.3; product style vectors are not normalised, float16
rounding alone breaks equal norms) HNSW with METRIC_INNER_PRODUCT on the augmented rows found
almost nothing (recall 0.002 at efSearch 128: inner product is no metric and the graph funnels
into the longest rows), the MIPS->L2 reduction (an extra coordinate sqrt(M^2 - ||row||^2)) 0.99,
and this L2 form 0.995, with D rather than D + 2 dimensions (so `PQ32` divides 128).

Candidates are re-scored exactly: the searcher reads the ids' exported rows (memory-mapped) and
returns the exact inner products, re-sorted, so distances are exact for the ids returned and only
the set of ids is approximate (PQ indexes included). With `rerank=R` it fetches R*k candidates
and keeps the exact best k, which lifts the recall of compressed (PQ) codes.

Spec: `faiss:<index_factory string>[@<search parameters>]`, e.g. `faiss:IVF4096,Flat` (the one
we suggest for ~1M products per category), `faiss:IVF1024,Flat@nprobe=16`,
`faiss:IVF4096,PQ32@rerank=4` (32 bytes a row), `faiss:HNSW32`. The search parameters use
faiss.ParameterSpace names (nprobe, efSearch, quantizer_efSearch, ...) plus our `rerank`; those
left out take the defaults: nprobe = nlist/128 (at least 8) for IVF, efSearch=64 for HNSW. They
are stored in the index file and the manifest, and can be changed on a loaded searcher
(`Searcher.set_params`).

Which index (bench/ann.py: 1M clustered 128-d unit rows, 2 shared CPU cores): IVF4096,Flat at
nprobe=32 found the exact top 10 (recall@10 1.000) at 97x the exact ranker's queries/s at batch 1
and 36x at batch 64, built in 66 s; IVF1024,Flat nprobe=8 0.998 at 44x (7x at batch 64; built
in 11 s). HNSW32 answered as fast but lost whole clusters (recall@10 0.85-0.91 for efSearch
64-256: its greedy walk strays between well-separated clusters) and took 114 s to build.

Small categories get an exact flat index (IndexFlatL2 on the same form) instead: fewer than
`min_rows` (1,000) rows, or fewer than 39 rows per IVF list (faiss's own minimum for training its
k-means): the manifest says `"exact": true` with the reason.

Fewer than k results: an IVF index whose `nprobe` lists hold fewer than k rows returns id -1 for
the missing places. Those queries are answered by the exact ranker instead (built on first need,
streamed in chunks; logged as a warning, counted in `Searcher.fallbacks`), so a searcher always
returns k products. HNSW returns at most efSearch results, so efSearch is raised to k per call.

Files: `<export>/index/<NNN>_<category>.faiss` (named as the embeddings), readable with
`faiss.read_index`; the manifest gains

  "index": {"spec": "faiss:IVF1024,Flat", "factory": "IVF1024,Flat", "params": "nprobe=8",
            "form": ..., "min_rows": 1000, "model_step": ..., "model_fingerprint": ...,
            "categories": {"Shoes": {"file": "index/000_Shoes.faiss", "type": "IVF1024,Flat",
                                     "exact": false, "rows": 52031, "seconds": 2.5},
                           "Hats": {"file": "index/001_Hats.faiss", "type": "Flat",
                                    "exact": true, "rows": 812, "seconds": 0.01,
                                    "reason": "exact flat index: fewer than 1000 rows"},
                           ...}}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ctl_jax.serving import catalogue as catalogue_lib
from ctl_jax.serving.errors import ServingError
from input_pipeline import storage

if TYPE_CHECKING:
  from ctl_jax.serving import ranker

PREFIX = "faiss:"
INDEX_DIR = "index"
DEFAULT_SPEC = "faiss:IVF4096,Flat"
MIN_ROWS = 1000  # below this a category gets an exact flat index
MIN_ROWS_PER_LIST = 39  # faiss warns when k-means has fewer training points per centroid
TRAIN_ROWS_PER_LIST = 64  # IVF k-means trains on a sample of this many rows per list
TRAIN_ROWS = 1 << 16  # ... and at least this many (PQ codebooks: 256 centroids each)
HNSW_EF_SEARCH = 64
IVF_PROBE_FRACTION, IVF_MIN_PROBES = 128, 8  # nprobe = max(8, nlist / 128)
FALLBACK_CHUNK_ROWS = 1 << 18  # the exact fallback streams the rows in chunks of this many
FORM = ("L2 on the exported rows f_p, query u / (2|a|) of the augmented query [u, a]; "
        "candidates re-scored exactly by [u, a].[f_p, ||f_p||^2]")


class IndexSpecError(ServingError):
  """An --index spec that is not `faiss:<index_factory string>[@<search parameters>]`."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed index spec: the faiss.index_factory string and the search parameters ('' =
  defaults of the index family)."""
  factory: str
  params: str = ""

  def __str__(self) -> str:
    return PREFIX + self.factory + (f"@{self.params}" if self.params else "")


def _faiss_message(error: Exception) -> str:
  """The reason in a faiss RuntimeError, without its C++ function and source location."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
  text = re.sub(r"^Error: ", "", text)
  return re.sub(r"^\w+::\w+:\s*", "", text)  # "ParameterSpace::set_index_parameter:"


def _split_params(params: str) -> tuple[str, int]:
  """(faiss ParameterSpace string, rerank factor) of a search-parameter string."""
  rest, rerank = [], 1
  for item in filter(None, (p.strip() for p in params.split(","))):
    name, eq, value = (part.strip() for part in item.partition("="))
    try:
      positive = float(value) > 0
    except ValueError:
      positive = False
    if not (name and eq and positive):
      raise ValueError(f"{item}: give NAME=VALUE with a value > 0, e.g. nprobe=32")
    if name == "rerank":
      if not value.isdigit():
        raise ValueError(f"rerank={value}: give a whole number >= 1")
      rerank = int(value)
    else:
      rest.append(item)
  return ",".join(rest), rerank


def apply_params(index: faiss.Index, params: str) -> int:
  """Sets the faiss search parameters of `params` on `index`; returns its rerank factor.

  Raises:
    ValueError: a parameter the index does not have, or a malformed value.
  """
  faiss_params, rerank = _split_params(params)
  if faiss_params:
    try:
      faiss.ParameterSpace().set_index_parameters(index, faiss_params)
    except RuntimeError as e:
      raise ValueError(_faiss_message(e)) from None
  return rerank


def family(index: faiss.Index) -> str:
  """'flat', 'ivf', 'hnsw' or 'other': which search parameters the index takes."""
  inner = faiss.downcast_index(index.index) if isinstance(
      index, faiss.IndexPreTransform) else faiss.downcast_index(index)
  if isinstance(inner, faiss.IndexFlat):
    return "flat"
  if hasattr(inner, "hnsw"):
    return "hnsw"
  return "ivf" if _nlist(index) else "other"


def _nlist(index: faiss.Index) -> int:
  """Number of inverted lists of an IVF index (0 for any other)."""
  try:
    return int(faiss.extract_index_ivf(index).nlist)
  except RuntimeError:
    return 0


def default_params(index: faiss.Index) -> str:
  """The search parameters an index gets when the spec names none (see the module doc)."""
  kind = family(index)
  if kind == "hnsw":
    return f"efSearch={HNSW_EF_SEARCH}"
  if kind == "ivf":
    nlist = _nlist(index)
    return f"nprobe={min(nlist, max(IVF_MIN_PROBES, nlist // IVF_PROBE_FRACTION))}"
  return ""


def merge_params(base: str, params: str) -> str:
  """The parameters of `base` with those named in `params` replaced or added."""
  merged = {}
  for item in filter(None, (p.strip() for p in f"{base},{params}".split(","))):
    name, _, value = item.partition("=")
    merged[name.strip()] = value.strip()
  return ",".join(f"{k}={v}" for k, v in merged.items())


def resolve_params(index: faiss.Index, params: str) -> str:
  """`params` over the index's defaults: 'rerank=4' on IVF4096 is 'nprobe=32,rerank=4'."""
  return merge_params(default_params(index), params)


def _new_index(dim: int, spec: Spec, flag: str) -> faiss.Index:
  try:
    return faiss.index_factory(dim, spec.factory, faiss.METRIC_L2)
  except RuntimeError as e:
    raise IndexSpecError(f"{flag} {spec}: not a FAISS index for {dim}-d rows "
                         f"({_faiss_message(e)})") from None


def parse_spec(text: str, dim: int | None = None, flag: str = "--index") -> Spec:
  """The Spec of `faiss:<factory>[@<params>]`, checked by building an empty index of `dim`
  dimensions (when given) and setting its parameters.

  Raises:
    IndexSpecError: naming `flag`, the spec and the problem in one line.
  """
  if not text.startswith(PREFIX) or not text[len(PREFIX):].strip():
    raise IndexSpecError(f"{flag} {text}: give faiss:<index_factory string>, e.g. {DEFAULT_SPEC} "
                         f"or faiss:HNSW32 (search parameters after @: "
                         f"faiss:IVF1024,Flat@nprobe=32)")
  factory, _, params = text[len(PREFIX):].partition("@")
  spec = Spec(factory.strip(), params.strip())
  try:
    _split_params(spec.params)
  except ValueError as e:
    raise IndexSpecError(f"{flag} {text}: {e}") from None
  if dim is not None:
    index = _new_index(dim, spec, flag)
    try:
      apply_params(index, spec.params)
    except ValueError as e:
      raise IndexSpecError(f"{flag} {text}: {e}") from None
  return spec


def l2_queries(queries: np.ndarray) -> np.ndarray:
  """[B, D] L2 queries u / (2|a|) of augmented queries [B, D + 1] = [u, a] with a < 0."""
  q = np.asarray(queries, np.float32)
  a = q[:, -1:]
  if np.any(a >= 0):
    raise ValueError("the ANN index answers augmented queries [u, a] with a < 0 (the scene and "
                     "product queries have a = -1)")
  return np.ascontiguousarray(q[:, :-1] / (-2.0 * a))


def index_file(category_id: int, name: str) -> str:
  """`index/<NNN>_<category>.faiss`: the name of the category's embeddings file."""
  stem = posixpath.splitext(posixpath.basename(catalogue_lib.category_file(category_id, name)))[0]
  return f"{INDEX_DIR}/{stem}.faiss"


def build_index(embeddings: np.ndarray, spec: Spec, *, min_rows: int = MIN_ROWS,
                seed: int = 0) -> tuple[faiss.Index, dict]:
  """An index of the rows `embeddings` [n, D] and its manifest entry (type, exact, reason).

  IVF and other trained indexes train on a random sample of the rows (TRAIN_ROWS_PER_LIST per
  list, at least TRAIN_ROWS). Small categories get an exact IndexFlatL2 (see the module doc).
  """
  n, dim = embeddings.shape
  index = _new_index(dim, spec, "--index")
  nlist = _nlist(index)
  floor = max(min_rows, MIN_ROWS_PER_LIST * nlist)
  entry = {"type": spec.factory, "exact": False, "rows": int(n)}
  if n < floor:
    why = (f"fewer than {min_rows} rows" if n < min_rows else
           f"fewer than {MIN_ROWS_PER_LIST} rows per list of {nlist}")
    index = faiss.IndexFlatL2(dim)
    entry.update(type="Flat", exact=True, reason=f"exact flat index: {why}")
  rows = np.ascontiguousarray(embeddings, np.float32)
  if not index.is_trained:
    size = min(n, max(TRAIN_ROWS, TRAIN_ROWS_PER_LIST * nlist))
    sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    index.train(rows[sample])
  index.add(rows)
  return index, entry


def write_index(path: storage.PathLike, index: faiss.Index) -> None:
  """Writes `index` whole (atomically: readers see the old file or the new one)."""
  if storage.is_remote(path):
    storage.write_atomic(path, faiss.serialize_index(index).tobytes())
    return
  tmp = f"{os.fspath(path)}.tmp"
  faiss.write_index(index, tmp)
  os.replace(tmp, path)


def read_index(path: storage.PathLike) -> faiss.Index:
  try:
    if storage.is_remote(path):
      return faiss.deserialize_index(np.frombuffer(storage.read_bytes(path), np.uint8))
    return faiss.read_index(os.fspath(path))
  except (OSError, RuntimeError) as e:
    raise ServingError(f"{path}: unreadable index ({_faiss_message(e)}): rebuild it with "
                       "`run.py build-index`") from None


def build(export: storage.PathLike, spec: str | Spec, *, min_rows: int = MIN_ROWS,
          log: Callable[[str], None] | None = print) -> dict:
  """Builds the index of every category of the export at `export`, writes the files and adds
  the `index` entry to its manifest (rewritten atomically). Returns that entry."""
  spec = parse_spec(str(spec))  # its syntax, before the export is read
  cat = catalogue_lib.Catalogue(export)
  spec = parse_spec(str(spec), dim=cat.manifest["embed_dim"])  # an index of these rows
  storage.makedirs(cat.root / INDEX_DIR)
  params = ""
  entries = {}
  for name, info in cat.manifest["categories"].items():
    if not info["count"]:
      continue
    start = time.perf_counter()
    index, entry = build_index(cat.embeddings(name), spec, min_rows=min_rows)
    if not entry["exact"]:
      params = params or resolve_params(index, spec.params)
      try:
        apply_params(index, params)
      except ValueError as e:
        raise IndexSpecError(f"--index {spec}: {e}") from None
    entry["file"] = index_file(info["id"], name)
    write_index(cat.root / entry["file"], index)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    entries[name] = entry
    if log:
      log(f"  {name}: {entry['type']} over {entry['rows']} rows in {entry['seconds']:.1f} s"
          + (f" ({entry['reason']})" if entry["exact"] else ""))
  out = {"spec": str(spec), "factory": spec.factory, "params": params, "form": FORM,
         "min_rows": int(min_rows), "model_step": cat.manifest["model_step"],
         "model_fingerprint": cat.manifest["model_fingerprint"], "categories": entries}
  path = cat.root / catalogue_lib.MANIFEST
  manifest = json.loads(storage.read_text(path))  # as it is now, not as it was when we began
  manifest["index"] = out
  storage.write_atomic(path, json.dumps(manifest, indent=2))
  return out


class Searcher:
  """Top-K by an ANN index, with the contract of `ranker.Ranker` (exact distances of the ids).

  Args:
    index: a FAISS index of the rows `embeddings` (L2 form, see the module doc).
    embeddings: [n, D] exported rows (a memory-mapped .npy is fine: only candidates are read).
    params: search parameters to set (faiss.ParameterSpace names, and rerank=R).
  """

  def __init__(self, index: faiss.Index, embeddings: np.ndarray, *, params: str = ""):
    if index.ntotal != embeddings.shape[0] or index.d != embeddings.shape[1]:
      raise ValueError(f"an index of {index.ntotal} rows of {index.d} dimensions for a "
                       f"catalogue of shape {embeddings.shape}: rebuild it")
    self.index = index
    self.num_rows, self.width = embeddings.shape[0], embeddings.shape[1] + 1
    self._rows = embeddings
    inner = faiss.downcast_index(index)
    self._hnsw = inner if isinstance(inner, faiss.IndexHNSW) else None
    self._exact: ranker.Ranker | None = None
    self.fallbacks = 0  # queries answered by the exact ranker (fewer than k results)
    self.params = ""
    self.rerank = 1
    self.set_params(params)

  def set_params(self, params: str) -> None:
    """Sets search parameters, e.g. 'efSearch=128' or 'nprobe=32,rerank=4' (the others keep
    their values)."""
    merged = merge_params(self.params, params)
    self.rerank = apply_params(self.index, merged)
    self.params = merged

  def exact(self) -> ranker.Ranker:
    """The exact ranker of the same rows (built on first use, streamed in chunks)."""
    if self._exact is None:
      from ctl_jax.serving import ranker  # JAX: only when a query needs it
      self._exact = ranker.Ranker(self._rows, chunk_rows=FALLBACK_CHUNK_ROWS)
    return self._exact

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest inner products of each augmented query [B, D + 1] with the catalogue.

    Returns:
      scores [B, k] (descending, exact for the ids) and row ids [B, k] of the catalogue.
    """
    from ctl_jax.serving import ranker  # its argument checks (imports JAX, as queries do)
    queries = np.asarray(queries, np.float32)
    ranker.check_search(queries.shape, k, self.num_rows, self.width)
    fetch = min(self.num_rows, k * self.rerank)
    extra = {}
    if self._hnsw is not None and fetch > self._hnsw.hnsw.efSearch:  # at most efSearch ids
      extra["params"] = faiss.SearchParametersHNSW(efSearch=fetch)
    _, ids = self.index.search(l2_queries(queries), fetch, **extra)
    found = ids >= 0
    rows = np.asarray(self._rows[np.where(found, ids, 0).ravel()], np.float32)
    rows = rows.reshape(*ids.shape, -1)
    scores = (np.einsum("bkd,bd->bk", rows, queries[:, :-1])
              + queries[:, -1:] * np.einsum("bkd,bkd->bk", rows, rows))
    scores = np.where(found, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    short = np.flatnonzero(found.sum(1) < k)
    if len(short):  # fewer than k results (IVF: too few rows in the probed lists)
      self.fallbacks += len(short)
      logging.warning("ANN index found fewer than k=%d products for %d of %d queries: ranked "
                      "exactly instead (raise nprobe)", k, len(short), len(queries))
      exact_scores, exact_ids = self.exact().search(queries[short], k)
      scores[short], ids[short] = exact_scores, exact_ids
    return scores, ids

  def nearest(self, queries: np.ndarray, constants: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances d = c - q~.p~ [B, k] (ascending) and row ids [B, k] of the k nearest rows."""
    scores, ids = self.search(queries, k)
    return np.asarray(constants, np.float32)[:, None] - scores, ids


def load(cat: catalogue_lib.Catalogue, category: str, params: str | None = None) -> Searcher:
  """The Searcher of `category` from the export's index (params: override the stored ones; an
  exact flat index takes none).

  Raises:
    ServingError: no index for the category, or one built for other rows or another model.
  """
  info = cat.check_category(category)
  entry = cat.manifest.get("index") or {}
  if category not in entry.get("categories", {}):
    raise ServingError(f"{cat.root} has no ANN index for {category!r}: build one with "
                       "`run.py build-index`")
  item = entry["categories"][category]
  if ((entry.get("model_step"), entry.get("model_fingerprint"))
      != (cat.manifest["model_step"], cat.manifest["model_fingerprint"])
      or item.get("rows") != info["count"]):
    raise ServingError(f"{cat.root}: the ANN index of {category!r} was built for other "
                       "embeddings: rebuild it with `run.py build-index`")
  path = cat.root / item["file"]
  index = read_index(path)
  if index.ntotal != info["count"]:
    raise ServingError(f"{path}: an index of {index.ntotal} rows for {info['count']} products: "
                       "rebuild it with `run.py build-index`")
  if item.get("exact"):  # a flat index has no search parameters
    params = ""
  return Searcher(index, cat.embeddings(category),
                  params=entry.get("params", "") if params is None else params)
