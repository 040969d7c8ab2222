"""The exported SavedModels, loaded with plain TensorFlow, give the trainer's outputs: from image
bytes (the training preprocessing in the graph) and from preprocessed images; bad requests fail
with short, clear errors."""

import functools

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ctl_jax.serving import product_predictor, ranker, recommend, savedmodel, scene_predictor
from ctl_jax.serving.restore import Restored
from ctl_jax.trainer import loop
from input_pipeline import preprocess_reference

STEP = 7  # the checkpoint step: the version folder
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # jax2tf (XlaCallModule) vs jax.jit, float32


def _predictor(config, workdir, wrap):
  """A predictor of `config`'s fresh state, weights scaled (so not the initialisation)."""
  run = loop.setup(config, str(workdir))
  state = run.fresh_state()
  state = state.replace(params=jax.tree.map(lambda x: x * 1.1, state.params))
  return wrap(Restored(config, run.meta(), run.model, state, run.mesh, step=STEP))


@pytest.fixture(scope="module")
def scene_export(stl_root, tmp_path_factory):
  """(scene predictor, {name: version folder}, image files: JPEGs of the dataset and a PNG)."""
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  tmp = tmp_path_factory.mktemp("savedmodel")
  scene = _predictor(config, tmp / "work", scene_predictor.ScenePredictor)
  paths = savedmodel.export_savedmodels(scene, tmp / "out")
  jpegs = sorted((stl_root / "images").glob("*.jpg"))[:3]
  png = tmp / "photo.png"  # another format, another size than the model's and the JPEGs'
  pixels = np.asarray(Image.open(jpegs[0]).convert("RGB").resize((45, 61)), np.int16)
  Image.fromarray(np.clip(pixels[:, ::-1] + 40, 0, 255).astype(np.uint8)).save(png)
  assert Image.open(png).format == "PNG" and config.input.image_size not in (45, 61)
  return scene, paths, [str(p) for p in jpegs] + [str(png)]


def _bytes(files):
  return tf.constant([open(f, "rb").read() for f in files])


def _signature(path, name="serving_default"):
  return tf.saved_model.load(path).signatures[name]


def test_layout_version_folders_and_categories(scene_export, tmp_path):
  scene, paths, _ = scene_export
  assert set(paths) == {"scene", "product"}
  for name, path in paths.items():
    assert path.endswith(f"/{name}/{STEP}")
    assert tf.saved_model.contains_saved_model(path)
    with open(f"{path}/assets/{savedmodel.CATEGORIES_FILE}", encoding="utf-8") as f:
      assert f.read().splitlines() == scene.categories
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "preprocessed"}
    with open(loaded.categories_file.asset_path.numpy(), encoding="utf-8") as f:
      assert f.read().splitlines() == scene.categories
  # Exporting the same step again replaces the version; another version sits beside it.
  again = savedmodel.export_savedmodels(scene, tmp_path)
  assert savedmodel.export_savedmodels(scene, tmp_path) == again
  savedmodel.export_savedmodels(scene, tmp_path, version=STEP + 1)
  assert sorted(p.name for p in (tmp_path / "scene").iterdir()) == [str(STEP), str(STEP + 1)]


def test_image_bytes_match_the_training_path(scene_export):
  scene, paths, files = scene_export
  config, variables = scene.config, scene.state.variables()
  images = np.stack([recommend.load_model_input(f, config) for f in files])
  names = [scene.categories[i] for i in (0, 5, 2, 8)]
  ids = np.array([scene.categories.index(n) for n in names], np.int32)

  got = _signature(paths["scene"])(image_bytes=_bytes(files), category=tf.constant(names))
  want = jax.jit(functools.partial(scene_predictor.scene_encoder, scene.model))(
      variables, images, ids)
  assert set(got) == set(want) == {"query", "constant", "attention"}
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], **TOLERANCE)
  preprocessed = _signature(paths["scene"], "preprocessed")(image=tf.constant(images),
                                                           category=tf.constant(ids))
  for key in want:
    np.testing.assert_allclose(preprocessed[key].numpy(), want[key], **TOLERANCE)

  got = _signature(paths["product"])(image_bytes=_bytes(files[-2:]))  # another batch size
  want = jax.jit(functools.partial(scene_predictor.product_encoder, scene.model))(
      variables, images[-2:])
  assert set(got) == set(want) == {"embedding", "catalogue_row"}
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], **TOLERANCE)
  np.testing.assert_allclose(got["catalogue_row"].numpy(),
                             ranker.augment_catalogue(want["embedding"]), **TOLERANCE)


def test_preprocessed_images_match_jax(scene_export):
  """The `preprocessed` signature on arbitrary float inputs (the jax2tf conversion alone)."""
  scene, paths, _ = scene_export
  size = scene.config.input.image_size
  images = np.random.default_rng(0).normal(0, 50, (3, size, size, 3)).astype(np.float32)
  category = np.array([0, 2, 1], np.int32)
  variables = scene.state.variables()
  got = _signature(paths["scene"], "preprocessed")(image=tf.constant(images),
                                                  category=tf.constant(category))
  want = jax.jit(functools.partial(scene_predictor.scene_encoder, scene.model))(
      variables, images, category)
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], **TOLERANCE)
  got = _signature(paths["product"], "preprocessed")(image=tf.constant(images[:1]))
  want = jax.jit(functools.partial(scene_predictor.product_encoder, scene.model))(
      variables, images[:1])
  for key in want:
    np.testing.assert_allclose(got[key].numpy(), want[key], **TOLERANCE)


