"""Reads a prepared `stl_fashion` / `ctl_outfits` TFDS dataset as the trainer's tables and images.

The builders (`tfds_builders`) store the annotations of every example in `info.metadata` (in
generation order), the examples as TFRecord (streamed by `tfds.load`) and as ArrayRecord twins
(random access), and `info.metadata['record_of']`, the record of each generation index (TFDS
shuffles records when it writes them). So opening a dataset needs no pass over the images: the
tables are rebuilt from the metadata by the readers' own `assemble` (same indices as reading the
raw folder), and `TfdsImages` fetches the encoded bytes of one image by random access to its
ArrayRecord record (split, record index, position in the example), inside tf.data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from input_pipeline.readers import (
  ctl,
  stl,
  tfds_builders,  # noqa: F401  (registers stl_fashion, ctl_outfits)
)
from input_pipeline.readers.drops import DataError, DropReport


def load_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared dataset `name` (e.g. "stl_fashion" or "stl_fashion:1.0.0") in `data_dir`."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"no TFDS dataset named {name!r} (this project builds stl_fashion and "
                    "ctl_outfits)") from None
  if not builder.is_prepared():
    raise DataError(f"TFDS dataset {name} is not prepared in {builder.data_dir}: build it with "
                    f"`python -m input_pipeline.tools.tfds_build {name.split(':')[0]} "
                    f"--manual_dir=DIR --data_dir={data_dir or '~/tensorflow_datasets'}`")
  if tfds.core.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
    raise DataError(f"{builder.data_dir}: the trainer needs random access (ArrayRecord files), "
                    f"this dataset has {builder.info.file_format.value} only; rebuild it with "
                    f"`python -m input_pipeline.tools.tfds_build {name.split(':')[0]} "
                    "--overwrite ...` (it writes both)")
  return builder


def array_record_files(builder: tfds.core.DatasetBuilder, split: str) -> list[str]:
  """The ArrayRecord shards of `split`: the file format's own, or the TFRecords' twins."""
  names = builder.info.splits[split].filenames
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    names = [tfds_builders.array_record_name(n) for n in names]
  return [os.path.join(builder.data_dir, n) for n in names]


def _replay_drops(builder: tfds.core.DatasetBuilder, strict: bool) -> DropReport:
  """The builder's dropped records, as a DropReport (strict: the first one raises)."""
  report = DropReport(strict=strict)
  for d in builder.info.metadata.get("drops", []):
    report.drop(d["file"], d["line"], d["field"], d["reason"])
  return report


class TfdsImages:
  """Image id i -> bytes of feature `keys[i]`, value `positions[i]`, of record `records[i]`."""

  def __init__(self, builder: tfds.core.DatasetBuilder, locations: list[tuple[str, int, str, int]]):
    """`locations[i]` = (split, record index, feature key, position) of image i."""
    self._sources = {}
    self._keys = sorted({loc[2] for loc in locations})
    for split in sorted({loc[0] for loc in locations}):
      files = array_record_files(builder, split)
      self._sources[split] = array_record_data_source.ArrayRecordDataSource(files)
    self._splits = sorted(self._sources)
    # TFDS shuffles the records of a split when it writes them; `record_of` maps an example's
    # generation index (the metadata's order) to its record (identity for ordered datasets).
    record_of = builder.info.metadata.get("record_of", {})
    at = lambda s, r: record_of[s][r] if s in record_of else r
    self._table = np.array([(self._splits.index(s), at(s, r), self._keys.index(k), p)
                            for s, r, k, p in locations], np.int64).reshape(-1, 4)

  def __len__(self) -> int:
    return len(self._table)

  def bytes_of(self, index: int) -> bytes:
    split, record, key, position = self._table[int(index)]
    example = tf.train.Example.FromString(self._sources[self._splits[split]][int(record)])
    return example.features.feature[self._keys[key]].bytes_list.value[position]

  def read(self, index: tf.Tensor) -> tf.Tensor:
    data = tf.numpy_function(lambda i: np.array(self.bytes_of(i), object), [index], tf.string,
                             stateful=False)
    return tf.ensure_shape(data, [])


def load_stl(name: str, data_dir: str | None, *, strict: bool = False,
             category_map: Mapping[str, str] | None = None,
             test_fraction: float | None = None) -> tuple[stl.StlData, TfdsImages, TfdsImages]:
  """(StlData, scene images, product images) of a prepared `stl_fashion` dataset."""
  builder = load_builder(name, data_dir)
  meta = builder.info.metadata
  if test_fraction is not None and abs(meta["test_fraction"] - test_fraction) > 1e-9:
    raise DataError(f"{builder.data_dir} was split with test_fraction={meta['test_fraction']}; "
                    f"data.test_fraction={test_fraction} would move scenes across its splits")
  report = _replay_drops(builder, strict)
  rows, where = [], {}
  for split, examples in meta["examples"].items():
    for record, (scene, pairs) in enumerate(examples):
      where.setdefault(scene, (split, record, "scene/image", 0))
      for position, (line, product, box) in enumerate(pairs):
        rows.append((line, scene, product, box))
        where.setdefault(product, (split, record, "products/image", position))
  rows.sort(key=lambda r: r[0])  # file order, as the folder reader sees them
  data = stl.assemble(rows, meta["categories"], report, pairs_path=meta["pairs_file"],
                      category_map=category_map)
  scenes = TfdsImages(builder, [where[s] for s in data.scenes])
  products = TfdsImages(builder, [where[p] for p in data.products])
  return data, scenes, products


def load_ctl(name: str, data_dir: str | None, split: str, *, strict: bool = False,
             categories: list[str] | None = None) -> tuple[ctl.CtlData, TfdsImages]:
  """(CtlData, collage images) of one split of a prepared `ctl_outfits` dataset."""
  builder = load_builder(name, data_dir)
  meta = builder.info.metadata
  if split not in meta["examples"]:
    raise DataError(f"{builder.data_dir}: no split {split!r} (has {sorted(meta['examples'])})")
  path = meta["raw_files"][split]
  report = DropReport(strict=strict)
  for d in _replay_drops(builder, False).drops:
    if d.file == path:
      report.drop(d.file, d.line, d.field, d.reason)
  rows, where = [], {}
  for record, (sig, items) in enumerate(meta["examples"][split]):
    where[sig] = (split, record, "image", 0)
    rows += [(line, sig, tuple(box), label) for line, box, label in items]
  rows.sort(key=lambda r: r[0])
  data = ctl.assemble(rows, report, path=path, categories=categories)
  return data, TfdsImages(builder, [where[s] for s in data.outfits])
