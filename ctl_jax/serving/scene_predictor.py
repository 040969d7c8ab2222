"""A trained scene model restored for inference, and its encoders.

The encoders return what the ranker needs (see ranker.py); the SavedModels (savedmodel.py) are
these same functions:
  scene:   image [B, S, S, 3], category [B] -> augmented query [B, D + 1], constant [B],
           attention [B, h, w] over the region grid
  product: image [B, S, S, 3] -> embedding f_p [B, D] and catalogue row [f_p, ||f_p||^2]
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctl_jax.scene import distances
from ctl_jax.scene.model import SceneModel
from ctl_jax.serving import catalogue, ranker
from ctl_jax.serving.restore import Restored, restore


def scene_pair_parts(model: SceneModel, images: jax.Array, image_of: jax.Array,
                     category: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """f_s [N, D], f_i [N, R, D] and attention [N, h, w] of N (scene, category) pairs.

  Args:
    images: [B, S, S, 3] scenes; the backbone and the global and local heads run once on each.
    image_of: [N] the scene of each pair (an index into `images`).
    category: [N] the category of each pair (only the attention depends on it).
  """
  feats = model.features(images)
  f_s = model.heads.embed_global(feats["global"])
  f_i, fhat_i = model.heads.embed_regions(feats["regions"])
  weights = distances.attention_weights(fhat_i[image_of], model.heads.embed_category(category))
  return (f_s[image_of], f_i[image_of],
          weights.reshape(weights.shape[:1] + feats["regions"].shape[1:3]))


def scene_parts(model: SceneModel, image: jax.Array,
                category: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """f_s [C, D], f_i [C, R, D] and attention [C, h, w] of scenes [B, S, S, 3] and categories [C].

  B is C (one category per scene) or 1 (one scene against several categories).
  """
  c = category.shape[0]
  image_of = jnp.arange(c) if image.shape[0] == c else jnp.zeros(c, jnp.int32)
  return scene_pair_parts(model, image, image_of, category)


def scene_pairs_encoder(model: SceneModel, variables: Any, images: jax.Array, image_of: jax.Array,
                        category: jax.Array) -> dict[str, jax.Array]:
  """N (scene, category) pairs of B scenes (see `scene_pair_parts`) -> {'query' [N, D + 1],
  'constant' [N], 'attention' [N, h, w]}: what the ranker needs for each pair."""
  f_s, f_i, attention = model.apply(variables, images, image_of, category,
                                    method=scene_pair_parts)
  query, const = ranker.hybrid_query(f_s, f_i, attention.reshape(attention.shape[0], -1))
  return {"query": query, "constant": const, "attention": attention}


def scene_encoder(model: SceneModel, variables: Any, image: jax.Array,
                  category: jax.Array) -> dict[str, jax.Array]:
  """Batch of scenes, one category each -> {'query', 'constant', 'attention'} (see module doc)."""
  f_s, f_i, attention = model.apply(variables, image, category, method=scene_parts)
  query, const = ranker.hybrid_query(f_s, f_i, attention.reshape(attention.shape[0], -1))
  return {"query": query, "constant": const, "attention": attention}


def product_encoder(model: SceneModel, variables: Any,
                    image: jax.Array) -> dict[str, jax.Array]:
  emb = model.apply(variables, image, method=SceneModel.product_embedding)
  return {"embedding": emb,
          "catalogue_row": jnp.concatenate([emb, jnp.sum(jnp.square(emb), -1, keepdims=True)], 1)}


class ScenePredictor:
  """A restored scene-task checkpoint: ranking queries and attention of scene images."""

  def __init__(self, restored: Restored):
    self.restored = restored
    self.config, self.model, self.state = restored.config, restored.model, restored.state
    self.mesh, self.step, self.categories = restored.mesh, restored.step, restored.categories

  @property
  def fingerprint(self) -> str:
    return catalogue.model_fingerprint(self.config, self.categories)

  @functools.cached_property
  def _pairs_fn(self):  # one jitted function per predictor: compiled once per padded shape
    return jax.jit(functools.partial(scene_pairs_encoder, self.model))

  def pairs(self, images: np.ndarray, image_of: np.ndarray,
            category: np.ndarray) -> dict[str, np.ndarray]:
    """{'query' [N, D + 1], 'constant' [N], 'attention' [N, h, w]} of N (scene, category)
    pairs of the scenes `images` [B, S, S, 3] (see `scene_pair_parts`), on the host."""
    return jax.device_get(self._pairs_fn(self.state.variables(), images,
                                         jnp.asarray(image_of, jnp.int32),
                                         jnp.asarray(category, jnp.int32)))


def restore_scene_predictor(workdir: str | os.PathLike,
                            config: ml_collections.ConfigDict | None = None) -> ScenePredictor:
  """The latest scene-task checkpoint of `workdir` (config from the checkpoint unless given)."""
  return ScenePredictor(restore(workdir, config, task="scene"))
