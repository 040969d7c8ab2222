"""The visual report of a recommendation: a static HTML page and a PNG contact sheet.

  <out>/index.html          the query image, one attention overlay per category, the products
  <out>/contact_sheet.png   the same in one picture
  <out>/images/...          the thumbnails the page links to (relative paths: the folder can be
                            moved or served as is)
"""

from __future__ import annotations

import html
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from ctl_jax.serving.errors import ServingError
from input_pipeline import storage

THUMB = 160  # pixels, the longer side of every tile


def heat_colours(m: np.ndarray) -> np.ndarray:
  """[h, w] in [0, 1] -> [h, w, 3] uint8, dark blue (low) through red to yellow (high)."""
  m = np.clip(m, 0.0, 1.0)[..., None]
  stops = np.array([[20, 20, 120], [220, 40, 40], [255, 230, 60]], np.float32)
  low = stops[0] + (stops[1] - stops[0]) * np.minimum(m * 2, 1)
  return np.where(m < 0.5, low, stops[1] + (stops[2] - stops[1]) * (m * 2 - 1)).astype(np.uint8)


def attention_overlay(image: Image.Image, attention: np.ndarray,
                      alpha: float = 0.55) -> Image.Image:
  """The attention grid [h, w] (the model saw the image resized to a square, so the grid spans
  the whole image) upsampled onto `image`, from its minimum (dark) to its maximum (bright)."""
  a = np.asarray(attention, np.float32)
  a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
  heat = Image.fromarray(heat_colours(a)).resize(image.size, Image.BILINEAR)
  return Image.blend(image.convert("RGB"), heat, alpha)


def thumbnail(image: Image.Image) -> Image.Image:
  image = image.convert("RGB").copy()
  image.thumbnail((THUMB, THUMB))
  return image


def open_image(path: str) -> Image.Image:
  """The image at `path`, decoded; ValueError naming the file when it cannot be read."""
  try:
    with storage.open_file(path, "rb") as f, Image.open(f) as im:
      return im.convert("RGB")
  except (OSError, ValueError) as e:
    raise ServingError(f"cannot read image {path}: {e}") from None


def contact_sheet(header: list[tuple[Image.Image, str]], products: list[tuple[Image.Image, str]],
                  columns: int = 5) -> Image.Image:
  """One row of query tiles (image, overlays), then the products in a grid; captions below."""
  cell, caption = THUMB + 8, 28
  columns = max(columns, len(header))
  rows = 1 + -(-len(products) // columns)
  sheet = Image.new("RGB", (columns * cell, rows * (cell + caption)), "white")
  draw = ImageDraw.Draw(sheet)
  tiles = [(i, t) for i, t in enumerate(header)]
  tiles += [(columns + i, t) for i, t in enumerate(products)]
  for slot, (im, text) in tiles:
    x, y = (slot % columns) * cell, (slot // columns) * (cell + caption)
    im = thumbnail(im)
    sheet.paste(im, (x + (cell - im.width) // 2, y + (cell - im.height) // 2))
    for j, line in enumerate(text.split("\n")[:2]):
      draw.text((x + 4, y + cell + j * 12), line[:26], fill="black")
  return sheet


def write(out: str | os.PathLike, title: str, query: Image.Image,
          overlays: dict[str, Image.Image], rows: list[dict]) -> dict[str, str]:
  """Writes index.html, contact_sheet.png and the thumbnails; returns their paths.

  Args:
    rows: ranked products, dicts with `rank`, `category`, `distance`, `signature`, `image`.
  """
  dest = out
  with storage.local_folder(out) as local:  # a remote `out` gets the files at the end
    out = pathlib.Path(local)
    (out / "images").mkdir(parents=True, exist_ok=True)
    header = [(query, "query")] + [(im, f"attention: {c}") for c, im in overlays.items()]
    tiles, cards = [], []
    head_files = []
    for i, (im, text) in enumerate(header):
      name = f"images/query_{i}.png"
      big = im.copy()
      big.thumbnail((3 * THUMB, 3 * THUMB))
      big.save(out / name)
      head_files.append((name, text))
    for r in rows:
      im = open_image(r["image"]) if r["image"] else Image.new("RGB", (THUMB, THUMB), "grey")
      name = f"images/{r['rank']:03d}_{r['signature']}.jpg"
      thumbnail(im).save(out / name, quality=90)
      tiles.append((im, f"#{r['rank']} {r['category']}\nd={r['distance']:.4f}"))
      cards.append((name, r))
    sheet = out / "contact_sheet.png"
    contact_sheet(header, tiles).save(sheet)
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px;"
             "vertical-align:top}img{max-height:240px}</style>",
             f"<h1>{esc(title)}</h1><div>"]
    parts += [f"<figure><img src='{esc(n)}'><figcaption>{esc(t)}</figcaption></figure>"
              for n, t in head_files]
    parts.append("</div><h2>Recommended products</h2><div>")
    parts += [f"<figure><img src='{esc(n)}'><figcaption>#{r['rank']} {esc(r['category'])}<br>"
              f"d = {r['distance']:.4f}<br><small>{esc(r['signature'])}</small></figcaption>"
              "</figure>" for n, r in cards]
    parts.append("</div><p><a href='contact_sheet.png'>contact sheet</a></p>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
  return {"html": storage.join(dest, "index.html"),
          "contact_sheet": storage.join(dest, "contact_sheet.png")}
