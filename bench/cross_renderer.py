"""An independent synthetic renderer of Shop The Look (STL) and Complete The Look (CTL) data,
with a style rule of its own.

  python -m bench.cross_renderer --out DIR --outfits N --seed S [--format stl|ctl|both]
      [--workers W] [--ctl_raw PATH]

Why: the project's generator (`input_pipeline/tools/`) and the demo recipe were tuned together, so
a recipe that scores well on it may have learnt that generator's quirks rather than "what goes
with a scene". This module shares none of its drawing, layout or style code: other drawing,
real CTL layouts and another colour rule, to check that the recipe learns a style rule it was
never tuned on. Only the file conventions are shared (the published CTL triplet and FITB sampling
of `synthetic_ctl`, the latents file of `synthetic_world`).

What it renders:
- Outfits: `--outfits N` real outfits of the published CTL raw test file (5 items with their
  labels and boxes each), a seeded choice without replacement. Each outfit is one scene, a 256x256
  flat-lay collage: one light grey background with faint noise (no tint per outfit, which would
  tell the product task's crops of one outfit apart), and each item drawn with simple
  label-specific primitives into its real box (largest first, so small items stay visible). Each
  item is a product of its own, in exactly this one pair (N outfits: N scenes, 5N products and
  pairs), with a 128x128 product photo: the same item alone, centred with a random small scale and
  offset, on a plain light background.
- The style rule (complementary colours): each outfit has a latent base hue h ~ U[0, 1). The 13
  labels are split per seed into two groups A and B; an item of group A has hue h + jitter, one of
  group B the complementary hue h + 0.5 + jitter (jitter ~ U[-0.03, 0.03]). Saturation and value
  (each U[0.45, 0.95]), the pattern (solid, horizontal or diagonal stripes, checks, a vertical
  gradient, its second colour a darker or lighter shade of the same hue) and small shape variations
  are drawn per product and carry no style.
- Files, `--format stl` (the default), in the public STL format that `input_pipeline/readers/stl.py`
  reads: `fashion.json`, `fashion-cat.json`, `images/<sig>.jpg` (JPEG quality 90) and a summary
  `generator.json`; beside the folder, `<out>.latents.json` with the discrete style int(h * 12) of
  every scene and product (`product_style`, `scene_style`, which the oracle reads) and each
  scene's hue h (`scene_hue`).
- `--format ctl`, in the public CTL format that `input_pipeline/readers/ctl.py` reads (the product
  task's): the outfit collage is the scene above (same signature, same file `images/<sig>.jpg`;
  no product photos are drawn), its rows the 5 items with their boxes (x, y, w, h) = (left, top,
  right - left, bottom - top) and labels. Outfits are split by `is_test_signature(sig, 0.2)` into
  `raw_train.tsv` and `raw_test.tsv`; `triplet_{train,test}.tsv` hold, for every ordered pair of an
  outfit's items of different labels, a negative of the positive's label from another outfit of
  the split; `fitb_eval.json` one question per test outfit (one item hidden among 3 items of its
  label from other test outfits, the correct answer first); `ctl_generator.json` a summary. Into
  `<out>.latents.json` (merged with the keys already there): `item_style` (item key -> style, the
  oracle's table) and `item_product` (item key -> product signature).
- `--format both`: both sets side by side in `<out>` (their file names differ; they share
  `images/`, each scene drawn once).

Every image is drawn from its own generator seeded by (seed, kind, index), so the output does not
depend on `--workers`; the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import colorsys
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from input_pipeline.readers import ctl
from input_pipeline.splits import is_test_signature
from input_pipeline.tools.synthetic_ctl import CTL_HEADER, fitb_questions, sample_triplets
from input_pipeline.tools.synthetic_world import add_latents, latents_path

# The published CTL raw test file, a copy of which the test suite keeps.
DEFAULT_CTL_RAW = str(Path(__file__).resolve().parents[1] / "tests" / "input_pipeline" / "data"
                      / "ctl-raw_test.tsv")
LABELS = ("Coats & Jackets", "Dresses", "Handbags", "Hats", "Jewelry", "Pants", "Scarves & Shawls",
          "Shirts & Tops", "Shoes", "Shorts", "Skirts", "Sunglasses", "Watches")
PATTERNS = ("solid", "hstripes", "dstripes", "checks", "gradient")
SCENE_SIZE = 256
PRODUCT_SIZE = 128
STYLE_BINS = 12
HUE_JITTER = 0.03
ITEMS_PER_OUTFIT = 5
SUPERSAMPLE = 3  # masks are drawn this much larger, then reduced (antialiased edges)
FORMATS = ("stl", "ctl", "both")
CTL_TEST_FRACTION = 0.2
# The published raw file's header: runs of spaces (its rows are tab-separated).


@dataclasses.dataclass(frozen=True)
class Item:
  """One product: what it looks like wherever it is drawn."""

  signature: str
  label: str
  box: tuple[float, float, float, float]  # (left, top, right, bottom) in the scene, in [0, 1]
  hue: float
  saturation: float
  value: float
  pattern: str
  shade: float  # value of the pattern's second colour
  frequency: int  # stripes or checks across the item
  direction: int  # +1 or -1: slant of diagonal stripes
  variant: float  # in [0, 1]: small shape variation (sleeve length, flare, ...)


@dataclasses.dataclass(frozen=True)
class Outfit:
  index: int
  signature: str
  hue: float
  items: tuple[Item, ...]

  @property
  def style(self) -> int:
    return min(int(self.hue * STYLE_BINS), STYLE_BINS - 1)


def signature(seed: int, kind: str, index: int) -> str:
  return hashlib.md5(f"cross/{seed}/{kind}/{index}".encode()).hexdigest()


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(kind.encode()), index])


def read_outfits(path: str | os.PathLike) -> list[list[tuple[str, tuple[float, ...]]]]:
  """The outfits of a CTL raw file, in file order: each a list of (label, (left, top, right,
  bottom)) with the box clipped to [0, 1]."""
  outfits: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
  with open(path, encoding="utf-8") as f:
    next(f)  # header (space-separated)
    for line in f:
      if not line.strip():
        continue
      sig, x, y, w, h, label = line.rstrip("\n").split("\t")
      if label not in LABELS:
        raise ValueError(f"{path}: unknown label {label!r}")
      x, y, w, h = float(x), float(y), float(w), float(h)
      box = tuple(float(np.clip(v, 0.0, 1.0)) for v in (x, y, x + w, y + h))
      outfits.setdefault(sig, []).append((label, box))
  return list(outfits.values())


def label_groups(seed: int) -> tuple[list[str], list[str]]:
  """The per-world split of the labels: (group A, group B), A about half."""
  rng = _rng(seed, "world", 0)
  order = [LABELS[i] for i in rng.permutation(len(LABELS))]
  size = int(rng.integers(len(LABELS) // 2, len(LABELS) // 2 + 2))
  return sorted(order[:size]), sorted(order[size:])


def _valid_box(box: tuple[float, ...]) -> tuple[float, float, float, float]:
  """The box rounded for the pair file, at least ~1 scene pixel wide and high, inside [0, 1]."""
  left, top, right, bottom = (round(v, 6) for v in box)
  least = 1.0 / SCENE_SIZE
  if right - left < least:
    left = min(left, 1.0 - least)
    right = round(left + least, 6)
  if bottom - top < least:
    top = min(top, 1.0 - least)
    bottom = round(top + least, 6)
  return left, top, right, bottom


def make_outfits(num_outfits: int, seed: int, ctl_raw: str | os.PathLike) -> list[Outfit]:
  """The latent description of every outfit (cheap; the images are drawn from it)."""
  real = read_outfits(ctl_raw)
  if num_outfits > len(real):
    raise ValueError(f"{ctl_raw} has {len(real)} outfits; asked for {num_outfits}")
  group_a, _ = label_groups(seed)
  chosen = _rng(seed, "choice", 0).permutation(len(real))[:num_outfits]
  outfits = []
  for i, real_index in enumerate(chosen):
    rng = _rng(seed, "outfit", i)
    hue = float(rng.random())
    items = []
    for k, (label, box) in enumerate(real[real_index]):
      base = hue if label in group_a else hue + 0.5
      value = float(rng.uniform(0.45, 0.95))
      darker = value >= 0.7 or (value >= 0.55 and rng.random() < 0.5)
      items.append(Item(
        signature=signature(seed, "product", ITEMS_PER_OUTFIT * i + k), label=label,
        box=_valid_box(box), hue=float((base + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0),
        saturation=float(rng.uniform(0.45, 0.95)), value=value,
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        shade=float(value - rng.uniform(0.25, 0.4) if darker else min(1.0, value + 0.3)),
        frequency=int(rng.integers(3, 8)), direction=int(rng.choice([-1, 1])),
        variant=float(rng.random())))
    outfits.append(Outfit(i, signature(seed, "scene", i), hue, tuple(items)))
  return outfits


# ----------------------------------------------------------------------------------------------
# Drawing: a label-specific shape mask, filled with the item's pattern.

def _shape(draw: ImageDraw.ImageDraw, label: str, w: int, h: int, v: float) -> None:
  """Draws the item's silhouette (255) on a w x h mask; `v` in [0, 1] varies it a little."""
  P = lambda x, y: (x * w, y * h)  # unit coordinates -> mask pixels
  poly = lambda pts, fill=255: draw.polygon([P(x, y) for x, y in pts], fill=fill)
  oval = lambda x0, y0, x1, y1, fill=255: draw.ellipse([P(x0, y0), P(x1, y1)], fill=fill)
  line_w = max(1, int(min(w, h) * 0.07))
  if label == "Shirts & Tops":
    sleeve = 0.3 + 0.2 * v
    poly([(0.25, 0.08), (0.75, 0.08), (0.8, 0.95), (0.2, 0.95)])
    poly([(0.25, 0.08), (0.02, 0.08 + sleeve), (0.14, 0.14 + sleeve), (0.3, 0.35)])
    poly([(0.75, 0.08), (0.98, 0.08 + sleeve), (0.86, 0.14 + sleeve), (0.7, 0.35)])
    oval(0.38, -0.04, 0.62, 0.18, fill=0)
  elif label == "Coats & Jackets":
    poly([(0.22, 0.04), (0.78, 0.04), (0.84, 0.98), (0.16, 0.98)])
    poly([(0.22, 0.04), (0.0, 0.85), (0.12, 0.88), (0.3, 0.3)])
    poly([(0.78, 0.04), (1.0, 0.85), (0.88, 0.88), (0.7, 0.3)])
    poly([(0.4, 0.04), (0.5, 0.35), (0.6, 0.04)], fill=0)
    draw.line([P(0.5, 0.35), P(0.5, 0.98)], fill=0, width=max(1, line_w // 2))
  elif label == "Dresses":
    flare = 0.02 + 0.12 * v
    poly([(0.36, 0.02), (0.64, 0.02), (0.62, 0.38), (0.38, 0.38)])
    poly([(0.38, 0.36), (0.62, 0.36), (0.9 + flare, 0.98), (0.1 - flare, 0.98)])
  elif label == "Pants":
    poly([(0.15, 0.02), (0.85, 0.02), (0.85, 0.12), (0.15, 0.12)])
    poly([(0.15, 0.1), (0.52, 0.1), (0.47, 0.99), (0.1 + 0.08 * v, 0.99)])
    poly([(0.48, 0.1), (0.85, 0.1), (0.9 - 0.08 * v, 0.99), (0.53, 0.99)])
  elif label == "Shorts":
    poly([(0.1, 0.05), (0.9, 0.05), (0.9, 0.22), (0.1, 0.22)])
    poly([(0.1, 0.2), (0.52, 0.2), (0.47, 0.75 + 0.2 * v), (0.02, 0.7 + 0.2 * v)])
    poly([(0.48, 0.2), (0.9, 0.2), (0.98, 0.7 + 0.2 * v), (0.53, 0.75 + 0.2 * v)])
  elif label == "Skirts":
    poly([(0.3, 0.04), (0.7, 0.04), (0.92 + 0.06 * v, 0.96), (0.08 - 0.06 * v, 0.96)])
  elif label == "Shoes":
    oval(0.04, 0.2, 0.46, 0.95)
    oval(0.54, 0.05, 0.96, 0.8)
    oval(0.14, 0.3, 0.36, 0.55, fill=0)
    oval(0.64, 0.15, 0.86, 0.4, fill=0)
  elif label == "Handbags":
    draw.rounded_rectangle([P(0.05, 0.38), P(0.95, 0.97)], radius=int(min(w, h) * 0.1), fill=255)
    draw.arc([P(0.25, 0.04 + 0.1 * v), P(0.75, 0.72)], 180, 360, fill=255, width=line_w)
  elif label == "Jewelry":
    n = 7 + int(5 * v)
    angles = np.linspace(0.15 * np.pi, 0.85 * np.pi, n)
    for a in angles:  # a necklace of beads hanging as an arc
      cx, cy, r = 0.5 + 0.42 * np.cos(a), 0.1 + 0.75 * np.sin(a), 0.07
      oval(cx - r, cy - r, cx + r, cy + r)
    oval(0.38, 0.75, 0.62, 0.99)
  elif label == "Hats":
    oval(0.02, 0.5, 0.98, 0.9)
    draw.chord([P(0.22, 0.05), P(0.78, 1.15)], 180, 360, fill=255)
  elif label == "Sunglasses":
    oval(0.04, 0.25, 0.44, 0.85)
    oval(0.56, 0.25, 0.96, 0.85)
    draw.line([P(0.4, 0.4), P(0.6, 0.4)], fill=255, width=line_w)
  elif label == "Watches":
    poly([(0.35, 0.0), (0.65, 0.0), (0.65, 1.0), (0.35, 1.0)])
    oval(0.18, 0.28, 0.82, 0.72)
    oval(0.3, 0.37, 0.7, 0.63, fill=0)
    oval(0.46, 0.46, 0.54, 0.54)
  elif label == "Scarves & Shawls":
    band = 0.18 + 0.1 * v
    poly([(0.0, 0.0), (band, 0.0), (1.0, 1.0 - band), (1.0, 1.0), (1.0 - band, 1.0),
          (0.0, band)])
    oval(0.4, 0.4, 0.6, 0.6)  # a knot
  else:
    raise ValueError(f"no shape for {label!r}")


def _mask(label: str, w: int, h: int, variant: float) -> Image.Image:
  big = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
  # a small margin around the silhouette inside its box
  mw, mh = int(w * SUPERSAMPLE * 0.04), int(h * SUPERSAMPLE * 0.04)
  inner = Image.new("L", (max(1, big.width - 2 * mw), max(1, big.height - 2 * mh)), 0)
  _shape(ImageDraw.Draw(inner), label, inner.width, inner.height, variant)
  big.paste(inner, (mw, mh))
  return big.resize((w, h), Image.BILINEAR)


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, float(np.clip(value, 0, 1)))) * 255


