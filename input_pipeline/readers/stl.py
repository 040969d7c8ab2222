"""Reader of the Shop The Look (STL) format, exact to the public release.

`fashion.json` holds one JSON object per line, `{"product": sig, "scene": sig, "bbox": [left, top,
right, bottom]}` with the box normalised to [0, 1] from the top-left corner; `fashion-cat.json` is
one JSON object mapping each product signature to a category path such as
`"Apparel & Accessories|Clothing|Shirts & Tops"`. Images are `<sig>.jpg` under an image folder,
flat or nested (see `image_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from input_pipeline import storage
from input_pipeline.readers import image_folder, text_files
from input_pipeline.readers.drops import DataError, DropReport

PAIRS_FILE = "fashion.json"
CATEGORIES_FILE = "fashion-cat.json"


@dataclasses.dataclass
class StlData:
  """Pairs of one STL dataset as index arrays, plus the tables the indices point into."""

  scenes: list[str]  # scene signatures
  products: list[str]  # product signatures
  categories: list[str]  # short labels; category ids index this list
  product_category: np.ndarray  # [num_products] int32
  pair_scene: np.ndarray  # [num_pairs] int32
  pair_product: np.ndarray  # [num_pairs] int32
  pair_box: np.ndarray  # [num_pairs, 4] float32 (left, top, right, bottom)
  image_paths: dict[str, str]  # signature -> file ({} when images are not files, e.g. TFDS)
  drops: DropReport
  # [num_pairs] int32 line of each pair in the pair file (for messages that name the record)
  pair_line: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

  @property
  def pair_category(self) -> np.ndarray:
    return self.product_category[self.pair_product]

  def __len__(self) -> int:
    return len(self.pair_scene)


def category_label(path: str, mapping: Mapping[str, str] | None = None) -> str:
  """Short label of a category path: `mapping[path]` if given, else its last segment."""
  if mapping and path in mapping:
    return mapping[path]
  return path.rsplit("|", 1)[-1].strip()


def read_category_map(path: str | os.PathLike, report: DropReport) -> dict[str, str]:
  """The product -> category-path object of fashion-cat.json."""
  obj = text_files.read_json_document(path, dict, "one JSON object mapping product -> category",
                                      missing_hint=" (the STL product -> category map)")
  out = {}
  for sig, cat in obj.items():
    if text_files.has_invalid_text(sig) or (isinstance(cat, str)
                                            and text_files.has_invalid_text(cat)):
      report.drop(path, None, sig.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                  "invalid UTF-8 in the signature or its category")
      continue
    if not isinstance(cat, str) or not cat.strip():
      report.drop(path, None, sig, "category is not a non-empty string", repr(cat))
      continue
    out[sig] = cat
  return out


def _valid_box(box) -> str | None:
  """None if `box` is a valid (left, top, right, bottom) in [0, 1], else the reason."""
  if not isinstance(box, (list, tuple)) or len(box) != 4:
    return "expected [left, top, right, bottom]"
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
    return "non-numeric coordinate"
  if not all(np.isfinite(v) for v in box):
    return "non-finite coordinate"
  left, top, right, bottom = box
  if min(box) < 0.0 or max(box) > 1.0:
    return "box outside [0, 1]"
  if right <= left or bottom <= top:
    return "inverted or zero-area box"
  return None


def read_pairs(path: str | os.PathLike,
               report: DropReport) -> Iterator[tuple[int, str, str, list[float]]]:
  """Yields (line_number, scene, product, box) of every valid line of fashion.json."""
  seen = set()
  for lineno, line, problem in text_files.lines(path, " (the STL pair file)"):
    if problem:
      report.drop(path, lineno, "line", problem, line)
      continue
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      report.drop(path, lineno, "line", f"malformed JSON ({e.msg})", line)
      continue
    if not isinstance(row, dict):
      report.drop(path, lineno, "line", "not a JSON object", line)
      continue
    bad = next((k for k in ("scene", "product")
                if not isinstance(row.get(k), str) or not row[k]), None)
    if bad:
      report.drop(path, lineno, bad, "missing or not a string", line)
      continue
    if "bbox" not in row:
      report.drop(path, lineno, "bbox", "missing", line)
      continue
    reason = _valid_box(row["bbox"])
    if reason:
      report.drop(path, lineno, "bbox", reason, line)
      continue
    key = (row["scene"], row["product"])
    if key in seen:
      report.drop(path, lineno, "product", "duplicate (scene, product) pair", line)
      continue
    seen.add(key)
    yield lineno, row["scene"], row["product"], [float(v) for v in row["bbox"]]


def read_stl(root: str | os.PathLike, *, images_dir: str = "images", strict: bool = False,
             category_map: Mapping[str, str] | None = None,
             pairs_file: str = PAIRS_FILE, categories_file: str = CATEGORIES_FILE,
             check_images: bool = True, categories: Sequence[str] | None = None,
             bad_images: Mapping[str, str] | None = None) -> StlData:
  """Reads an STL folder: `root/fashion.json`, `root/fashion-cat.json`, `root/<images_dir>/`.

  Args:
    root: the dataset folder.
    images_dir: image folder, relative to root (or absolute).
    strict: raise DataError at the first bad record instead of skipping it.
    category_map: optional category path -> short label overrides.
    pairs_file, categories_file: file names inside root.
    check_images: drop pairs whose scene or product image is missing.
    categories: keep only these labels (category ids follow this order); pairs of other labels
      are dropped as unknown categories. Default: every label found, sorted.
    bad_images: signature -> reason for images that exist but cannot be used (e.g. found
      undecodable by `image_check`); their pairs are dropped like missing images.

  Returns:
    StlData; its `drops` lists every skipped record with file, line, field and reason.
  """
  root = storage.path(root)
  report = DropReport(strict=strict)
  cat_paths = read_category_map(root / categories_file, report)
  folder = image_folder.ImageFolder(root / images_dir) if check_images else None
  pairs_path = root / pairs_file
  return assemble(read_pairs(pairs_path, report), cat_paths, report, pairs_path=pairs_path,
                  categories_file=categories_file, category_map=category_map,
                  categories=categories, images=folder, bad_images=bad_images)


def assemble(rows: Iterable[tuple[int, str, str, list[float]]], cat_paths: Mapping[str, str],
             report: DropReport, *, pairs_path: str | os.PathLike,
             categories_file: str = CATEGORIES_FILE,
             category_map: Mapping[str, str] | None = None,
             categories: Sequence[str] | None = None,
             images: image_folder.ImageFolder | None = None,
             bad_images: Mapping[str, str] | None = None) -> StlData:
  """StlData from valid (line, scene, product, box) rows and the product -> category-path map.

  Shared by the folder reader and the TFDS reader (which replays the rows it stored), so both
  give the same indices for the same records. Pairs whose product has no category, whose label
  is not in `categories`, or whose images are missing from `images` or listed in `bad_images`
  are dropped into `report`.
  """
  bad_images = bad_images or {}
  keep = None if categories is None else list(categories)
  scenes: dict[str, int] = {}
  products: dict[str, int] = {}
  labels: dict[str, int] = {} if keep is None else {n: i for i, n in enumerate(keep)}
  product_label: list[int] = []
  pair_scene, pair_product, pair_box, pair_line = [], [], [], []
  for lineno, scene, product, box in rows:
    if product not in cat_paths:
      report.drop(pairs_path, lineno, "product",
                  f"product {product} has no category in {categories_file}")
      continue
    label = category_label(cat_paths[product], category_map)
    if keep is not None and label not in labels:
      report.drop(pairs_path, lineno, "product", f"unknown category {label!r}")
      continue
    if images is not None:
      missing = next((s for s in (scene, product) if s not in images), None)
      if missing:
        report.drop(pairs_path, lineno, "scene" if missing == scene else "product",
                    f"missing image {missing}")
        continue
    bad = next((s for s in (scene, product) if s in bad_images), None)
    if bad:
      report.drop(pairs_path, lineno, "scene" if bad == scene else "product",
                  f"unusable image {bad}: {bad_images[bad]}")
      continue
    if product not in products:
      products[product] = len(products)
      product_label.append(labels.setdefault(label, len(labels)))
    pair_scene.append(scenes.setdefault(scene, len(scenes)))
    pair_product.append(products[product])
    pair_box.append(box)
    pair_line.append(lineno)
  if not pair_scene:
    raise DataError(f"{pairs_path}: no usable (scene, product) pairs ({report.summary()})")
  if keep is None:
    # Category ids sorted by name, so that they do not depend on the order of the file.
    names = sorted(labels)
    remap = np.array([names.index(n) for n in labels], np.int32)
  else:
    names, remap = keep, np.arange(len(keep), dtype=np.int32)
  paths = {}
  if images is not None:
    paths = {s: images.path(s) for s in list(scenes) + list(products)}
  return StlData(
      scenes=list(scenes), products=list(products), categories=names,
      product_category=remap[np.array(product_label, np.int32)],
      pair_scene=np.array(pair_scene, np.int32), pair_product=np.array(pair_product, np.int32),
      pair_box=np.array(pair_box, np.float32).reshape(-1, 4), image_paths=paths, drops=report,
      pair_line=np.array(pair_line, np.int32))
