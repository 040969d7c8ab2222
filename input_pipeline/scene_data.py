"""The scene-based dataset as the trainer sees it: read once, split, cropped, ready to sample."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from input_pipeline import feature_cache, stl, triplets


@dataclasses.dataclass
class SceneDataset:
  stl: stl.StlData
  train: triplets.ScenePairs
  test: triplets.ScenePairs

  @property
  def categories(self) -> list[str]:
    return self.stl.categories

  @property
  def scene_paths(self) -> list[str]:
    return [self.stl.image_paths[s] for s in self.stl.scenes]

  @property
  def product_paths(self) -> list[str]:
    return [self.stl.image_paths[p] for p in self.stl.products]

  def scene_keys(self, split: triplets.ScenePairs) -> list[str]:
    """Feature-cache keys of the cropped scenes of `split`'s pairs."""
    return [feature_cache.scene_crop_key(self.stl.scenes[self.stl.pair_scene[p]], crop)
            for p, crop in zip(split.pairs, split.crops)]

  def product_popularity(self) -> np.ndarray:
    """[num_products] number of training pairs each product appears in."""
    return np.bincount(self.stl.pair_product[self.train.pairs],
                       minlength=len(self.stl.products)).astype(np.float64)

  def summary(self) -> str:
    return (f"{len(self.stl)} pairs, {len(self.stl.scenes)} scenes, {len(self.stl.products)} "
            f"products, {len(self.categories)} categories; train {len(self.train.pairs)} pairs, "
            f"test {len(self.test.pairs)} pairs; crops under the minimum: "
            f"{self.train.num_too_small + self.test.num_too_small}; {self.stl.drops.summary()}")


def load_scene_dataset(data_config: ml_collections.ConfigDict) -> SceneDataset:
  """Reads `data_config.root` (STL format) and prepares the train and test pairs."""
  if data_config.format != "stl":
    raise ValueError(f"data.format={data_config.format!r}: the scene task reads 'stl' folders")
  if not data_config.root:
    raise ValueError("data.root is empty: pass --config.data.root=DIR (an STL-format folder)")
  data = stl.read_stl(data_config.root, images_dir=data_config.images_dir,
                      strict=data_config.strict,
                      category_map=dict(data_config.category_map) or None)
  if len(data.drops):
    logging.warning("%s: %s", data_config.root, data.drops.summary())
  split = lambda name: triplets.split_pairs(data, name, data_config.test_fraction,
                                            data_config.min_crop_fraction)
  return SceneDataset(stl=data, train=split("train"), test=split("test"))