def _fill(item: Item, w: int, h: int) -> np.ndarray:
  """[h, w, 3] float: the item's pattern over its box (relative coordinates, so it looks the same
  at any size)."""
  u = (np.arange(w)[None, :] + 0.5) / w
  t = (np.arange(h)[:, None] + 0.5) / h
  main = _rgb(item.hue, item.saturation, item.value)
  second = _rgb(item.hue, item.saturation, item.shade)
  k = item.frequency
  if item.pattern == "solid":
    weight = np.zeros((h, w))
  elif item.pattern == "hstripes":
    weight = np.broadcast_to(np.floor(t * 2 * k) % 2, (h, w))
  elif item.pattern == "dstripes":
    weight = np.floor((u * item.direction + t) * k) % 2
  elif item.pattern == "checks":
    weight = (np.floor(u * k) + np.floor(t * k)) % 2
  elif item.pattern == "gradient":
    weight = np.broadcast_to(t, (h, w))
  else:
    raise ValueError(item.pattern)
  weight = np.asarray(weight, np.float64)[..., None]
  return main * (1 - weight) + second * weight


def _paste_item(canvas: np.ndarray, item: Item, left: int, top: int, w: int, h: int) -> None:
  """Draws `item` into canvas[top:top+h, left:left+w] (clipped to the canvas)."""
  w, h = max(1, w), max(1, h)
  alpha = np.asarray(_mask(item.label, w, h, item.variant), np.float64)[..., None] / 255
  fill = _fill(item, w, h)
  y0, x0 = max(0, top), max(0, left)
  y1, x1 = min(canvas.shape[0], top + h), min(canvas.shape[1], left + w)
  if y1 <= y0 or x1 <= x0:
    return
  a = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
  f = fill[y0 - top:y1 - top, x0 - left:x1 - left]
  region = canvas[y0:y1, x0:x1]
  canvas[y0:y1, x0:x1] = region * (1 - a) + f * a


