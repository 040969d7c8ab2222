"""The product-based dataset (CTL format, Li et al. 2020) as the trainer sees it.

Items are crops of outfit collages. The training outfits can be subsampled (`data.train_fraction`,
a deterministic split by outfit signature); a validation share of them (`data.validation_fraction`,
by signature too) is held out of training for model selection; and training triplets either
sampled on the fly (`product.sampler`) or read from `triplet_train.tsv`, keeping those that
follow the paper's rule.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import ml_collections
import numpy as np

from input_pipeline import storage
from input_pipeline.image_source import FileImages, ImageRows, ImageSource
from input_pipeline.readers import ctl, image_check
from input_pipeline.readers.drops import DataError, DropReport
from input_pipeline.splits import VALIDATION_SALT, is_test_signature


def crops_of(data: ctl.CtlData) -> np.ndarray:
  """[num_items, 4] normalised (left, top, right, bottom) crops of CTL (x, y, w, h) boxes."""
  x, y, w, h = data.item_box.T
  return np.clip(np.stack([x, y, x + w, y + h], axis=1), 0.0, 1.0).astype(np.float32)


def outfit_images(data: ctl.CtlData) -> ImageSource:
  """The encoded collage of each outfit id: `data.images` (TFDS), else the collage files."""
  if data.images is not None:
    return data.images
  return FileImages([data.image_paths[sig] for sig in data.outfits])


def item_images(data: ctl.CtlData) -> ImageRows:
  """One row per item: its outfit's collage."""
  return ImageRows(outfit_images(data), data.item_outfit.astype(np.int64))


def items_by_outfit(data: ctl.CtlData) -> list[np.ndarray]:
  """Item ids of each outfit, in file order."""
  order = np.argsort(data.item_outfit, kind="stable")
  bounds = np.searchsorted(data.item_outfit[order], np.arange(len(data.outfits) + 1))
  return [order[bounds[o]:bounds[o + 1]] for o in range(len(data.outfits))]


def category_cooccurrence(data: ctl.CtlData, outfits: np.ndarray | None = None) -> np.ndarray:
  """[C, C] int64: how many outfits hold an item of category i and another item of category j
  (the diagonal counts outfits with two or more items of one category)."""
  num = len(data.categories)
  counts = np.zeros((num, num), np.int64)
  groups = items_by_outfit(data)
  for o in (range(len(groups)) if outfits is None else outfits):
    cats = np.bincount(data.item_category[groups[o]], minlength=num)
    present = cats > 0
    counts += np.outer(present, present).astype(np.int64)
    counts[np.diag_indices(num)] -= present & (cats < 2)  # one item does not pair with itself
  return counts


@dataclasses.dataclass
class ProductDataset:
  root: str
  train: ctl.CtlData
  test: ctl.CtlData
  train_outfits: np.ndarray  # ids of the training outfits kept by data.train_fraction
  train_fraction: float
  file_triplets: np.ndarray | None  # [T, 3] (anchor, positive, negative) train items, or None
  # ids (in `train`) of the outfits held out for validation, outside `train_outfits`
  validation_outfits: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int32))
  # Records dropped from triplet_train.tsv and fitb_eval.json (the raw files' are in train/test)
  other_drops: DropReport = dataclasses.field(default_factory=DropReport)
  # The questions of fitb_eval.json as test item ids, (questions, answers) with the correct
  # answer first; None when FITB is sampled (see `fitb_from_file`).
  fitb_file: tuple[list[list[int]], list[list[int]]] | None = None

  @property
  def categories(self) -> list[str]:
    return self.train.categories

  @property
  def drops(self) -> DropReport:
    """Every record dropped from raw_train.tsv, raw_test.tsv, triplet_train.tsv and
    fitb_eval.json, in that order (the trainer writes them to dropped_records.jsonl)."""
    return DropReport(drops=[*self.train.drops.drops, *self.test.drops.drops,
                             *self.other_drops.drops])

  def train_items(self) -> np.ndarray:
    """Items of the kept training outfits."""
    return np.flatnonzero(np.isin(self.train.item_outfit, self.train_outfits))

  @functools.cached_property
  def validation(self) -> ctl.CtlData:
    """The items of the validation outfits (a subset of `train`'s file, never trained on)."""
    return self.train.subset(np.flatnonzero(np.isin(self.train.item_outfit,
                                                    self.validation_outfits)))

  def split(self, name: str) -> ctl.CtlData:
    """The held-out items of `name`: 'test' (raw_test.tsv) or 'validation'."""
    if name == "test":
      return self.test
    if name == "validation":
      return self.validation
    raise ValueError(f"split={name!r}; choose 'test' or 'validation'")

  def cooccurrence(self) -> np.ndarray:
    return category_cooccurrence(self.train, self.train_outfits)

  def summary(self) -> str:
    triplet_text = ("sampled on the fly" if self.file_triplets is None
                    else f"{len(self.file_triplets)} from triplet_train.tsv")
    return (f"CTL {self.root}: {len(self.categories)} categories; train {len(self.train_outfits)}"
            f"/{len(self.train.outfits)} outfits (fraction {self.train_fraction}), "
            f"{len(self.train_items())} items; validation {len(self.validation_outfits)} "
            f"outfits; test {len(self.test.outfits)} outfits, "
            f"{len(self.test)} items; triplets {triplet_text}; train {self.train.drops.summary()}; "
            f"test {self.test.drops.summary()}")


