"""TFDS builders (stl_fashion, ctl_outfits) against the folder readers, and bad-image handling."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import smoke
from ctl_jax.trainer import run_log
from input_pipeline.readers import ctl, image_check, stl, tfds_builders, tfds_source
from input_pipeline.readers.drops import DataError
from input_pipeline.scene import dataset as scene_data
from input_pipeline.scene import pipeline as scene_pipeline
from input_pipeline.scene import sampler as scene_sampler
from input_pipeline.splits import is_test_signature
from input_pipeline.tools import synthetic_ctl, synthetic_stl


def _build(builder_cls, manual_dir, data_dir):
  builder = builder_cls(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope="module")
def small_stl(tmp_path_factory):
  """A small STL folder with broken images: truncated, garbage, plus CMYK/grey/RGBA that work."""
  root = tmp_path_factory.mktemp("stl_bad")
  synthetic_stl.write_stl_dataset(root, num_scenes=40, seed=5, scene_size=(64, 80),
                                  product_size=40, workers=1)
  data = stl.read_stl(root)
  scenes, products = data.scenes, data.products
  path = lambda sig: data.image_paths[sig]
  whole = open(path(scenes[1]), "rb").read()
  open(path(scenes[1]), "wb").write(whole[:len(whole) // 2])  # truncated JPEG
  open(path(products[2]), "wb").write(b"not an image at all")
  rgb = Image.open(path(products[3])).convert("RGB")
  rgb.convert("CMYK").save(path(products[3]), "JPEG")  # CMYK JPEG under .jpg: fine
  # Greyscale and RGBA PNGs under .jpg names: decoded by content, fine.
  Image.open(path(products[4])).convert("L").save(path(products[4]), "PNG")
  Image.open(path(products[5])).convert("RGBA").save(path(products[5]), "PNG")
  return root, {scenes[1], products[2]}


def test_image_check_finds_exactly_the_undecodable_files_and_caches(small_stl, tmp_path):
  root, broken = small_stl
  data = stl.read_stl(root)
  cache = tmp_path / "check.json"
  bad = image_check.check_images(data.image_paths, cache, progress=False)
  assert set(bad) == broken
  assert all("undecodable" in reason for reason in bad.values())
  assert image_check.check_images(data.image_paths, cache, progress=False) == bad  # from cache


def test_lenient_drops_pairs_of_broken_images_strict_names_them(small_stl, tmp_path):
  root, broken = small_stl
  config = smoke.get_config()
  config.data.root = str(root)
  folder = stl.read_stl(root)
  hit = sum(folder.scenes[s] in broken or folder.products[p] in broken
            for s, p in zip(folder.pair_scene, folder.pair_product))
  ds = scene_data.load_scene_dataset(config.data)
  assert len(ds.stl) == len(folder) - hit > 0
  assert sum("unusable image" in d.reason for d in ds.drops.drops) == hit
  assert not broken & (set(ds.stl.scenes) | set(ds.stl.products))
  run_log.write_drop_report(ds.drops, str(tmp_path))  # what the trainer leaves in its workdir
  written = [json.loads(line) for line in (tmp_path / run_log.DROPS_FILE).read_text().splitlines()]
  assert [(d["line"], d["reason"]) for d in written] == [(d.line, d.reason)
                                                         for d in ds.drops.drops]
  config.data.strict = True
  with pytest.raises(DataError, match=r"fashion\.json:\d+: field '(scene|product)': unusable"):
    scene_data.load_scene_dataset(config.data)


def test_stl_fashion_equals_the_folder_reader(small_stl, tmp_path):
  root, broken = small_stl
  builder = _build(tfds_builders.StlFashion, root, tmp_path)
  data, scene_images, product_images = tfds_source.load_stl("stl_fashion", str(tmp_path))
  folder = stl.read_stl(root, bad_images={s: "x" for s in broken})
  assert (data.scenes, data.products, data.categories) == (
      folder.scenes, folder.products, folder.categories)
  for name in ("product_category", "pair_scene", "pair_product", "pair_box", "pair_line"):
    np.testing.assert_array_equal(getattr(data, name), getattr(folder, name))
  assert len(data.drops) == len(folder.drops)
  for sigs, source in ((folder.scenes, scene_images), (folder.products, product_images)):
    for i, sig in enumerate(sigs):  # the bytes on disk, never re-encoded
      assert source.bytes_of(i) == open(folder.image_paths[sig], "rb").read()
  # Splits by scene signature: a scene never straddles train and test.
  split_scenes = {}
  for split in ("train", "test"):
    source = builder.as_data_source(split=split)  # ArrayRecord: random access, not as_dataset
    split_scenes[split] = {ex["scene"]["signature"].decode() for ex in source}
  assert not split_scenes["train"] & split_scenes["test"]
  assert split_scenes["test"] == {s for s in data.scenes if is_test_signature(s, 0.1)}
  assert split_scenes["train"] | split_scenes["test"] == set(data.scenes)


def test_trainer_reads_tfds_or_folder_by_config_with_identical_batches(small_stl, tmp_path):
  root, _ = small_stl
  _build(tfds_builders.StlFashion, root, tmp_path)
  config = smoke.get_config()
  config.data.root = str(root)
  from_folder = scene_data.load_scene_dataset(config.data)
  config.data.root = ""
  config.data.tfds_name, config.data.tfds_dir = "stl_fashion", str(tmp_path)
  from_tfds = scene_data.load_scene_dataset(config.data)
  np.testing.assert_array_equal(from_tfds.train.pairs, from_folder.train.pairs)
  np.testing.assert_array_equal(from_tfds.test.crops, from_folder.test.crops)
  batches = []
  for ds in (from_folder, from_tfds):
    sampler = scene_sampler.TripletSampler(ds.stl, ds.train, seed=0)
    it = scene_pipeline.train_triplets(sampler, ds.scene_images, ds.product_images,
                                       global_batch=8, image_size=32, normalization="imagenet")
    batches.append(next(it))
  for key in ("scene", "positive", "negative", "category"):
    np.testing.assert_array_equal(batches[0][key], batches[1][key])
  config.data.test_fraction = 0.2
  with pytest.raises(DataError, match="test_fraction"):
    scene_data.load_scene_dataset(config.data)


def test_ctl_outfits_keeps_published_splits_and_drops_broken_collages(tmp_path):
  root = tmp_path / "ctl"
  synthetic_ctl.write_ctl_dataset(root, num_outfits=24, seed=2, image_size=48, workers=1)
  train = ctl.read_ctl(root, "train")
  broken = train.outfits[3]
  open(train.image_paths[broken], "wb").write(b"\xff\xd8\xff garbage")
  _build(tfds_builders.CtlOutfits, root, tmp_path / "tfds")
  for split in ("train", "test"):
    data, images = tfds_source.load_ctl("ctl_outfits", str(tmp_path / "tfds"), split)
    folder = ctl.read_ctl(root, split, bad_images={broken: "undecodable"})
    assert (data.outfits, data.categories, data.item_keys) == (
        folder.outfits, folder.categories, folder.item_keys)
    np.testing.assert_array_equal(data.item_box, folder.item_box)
    assert [d.line for d in data.drops.drops] == [d.line for d in folder.drops.drops]
    for i, sig in enumerate(data.outfits):
      assert images.bytes_of(i) == open(folder.image_paths[sig], "rb").read()
  assert broken not in data.outfits and broken in train.outfits
  dropped = tfds_source.load_ctl("ctl_outfits", str(tmp_path / "tfds"), "train")[0].drops
  assert sum(broken in d.reason for d in dropped.drops) == int(np.sum(
      train.item_outfit == train.outfits.index(broken)))
  image = tf.io.decode_image(images.read(tf.constant(0)), channels=3)
  assert image.shape[-1] == 3


def test_tfds_load_as_dataset_shuffle_files_and_data_source_with_defaults(small_stl, tmp_path):
  """Like any TFDS dataset: tfds.load and as_dataset stream it (TFRecord), shuffle_files works,
  as_data_source reads it at random (the ArrayRecord twins), with the papers' metadata."""
  root, _ = small_stl
  _build(tfds_builders.StlFashion, root, tmp_path)
  builder = tfds.builder("stl_fashion", data_dir=str(tmp_path))
  info = builder.info
  assert "Complete the Look: Scene-based Complementary" in info.citation
  assert "Kang" in info.citation and "Shop The Look" in info.description
  assert info.homepage == "https://github.com/kang205/STL-Dataset"
  for split in ("train", "test"):
    streamed = [(int(ex["index"]), ex["scene"]["signature"].decode()) for ex in tfds.as_numpy(
        tfds.load("stl_fashion", data_dir=str(tmp_path), split=split))]
    shuffled = [(int(ex["index"]), ex["scene"]["signature"].decode()) for ex in tfds.as_numpy(
        builder.as_dataset(split=split, shuffle_files=True))]
    # (a fresh builder: as_data_source switches its builder's file format to ArrayRecord)
    source = tfds.builder("stl_fashion", data_dir=str(tmp_path)).as_data_source(split=split)
    records = [(int(source[r]["index"]), source[r]["scene"]["signature"].decode())
               for r in range(len(source))]
    assert len(streamed) == info.splits[split].num_examples > 0
    assert sorted(streamed) == sorted(shuffled) == sorted(records)
    # Generation order (the metadata's, the trainer's) -> record, whatever TFDS's shuffle did.
    expected = [sig for sig, _ in info.metadata["examples"][split]]
    record_of = info.metadata["record_of"][split]
    assert [records[record_of[i]][1] for i in range(len(expected))] == expected
    assert [i for i, _ in sorted(records)] == list(range(len(expected)))