def _background(rng: np.random.Generator, size: int, noise: float,
                tinted: bool = True) -> np.ndarray:
  """A light background; `tinted`: of a random muted colour, else one light grey for all (an
  outfit collage, whose crops must not share a tint that tells their outfit apart)."""
  colour = (_rgb(rng.random(), rng.uniform(0.03, 0.15), rng.uniform(0.85, 0.97)) if tinted
            else np.array([238.0, 238.0, 238.0]))
  canvas = np.broadcast_to(colour, (size, size, 3)).astype(np.float64)
  if noise > 0:  # faint, smooth-ish grain
    coarse = rng.normal(0, noise, (size // 4, size // 4, 1))
    canvas = canvas + np.repeat(np.repeat(coarse, 4, 0), 4, 1) + rng.normal(0, noise / 2,
                                                                           (size, size, 1))
  return canvas


def render_scene(outfit: Outfit, seed: int) -> Image.Image:
  rng = _rng(seed, "scene", outfit.index)
  canvas = _background(rng, SCENE_SIZE, float(rng.uniform(1.0, 4.0)), tinted=False)
  area = lambda it: (it.box[2] - it.box[0]) * (it.box[3] - it.box[1])
  for item in sorted(outfit.items, key=area, reverse=True):
    left, top, right, bottom = (round(v * SCENE_SIZE) for v in item.box)
    _paste_item(canvas, item, left, top, right - left, bottom - top)
  return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))


