"""Drawing of fashion items for the synthetic data: silhouettes, textures and scene slots.

Every item is a silhouette (a mask drawn in a unit box) filled with a texture (a base colour and a
pattern). The same drawing serves the catalogue photo of a product and its appearance in a scene,
so a product looks alike in both, as a real product does in a real scene photo.
"""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
from PIL import Image, ImageDraw

# Silhouettes as lists of primitives in a unit box: ("poly", [(x, y), ...]) or
# ("ellipse", (x0, y0, x1, y1)) or ("ring", (x0, y0, x1, y1, width)).
_SHOE = [(0.0, 0.45), (0.22, 0.42), (0.44, 0.72), (0.46, 1.0), (0.0, 1.0)]
SILHOUETTES: dict[str, list] = {
    "Shirts & Tops": [("poly", [(0, .18), (.3, 0), (.7, 0), (1, .18), (.88, .42), (.76, .32),
                                (.76, 1), (.24, 1), (.24, .32), (.12, .42)])],
    "Coats & Jackets": [("poly", [(.2, 0), (.8, 0), (1, .2), (1, .92), (.84, .92), (.84, 1),
                                  (.16, 1), (.16, .92), (0, .92), (0, .2)])],
    "Dresses": [("poly", [(.32, 0), (.68, 0), (.74, .34), (1, 1), (0, 1), (.26, .34)])],
    "Pants": [("poly", [(.08, 0), (.92, 0), (1, 1), (.6, 1), (.5, .28), (.4, 1), (0, 1)])],
    "Shorts": [("poly", [(.04, 0), (.96, 0), (1, 1), (.56, 1), (.5, .45), (.44, 1), (0, 1)])],
    "Skirts": [("poly", [(.24, 0), (.76, 0), (1, 1), (0, 1)])],
    "Shoes": [("poly", _SHOE), ("poly", [(1 - x, y) for x, y in _SHOE])],
    "Handbags": [("ring", (.22, 0, .78, .6, .09)),
                 ("poly", [(0, .35), (1, .35), (.94, 1), (.06, 1)])],
    "Sunglasses": [("ellipse", (0, .1, .44, .9)), ("ellipse", (.56, .1, 1, .9)),
                   ("poly", [(.4, .35), (.6, .35), (.6, .5), (.4, .5)])],
    "Hats": [("ellipse", (0, .62, 1, 1)),
             ("poly", [(.22, .05), (.78, .05), (.82, .82), (.18, .82)])],
    "Earrings": [("ellipse", (0, .25, .3, 1)), ("ellipse", (.7, .25, 1, 1)),
                 ("poly", [(.12, 0), (.18, 0), (.18, .3), (.12, .3)]),
                 ("poly", [(.82, 0), (.88, 0), (.88, .3), (.82, .3)])],
    "Necklaces": [("ring", (0, -.9, 1, .8, .16)), ("ellipse", (.38, .62, .62, 1))],
    "Jewelry": [("ring", (0, 0, 1, 1, .22))],
    "Watches": [("poly", [(.3, 0), (.7, 0), (.7, 1), (.3, 1)]), ("ellipse", (.1, .25, .9, .75))],
    "Scarves & Shawls": [("poly", [(0, 0), (1, 0), (1, .3), (.75, .3), (.8, 1), (.55, 1),
                                   (.5, .3), (0, .3)])],
}

# Where each category sits on a standing figure, as (left, top, right, bottom) in [0, 1] of a
# portrait scene. Layering order: later slots are drawn over earlier ones.
SCENE_SLOTS: dict[str, tuple[float, float, float, float]] = {
    "Pants": (.33, .47, .67, .9),
    "Shorts": (.33, .47, .67, .66),
    "Skirts": (.3, .47, .7, .72),
    "Shirts & Tops": (.25, .2, .75, .5),
    "Dresses": (.27, .2, .73, .74),
    "Coats & Jackets": (.22, .19, .78, .62),
    "Scarves & Shawls": (.37, .18, .63, .36),
    "Shoes": (.3, .9, .7, .995),
    "Hats": (.34, .005, .66, .1),
    "Sunglasses": (.41, .08, .59, .115),
    "Earrings": (.39, .11, .61, .16),
    "Necklaces": (.41, .185, .59, .27),
    "Watches": (.19, .44, .25, .49),
    "Jewelry": (.75, .44, .81, .48),
    "Handbags": (.7, .4, .96, .62),
}
LAYER_ORDER = list(SCENE_SLOTS)