def test_ctl_outfits_has_the_kdd_citation_and_streams(tmp_path):
  root = tmp_path / "ctl"
  synthetic_ctl.write_ctl_dataset(root, num_outfits=12, seed=3, image_size=40, workers=1)
  _build(tfds_builders.CtlOutfits, root, tmp_path / "tfds")
  builder = tfds.builder("ctl_outfits", data_dir=str(tmp_path / "tfds"))
  info = builder.info
  assert "Bootstrapping Complete The Look at Pinterest" in info.citation and "Li, Eileen" in (
      info.citation)
  assert "Complete The Look" in info.description
  assert info.homepage == "https://github.com/eileenforwhat/complete-the-look-dataset"
  outfits = set(ctl.read_ctl(root, "train").outfits)
  for shuffle in (False, True):
    streamed = [ex["signature"].decode() for ex in tfds.as_numpy(tfds.load(
        "ctl_outfits", data_dir=str(tmp_path / "tfds"), split="train", shuffle_files=shuffle))]
    assert sorted(streamed) == sorted(outfits)
  source = tfds.builder("ctl_outfits", data_dir=str(tmp_path / "tfds")).as_data_source("train")
  record_of = info.metadata["record_of"]["train"]
  for index, (sig, _) in enumerate(info.metadata["examples"]["train"]):
    example = source[record_of[index]]  # random access by generation index
    assert (example["signature"].decode(), int(example["index"])) == (sig, index)