def render_product(item: Item, seed: int, index: int) -> Image.Image:
  rng = _rng(seed, "product", index)
  canvas = _background(rng, PRODUCT_SIZE, 0.0)
  bw, bh = item.box[2] - item.box[0], item.box[3] - item.box[1]
  scale = rng.uniform(0.65, 0.88) * PRODUCT_SIZE / max(bw, bh)
  w, h = max(2, round(bw * scale)), max(2, round(bh * scale))
  dx, dy = rng.uniform(-0.06, 0.06, 2) * PRODUCT_SIZE
  left = round((PRODUCT_SIZE - w) / 2 + dx)
  top = round((PRODUCT_SIZE - h) / 2 + dy)
  _paste_item(canvas, item, left, top, w, h)
  return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))


def _render_outfit(args: tuple[Outfit, int, str, bool]) -> int:
  """Draws the outfit's scene and, when `products`, its product photos."""
  outfit, seed, images, products = args
  render_scene(outfit, seed).save(os.path.join(images, f"{outfit.signature}.jpg"), quality=90)
  if not products:
    return outfit.index
  for k, item in enumerate(outfit.items):
    image = render_product(item, seed, ITEMS_PER_OUTFIT * outfit.index + k)
    image.save(os.path.join(images, f"{item.signature}.jpg"), quality=90)
  return outfit.index


