"""Exact top-K ranking of a catalogue by one inner product per product.

Both models' distances are affine in an inner product of augmented vectors:

  hybrid (scene)  d(s, p) = c_s - v.f_p + ||f_p||^2,  v = f_s + q_c,
                  c_s = (||f_s||^2 + sum_i a_i ||f_i||^2) / 2      (= 1 for unit vectors)
  squared L2      d(x, p) = ||x||^2 - 2 x.f_p + ||f_p||^2             (product style vectors)

so with the catalogue row p~ = [f_p, ||f_p||^2] and the query q~ = [v, -1] (or [2x, -1]),
d = c - q~.p~ and the K nearest products are the K largest inner products. No unit-norm
assumption: the distances are exact for whatever vectors were exported (float16 included).

`Ranker` holds the augmented catalogue split over the devices of a mesh (`data` axis); each
device takes the top K of its rows and the candidates are merged. Catalogues larger than device
memory are streamed from the host (a numpy array or memory-mapped .npy) in fixed-size chunks,
keeping a running top K, so only one or two chunks live on the devices at a time.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ctl_jax.scene import distances
from ctl_jax.trainer import sharding

NEG_INF = float("-inf")


def augment_catalogue(embeddings: np.ndarray) -> np.ndarray:
  """[M, D] product embeddings -> [M, D + 1] rows [f_p, ||f_p||^2] (float32)."""
  e = np.asarray(embeddings, np.float32)
  return np.concatenate([e, np.sum(np.square(e), -1, keepdims=True)], axis=1)


def hybrid_query(scene: jax.Array, regions: jax.Array,
                 weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Augmented queries [B, D + 1] and constants [B] of the scene model's hybrid distance.

  Args:
    scene: f_s [B, D]; regions: f_i [B, R, D]; weights: attention a_i [B, R].
  """
  v = distances.ranking_query(scene, regions, weights)
  const = 0.5 * (jnp.sum(jnp.square(scene), -1)
                 + jnp.einsum("br,br->b", weights, jnp.sum(jnp.square(regions), -1)))
  return jnp.concatenate([v, -jnp.ones_like(v[:, :1])], axis=1), const


def l2_query(x: jax.Array | np.ndarray) -> tuple[jax.Array, jax.Array]:
  """Augmented queries [B, D + 1] and constants [B] of the squared L2 distance ||x - f_p||^2."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.concatenate([2.0 * x, -jnp.ones_like(x[:, :1])], axis=1), jnp.sum(jnp.square(x), -1)


def check_search(query_shape: tuple[int, ...], k: int, num_rows: int, width: int) -> None:
  """ValueError naming what a catalogue of `num_rows` rows of `width` cannot answer: a k out of
  1..num_rows, or queries that are not [B, width]."""
  if not 1 <= k <= num_rows:
    raise ValueError(f"k={k} but the catalogue has {num_rows} products: ask for at most "
                     f"{num_rows}")
  if len(query_shape) != 2 or query_shape[1] != width:
    raise ValueError(f"queries of shape {tuple(query_shape)} for a catalogue of width {width}")


def merge_top_k(scores_a: jax.Array, ids_a: jax.Array, scores_b: jax.Array, ids_b: jax.Array,
                k: int) -> tuple[jax.Array, jax.Array]:
  """Top `k` of two candidate lists [B, ka] and [B, kb] (largest scores first)."""
  scores = jnp.concatenate([scores_a, scores_b], axis=1)
  ids = jnp.concatenate([ids_a, ids_b], axis=1)
  top, at = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(ids, at, axis=1)


def _local_top_k(queries, rows, num_valid, offset, *, k: int):
  """Top k of this device's block of rows; padding rows (global id >= num_valid) never win."""
  n_local = rows.shape[0]
  first = offset + jax.lax.axis_index(sharding.DATA_AXIS) * n_local
  scores = jnp.einsum("bd,md->bm", queries.astype(rows.dtype), rows,
                      preferred_element_type=jnp.float32)
  ids = first + jnp.arange(n_local, dtype=jnp.int32)
  scores = jnp.where(ids[None, :] < num_valid, scores, NEG_INF)
  top, at = jax.lax.top_k(scores, min(k, n_local))
  return top, ids[at]


