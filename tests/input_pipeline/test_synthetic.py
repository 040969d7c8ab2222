"""The generator: exact STL format, deterministic, skewed categories and a planted rule that
colour similarity cannot read but the latent style explains."""

import filecmp
import json

import numpy as np
import tensorflow as tf
from PIL import Image

from ctl_jax import metrics
from input_pipeline import preprocess
from input_pipeline.readers import stl
from input_pipeline.scene import sampler as scene_sampler
from input_pipeline.tools import synthetic_stl, synthetic_world


def test_deterministic_by_seed(tmp_path):
  a = synthetic_stl.write_stl_dataset(tmp_path / "a", 30, seed=3, scene_size=(48, 64),
                                      product_size=32, workers=2)
  b = synthetic_stl.write_stl_dataset(tmp_path / "b", 30, seed=3, scene_size=(48, 64),
                                      product_size=32, workers=1)
  c = synthetic_stl.write_stl_dataset(tmp_path / "c", 30, seed=4, scene_size=(48, 64),
                                      product_size=32, workers=1)
  assert a == b and a != c
  for name in ("fashion.json", "fashion-cat.json"):
    assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
  images = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
  assert images == sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
  assert all(filecmp.cmp(tmp_path / "a" / "images" / n, tmp_path / "b" / "images" / n,
                         shallow=False) for n in images)


def test_format_and_realistic_statistics(stl_root):
  rows = [json.loads(line) for line in open(stl_root / "fashion.json")]
  assert all(set(r) == {"product", "scene", "bbox"} and len(r["scene"]) == 32 for r in rows)
  data = stl.read_stl(stl_root)
  counts = np.bincount(data.pair_category)
  assert len(data.categories) >= 8
  assert counts.max() > 4 * counts.min()  # skewed like STL
  # STL-Fashion: 1.51 pairs per scene, 1.89 per product, most products in one or two pairs.
  assert 1.35 < np.bincount(data.pair_scene).mean() < 1.7
  per_product = np.bincount(data.pair_product)
  assert 1.5 < per_product.mean() < 2.3
  assert np.mean(per_product <= 2) > 0.7
  cats = json.load(open(stl_root / "fashion-cat.json"))
  assert all(v.startswith("Apparel & Accessories|") for v in cats.values())
  # The latent styles are beside the folder, never in it.
  assert synthetic_world.latents_path(stl_root).exists()
  assert not list(stl_root.glob("*latents*"))
  assert "product_style" not in json.load(open(stl_root / "generator.json"))


def test_reuse_sets_how_often_products_recur(tmp_path):
  small = dict(scene_size=(24, 32), product_size=16, workers=1)
  once = synthetic_stl.write_stl_dataset(tmp_path / "once", 300, seed=2, reuse=1.0, **small)
  assert once["products"] == once["pairs"]  # every product in exactly one pair
  data = stl.read_stl(tmp_path / "once")
  assert np.bincount(data.pair_product).max() == 1
  often = synthetic_stl.write_stl_dataset(tmp_path / "often", 300, seed=2, reuse=4.0, **small)
  assert 2.2 < often["pairs_per_product"] < 5.0  # the first of each (category, style) is new
  per_product = np.bincount(stl.read_stl(tmp_path / "often").pair_product)
  assert per_product.max() > 3 * per_product.mean()  # the rich get richer: a popular few


def _mean_colour(path, crop=None):
  image = np.asarray(Image.open(path).convert("RGB"), np.float32)
  if crop is not None:
    y, x, h, w = preprocess.crop_window(tf.constant(crop), *image.shape[:2]).numpy()
    image = image[y:y + h, x:x + w]
  # Colour of the non-background pixels: far from the light catalogue backdrop.
  mask = image.min(-1) < 215 if crop is None else np.ones(image.shape[:2], bool)
  return image[mask].mean(0) / 255.0


def test_colour_similarity_is_near_chance_while_the_latent_style_ranks_well(stl_root):
  """The planted rule: a product's colour does not follow the scene's colours."""
  data = stl.read_stl(stl_root)
  truth = json.loads(synthetic_world.latents_path(stl_root).read_text())
  crops, _ = scene_sampler.complement_crops(data.pair_box)
  rng = np.random.default_rng(0)
  product_colour = np.stack([_mean_colour(data.image_paths[p]) for p in data.products])
  product_style = np.array([truth["product_style"][p] for p in data.products])
  d_colour_pos, d_colour_neg, d_style_pos, d_style_neg = [], [], [], []
  for i in rng.permutation(len(data))[:300]:
    pos = data.pair_product[i]
    pool = np.flatnonzero(data.product_category == data.product_category[pos])
    neg = rng.choice(pool[pool != pos], 10)
    scene_colour = _mean_colour(data.image_paths[data.scenes[data.pair_scene[i]]], crops[i])
    dist = lambda p: np.sum((product_colour[p] - scene_colour) ** 2, -1)  # noqa: B023 (used here)
    d_colour_pos.append(dist(pos))
    d_colour_neg.append(dist(neg))
    style = truth["scene_style"][data.scenes[data.pair_scene[i]]]
    d_style_pos.append(float(product_style[pos] != style))
    d_style_neg.append((product_style[neg] != style).astype(float))
  colour_auc = metrics.auc(np.array(d_colour_pos), np.array(d_colour_neg))
  style_auc = metrics.auc(np.array(d_style_pos), np.array(d_style_neg))
  assert 0.4 < colour_auc < 0.6, colour_auc
  assert style_auc > 0.9, style_auc