FITB_FILE = "fitb_eval.json"
FITB_MODES = ("auto", "file", "sampled")


def fitb_from_file(root: str | os.PathLike, mode: str) -> bool:
  """Whether FITB questions come from root/fitb_eval.json (`eval.fitb`: 'file', or 'auto' when
  the file exists) rather than being sampled from the test outfits."""
  if mode not in FITB_MODES:
    raise ValueError(f"eval.fitb={mode!r}; choose from {FITB_MODES}")
  return mode == "file" or (mode == "auto" and (storage.path(root) / FITB_FILE).exists())


def load_product_dataset(data_config: ml_collections.ConfigDict,
                         fitb: str = "sampled") -> ProductDataset:
  """Reads raw_train.tsv and raw_test.tsv (and triplet_train.tsv, fitb_eval.json when asked:
  `data.triplets`, `fitb` as `eval.fitb`) under data.root, before anything trains, so that every
  dropped record is known at start-up."""
  tfds_name = data_config.get("tfds_name", "")
  if not data_config.root and not tfds_name:
    raise ValueError("data.root is empty: pass --config.data.root=DIR (a CTL-format folder) or "
                     "--config.data.tfds_name=ctl_outfits [--config.data.tfds_dir=DIR]")
  if tfds_name and (data_config.triplets == "file" or fitb == "file"):
    raise DataError(f"TFDS {tfds_name}: data.triplets='file' and eval.fitb='file' read "
                    "triplet_train.tsv and fitb_eval.json from a CTL folder (data.root)")
  if not 0.0 < data_config.train_fraction <= 1.0:
    raise ValueError(f"data.train_fraction={data_config.train_fraction} must be in (0, 1]")
  train, test = read_splits(data_config)
  keep = np.array([data_config.train_fraction >= 1.0 or is_test_signature(
      sig, data_config.train_fraction, salt="ctl-train-subset") for sig in train.outfits])
  validation_fraction = data_config.validation_fraction
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"data.validation_fraction={validation_fraction} must be in [0, 1)")
  held = np.array([validation_fraction > 0 and is_test_signature(
      sig, validation_fraction, salt=VALIDATION_SALT) for sig in train.outfits], bool)
  validation = np.flatnonzero(held).astype(np.int32)  # the same whatever train_fraction keeps
  keep &= ~held
  kept = np.flatnonzero(keep).astype(np.int32)
  if len(kept) == 0:
    raise DataError(f"{data_config.root}: data.train_fraction={data_config.train_fraction} "
                    f"keeps none of the {len(train.outfits)} training outfits")
  if data_config.triplets not in ("sample", "file"):
    raise ValueError(f"data.triplets={data_config.triplets!r}; choose 'sample' or 'file'")
  file_triplets = None
  other_drops = DropReport(strict=data_config.strict)
  if data_config.triplets == "file":
    file_triplets = read_triplet_indices(storage.path(data_config.root) / "triplet_train.tsv",
                                         train, keep, other_drops)
  fitb_file = None
  if not tfds_name and fitb_from_file(data_config.root, fitb):
    fitb_file = read_fitb_indices(storage.path(data_config.root) / FITB_FILE, test, other_drops)
  return ProductDataset(root=str(data_config.root or tfds_name), train=train, test=test,
                        train_outfits=kept,
                        train_fraction=float(data_config.train_fraction),
                        file_triplets=file_triplets, validation_outfits=validation,
                        other_drops=other_drops, fitb_file=fitb_file)


