"""On-disk cache of frozen-backbone features: sharded half-precision arrays with an index.

With a frozen backbone every epoch recomputes the same features; the cache stores them once.
Layout of a cache folder:

    index.json                        the manifest: fingerprint, shapes, item keys per kind
    products-00000.global.npy         [n, G] float16, one row per product image
    products-00000.done               written last: the shard is complete; its integrity record
    scenes-00000.global.npy           [n, G] float16, one row per (scene, crop)
    scenes-00000.regions.npy          [n, h, w, C] float16
    scenes-00000.done

Shards are streamed to temporary files batch by batch and renamed, with the `.done` marker last,
so a killed extraction leaves only complete shards (rerunning redoes the rest) and extraction
holds one batch in memory, not a shard. Reads fetch rows with `pread` rather than a memory map,
whose touched pages would count as resident memory growing with the dataset: reading memory is
bounded by the batch too.

Integrity. The `.done` marker is a JSON record of the shard: its row count and, per field file,
the byte size and the CRC-32 of the whole file (header included), computed while the rows are
streamed out, so writing costs no extra pass. `verify_shard` checks a complete shard against it:
every recorded (and every expected) field file present, of the recorded size, with a readable
float16 header of the manifest's row count whose data fills the file exactly, and with `checksum`
the CRC-32 too. Extraction (`shards_to_extract`, where the trainer decides which shards to
extract) verifies every complete shard it owns, reports a damaged one in a one-line warning that
names the file and the fault, removes its marker and extracts it again; `FeatureCache` checks
sizes and headers of every shard when it opens (a failure is a DataError naming the file), and a
read that still comes up short (a file changed under a running job) is a DataError naming the
file, never a numpy shape error.

What the checksum costs: zlib.crc32 runs at 2.3-3.3 GB/s on one core here (blake2b 0.75 GB/s,
sha1 and sha256 1.3-1.6 GB/s), and verifying a realistic cache of 3000 products x 2048 and 3000
scenes x 7x7x1024 in float16 (326 MB, 9 files) takes 0.10 s with the files in the page cache and
0.18-0.22 s with their pages evicted (sizes and headers only: 1-7 ms). That is affordable on every
open that decides what to extract (once per train, evaluate or extract-features command), so
extraction verifies checksums by default; `FeatureCache` checks sizes and headers only (it opens
right after extraction, and its reads are bounded by batches, not by the cache). Where a full read
at startup matters (caches of tens of GB, or a slow network disk), `config.features.verify =
"size"` makes extraction check sizes and headers only too.

Caches written before the integrity record have an empty `.done` marker. They are kept, not
re-extracted: an expensive extraction should not be thrown away by an upgrade, and their shards are
still checked by size, from each .npy header (header offset + rows x row bytes must be the file
size, rows the manifest's count), which catches the truncations that used to crash training; a
changed byte in such a shard cannot be detected (delete the folder to re-extract with records).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from input_pipeline import storage
from input_pipeline.readers.drops import DataError

Path = storage.Path

INDEX = "index.json"
RECORD_FORMAT = 1  # the `format` of a `.done` integrity record
NO_MARKER = "no .done marker (its extraction did not finish)"
_CHUNK = 1 << 22  # bytes per read when checksumming a file


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

  def shard_rows(self, kind: str, shard: int) -> int:
    return min(self.shard_size, len(self.keys[kind]) - shard * self.shard_size)


def shard_stem(root: Path, kind: str, shard: int) -> Path:
  return root / f"{kind}-{shard:05d}"


def _marker(root: Path, kind: str, shard: int) -> Path:
  return storage.path(f"{shard_stem(root, kind, shard)}.done")


def is_complete(root: Path, kind: str, shard: int) -> bool:
  return _marker(root, kind, shard).exists()


def write_index(root: Path, manifest: Manifest) -> None:
  storage.makedirs(root)
  storage.write_atomic(root / INDEX, json.dumps(dataclasses.asdict(manifest)))


def _load_index(path: Path) -> Manifest:
  """The manifest in `path`; FileNotFoundError, or ValueError saying what is wrong with it."""
  text = storage.read_bytes(path)
  try:
    raw = json.loads(text)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise ValueError(f"unreadable JSON ({e})") from None
  fields = sorted(f.name for f in dataclasses.fields(Manifest))
  if not isinstance(raw, dict) or sorted(raw) != fields:
    raise ValueError(f"not a feature-cache index (expected a JSON object of {fields})")
  return Manifest(**raw)


def read_index(root: Path) -> Manifest:
  """The manifest of the cache in `root`; DataError naming index.json when it is missing or
  damaged."""
  try:
    return _load_index(root / INDEX)
  except FileNotFoundError:
    raise DataError(f"{root}: no feature cache ({INDEX} missing); run extract-features") from None
  except (ValueError, OSError) as e:
    raise DataError(f"{root / INDEX}: damaged feature-cache index: {e}; rerun "
                    "extract-features, which rewrites it") from None


def repair_index(root: Path, manifest: Manifest) -> None:
  """Writes the index of `manifest` into `root` unless the same one is there; a damaged or
  different one is reported and replaced (the shards are verified against `manifest`)."""
  path = root / INDEX
  try:
    found = _load_index(path)
  except FileNotFoundError:
    pass
  except (ValueError, OSError) as e:
    logging.warning("feature cache: %s: damaged index: %s; rewriting it", path, e)
  else:
    if dataclasses.asdict(found) == json.loads(json.dumps(dataclasses.asdict(manifest))):
      return
    logging.warning("feature cache: %s differs from this run's manifest (shard size %d, now %d); "
                    "rewriting it", path, found.shard_size, manifest.shard_size)
  write_index(root, manifest)


def file_crc32(path: str | os.PathLike) -> int:
  """CRC-32 of a whole file, read in chunks."""
  crc = 0
  buf = bytearray(_CHUNK)
  view = memoryview(buf)
  with (storage.open_file(path, "rb") if storage.is_remote(path)
        else open(path, "rb", buffering=0)) as f:
    while n := f.readinto(view):
      crc = zlib.crc32(view[:n], crc)
  return crc


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
  """(shape, dtype, data offset) of a C-order .npy file; DataError naming the file otherwise."""
  try:
    with storage.open_file(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        raise ValueError(f"unsupported .npy version {version}")
      offset = f.tell()
  except FileNotFoundError:
    raise DataError(f"{path}: missing") from None
  except (ValueError, SyntaxError, OSError) as e:
    raise DataError(f"{path}: unreadable .npy header ({e})") from None
  if fortran:
    raise DataError(f"{path}: Fortran-ordered arrays are not a feature cache")
  return tuple(shape), dtype, offset


def _field_problem(path: Path, rows: int, record: dict | None, checksum: bool) -> str | None:
  """What is wrong with one field file of a shard of `rows` rows (None: nothing)."""
  try:
    size = storage.size(path)
  except FileNotFoundError:
    return f"{path}: missing"
  if record is not None and size != record["bytes"]:
    how = "truncated" if size < record["bytes"] else "too long"
    return f"{path}: {size} bytes, the integrity record says {record['bytes']} ({how})"
  try:
    shape, dtype, offset = read_npy_header(path)
  except DataError as e:
    return str(e)
  if dtype != np.float16 or not shape or shape[0] != rows:
    return f"{path}: holds a {dtype} array of shape {shape}, expected {rows} float16 rows"
  expected = offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
  if size != expected:
    how = "truncated" if size < expected else "too long"
    return f"{path}: {size} bytes, its header says {expected} ({how})"
  if checksum and record is not None:
    crc = file_crc32(path)
    if crc != record["crc32"]:
      return (f"{path}: CRC-32 {crc:08x}, the integrity record says {record['crc32']:08x} (its "
              "contents changed after extraction)")
  return None


def _read_record(marker: Path) -> dict | None:
  """The integrity record of a `.done` marker; None for an old empty marker; ValueError when
  it is unreadable or malformed."""
  text = marker.read_text()
  if not text.strip():
    return None
  record = json.loads(text)
  ok = (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
        and isinstance(record.get("rows"), int) and isinstance(record.get("fields"), dict)
        and all(isinstance(v, dict) and isinstance(v.get("bytes"), int)
                and isinstance(v.get("crc32"), int) for v in record["fields"].values()))
  if not ok:
    raise ValueError(f"not a format-{RECORD_FORMAT} integrity record")
  return record


def verify_shard(root: Path, manifest: Manifest, kind: str, shard: int, *,
                 fields: Sequence[str] = (), checksum: bool = True) -> str | None:
  """None when shard `shard` of `kind` is complete and intact, else one line naming the file
  and what is wrong with it.

  Checks the `.done` marker's integrity record (see the module docstring), and that every field
  in `fields` is there; `checksum` adds the CRC-32 of every file (a full read). A shard with an
  old empty marker is checked by size from its .npy headers."""
  marker = _marker(root, kind, shard)
  rows = manifest.shard_rows(kind, shard)
  try:
    record = _read_record(marker)
  except FileNotFoundError:
    return f"{marker}: {NO_MARKER}"
  except (ValueError, OSError) as e:
    return f"{marker}: unreadable integrity record ({e})"
  stem = shard_stem(root, kind, shard)
  if record is None:  # written before integrity records: whatever field files are there
    found = {p.name[len(stem.name) + 1:-len(".npy")] for p in root.glob(stem.name + ".*.npy")}
    names = sorted(set(fields) | found)
    if not names:
      return f"{stem}.*.npy: no field files"
  else:
    if record["rows"] != rows:
      return f"{marker}: records {record['rows']} rows, expected {rows}"
    absent = [f for f in fields if f not in record["fields"]]
    if absent:
      return f"{marker}: records no {absent[0]!r} field"
    names = sorted(record["fields"])
  for name in names:
    problem = _field_problem(storage.path(f"{stem}.{name}.npy"), rows,
                             None if record is None else record["fields"][name], checksum)
    if problem:
      return problem
  return None


def shards_to_extract(root: Path, manifest: Manifest, shards: Iterable[tuple[str, int]], *,
                      fields: dict[str, Sequence[str]], checksum: bool = True
                      ) -> dict[tuple[str, int], str]:
  """The shards of `shards` ((kind, shard) pairs) that need extraction, each with why.

  A shard without its `.done` marker is unfinished; a complete one is verified (`verify_shard`
  with the kind's `fields`, and `checksum`), and a damaged one is reported in a warning, its
  marker removed (so it is not trusted even if this extraction is killed) and listed too."""
  todo, unfinished, complete = {}, [], 0
  for kind, shard in shards:
    if not is_complete(root, kind, shard):
      todo[(kind, shard)] = NO_MARKER
      unfinished.append(shard_stem(root, kind, shard).name)
      continue
    complete += 1
    problem = verify_shard(root, manifest, kind, shard, fields=fields.get(kind, ()),
                           checksum=checksum)
    if problem:
      logging.warning("feature cache damaged: %s; re-extracting %s", problem,
                      shard_stem(root, kind, shard).name)
      _marker(root, kind, shard).unlink(missing_ok=True)
      todo[(kind, shard)] = problem
  if unfinished and complete:
    logging.info("feature cache %s: resuming; %d shards have %s: %s", root, len(unfinished),
                 NO_MARKER, ", ".join(unfinished[:5]) + (", ..." if len(unfinished) > 5 else ""))
  return todo


class ShardWriter:
  """Streams one shard's fields ('global', 'regions') to .npy files, batch by batch.

  Usage: `append(field, rows)` as batches come, then `commit()`; nothing is visible under the
  final names until `commit`, and the `.done` marker, with the integrity record (size and CRC-32
  of every file, accumulated as the bytes are written), is written last.
  """

  def __init__(self, root: Path, kind: str, shard: int, num_rows: int):
    self.stem = shard_stem(root, kind, shard)
    self.num_rows = num_rows
    self._files: dict[str, list] = {}  # field -> [file, rows written, bytes written, crc32]

  def _tmp(self, field: str) -> Path:
    """Where a field is written: a temporary name locally; on an object store the final name
    (a remote object appears whole when its upload ends, and the marker still comes last)."""
    final = f"{self.stem}.{field}.npy"
    return storage.path(final if storage.is_remote(final) else final + ".tmp")

  def append(self, field: str, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, np.float16)
    if field not in self._files:
      header = io.BytesIO()
      np.lib.format.write_array_header_2_0(
          header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                   "fortran_order": False, "shape": (self.num_rows,) + rows.shape[1:]})
      f = storage.open_file(self._tmp(field), "wb")
      f.write(header.getvalue())
      self._files[field] = [f, 0, len(header.getvalue()), zlib.crc32(header.getvalue())]
    entry = self._files[field]
    data = rows.reshape(-1).view(np.uint8)
    entry[0].write(data)
    entry[1] += len(rows)
    entry[2] += data.size
    entry[3] = zlib.crc32(data, entry[3])

  def commit(self) -> None:
    record = {"format": RECORD_FORMAT, "rows": self.num_rows, "fields": {}}
    for field, (f, written, nbytes, crc) in self._files.items():
      f.close()
      if written != self.num_rows:
        raise RuntimeError(f"{self.stem}.{field}: wrote {written} of {self.num_rows} rows")
      if not storage.is_remote(self.stem):
        os.replace(self._tmp(field), f"{self.stem}.{field}.npy")
      record["fields"][field] = {"bytes": nbytes, "crc32": crc}
    storage.write_atomic(f"{self.stem}.done", json.dumps(record))


class _RowFile:
  """Random row access to a C-order .npy file (no memory map): pread on local disk, concurrent
  ranged reads (one per row) on an object store."""

  def __init__(self, path: str):
    self.path = path
    self.shape, self.dtype, self.offset = read_npy_header(path)
    self.remote = storage.is_remote(path)
    try:
      self.fd = None if self.remote else os.open(path, os.O_RDONLY)
    except OSError as e:
      raise DataError(f"{path}: cannot open ({e.strerror})") from None
    self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

  def _read(self, rows: np.ndarray) -> list[bytes]:
    starts = [self.offset + int(r) * self.row_bytes for r in rows]
    try:
      if self.remote:
        return storage.read_ranges(self.path, starts, self.row_bytes)
      return [os.pread(self.fd, self.row_bytes, at) for at in starts]
    except OSError as e:
      raise DataError(f"{self.path}: reading rows failed ({e.strerror or e})") from None

  def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
    """Fills out[i] with row rows[i] (out is a C-contiguous [len(rows), ...] array)."""
    view = out.reshape(len(rows), -1).view(np.uint8)
    for i, (r, data) in enumerate(zip(rows, self._read(rows))):
      at = self.offset + int(r) * self.row_bytes
      if len(data) != self.row_bytes:
        raise DataError(f"{self.path}: row {int(r)} is cut short ({len(data)} of "
                        f"{self.row_bytes} bytes at offset {at}): the file changed after the "
                        "cache was opened; rerun extract-features")
      view[i] = np.frombuffer(data, np.uint8)

  def close(self) -> None:
    if self.fd is not None:
      os.close(self.fd)


class FeatureCache:
  """Read access to a complete cache: rows by key, gathered from the shards with pread.

  Opening checks every shard's marker and, by size and header, its files (`checksum` adds the
  CRC-32s, a full read); a damaged shard is a DataError naming the file."""

  def __init__(self, root: str | os.PathLike, *, checksum: bool = False):
    self.root = storage.path(root)
    self.manifest = read_index(self.root)
    self._rows = {kind: {k: i for i, k in enumerate(keys)}
                  for kind, keys in self.manifest.keys.items()}
    self._files: dict[tuple[str, str], list[_RowFile]] = {}
    for kind in self.manifest.keys:
      shards = range(self.manifest.num_shards(kind))
      missing = [s for s in shards if not is_complete(self.root, kind, s)]
      if missing:
        raise DataError(f"{self.root}: feature cache incomplete ({kind} shards {missing[:5]}"
                        f"{'...' if len(missing) > 5 else ''} missing); rerun extract-features")
      for s in shards:
        problem = verify_shard(self.root, self.manifest, kind, s, checksum=checksum)
        if problem:
          raise DataError(f"feature cache damaged: {problem}; rerun extract-features, which "
                          "re-extracts the shard")

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
      files = []
      try:
        for s in range(self.manifest.num_shards(kind)):
          files.append(_RowFile(f"{shard_stem(self.root, kind, s)}.{field}.npy"))
          if files[-1].shape[1:] != files[0].shape[1:]:
            raise DataError(f"{files[-1].path}: rows of shape {files[-1].shape[1:]}, but "
                            f"{files[0].path} has {files[0].shape[1:]}; rerun extract-features")
      except DataError:
        for f in files:
          f.close()
        raise
      self._files[(kind, field)] = files
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
