"""Readers of the Complete The Look (CTL) format, exact to the public release (KDD 2020).

- `raw_<split>.tsv`: header `image_signature bounding_x bounding_y bounding_width bounding_height
  label`, then one item per row, tab-separated. Rows sharing a signature are the items of one
  outfit collage; the box is (x, y, w, h) normalised from the top-left corner. Quirk of the
  published file: its header is separated by runs of spaces while its rows use tabs (labels such
  as "Shirts & Tops" contain spaces, so rows are split on tabs only).
- `triplet_<split>.tsv`: 18 tab-separated columns, (signature, x, y, w, h, label) for the anchor,
  the positive and the negative; an optional header line.
- `fitb_eval.json`: a list of {"question": [item, ...], "answers": [item, ...]}, the correct
  answer first; an item is {"signature", "x", "y", "w", "h", "label"} with string values.
Images are `<sig>.jpg`, flat or nested (see `image_folder`); an item is a crop of its collage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from input_pipeline import storage
from input_pipeline.readers import image_folder, text_files
from input_pipeline.readers.drops import DataError, DropReport

RAW_COLUMNS = ("image_signature", "bounding_x", "bounding_y", "bounding_width", "bounding_height",
               "label")
BOX_TOLERANCE = 1e-4  # the published file has x + w = 1.00000006
ITEM_FIELDS = ("signature", "x", "y", "w", "h", "label")

Box = tuple[float, float, float, float]  # (x, y, w, h), normalised
Item = tuple[str, Box, str]  # (signature, box, label)


def item_key(signature: str, box: Sequence[float]) -> str:
  """Identity of one item: its collage and its (x, y, w, h) box at 6 decimals."""
  return signature + "@" + ",".join(f"{float(v):.6f}" for v in box)


def box_problem(box: Sequence[float]) -> str | None:
  """None if (x, y, w, h) is a usable normalised box, else the reason."""
  if not all(math.isfinite(v) for v in box):
    return "non-finite coordinate"
  x, y, w, h = box
  if w <= 0 or h <= 0:
    return "zero or negative width/height"
  if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > 1 + BOX_TOLERANCE \
      or y + h > 1 + BOX_TOLERANCE:
    return "box outside [0, 1]"
  return None


def parse_item(fields: list[str], where: tuple[str, int | None], report: DropReport,
               names: Sequence[str] = ITEM_FIELDS) -> Item | None:
  """(signature, (x, y, w, h), label) from 6 text fields, or None after reporting why."""
  path, lineno = where
  sig, *coords, label = (f.strip() for f in fields)
  invalid = next((n for n, f in zip(names, fields) if text_files.has_invalid_text(f)), None)
  if invalid:
    report.drop(path, lineno, invalid, "invalid UTF-8")
    return None
  if not sig:
    report.drop(path, lineno, names[0], "empty signature")
    return None
  box = []
  for name, text in zip(names[1:5], coords):
    try:
      box.append(float(text))
    except ValueError:
      report.drop(path, lineno, name, f"not a number: {text!r}")
      return None
  problem = box_problem(box)
  if problem:
    report.drop(path, lineno, "box", problem)
    return None
  if not label:
    report.drop(path, lineno, names[5], "empty label")
    return None
  return sig, tuple(box), label


def read_raw(path: str | os.PathLike, report: DropReport) -> Iterator[tuple[int, str, Box, str]]:
  """Yields (line_number, signature, (x, y, w, h), label) of every valid row of a raw TSV."""
  lines = text_files.lines(path)
  lineno, header_line, problem = next(lines, (1, "", None))
  if problem:
    raise DataError(f"{path}:1: header: {problem}")
  if not header_line.strip():
    raise DataError(f"{path}: empty file (expected the header {' '.join(RAW_COLUMNS)})")
  header = header_line.split()
  if tuple(header) != RAW_COLUMNS:
    raise DataError(f"{path}:1: header {header} is not {list(RAW_COLUMNS)}")
  seen = set()
  for lineno, line, problem in lines:
    if problem:
      report.drop(path, lineno, "line", problem, line)
      continue
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) != 6:
      report.drop(path, lineno, "line", f"expected 6 tab-separated fields, got {len(fields)}",
                  line)
      continue
    item = parse_item(fields, (str(path), lineno), report)
    if item is None:
      continue
    key = item_key(item[0], item[1])
    if key in seen:
      report.drop(path, lineno, "line", "duplicate item", line)
      continue
    seen.add(key)
    yield (lineno, *item)


@dataclasses.dataclass
class CtlData:
  """Items of one CTL split as index arrays, grouped into outfits."""

  outfits: list[str]  # collage signatures
  categories: list[str]  # labels, sorted; category ids index this list
  item_outfit: np.ndarray  # [num_items] int32
  item_box: np.ndarray  # [num_items, 4] float32 (x, y, w, h)
  item_category: np.ndarray  # [num_items] int32
  image_paths: dict[str, str]  # signature -> file ({} when images are not checked, or TFDS)
  drops: DropReport
  item_keys: list[str]  # item_key() of each item
  # [num_items] int32 line of each item in its raw file (for messages that name the record)
  item_line: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
  # encoded collage of outfit id i (an image_source.ImageSource, e.g. a TFDS dataset's records);
  # None: the files of `image_paths`
  images: Any = None

  def __len__(self) -> int:
    return len(self.item_outfit)

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {k: i for i, k in enumerate(self.item_keys)}

  def index_of(self, signature: str, box: Sequence[float]) -> int:
    """Item index of (signature, box); KeyError when the item is not in this split."""
    return self._index[item_key(signature, box)]

  def subset(self, items: np.ndarray) -> CtlData:
    """The split restricted to `items` (ids ascending); outfit ids and categories unchanged."""
    items = np.asarray(items)
    return dataclasses.replace(
        self, item_outfit=self.item_outfit[items], item_box=self.item_box[items],
        item_category=self.item_category[items], item_keys=[self.item_keys[i] for i in items],
        item_line=self.item_line[items] if len(self.item_line) else self.item_line,
        drops=DropReport(strict=self.drops.strict))


def read_ctl(root: str | os.PathLike, split: str = "train", *, images_dir: str = "images",
             strict: bool = False, check_images: bool = True,
             categories: list[str] | None = None,
             bad_images: Mapping[str, str] | None = None) -> CtlData:
  """Reads `root/raw_<split>.tsv` (and checks `root/<images_dir>/` for the collages).

  Args:
    categories: fix the label set (and ids), e.g. to the training split's; rows with other
      labels are dropped as unknown categories. Default: the labels found, sorted.
    bad_images: signature -> reason for collages that exist but cannot be used (e.g. found
      undecodable by `image_check`); their items are dropped like missing images.
  """
  root = storage.path(root)
  path = root / f"raw_{split}.tsv"
  report = DropReport(strict=strict)
  folder = image_folder.ImageFolder(root / images_dir) if check_images else None
  return assemble(read_raw(path, report), report, path=path, categories=categories,
                  images=folder, bad_images=bad_images)


def assemble(rows: Iterable[tuple[int, str, Box, str]], report: DropReport, *,
             path: str | os.PathLike, categories: list[str] | None = None,
             images: image_folder.ImageFolder | None = None,
             bad_images: Mapping[str, str] | None = None) -> CtlData:
  """CtlData from valid (line, signature, (x, y, w, h), label) rows of one raw file.

  Shared by the folder reader and the TFDS reader (which replays the rows it stored), so both
  give the same indices for the same records.
  """
  bad_images = bad_images or {}
  kept = []
  for lineno, sig, box, label in rows:
    if categories is not None and label not in categories:
      report.drop(path, lineno, "label", f"unknown category {label!r}")
      continue
    if images is not None and sig not in images:
      report.drop(path, lineno, "image_signature", f"missing image {sig}")
      continue
    if sig in bad_images:
      report.drop(path, lineno, "image_signature", f"unusable image {sig}: {bad_images[sig]}")
      continue
    kept.append((lineno, sig, box, label))
  if not kept:
    raise DataError(f"{path}: no usable items ({report.summary()})")
  names = list(categories) if categories is not None else sorted({r[3] for r in kept})
  cat_id = {n: i for i, n in enumerate(names)}
  outfit_id: dict[str, int] = {}
  item_outfit = [outfit_id.setdefault(sig, len(outfit_id)) for _, sig, _, _ in kept]
  return CtlData(
      outfits=list(outfit_id), categories=names,
      item_outfit=np.array(item_outfit, np.int32),
      item_box=np.array([box for _, _, box, _ in kept], np.float32),
      item_category=np.array([cat_id[label] for _, _, _, label in kept], np.int32),
      image_paths={s: images.path(s) for s in outfit_id} if images is not None else {},
      drops=report, item_keys=[item_key(sig, box) for _, sig, box, _ in kept],
      item_line=np.array([lineno for lineno, _, _, _ in kept], np.int32))


def read_triplets(path: str | os.PathLike,
                  report: DropReport) -> Iterator[tuple[int, Item, Item, Item]]:
  """Yields (line_number, anchor, positive, negative) items of a triplet TSV; each item is
  (signature, (x, y, w, h), label)."""
  for lineno, line, problem in text_files.lines(path):
    if problem:
      report.drop(path, lineno, "line", problem, line)
      continue
    if not line.strip():
      continue
    fields = line.split("\t")
    if lineno == 1 and len(fields) >= 2 and not _is_number(fields[1]):
      continue  # header line
    if len(fields) != 18:
      report.drop(path, lineno, "line", f"expected 18 tab-separated fields, got {len(fields)}",
                  line)
      continue
    items = []
    for role, start in (("anchor", 0), ("positive", 6), ("negative", 12)):
      names = tuple(f"{n}_{role}" for n in ITEM_FIELDS)
      item = parse_item(fields[start:start + 6], (str(path), lineno), report, names)
      if item is None:
        break
      items.append(item)
    else:
      yield (lineno, *items)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def read_fitb(path: str | os.PathLike, report: DropReport) -> list[dict]:
  """FITB questions: [{"question": [item, ...], "answers": [item, ...], "index": i}], correct
  answer first, items as (signature, (x, y, w, h), label), `index` the question's position in
  the file. Malformed questions are dropped and reported."""
  raw = text_files.read_json_document(path, list, "a JSON list of questions")
  out = []
  for q, entry in enumerate(raw):
    where = (str(path), None)
    if not isinstance(entry, dict) or not isinstance(entry.get("question"), list) \
        or not isinstance(entry.get("answers"), list) or len(entry["answers"]) < 2:
      report.drop(path, None, f"[{q}]", "expected question and at least two answers")
      continue
    parsed = {}
    for part in ("question", "answers"):
      items = []
      for k, item in enumerate(entry[part]):
        fields = [str(item.get(n, "")) if isinstance(item, dict) else "" for n in ITEM_FIELDS]
        names = tuple(f"[{q}].{part}[{k}].{n}" for n in ITEM_FIELDS)
        parsed_item = parse_item(fields, where, report, names)
        if parsed_item is None:
          break
        items.append(parsed_item)
      else:
        parsed[part] = items
        continue
      break
    if len(parsed) == 2:
      out.append({**parsed, "index": q})
  return out
