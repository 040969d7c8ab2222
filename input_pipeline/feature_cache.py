"""On-disk cache of frozen-backbone features: sharded half-precision arrays with an index.

With a frozen backbone every epoch recomputes the same features; the cache stores them once.
Layout of a cache folder:

    index.json                        the manifest: fingerprint, shapes, item keys per kind
    products-00000.global.npy         [n, G] float16, one row per product image
    products-00000.done               written last: the shard is complete
    scenes-00000.global.npy           [n, G] float16, one row per (scene, crop)
    scenes-00000.regions.npy          [n, h, w, C] float16
    scenes-00000.done

Shards are streamed to temporary files batch by batch and renamed, with the `.done` marker last,
so a killed extraction leaves only complete shards (rerunning redoes the rest) and extraction
holds one batch in memory, not a shard. Reads fetch rows with `pread` rather than a memory map,
whose touched pages would count as resident memory growing with the dataset: reading memory is
bounded by the batch too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline.readers.drops import DataError

INDEX = "index.json"


def scene_crop_key(scene: str, crop: Sequence[float]) -> str:
  """Cache key of one scene cropped to a normalised (left, top, right, bottom)."""
  return scene + "@" + ",".join(f"{float(v):.6f}" for v in crop)


def fingerprint(*parts: Any) -> str:
  """A short stable hash of JSON-serialisable parts and byte strings."""
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
  return h.hexdigest()[:16]


@dataclasses.dataclass
class Manifest:
  fingerprint: str
  description: dict  # what produced the features (backbone, weights hash, size, normalisation)
  shard_size: int
  keys: dict  # kind -> list of item keys (row order)

  def num_shards(self, kind: str) -> int:
    return -(-len(self.keys[kind]) // self.shard_size)


def shard_stem(root: Path, kind: str, shard: int) -> Path:
  return root / f"{kind}-{shard:05d}"


def is_complete(root: Path, kind: str, shard: int) -> bool:
  return Path(f"{shard_stem(root, kind, shard)}.done").exists()


def write_index(root: Path, manifest: Manifest) -> None:
  root.mkdir(parents=True, exist_ok=True)
  tmp = root / (INDEX + ".tmp")
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(manifest), f)
  os.replace(tmp, root / INDEX)


def read_index(root: Path) -> Manifest:
  try:
    with open(root / INDEX) as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{root}: no feature cache ({INDEX} missing); run extract-features") from None
  return Manifest(**raw)


class ShardWriter:
  """Streams one shard's fields ('global', 'regions') to .npy files, batch by batch.

  Usage: `append(field, rows)` as batches come, then `commit()`; nothing is visible under the
  final names until `commit`, and the `.done` marker is written last.
  """

  def __init__(self, root: Path, kind: str, shard: int, num_rows: int):
    self.stem = shard_stem(root, kind, shard)
    self.num_rows = num_rows
    self._files: dict[str, tuple] = {}  # field -> (file, rows written)

  def _tmp(self, field: str) -> Path:
    return Path(f"{self.stem}.{field}.npy.tmp")

  def append(self, field: str, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, np.float16)
    if field not in self._files:
      f = open(self._tmp(field), "wb")
      header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                "fortran_order": False, "shape": (self.num_rows,) + rows.shape[1:]}
      np.lib.format.write_array_header_2_0(f, header)
      self._files[field] = (f, 0)
    f, written = self._files[field]
    f.write(rows.tobytes())
    self._files[field] = (f, written + len(rows))

  def commit(self) -> None:
    for field, (f, written) in self._files.items():
      f.close()
      if written != self.num_rows:
        raise RuntimeError(f"{self.stem}.{field}: wrote {written} of {self.num_rows} rows")
      os.replace(self._tmp(field), f"{self.stem}.{field}.npy")
    Path(f"{self.stem}.done").write_text("")


class _RowFile:
  """Random row access to a C-order .npy file through pread (no memory map)."""

  def __init__(self, path: str):
    self.fd = os.open(path, os.O_RDONLY)
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read_header(f)
      self.offset = f.tell()
    if fortran:
      raise DataError(f"{path}: Fortran-ordered arrays are not a feature cache")
    self.shape, self.dtype = shape, dtype
    self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

  def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
    """Fills out[i] with row rows[i] (out is a C-contiguous [len(rows), ...] array)."""
    view = out.reshape(len(rows), -1).view(np.uint8)
    for i, r in enumerate(rows):
      data = os.pread(self.fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
      view[i] = np.frombuffer(data, np.uint8)

  def close(self) -> None:
    os.close(self.fd)


class FeatureCache:
  """Read access to a complete cache: rows by key, gathered from the shards with pread."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)
    self.manifest = read_index(self.root)
    self._rows = {kind: {k: i for i, k in enumerate(keys)}
                  for kind, keys in self.manifest.keys.items()}
    self._files: dict[tuple[str, str], list[_RowFile]] = {}
    for kind in self.manifest.keys:
      missing = [s for s in range(self.manifest.num_shards(kind))
                 if not is_complete(self.root, kind, s)]
      if missing:
        raise DataError(f"{self.root}: feature cache incomplete ({kind} shards {missing[:5]}"
                        f"{'...' if len(missing) > 5 else ''} missing); rerun extract-features")

  def rows(self, kind: str, keys: Iterable[str]) -> np.ndarray:
    """Row ids of `keys`; DataError naming the first key that is not cached."""
    table = self._rows[kind]
    out = []
    for k in keys:
      if k not in table:
        raise DataError(f"{self.root}: no cached {kind} features for {k!r}; the data changed "
                        f"since extraction, rerun extract-features")
      out.append(table[k])
    return np.asarray(out, np.int64)

  def _shards(self, kind: str, field: str) -> list[_RowFile]:
    if (kind, field) not in self._files:
      self._files[(kind, field)] = [
          _RowFile(f"{shard_stem(self.root, kind, s)}.{field}.npy")
          for s in range(self.manifest.num_shards(kind))]
    return self._files[(kind, field)]

  def row_shape(self, kind: str, field: str) -> tuple[int, ...]:
    return tuple(self._shards(kind, field)[0].shape[1:])

  def gather(self, kind: str, field: str, rows: np.ndarray) -> np.ndarray:
    """Rows (any shape of ids) of `field` ('global' or 'regions'), as float16."""
    rows = np.asarray(rows)
    flat = rows.reshape(-1)
    shards = self._shards(kind, field)
    size = self.manifest.shard_size
    out = np.empty((len(flat),) + self.row_shape(kind, field), np.float16)
    shard_ids = flat // size
    for s in np.unique(shard_ids):
      at = np.flatnonzero(shard_ids == s)
      part = np.empty((len(at),) + out.shape[1:], np.float16)
      shards[s].read_into(flat[at] - s * size, part)
      out[at] = part
    return out.reshape(rows.shape + out.shape[1:])

  def close(self) -> None:
    for files in self._files.values():
      for f in files:
        f.close()
    self._files.clear()
