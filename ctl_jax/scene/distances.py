"""Distances of the scene-based model (Kang et al. 2019), as pure functions of embeddings.

Shapes: B scenes, R regions, D embedding dimensions, N products per scene.
All embeddings are L2-normalised by the heads; the functions do not assume it unless they say so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ctl_jax.nn.losses import squared_l2


def attention_weights(region_keys: jax.Array, category: jax.Array) -> jax.Array:
  """a_i = softmax_i(-||fhat_i - e_c||^2): regions close to the category query weigh more.

  Args:
    region_keys: [B, R, D] attention embeddings fhat_i of the regions.
    category: [B, D] category embeddings e_c.

  Returns:
    [B, R] weights summing to one over regions.
  """
  return jax.nn.softmax(-squared_l2(region_keys, category[:, None, :]), axis=-1)


def global_distance(scene: jax.Array, products: jax.Array) -> jax.Array:
  """d_g = ||f_s - f_p||^2 for scene [B, D] and products [B, N, D] -> [B, N]."""
  return squared_l2(scene[:, None, :], products)


def local_distance(regions: jax.Array, weights: jax.Array, products: jax.Array) -> jax.Array:
  """d_l = sum_i a_i ||f_i - f_p||^2 for regions [B, R, D], weights [B, R], products [B, N, D]."""
  per_region = squared_l2(regions[:, None, :, :], products[:, :, None, :])  # [B, N, R]
  return jnp.einsum("bnr,br->bn", per_region, weights)


def hybrid_distance(scene: jax.Array, regions: jax.Array, weights: jax.Array,
                    products: jax.Array) -> jax.Array:
  """d = (d_g + d_l) / 2 -> [B, N]."""
  return 0.5 * (global_distance(scene, products) + local_distance(regions, weights, products))


def category_query(regions: jax.Array, weights: jax.Array) -> jax.Array:
  """q_c = sum_i a_i f_i -> [B, D]: the attended summary of the scene for one category."""
  return jnp.einsum("brd,br->bd", regions, weights)


def ranking_query(scene: jax.Array, regions: jax.Array, weights: jax.Array) -> jax.Array:
  """v = f_s + q_c: for unit f_s, f_i and f_p, d(s, p) = 2 - v.f_p exactly.

  So ranking a category by hybrid distance is ranking by the inner product v.f_p, one dot
  product per product.
  """
  return scene + category_query(regions, weights)


def distance_from_query(query: jax.Array, products: jax.Array) -> jax.Array:
  """Hybrid distance of unit-norm embeddings from the ranking query: 2 - v.f_p.

  query [B, D] with products [B, N, D] -> [B, N], or with a shared catalogue [M, D] -> [B, M].
  """
  if products.ndim == 2:
    return 2.0 - query @ products.T
  return 2.0 - jnp.einsum("bd,bnd->bn", query, products)
