"""Losses as plain functions of distances."""

from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = {"mean": jnp.mean, "sum": jnp.sum}


def triplet_hinge(d_pos: jax.Array, d_neg: jax.Array, margin: float = 0.2,
                  reduction: str = "mean") -> jax.Array:
  """Hinge triplet loss max(0, d(s, p+) - d(s, p-) + margin), reduced over every term.

  Args:
    d_pos: [B] distances to the positives.
    d_neg: [B, N] distances to N negatives per scene (or [B] for one).
    margin: the hinge margin.
    reduction: 'mean' or 'sum' over all B x N terms.
  """
  if d_neg.ndim == 1:
    d_neg = d_neg[:, None]
  terms = jax.nn.relu(d_pos[:, None] - d_neg + margin)
  return REDUCTIONS[reduction](terms)


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
  """[B, M] candidates that are true negatives of each row: same category, not in its scene.

  Args:
    category: [B] row categories.
    positive_index: [B] row positives (product ids).
    scene_products: [B, K] product ids of each row's scene, -1 padded.
    candidate_category, candidate_index: [M] category and product id of each candidate.
  """
  same_category = category[:, None] == candidate_category[None, :]
  in_scene = jnp.any(scene_products[:, :, None] == candidate_index[None, None, :], axis=1)
  is_positive = positive_index[:, None] == candidate_index[None, :]
  return same_category & ~in_scene & ~is_positive


# ---------------------------------------------------------------------------------------------
# Product-based CTL (Li et al. 2020): the other ways of training the style embedding.


def contrastive(d_pos: jax.Array, d_neg: jax.Array, margin: float = 1.0) -> jax.Array:
  """Siamese contrastive loss (Hadsell et al. 2006) from squared distances, mean over pairs.

  A positive pair costs D^2, a negative pair max(0, margin - D)^2, with D the Euclidean
  distance. Every pair weighs the same, so N negatives per positive is an N:1 ratio of
  negative to positive pairs in the loss.

  Args:
    d_pos: [B] squared distances of the positive pairs.
    d_neg: [B, N] squared distances of the negative pairs (or [B] for one).
    margin: distance beyond which negative pairs cost nothing.
  """
  if d_neg.ndim == 1:
    d_neg = d_neg[:, None]
  # sqrt has an infinite slope at 0: clamp so a collapsed negative pair still gets a gradient.
  dist_neg = jnp.sqrt(jnp.maximum(d_neg, 1e-12))
  terms = jnp.concatenate([d_pos[:, None], jnp.square(jax.nn.relu(margin - dist_neg))], axis=1)
  return jnp.mean(terms)


def sampled_proxy_softmax(embeddings: jax.Array, proxies: jax.Array,
                          temperature: float = 0.05) -> jax.Array:
  """Classification against sampled proxies: normalised softmax (Zhai & Wu 2019), mean over rows.

  Each row is classified among its own candidate proxies, the true class first: logits are
  cos(x, p_j) / temperature, and the loss is the cross-entropy of class 0.

  Args:
    embeddings: [B, D] unit vectors.
    proxies: [B, 1 + K, D] each row's true proxy then K sampled other proxies (any norm).
    temperature: softmax temperature on cosine similarities.
  """
  proxies = proxies / jnp.linalg.norm(proxies, axis=-1, keepdims=True).clip(1e-12)
  logits = jnp.einsum("bd,bkd->bk", embeddings, proxies) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def categorical_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer `labels` [...] under `logits` [..., C]."""
  picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)
