"""TensorFlow SavedModels of a trained model's encoders, laid out for TF Serving as they are.

`export_savedmodels` writes one SavedModel per encoder under `out/<name>/<version>/`, the
version being the checkpoint step (TF Serving serves the highest version folder of a model):

  scene-task model:   scene    image, category -> query [B, D+1], constant [B], attention [B, h, w]
                      product  image -> embedding [B, D], catalogue_row [B, D+1]
  product-task model: style    image -> style [B, D], probs [B, C], catalogue_row [B, D+1]

(see scene_predictor.py and product_predictor.py for what the outputs are). Each has two
signatures, both with a symbolic batch size B:

  serving_default  image_bytes: string [B], encoded JPEG/PNG/GIF/BMP images of any size;
                   category: string [B], category names (scene only).
                   The graph preprocesses exactly as training does (preprocess.prepare_image on
                   the whole image, one image at a time), so a client sends the file's bytes.
  preprocessed     image: float32 [B, S, S, 3], already preprocessed (S = the training size);
                   category: int32 [B], category ids (scene only).

The category names are in the SavedModel's `assets/categories.txt`, one per line, line i being
category id i (also the columns of `probs`); the scene model's name -> id table reads that file.
An unknown category name or an out-of-range id fails with an InvalidArgumentError that names it
and lists the model's categories; an image of the wrong shape, or batches of different lengths,
fail on a TF shape check before the model runs. TF Serving does not check request shapes against
the signature, so these checks are in the graph.

Weights are TF variables, the model's computation StableHLO (jax2tf native serialisation),
lowered for CPU and CUDA (`PLATFORMS`: TF Serving's CPU and GPU builds).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import tensorflow as tf
from jax.experimental import jax2tf

from ctl_jax.serving import product_predictor, scene_predictor
from ctl_jax.serving.errors import ServingError
from ctl_jax.serving.product_predictor import ProductPredictor
from ctl_jax.serving.scene_predictor import ScenePredictor
from input_pipeline import preprocess, storage

CATEGORIES_FILE = "categories.txt"
# The platforms the model is lowered for: XlaCallModule runs the lowering of its device.
PLATFORMS = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Encoder:
  """One SavedModel: `fn(variables, image[, category])` -> dict of [B, ...] arrays."""

  name: str
  fn: Callable[..., dict[str, jax.Array]]
  takes_category: bool


def encoders(predictor: ScenePredictor | ProductPredictor) -> list[Encoder]:
  """The SavedModels of a restored scene or product predictor."""
  task = predictor.config.task
  if task == "scene":
    return [Encoder("scene", functools.partial(scene_predictor.scene_encoder, predictor.model),
                    True),
            Encoder("product",
                    functools.partial(scene_predictor.product_encoder, predictor.model), False)]
  if task == "product":
    return [Encoder("style", functools.partial(product_predictor.style_encoder, predictor.model),
                    False)]
  raise ServingError(f"--savedmodel: no SavedModel for a {task}-task model")


def restore_predictor(workdir: str | os.PathLike,
                      config: ml_collections.ConfigDict) -> ScenePredictor | ProductPredictor:
  """The predictor of `workdir`'s served checkpoint, for its task (`config.task`)."""
  if config.task == "product":
    return product_predictor.restore_product_predictor(workdir, config)
  return scene_predictor.restore_scene_predictor(workdir, config)


def export_savedmodels(predictor: ScenePredictor | ProductPredictor, out: str | os.PathLike,
                       version: int | None = None) -> dict[str, str]:
  """Writes `out/<name>/<version>/` for each of the predictor's encoders (see module doc).

  Args:
    predictor: a ScenePredictor or ProductPredictor.
    version: the version folder (default: the predictor's checkpoint step). An existing folder
      of that version is replaced; the new one is written beside it and then moved in place.

  Returns:
    {name: the version folder}.
  """
  version = predictor.step if version is None else version
  if int(version) != version or version < 0:
    raise ServingError(f"SavedModel version {version!r}: give a non-negative integer")
  names = list(predictor.categories)
  if any(not n or "\n" in n for n in names):
    raise ServingError(f"categories {names}: a SavedModel needs non-empty one-line names")
  variables = jax.device_get(predictor.state.variables())
  c = predictor.config.input
  paths = {}
  with tempfile.TemporaryDirectory(prefix="ctl_jax_savedmodel_") as tmp:
    categories_file = os.path.join(tmp, CATEGORIES_FILE)
    with open(categories_file, "w", encoding="utf-8") as f:
      f.write("".join(n + "\n" for n in names))
    for encoder in encoders(predictor):
      module, signatures = _module(encoder, variables, names, categories_file, c.image_size,
                                   c.normalization)
      final = storage.join(out, encoder.name, str(int(version)))
      partial = f"{final}.partial"  # not a number: TF Serving ignores it while it is written
      storage.remove_tree(partial)
      with storage.local_folder(partial) as local:  # a remote `out` receives the files here
        tf.saved_model.save(module, local, signatures=signatures)
      storage.remove_tree(final)
      storage.move(partial, final)
      paths[encoder.name] = final
  return paths


