"""The train state, born sharded on the mesh, and the one update every task's step ends with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from ctl_jax.trainer import sharding

# A task's training loss: loss_fn(params, state, batch) -> (loss, (new batch_stats, metrics)).
LossFn = Callable[[Any, "TrainState", dict], tuple[jax.Array, tuple[Any, dict]]]


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes; `frozen_params` is the backbone when it is frozen (else empty)."""

  step: jax.Array
  params: Any  # trainable parameters (what the optimizer sees)
  frozen_params: Any  # parameters kept out of training: no gradients, no optimizer state
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # base key; step t uses fold_in(rng, t)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self, params: Any = None) -> dict:
    params = self.params if params is None else params
    return {"params": {**self.frozen_params, **params}, "batch_stats": self.batch_stats}


def split_params(params: dict, freeze_backbone: bool) -> tuple[dict, dict]:
  """(trainable, frozen) halves of the parameter tree."""
  if not freeze_backbone:
    return dict(params), {}
  return ({k: v for k, v in params.items() if k != "backbone"},
          {k: v for k, v in params.items() if k == "backbone"})


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_size: int, mesh: jax.sharding.Mesh,
                       initial_variables: dict | None = None) -> TrainState:
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


def gradient_step(loss_fn: LossFn, state: TrainState, batch: dict,
                  schedule: Callable) -> tuple[TrainState, dict]:
  """One optimizer step of `loss_fn` on `batch`: the new state and the scalar metrics.

  The metrics are the loss function's own plus `loss`, the global norms of the gradients and
  of the parameters, and the learning rate of this step.
  """
  (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state, batch)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **aux, "l2_grads": optax.global_norm(grads),
             "l2_params": optax.global_norm(params), "learning_rate": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def abstract_state(state: TrainState) -> TrainState:
  """Shape/dtype/sharding skeleton of `state`, the restore target of a checkpoint."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
