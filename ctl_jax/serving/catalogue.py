"""The exported catalogue: product embeddings per category in open formats, plus a manifest.

  <out>/manifest.json           model step and fingerprint, kind of distance, dimensions, files
  <out>/products.parquet        one row per product: signature, category, category_id, row, image
                                (the image path relative to the manifest's `image_root`)
  <out>/embeddings/<NNN>_<category>.npy   [n_c, D] float16 or float32, rows in `row` order
  <out>/index/<NNN>_<category>.faiss      optional ANN index (ann.py; `export --index`)

numpy (`np.load`), pyarrow or pandas (`pd.read_parquet`) and FAISS-style inner-product indexes read
these without our code. How to rank with them is in the manifest's `distance` text: for the scene
model, d(s, p) = c_s - v.f_p + ||f_p||^2 with the ranking query v = f_s + q_c (see ranker.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctl_jax.serving.errors import MissingExportError, ServingError, UnknownCategoryError
from input_pipeline import storage

if TYPE_CHECKING:  # annotations only: this module stays free of the config library
  import ml_collections

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: absolute image paths and no `image_root`
MANIFEST = "manifest.json"
METADATA = "products.parquet"
EMBEDDINGS_DIR = "embeddings"
DTYPES = ("float16", "float32")
DISTANCES = {
    "scene_hybrid": ("hybrid distance of the scene model: d(s, p) = c_s - v.f_p + ||f_p||^2 with "
                     "v = f_s + q_c (c_s = 1 and d = 2 - v.f_p for unit vectors); rank by the "
                     "largest inner product [v, -1].[f_p, ||f_p||^2]"),
    "style_l2": ("squared L2 distance of product style vectors: d(x, p) = ||x - f_p||^2; rank by "
                 "the largest inner product [2x, -1].[f_p, ||f_p||^2]"),
}


class ManifestMismatch(ServingError):
  """The embeddings were exported from another model (step, config or categories)."""


def model_fingerprint(config: ml_collections.ConfigDict, categories: list[str]) -> str:
  """Hash of what makes embeddings comparable: task, model settings, input size, categories."""
  model = json.loads(config.model.to_json_best_effort())
  model.pop("backbone_weights", None)  # where the initial weights came from, not the model
  desc = {"task": config.task, "model": model,
          "image_size": config.input.image_size, "normalization": config.input.normalization,
          "categories": list(categories)}
  return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def category_file(index: int, name: str) -> str:
  """A file name that is safe on every file system and unique even when names differ by case."""
  return f"{EMBEDDINGS_DIR}/{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.npy"


def relative_images(images: list[str], image_root: str | os.PathLike) -> list[str]:
  """Image paths under `image_root` as relative (posix) paths; the others as they are."""
  root = storage.absolute(image_root).rstrip("/") + "/"
  out = []
  for p in map(str, images):
    full = storage.absolute(p) if p else p
    out.append(pathlib.PurePath(full[len(root):]).as_posix() if full.startswith(root) else p)
  return out


def image_root_entry(image_root: str | os.PathLike, out: str | os.PathLike) -> str:
  """The manifest's `image_root`: relative to the export folder when both are on the local disk
  (the two folders can then be moved together), else absolute (or the URL)."""
  if storage.is_remote(image_root) or storage.is_remote(out):
    return storage.absolute(image_root)
  return os.path.relpath(storage.absolute(image_root), storage.absolute(out))


def write(out: str | os.PathLike, embeddings: np.ndarray, signatures: list[str],
          category_ids: np.ndarray, categories: list[str], images: list[str], *, kind: str,
          step: int, fingerprint: str, dtype: str = "float32", image_root: str | None = None,
          extra: dict | None = None) -> dict:
  """Writes the catalogue of `embeddings` [N, D] and returns the manifest.

  Args:
    category_ids: [N] index into `categories` of each product.
    images: [N] image file of each product (for reports; may be empty strings).
    image_root: the folder the images are under (the catalogue folder): the table then stores
      paths relative to it, and the manifest where it is relative to `out`.
  """
  if kind not in DISTANCES:
    raise ValueError(f"kind={kind!r}; choose from {list(DISTANCES)}")
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; choose from {list(DTYPES)}")
  if len(signatures) == 0:
    raise ValueError("the catalogue is empty: no product could be embedded")
  out = storage.path(out)
  storage.makedirs(out / EMBEDDINGS_DIR)
  category_ids = np.asarray(category_ids)
  rows = np.zeros(len(signatures), np.int64)
  entries = {}
  for c, name in enumerate(categories):
    members = np.flatnonzero(category_ids == c)
    rows[members] = np.arange(len(members))
    entries[name] = {"id": c, "count": int(len(members)), "file": None}
    if len(members):
      entries[name]["file"] = category_file(c, name)
      buf = io.BytesIO()
      np.save(buf, np.asarray(embeddings[members], dtype))
      storage.write_atomic(out / entries[name]["file"], buf.getvalue())
  table = pa.table({"signature": list(signatures),
                    "category": [categories[c] for c in category_ids],
                    "category_id": category_ids.astype(np.int32), "row": rows,
                    "image": (relative_images(images, image_root) if image_root is not None
                              else [str(p) for p in images])})
  buf = io.BytesIO()
  pq.write_table(table, buf)
  storage.write_atomic(out / METADATA, buf.getvalue())
  manifest = {"format_version": FORMAT_VERSION, "kind": kind, "distance": DISTANCES[kind],
              "model_step": int(step), "model_fingerprint": fingerprint,
              "embed_dim": int(embeddings.shape[1]), "dtype": dtype,
              "num_products": len(signatures), "metadata": METADATA, "categories": entries,
              "image_root": image_root_entry(image_root, out) if image_root is not None else None,
              **(extra or {})}
  storage.write_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
  return manifest


class Catalogue:
  """A read-only exported catalogue; arrays are memory-mapped, loaded per category on demand.

  Args:
    image_root: where the product images are (default: the manifest's `image_root`, relative to
      the export folder): give it when the images moved without the export.
  """

  def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None):
    self.root = storage.path(root)
    path = self.root / MANIFEST
    if not path.exists():
      raise MissingExportError(f"no {MANIFEST} in {self.root}: run `run.py export` first")
    try:
      self.manifest = json.loads(path.read_text())
      if not isinstance(self.manifest, dict) or not isinstance(
          self.manifest.get("categories"), dict):
        raise ValueError("not an export manifest (no 'categories')")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError included
      raise ServingError(f"{path}: unreadable export manifest ({e}): re-run `run.py export`"
                         ) from None
    if self.manifest.get("format_version") not in READABLE_VERSIONS:
      raise ManifestMismatch(f"{path}: format_version {self.manifest.get('format_version')}, "
                             f"this code reads {READABLE_VERSIONS}: re-run `run.py export`")
    self._products: dict[str, dict[str, np.ndarray]] | None = None
    self._searchers = {}  # (category, exact) -> loaded searcher
    if image_root is None and self.manifest.get("image_root") is not None:
      image_root = self.manifest["image_root"]  # a URL or absolute path, or relative to root
      if not (storage.is_remote(image_root) or os.path.isabs(image_root)):
        image_root = storage.join(self.root, image_root)
    self.image_root = image_root
    if image_root is not None and not storage.is_remote(image_root):
      self.image_root = os.path.normpath(os.fspath(image_root))

  def image_path(self, image: str) -> str:
    """The file of a table's `image` entry: relative entries are under `image_root`."""
    if not image or self.image_root is None or storage.is_remote(image) or os.path.isabs(image):
      return image
    return storage.join(self.image_root, image)

  @property
  def categories(self) -> list[str]:
    """Every category of the model (some may have no products)."""
    return list(self.manifest["categories"])

  def check_model(self, step: int, fingerprint: str) -> None:
    """ManifestMismatch unless the embeddings come from this step and model fingerprint."""
    m = self.manifest
    if (m["model_step"], m["model_fingerprint"]) != (step, fingerprint):
      raise ManifestMismatch(
          f"{self.root / MANIFEST} holds embeddings of step {m['model_step']} (model "
          f"{m['model_fingerprint']}) but the checkpoint is step {step} (model {fingerprint}): "
          f"re-run `run.py export` for this checkpoint")

  def check_category(self, category: str) -> dict:
    entries = self.manifest["categories"]
    if category not in entries:
      raise UnknownCategoryError(f"unknown category {category!r}; valid categories: "
                     f"{', '.join(sorted(entries))}")
    if entries[category]["count"] == 0:
      raise ServingError(f"category {category!r} has no products in {self.root}")
    return entries[category]

  def embeddings(self, category: str) -> np.ndarray:
    """[n_c, D] embeddings of `category` (memory-mapped; read whole from an object store)."""
    path = self.root / self.check_category(category)["file"]
    try:
      if storage.is_remote(path):
        return np.load(io.BytesIO(storage.read_bytes(path)))
      return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
      raise ServingError(f"{path}: unreadable embeddings ({e}): re-run `run.py export`"
                         ) from None

  def searcher(self, category: str, exact: bool = False):
    """The top-K searcher of `category`, loaded once and kept (a server keeps them warm): the
    export's ANN index (ann.Searcher) when it has one for the category and `exact` is False,
    else the exact ranker.Ranker over `embeddings(category)`. Both answer
    `search(queries, k)` and `nearest(queries, constants, k)` (ranker.py)."""
    use_index = not exact and category in (self.manifest.get("index") or {}).get("categories", {})
    key = (category, not use_index)
    if key not in self._searchers:
      if use_index:
        from ctl_jax.serving import ann  # FAISS: only for exports with an index
        self._searchers[key] = ann.load(self, category)
      else:
        from ctl_jax.serving import ranker  # JAX: imported when a ranking is asked for
        self._searchers[key] = ranker.Ranker(self.embeddings(category))
    return self._searchers[key]

  def products(self, category: str) -> dict[str, np.ndarray]:
    """Columns of the metadata table for `category`, in row order (`image`: the file); read
    once, then kept per category (a service looks them up on every request)."""
    if self._products is None:
      try:
        t = pq.read_table(io.BytesIO(storage.read_bytes(self.root / METADATA)))
      except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ServingError(f"{self.root / METADATA}: unreadable ({e}): re-run `run.py export`"
                           ) from None
      table = {k: np.asarray(t.column(k).to_pylist(), object if k != "row" else np.int64)
               for k in ("signature", "category", "image", "row")}
      table["image"] = np.asarray([self.image_path(p) for p in table["image"]], object)
      self._products = {}
      for name in np.unique(table["category"]):
        members = np.flatnonzero(table["category"] == name)
        members = members[np.argsort(table["row"][members])]
        self._products[name] = {k: table[k][members] for k in ("signature", "image", "row")}
    empty = np.asarray([], object)
    return self._products.get(category, {"signature": empty, "image": empty,
                                         "row": np.asarray([], np.int64)})
