"""Training negatives: only training products, never the scene's own, skipped only when none is
left; evaluation candidates know which positives are unseen; the oracle ranks by latent style."""

import numpy as np
import pytest

from ctl_jax import oracle
from input_pipeline.readers import stl
from input_pipeline.readers.drops import DropReport
from input_pipeline.scene import sampler as scene_sampler


def _data(pairs, product_category):
  """StlData of (scene, product) index pairs."""
  scenes = sorted({s for s, _ in pairs})
  return stl.StlData(
      scenes=[f"s{i}" for i in range(max(scenes) + 1)],
      products=[f"p{i}" for i in range(len(product_category))], categories=["a", "b"],
      product_category=np.array(product_category, np.int32),
      pair_scene=np.array([s for s, _ in pairs], np.int32),
      pair_product=np.array([p for _, p in pairs], np.int32),
      pair_box=np.tile(np.array([[0.2, 0.2, 0.4, 0.4]], np.float32), (len(pairs), 1)),
      image_paths={}, drops=DropReport())


def test_a_category_held_by_the_scene_has_no_negative():
  # Category 'a' has products 0, 1, 2; scene 0 wears 0 and 1, scene 1 wears 2 (and 3 of 'b').
  data = _data([(0, 0), (0, 1), (1, 2), (1, 3)], [0, 0, 0, 1])
  sampler = scene_sampler.NegativeSampler(data)
  # Pair 0 (scene 0, product 0): product 2 is left. Pair 3 (product 3): 'b' has only product 3.
  np.testing.assert_array_equal(sampler.can_sample(np.arange(4)), [True, True, True, False])
  negatives = sampler.sample(np.array([0, 1]), 50, np.random.default_rng(0))
  assert np.all(negatives == 2)
  # With the pool cut to the products of scene 0, scene 0's pairs have nothing left.
  pooled = scene_sampler.NegativeSampler(data, pool=np.array([0, 1]))
  np.testing.assert_array_equal(pooled.can_sample(np.arange(3)), [False, False, True])


def test_negatives_come_only_from_training_products(stl_root):
  data = stl.read_stl(stl_root)
  train = scene_sampler.split_pairs(data, "train", 0.2, 0.2, validation_fraction=0.2)
  sampler = scene_sampler.TripletSampler(data, train, seed=0, num_negatives=4)
  training_products = set(data.pair_product[train.pairs].tolist())
  held_out = set(range(len(data.products))) - training_products
  assert held_out  # the test and validation splits have products of their own
  epoch = sampler.epoch(0)
  assert set(np.ravel(epoch["negative_index"]).tolist()) <= training_products
  own = {(s, p) for s, p in zip(data.pair_scene.tolist(), data.pair_product.tolist())}
  assert not any((s, n) in own for s, row in zip(epoch["scene_index"].tolist(),
                                                   epoch["negative_index"].tolist()) for n in row)


def test_validation_split_is_carved_from_training_scenes(stl_root):
  data = stl.read_stl(stl_root)
  splits = {name: scene_sampler.split_pairs(data, name, 0.2, 0.0, validation_fraction=0.25)
            for name in scene_sampler.SPLITS}
  scenes = {name: set(data.pair_scene[s.pairs].tolist()) for name, s in splits.items()}
  assert all(scenes.values())
  assert not scenes["train"] & scenes["validation"] and not scenes["validation"] & scenes["test"]
  assert not scenes["train"] & scenes["test"]
  # The test split does not move when validation is carved out.
  test_only = scene_sampler.split_pairs(data, "test", 0.2, 0.0)
  np.testing.assert_array_equal(test_only.pairs, splits["test"].pairs)
  assert sum(len(s.pairs) for s in splits.values()) == len(data)


def test_oracle_ranks_the_query_style_first():
  score = oracle.style_scorer(np.array([3, 5]), np.array([3, 5, 3, -1]))
  np.testing.assert_array_equal(score(np.array([0, 1]), np.array([0, 1, 2, 3])),
                                [[0, 1, 0, 1], [1, 0, 1, 1]])
  np.testing.assert_array_equal(score(np.array([1]), np.array([[1, 2]])), [[0, 1]])


def test_latents_file_beside_the_data_folder(tmp_path):
  root = tmp_path / "data"
  root.mkdir()
  assert oracle.latents_file("", str(root)) is None
  (tmp_path / "data.latents.json").write_text("{}")
  assert oracle.latents_file("", str(root) + "/") == str(tmp_path / "data.latents.json")
  assert oracle.latents_file("none", str(root)) is None
  with pytest.raises(oracle.ConfigError, match="eval.latents"):
    oracle.latents_file(str(tmp_path / "missing.json"), str(root))