def _rule() -> str:
  return (f"complementary colours: outfit base hue h ~ U[0,1); group A labels get hue h, "
          f"group B labels hue h+0.5 (mod 1), each +-{HUE_JITTER} jitter; saturation and "
          f"value U[0.45,0.95], pattern and shape details per product carry no style; "
          f"style = int(h*{STYLE_BINS})")


def write_cross_dataset(out: str | os.PathLike, num_outfits: int, seed: int,
                        ctl_raw: str | os.PathLike = DEFAULT_CTL_RAW,
                        workers: int | None = None, fmt: str = "stl",
                        test_fraction: float = CTL_TEST_FRACTION) -> dict:
  """Renders `num_outfits` outfits into the folder `out` (latents beside it) in the format `fmt`
  ('stl', 'ctl' or 'both'); returns the summary also written to `out/generator.json` (STL) or
  `out/ctl_generator.json` (CTL), for 'both' {'stl': ..., 'ctl': ...}. `workers`: processes
  (None: all CPUs, 1: none). `test_fraction`: the CTL test share of the outfit signatures."""
  if fmt not in FORMATS:
    raise ValueError(f"format {fmt!r}; choose from {FORMATS}")
  out = Path(out)
  images = out / "images"
  images.mkdir(parents=True, exist_ok=True)
  outfits = make_outfits(num_outfits, seed, ctl_raw)
  workers = workers or os.cpu_count() or 1
  # One drawing pass for both formats: the STL scene is the CTL outfit collage.
  jobs = [(o, seed, str(images), fmt != "ctl") for o in outfits]
  if workers > 1 and len(jobs) > 1:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      list(pool.map(_render_outfit, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))))
  else:
    for job in jobs:
      _render_outfit(job)

  if fmt == "stl":
    return _write_stl(out, outfits, seed, ctl_raw)
  summaries, latents = {}, {}
  if fmt == "both":
    summaries["stl"] = _write_stl(out, outfits, seed, ctl_raw, write_latents=False)
    latents.update(_stl_latents(outfits))
  summaries["ctl"], ctl_latents = _write_ctl(out, outfits, seed, ctl_raw, test_fraction)
  latents.update(ctl_latents)
  add_latents(latents_path(out), latents)
  return summaries["ctl"] if fmt == "ctl" else summaries


