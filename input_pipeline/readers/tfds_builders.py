"""TFDS builders of Pinterest's public releases: `stl_fashion` (Shop The Look) and `ctl_outfits`
(Complete The Look), built offline from a manual folder of annotations and images.

    python -m input_pipeline.tools.tfds_build stl_fashion --manual_dir=stl-fashion --data_dir=tfds
    python -m input_pipeline.tools.tfds_build ctl_outfits --manual_dir=ctl --data_dir=tfds

(`input_pipeline.tools.tfds_build` is `tfds build` with these builders imported; where the
`tfds` command itself runs, `tfds build --imports=input_pipeline.readers.tfds_builders
stl_fashion ...` is the same.) The manual folders are the raw layouts the folder reader takes:
`fashion.json`, `fashion-cat.json` and `images/` for STL; `raw_train.tsv`, `raw_test.tsv` and
`images/` for CTL.

Examples are self-contained, one per photo:
  stl_fashion  a scene: its `scene` {signature, image} and its `products` [{signature, image,
               category, category_path, box (left, top, right, bottom as published), bbox, line}]
  ctl_outfits  an outfit collage: {signature, image, items [{box (x, y, w, h as published), bbox,
               label, line}]}
`box` keeps the published numbers exactly (float64); `bbox` is the same box as a
tfds.features.BBoxFeature (clipped to [0, 1]) for visualisation. Image bytes are stored as they
were on disk (JPEG, PNG, ...; never re-encoded). Splits: STL scenes go to `test` when
`splits.is_test_signature(scene, 0.1)`, as the folder reader splits them, so a scene never
straddles splits; CTL keeps the published split of raw_train.tsv / raw_test.tsv (an outfit listed
in both stays in train only, and the test row is reported as dropped).

Bad records are handled as by the folder readers (lenient): malformed or invalid rows, missing
and undecodable images (`image_check`) are left out, and every dropped record is kept in the
dataset's metadata (`info.metadata['drops']`, with file, line, field and reason).

Formats, shuffling and random access. TFDS 4.9's `as_dataset` / `tfds.load` stream TFRecord
only (its ArrayRecord adapter has no tf.data reader), and ArrayRecord is what gives random access
(`as_data_source`, the trainer). So each split is written twice: TFRecord shards, the dataset's
`file_format` (what `tfds.load` and `as_dataset` read with the defaults, `shuffle_files=True`
included), and their ArrayRecord twins, the same serialized examples in the same order, recorded
as an alternative file format (`add_array_record_copy`; TFDS's own `convert_format` needs Apache
Beam). The builders do not set `disable_shuffling`: TFDS refuses `shuffle_files=True` on such a
dataset, and a TFDS dataset should shuffle like any other. TFDS therefore shuffles examples
across records when it writes them; to keep every example findable by (split, generation
index), each example carries an `index` feature (its position in generation order, the order of
`info.metadata['examples']`) and `info.metadata['record_of'][split][index]` is its record. With
these `tfds_source` opens a dataset for the trainer without a pass over the images: it rebuilds
the annotation tables from the metadata and fetches the bytes of any scene, product or collage
by (split, record, position) from the ArrayRecords.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.readers import ctl, image_check, stl
from input_pipeline.readers.drops import DataError, DropReport
from input_pipeline.splits import is_test_signature

STL_TEST_FRACTION = 0.1  # the trainer's default data.test_fraction
DEFAULT_FILE_FORMAT = "tfrecord"  # what tfds.load / as_dataset stream (ArrayRecord cannot)
# Images stored as found (JPEG, PNG, GIF, BMP, WebP), decoded to RGB: no re-encoding.
_IMAGE = dict(shape=(None, None, 3), encoding_format=None)


STL_DESCRIPTION = """\
Shop The Look (STL-Fashion), Pinterest's release for scene-based complementary product
recommendation: fashion scene photos, each with the products it shows (signature, category,
bounding box). Complete the Look trains a model to rank products of other categories that go
with a scene. One example per scene, with its products; images as published (not re-encoded).
"""
STL_CITATION = """\
@inproceedings{kang2019complete,
  title={Complete the Look: Scene-based Complementary Product Recommendation},
  author={Kang, Wang-Cheng and Kim, Eric and Leskovec, Jure and Rosenberg, Charles and
          McAuley, Julian},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
             Recognition (CVPR)},
  year={2019}
}
"""
CTL_DESCRIPTION = """\
Complete The Look, Pinterest's release for product-based complementary recommendation: outfit
collages, each with the bounding boxes and category labels of its items (raw_train.tsv,
raw_test.tsv). One example per collage, with its items; images as published.
"""
CTL_CITATION = """\
@inproceedings{li2020bootstrapping,
  title={Bootstrapping Complete The Look at Pinterest},
  author={Li, Eileen and Kim, Eric and Zhai, Andrew and Beal, Josh and Gu, Kunlong},
  booktitle={Proceedings of the 26th ACM SIGKDD International Conference on Knowledge
             Discovery \\& Data Mining},
  year={2020}
}
"""


def _drops_metadata(report: DropReport) -> list[dict]:
  return [{"file": d.file, "line": d.line, "field": d.field, "reason": d.reason}
          for d in report.drops]


def _bbox(top: float, left: float, bottom: float, right: float) -> tfds.features.BBox:
  clip = lambda v: float(min(max(v, 0.0), 1.0))
  return tfds.features.BBox(ymin=clip(top), xmin=clip(left), ymax=clip(bottom), xmax=clip(right))


def _check_images(root: Path, paths: dict[str, str]) -> dict[str, str]:
  return image_check.check_images(paths, image_check.default_cache_file(root))


def add_array_record_copy(builder: tfds.core.DatasetBuilder) -> None:
  """Writes the ArrayRecord twin of every TFRecord shard of a prepared dataset (the same
  serialized examples, in the same order) and records it as an alternative file format, so that
  `as_dataset` / `tfds.load` stream the TFRecords and `as_data_source` and the trainer read the
  ArrayRecords at random. (TFDS's own `convert_format` does this through Apache Beam.)"""
  info = builder.info
  if info.file_format != tfds.core.FileFormat.TFRECORD:
    return
  writer = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[tfds.core.FileFormat.ARRAY_RECORD]
  record_of = {}
  for name, split in info.splits.items():
    order = []  # generation index of each record, in file order

    def records(source, order=order):
      for r in tf.data.TFRecordDataset(str(source)).as_numpy_iterator():
        order.append(tf.train.Example.FromString(r).features.feature["index"].int64_list.value[0])
        yield None, r
    for filename in split.filenames:
      source = Path(builder.data_dir) / filename
      writer.write_examples(array_record_name(source), records(source))
    position = np.empty(len(order), np.int64)
    position[np.asarray(order, np.int64)] = np.arange(len(order))
    record_of[name] = position.tolist()
  info.metadata["record_of"] = record_of  # generation index -> record (TFDS shuffled them)
  if tfds.core.FileFormat.ARRAY_RECORD not in info.alternative_file_formats:
    info.add_alternative_file_format(tfds.core.FileFormat.ARRAY_RECORD)
  info.write_to_directory(builder.data_dir)


def array_record_name(tfrecord_file: str | os.PathLike) -> str:
  """`name-train.tfrecord-00000-of-00001` -> `name-train.array_record-00000-of-00001`."""
  text = os.fspath(tfrecord_file)
  head, sep, tail = text.rpartition(".tfrecord-")
  if not sep:
    raise ValueError(f"{text}: not a TFDS TFRecord shard name")
  return f"{head}.array_record-{tail}"


_ALTERNATIVES = {"tfrecord": [tfds.core.FileFormat.ARRAY_RECORD], "array_record": []}


class _RandomAccessBuilder(tfds.core.GeneratorBasedBuilder):
  """Examples kept in generation order, stored twice: TFRecord (the file format, streamed by
  `tfds.load`) and ArrayRecord (an alternative format, for random access). `file_format=
  'array_record'` stores the ArrayRecords only (datasets built before both were written)."""

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    self._requested_format = str(getattr(file_format, "value", file_format)
                                 or DEFAULT_FILE_FORMAT)
    super().__init__(file_format=file_format or DEFAULT_FILE_FORMAT, **kwargs)

  def _file_format_name(self) -> str:
    return self._requested_format if self._requested_format in _ALTERNATIVES else "array_record"

  def download_and_prepare(self, *args, **kwargs):
    super().download_and_prepare(*args, **kwargs)
    add_array_record_copy(self)


class StlFashion(_RandomAccessBuilder):
  """Shop The Look (Kang et al. 2019): scenes with the products they show."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Scenes with products, images as found, drops in metadata.",
                   "1.1.0": "TFRecord (streamed by tfds.load, shuffle_files) and ArrayRecord "
                            "(random access) files; an `index` feature (generation order)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put Pinterest's STL release in the manual folder: fashion.json, fashion-cat.json and images/
  (<sig>.jpg, flat or nested ab/cd/ef/<sig>.jpg; `python run.py download-images` fetches them).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    product = {
        "signature": tfds.features.Text(),
        "image": tfds.features.Image(**_IMAGE),
        "category": tfds.features.Text(),  # short label (last segment of the path)
        "category_path": tfds.features.Text(),
        "box": tfds.features.Tensor(shape=(4,), dtype=np.float64),  # left, top, right, bottom
        "bbox": tfds.features.BBoxFeature(),
        "line": np.int32,  # line of the pair in fashion.json
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "index": np.int64,  # position in generation order (the metadata's order)
            "scene": {"signature": tfds.features.Text(), "image": tfds.features.Image(**_IMAGE)},
            "products": tfds.features.Sequence(product),
        }),
        description=STL_DESCRIPTION,
        homepage="https://github.com/kang205/STL-Dataset",
        citation=STL_CITATION,
        metadata=tfds.core.MetadataDict(),
        # the ArrayRecord twins `add_array_record_copy` writes (a dataset read back from its
        # folder takes this list from the code, not from dataset_info.json)
        alternative_file_formats=_ALTERNATIVES[self._file_format_name()],
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    data = stl.read_stl(root)
    bad = _check_images(root, data.image_paths)
    if bad:
      data = stl.read_stl(root, bad_images=bad)
    report = DropReport()
    cat_paths = stl.read_category_map(root / stl.CATEGORIES_FILE, report)
    kept = set(data.pair_line.tolist())
    by_scene: dict[str, list] = {}
    for line, scene, product, box in stl.read_pairs(root / stl.PAIRS_FILE, report):
      if line in kept:
        by_scene.setdefault(scene, []).append((line, product, box))
    splits = {"train": [], "test": []}
    for scene, pairs in by_scene.items():  # scenes in order of first appearance
      test = is_test_signature(scene, STL_TEST_FRACTION)
      splits["test" if test else "train"].append((scene, pairs))
    self.info.metadata.update({
        "format": "stl", "pairs_file": str(root / stl.PAIRS_FILE),
        "test_fraction": STL_TEST_FRACTION,
        "categories": {p: cat_paths[p] for p in data.products},
        # Per split, in record order: [scene, [[line, product, [l, t, r, b]], ...]].
        "examples": {k: [[s, [[line, p, box] for line, p, box in pairs]] for s, pairs in v]
                     for k, v in splits.items()},
        "drops": _drops_metadata(data.drops),
    })
    logging.info("stl_fashion from %s: %d scenes, %d pairs; %s", root, len(by_scene), len(kept),
                 data.drops.summary())
    paths = data.image_paths
    return {name: self._generate_examples(scenes, paths, cat_paths)
            for name, scenes in splits.items() if scenes}

  def _generate_examples(self, scenes, paths, cat_paths):
    for key, (scene, pairs) in enumerate(scenes):
      products = []
      for line, product, (left, top, right, bottom) in pairs:
        products.append({
            "signature": product, "image": paths[product],
            "category": stl.category_label(cat_paths[product]),
            "category_path": cat_paths[product], "box": [left, top, right, bottom],
            "bbox": _bbox(top, left, bottom, right), "line": line})
      yield key, {"index": key, "scene": {"signature": scene, "image": paths[scene]},
                  "products": products}


class CtlOutfits(_RandomAccessBuilder):
  """Complete The Look (Li et al. 2020): outfit collages with their items."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Outfits with items, images as found, drops in metadata.",
                   "1.1.0": "TFRecord (streamed by tfds.load, shuffle_files) and ArrayRecord "
                            "(random access) files; an `index` feature (generation order)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put Pinterest's CTL release in the manual folder: raw_train.tsv, raw_test.tsv and images/
  (<sig>.jpg, flat or nested ab/cd/ef/<sig>.jpg; `python run.py download-images` fetches them).
  """
  SPLITS = ("train", "test")

  def _info(self) -> tfds.core.DatasetInfo:
    item = {
        "box": tfds.features.Tensor(shape=(4,), dtype=np.float64),  # x, y, w, h as published
        "bbox": tfds.features.BBoxFeature(),
        "label": tfds.features.Text(),
        "line": np.int32,  # line of the item in raw_<split>.tsv
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "index": np.int64,  # position in generation order (the metadata's order)
            "signature": tfds.features.Text(),
            "image": tfds.features.Image(**_IMAGE),
            "items": tfds.features.Sequence(item),
        }),
        description=CTL_DESCRIPTION,
        homepage="https://github.com/eileenforwhat/complete-the-look-dataset",
        citation=CTL_CITATION,
        metadata=tfds.core.MetadataDict(),
        # the ArrayRecord twins `add_array_record_copy` writes (a dataset read back from its
        # folder takes this list from the code, not from dataset_info.json)
        alternative_file_formats=_ALTERNATIVES[self._file_format_name()],
    )

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    names = [s for s in self.SPLITS if (root / f"raw_{s}.tsv").exists()]
    if not names:
      raise DataError(f"{root}: neither raw_train.tsv nor raw_test.tsv (the CTL raw files)")
    splits, drops, files, paths = {}, [], {}, {}
    for name in names:
      data = ctl.read_ctl(root, name)
      bad = _check_images(root, data.image_paths)
      if bad:
        data = ctl.read_ctl(root, name, bad_images=bad)
      files[name] = str(root / f"raw_{name}.tsv")
      kept = set(data.item_line.tolist())
      report = data.drops
      outfits: dict[str, list] = {}
      for line, sig, box, label in ctl.read_raw(root / f"raw_{name}.tsv", DropReport()):
        if line not in kept:
          continue
        if any(sig in other for other in splits.values()):
          report.drop(files[name], line, "image_signature",
                      f"outfit {sig} is also in an earlier split: an outfit never straddles splits")
          continue
        outfits.setdefault(sig, []).append((line, list(box), label))
      splits[name] = outfits
      paths.update(data.image_paths)
      drops += _drops_metadata(report)
      logging.info("ctl_outfits %s from %s: %d outfits, %d items; %s", name, files[name],
                   len(outfits), sum(map(len, outfits.values())), report.summary())
    self.info.metadata.update({
        "format": "ctl", "raw_files": files,
        # Per split, in record order: [signature, [[line, [x, y, w, h], label], ...]].
        "examples": {k: [[s, items] for s, items in v.items()] for k, v in splits.items()},
        "drops": drops,
    })
    return {name: self._generate_examples(list(outfits.items()), paths)
            for name, outfits in splits.items() if outfits}

  def _generate_examples(self, outfits, paths):
    for key, (sig, items) in enumerate(outfits):
      yield key, {
          "index": key, "signature": sig, "image": paths[sig],
          "items": [{"box": box, "bbox": _bbox(box[1], box[0], box[1] + box[3], box[0] + box[2]),
                     "label": label, "line": line} for line, box, label in items]}