def test_pil_preprocessing_gives_the_same_embeddings(scene_export):
  """A client without ctl-jax: preprocess_reference + the `preprocessed` signature."""
  scene, paths, files = scene_export
  size, normalization = scene.config.input.image_size, scene.config.input.normalization
  images = np.stack([preprocess_reference.prepare_image_pil(f, size, normalization)
                     for f in files])
  got = _signature(paths["product"], "preprocessed")(image=tf.constant(images))
  want = _signature(paths["product"])(image_bytes=_bytes(files))
  np.testing.assert_allclose(got["embedding"].numpy(), want["embedding"].numpy(), atol=1e-4)


def _error(call) -> str:
  with pytest.raises(tf.errors.InvalidArgumentError) as caught:
    call()
  message = str(caught.value)
  # A message to read, not a compiler's dump of the model.
  assert len(message) < 1000 and not any(
      word in message for word in ("HloModule", "stablehlo", "XlaCallModule", "func.func"))
  return message


def test_unknown_category_names_and_lists_them(scene_export):
  scene, paths, files = scene_export
  served = _signature(paths["scene"])
  message = _error(lambda: served(image_bytes=_bytes(files[:2]),
                                  category=tf.constant([scene.categories[0], "Hats"])))
  listing = " | ".join(f"{i} {name}" for i, name in enumerate(scene.categories))
  assert f"unknown category: Hats. the categories of this model, by id: {listing}" in message
  message = _error(lambda: _signature(paths["scene"], "preprocessed")(
      image=tf.zeros([2, 32, 32, 3]), category=tf.constant([1, len(scene.categories)])))
  assert (f"category id out of range 0..{len(scene.categories) - 1}: {len(scene.categories)}. "
          f"the categories of this model, by id: {listing}") in message
  _error(lambda: _signature(paths["scene"], "preprocessed")(
      image=tf.zeros([1, 32, 32, 3]), category=tf.constant([-1])))


def test_bad_requests_fail_with_a_shape_error(scene_export):
  scene, paths, files = scene_export
  size = scene.config.input.image_size
  preprocessed = _signature(paths["scene"], "preprocessed")
  ok = tf.constant([0, 1])
  for image in (tf.zeros([2, size + 1, size + 1, 3]), tf.zeros([size, size, 3]),
                tf.zeros([2, size, size, 1])):
    message = _error(lambda image=image: preprocessed(image=image, category=ok[:len(image)]))
    assert f"is not compatible with expected shape [?,{size},{size},3]" in message
  served = _signature(paths["scene"])
  message = _error(lambda: served(image_bytes=_bytes(files[:1])[0], category=tf.constant("Shoes")))
  assert "Shape of tensor image_bytes [] is not compatible with expected shape [?]" in message
  message = _error(lambda: served(image_bytes=_bytes(files[:2]), category=tf.constant(["Shoes"])))
  assert "one category per image" in message
  message = _error(lambda: served(image_bytes=tf.constant([], tf.string),
                                  category=tf.constant([], tf.string)))
  assert "an empty batch" in message
  message = _error(lambda: _signature(paths["product"])(image_bytes=tf.constant([b"not an image"])))
  assert "Unknown image file format" in message


def test_shapes_are_checked_in_the_graph_as_tf_serving_runs_it(scene_export):
  """TF Serving feeds a request to the graph without checking it against the signature: the
  check is in the graph. A TF1 session run from its C API feeds the same way."""
  scene, paths, _ = scene_export
  size = scene.config.input.image_size
  with tf.Graph().as_default() as graph, tf.compat.v1.Session() as session:
    signature = tf.compat.v1.saved_model.loader.load(
        session, ["serve"], paths["product"]).signature_def["preprocessed"]

    def tensor(info):
      return graph.get_tensor_by_name(info.name)._as_tf_output()

    def run(image):
      return session._call_tf_sessionrun(  # no Python-side shape check, unlike Session.run
          None, {tensor(signature.inputs["image"]): image},
          [tensor(signature.outputs["embedding"])], [], None)[0]

    assert run(np.zeros((2, size, size, 3), np.float32)).shape[0] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected shape"):
      run(np.zeros((2, 2 * size, 2 * size, 3), np.float32))


def test_product_task_style_savedmodel(product_smoke_config, stl_root, tmp_path):
  config = product_smoke_config
  predictor = _predictor(config, tmp_path / "work", product_predictor.ProductPredictor)
  paths = savedmodel.export_savedmodels(predictor, tmp_path / "out")
  assert list(paths) == ["style"] and paths["style"].endswith(f"/style/{STEP}")
  files = [str(p) for p in sorted((stl_root / "images").glob("*.jpg"))[:3]]
  want = predictor.embed(predictor.load_items(files))  # the trainer's path: whole images
  got = _signature(paths["style"])(image_bytes=_bytes(files))
  assert set(got) == {"style", "probs", "catalogue_row"}
  np.testing.assert_allclose(got["style"].numpy(), want["style"], **TOLERANCE)
  np.testing.assert_allclose(got["probs"].numpy(), want["probs"], **TOLERANCE)
  np.testing.assert_allclose(got["catalogue_row"].numpy(),
                             ranker.augment_catalogue(want["style"]), **TOLERANCE)
  assert got["probs"].shape[1] == len(predictor.categories)