@functools.partial(jax.jit, static_argnames=("k", "mesh"))
def _chunk_top_k(queries, rows, num_valid, offset, *, k: int, mesh):
  """Per-device top k of a row-sharded chunk, then the merge: ([B, k], [B, k])."""
  local = jax.shard_map(
      functools.partial(_local_top_k, k=k), mesh=mesh,
      in_specs=(P(), P(sharding.DATA_AXIS), P(), P()),
      out_specs=(P(None, sharding.DATA_AXIS), P(None, sharding.DATA_AXIS)))
  scores, ids = local(queries, rows, num_valid, offset)  # [B, devices * k_local]
  top, at = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(ids, at, axis=1)


_merge = jax.jit(merge_top_k, static_argnames="k")


class Ranker:
  """Exact top-K by inner product of augmented queries with the rows [f_p, ||f_p||^2].

  Args:
    embeddings: [M, D] product embeddings f_p (a numpy array or a memory-mapped .npy, any float
      dtype); they are augmented (see `augment_catalogue`) chunk by chunk as they go to devices.
    mesh: devices to split rows over (default: every device, one `data` axis).
    chunk_rows: stream the catalogue through the devices this many rows at a time (None: keep
      it all on the devices). Use it when the catalogue does not fit in device memory.
    dtype: device storage dtype of the rows (float32, or bfloat16/float16 to halve the bytes
      scanned; the inner products accumulate in float32 either way).
  """

  def __init__(self, embeddings: np.ndarray, *, mesh: jax.sharding.Mesh | None = None,
               chunk_rows: int | None = None, dtype: Any = jnp.float32):
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(f"empty or malformed catalogue of shape {embeddings.shape}: export "
                       "at least one product")
    self.mesh = sharding.make_mesh() if mesh is None else mesh
    self.num_rows, self.width = embeddings.shape[0], embeddings.shape[1] + 1
    self.dtype = dtype
    n = self.mesh.size
    chunk = self.num_rows if chunk_rows is None else min(chunk_rows, self.num_rows)
    self.chunk_rows = -(-chunk // n) * n  # every device gets the same number of rows
    self._host = embeddings
    self._rows_sharding = NamedSharding(self.mesh, P(sharding.DATA_AXIS))
    self._resident = (self._put(0) if self.chunk_rows >= self.num_rows else None)

  @property
  def streaming(self) -> bool:
    return self._resident is None

  def _put(self, start: int) -> jax.Array:
    """Rows [start, start + chunk_rows) on the devices, zero-padded to a full chunk."""
    block = augment_catalogue(self._host[start:start + self.chunk_rows])
    if len(block) < self.chunk_rows:
      block = np.concatenate([block, np.zeros((self.chunk_rows - len(block), self.width),
                                              np.float32)])
    return jax.device_put(block.astype(self.dtype), self._rows_sharding)

  def search(self, queries: np.ndarray | jax.Array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest inner products of each augmented query [B, D + 1] with the catalogue.

    Returns:
      scores [B, k] (descending) and row ids [B, k] of the catalogue.
    """
    queries = jnp.asarray(queries, jnp.float32)
    check_search(queries.shape, k, self.num_rows, self.width)
    queries = jax.device_put(queries, NamedSharding(self.mesh, P()))
    run = functools.partial(_chunk_top_k, k=min(k, self.chunk_rows), mesh=self.mesh)
    num_valid = jnp.int32(self.num_rows)
    if not self.streaming:
      top, ids = run(queries, self._resident, num_valid, jnp.int32(0))
    else:
      top = ids = None
      nxt = self._put(0)
      for start in range(0, self.num_rows, self.chunk_rows):
        rows = nxt
        if start + self.chunk_rows < self.num_rows:  # copy the next chunk while this one runs
          nxt = self._put(start + self.chunk_rows)
        t, i = run(queries, rows, num_valid, jnp.int32(start))
        if top is None:
          top, ids = t, i
        else:
          top, ids = _merge(top, ids, t, i, k=min(k, top.shape[1] + t.shape[1]))
    return np.asarray(top[:, :k]), np.asarray(ids[:, :k])

  def nearest(self, queries: np.ndarray | jax.Array, constants: np.ndarray | jax.Array,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances d = c - q~.p~ [B, k] (ascending) and row ids [B, k] of the k nearest rows."""
    scores, ids = self.search(queries, k)
    return np.asarray(constants, np.float32)[:, None] - scores, ids
