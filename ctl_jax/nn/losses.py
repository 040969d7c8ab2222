"""Loss terms both tasks train with, as pure functions: the squared L2 distance between
embeddings and the triplet hinge on distances."""

from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS = {"mean": jnp.mean, "sum": jnp.sum}


def squared_l2(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a - b||^2 over the last axis, broadcasting the others."""
  return jnp.sum(jnp.square(a - b), axis=-1)


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
