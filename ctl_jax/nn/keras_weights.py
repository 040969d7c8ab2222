"""Import of Keras ImageNet ResNet-50 weights into the Flax backbone.

Reads the HDF5 weight file keras.applications uses
(`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`; the user supplies the path, nothing is
fetched). Its layout: the root attribute `layer_names`, then one group per layer whose attribute
`weight_names` lists the layer's arrays, trainable first (`kernel`, `bias` / `gamma`, `beta`) then
non-trainable (`moving_mean`, `moving_variance`), named `<layer>/<weight>:0` (Keras 2) or
`<layer>/<weight>` (Keras 3's legacy writer). A full saved model (`model_weights` group) works too.

The Flax backbone (`nn/backbones.ResNet`) uses Keras's layer names, so the mapping is by name:
`conv4_block6_2_conv` -> params['conv4_block6']['2_conv'], `conv1_bn` -> params['conv1_bn'] and
batch_stats['conv1_bn']. Inputs must be preprocessed as Keras does (`input.normalization='caffe'`).
"""

from __future__ import annotations

import io
import logging
import os
import re

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from input_pipeline import storage

# Keras weight name -> (Flax collection, Flax leaf name).
_WEIGHTS = {
    "kernel": ("params", "kernel"), "bias": ("params", "bias"),
    "gamma": ("params", "scale"), "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"), "moving_variance": ("batch_stats", "var"),
}
_BLOCK_LAYER = re.compile(r"^(conv\d_block\d+)_(\d_(?:conv|bn))$")


def _decode(names) -> list[str]:
  return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_keras_h5(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """{layer name: {weight name: array}} of a Keras HDF5 weight (or model) file."""
  try:  # a remote file is read whole into memory (h5py opens file objects too)
    f = h5py.File(io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path, "r")
  except (OSError, FileNotFoundError) as e:
    raise ValueError(f"{path}: cannot open as an HDF5 Keras weight file ({e})") from None
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
      raise ValueError(f"{path}: not a Keras HDF5 weight file (no 'layer_names' attribute); "
                       "expected e.g. resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    layers = {}
    for layer in _decode(root.attrs["layer_names"]):
      group = root[layer]
      names = _decode(group.attrs.get("weight_names", []))
      if names:
        layers[layer] = {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[n]) for n in names}
  return layers


_STAGE = re.compile(r"conv(\d)_block")


def _flax_location(layer: str) -> tuple[str, ...]:
  """Path of a Keras layer inside the Flax backbone's variable dicts."""
  match = _BLOCK_LAYER.match(layer)
  return (match.group(1), match.group(2)) if match else (layer,)


def keras_to_flax(layers: dict[str, dict[str, np.ndarray]], template: dict) -> dict:
  """Backbone variables {'params': ..., 'batch_stats': ...} shaped like `template`.

  Args:
    layers: the output of `read_keras_h5`.
    template: the backbone's own variables (arrays or ShapeDtypeStructs), to check against:
      every Flax array must be provided with its exact shape, and no Keras weight may be left,
      except those of the stages after the last one the backbone computes (a backbone whose
      regions and global vector come from earlier stages, see `model.global_stage`).
  Raises:
    ValueError naming the first missing, unexpected or mis-shaped layer/weight.
  """
  out = jax.tree.map(lambda _: None, template)
  stages = [int(m.group(1)) for m in map(_STAGE.match, template.get("params", {})) if m]
  last_stage = max(stages, default=5)
  for layer, weights in layers.items():
    stage = _STAGE.match(layer)
    if stage and int(stage.group(1)) > last_stage:
      continue  # a stage the backbone does not compute
    where = _flax_location(layer)
    for name, value in weights.items():
      if name not in _WEIGHTS:
        raise ValueError(f"layer {layer}: unexpected weight {name!r}")
      collection, leaf = _WEIGHTS[name]
      node = out.get(collection, {})
      expected = template.get(collection, {})
      for key in where:
        if key not in node:
          raise ValueError(f"layer {layer}: no such layer in the Flax backbone "
                           f"(is the file for another architecture?)")
        node, expected = node[key], expected[key]
      if leaf not in expected:
        raise ValueError(f"layer {layer}: the Flax layer has no {leaf!r} for Keras {name!r}")
      if tuple(expected[leaf].shape) != value.shape:
        raise ValueError(f"layer {layer} weight {name}: shape {value.shape} in the file, "
                         f"{tuple(expected[leaf].shape)} in the backbone")
      node[leaf] = value.astype(np.float32)
  missing = [jax.tree_util.keystr(path) for path, v in
             jax.tree_util.tree_flatten_with_path(out, is_leaf=lambda x: x is None)[0]
             if v is None]
  if missing:
    raise ValueError(f"the weight file has no values for {len(missing)} backbone arrays, "
                     f"e.g. {missing[:3]}")
  return out


def load_keras_resnet(path: str | os.PathLike, template: dict) -> dict:
  """Backbone variables from a Keras ResNet HDF5 file, checked against `template`."""
  return keras_to_flax(read_keras_h5(path), template)


def initial_backbone_variables(model_config: ml_collections.ConfigDict,
                               input_config: ml_collections.ConfigDict,
                               model: nn.Module) -> dict | None:
  """Backbone variables from the Keras file `model.backbone_weights`, or None (random init).

  Returns {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}, the shape the train
  state starts from (see `trainer.state.create_train_state`).
  """
  path = model_config.backbone_weights
  if not path:
    return None
  if model_config.backbone != "resnet50":
    raise ValueError(f"model.backbone_weights is a Keras ResNet-50 file; model.backbone is "
                     f"{model_config.backbone!r}")
  if input_config.normalization != "caffe":
    raise ValueError("Keras ImageNet weights expect input.normalization='caffe' (BGR, mean "
                     f"subtracted), not {input_config.normalization!r}")
  template = jax.eval_shape(
      lambda: model.backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  variables = load_keras_resnet(path, dict(template))
  logging.info("backbone weights from %s", path)
  return {"params": {"backbone": variables["params"]},
          "batch_stats": {"backbone": variables["batch_stats"]}}
