"""A generator of realistic Shop The Look data in the public STL format (`synthetic_world`).

Scenes are street-style photos of one figure wearing products of one latent style; products have
catalogue photos; most worn products are published as (scene, product) pairs with their box.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from input_pipeline.tools import shapes
from input_pipeline.tools.synthetic_world import (
  NUM_STYLES,
  Product,
  make_catalogue,
  popular_choice,
  products_by_style,
  render_all,
  signature,
)

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


@dataclasses.dataclass(frozen=True)
class Scene:
  signature: str
  style: int
  items: tuple[int, ...]  # indices into the catalogue, one per worn product
  annotated: tuple[bool, ...]  # which items are published as (scene, product) pairs


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
  by_key = products_by_style(products)
  available = {p.category for p in products}
  scenes = []
  while len(scenes) < num_scenes:
    style = int(rng.integers(NUM_STYLES))
    cats = _outfit_categories(rng, available)
    if len(cats) < 2:
      continue
    items = [popular_choice(by_key[(c, style)], products, rng) for c in cats]
    annotated = [bool(rng.random() < 0.9) for _ in items]
    if not any(annotated):
      annotated[int(rng.integers(len(items)))] = True
    scenes.append(Scene(signature(seed, "scene", len(scenes)), style, tuple(items),
                        tuple(annotated)))
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
  products = make_catalogue(num_products, seed, STL_CATEGORIES)
  scenes = make_scenes(num_scenes, products, seed)
  width, height = scene_size
  scene_jobs = [(s, [(products[i].category, products[i].look) for i in s.items],
                 images / f"{s.signature}.jpg", width, height, seed, k)
                for k, s in enumerate(scenes)]
  product_jobs = [(p, images / f"{p.signature}.jpg", product_size, seed, k)
                  for k, p in enumerate(products)]
  all_boxes, _ = render_all([(_render_scene_job, scene_jobs),
                             (_render_product_job, product_jobs)], workers)

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
