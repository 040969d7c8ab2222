"""Keras ImageNet ResNet-50 weights: a file in keras.applications' HDF5 layout, imported into the
Flax backbone, gives Keras's own `avg_pool` and `conv4_block6_out` outputs."""

import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from ctl_jax.nn import backbones, keras_weights
from ctl_jax.trainer import loop
from input_pipeline import preprocess


@pytest.fixture(scope="module")
def keras_model_and_file(tmp_path_factory):
  from keras.src.legacy.saving import legacy_h5_format
  model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                      input_shape=(96, 96, 3))
  rng = np.random.default_rng(0)
  weights = []
  for w in model.get_weights():  # random values everywhere, BN statistics included
    if w.ndim == 1:
      weights.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
    else:
      weights.append((rng.normal(size=w.shape) * np.sqrt(2.0 / np.prod(w.shape[:-1])))
                     .astype(np.float32))
  model.set_weights(weights)
  path = tmp_path_factory.mktemp("keras") / "resnet50_notop.h5"
  with h5py.File(path, "w") as f:  # the layout of keras.applications' weight files
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return model, path


def _keras_outputs(model, images):
  probe = keras.Model(model.inputs, [model.get_layer("avg_pool").output,
                                     model.get_layer("conv4_block6_out").output])
  pooled, regions = probe.predict(images, verbose=0)
  return pooled, regions


def test_imported_weights_reproduce_keras_outputs(keras_model_and_file):
  model, path = keras_model_and_file
  flax_model = backbones.resnet50()
  template = jax.eval_shape(lambda: flax_model.init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, 96, 96, 3))))
  variables = keras_weights.load_keras_resnet(path, dict(template))
  rng = np.random.default_rng(1)
  pixels = rng.uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
  # Our tf.data normalisation is exactly keras.applications.resnet50.preprocess_input.
  ours = preprocess.normalize_caffe(pixels).numpy()
  np.testing.assert_allclose(
      ours, keras.applications.resnet50.preprocess_input(pixels.copy()), rtol=1e-6, atol=1e-4)
  keras_pooled, keras_regions = _keras_outputs(model, ours)
  out = jax.jit(lambda v, x: flax_model.apply(v, x))(variables, ours)
  scale = lambda a: np.abs(a).max()
  np.testing.assert_allclose(out["global"], keras_pooled, rtol=1e-4,
                             atol=1e-4 * scale(keras_pooled))
  np.testing.assert_allclose(out["regions"], keras_regions, rtol=1e-4,
                             atol=1e-4 * scale(keras_regions))


def test_keras2_weight_names_with_suffix_and_clear_errors(keras_model_and_file, tmp_path):
  _, path = keras_model_and_file
  renamed = tmp_path / "keras2.h5"
  with h5py.File(path, "r") as src, h5py.File(renamed, "w") as dst:
    dst.attrs["layer_names"] = src.attrs["layer_names"]
    for layer in keras_weights._decode(src.attrs["layer_names"]):
      names = keras_weights._decode(src[layer].attrs["weight_names"])
      group = dst.create_group(layer)
      group.attrs["weight_names"] = [(n + ":0").encode() for n in names]
      for n in names:
        group.create_dataset(n + ":0", data=src[layer][n][()])
  template = dict(jax.eval_shape(lambda: backbones.resnet50().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))))
  a = keras_weights.load_keras_resnet(path, template)
  b = keras_weights.load_keras_resnet(renamed, template)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  small = dict(jax.eval_shape(lambda: backbones.resnet_small().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))))
  with pytest.raises(ValueError, match="shape"):
    keras_weights.load_keras_resnet(path, small)
  (tmp_path / "junk.h5").write_bytes(b"not hdf5")
  with pytest.raises(ValueError, match="junk.h5"):
    keras_weights.load_keras_resnet(tmp_path / "junk.h5", template)


def test_config_loads_weights_into_a_frozen_train_state(keras_model_and_file, smoke_config,
                                                        tmp_path):
  _, path = keras_model_and_file
  smoke_config.model.backbone = "resnet50"
  smoke_config.model.backbone_weights = str(path)
  smoke_config.input.normalization = "caffe"
  smoke_config.model.global_stage, smoke_config.model.region_stage = 5, 4  # the paper's
  run = loop.setup(smoke_config, str(tmp_path))
  state = run.fresh_state()
  kernel = state.frozen_params["backbone"]["conv4_block6"]["2_conv"]["kernel"]
  with h5py.File(path, "r") as f:
    expected = f["conv4_block6_2_conv"]["conv4_block6_2_conv/kernel"][()]
    early = f["conv3_block2_2_conv"]["conv3_block2_2_conv/kernel"][()]
  np.testing.assert_array_equal(np.asarray(kernel), expected)
  # A backbone that stops at stage 3 takes the weights of its stages; the file's later ones
  # are left out.
  smoke_config.model.global_stage, smoke_config.model.region_stage = 2, 3
  short = loop.setup(smoke_config, str(tmp_path / "short")).fresh_state()
  assert "conv4_block1" not in short.frozen_params["backbone"]
  np.testing.assert_array_equal(
      np.asarray(short.frozen_params["backbone"]["conv3_block2"]["2_conv"]["kernel"]), early)
  smoke_config.input.normalization = "imagenet"
  with pytest.raises(ValueError, match="caffe"):
    loop.setup(smoke_config, str(tmp_path / "x")).fresh_state()
