"""Model construction, optimizer and the train state, born sharded on the mesh."""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ctl_jax.nn import backbones
from ctl_jax.scene import model as scene_model
from ctl_jax.trainer import sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes; `frozen_params` is the backbone when it is frozen (else empty)."""

  step: jax.Array
  params: Any  # trainable parameters (what the optimizer sees)
  frozen_params: Any  # parameters kept out of training: no gradients, no optimizer state
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # base key; step t uses fold_in(rng, t)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self, params=None) -> dict:
    params = self.params if params is None else params
    return {"params": {**self.frozen_params, **params}, "batch_stats": self.batch_stats}


def create_model(model_config: ml_collections.ConfigDict, num_categories: int) -> scene_model.CTLModel:
  dtype = DTYPES[model_config.dtype]
  heads = scene_model.SceneHeads(
      num_categories=num_categories, embed_dim=model_config.embed_dim,
      global_hidden=model_config.global_hidden, local_hidden=model_config.local_hidden,
      attention_hidden=model_config.attention_hidden, dropout=model_config.dropout, dtype=dtype)
  return scene_model.CTLModel(backbone=backbones.BACKBONES[model_config.backbone](dtype), heads=heads,
                         freeze_backbone=model_config.freeze_backbone)


def _constant(c, num_steps):
  return optax.join_schedules(
      [optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps),
       optax.constant_schedule(c.learning_rate)], [c.warmup_steps])


def _cosine(c, num_steps):
  return optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                            max(num_steps, c.warmup_steps + 1))


SCHEDULES: dict[str, Callable] = {"constant": _constant, "cosine": _cosine}
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda c, lr: optax.adam(lr),
    "adamw": lambda c, lr: optax.adamw(lr, weight_decay=c.weight_decay),
    "sgd": lambda c, lr: optax.sgd(lr, momentum=c.momentum),
}


def make_optimizer(opt_config: ml_collections.ConfigDict, num_steps: int):
  """(optax transformation, learning-rate schedule) from the `optimizer` config section."""
  if opt_config.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={opt_config.schedule!r}; choose from {list(SCHEDULES)}")
  if opt_config.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name={opt_config.name!r}; choose from {list(OPTIMIZERS)}")
  schedule = SCHEDULES[opt_config.schedule](opt_config, num_steps)
  tx = OPTIMIZERS[opt_config.name](opt_config, schedule)
  if opt_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
  return tx, schedule


def split_params(params: dict, freeze_backbone: bool) -> tuple[dict, dict]:
  """(trainable, frozen) halves of the parameter tree."""
  if not freeze_backbone:
    return dict(params), {}
  return ({k: v for k, v in params.items() if k != "backbone"},
          {k: v for k, v in params.items() if k == "backbone"})


def create_train_state(model: scene_model.CTLModel, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: int, mesh, initial_variables: dict | None = None) -> TrainState:
  """A replicated TrainState, created directly with its sharding (no host copy of the params).

  Args:
    initial_variables: optional {'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}
      to start from (e.g. imported ImageNet weights); they replace the random initialisation.
  """
  init_rng, train_rng = jax.random.split(rng)

  def init(init_rng, overrides):
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init({"params": init_rng}, images, jnp.zeros((1,), jnp.int32),
                           method="init_all")  # every task's model creates all its variables
    params = dict(variables["params"])
    batch_stats = dict(variables["batch_stats"])
    if overrides:
      params.update(overrides.get("params", {}))
      batch_stats.update(overrides.get("batch_stats", {}))
    trainable, frozen = split_params(params, model.freeze_backbone)
    return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen_params=frozen,
                      batch_stats=batch_stats, opt_state=tx.init(trainable), rng=train_rng, tx=tx)

  abstract = jax.eval_shape(init, init_rng, initial_variables)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=shardings)(init_rng, initial_variables)


def abstract_state(state: TrainState):
  """Shape/dtype/sharding skeleton of `state`, the restore target of a checkpoint."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
