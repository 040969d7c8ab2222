"""A generator of realistic Complete-The-Look data in the public STL format.

The world it draws from has a planted *complementary* rule. Every outfit has a latent style; every
category maps each style to a look (a hue and a pattern) through its own random permutation. So a
matching pair of shoes does not share the colours of the scene's top or trousers: colour or pixel
similarity between a scene and a product is near chance, while a model that learns "this top in
this pattern goes with those shoes" ranks compatible products first. Products of one category and
style differ by jitter (hue, value, pattern scale), and their popularity follows a Zipf law, so the
popularity baseline is meaningful.

Everything is deterministic by seed: each image has its own random stream seeded by
(seed, kind, index), so the images do not depend on the order or number of workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np

from input_pipeline.readers import ctl
from input_pipeline.tools import shapes
from input_pipeline.scene import sampler as scene_sampler

# STL-Fashion's ten categories with their published product counts (stl-categories.tsv).
STL_CATEGORIES: dict[str, tuple[str, int]] = {
    "Shoes": ("Apparel & Accessories|Shoes", 11780),
    "Shirts & Tops": ("Apparel & Accessories|Clothing|Shirts & Tops", 7506),
    "Pants": ("Apparel & Accessories|Clothing|Pants", 6553),
    "Handbags": ("Apparel & Accessories|Handbags, Wallets & Cases", 3255),
    "Coats & Jackets": ("Apparel & Accessories|Clothing|Outerwear|Coats & Jackets", 2485),
    "Sunglasses": ("Apparel & Accessories|Clothing Accessories|Sunglasses", 1772),
    "Shorts": ("Apparel & Accessories|Clothing|Shorts", 1533),
    "Skirts": ("Apparel & Accessories|Clothing|Skirts", 1392),
    "Earrings": ("Apparel & Accessories|Jewelry|Earrings", 926),
    "Necklaces": ("Apparel & Accessories|Jewelry|Necklaces", 909),
}
NUM_STYLES = 8
# Popularity ~ 1 / rank^a within a category: a long tail like real catalogues, strong enough that
# "most popular first" is a real baseline (HR@10 ~0.4 of 100 candidates) and far from the ceiling.
ZIPF_EXPONENT = 0.8


@dataclasses.dataclass(frozen=True)
class Product:
  signature: str
  category: str
  style: int
  look: shapes.Look
  popularity: float


@dataclasses.dataclass(frozen=True)
class Scene:
  signature: str
  style: int
  items: tuple[int, ...]  # indices into the catalogue, one per worn product
  annotated: tuple[bool, ...]  # which items are published as (scene, product) pairs


def signature(seed: int, kind: str, index: int) -> str:
  """A 32-hex signature, like Pinterest's image signatures."""
  return hashlib.md5(f"ctl-synthetic/{seed}/{kind}/{index}".encode()).hexdigest()