# Eight hues, evenly spaced on the colour wheel (products jitter them by at most +-0.025).
PALETTE_HUES = tuple(i / 8 for i in range(8))
PATTERNS = ("solid", "stripes", "dots")


@dataclasses.dataclass(frozen=True)
class Look:
  """How one product is textured: hue index, pattern and the product's own jitter."""

  hue: int
  pattern: int
  hue_shift: float = 0.0
  value: float = 0.85
  saturation: float = 0.75
  pattern_scale: float = 1.0
  phase: float = 0.0


def look_colours(look: Look) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """Base and pattern colours (RGB 0-255) of a look."""
  hue = (PALETTE_HUES[look.hue] + look.hue_shift) % 1.0
  base = colorsys.hsv_to_rgb(hue, look.saturation, look.value)
  accent = colorsys.hsv_to_rgb(hue, look.saturation * 0.5, look.value * 0.35)
  to_255 = lambda c: tuple(int(round(255 * v)) for v in c)
  return to_255(base), to_255(accent)


def texture(look: Look, size: tuple[int, int]) -> Image.Image:
  """An RGB image of `size` (w, h) filled with the look's colour and pattern."""
  w, h = size
  base, accent = look_colours(look)
  img = Image.new("RGB", (w, h), base)
  pattern = PATTERNS[look.pattern]
  if pattern == "solid":
    return img
  draw = ImageDraw.Draw(img)
  period = max(4.0, 0.3 * min(w, h) * look.pattern_scale)
  offset = look.phase * period
  if pattern == "stripes":
    thick = max(1, int(period * 0.4))
    y = -period + offset
    while y < h:
      draw.rectangle([0, int(y), w, int(y) + thick], fill=accent)
      y += period
  else:  # dots
    r = max(1.0, period * 0.22)
    y = offset
    row = 0
    while y < h + period:
      x = offset + (period / 2 if row % 2 else 0)
      while x < w + period:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=accent)
        x += period
      y += period
      row += 1
  return img


def silhouette_mask(category: str, size: tuple[int, int]) -> Image.Image:
  """An 'L' mask of `size` (w, h) with the category's silhouette drawn at 255."""
  w, h = size
  mask = Image.new("L", (w, h), 0)
  draw = ImageDraw.Draw(mask)
  sx, sy = w - 1, h - 1
  for kind, shape in SILHOUETTES[category]:
    if kind == "poly":
      draw.polygon([(x * sx, y * sy) for x, y in shape], fill=255)
    elif kind == "ellipse":
      x0, y0, x1, y1 = shape
      draw.ellipse([x0 * sx, y0 * sy, x1 * sx, y1 * sy], fill=255)
    else:  # ring
      x0, y0, x1, y1, width = shape
      draw.ellipse([x0 * sx, y0 * sy, x1 * sx, y1 * sy], outline=255,
                   width=max(1, int(width * min(w, h))))
  return mask


def draw_item(canvas: Image.Image, category: str, look: Look,
              box: tuple[int, int, int, int]) -> None:
  """Draws an item of `category` with `look` into the pixel box (x0, y0, x1, y1) of `canvas`."""
  x0, y0, x1, y1 = box
  size = (max(2, x1 - x0), max(2, y1 - y0))
  canvas.paste(texture(look, size), (x0, y0), silhouette_mask(category, size))


