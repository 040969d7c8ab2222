"""A summary of an STL or CTL folder before training on it (`python run.py inspect-data`).

Counts per category, items per scene or outfit, missing images, dropped records (with every
reason) and box statistics, as a readable text and as JSON with at least `groups` (scenes or
outfits), `items`, `categories` (label -> items), `missing_images` and `dropped`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline.readers import ctl, image_folder, stl
from input_pipeline.readers.drops import DataError, DropReport


def _distribution(values: np.ndarray) -> dict:
  values = np.asarray(values, np.float64)
  if not len(values):
    return {}
  return {"min": float(values.min()), "mean": round(float(values.mean()), 4),
          "median": float(np.median(values)), "max": float(values.max())}


def _group_sizes(group_of_item: np.ndarray, num_groups: int) -> dict:
  sizes = np.bincount(group_of_item, minlength=num_groups)
  return {**_distribution(sizes),
          "histogram": {int(k): int(v) for k, v in sorted(collections.Counter(sizes).items())}}


def _box_stats(width: np.ndarray, height: np.ndarray) -> dict:
  return {"width": _distribution(width), "height": _distribution(height),
          "area": _distribution(width * height),
          "area_under_1pct": int(np.sum(width * height < 0.01))}


def _drops(report: DropReport) -> dict:
  return {"dropped": len(report), "dropped_by_reason": report.counts(),
          "drops": [str(d) for d in report.drops]}


def _missing(sigs: list[str], folder: image_folder.ImageFolder) -> list[str]:
  return [s for s in sigs if s not in folder]


def summarize_stl(root: str | os.PathLike, images_dir: str = "images",
                  category_map: Mapping[str, str] | None = None, strict: bool = False) -> dict:
  data = stl.read_stl(root, images_dir=images_dir, category_map=category_map, strict=strict,
                      check_images=False)
  folder = image_folder.ImageFolder(Path(root) / images_dir)
  missing = _missing(data.scenes + data.products, folder)
  missing_set = set(missing)
  scene_missing = np.array([s in missing_set for s in data.scenes])
  product_missing = np.array([p in missing_set for p in data.products])
  pair_missing = scene_missing[data.pair_scene] | product_missing[data.pair_product]
  labels = np.array(data.categories)
  box = data.pair_box
  return {
      "format": "stl", "root": str(root), "groups": len(data.scenes), "items": len(data),
      "products": len(data.products),
      "categories": dict(collections.Counter(labels[data.pair_category]).most_common()),
      "products_per_category": dict(collections.Counter(
          labels[data.product_category]).most_common()),
      "items_per_group": _group_sizes(data.pair_scene, len(data.scenes)),
      "missing_images": len(missing), "missing_image_signatures": missing,
      "items_with_missing_images": int(pair_missing.sum()),
      "images_found": len(folder),
      "boxes": _box_stats(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]),
      **_drops(data.drops),
  }


def _ctl_split(root: Path, split: str, images_dir: str, strict: bool) -> dict:
  data = ctl.read_ctl(root, split, images_dir=images_dir, strict=strict, check_images=False)
  labels = np.array(data.categories)
  box = data.item_box
  return {
      "data": data, "groups": len(data.outfits), "items": len(data),
      "categories": collections.Counter(labels[data.item_category].tolist()),
      "items_per_group": _group_sizes(data.item_outfit, len(data.outfits)),
      "width": box[:, 2], "height": box[:, 3],
  }


def summarize_ctl(root: str | os.PathLike, images_dir: str = "images",
                  strict: bool = False) -> dict:
  root = Path(root)
  names = [s for s in ("train", "test") if (root / f"raw_{s}.tsv").exists()]
  if not names:
    raise DataError(f"{root}: neither raw_train.tsv nor raw_test.tsv")
  splits = {name: _ctl_split(root, name, images_dir, strict) for name in names}
  report = DropReport(strict=strict)
  for s in splits.values():
    report.drops.extend(s["data"].drops.drops)
  extra = {}
  for path in sorted(root.glob("triplet_*.tsv")):
    extra[path.name] = sum(1 for _ in ctl.read_triplets(path, report))
  if (root / "fitb_eval.json").exists():
    extra["fitb_eval.json"] = len(ctl.read_fitb(root / "fitb_eval.json", report))
  folder = image_folder.ImageFolder(root / images_dir)
  outfits = list(dict.fromkeys(o for s in splits.values() for o in s["data"].outfits))
  missing = _missing(outfits, folder)
  categories = sum((s["categories"] for s in splits.values()), collections.Counter())
  width = np.concatenate([s["width"] for s in splits.values()])
  height = np.concatenate([s["height"] for s in splits.values()])
  return {
      "format": "ctl", "root": str(root),
      "groups": len(outfits), "items": sum(s["items"] for s in splits.values()),
      "categories": dict(categories.most_common()),
      "splits": {name: {"groups": s["groups"], "items": s["items"],
                        "categories": dict(s["categories"].most_common()),
                        "items_per_group": s["items_per_group"]}
                 for name, s in splits.items()},
      "other_files": extra,  # records per triplet / FITB file found next to the raw files
      "missing_images": len(missing), "missing_image_signatures": missing,
      "images_found": len(folder),
      "boxes": _box_stats(width, height),
      **_drops(report),
  }


def detect_format(root: str | os.PathLike) -> str:
  """"stl" or "ctl": the format whose annotation files `root` holds."""
  root = Path(root)
  found = [fmt for fmt, names in (("stl", ["fashion.json"]),
                                  ("ctl", ["raw_train.tsv", "raw_test.tsv"]))
           if any((root / n).exists() for n in names)]
  if len(found) != 1:
    what = "both STL and CTL files" if found else "no fashion.json nor raw_*.tsv"
    raise DataError(f"{root}: {what}; pass --format stl or --format ctl")
  return found[0]


def summarize(fmt: str, root: str | os.PathLike, **kwargs: Any) -> dict:
  """The summary of `root` read as `fmt` ("stl", "ctl", or "both": whichever it holds)."""
  readers = {"stl": summarize_stl, "ctl": summarize_ctl}
  if fmt == "both":
    fmt = detect_format(root)
  if fmt not in readers:
    raise ValueError(f"format {fmt!r}: inspect-data reads one of {sorted(readers)}")
  return readers[fmt](root, **kwargs)


def format_summary(s: dict, max_drops: int = 10) -> str:
  """Readable lines of a summary."""
  group = {"stl": "scenes", "ctl": "outfits"}[s["format"]]
  item = {"stl": "pairs", "ctl": "items"}[s["format"]]
  dist = lambda d: (f"min {d['min']:g}, mean {d['mean']:g}, median {d['median']:g}, "
                    f"max {d['max']:g}") if d else "-"
  lines = [f"{s['root']} ({s['format'].upper()}): {s['groups']} {group}, {s['items']} {item}"
           + (f", {s['products']} products" if "products" in s else "")
           + f", {len(s['categories'])} categories"]
  for name, split in s.get("splits", {}).items():
    lines.append(f"  {name}: {split['groups']} {group}, {split['items']} {item}")
  for name, count in s.get("other_files", {}).items():
    lines.append(f"  {name}: {count} records")
  if "items_per_group" in s:
    lines.append(f"{item} per {group[:-1]}: {dist(s['items_per_group'])}")
  else:
    for name, split in s["splits"].items():
      lines.append(f"{item} per {group[:-1]} ({name}): {dist(split['items_per_group'])}")
  lines.append(f"{item} per category:")
  lines += [f"  {n:>7}  {label}" for label, n in s["categories"].items()]
  b = s["boxes"]
  lines.append(f"boxes: width {dist(b['width'])}; height {dist(b['height'])}; "
               f"area {dist(b['area'])}; {b['area_under_1pct']} under 1% of the image")
  lines.append(f"images: {s['images_found']} found, {s['missing_images']} referenced but missing"
               + "".join(f"; e.g. {m}" for m in s["missing_image_signatures"][:3]))
  lines.append(f"dropped records: {s['dropped']}"
               + "".join(f"\n  {n:>7}  {r}" for r, n in s["dropped_by_reason"].items()))
  lines += [f"  {d}" for d in s["drops"][:max_drops]]
  if s["dropped"] > max_drops:
    lines.append(f"  ... {s['dropped'] - max_drops} more (--json FILE lists them all)")
  return "\n".join(lines)
