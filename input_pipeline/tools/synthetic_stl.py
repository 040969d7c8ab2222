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
  STL_PAIRS_PER_PRODUCT,
  STL_PAIRS_PER_SCENE,
  Catalogue,
  add_latents,
  latents_path,
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
  worn: tuple[tuple[str, shapes.Look], ...]  # (category, look) of every item the figure wears
  products: tuple[int, ...]  # per worn item, its catalogue index when published as a pair, or -1


def _outfit_categories(rng: np.random.Generator, available: set[str]) -> list[str]:
  """Which categories one figure wears: a realistic, skewed composition."""
  wanted = []
  if rng.random() < 0.75:
    wanted.append("Shirts & Tops")
  if rng.random() < 0.25:
    wanted.append("Coats & Jackets")
  if rng.random() < 0.9:
    wanted.append(str(rng.choice(["Pants", "Shorts", "Skirts"], p=[0.64, 0.18, 0.18])))
  for category, p in (("Shoes", 0.9), ("Handbags", 0.3), ("Sunglasses", 0.22),
                      ("Earrings", 0.14), ("Necklaces", 0.14)):
    if rng.random() < p:
      wanted.append(category)
  return [c for c in wanted if c in available]


def make_scenes(num_scenes: int, seed: int, reuse: float = STL_PAIRS_PER_PRODUCT,
                pairs_per_scene: float = STL_PAIRS_PER_SCENE) -> tuple[list[Scene], Catalogue]:
  """Scenes of one style each, and the catalogue of their published products.

  A figure wears 2-7 items; `pairs_per_scene` of them on average (at least one) are published
  as (scene, product) pairs, as in STL-Fashion where most of what a figure wears is not
  annotated. Published items are catalogue products worn with `reuse` (see `Catalogue`); the
  others are one-off looks of the scene's style that are in no catalogue.
  """
  rng = np.random.default_rng([seed, 1])
  catalogue = Catalogue(list(STL_CATEGORIES), seed, reuse)
  scenes = []
  while len(scenes) < num_scenes:
    style = int(rng.integers(NUM_STYLES))
    cats = _outfit_categories(rng, set(STL_CATEGORIES))
    if len(cats) < 2:
      continue
    num_pairs = min(len(cats), 1 + int(rng.poisson(pairs_per_scene - 1.0)))
    published = set(rng.choice(len(cats), num_pairs, replace=False).tolist())
    worn, products = [], []
    for k, c in enumerate(cats):
      if k in published:
        index = catalogue.wear(c, style)
        worn.append((c, catalogue.products[index].look))
        products.append(index)
      else:
        worn.append((c, catalogue.new_look(c, style)))
        products.append(-1)
    scenes.append(Scene(signature(seed, "scene", len(scenes)), style, tuple(worn),
                        tuple(products)))
  return scenes, catalogue


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
                      reuse: float = STL_PAIRS_PER_PRODUCT,
                      pairs_per_scene: float = STL_PAIRS_PER_SCENE,
                      scene_size: tuple[int, int] = (192, 256), product_size: int = 128,
                      workers: int | None = None) -> dict:
  """Writes fashion.json, fashion-cat.json, images/<sig>.jpg and generator.json into `out`, and
  the latent styles beside it (`latents_path(out)`).

  Args:
    out: output folder (created).
    num_scenes: number of scene photos.
    seed: the seed; the same seed gives byte-identical files.
    reuse: mean pairs per product (1: every product in one pair); default STL-Fashion's.
    pairs_per_scene: mean published pairs per scene; default STL-Fashion's.
    scene_size: (width, height) of scene photos in pixels.
    product_size: side of the square product photos.
    workers: rendering processes (default: the machine's cores).

  Returns:
    A summary dict (also written to generator.json).
  """
  out = Path(out)
  images = out / "images"
  images.mkdir(parents=True, exist_ok=True)
  scenes, catalogue = make_scenes(num_scenes, seed, reuse, pairs_per_scene)
  products = catalogue.products
  width, height = scene_size
  scene_jobs = [(s, list(s.worn), images / f"{s.signature}.jpg", width, height, seed, k)
                for k, s in enumerate(scenes)]
  product_jobs = [(p, images / f"{p.signature}.jpg", product_size, seed, k)
                  for k, p in enumerate(products)]
  all_boxes, _ = render_all([(_render_scene_job, scene_jobs),
                             (_render_product_job, product_jobs)], workers)

  pairs = []
  with open(out / "fashion.json", "w") as f:
    for scene, boxes in zip(scenes, all_boxes):
      for item, box in zip(scene.products, boxes):
        if item >= 0:
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
      "pairs": len(pairs), "styles": NUM_STYLES, "reuse": reuse,
      "pairs_per_product": round(len(pairs) / len(products), 4),
      "pairs_per_scene": round(len(pairs) / len(scenes), 4),
      "pairs_per_category": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
      "rule": "each category maps the outfit's latent style to its own (hue, pattern) table",
  }
  with open(out / "generator.json", "w") as f:
    json.dump(summary, f)
  add_latents(latents_path(out), {"product_style": {p.signature: p.style for p in products},
                                  "scene_style": {s.signature: s.style for s in scenes}})
  return summary
