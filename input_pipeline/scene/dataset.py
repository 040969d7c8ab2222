"""The scene-based dataset as the trainer sees it: read once, split, cropped, ready to sample."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from input_pipeline import feature_cache
from input_pipeline.image_source import FileImages, ImageSource
from input_pipeline.readers import image_check, stl
from input_pipeline.readers.drops import DropReport
from input_pipeline.scene import sampler as scene_sampler


@dataclasses.dataclass
class SceneDataset:
  stl: stl.StlData
  train: scene_sampler.ScenePairs
  validation: scene_sampler.ScenePairs  # carved from the training scenes (may be empty)
  test: scene_sampler.ScenePairs
  scene_images: ImageSource  # image of scene id i (files, or a TFDS dataset)
  product_images: ImageSource  # image of product id i

  @property
  def categories(self) -> list[str]:
    return self.stl.categories

  @property
  def drops(self) -> DropReport:
    return self.stl.drops

  def _files(self, sigs: list[str]) -> list[str]:
    if not self.stl.image_paths:
      raise ValueError("the images come from a TFDS dataset, not files: use scene_images / "
                       "product_images")
    return [self.stl.image_paths[s] for s in sigs]

  @property
  def product_paths(self) -> list[str]:
    """The image file of each product (raw folders only)."""
    return self._files(self.stl.products)

  def scene_keys(self, split: scene_sampler.ScenePairs) -> list[str]:
    """Feature-cache keys of the cropped scenes of `split`'s pairs."""
    return [feature_cache.scene_crop_key(self.stl.scenes[self.stl.pair_scene[p]], crop)
            for p, crop in zip(split.pairs, split.crops)]

  def split(self, name: str) -> scene_sampler.ScenePairs:
    """The pairs of split `name` ('train', 'validation' or 'test')."""
    if name not in scene_sampler.SPLITS:
      raise ValueError(f"split must be one of {scene_sampler.SPLITS}, got {name!r}")
    return getattr(self, name)

  def training_products(self) -> np.ndarray:
    """Sorted ids of the products of the training pairs: the only ones training sees."""
    return np.unique(self.stl.pair_product[self.train.pairs])

  def product_popularity(self) -> np.ndarray:
    """[num_products] number of training pairs each product appears in."""
    return np.bincount(self.stl.pair_product[self.train.pairs],
                       minlength=len(self.stl.products)).astype(np.float64)

  def summary(self) -> str:
    too_small = sum(self.split(name).num_too_small for name in scene_sampler.SPLITS)
    return (f"{len(self.stl)} pairs, {len(self.stl.scenes)} scenes, {len(self.stl.products)} "
            f"products, {len(self.categories)} categories; train {len(self.train.pairs)} pairs, "
            f"validation {len(self.validation.pairs)}, test {len(self.test.pairs)}; crops "
            f"under the minimum: {too_small}; {self.stl.drops.summary()}")


def _read_folder(c: ml_collections.ConfigDict) -> tuple[stl.StlData, FileImages, FileImages]:
  """The raw folder `c.root`; with `c.check_images`, undecodable images are dropped too."""
  read = lambda strict, bad: stl.read_stl(c.root, images_dir=c.images_dir, strict=strict,
                                          category_map=dict(c.category_map) or None,
                                          bad_images=bad)
  # Found before training, not as a crash mid-epoch; results are cached per file.
  data = image_check.read_checked(read, lambda d: d.image_paths, c.root, strict=c.strict,
                                  check=c.check_images)
  sources = [FileImages([data.image_paths[s] for s in sigs])
             for sigs in (data.scenes, data.products)]
  return data, *sources


def load_scene_dataset(data_config: ml_collections.ConfigDict) -> SceneDataset:
  """Reads the STL data (`data.tfds_name`, else the folder `data.root`) and prepares the train,
  validation and test pairs."""
  c = data_config
  if c.tfds_name:
    from input_pipeline.readers import tfds_source  # TFDS only when asked for
    data, scenes, products = tfds_source.load_stl(
        c.tfds_name, c.tfds_dir, strict=c.strict, category_map=dict(c.category_map) or None,
        test_fraction=c.test_fraction)
    where = f"{c.tfds_name} in {c.tfds_dir or '~/tensorflow_datasets'}"
  elif c.root:
    data, scenes, products = _read_folder(c)
    where = c.root
  else:
    raise ValueError("no data: pass --config.data.root=DIR (an STL-format folder) or "
                     "--config.data.tfds_name=stl_fashion [--config.data.tfds_dir=DIR]")
  if len(data.drops):
    logging.warning("%s: %s", where, data.drops.summary())
  split = lambda name: scene_sampler.split_pairs(data, name, c.test_fraction, c.min_crop_fraction,
                                                 c.validation_fraction)
  return SceneDataset(stl=data, train=split("train"), validation=split("validation"),
                      test=split("test"), scene_images=scenes, product_images=products)
