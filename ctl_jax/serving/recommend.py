"""`run.py recommend`: rank an exported catalogue for one scene (or product) photo and report it.

The ranking is engine.py's (a batch of one): see there for both papers' flows.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from ctl_jax.serving import catalogue as catalogue_lib
from ctl_jax.serving import engine, html_report
from ctl_jax.serving.engine import Item
from ctl_jax.serving.errors import ServingError
from input_pipeline import storage

if TYPE_CHECKING:  # annotations only: the predictor is imported when a command runs
  import ml_collections

  from ctl_jax.serving.scene_predictor import ScenePredictor


def scene_flow(predictor: ScenePredictor, cat: catalogue_lib.Catalogue, image_path: str,
               categories: list[str] | None, k: int, quota: int = 0,
               exact: bool = False) -> tuple[list[Item], dict[str, np.ndarray]]:
  """(ranked items, {category: attention [h, w]}) of one scene image (`exact`: bypass the
  export's ANN index)."""
  scene = engine.SceneEngine(predictor, cat, exact)
  names = scene.validate(categories, k, quota)
  result = scene.run([engine.Request(load_model_input(image_path, predictor.config), names, k,
                                     quota)])[0]
  return result.items, result.attention


def product_flow(config: ml_collections.ConfigDict | None, workdir: str,
                 cat: catalogue_lib.Catalogue, image_path: str, k: int,
                 categories: list[str] | None = None, max_categories: int = 4,
                 exact: bool = False) -> tuple[list[Item], str, dict[str, float]]:
  """(ranked items, predicted category, complementary categories with weights) of a product
  (`config` None: the checkpoint's). The query item itself is left out when it is in the
  catalogue (its file named by its signature)."""
  from ctl_jax.serving import product_predictor  # restores checkpoints: imported when needed
  html_report.open_image(image_path)  # a clear error before any model work
  # The checkpoint first: a scene model's workdir is named as such (use --scene), before its
  # export's kind is.
  product = engine.ProductEngine(product_predictor.restore_product_predictor(workdir, config),
                                 cat, exact, max_categories)
  names = product.validate(categories, k)
  result = product.run([engine.Request(load_model_input(image_path, product.config), names, k,
                                       name=image_path)])[0]
  if isinstance(result, ServingError):
    raise result
  return result.items, result.predicted, result.complementary


def load_model_input(path: str, config: ml_collections.ConfigDict) -> np.ndarray:
  """[S, S, 3] model input of an image file, preprocessed as in training."""
  import tensorflow as tf

  from input_pipeline import preprocess
  html_report.open_image(path)  # names the file when it is missing or not an image
  return preprocess.load_image(tf.constant(path), tf.constant(preprocess.FULL_IMAGE, tf.float32),
                               config.input.image_size, config.input.normalization).numpy()


def format_items(items: list[Item]) -> str:
  width = max([8] + [len(it.category) for it in items])
  lines = [f"{'rank':>4}  {'category':<{width}}  {'distance':>9}  signature"]
  lines += [f"{i:>4}  {it.category:<{width}}  {it.distance:>9.4f}  {it.signature}"
            for i, it in enumerate(items, 1)]
  return "\n".join(lines)


def write_report(out: str, title: str, image_path: str, items: list[Item],
                 attention: dict[str, np.ndarray]) -> dict[str, str]:
  query = html_report.open_image(image_path)
  overlays = {c: html_report.attention_overlay(query, a) for c, a in attention.items()}
  rows = [{"rank": i, **dataclasses.asdict(it)} for i, it in enumerate(items, 1)]
  return html_report.write(out, title, query, overlays, rows)


def recommend(workdir: str, *, scene: str | None = None, product: str | None = None,
              categories: list[str] | None = None, k: int = 10, quota: int = 0,
              embeddings: str | None = None, out: str | None = None,
              config: ml_collections.ConfigDict | None = None,
              predictor: ScenePredictor | None = None, exact: bool = False) -> dict:
  """The whole command: rank, print, write the report. Returns the items and report paths.

  Args:
    predictor: an already restored `ScenePredictor` of `workdir` (default: restore it).
    exact: rank exactly even when the export has an ANN index (ann.py).
  """
  if (scene is None) == (product is None):
    raise ServingError("pass exactly one of --scene IMG or --product IMG")
  html_report.open_image(scene or product)  # a clear error before any checkpoint is restored
  cat = catalogue_lib.Catalogue(embeddings or storage.join(workdir, "export"))
  out = out or storage.join(workdir, "recommend")
  from ctl_jax.serving import scene_predictor  # restores checkpoints: imported when a command runs
  if scene is not None:
    predictor = predictor or scene_predictor.restore_scene_predictor(workdir, config)
    items, attention = scene_flow(predictor, cat, scene, categories, k, quota, exact=exact)
    title, query = f"Complete the look: {os.path.basename(scene)}", scene
  else:
    items, predicted, weights = product_flow(config, workdir, cat, product, k, categories,
                                             exact=exact)
    print(f"predicted category: {predicted}; complementary: "
          + ", ".join(f"{c} ({w:.2f})" for c, w in weights.items()))
    title, query, attention = f"Complete the look for a {predicted}", product, {}
  index = cat.manifest.get("index")
  if index and not exact:
    print(f"ranked by the ANN index {index['spec']} ({index['params'] or 'exact flat'}); "
          "--exact ranks exactly")
  print(format_items(items))
  paths = write_report(out, title, query, items, attention)
  print(f"wrote {paths['html']} and {paths['contact_sheet']}")
  return {"items": items, **paths}