def _stl_latents(outfits: list[Outfit]) -> dict:
  return {
    "product_style": {item.signature: o.style for o in outfits for item in o.items},
    "scene_style": {o.signature: o.style for o in outfits},
    "scene_hue": {o.signature: round(o.hue, 6) for o in outfits},
  }


def _write_stl(out: Path, outfits: list[Outfit], seed: int, ctl_raw: str | os.PathLike,
               write_latents: bool = True) -> dict:
  """fashion.json, fashion-cat.json, generator.json (and, when `write_latents`, the latents file,
  replaced) of the rendered `outfits`; returns the summary."""
  with open(out / "fashion.json", "w") as f:
    for o in outfits:
      for item in o.items:
        f.write(json.dumps({"product": item.signature, "scene": o.signature,
                            "bbox": list(item.box)}) + "\n")
  with open(out / "fashion-cat.json", "w") as f:
    json.dump({item.signature: f"Apparel & Accessories|{item.label}"
               for o in outfits for item in o.items}, f)
  if write_latents:
    latents_path(out).write_text(json.dumps(_stl_latents(outfits)))
  group_a, group_b = label_groups(seed)
  summary = {
    "format": "stl", "renderer": "cross", "seed": seed, "outfits": len(outfits),
    "scenes": len(outfits), "products": ITEMS_PER_OUTFIT * len(outfits),
    "pairs": ITEMS_PER_OUTFIT * len(outfits), "ctl_raw": os.fspath(ctl_raw),
    "rule": _rule(),
    "group_a": group_a, "group_b": group_b, "style_bins": STYLE_BINS,
    "scene_size": SCENE_SIZE, "product_size": PRODUCT_SIZE,
  }
  (out / "generator.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


# ----------------------------------------------------------------------------------------------
# CTL: raw rows, triplets and FITB questions. A CTL item is (outfit signature, (x, y, w, h),
# label), its box the values as written (so that its key is the one the reader computes).

def _fmt(v: float) -> str:
  return f"{v:.8g}"


def _ctl_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
  """(x, y, w, h) of a (left, top, right, bottom) box, as read back from its text."""
  left, top, right, bottom = box
  return tuple(float(_fmt(v)) for v in (left, top, right - left, bottom - top))


def _item_fields(it: tuple) -> list[str]:
  return [it[0], *map(_fmt, it[1]), it[2]]


def _write_ctl(out: Path, outfits: list[Outfit], seed: int, ctl_raw: str | os.PathLike,
               test_fraction: float) -> tuple[dict, dict]:
  """raw_{train,test}.tsv, triplet_{train,test}.tsv, fitb_eval.json and ctl_generator.json of the
  rendered `outfits` (collages: their scenes); returns (summary, latents)."""
  split_items: dict[str, list[tuple]] = {"train": [], "test": []}
  item_style, item_product = {}, {}
  for o in outfits:
    split = "test" if is_test_signature(o.signature, test_fraction) else "train"
    for item in o.items:
      box = _ctl_box(item.box)
      split_items[split].append((o.signature, box, item.label))
      key = ctl.item_key(o.signature, box)
      item_style[key] = o.style
      item_product[key] = item.signature
  rng = _rng(seed, "ctl", 0)
  num_triplets = {}
  for split, items in split_items.items():
    with open(out / f"raw_{split}.tsv", "w") as f:
      f.write(CTL_HEADER + "\n")
      for it in items:
        f.write("\t".join(_item_fields(it)) + "\n")
    triplets = list(sample_triplets(items, rng))
    num_triplets[split] = len(triplets)
    with open(out / f"triplet_{split}.tsv", "w") as f:
      for triplet in triplets:
        f.write("\t".join(field for it in triplet for field in _item_fields(it)) + "\n")
  questions = fitb_questions(split_items["test"], rng)
  with open(out / "fitb_eval.json", "w") as f:
    json.dump(questions, f, indent=1)
  group_a, group_b = label_groups(seed)
  summary = {
    "format": "ctl", "renderer": "cross", "seed": seed, "outfits": len(outfits),
    "products": ITEMS_PER_OUTFIT * len(outfits),
    "outfits_per_split": {s: len({it[0] for it in v}) for s, v in split_items.items()},
    "items": {s: len(v) for s, v in split_items.items()},
    "items_per_outfit": {ITEMS_PER_OUTFIT: len(outfits)}, "items_per_product": 1.0,
    "triplets": num_triplets, "fitb_questions": len(questions), "test_fraction": test_fraction,
    "ctl_raw": os.fspath(ctl_raw), "rule": _rule(), "group_a": group_a, "group_b": group_b,
    "styles": STYLE_BINS, "style_bins": STYLE_BINS, "scene_size": SCENE_SIZE,
  }
  (out / "ctl_generator.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary, {"item_style": item_style, "item_product": item_product}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="dataset folder to write")
  parser.add_argument("--outfits", type=int, required=True, help="outfits (scenes) to render")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
  parser.add_argument("--ctl_raw", default=DEFAULT_CTL_RAW, help="the CTL raw test file (TSV)")
  parser.add_argument("--format", choices=FORMATS, default="stl",
                      help="STL files, CTL files, or both side by side (default: stl)")
  args = parser.parse_args()
  start = time.perf_counter()
  summary = write_cross_dataset(args.out, args.outfits, args.seed, args.ctl_raw, args.workers,
                                fmt=args.format)
  print(json.dumps(summary, indent=2))
  print(f"rendered {args.outfits} outfits ({args.format}) in {time.perf_counter() - start:.1f}s "
        f"into {args.out} (latents: {latents_path(args.out)})")


if __name__ == "__main__":
  main()
