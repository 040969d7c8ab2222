"""A trained scene model restored for inference, its encoders, and their TensorFlow SavedModels.

The run's config and categories are read from the checkpoint's record, so serving needs only the
workdir (no training data). The encoders return what the ranker needs (see ranker.py):
  scene:   image [B, S, S, 3], category [B] -> augmented query [B, D + 1], constant [B],
           attention [B, h, w] over the region grid
  product: image [B, S, S, 3] -> embedding f_p [B, D] and catalogue row [f_p, ||f_p||^2]
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctl_jax.serving import catalogue
from ctl_jax.trainer import checkpoint
from ctl_jax.scene import distances
from ctl_jax.scene import model as scene_model
from ctl_jax.serving import ranker
from ctl_jax.trainer import sharding
from ctl_jax.trainer import state as train_state


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The locked run config saved with a checkpoint."""
  if "config" not in meta:
    raise ValueError("the checkpoint has no run config: pass --config")
  config = ml_collections.ConfigDict(meta["config"])
  config.lock()
  return config


def open_checkpoint(workdir: str | os.PathLike):
  """(Checkpointer, latest step, meta) of `workdir`; FileNotFoundError when there is none."""
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1, max_to_keep=1_000_000)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {ckpt.directory}: train first")
  return ckpt, step, ckpt.restore_meta(step)


def scene_parts(model: scene_model.CTLModel, image, category):
  """f_s [C, D], f_i [C, R, D] and attention [C, h, w] of scenes [B, S, S, 3] and categories [C].

  B is C (one category per scene) or 1 (one scene against several categories: the backbone and
  the global and local heads then run once; only the attention depends on the category).
  """
  feats = model.features(image)
  f_s = model.heads.embed_global(feats["global"])
  f_i, fhat_i = model.heads.embed_regions(feats["regions"])
  weights = distances.attention_weights(fhat_i, model.heads.embed_category(category))  # [C, R]
  c = weights.shape[0]
  return (jnp.broadcast_to(f_s, (c,) + f_s.shape[1:]), jnp.broadcast_to(f_i, (c,) + f_i.shape[1:]),
          weights.reshape((c,) + feats["regions"].shape[1:3]))


def scene_encoder(model: scene_model.CTLModel, variables, image, category):
  """Batch of scenes, one category each -> {'query', 'constant', 'attention'} (see module doc)."""
  f_s, f_i, attention = model.apply(variables, image, category, method=scene_parts)
  query, const = ranker.hybrid_query(f_s, f_i, attention.reshape(attention.shape[0], -1))
  return {"query": query, "constant": const, "attention": attention}


def product_encoder(model: scene_model.CTLModel, variables, image):
  emb = model.apply(variables, image, method=scene_model.CTLModel.product_embedding)
  return {"embedding": emb,
          "catalogue_row": jnp.concatenate([emb, jnp.sum(jnp.square(emb), -1, keepdims=True)], 1)}


@dataclasses.dataclass
class SceneModel:
  """A restored scene-task checkpoint."""

  config: ml_collections.ConfigDict
  categories: list[str]
  model: scene_model.CTLModel
  state: train_state.TrainState
  mesh: jax.sharding.Mesh
  step: int

  @property
  def fingerprint(self) -> str:
    return catalogue.model_fingerprint(self.config, self.categories)

  @functools.cached_property
  def _scene_fn(self):
    return jax.jit(functools.partial(scene_encoder, self.model))

  def scene(self, image: np.ndarray, categories: list[int]):
    """Augmented queries [C, D + 1], constants [C] and attention maps [C, h, w] of one scene
    [S, S, 3] for each of `categories`."""
    out = jax.device_get(self._scene_fn(self.state.variables(), image[None],
                                        jnp.asarray(categories, jnp.int32)))
    return out["query"], out["constant"], out["attention"]


def restore_scene_model(workdir: str | os.PathLike, config=None) -> SceneModel:
  """The latest scene-task checkpoint of `workdir` (config from the checkpoint unless given)."""
  ckpt, step, meta = open_checkpoint(workdir)
  config = config_from_meta(meta) if config is None else config
  if config.task != "scene":
    raise ValueError(f"{workdir} holds a {config.task!r} model; this needs the scene model")
  categories = list(meta["categories"])
  model = train_state.create_model(config.model, len(categories))
  mesh = sharding.make_mesh()
  tx, _ = train_state.make_optimizer(config.optimizer, config.train.num_steps)
  like = train_state.create_train_state(model, tx, jax.random.PRNGKey(config.seed),
                                        config.input.image_size, mesh)
  state, _ = ckpt.restore(like, step)
  ckpt.close()
  return SceneModel(config, categories, model, state, mesh, step)


def export_savedmodels(scene: SceneModel, out: str | os.PathLike) -> dict[str, str]:
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
    path = os.path.join(out, name)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    paths[name] = path

  save("scene", functools.partial(scene_encoder, scene.model),
       [image_spec, tf.TensorSpec([None], tf.int32, name="category")], ["(b, ...)", "(b,)"])
  save("product", functools.partial(product_encoder, scene.model), [image_spec], ["(b, ...)"])
  return paths
