"""tf.data pipelines for the scene-based task: training triplets and padded evaluation batches.

Sharding across hosts: the global batch of step t is rows [t*G, (t+1)*G) of the epoch's order;
process p reads rows [t*G + p*L, t*G + (p+1)*L) with L = G / process_count, which is exactly the
block of the global batch its devices hold on the `data` axis. The global batches are therefore
the same for any number of processes, and any step can be resumed by recomputing its epoch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import preprocess
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.image_source import ImageRows, ImageSource, as_rows, as_source
from input_pipeline.scene.sampler import TripletSampler

Batch = dict[str, np.ndarray]


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  return global_batch // process_count


def triplet_index_batches(sampler: TripletSampler, global_batch: int, start_step: int,
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


def _dataset_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options


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
      lambda: triplet_index_batches(sampler, global_batch, start_step, process_index,
                                    process_count), output_signature=spec)
  ds = ds.unbatch().map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(prefetch).with_options(_dataset_options())
  return ds.as_numpy_iterator()


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
  return ds.batch(local, drop_remainder=True).prefetch(2).with_options(_dataset_options())


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
    for rows in triplet_index_batches(sampler, global_batch, start_step, process_index,
                                      process_count):
      scene = scene_rows[rows["pair_index"]]
      yield {
          "scene_global": cache.gather("scenes", "global", scene),
          "scene_regions": cache.gather("scenes", "regions", scene),
          "positive_global": cache.gather("products", "global", product_rows[rows["positive_index"]]),
          "negative_global": cache.gather("products", "global", product_rows[rows["negative_index"]]),
          **{key: rows[key] for key in ("category", "scene_index", "positive_index",
                                        "negative_index", "pair_index", "scene_products")},
      }

  ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
  return ds.prefetch(prefetch).with_options(_dataset_options()).as_numpy_iterator()


def padded_row_batches(num_rows: int, *, global_batch: int, process_index: int = 0,
                       process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(row ids, mask) of this process's padded batches (see `padded_host_rows`), for callers
  that gather rows themselves (e.g. from the feature cache)."""
  ids, mask = padded_host_rows(num_rows, global_batch, process_index, process_count)
  local = local_batch_size(global_batch, process_count)
  for lo in range(0, len(ids), local):
    yield ids[lo:lo + local], mask[lo:lo + local]
