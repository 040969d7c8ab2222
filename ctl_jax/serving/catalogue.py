"""The exported catalogue: product embeddings per category in open formats, plus a manifest.

  <out>/manifest.json           model step and fingerprint, kind of distance, dimensions, files
  <out>/products.parquet        one row per product: signature, category, category_id, row, image
  <out>/embeddings/<NNN>_<category>.npy   [n_c, D] float16 or float32, rows in `row` order

numpy (`np.load`), pyarrow or pandas (`pd.read_parquet`) and FAISS-style inner-product indexes read
these without our code. How to rank with them is in the manifest's `distance` text: for the scene
model, d(s, p) = c_s - v.f_p + ||f_p||^2 with the ranking query v = f_s + q_c (see ranker.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctl_jax.serving.errors import MissingExportError, ServingError, UnknownCategoryError
from input_pipeline import storage

if TYPE_CHECKING:  # annotations only: this module stays free of the config library
  import ml_collections

FORMAT_VERSION = 1
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


def write(out: str | os.PathLike, embeddings: np.ndarray, signatures: list[str],
          category_ids: np.ndarray, categories: list[str], images: list[str], *, kind: str,
          step: int, fingerprint: str, dtype: str = "float32", extra: dict | None = None) -> dict:
  """Writes the catalogue of `embeddings` [N, D] and returns the manifest.

  Args:
    category_ids: [N] index into `categories` of each product.
    images: [N] image file of each product (for reports; may be empty strings).
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
                    "image": [str(p) for p in images]})
  buf = io.BytesIO()
  pq.write_table(table, buf)
  storage.write_atomic(out / METADATA, buf.getvalue())
  manifest = {"format_version": FORMAT_VERSION, "kind": kind, "distance": DISTANCES[kind],
              "model_step": int(step), "model_fingerprint": fingerprint,
              "embed_dim": int(embeddings.shape[1]), "dtype": dtype,
              "num_products": len(signatures), "metadata": METADATA, "categories": entries,
              **(extra or {})}
  storage.write_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
  return manifest


class Catalogue:
  """A read-only exported catalogue; arrays are memory-mapped, loaded per category on demand."""

  def __init__(self, root: str | os.PathLike):
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
    if self.manifest.get("format_version") != FORMAT_VERSION:
      raise ManifestMismatch(f"{path}: format_version {self.manifest.get('format_version')}, "
                             f"this code reads {FORMAT_VERSION}: re-run `run.py export`")
    self._table = None

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

  def products(self, category: str) -> dict[str, np.ndarray]:
    """Columns of the metadata table for `category`, in row order."""
    if self._table is None:
      try:
        t = pq.read_table(io.BytesIO(storage.read_bytes(self.root / METADATA)))
      except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ServingError(f"{self.root / METADATA}: unreadable ({e}): re-run `run.py export`"
                           ) from None
      self._table = {k: np.asarray(t.column(k).to_pylist(), object if k != "row" else np.int64)
                     for k in ("signature", "category", "image", "row")}
    t = self._table
    members = np.flatnonzero(t["category"] == category)
    members = members[np.argsort(t["row"][members])]
    return {k: t[k][members] for k in ("signature", "image", "row")}
