"""tf.data pipelines: determinism, host sharding, resumption, negatives, crop and normalisation."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import batching, preprocess
from input_pipeline.readers import stl
from input_pipeline.scene import pipeline as scene_pipeline
from input_pipeline.scene import sampler as scene_sampler


@pytest.fixture(scope="module")
def sampler(stl_root):
  data = stl.read_stl(stl_root)
  split = scene_sampler.split_pairs(data, "train", 0.1, 0.2)
  return scene_sampler.TripletSampler(data, split, seed=3, num_negatives=2)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_negatives_share_the_category_and_avoid_the_scene(sampler):
  data = sampler._data
  epoch = sampler.epoch(0)
  neg = epoch["negative_index"]
  assert np.all(data.product_category[neg] == epoch["category"][:, None])
  assert np.all(neg != epoch["positive_index"][:, None])
  scene_products = {(s, p) for s, p in zip(data.pair_scene, data.pair_product)}
  assert not any((s, n) in scene_products
                 for s, row in zip(epoch["scene_index"], neg) for n in row)


def test_epochs_are_deterministic_and_differ(sampler):
  a, b, c = sampler.epoch(1), sampler.epoch(1), sampler.epoch(2)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["pair_index"], c["pair_index"])
  assert sorted(a["pair_index"]) == sorted(sampler.pairs)  # a permutation of all pairs


def test_hosts_read_disjoint_blocks_of_the_same_global_batches(sampler):
  single = _take(batching.epoch_batches(sampler, 8, 0, 0, 1), 5)
  host0 = _take(batching.epoch_batches(sampler, 8, 0, 0, 2), 5)
  host1 = _take(batching.epoch_batches(sampler, 8, 0, 1, 2), 5)
  for s, h0, h1 in zip(single, host0, host1):
    for k in s:
      np.testing.assert_array_equal(s[k], np.concatenate([h0[k], h1[k]]))


def test_resume_starts_at_the_exact_batch_across_epochs(sampler):
  steps_per_epoch = len(sampler) // 8
  fresh = _take(batching.epoch_batches(sampler, 8, 0, 0, 1), steps_per_epoch + 3)
  start = steps_per_epoch - 1  # the last batch of epoch 0, then into epoch 1
  resumed = _take(batching.epoch_batches(sampler, 8, start, 0, 1), 4)
  for a, b in zip(fresh[start:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_padded_eval_rows_cover_everything_once():
  rows = [batching.padded_host_rows(21, 8, p, 2) for p in range(2)]
  assert all(len(ids) == 12 for ids, _ in rows)  # 3 global batches of 8, 4 rows per host each
  real = np.concatenate([ids[mask] for ids, mask in rows])
  assert sorted(real) == list(range(21))


def test_train_batches_are_deterministic_and_shaped(sampler, stl_root):
  data = sampler._data
  paths = lambda sigs: [data.image_paths[s] for s in sigs]
  make = lambda: scene_pipeline.train_triplets(sampler, paths(data.scenes), paths(data.products),
                                               global_batch=4, image_size=24,
                                               normalization="imagenet")
  a, b = _take(make(), 2), _take(make(), 2)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  batch = a[0]
  assert batch["scene"].shape == (4, 24, 24, 3) and batch["negative"].shape == (4, 2, 24, 24, 3)
  assert batch["scene"].dtype == np.float32


def test_fused_jpeg_crop_equals_decode_then_slice(stl_root):
  data = stl.read_stl(stl_root)
  crops, _ = scene_sampler.complement_crops(data.pair_box[:5])
  for i, crop in enumerate(crops):
    raw = tf.io.read_file(data.image_paths[data.scenes[data.pair_scene[i]]])
    fused = preprocess.decode_and_crop(raw, tf.constant(crop)).numpy()
    full = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    y, x, h, w = preprocess.crop_window(tf.constant(crop), *full.shape[:2]).numpy()
    assert fused.shape == (h, w, 3)
    assert np.abs(fused.astype(int) - full[y:y + h, x:x + w].astype(int)).mean() < 2.0


def test_crop_window_rounds_outward_and_is_never_empty():
  window = lambda crop, h, w: tuple(preprocess.crop_window(tf.constant(crop), h, w).numpy())
  assert window([0.25, 0.0, 1.0, 0.51], 100, 40) == (0, 10, 51, 30)
  assert window([1.0, 1.0, 1.0, 1.0], 10, 10) == (9, 9, 1, 1)


def test_png_greyscale_and_rgba_decode_to_rgb(tmp_path):
  for mode in ("L", "RGBA", "RGB"):
    path = tmp_path / f"x_{mode}.png"
    Image.new(mode, (10, 8), 128 if mode == "L" else (10, 20, 30, 255)[:len(mode)]).save(path)
    out = preprocess.decode_and_crop(tf.io.read_file(str(path)),
                                     tf.constant([0.0, 0.0, 0.5, 1.0])).numpy()
    assert out.shape == (8, 5, 3)


def test_normalizations_by_hand():
  pixel = tf.constant([[[[200.0, 100.0, 50.0]]]])
  caffe = preprocess.normalize_caffe(pixel).numpy().ravel()
  np.testing.assert_allclose(caffe, [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-6)
  imagenet = preprocess.normalize_imagenet(pixel).numpy().ravel()
  np.testing.assert_allclose(imagenet, [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224,
                                        (50 / 255 - 0.406) / 0.225], rtol=1e-5)


def test_stoppable_batches_keep_order_and_close_early():
  pulled = []

  def numbers():
    for i in range(1000):
      pulled.append(i)
      yield {"x": np.full(2, i, np.int64)}

  spec = {"x": tf.TensorSpec([2], tf.int32)}
  it = batching.StoppableBatches(numbers, spec, prefetch=2)
  taken = [next(it) for _ in range(4)]
  assert [int(b["x"][0]) for b in taken] == [0, 1, 2, 3] and taken[0]["x"].dtype == np.int32
  it.close()  # the generator returns at its next batch; what was prefetched is drained
  assert len(pulled) < 12
  with pytest.raises(StopIteration):
    next(it)
