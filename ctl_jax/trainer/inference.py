"""Batched, sharded inference: a pure step `fn(state, batch, *, model)` jitted once and applied
to host batches (evaluation embedders of both tasks, serving predictors).

The batch is split over the mesh's `data` axis (each process passes its own rows), the state
keeps its placement, the outputs come back replicated to every process.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from ctl_jax.trainer import sharding
from input_pipeline import batching
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows

MASK = "_mask"  # the validity column of padded evaluation batches; never sent to the device


class ShardedApply:
  """`fn(state, batch, *, model) -> dict of arrays`, jitted for `mesh` and `state_sharding`."""

  def __init__(self, fn: Callable, model: nn.Module, mesh: jax.sharding.Mesh,
               state_sharding: Any):
    self.mesh = mesh
    self._fn = jax.jit(functools.partial(fn, model=model),
                       in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
                       out_shardings=sharding.replicated(mesh))

  def __call__(self, state: Any, batch: dict,
               keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The outputs `keys` (default: all) of one host batch, on the host."""
    out = self._fn(state, sharding.to_global(
        {k: v for k, v in batch.items() if k != MASK}, self.mesh))
    return jax.device_get(out if keys is None else {k: out[k] for k in keys})

  def over(self, state: Any, batches: Iterable[dict], num_rows: int,
           keys: Sequence[str] | None = None, desc: str = "embedding") -> dict[str, np.ndarray]:
    """The outputs of every batch, concatenated and cut to the first `num_rows` rows (the
    padding of the last batch comes last). A progress bar counts this process's rows (on a
    terminal, process 0)."""
    outs = []
    with tqdm.tqdm(total=num_rows, unit="row", desc=desc, leave=False, mininterval=1.0,
                   disable=None if jax.process_index() == 0 else True) as bar:
      for b in batches:
        outs.append(self(state, b, keys))
        bar.update(int(np.sum(b[MASK])) if MASK in b else len(next(iter(outs[-1].values()))))
    return {k: np.concatenate([o[k] for o in outs])[:num_rows] for k in outs[0]}

  def rows(self, state: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of any number of rows (one process), padded to a multiple of the devices."""
    n = len(next(iter(batch.values())))
    pad = -n % self.mesh.size
    if pad:
      batch = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in batch.items()}
    return {k: np.asarray(v[:n]) for k, v in self(state, batch).items()}


def image_batches(config: ml_collections.ConfigDict, images: ImageRows | Sequence[str],
                  crops: np.ndarray | None,
                  extras: dict[str, np.ndarray] | None = None) -> Iterator[dict]:
  """This process's padded evaluation batches (`eval.batch_size` global rows) of `images`,
  preprocessed as in training: `image`, `_mask` and the per-row `extras`."""
  c = config
  data = batching.eval_images(
      images, crops, extras or {}, global_batch=c.eval.batch_size, image_size=c.input.image_size,
      normalization=c.input.normalization, process_index=jax.process_index(),
      process_count=jax.process_count(), num_parallel_calls=c.input.num_parallel_calls)
  return data.as_numpy_iterator()


def cached_batches(cache: FeatureCache, kind: str, rows: np.ndarray, batch_size: int,
                   fields: Sequence[str] = ("global",),
                   extras: dict[str, np.ndarray] | None = None) -> Iterator[dict]:
  """This process's padded evaluation batches of the cached `fields` of cache `rows` (gathered
  batch by batch), with `_mask` and the per-row `extras`."""
  for ids, mask in batching.padded_row_batches(len(rows), global_batch=batch_size,
                                               process_index=jax.process_index(),
                                               process_count=jax.process_count()):
    batch = {MASK: mask, **{f: cache.gather(kind, f, rows[ids]) for f in fields}}
    batch.update({k: v[ids] for k, v in (extras or {}).items()})
    yield batch
