"""One filesystem layer for every path ctl-jax reads or writes: local disk, `gs://`, and whatever
else `etils.epath` reaches through fsspec (`s3://`, `az://`, ...).

The workdir, the data root and its images, the feature cache, exports and reports all go through
here (orbax checkpoints speak `gs://` themselves, through the same epath and TensorStore). Local
paths keep their fast paths (pread, memory maps, TensorFlow's file ops); remote paths use
fsspec's object-store clients, with ranged reads where rows are read at random.

Object stores have no rename and no append: `write_atomic` writes a remote object in one piece
(an upload becomes visible whole or not at all), `append_text` rewrites it.

epath picks TensorFlow's GCS client for `gs://` when TensorFlow is installed; that client cannot
be pointed at anything but Google's endpoint, so this module selects fsspec's (`gcsfs`, which
honours `STORAGE_EMULATOR_HOST`) unless the user has set `EPATH_USE_TF` themselves.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402  (after the backend choice above)

Path = epath.Path
PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether `path` names an object store (`scheme://...`) rather than the local disk."""
  text = os.fspath(path)
  return "://" in text and not text.startswith("file://")


def path(p: PathLike) -> epath.Path | pathlib.Path:
  """A path object: `pathlib.Path` for the local disk (as it always was), epath's for a URL;
  both have the pathlib methods this code uses (`/`, exists, read_text, glob, unlink, ...)."""
  return epath.Path(p) if is_remote(p) else pathlib.Path(p)


def join(base: PathLike, *parts: str) -> str:
  return os.fspath(epath.Path(base).joinpath(*parts))


def absolute(p: PathLike) -> str:
  """A local path made absolute; a remote URL as it is."""
  return os.fspath(p) if is_remote(p) else os.path.abspath(os.fspath(p))


def exists(p: PathLike) -> bool:
  return epath.Path(p).exists()


def isdir(p: PathLike) -> bool:
  return epath.Path(p).is_dir()


def makedirs(p: PathLike) -> None:
  """Creates a folder and its parents (object stores have no folders: nothing to do there)."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def size(p: PathLike) -> int:
  """Bytes in a file; FileNotFoundError when it is missing."""
  if is_remote(p):
    fs, key = _fs(p)
    try:
      return int(fs.size(key))
    except FileNotFoundError:
      raise FileNotFoundError(os.fspath(p)) from None
  return os.stat(p).st_size


def signature(p: PathLike) -> tuple[int, int] | None:
  """(size, modification stamp) of a file, None when it is missing: equal stamps, same bytes."""
  if not is_remote(p):
    try:
      st = os.stat(p)
    except OSError:
      return None
    return st.st_size, st.st_mtime_ns
  fs, key = _fs(p)
  try:
    info = fs.info(key)
  except FileNotFoundError:
    return None
  stamp = info.get("generation") or info.get("mtime") or info.get("updated") or 0
  return int(info.get("size") or 0), zlib.crc32(str(stamp).encode())


def read_bytes(p: PathLike) -> bytes:
  return epath.Path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return epath.Path(p).read_text()


def write_atomic(p: PathLike, data: bytes | str) -> None:
  """Writes a whole file so that readers see the old bytes or the new ones, never a part."""
  raw = data.encode() if isinstance(data, str) else data
  if is_remote(p):
    epath.Path(p).write_bytes(raw)  # an object upload is atomic
    return
  tmp = f"{os.fspath(p)}.tmp"
  with open(tmp, "wb") as f:
    f.write(raw)
  os.replace(tmp, p)


def append_text(p: PathLike, text: str) -> None:
  """Appends to a text file (a remote object is rewritten: object stores cannot append)."""
  if not is_remote(p):
    with open(p, "a") as f:
      f.write(text)
    return
  path_ = epath.Path(p)
  old = path_.read_text() if path_.exists() else ""
  path_.write_text(old + text)


def open_file(p: PathLike, mode: str = "rb"):
  """A file object: the builtin one locally, fsspec's (buffered, ranged) remotely."""
  if is_remote(p):
    fs, key = _fs(p)
    return fs.open(key, mode)
  return open(p, mode)


def read_ranges(p: PathLike, starts: Sequence[int], length: int) -> list[bytes]:
  """`length` bytes at each offset of a remote file, fetched concurrently (one request each)."""
  fs, key = _fs(p)
  return fs.cat_ranges([key] * len(starts), list(starts), [s + length for s in starts])


def remove_tree(p: PathLike) -> None:
  if is_remote(p):
    path_ = epath.Path(p)
    if path_.exists():
      path_.rmtree()
  else:
    shutil.rmtree(p, ignore_errors=True)


def move(src: PathLike, dst: PathLike) -> None:
  """Moves a file or folder (remotely: copy, then delete)."""
  if not (is_remote(src) or is_remote(dst)):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  fs, key = _fs(src)
  fs.copy(key, _fs(dst)[1], recursive=True)
  fs.rm(key, recursive=True)


def upload_tree(local_dir: PathLike, dst: PathLike) -> None:
  """Copies a local folder to `dst` (any filesystem), file by file."""
  for root, _, files in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    for name in files:
      target = epath.Path(dst) / rel / name if rel != "." else epath.Path(dst) / name
      if not is_remote(target):
        os.makedirs(target.parent, exist_ok=True)
      target.write_bytes(open(os.path.join(root, name), "rb").read())


@contextlib.contextmanager
def local_folder(dst: PathLike) -> Iterator[str]:
  """A local folder to write into; a remote `dst` receives its files when the block ends."""
  if not is_remote(dst):
    os.makedirs(dst, exist_ok=True)
    yield os.fspath(dst)
    return
  with tempfile.TemporaryDirectory(prefix="ctl_jax_upload_") as tmp:
    yield tmp
    upload_tree(tmp, dst)


def walk_files(root: PathLike) -> Iterator[str]:
  """Every file under `root`, as full paths (sorted within each folder)."""
  if not is_remote(root):
    for dirpath, dirnames, names in os.walk(root):
      dirnames.sort()
      for name in sorted(names):
        yield os.path.join(dirpath, name)
    return
  fs, key = _fs(root)
  for found in sorted(fs.find(key)):
    yield _scheme(root) + found


def _scheme(p: PathLike) -> str:
  return os.fspath(p).split("://", 1)[0] + "://"


def _fs(p: PathLike):
  """(fsspec filesystem, its path of `p`) for a remote URL."""
  import fsspec  # noqa: PLC0415  (remote paths only)
  fs, key = fsspec.core.url_to_fs(os.fspath(p))
  return fs, key
