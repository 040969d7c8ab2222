"""The scene-based model (Kang et al. 2019): backbone, heads f, l, h and category embeddings e_c.

One backbone pass per image gives both the global vector and the region map. The heads are
    f   global head, shared by scenes and products   (Dense-BN-ReLU-Dropout-Dense-L2)
    l   local head on each region                     (same shape)
    h   attention head on each region                 (same shape)
    e_c one learned, L2-normalised vector per category (the attention query)
and the model returns hybrid distances (see `scene/distances.py`).

Batches hold either images (`scene`, `positive`, `negative`) or cached backbone features
(`scene_global`, `scene_regions`, `positive_global`, `negative_global`); the heads see the same
features either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ctl_jax.nn import backbones, example_major
from ctl_jax.nn.heads import ProjectionHead, l2_normalize
from ctl_jax.scene import distances


class SceneHeads(nn.Module):
  """Heads f, l, h and the category embeddings."""

  num_categories: int
  embed_dim: int = 128
  global_hidden: int = 256
  local_hidden: int = 256
  attention_hidden: int = 128
  dropout: float = 0.1
  dtype: Any = jnp.float32

  def setup(self) -> None:
    self.global_head = ProjectionHead(self.global_hidden, self.embed_dim, self.dropout, self.dtype)
    self.local_head = ProjectionHead(self.local_hidden, self.embed_dim, self.dropout, self.dtype)
    self.attention_head = ProjectionHead(self.attention_hidden, self.embed_dim, self.dropout,
                                         self.dtype)
    self.category_embedding = nn.Embed(self.num_categories, self.embed_dim,
                                       embedding_init=nn.initializers.normal(1.0))

  def embed_global(self, features: jax.Array, train: bool = False) -> jax.Array:
    """f(global) for scenes and products: [..., G] -> [..., D]."""
    return self.global_head(features, train)

  def embed_regions(self, regions: jax.Array,
                    train: bool = False) -> tuple[jax.Array, jax.Array]:
    """[B, h, w, C] -> (f_i [B, R, D], fhat_i [B, R, D])."""
    flat = regions.reshape(regions.shape[0], -1, regions.shape[-1])
    return self.local_head(flat, train), self.attention_head(flat, train)

  def embed_category(self, category: jax.Array) -> jax.Array:
    """e_c, unit norm: [B] int -> [B, D]."""
    return l2_normalize(self.category_embedding(category))

  def __call__(self, global_features: jax.Array, regions: jax.Array, category: jax.Array,
               train: bool = False) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array]:
    """Touches every head (used by init)."""
    return (self.embed_global(global_features, train), self.embed_regions(regions, train),
            self.embed_category(category))


class SceneModel(nn.Module):
  """Backbone + scene heads; `freeze_backbone` keeps the backbone out of training."""

  backbone: nn.Module
  heads: SceneHeads
  freeze_backbone: bool = True

  def features(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """{'global': [B, G], 'regions': [B, h, w, C]} from one backbone pass."""
    return backbones.backbone_features(self.backbone, images, train=train,
                                       frozen=self.freeze_backbone)

  def _triplet_features(self, batch, train: bool):
    """Scene global/regions and product globals, from images (one pass) or from the cache."""
    if "scene_global" in batch:  # cached features (stored as float16)
      # Converted once and kept (the barrier stops XLA from redoing the conversion inside
      # every matmul that reads the region map, forward and backward).
      f32 = lambda k: jax.lax.optimization_barrier(batch[k].astype(jnp.float32))
      return (f32("scene_global"), f32("scene_regions"), f32("positive_global"),
              f32("negative_global"))
    n = batch["negative"].shape[1]
    images = example_major.merge([batch["scene"][:, None], batch["positive"][:, None],
                                  batch["negative"]])
    feats = self.features(images, train)
    scene_g, pos_g, neg_g = example_major.split(feats["global"], (1, 1, n))
    regions = example_major.split(feats["regions"], (1, 1 + n))[0]
    return scene_g[:, 0], regions[:, 0], pos_g[:, 0], neg_g

  def __call__(self, batch: dict[str, jax.Array],
               train: bool = False) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Hybrid distances of each scene to its positive and its negatives.

    Returns:
      d_pos [B], d_neg [B, N], and an aux dict of named intermediates: `attention` [B, R],
      the ranking `query` v = f_s + q_c [B, D], and the `positive` [B, D] and `negative`
      [B, N, D] product embeddings.
    """
    scene_g, regions, pos_g, neg_g = self._triplet_features(batch, train)
    n = neg_g.shape[1]
    # One call of the shared global head over scenes and products: its BatchNorm sees one
    # batch in training, the same population its running statistics describe at inference.
    emb = self.heads.embed_global(
        example_major.merge([scene_g[:, None], pos_g[:, None], neg_g]), train)
    f_s, f_pos, f_neg = example_major.split(emb, (1, 1, n))
    f_s, f_pos = f_s[:, 0], f_pos[:, 0]
    f_i, fhat_i = self.heads.embed_regions(regions, train)
    e_c = self.heads.embed_category(batch["category"])
    weights = distances.attention_weights(fhat_i, e_c)
    products = jnp.concatenate([f_pos[:, None, :], f_neg], axis=1)  # [B, 1 + N, D]
    d = distances.hybrid_distance(f_s, f_i, weights, products)
    aux = {"attention": weights, "query": distances.ranking_query(f_s, f_i, weights),
           "positive": f_pos, "negative": f_neg}
    return d[:, 0], d[:, 1:], aux

  def scene_query(self, images: jax.Array, category: jax.Array,
                  train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Ranking queries v = f_s + q_c [B, D] and attention [B, R] of scene images."""
    feats = self.features(images, train)
    return self.scene_query_from_features(feats["global"], feats["regions"], category, train)

  def scene_query_from_features(self, global_features: jax.Array, regions: jax.Array,
                                category: jax.Array,
                                train: bool = False) -> tuple[jax.Array, jax.Array]:
    f_s = self.heads.embed_global(global_features.astype(jnp.float32), train)
    f_i, fhat_i = self.heads.embed_regions(regions.astype(jnp.float32), train)
    weights = distances.attention_weights(fhat_i, self.heads.embed_category(category))
    return distances.ranking_query(f_s, f_i, weights), weights

  def product_embedding(self, images: jax.Array, train: bool = False) -> jax.Array:
    """f_p [B, D] of product images."""
    return self.product_embedding_from_features(self.features(images, train)["global"], train)

  def product_embedding_from_features(self, global_features: jax.Array,
                                      train: bool = False) -> jax.Array:
    return self.heads.embed_global(global_features.astype(jnp.float32), train)

  def init_all(self, images: jax.Array,
               category: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array]:
    """Creates every variable (backbone, heads, categories)."""
    feats = self.features(images)
    return self.heads(feats["global"], feats["regions"], category)


def create_model(model_config: ml_collections.ConfigDict, num_categories: int) -> SceneModel:
  """The scene model of the `model` config section for `num_categories` categories."""
  c = model_config
  backbone = backbones.create_backbone(c.backbone, c.dtype, c.region_stage, c.global_stage,
                                       c.multiscale, c.global_pool)
  heads = SceneHeads(num_categories=num_categories, embed_dim=c.embed_dim,
                     global_hidden=c.global_hidden, local_hidden=c.local_hidden,
                     attention_hidden=c.attention_hidden, dropout=c.dropout,
                     dtype=backbones.DTYPES[c.dtype])
  return SceneModel(backbone=backbone, heads=heads, freeze_backbone=c.freeze_backbone)
