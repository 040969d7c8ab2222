"""jax2tf SavedModels of the encoders, loaded with TensorFlow, match the JAX encoders."""

import functools

import jax
import numpy as np
import tensorflow as tf

from ctl_jax.serving import savedmodel, scene_predictor
from ctl_jax.serving.restore import Restored
from ctl_jax.trainer import loop


def test_savedmodels_match_jax(smoke_config, tmp_path):
  run = loop.setup(smoke_config, str(tmp_path))
  state = run.fresh_state()
  state = state.replace(params=jax.tree.map(lambda x: x * 1.1, state.params))
  scene = scene_predictor.ScenePredictor(
      Restored(smoke_config, run.meta(), run.model, state, run.mesh, step=0))
  paths = savedmodel.export_savedmodels(scene, tmp_path / "savedmodel")
  size = smoke_config.input.image_size
  images = np.random.default_rng(0).normal(0, 50, (3, size, size, 3)).astype(np.float32)
  category = np.array([0, 2, 1], np.int32)
  variables = scene.state.variables()

  served = tf.saved_model.load(paths["scene"]).signatures["serving_default"]
  got = served(image=tf.constant(images), category=tf.constant(category))
  want = jax.jit(functools.partial(scene_predictor.scene_encoder, scene.model))(
      variables, images, category)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-4, atol=1e-5)

  served = tf.saved_model.load(paths["product"]).signatures["serving_default"]
  got = served(image=tf.constant(images[:1]))  # another batch size: the batch is symbolic
  want = jax.jit(functools.partial(scene_predictor.product_encoder, scene.model))(
      variables, images[:1])
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], rtol=1e-4, atol=1e-5)
