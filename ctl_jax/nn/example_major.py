"""Stack the items of each example together, so one call of a network sees the whole batch.

A triplet batch has several roles per example (scene, positive, N negatives). A network called
once over all of them flattens the roles into one batch. Role-major order (every scene, then
every positive, ...) puts example i's scene and its positive on different devices when the batch
is sharded, and XLA reshards with an all-to-all in every step. Example-major order (example 0's
items, then example 1's, ...) keeps each shard's items on its own device: the flattening and the
split back are local.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def merge(parts: Sequence[jax.Array]) -> jax.Array:
  """[B, k_i, ...] arrays (the same trailing shape) -> [B * sum(k_i), ...], example-major."""
  stacked = jnp.concatenate(parts, axis=1)
  return stacked.reshape((-1,) + stacked.shape[2:])


def split(flat: jax.Array, counts: Sequence[int]) -> list[jax.Array]:
  """Inverse of `merge`: [B * sum(counts), ...] -> [B, k_i, ...] for each k_i in counts."""
  total = sum(counts)
  per_example = flat.reshape((-1, total) + flat.shape[1:])
  bounds = [0]
  for k in counts:
    bounds.append(bounds[-1] + k)
  return [per_example[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
