"""TensorFlow SavedModels of a scene model's encoders (servable by TF Serving)."""

from __future__ import annotations

import functools
import os

import jax

from ctl_jax.serving.scene_predictor import ScenePredictor, product_encoder, scene_encoder
from input_pipeline import storage


def export_savedmodels(scene: ScenePredictor, out: str | os.PathLike) -> dict[str, str]:
  """Writes `out/scene` and `out/product` TensorFlow SavedModels (servable by TF Serving).

  The batch dimension is symbolic; the image size is the training one. Weights are stored as
  TF variables, the computation as StableHLO (jax2tf native serialisation).
  """
  import tensorflow as tf
  from jax.experimental import jax2tf

  size = scene.config.input.image_size
  variables = jax.device_get(scene.state.variables())
  image_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="image")
  paths = {}

  def save(name, fn, specs, poly):
    module = tf.Module()
    module.weights = tf.nest.map_structure(tf.Variable, variables)
    converted = jax2tf.convert(fn, polymorphic_shapes=[None] + poly, with_gradient=False)
    module.serve = tf.function(lambda *args: converted(module.weights, *args),
                               input_signature=specs, autograph=False)
    path = storage.join(out, name)
    with storage.local_folder(path) as local:  # a remote `out` receives the files when saved
      tf.saved_model.save(module, local, signatures={"serving_default": module.serve})
    paths[name] = path

  save("scene", functools.partial(scene_encoder, scene.model),
       [image_spec, tf.TensorSpec([None], tf.int32, name="category")], ["(b, ...)", "(b,)"])
  save("product", functools.partial(product_encoder, scene.model), [image_spec], ["(b, ...)"])
  return paths