def _module(encoder: Encoder, variables: Any, names: list[str], categories_file: str, size: int,
            normalization: str) -> tuple[tf.Module, dict[str, Any]]:
  """(tf.Module holding the weights, the categories asset and table, its signatures)."""
  module = tf.Module()
  module.weights = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False), variables)
  module.categories_file = tf.saved_model.Asset(categories_file)
  poly = ["(b, ...)", "(b,)"] if encoder.takes_category else ["(b, ...)"]
  converted = jax2tf.convert(encoder.fn, polymorphic_shapes=[None] + poly, with_gradient=False,
                             native_serialization_platforms=PLATFORMS)
  image_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="image")
  bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

  def decode(image_bytes):
    """[B] encoded images -> [B, S, S, 3] model inputs, as training preprocesses them."""
    crop = tf.constant(preprocess.FULL_IMAGE, tf.float32)
    return tf.map_fn(lambda data: preprocess.prepare_image(data, crop, size, normalization),
                     image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))

  def checked_bytes(image_bytes):
    return _non_empty(tf.ensure_shape(image_bytes, [None], name="image_bytes_shape"))

  def checked_image(image):
    return _non_empty(tf.ensure_shape(image, [None, size, size, 3], name="image_shape"))

  def checked_category(images, category):
    with tf.control_dependencies([images]):  # the images' errors first
      return _same_length(images, tf.ensure_shape(category, [None], name="category_shape"))

  if not encoder.takes_category:
    module.serve_bytes = tf.function(
        lambda image_bytes: converted(module.weights, decode(checked_bytes(image_bytes))),
        input_signature=[bytes_spec], autograph=False)
    module.serve_image = tf.function(
        lambda image: converted(module.weights, checked_image(image)),
        input_signature=[image_spec], autograph=False)
  else:
    module.category_table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            module.categories_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)

    def serve_bytes(image_bytes, category):
      image_bytes = checked_bytes(image_bytes)
      ids = _ids_of_names(module.category_table, checked_category(image_bytes, category), names)
      return converted(module.weights, decode(image_bytes), ids)

    def serve_image(image, category):
      image = checked_image(image)
      ids = _checked_ids(checked_category(image, category), names)
      return converted(module.weights, image, ids)

    module.serve_bytes = tf.function(
        serve_bytes, autograph=False,
        input_signature=[bytes_spec, tf.TensorSpec([None], tf.string, name="category")])
    module.serve_image = tf.function(
        serve_image, autograph=False,
        input_signature=[image_spec, tf.TensorSpec([None], tf.int32, name="category")])
  return module, {"serving_default": module.serve_bytes, "preprocessed": module.serve_image}


def _listing(names: list[str]) -> str:
  """The categories for an error message (without quotes: tf.debugging.Assert escapes them)."""
  return "the categories of this model, by id: " + " | ".join(
      f"{i} {n}" for i, n in enumerate(names))


def _non_empty(batch):
  """`batch`, once it is known to hold at least one entry (the encoders need one)."""
  check = tf.debugging.assert_positive(tf.shape(batch)[0],
                                       message="an empty batch: send at least one image")
  with tf.control_dependencies([check]):
    return tf.identity(batch)


def _same_length(images, category):
  """`category`, once it is known to hold one entry per image."""
  check = tf.debugging.assert_equal(
      tf.shape(images)[0], tf.shape(category)[0],
      message="one category per image: the batch of images and of categories differ in length")
  with tf.control_dependencies([check]):
    return tf.identity(category)


def _ids_of_names(table, category, names: list[str]):
  """int32 ids of category names; InvalidArgumentError naming the unknown ones."""
  ids = tf.cast(table.lookup(category), tf.int32)
  unknown = tf.strings.reduce_join(tf.boolean_mask(category, ids < 0), separator=" | ")
  message = tf.strings.join(["unknown category: ", unknown, ". " + _listing(names)])
  check = tf.debugging.Assert(tf.reduce_all(ids >= 0), [message])
  with tf.control_dependencies([check]):
    return tf.identity(ids)


def _checked_ids(ids, names: list[str]):
  """`ids` once each is a category id; InvalidArgumentError naming those out of range."""
  valid = (ids >= 0) & (ids < len(names))
  bad = tf.strings.reduce_join(tf.strings.as_string(tf.boolean_mask(ids, ~valid)), separator=", ")
  message = tf.strings.join([f"category id out of range 0..{len(names) - 1}: ", bad,
                             ". " + _listing(names)])
  check = tf.debugging.Assert(tf.reduce_all(valid), [message])
  with tf.control_dependencies([check]):
    return tf.identity(ids)