def style_looks(categories: list[str], rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
  """Per category, the (hue, pattern) of each style.

  Each category permutes the hues on its own, so a style is readable from any one item's hue
  once its category is known, while the hue of a compatible item of another category is
  unrelated. Patterns follow a second, independent table per category: a weaker cue that only
  shows at higher resolution.
  """
  assert NUM_STYLES <= len(shapes.PALETTE_HUES)
  table = {}
  for category in categories:
    hues = rng.permutation(len(shapes.PALETTE_HUES))[:NUM_STYLES]
    patterns = rng.integers(len(shapes.PATTERNS), size=NUM_STYLES)
    table[category] = [(int(h), int(p)) for h, p in zip(hues, patterns)]
  return table


def make_catalogue(num_products: int, seed: int,
                   categories: dict[str, tuple[str, int]] = STL_CATEGORIES) -> list[Product]:
  """Products per category in proportion to the published counts, with Zipf popularity."""
  rng = np.random.default_rng([seed, 0])
  names = list(categories)
  table = style_looks(names, rng)
  total = sum(count for _, count in categories.values())
  products = []
  for category in names:
    n = max(NUM_STYLES, int(round(num_products * categories[category][1] / total)))
    styles = rng.permutation(np.arange(n) % NUM_STYLES)  # every style has products
    ranks = rng.permutation(n)
    for i in range(n):
      hue, pattern = table[category][styles[i]]
      look = shapes.Look(hue=hue, pattern=pattern,
                         hue_shift=float(rng.uniform(-0.025, 0.025)),
                         value=float(rng.uniform(0.7, 0.95)),
                         saturation=float(rng.uniform(0.6, 0.9)),
                         pattern_scale=float(rng.uniform(0.7, 1.3)),
                         phase=float(rng.uniform(0, 1)))
      products.append(Product(signature(seed, "product", len(products)), category,
                              int(styles[i]), look, float(1.0 / (ranks[i] + 1) ** ZIPF_EXPONENT)))
  return products


def _outfit_categories(rng: np.random.Generator, available: set[str]) -> list[str]:
  """Which categories one figure wears: a realistic, skewed composition."""
  wanted = []
  if rng.random() < 0.75:
    wanted.append("Shirts & Tops")
  if rng.random() < 0.25:
    wanted.append("Coats & Jackets")
  if rng.random() < 0.9:
    wanted.append(rng.choice(["Pants", "Shorts", "Skirts"], p=[0.64, 0.18, 0.18]))
  for category, p in (("Shoes", 0.9), ("Handbags", 0.3), ("Sunglasses", 0.22),
                      ("Earrings", 0.14), ("Necklaces", 0.14)):
    if rng.random() < p:
      wanted.append(category)
  return [c for c in wanted if c in available]


def make_scenes(num_scenes: int, products: list[Product], seed: int) -> list[Scene]:
  """Scenes of one style each, wearing popular products of that style."""
  rng = np.random.default_rng([seed, 1])
  by_key: dict[tuple[str, int], list[int]] = {}
  for i, p in enumerate(products):
    by_key.setdefault((p.category, p.style), []).append(i)
  available = {p.category for p in products}
  scenes = []
  while len(scenes) < num_scenes:
    style = int(rng.integers(NUM_STYLES))
    cats = _outfit_categories(rng, available)
    if len(cats) < 2:
      continue
    items = []
    for c in cats:
      pool = by_key[(c, style)]
      weights = np.array([products[i].popularity for i in pool])
      items.append(pool[int(rng.choice(len(pool), p=weights / weights.sum()))])
    annotated = [bool(rng.random() < 0.9) for _ in items]
    if not any(annotated):
      annotated[int(rng.integers(len(items)))] = True
    scenes.append(Scene(signature(seed, "scene", len(scenes)), style, tuple(items), tuple(annotated)))
  return scenes


def _render_scene_job(args):
  scene, looks, out_path, width, height, seed, index = args
  rng = np.random.default_rng([seed, 2, index])
  image, boxes = shapes.render_scene(looks, width, height, rng)
  image.save(out_path, quality=90)
  return boxes


def _render_product_job(args):
  product, out_path, size, seed, index = args
  rng = np.random.default_rng([seed, 3, index])
  shapes.render_product(product.category, product.look, size, rng).save(out_path, quality=90)


def write_stl_dataset(out: str | os.PathLike, num_scenes: int, seed: int,
                      num_products: int | None = None, scene_size: tuple[int, int] = (192, 256),
                      product_size: int = 128, workers: int | None = None) -> dict:
  """Writes fashion.json, fashion-cat.json, images/<sig>.jpg and generator.json into `out`.

  Args:
    out: output folder (created).
    num_scenes: number of scene photos.
    seed: the seed; the same seed gives byte-identical files.
    num_products: catalogue size; by default one product per scene.
    scene_size: (width, height) of scene photos in pixels.
    product_size: side of the square product photos.
    workers: rendering processes (default: the machine's cores).

  Returns:
    A summary dict (also written to generator.json with every item's latent style).
  """
  out = Path(out)
  images = out / "images"
  images.mkdir(parents=True, exist_ok=True)
  num_products = num_products or max(NUM_STYLES * len(STL_CATEGORIES), num_scenes)
  products = make_catalogue(num_products, seed)
  scenes = make_scenes(num_scenes, products, seed)
  width, height = scene_size
  scene_jobs = [(s, [(products[i].category, products[i].look) for i in s.items],
                 images / f"{s.signature}.jpg", width, height, seed, k) for k, s in enumerate(scenes)]
  product_jobs = [(p, images / f"{p.signature}.jpg", product_size, seed, k)
                  for k, p in enumerate(products)]
  workers = workers or os.cpu_count() or 1
  if workers == 1:
    all_boxes = [_render_scene_job(job) for job in scene_jobs]
    for job in product_jobs:
      _render_product_job(job)
  else:
    # 'spawn': forking a process that has loaded JAX or TensorFlow threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      all_boxes = list(pool.map(_render_scene_job, scene_jobs, chunksize=32))
      list(pool.map(_render_product_job, product_jobs, chunksize=32))

  pairs = []
  with open(out / "fashion.json", "w") as f:
    for scene, boxes in zip(scenes, all_boxes):
      for item, box, annotated in zip(scene.items, boxes, scene.annotated):
        if annotated:
          row = {"product": products[item].signature, "scene": scene.signature,
                 "bbox": [round(v, 6) for v in box]}
          f.write(json.dumps(row) + "\n")
          pairs.append(row)
  with open(out / "fashion-cat.json", "w") as f:
    json.dump({p.signature: STL_CATEGORIES[p.category][0] for p in products}, f)
  counts: dict[str, int] = {}
  by_sig = {p.signature: p for p in products}
  for row in pairs:
    counts[by_sig[row["product"]].category] = counts.get(by_sig[row["product"]].category, 0) + 1
  summary = {
      "format": "stl", "seed": seed, "scenes": len(scenes), "products": len(products),
      "pairs": len(pairs), "styles": NUM_STYLES,
      "pairs_per_category": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
      "rule": "each category maps the outfit's latent style to its own (hue, pattern) table",
      "product_style": {p.signature: p.style for p in products},
      "scene_style": {s.signature: s.style for s in scenes},
  }
  with open(out / "generator.json", "w") as f:
    json.dump(summary, f)
  return summary


# ---------------------------------------------------------------------------------------------
# Complete The Look (product-based) format: outfit collages.

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


def make_outfits(num_outfits: int, products: list[Product], seed: int) -> list[Outfit]:
  """Outfits of 3-7 distinct categories, one style each, wearing popular products of it."""
  rng = np.random.default_rng([seed, 4])
  by_key: dict[tuple[str, int], list[int]] = {}
  for i, p in enumerate(products):
    by_key.setdefault((p.category, p.style), []).append(i)
  names = sorted({p.category for p in products})
  weights = np.array([CTL_CATEGORIES[n][1] for n in names], np.float64)
  sizes, size_p = zip(*OUTFIT_SIZES.items())
  outfits = []
  for index in range(num_outfits):
    style = int(rng.integers(NUM_STYLES))
    k = int(rng.choice(sizes, p=size_p))
    cats = rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())
    items = []
    for c in cats:
      pool = by_key[(names[c], style)]
      w = np.array([products[i].popularity for i in pool])
      items.append(pool[int(rng.choice(len(pool), p=w / w.sum()))])
    outfits.append(Outfit(signature(seed, "outfit", index), style, tuple(items)))
  return outfits


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
  from PIL import Image
  rng = np.random.default_rng([seed, 5, index])
  canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(235, 256, 3)))
  boxes = []
  for (category, look), (x, y, w, h) in zip(items, _collage_boxes(len(items), rng)):
    # Keep the item's own aspect ratio inside its cell, centred.
    aspect = shapes._item_aspect(category)
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
                      num_products: int | None = None, image_size: int = 256,
                      test_fraction: float = 0.2, workers: int | None = None) -> dict:
  """Writes raw_{train,test}.tsv, triplet_{train,test}.tsv, fitb_eval.json and images/ into `out`.

  Same world as the STL writer: each outfit has a latent style and each category maps styles to
  looks through its own permutation. Triplets follow the published sampling (anchor and positive
  from one outfit, different categories; negative of the positive's category from another
  outfit); FITB questions hide one item of a test outfit among three same-category items of
  other test outfits. Returns a summary (also in ctl_generator.json, with latent styles).
  """
  out = Path(out)
  (out / "images").mkdir(parents=True, exist_ok=True)
  num_products = num_products or max(NUM_STYLES * len(CTL_CATEGORIES), num_outfits)
  products = make_catalogue(num_products, seed + 1, CTL_CATEGORIES)
  outfits = make_outfits(num_outfits, products, seed)
  jobs = [([(products[i].category, products[i].look) for i in o.items],
           out / "images" / f"{o.signature}.jpg", image_size, seed, k)
          for k, o in enumerate(outfits)]
  workers = workers or os.cpu_count() or 1
  if workers == 1:
    all_boxes = [_render_collage_job(job) for job in jobs]
  else:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      all_boxes = list(pool.map(_render_collage_job, jobs, chunksize=32))

  rng = np.random.default_rng([seed, 6])
  split_items: dict[str, list[tuple]] = {"train": [], "test": []}
  item_style = {}
  for o, boxes in zip(outfits, all_boxes):
    split = "test" if scene_sampler.is_test_signature(o.signature, test_fraction) else "train"
    for item, box in zip(o.items, boxes):
      split_items[split].append((o.signature, box, products[item].category))
      item_style[ctl.item_key(o.signature, box)] = o.style
  for split, items in split_items.items():
    with open(out / f"raw_{split}.tsv", "w") as f:
      f.write(CTL_HEADER + "\n")
      for sig, box, label in items:
        f.write("\t".join([sig, *map(_fmt, box), label]) + "\n")
    with open(out / f"triplet_{split}.tsv", "w") as f:
      for anchor, positive, negative in _sample_triplets(items, rng):
        f.write("\t".join(field for it in (anchor, positive, negative)
                          for field in (it[0], *map(_fmt, it[1]), it[2])) + "\n")
  with open(out / "fitb_eval.json", "w") as f:
    json.dump(_fitb_questions(split_items["test"], rng), f, indent=1)
  sizes = np.bincount([len(o.items) for o in outfits])
  summary = {"format": "ctl", "seed": seed, "outfits": len(outfits), "products": len(products),
             "items": {k: len(v) for k, v in split_items.items()},
             "items_per_outfit": {int(k): int(v) for k, v in enumerate(sizes) if v},
             "styles": NUM_STYLES, "item_style": item_style}
  with open(out / "ctl_generator.json", "w") as f:
    json.dump(summary, f)
  return summary


def _by_outfit_and_category(items):
  by_outfit: dict[str, list[tuple]] = {}
  by_category: dict[str, list[tuple]] = {}
  for it in items:
    by_outfit.setdefault(it[0], []).append(it)
    by_category.setdefault(it[2], []).append(it)
  return by_outfit, by_category


def _sample_triplets(items, rng: np.random.Generator):
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


def _fitb_questions(items, rng: np.random.Generator) -> list[dict]:
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