def render_product(category: str, look: Look, size: int, rng: np.random.Generator) -> Image.Image:
  """A catalogue photo: the item centred on a light, slightly tinted background."""
  tint = tuple(int(v) for v in rng.integers(225, 256, size=3))
  img = Image.new("RGB", (size, size), tint)
  fill = rng.uniform(0.62, 0.86)
  aspect = item_aspect(category)
  bw = size * fill * min(1.0, 1.0 / aspect) if aspect > 1 else size * fill
  bh = bw * aspect
  if bh > size * fill:
    bh = size * fill
    bw = bh / aspect
  cx = size / 2 + rng.uniform(-0.06, 0.06) * size
  cy = size / 2 + rng.uniform(-0.06, 0.06) * size
  box = (int(cx - bw / 2), int(cy - bh / 2), int(cx + bw / 2), int(cy + bh / 2))
  draw_item(img, category, look, box)
  return img


def item_aspect(category: str) -> float:
  """Height / width of the category's slot on a 3:4 portrait figure."""
  left, top, right, bottom = SCENE_SLOTS[category]
  return (bottom - top) * 4.0 / ((right - left) * 3.0)


def render_scene(items: list[tuple[str, Look]], width: int, height: int, rng: np.random.Generator
                 ) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
  """A street-style photo of one figure wearing `items`.

  Returns the image and, per item, its normalised (left, top, right, bottom) box.
  """
  # Walls and streets: muted colours, so that garments are the saturated things in the photo.
  grey = rng.uniform(70, 190)
  bg = tuple(int(v) for v in np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255))
  img = Image.new("RGB", (width, height), bg)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(2, 6))):  # background clutter: walls, windows, signs
    x0, y0 = rng.uniform(0, 1, 2) * (width, height)
    x1, y1 = x0 + rng.uniform(.1, .5) * width, y0 + rng.uniform(.05, .4) * height
    shade = tuple(int(v) for v in np.clip(np.array(bg) + rng.integers(-50, 50, 3), 0, 255))
    draw.rectangle([x0, y0, x1, y1], fill=shade)
  # The figure: a scale and an offset, then skin-coloured head, arms and legs.
  scale = rng.uniform(0.82, 1.0)
  dx = rng.uniform(-0.12, 0.12)
  dy = rng.uniform(0.0, 1.0 - scale)

  def place(box):
    left, top, right, bottom = box
    cx = 0.5 + (0.5 * (left + right) - 0.5) * scale + dx
    return (cx - 0.5 * (right - left) * scale, dy + top * scale,
            cx + 0.5 * (right - left) * scale, dy + bottom * scale)

  def to_px(box):
    left, top, right, bottom = box
    return (int(left * width), int(top * height), int(right * width), int(bottom * height))

  skin = tuple(int(v) for v in np.array((224, 172, 140)) * rng.uniform(0.55, 1.05))
  draw.ellipse(to_px(place((.41, .02, .59, .17))), fill=skin)
  draw.rectangle(to_px(place((.46, .15, .54, .22))), fill=skin)
  draw.rectangle(to_px(place((.2, .22, .27, .5))), fill=skin)
  draw.rectangle(to_px(place((.73, .22, .8, .5))), fill=skin)
  draw.rectangle(to_px(place((.36, .5, .48, .92))), fill=skin)
  draw.rectangle(to_px(place((.52, .5, .64, .92))), fill=skin)
  boxes = {}
  for category, look in sorted(items, key=lambda it: LAYER_ORDER.index(it[0])):
    left, top, right, bottom = SCENE_SLOTS[category]
    jx, jy = rng.uniform(-0.015, 0.015, 2)
    box = place((left + jx, top + jy, right + jx, bottom + jy))
    box = tuple(float(np.clip(v, 0.0, 1.0)) for v in box)
    draw_item(img, category, look, to_px(box))
    boxes[category] = box
  # Lighting: one global gain, as photos differ in exposure.
  gain = rng.uniform(0.85, 1.1)
  arr = np.clip(np.asarray(img, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
  return Image.fromarray(arr), [boxes[c] for c, _ in items]
