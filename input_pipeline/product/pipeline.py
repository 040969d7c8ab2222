"""tf.data pipelines of the product-based task: training tuples as item crops or cached features.

Host sharding and resumption are those of `batching.epoch_batches`: step t of any run is the
same global batch, and each process reads its own block of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import preprocess
from input_pipeline.batching import (
  Batch,
  StoppableBatches,
  dataset_options,
  epoch_batches,
  local_batch_size,
)
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows
from input_pipeline.product.sampler import ProductTripletSampler

ROLES = ("anchor", "positive", "negative")


def _index_spec(sampler: ProductTripletSampler, local: int) -> dict[str, tf.TensorSpec]:
  n = sampler.num_negatives
  spec = {f"{role}_{field}": tf.TensorSpec([local, n] if role == "negative" else [local],
                                           tf.int32)
          for role in ROLES for field in ("index", "category")}
  if sampler.num_proxies:
    spec["proxy_outfits"] = tf.TensorSpec([local, 1 + sampler.num_proxies], tf.int32)
  return spec


def _index_batches(sampler: ProductTripletSampler, global_batch: int, start_step: int,
                   process_index: int, process_count: int) -> Iterator[Batch]:
  for rows in epoch_batches(sampler, global_batch, start_step, process_index, process_count):
    yield {k: v.astype(np.int32) for k, v in rows.items()}


def train_images(sampler: ProductTripletSampler, images: ImageRows, crops: np.ndarray, *,
                 global_batch: int, image_size: int, normalization: str, start_step: int = 0,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 2,
                 num_parallel_calls: int = tf.data.AUTOTUNE) -> Iterator[Batch]:
  """Batches of item crops for this process: `anchor`, `positive` [L, S, S, 3], `negative`
  [L, N, S, S, 3] (float32, normalised) and the index and category arrays of the sampler.

  Args:
    images, crops: the collage (image rows) and normalised (left, top, right, bottom) crop of
      every training item (indexed by the sampler's item ids).
  """
  local = local_batch_size(global_batch, process_count)
  num_neg = sampler.num_negatives
  ids = tf.constant(images.ids, tf.int64)
  boxes = tf.constant(crops, tf.float32)
  load = lambda i: preprocess.prepare_image(images.source.read(tf.gather(ids, i)),
                                            tf.gather(boxes, i), image_size, normalization)

  def load_row(row):
    out = dict(row)
    out["anchor"] = load(row["anchor_index"])
    out["positive"] = load(row["positive_index"])
    out["negative"] = tf.stack([load(row["negative_index"][k]) for k in range(num_neg)])
    return out

  ds = tf.data.Dataset.from_generator(
      lambda: _index_batches(sampler, global_batch, start_step, process_index, process_count),
      output_signature=_index_spec(sampler, local))
  ds = ds.unbatch().map(load_row, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(prefetch)
  return ds.with_options(dataset_options()).as_numpy_iterator()


def train_features(sampler: ProductTripletSampler, cache: FeatureCache, item_rows: np.ndarray, *,
                   global_batch: int, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, prefetch: int = 2) -> Iterator[Batch]:
  """Like `train_images` with the crops replaced by cached backbone features: `anchor_global`,
  `positive_global` [L, G] and `negative_global` [L, N, G] (float16).

  Args:
    item_rows: [num_training_items] cache row of each training item.
  """
  local = local_batch_size(global_batch, process_count)
  g = cache.row_shape("items", "global")[-1]
  spec = _index_spec(sampler, local)
  spec.update(anchor_global=tf.TensorSpec([local, g], tf.float16),
              positive_global=tf.TensorSpec([local, g], tf.float16),
              negative_global=tf.TensorSpec([local, sampler.num_negatives, g], tf.float16))

  def batches():
    for rows in _index_batches(sampler, global_batch, start_step, process_index, process_count):
      for role in ROLES:
        rows[f"{role}_global"] = cache.gather("items", "global", item_rows[rows[f"{role}_index"]])
      yield rows

  return StoppableBatches(batches, spec, prefetch)