def test_product_task_names_a_missing_tfds_dataset_and_its_dir(tmp_path):
  from configs import product_smoke
  from input_pipeline.product import dataset as product_data
  config = product_smoke.get_config()
  config.data.root = ""
  config.data.tfds_name, config.data.tfds_dir = "ctl_outfits", str(tmp_path / "empty")
  with pytest.raises(DataError) as error:
    product_data.load_product_dataset(config.data)
  message = str(error.value)
  assert "\n" not in message
  assert "ctl_outfits is not prepared in" in message and str(tmp_path / "empty") in message
  assert "tfds_build ctl_outfits" in message


def test_product_task_reads_ctl_outfits_with_the_folders_tables_and_batches(tmp_path):
  from configs import product_smoke
  from ctl_jax.product.task import ProductTask
  from input_pipeline.product import dataset as product_data
  root = tmp_path / "ctl"
  synthetic_ctl.write_ctl_dataset(root, num_outfits=40, seed=4, image_size=48, workers=1)
  _build(tfds_builders.CtlOutfits, root, tmp_path / "tfds")
  config = product_smoke.get_config()
  config.data.root = str(root)
  config.input.batch_size = 4
  loaded = {"folder": product_data.load_product_dataset(config.data)}
  config.data.root = ""
  config.data.tfds_name, config.data.tfds_dir = "ctl_outfits", str(tmp_path / "tfds")
  loaded["tfds"] = product_data.load_product_dataset(config.data)
  folder, from_tfds = loaded["folder"], loaded["tfds"]
  for split in ("train", "test"):
    a, b = getattr(folder, split), getattr(from_tfds, split)
    assert (a.outfits, a.categories, a.item_keys) == (b.outfits, b.categories, b.item_keys)
    np.testing.assert_array_equal(a.item_box, b.item_box)
  np.testing.assert_array_equal(folder.train_outfits, from_tfds.train_outfits)
  batches = [next(iter(ProductTask().train_batches(config, ds, 0, None)))
             for ds in loaded.values()]
  for key in ("anchor", "positive", "negative", "anchor_category"):
    np.testing.assert_array_equal(batches[0][key], batches[1][key])
  # The feature cache's item list reads the same images from either source.
  rows = {k: ProductTask().cache_items(ds)["items"][1] for k, ds in loaded.items()}
  first = [next(batching_eval(r[len(r) - 3:])) for r in rows.values()]
  np.testing.assert_array_equal(first[0]["image"], first[1]["image"])
  config.data.tfds_name = "no_such_dataset"
  with pytest.raises(DataError, match="no TFDS dataset named 'no_such_dataset'"):
    product_data.load_product_dataset(config.data)


def batching_eval(rows):
  from input_pipeline import batching
  return batching.eval_images(rows, None, {}, global_batch=3, image_size=32,
                              normalization="imagenet").as_numpy_iterator()
