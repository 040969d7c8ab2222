"""Batching shared by both tasks: each process's rows of the training epochs, padded evaluation
batches, and the tf.data options of every pipeline.

Sharding across hosts: the global batch of step t is rows [t*G, (t+1)*G) of the epoch's order;
process p reads rows [t*G + p*L, t*G + (p+1)*L) with L = G / process_count, which is exactly the
block of the global batch its devices hold on the `data` axis. The global batches are therefore
the same for any number of processes, and any step can be resumed by recomputing its epoch.

Evaluation pads instead of dropping rows (`padded_host_rows`): every process runs the same
number of batches and the padding is masked out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import tensorflow as tf

from input_pipeline import preprocess
from input_pipeline.image_source import ImageRows, as_rows

Batch = dict[str, np.ndarray]


class EpochSampler(Protocol):
  """A training sampler: the number of rows of an epoch and the arrays of epoch `e` in training
  order (`scene.sampler.TripletSampler`, `product.sampler.ProductTripletSampler`)."""

  def __len__(self) -> int:
    ...

  def epoch(self, epoch: int) -> Batch:
    ...


def local_batch_size(global_batch: int, process_count: int) -> int:
  """Rows of each global batch that one process reads."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  return global_batch // process_count


def epoch_batches(sampler: EpochSampler, global_batch: int, start_step: int,
                  process_index: int, process_count: int) -> Iterator[Batch]:
  """This process's rows of each global batch, from `start_step` on, forever."""
  steps_per_epoch = len(sampler) // global_batch
  if steps_per_epoch == 0:
    raise ValueError(f"{len(sampler)} training pairs cannot fill one batch of {global_batch}")
  local = local_batch_size(global_batch, process_count)
  epoch, step = divmod(start_step, steps_per_epoch)
  while True:
    arrays = sampler.epoch(epoch)
    for t in range(step, steps_per_epoch):
      lo = t * global_batch + process_index * local
      yield {k: v[lo:lo + local] for k, v in arrays.items()}
    epoch, step = epoch + 1, 0


class StoppableBatches:
  """A numpy iterator over a tf.data pipeline fed by a Python generator, that can be ended.

  Dropping a `from_generator` pipeline's iterator while its prefetch thread is inside the
  generator made the destructor wait for that thread (1 to 60 s at the end of every training
  run). `close()` tells the generator to return, drains the few prefetched batches and leaves an
  exhausted iterator, whose destructor has nothing to wait for.
  """

  def __init__(self, make_batches: Callable[[], Iterator[Batch]],
               spec: dict[str, tf.TensorSpec], prefetch: int):
    self._stop = threading.Event()

    def batches():
      for batch in make_batches():
        if self._stop.is_set():
          return
        yield batch

    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    self._it = ds.prefetch(prefetch).with_options(dataset_options()).as_numpy_iterator()

  def __iter__(self) -> StoppableBatches:
    return self

  def __next__(self) -> Batch:
    return next(self._it)

  def close(self) -> None:
    self._stop.set()
    for _ in self._it:
      pass


def dataset_options() -> tf.data.Options:
  """Options of every pipeline: deterministic order, parallel maps, one thread per op."""
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options


def padded_host_rows(num_rows: int, global_batch: int, process_index: int,
                     process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Row ids and a validity mask of this process's share of `num_rows`, padded to full batches.

  Every process gets the same number of batches (ceil(num_rows / global_batch)); padding rows
  repeat row 0 and are masked out, so no example is dropped and none is counted twice.
  """
  local = local_batch_size(global_batch, process_count)
  steps = max(1, -(-num_rows // global_batch))
  ids = np.arange(steps * global_batch).reshape(steps, process_count, local)[:, process_index]
  ids = ids.reshape(-1)
  mask = ids < num_rows
  return np.where(mask, ids, 0).astype(np.int32), mask


def padded_row_batches(num_rows: int, *, global_batch: int, process_index: int = 0,
                       process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(row ids, mask) of this process's padded batches (see `padded_host_rows`), for callers
  that gather rows themselves (e.g. from the feature cache)."""
  ids, mask = padded_host_rows(num_rows, global_batch, process_index, process_count)
  local = local_batch_size(global_batch, process_count)
  for lo in range(0, len(ids), local):
    yield ids[lo:lo + local], mask[lo:lo + local]


def eval_images(images: ImageRows | list[str], crops: np.ndarray | None,
                extras: dict[str, np.ndarray], *,
                global_batch: int, image_size: int, normalization: str, process_index: int = 0,
                process_count: int = 1,
                num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Padded batches of `image` (cropped when `crops` is given), `_mask` and the `extras` rows.

  Args:
    images: one image per row (ImageRows, or one file path per row).
    crops: [rows, 4] normalised crops, or None for whole images.
    extras: more per-row arrays to carry along (e.g. `category`).
  """
  rows = as_rows(images)
  ids, mask = padded_host_rows(len(rows), global_batch, process_index, process_count)
  if crops is None:
    crops = np.tile(np.array(preprocess.FULL_IMAGE, np.float32), (len(rows), 1))
  columns = {"image_id": np.asarray(rows.ids, np.int64)[ids],
             "crop": np.asarray(crops, np.float32)[ids],
             "_mask": mask, **{k: np.asarray(v)[ids] for k, v in extras.items()}}

  def load(row):
    out = dict(row)
    data = rows.source.read(out.pop("image_id"))
    out["image"] = preprocess.prepare_image(data, out.pop("crop"), image_size, normalization)
    return out

  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
  local = local_batch_size(global_batch, process_count)
  return ds.batch(local, drop_remainder=True).prefetch(2).with_options(dataset_options())
