"""Serving API of a trained product-based model: what the product-query flow calls.

  predictor = restore_product_predictor(workdir, config)
  images = predictor.load_items(["collage.jpg"], [(x, y, w, h)])   # or any preprocessed batch
  predictor.predict_category(images)        # [[("Shoes", 0.93), ...]] per image
  predictor.embed(images)["style"]          # [B, D] unit style vectors: smaller distance = better
  predictor.complementary_categories("Shoes")   # [("Pants", 0.41), ...] learned from outfits

Complementary categories come from the co-occurrence of categories in the training outfits,
saved with every checkpoint, so serving does not need the training files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from ctl_jax.product import steps as product_steps
from ctl_jax.product.model import ProductModel
from ctl_jax.serving.restore import Restored, restore
from ctl_jax.trainer import inference, sharding
from input_pipeline import preprocess


def complementary_categories(category: str, categories: list[str], cooccurrence: np.ndarray,
                             category_outfits: np.ndarray, top_k: int | None = None,
                             min_outfits: int = 1) -> list[tuple[str, float]]:
  """Other categories ranked by P(an outfit holds one | it holds `category`) in training outfits.

  Args:
    cooccurrence: [C, C] outfits holding both categories (see product_data.category_cooccurrence).
    category_outfits: [C] outfits holding each category.
    min_outfits: leave out categories seen together in fewer outfits than this.
  """
  if category not in categories:
    raise KeyError(f"unknown category {category!r}; the model knows {categories}")
  c = categories.index(category)
  counts = np.asarray(cooccurrence)[c]
  total = max(int(np.asarray(category_outfits)[c]), 1)
  ranked = [(categories[j], counts[j] / total) for j in np.argsort(-counts, kind="stable")
            if j != c and counts[j] >= min_outfits]
  return ranked[:top_k] if top_k is not None else ranked


def style_encoder(model: ProductModel, variables: dict, image: jax.Array) -> dict[str, jax.Array]:
  """Items [B, S, S, 3] -> {'style': [B, D] style vectors, 'probs': [B, C] category
  probabilities, 'catalogue_row': [B, D + 1] rows [style, ||style||^2] (ranker.augment_catalogue)}:
  what `embed` returns, as one function of the variables (the `style` SavedModel)."""
  out = model.apply(variables, image, method="item_outputs")
  style = out["style"]
  return {"style": style, "probs": jax.nn.softmax(out["logits"], axis=-1),
          "catalogue_row": jnp.concatenate([style, jnp.sum(jnp.square(style), -1, keepdims=True)],
                                           axis=1)}


class ProductPredictor:
  """A restored product model with its categories and their co-occurrence statistics."""

  def __init__(self, restored: Restored):
    self.config, self.model, self.state = restored.config, restored.model, restored.state
    self.mesh, self.step, self.categories = restored.mesh, restored.step, restored.categories
    self.cooccurrence = np.asarray(restored.meta["cooccurrence"], np.int64)
    self.category_outfits = np.asarray(restored.meta["category_outfits"], np.int64)
    self._apply = inference.ShardedApply(product_steps.item_step, self.model, self.mesh,
                                         sharding.shardings_of(self.state))

  def load_items(self, paths: list[str],
                 boxes: Sequence[Sequence[float]] | np.ndarray | None = None) -> np.ndarray:
    """[B, S, S, 3] model inputs: each image cropped to its CTL (x, y, w, h) box (whole image
    when `boxes` is None), resized and normalised as in training."""
    c = self.config.input
    out = []
    for i, path in enumerate(paths):
      crop = preprocess.FULL_IMAGE
      if boxes is not None:
        x, y, w, h = boxes[i]
        crop = tuple(np.clip([x, y, x + w, y + h], 0.0, 1.0))
      out.append(preprocess.load_image(tf.constant(path), tf.constant(crop, tf.float32),
                                       c.image_size, c.normalization).numpy())
    return np.stack(out)

  def embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """{'style': [B, D] unit vectors, 'probs': [B, C] category probabilities} of model inputs."""
    out = self._apply.rows(self.state, {"image": np.asarray(images, np.float32)})
    return {"style": out["style"], "probs": np.asarray(jax.nn.softmax(out["logits"], axis=-1))}

  def predict_category(self, images: np.ndarray, top_k: int = 1) -> list[list[tuple[str, float]]]:
    """Per image, the `top_k` most likely categories with their probabilities."""
    probs = self.embed(images)["probs"]
    return [[(self.categories[j], float(p[j])) for j in np.argsort(-p)[:top_k]] for p in probs]

  def complementary_categories(self, category: str, top_k: int | None = None,
                               min_outfits: int = 1) -> list[tuple[str, float]]:
    """Categories that complete `category`, most frequent in its training outfits first."""
    return complementary_categories(category, self.categories, self.cooccurrence,
                                    self.category_outfits, top_k, min_outfits)


def restore_product_predictor(workdir: str | os.PathLike,
                              config: ml_collections.ConfigDict | None = None) -> ProductPredictor:
  """The latest product-task checkpoint of `workdir` (config from the checkpoint unless given)."""
  return ProductPredictor(restore(workdir, config, task="product"))
