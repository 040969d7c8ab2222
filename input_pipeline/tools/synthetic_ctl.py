"""A generator of realistic Complete The Look data in the public CTL format (`synthetic_world`).

Outfits are flat-lay collages of 3-7 items of distinct categories and one latent style, split by
outfit signature into raw_train.tsv and raw_test.tsv, with the published triplet files and FITB
questions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from input_pipeline.readers import ctl
from input_pipeline.splits import is_test_signature
from input_pipeline.tools import shapes
from input_pipeline.tools.synthetic_world import (
  NUM_STYLES,
  STL_PAIRS_PER_PRODUCT,
  Catalogue,
  add_latents,
  latents_path,
  render_all,
  signature,
)

# The thirteen labels of the published CTL test file, with their item counts (ctl-categories.tsv).
CTL_CATEGORIES: dict[str, tuple[str, int]] = {
    label: (label, count) for label, count in (
        ("Shoes", 4623), ("Handbags", 4248), ("Shirts & Tops", 3985), ("Pants", 2991),
        ("Coats & Jackets", 2341), ("Jewelry", 1928), ("Hats", 1082), ("Sunglasses", 837),
        ("Skirts", 798), ("Dresses", 764), ("Shorts", 584), ("Watches", 489),
        ("Scarves & Shawls", 470))
}
# Items per outfit, close to the published training split (3: 23%, 4: 43%, 5: 26%, 6: 7%, 7+: 1%)
# with a few more five-item outfits, the ones the KDD retrieval protocol evaluates.
OUTFIT_SIZES = {3: 0.2, 4: 0.35, 5: 0.3, 6: 0.12, 7: 0.03}
CTL_HEADER = "image_signature bounding_x  bounding_y  bounding_width  bounding_height label"


@dataclasses.dataclass(frozen=True)
class Outfit:
  signature: str
  style: int
  items: tuple[int, ...]  # catalogue indices


def make_outfits(num_outfits: int, seed: int, reuse: float = STL_PAIRS_PER_PRODUCT
                 ) -> tuple[list[Outfit], Catalogue]:
  """Outfits of 3-7 distinct categories and one style each, and the catalogue they wear
  (products recur `reuse` times on average, see `Catalogue`)."""
  rng = np.random.default_rng([seed, 4])
  names = sorted(CTL_CATEGORIES)
  catalogue = Catalogue(names, seed + 1, reuse)
  weights = np.array([CTL_CATEGORIES[n][1] for n in names], np.float64)
  sizes, size_p = zip(*OUTFIT_SIZES.items())
  outfits = []
  for index in range(num_outfits):
    style = int(rng.integers(NUM_STYLES))
    k = int(rng.choice(sizes, p=size_p))
    cats = rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())
    items = [catalogue.wear(names[c], style) for c in cats]
    outfits.append(Outfit(signature(seed, "outfit", index), style, tuple(items)))
  return outfits, catalogue


def _collage_boxes(k: int, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
  """(x, y, w, h) cells of a flat-lay collage of k items: two columns, jittered."""
  rows = -(-k // 2)
  boxes = []
  for i in range(k):
    col, row = i % 2, i // 2
    cols = 1 if (i == k - 1 and k % 2) else 2
    cell_w, cell_h = 1.0 / cols, 1.0 / rows
    x0 = (0 if cols == 1 else col * cell_w)
    scale = rng.uniform(0.72, 0.92)
    w, h = cell_w * scale, cell_h * scale
    x = x0 + rng.uniform(0, cell_w - w)
    y = row * cell_h + rng.uniform(0, cell_h - h)
    boxes.append((x, y, w, h))
  return boxes


def _render_collage_job(args):
  items, out_path, size, seed, index = args
  rng = np.random.default_rng([seed, 5, index])
  canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(235, 256, 3)))
  boxes = []
  for (category, look), (x, y, w, h) in zip(items, _collage_boxes(len(items), rng)):
    # Keep the item's own aspect ratio inside its cell, centred.
    aspect = shapes.item_aspect(category)
    bw, bh = (w, w * aspect) if w * aspect <= h else (h / aspect, h)
    bx, by = x + (w - bw) / 2, y + (h - bh) / 2
    px = (int(bx * size), int(by * size), int((bx + bw) * size), int((by + bh) * size))
    shapes.draw_item(canvas, category, look, px)
    boxes.append((px[0] / size, px[1] / size, (px[2] - px[0]) / size, (px[3] - px[1]) / size))
  canvas.save(out_path, quality=90)
  return boxes


def _fmt(v: float) -> str:
  return f"{v:.8g}"


def write_ctl_dataset(out: str | os.PathLike, num_outfits: int, seed: int,
                      reuse: float = STL_PAIRS_PER_PRODUCT, image_size: int = 256,
                      test_fraction: float = 0.2, workers: int | None = None) -> dict:
  """Writes raw_{train,test}.tsv, triplet_{train,test}.tsv, fitb_eval.json and images/ into `out`.

  Same world as the STL writer: each outfit has a latent style and each category maps styles to
  looks through its own permutation. Triplets follow the published sampling (anchor and positive
  from one outfit, different categories; negative of the positive's category from another
  outfit); FITB questions hide one item of a test outfit among three same-category items of
  other test outfits. Products recur `reuse` times on average (1: every product in one
  outfit). Returns a summary (also in ctl_generator.json); the latent style of every item is
  written beside `out` (`latents_path(out)`, shared with the STL writer's).
  """
  out = Path(out)
  (out / "images").mkdir(parents=True, exist_ok=True)
  outfits, catalogue = make_outfits(num_outfits, seed, reuse)
  products = catalogue.products
  jobs = [([(products[i].category, products[i].look) for i in o.items],
           out / "images" / f"{o.signature}.jpg", image_size, seed, k)
          for k, o in enumerate(outfits)]
  [all_boxes] = render_all([(_render_collage_job, jobs)], workers)

  rng = np.random.default_rng([seed, 6])
  split_items: dict[str, list[tuple]] = {"train": [], "test": []}
  item_style, item_product = {}, {}
  for o, boxes in zip(outfits, all_boxes):
    split = "test" if is_test_signature(o.signature, test_fraction) else "train"
    for item, box in zip(o.items, boxes):
      split_items[split].append((o.signature, box, products[item].category))
      item_style[ctl.item_key(o.signature, box)] = o.style
      item_product[ctl.item_key(o.signature, box)] = products[item].signature
  for split, items in split_items.items():
    with open(out / f"raw_{split}.tsv", "w") as f:
      f.write(CTL_HEADER + "\n")
      for sig, box, label in items:
        f.write("\t".join([sig, *map(_fmt, box), label]) + "\n")
    with open(out / f"triplet_{split}.tsv", "w") as f:
      for anchor, positive, negative in sample_triplets(items, rng):
        f.write("\t".join(field for it in (anchor, positive, negative)
                          for field in (it[0], *map(_fmt, it[1]), it[2])) + "\n")
  with open(out / "fitb_eval.json", "w") as f:
    json.dump(fitb_questions(split_items["test"], rng), f, indent=1)
  sizes = np.bincount([len(o.items) for o in outfits])
  summary = {"format": "ctl", "seed": seed, "outfits": len(outfits), "products": len(products),
             "items": {k: len(v) for k, v in split_items.items()},
             "items_per_outfit": {int(k): int(v) for k, v in enumerate(sizes) if v},
             "styles": NUM_STYLES, "reuse": reuse,
             "items_per_product": round(len(item_style) / len(products), 4)}
  with open(out / "ctl_generator.json", "w") as f:
    json.dump(summary, f)
  add_latents(latents_path(out), {"item_style": item_style, "item_product": item_product})
  return summary


def _by_outfit_and_category(items):
  by_outfit: dict[str, list[tuple]] = {}
  by_category: dict[str, list[tuple]] = {}
  for it in items:
    by_outfit.setdefault(it[0], []).append(it)
    by_category.setdefault(it[2], []).append(it)
  return by_outfit, by_category


def sample_triplets(items, rng: np.random.Generator):
  """(anchor, positive, negative) for every ordered pair of an outfit's items of different
  categories; the negative shares the positive's category and comes from another outfit."""
  by_outfit, by_category = _by_outfit_and_category(items)
  for sig, outfit in by_outfit.items():
    for anchor in outfit:
      for positive in outfit:
        if positive[2] == anchor[2]:
          continue
        pool = by_category[positive[2]]
        for _ in range(100):
          negative = pool[int(rng.integers(len(pool)))]
          if negative[0] != sig:
            yield anchor, positive, negative
            break


def fitb_questions(items, rng: np.random.Generator) -> list[dict]:
  """One question per test outfit with 3+ items: hide one item among 3 same-category items of
  other outfits (correct answer first), in the published JSON shape with string values."""
  by_outfit, by_category = _by_outfit_and_category(items)
  as_json = lambda it: {"signature": it[0], "x": _fmt(it[1][0]), "y": _fmt(it[1][1]),
                        "w": _fmt(it[1][2]), "h": _fmt(it[1][3]), "label": it[2]}
  questions = []
  for sig, outfit in by_outfit.items():
    if len(outfit) < 3:
      continue
    hidden = outfit[int(rng.integers(len(outfit)))]
    others = [it for it in by_category[hidden[2]] if it[0] != sig]
    if len(others) < 3:
      continue
    wrong = [others[i] for i in rng.choice(len(others), 3, replace=False)]
    questions.append({"question": [as_json(it) for it in outfit if it is not hidden],
                      "answers": [as_json(hidden)] + [as_json(it) for it in wrong]})
  return questions
