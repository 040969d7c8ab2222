"""Finds the images the input pipeline could not decode, before training starts.

An undecodable image met in the middle of an epoch would stop a run after hours. This check
decodes every image once, whole and at full scale, with the TensorFlow ops of the pipeline
(`preprocess.decode_and_crop`), in parallel inside tf.data. Whole matters: a truncated JPEG still
decodes a window of its intact top rows, so cropping alone would find it only for some crops.

Results are remembered per file (path, size, modification time) in a small JSON cache, so a
dataset is checked once; a changed or added file is checked again on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

import tensorflow as tf
import tqdm

from input_pipeline import preprocess, storage

T = TypeVar("T")
CACHE_FILE = ".image_check.json"  # in the dataset folder when it is writable
CACHE_VERSION = 1


def _decode_whole(path: tf.Tensor) -> tf.Tensor:
  image = preprocess.decode_and_crop(preprocess.read_file(path),
                                     tf.constant(preprocess.FULL_IMAGE))
  return tf.shape(image)


def _reason(error: Exception) -> str:
  """The readable part of a TensorFlow error message."""
  text = getattr(error, "message", str(error))
  text = re.sub(r"\{\{[^}]*\}\}\s*", "", text).strip()
  return "undecodable image: " + (text.splitlines()[0] if text else type(error).__name__)


def _load_cache(cache_file: str | None) -> dict:
  if cache_file is None or not storage.exists(cache_file):
    return {}
  try:
    raw = json.loads(storage.read_text(cache_file))
  except (OSError, ValueError):
    return {}  # a damaged cache is only a lost speed-up
  return raw.get("files", {}) if raw.get("version") == CACHE_VERSION else {}


def _save_cache(cache_file: str, entries: dict) -> None:
  try:
    storage.write_atomic(cache_file, json.dumps({"version": CACHE_VERSION, "files": entries}))
  except OSError as e:
    logging.warning("could not write the image check cache %s: %s", cache_file, e)


def decode_problems(paths: list[str], num_parallel_calls: int = tf.data.AUTOTUNE,
                    progress: bool = True) -> dict[str, str]:
  """{path: reason} of the files of `paths` that do not decode, checked in parallel."""
  if not paths:
    return {}
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths))
  ds = ds.map(lambda p: (p, _decode_whole(p)), num_parallel_calls=num_parallel_calls,
              deterministic=False)
  # A file whose decode raises is skipped by ignore_errors: the missing paths are the bad ones.
  ds = ds.ignore_errors(log_warning=False).prefetch(64)
  decoded = set()
  with tqdm.tqdm(total=len(paths), unit="img", desc="checking images", disable=not progress,
                 mininterval=2.0) as bar:
    for path, _ in ds.as_numpy_iterator():
      decoded.add(path.decode())
      bar.update(1)
  problems = {}
  for path in paths:
    if path not in decoded:  # rerun the few failures eagerly for their error message
      try:
        _decode_whole(tf.constant(path))
        problems[path] = "undecodable image"
      except (tf.errors.OpError, ValueError) as e:
        problems[path] = _reason(e)
  return problems


def check_images(paths: Mapping[str, str], cache_file: str | os.PathLike | None = None,
                 num_parallel_calls: int = tf.data.AUTOTUNE,
                 progress: bool = True) -> dict[str, str]:
  """Signatures whose image file cannot be used, with the reason.

  Args:
    paths: signature -> image file.
    cache_file: JSON file remembering earlier results (None: no cache).
    num_parallel_calls: parallel decodes.
    progress: show a progress bar.

  Returns:
    {signature: reason} for every file that is gone, empty or undecodable.
  """
  cache_file = os.fspath(cache_file) if cache_file else None
  cache = _load_cache(cache_file)
  entries, todo, bad = {}, [], {}
  for sig, path in paths.items():
    stat = storage.signature(path)
    if stat is None:
      bad[sig] = f"image file not found: {path}"
      continue
    key = storage.absolute(path)
    old = cache.get(key)
    if old is not None and tuple(old[:2]) == stat:
      entries[key] = old
    elif stat[0] == 0:
      entries[key] = [*stat, "empty image file"]
    else:
      todo.append(path)
  if todo:
    logging.info("checking that %d images decode (%d known from %s)", len(todo), len(entries),
                 cache_file)
    problems = decode_problems(todo, num_parallel_calls, progress)
    for path in todo:
      stat = storage.signature(path)
      if stat is not None:
        entries[storage.absolute(path)] = [*stat, problems.get(path)]
  if cache_file is not None and (todo or len(entries) != len(cache)):
    # Keep other files' entries: several datasets may share one image folder.
    _save_cache(cache_file, {**cache, **entries})
  for sig, path in paths.items():
    entry = entries.get(storage.absolute(path))
    if sig not in bad and entry is not None and entry[2]:
      bad[sig] = entry[2]
  return bad


def default_cache_file(root: str | os.PathLike, fallback_dir: str | os.PathLike | None = None
                       ) -> str | None:
  """`root/.image_check.json` when `root` is a writable folder, else in `fallback_dir` (or no
  cache). A remote root (often another team's bucket) keeps its cache in the user's local cache
  folder (`~/.cache/ctl_jax`), keyed like every cache by full paths."""
  if storage.is_remote(root):
    fallback_dir = fallback_dir or os.path.join(os.path.expanduser("~"), ".cache", "ctl_jax")
  elif os.access(root, os.W_OK):
    return os.path.join(root, CACHE_FILE)
  if fallback_dir:
    storage.makedirs(fallback_dir)
    return storage.join(fallback_dir, CACHE_FILE)  # keys are absolute paths: datasets share it
  return None


def read_checked(read: Callable[[bool, Mapping[str, str] | None], T],
                 image_paths: Callable[[T], Mapping[str, str]], root: str | os.PathLike, *,
                 strict: bool, check: bool = True,
                 num_drops: Callable[[T], int] = lambda data: len(data.drops)) -> T:
  """The records of a dataset folder whose images decode: the one path of both tasks.

  `read(strict, bad_images)` reads the annotation files (dropping the records of missing images
  and of `bad_images`); `image_paths(data)` is the {signature: file} of what it kept and
  `num_drops(data)` the number of records it dropped. A lenient
  read finds the files; they are checked (`check_images`, cached in `root`); a second read with
  the undecodable ones drops their records. In strict mode that second read raises at the first
  bad record in file order, whether its problem is in the text or in an image.
  """
  data = read(False, None)
  bad = check_images(image_paths(data), default_cache_file(root)) if check else {}
  if bad or (strict and num_drops(data)):
    data = read(strict, bad)
  return data
