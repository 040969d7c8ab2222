"""The world the data generators draw from: a catalogue of products with latent styles.

The world has a planted *complementary* rule. Every outfit has a latent style; every category
maps each style to a look (a hue and a pattern) through its own random permutation. So a
matching pair of shoes does not share the colours of the scene's top or trousers: colour or pixel
similarity between a scene and a product is near chance, while a model that learns "this top in
this pattern goes with those shoes" ranks compatible products first. Products of one category and
style differ by jitter (hue, value, pattern scale). How often a product recurs is a parameter
(`reuse`, see `Catalogue`): by default it follows STL-Fashion, where most products occur once or
twice, so remembering products does not pay and the popularity baseline is weak, as on real data.

The latent styles are written next to the data folder, not in it (`latents_path`): the trainer
never reads them as data, and the evaluation's oracle (which knows every outfit's style) reads
them to report the ceiling that every figure can be compared with.

Two writers render it in the public formats: `synthetic_stl` (scene photos and catalogue photos,
Shop The Look) and `synthetic_ctl` (outfit collages, Complete The Look). Everything is
deterministic by seed: each image has its own random stream seeded by (seed, kind, index), so the
images do not depend on the order or number of workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline.tools import shapes

NUM_STYLES = 8
# Shop The Look (STL-Fashion) as published: 72,198 (scene, product) pairs of 38,111 products in
# 47,739 scenes. Most products occur in one or two pairs, so a model cannot do well by
# remembering products: it has to learn what goes with what.
STL_PAIRS_PER_PRODUCT = 72_198 / 38_111  # 1.89
STL_PAIRS_PER_SCENE = 72_198 / 47_739  # 1.51


@dataclasses.dataclass(frozen=True)
class Product:
  signature: str
  category: str
  style: int
  look: shapes.Look


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


class Catalogue:
  """The products worn so far, grown one worn item at a time with a set amount of reuse.

  An item of (category, style) is an earlier product of that category and style with
  probability 1 - 1/reuse, chosen in proportion to how often it was worn before (the rich get
  richer: a long tail of rare products and a few popular ones, as in real catalogues), and a new
  product otherwise. So a product is worn `reuse` times on average: 1 makes every product
  unique, STL_PAIRS_PER_PRODUCT follows STL-Fashion.
  """

  def __init__(self, categories: list[str], seed: int, reuse: float):
    if reuse < 1.0:
      raise ValueError(f"reuse is the mean number of uses of a product, >= 1; got {reuse}")
    self._rng = np.random.default_rng([seed, 0])
    self._table = style_looks(categories, self._rng)
    self._seed = seed
    self._reuse_probability = 1.0 - 1.0 / reuse
    self.products: list[Product] = []
    self._uses: list[int] = []
    self._by_key: dict[tuple[str, int], list[int]] = {}

  def new_look(self, category: str, style: int) -> shapes.Look:
    """The look of a new product: the style's hue and pattern with the product's own jitter."""
    hue, pattern = self._table[category][style]
    rng = self._rng
    return shapes.Look(hue=hue, pattern=pattern, hue_shift=float(rng.uniform(-0.025, 0.025)),
                       value=float(rng.uniform(0.7, 0.95)),
                       saturation=float(rng.uniform(0.6, 0.9)),
                       pattern_scale=float(rng.uniform(0.7, 1.3)),
                       phase=float(rng.uniform(0, 1)))

  def wear(self, category: str, style: int) -> int:
    """The catalogue index of the product worn in one slot of (category, style)."""
    pool = self._by_key.setdefault((category, style), [])
    if pool and self._rng.random() < self._reuse_probability:
      uses = np.array([self._uses[i] for i in pool], np.float64)
      index = pool[int(self._rng.choice(len(pool), p=uses / uses.sum()))]
    else:
      index = len(self.products)
      self.products.append(Product(signature(self._seed, "product", index), category, style,
                                   self.new_look(category, style)))
      self._uses.append(0)
      pool.append(index)
    self._uses[index] += 1
    return index


def latents_path(out: str | os.PathLike) -> Path:
  """Where a generator writes the latent styles of the data folder `out`: `<out>.latents.json`
  beside it."""
  out = Path(out)
  return out.parent / f"{out.name}.latents.json"


def add_latents(path: Path, fields: dict) -> None:
  """Adds `fields` to the latents file at `path` (the other format's writer may have written
  it: `generate-data --format both` puts both into one file)."""
  latents = json.loads(path.read_text()) if path.exists() else {}
  latents.update(fields)
  path.write_text(json.dumps(latents))


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
