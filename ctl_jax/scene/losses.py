"""In-batch negatives of the scene task: every distinct same-category product of the batch outside
a row's scene is scored as one more negative of that row (one inner product with its ranking
query). A product that appears several times in the batch is scored once per row, so popular
products do not weigh more than the others."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def in_batch_triplet_hinge(d_pos: jax.Array, d_candidates: jax.Array, valid: jax.Array,
                           margin: float = 0.2, reduction: str = "mean") -> jax.Array:
  """Hinge triplet loss against every valid candidate of the batch.

  Args:
    d_pos: [B] distances to the positives.
    d_candidates: [B, M] distances of each scene to the M products of the batch.
    valid: [B, M] which candidates are negatives of the row (same category, not in its scene).
    margin: the hinge margin.
    reduction: 'mean' over valid terms, or 'sum'.
  """
  terms = jnp.where(valid, jax.nn.relu(d_pos[:, None] - d_candidates + margin), 0.0)
  if reduction == "sum":
    return jnp.sum(terms)
  if reduction != "mean":
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
  return jnp.sum(terms) / jnp.maximum(jnp.sum(valid), 1)


def in_batch_negative_mask(category: jax.Array, positive_index: jax.Array,
                           scene_products: jax.Array, candidate_category: jax.Array,
                           candidate_index: jax.Array) -> jax.Array:
  """[B, M] candidates that are true negatives of each row: same category, not in its scene,
  and the first candidate of their product (each distinct product counts once).

  Args:
    category: [B] row categories.
    positive_index: [B] row positives (product ids).
    scene_products: [B, K] product ids of each row's scene, -1 padded.
    candidate_category, candidate_index: [M] category and product id of each candidate.
  """
  same_category = category[:, None] == candidate_category[None, :]
  in_scene = jnp.any(scene_products[:, :, None] == candidate_index[None, None, :], axis=1)
  is_positive = positive_index[:, None] == candidate_index[None, :]
  m = candidate_index.shape[0]
  earlier = jnp.tril(jnp.ones((m, m), bool), k=-1)  # [j, j']: j' comes before j
  repeated = jnp.any(earlier & (candidate_index[:, None] == candidate_index[None, :]), axis=1)
  return same_category & ~in_scene & ~is_positive & ~repeated[None, :]
