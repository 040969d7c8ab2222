"""tf.data pipelines of the scene-based task: training triplets as images or cached features.

Each process reads its own block of every global batch (see `batching`); evaluation batches are
`batching.eval_images`.
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
from input_pipeline.image_source import ImageSource, as_source
from input_pipeline.scene.sampler import TripletSampler


def train_triplets(sampler: TripletSampler, scene_images: ImageSource | list[str],
                   product_images: ImageSource | list[str], *,
                   global_batch: int, image_size: int, normalization: str, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1, prefetch: int = 2,
                   num_parallel_calls: int = tf.data.AUTOTUNE) -> Iterator[Batch]:
  """Batches of (scene crop, positive, negatives) images for this process, from `start_step`.

  `scene_images` and `product_images` give the bytes of scene and product ids (an ImageSource,
  or one file path per id).

  Yields dicts: `scene` [L, S, S, 3], `positive` [L, S, S, 3], `negative` [L, N, S, S, 3]
  (float32, normalised), `category` [L], the `scene_index`, `positive_index`,
  `negative_index` and `pair_index` the images came from, and `scene_products` [L, K] (every
  product of the row's scene, -1 padded) for in-batch negatives.
  """
  local = local_batch_size(global_batch, process_count)
  num_neg = sampler.num_negatives
  spec = {
      "scene_index": tf.TensorSpec([local], tf.int32),
      "positive_index": tf.TensorSpec([local], tf.int32),
      "negative_index": tf.TensorSpec([local, num_neg], tf.int32),
      "category": tf.TensorSpec([local], tf.int32),
      "crop": tf.TensorSpec([local, 4], tf.float32),
      "pair_index": tf.TensorSpec([local], tf.int32),
      "scene_products": tf.TensorSpec([local, sampler.scene_products.shape[1]], tf.int32),
  }
  scenes, products = as_source(scene_images), as_source(product_images)
  full = tf.constant(preprocess.FULL_IMAGE, tf.float32)
  prepare = lambda data, crop: preprocess.prepare_image(data, crop, image_size, normalization)

  def load(row):
    out = dict(row)
    crop = out.pop("crop")
    out["scene"] = prepare(scenes.read(row["scene_index"]), crop)
    out["positive"] = prepare(products.read(row["positive_index"]), full)
    out["negative"] = tf.stack([prepare(products.read(row["negative_index"][k]), full)
                                for k in range(num_neg)])
    return out

  ds = tf.data.Dataset.from_generator(
      lambda: epoch_batches(sampler, global_batch, start_step, process_index, process_count),
      output_signature=spec)
  ds = ds.unbatch().map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(prefetch).with_options(dataset_options())
  return ds.as_numpy_iterator()


def train_features(sampler: TripletSampler, cache: FeatureCache, scene_rows: np.ndarray,
                   product_rows: np.ndarray, *, global_batch: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1,
                   prefetch: int = 2) -> Iterator[Batch]:
  """Like `train_triplets`, but the images are replaced by their cached backbone features.

  Args:
    scene_rows: [num_pairs] cache row of each pair's cropped scene (-1 if not cached).
    product_rows: [num_products] cache row of each product.

  Yields dicts with `scene_global` [L, G], `scene_regions` [L, h, w, C], `positive_global`
  [L, G], `negative_global` [L, N, G] (float16) and the index arrays of `train_triplets`.
  """
  local = local_batch_size(global_batch, process_count)
  num_neg = sampler.num_negatives
  g = cache.row_shape("products", "global")[-1]
  region_shape = cache.row_shape("scenes", "regions")
  k = sampler.scene_products.shape[1]
  spec = {
      "scene_global": tf.TensorSpec([local, g], tf.float16),
      "scene_regions": tf.TensorSpec([local, *region_shape], tf.float16),
      "positive_global": tf.TensorSpec([local, g], tf.float16),
      "negative_global": tf.TensorSpec([local, num_neg, g], tf.float16),
      "category": tf.TensorSpec([local], tf.int32),
      "scene_index": tf.TensorSpec([local], tf.int32),
      "positive_index": tf.TensorSpec([local], tf.int32),
      "negative_index": tf.TensorSpec([local, num_neg], tf.int32),
      "pair_index": tf.TensorSpec([local], tf.int32),
      "scene_products": tf.TensorSpec([local, k], tf.int32),
  }

  def batches():
    for rows in epoch_batches(sampler, global_batch, start_step, process_index, process_count):
      scene = scene_rows[rows["pair_index"]]
      yield {
          "scene_global": cache.gather("scenes", "global", scene),
          "scene_regions": cache.gather("scenes", "regions", scene),
          "positive_global": cache.gather("products", "global",
                                          product_rows[rows["positive_index"]]),
          "negative_global": cache.gather("products", "global",
                                          product_rows[rows["negative_index"]]),
          **{key: rows[key] for key in ("category", "scene_index", "positive_index",
                                        "negative_index", "pair_index", "scene_products")},
      }

  return StoppableBatches(batches, spec, prefetch)
