"""The projection head both tasks put on the backbone, and the L2 normalisation it ends with."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), eps))


class ProjectionHead(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dropout -> Dense -> L2-normalise, over the last axis.

  The scene model's heads f, l and h and the product model's style extractor are all this.
  """

  hidden: int
  out: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x)  # over all other axes
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return l2_normalize(nn.Dense(self.out, dtype=self.dtype)(x))
