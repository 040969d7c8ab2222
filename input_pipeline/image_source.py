"""Where the input pipeline gets image bytes: files on disk or a prepared TFDS dataset.

The tf.data pipelines address images by an integer id and ask an `ImageSource` for the encoded
bytes of that id; decoding, cropping and resizing are the same whatever the source. Two sources:
`FileImages` (one file per id, the raw folders) and `tfds_source.TfdsImages` (random access into
a TFDS dataset's ArrayRecord files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import tensorflow as tf

from input_pipeline import preprocess


class ImageSource(Protocol):
  """Encoded image bytes by integer id, inside tf.data."""

  def __len__(self) -> int:
    ...

  def read(self, index: tf.Tensor) -> tf.Tensor:
    """Scalar int id -> scalar tf.string of encoded image bytes (JPEG, PNG, ...)."""
    ...


class FileImages:
  """Id i is the file `paths[i]`."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)
    self._paths = tf.constant(self.paths if self.paths else [""], tf.string)

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: tf.Tensor) -> tf.Tensor:
    return preprocess.read_file(tf.gather(self._paths, index))


class ConcatImages:
  """Ids 0..n0-1 are `sources[0]`'s, the next n1 `sources[1]`'s, and so on."""

  def __init__(self, sources: Sequence[ImageSource]):
    self.sources = list(sources)
    self._starts = np.cumsum([0] + [len(s) for s in self.sources])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def read(self, index: tf.Tensor) -> tf.Tensor:
    index = tf.cast(index, tf.int64)
    starts = tf.constant(self._starts[1:-1], tf.int64)
    which = tf.cast(tf.searchsorted(starts, tf.reshape(index, [1]), side="right")[0], tf.int32)
    branches = [lambda s=s, lo=int(lo): s.read(index - lo)
                for s, lo in zip(self.sources, self._starts[:-1])]
    return tf.switch_case(which, branches) if len(branches) > 1 else branches[0]()


@dataclasses.dataclass
class ImageRows:
  """One image per row: `source` ids, e.g. the scene of every test pair (ids may repeat)."""

  source: ImageSource
  ids: np.ndarray  # [rows] int

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, rows: slice) -> ImageRows:
    return ImageRows(self.source, self.ids[rows])


def as_source(images: ImageSource | Sequence[str]) -> ImageSource:
  """A source as is; a list of file paths as `FileImages`."""
  if isinstance(images, (list, tuple, np.ndarray)):
    return FileImages([str(p) for p in images])
  return images


def as_rows(images: ImageRows | Sequence[str]) -> ImageRows:
  """Rows as they are; a list of file paths (one per row) as rows of `FileImages`."""
  if isinstance(images, ImageRows):
    return images
  source = FileImages([str(p) for p in images])
  return ImageRows(source, np.arange(len(source), dtype=np.int64))