def read_splits(data_config: ml_collections.ConfigDict) -> tuple[ctl.CtlData, ctl.CtlData]:
  """raw_train.tsv and raw_test.tsv (test restricted to the training categories), with the
  items of missing or undecodable collages dropped (`image_check.read_checked`)."""
  c = data_config
  if c.get("tfds_name"):
    from input_pipeline.readers import tfds_source  # TFDS only when asked for
    train, train_images = tfds_source.load_ctl(c.tfds_name, c.tfds_dir, "train", strict=c.strict)
    test, test_images = tfds_source.load_ctl(c.tfds_name, c.tfds_dir, "test", strict=c.strict,
                                             categories=train.categories)
    return (dataclasses.replace(train, images=train_images),
            dataclasses.replace(test, images=test_images))

  def read(strict, bad):
    train = ctl.read_ctl(c.root, "train", images_dir=c.images_dir, strict=strict,
                         bad_images=bad)
    return train, ctl.read_ctl(c.root, "test", images_dir=c.images_dir, strict=strict,
                               categories=train.categories, bad_images=bad)

  def image_paths(splits):
    return {sig: path for split in splits for sig, path in split.image_paths.items()}

  train, test = image_check.read_checked(
      read, image_paths, c.root, strict=c.strict, check=c.check_images,
      num_drops=lambda splits: sum(len(split.drops) for split in splits))
  for split, data in (("train", train), ("test", test)):
    if len(data.drops):
      logging.warning("%s raw_%s.tsv: %s", c.root, split, data.drops.summary())
  return train, test


def read_triplet_indices(path: str | os.PathLike, train: ctl.CtlData, keep_outfit: np.ndarray,
                         report: DropReport) -> np.ndarray:
  """[T, 3] item ids of the triplets of `path` whose anchor outfit is kept.

  Triplets naming an item missing from raw_train.tsv, or breaking the paper's rule (anchor and
  positive of one outfit and different categories, the negative from another outfit), are
  dropped and reported.
  """
  rows = []
  for lineno, *items in ctl.read_triplets(path, report):
    try:
      a, p, n = (train.index_of(sig, box) for sig, box, _ in items)
    except KeyError:
      report.drop(path, lineno, "line", "item not in raw_train.tsv")
      continue
    o, c = train.item_outfit, train.item_category
    if o[a] != o[p] or c[a] == c[p] or o[n] == o[a]:
      report.drop(path, lineno, "line", "not (anchor, positive of one outfit and two "
                  "categories; negative from another outfit)")
      continue
    if keep_outfit[o[a]]:
      rows.append((a, p, n))
  if len(report):
    logging.warning("%s: %s", path, report.summary())
  if not rows:
    raise DataError(f"{path}: no usable triplets ({report.summary()})")
  return np.asarray(rows, np.int32)


def read_fitb_indices(path: str | os.PathLike, test: ctl.CtlData, report: DropReport
                      ) -> tuple[list[list[int]], list[list[int]]]:
  """(questions, answers) of fitb_eval.json as test item ids, the correct answer first;
  questions that are malformed or name an item raw_test.tsv lacks are dropped into `report`."""
  questions, answers = [], []
  for entry in ctl.read_fitb(path, report):
    try:
      q = [test.index_of(sig, box) for sig, box, _ in entry["question"]]
      a = [test.index_of(sig, box) for sig, box, _ in entry["answers"]]
    except KeyError:
      report.drop(path, None, f"[{entry['index']}]", "item not in raw_test.tsv")
      continue
    questions.append(q)
    answers.append(a)
  if len(report):
    logging.warning("%s: %s", path, report.summary())
  return questions, answers
