"""The product task's other ways of training the style embedding (Li et al. 2020) and its
category classifier's loss, as pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
