"""The world the data generators draw from: a catalogue of products with latent styles.

The world has a planted *complementary* rule. Every outfit has a latent style; every category
maps each style to a look (a hue and a pattern) through its own random permutation. So a
matching pair of shoes does not share the colours of the scene's top or trousers: colour or pixel
similarity between a scene and a product is near chance, while a model that learns "this top in
this pattern goes with those shoes" ranks compatible products first. Products of one category and
style differ by jitter (hue, value, pattern scale), and their popularity follows a Zipf law, so the
popularity baseline is meaningful.

Two writers render it in the public formats: `synthetic_stl` (scene photos and catalogue photos,
Shop The Look) and `synthetic_ctl` (outfit collages, Complete The Look). Everything is
deterministic by seed: each image has its own random stream seeded by (seed, kind, index), so the
images do not depend on the order or number of workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from input_pipeline.tools import shapes

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


def signature(seed: int, kind: str, index: int) -> str:
  """A 32-hex signature, like Pinterest's image signatures."""
  return hashlib.md5(f"ctl-synthetic/{seed}/{kind}/{index}".encode()).hexdigest()


def style_looks(categories: list[str],
                rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
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
                   categories: dict[str, tuple[str, int]]) -> list[Product]:
  """Products per category in proportion to the published counts, with Zipf popularity.

  Args:
    categories: label -> (category path, published product count).
  """
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


def products_by_style(products: list[Product]) -> dict[tuple[str, int], list[int]]:
  """Catalogue indices of each (category, style)."""
  by_key: dict[tuple[str, int], list[int]] = {}
  for i, p in enumerate(products):
    by_key.setdefault((p.category, p.style), []).append(i)
  return by_key


def popular_choice(pool: list[int], products: list[Product], rng: np.random.Generator) -> int:
  """One catalogue index of `pool`, drawn in proportion to popularity."""
  weights = np.array([products[i].popularity for i in pool])
  return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]


def render_all(tasks: Sequence[tuple[Callable[[Any], Any], Sequence]],
               workers: int | None = None) -> list[list]:
  """[fn(job) for job in jobs] of every (fn, jobs) task, in order: in this process with one
  worker, else in a pool of `workers` processes (default: the machine's cores)."""
  workers = workers or os.cpu_count() or 1
  if workers == 1:
    return [[fn(job) for job in jobs] for fn, jobs in tasks]
  # 'spawn': forking a process that has loaded JAX or TensorFlow threads can deadlock.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    return [list(pool.map(fn, jobs, chunksize=32)) for fn, jobs in tasks]
