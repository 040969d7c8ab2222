"""On-disk cache of frozen-backbone features: sharded half-precision arrays with an index.

With a frozen backbone every epoch recomputes the same features; the cache stores them once.
Layout of a cache folder:

    index.json                        the manifest: fingerprint, shapes, item keys per kind
    products-00000.global.npy         [n, G] float16, one row per product image
    products-00000.done               written last: the shard is complete
    scenes-00000.global.npy           [n, G] float16, one row per (scene, crop)
    scenes-00000.regions.npy          [n, h, w, C] float16
    scenes-00000.done

Shards are written to temporary names and renamed, with the `.done` marker last, so a killed
extraction leaves only complete shards; rerunning redoes the rest. Reads memory-map the shards, so
memory stays bounded by the batch, not the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from input_pipeline.drops import DataError

KINDS = ("products", "scenes")
INDEX = "index.json"


def scene_crop_key(scene: str, crop) -> str:
  """Cache key of one scene cropped to a normalised (left, top, right, bottom)."""
  return scene + "@" + ",".join(f"{float(v):.6f}" for v in crop)


def fingerprint(*parts) -> str:
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


def _save_atomic(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, array)
  os.replace(tmp, path)


def write_shard(root: Path, kind: str, shard: int, global_features: np.ndarray,
                regions: np.ndarray | None = None) -> None:
  """Writes one complete shard (float16), the `.done` marker last."""
  stem = shard_stem(root, kind, shard)
  _save_atomic(Path(f"{stem}.global.npy"), np.asarray(global_features, np.float16))
  if regions is not None:
    _save_atomic(Path(f"{stem}.regions.npy"), np.asarray(regions, np.float16))
  Path(f"{stem}.done").write_text("")


class FeatureCache:
  """Read access to a complete cache: rows by key, gathered from memory-mapped shards."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)
    self.manifest = read_index(self.root)
    self._rows = {kind: {k: i for i, k in enumerate(keys)}
                  for kind, keys in self.manifest.keys.items()}
    self._arrays: dict[tuple[str, str], list[np.ndarray]] = {}
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

  def _shards(self, kind: str, field: str) -> list[np.ndarray]:
    if (kind, field) not in self._arrays:
      self._arrays[(kind, field)] = [
          np.load(f"{shard_stem(self.root, kind, s)}.{field}.npy", mmap_mode="r")
          for s in range(self.manifest.num_shards(kind))]
    return self._arrays[(kind, field)]

  def gather(self, kind: str, field: str, rows: np.ndarray) -> np.ndarray:
    """Rows (any shape of ids) of `field` ('global' or 'regions'), as float16."""
    rows = np.asarray(rows)
    flat = rows.reshape(-1)
    shards = self._shards(kind, field)
    size = self.manifest.shard_size
    out = np.empty((len(flat),) + shards[0].shape[1:], np.float16)
    shard_ids = flat // size
    for s in np.unique(shard_ids):
      at = np.flatnonzero(shard_ids == s)
      out[at] = shards[s][flat[at] - s * size]
    return out.reshape(rows.shape + out.shape[1:])
