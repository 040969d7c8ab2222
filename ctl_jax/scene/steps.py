"""Pure step functions; the trainer jits them once with explicit shardings."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ctl_jax.scene import distances
from ctl_jax.nn import losses
from ctl_jax.scene import model as scene_model
from ctl_jax.trainer.state import TrainState


def triplet_loss(params, state: TrainState, batch: dict, *, model: scene_model.CTLModel,
                 margin: float, reduction: str, in_batch: bool = False):
  """Training-mode triplet loss of `batch` at `params`.

  With `in_batch`, every product of the batch that shares a row's category and is not in its
  scene is a negative of that row too, scored by one inner product with the ranking query.

  Returns:
    loss, and aux = (new batch_stats, d_pos [B], number of scored negative terms).
  """
  (d_pos, d_neg, aux), updates = model.apply(
      state.variables(params), batch, train=True,
      rngs={"dropout": jax.random.fold_in(state.rng, state.step)}, mutable=["batch_stats"])
  if in_batch:
    b, n = d_neg.shape
    candidates = jnp.concatenate([aux["positive"], aux["negative"].reshape(b * n, -1)])
    d_candidates = distances.distance_from_query(aux["query"], candidates)
    valid = losses.in_batch_negative_mask(
        batch["category"], batch["positive_index"], batch["scene_products"],
        jnp.concatenate([batch["category"], jnp.repeat(batch["category"], n)]),
        jnp.concatenate([batch["positive_index"], batch["negative_index"].reshape(-1)]))
    loss = losses.in_batch_triplet_hinge(d_pos, d_candidates, valid, margin, reduction)
    num_terms = jnp.sum(valid)
  else:
    loss = losses.triplet_hinge(d_pos, d_neg, margin, reduction)
    num_terms = jnp.asarray(d_neg.size)
  return loss, (updates["batch_stats"], d_pos, d_neg, num_terms)


def train_step(state: TrainState, batch: dict, *, model: scene_model.CTLModel, margin: float,
               reduction: str, schedule: Callable,
               in_batch: bool = False) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of triplets; returns the new state and scalar metrics."""
  grad_fn = jax.value_and_grad(triplet_loss, has_aux=True)
  (loss, (batch_stats, d_pos, d_neg, num_terms)), grads = grad_fn(
      state.params, state, batch, model=model, margin=margin, reduction=reduction,
      in_batch=in_batch)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "triplet_accuracy": jnp.mean(d_pos[:, None] < d_neg),
      "loss_terms": num_terms,
      "d_pos": jnp.mean(d_pos),
      "d_neg": jnp.mean(d_neg),
      "l2_grads": optax.global_norm(grads),
      "l2_params": optax.global_norm(params),
      "learning_rate": schedule(state.step),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def scene_query_step(state: TrainState, batch: dict, *, model: scene_model.CTLModel) -> dict:
  """Ranking query v = f_s + q_c and attention of each (cropped) scene image."""
  query, attention = model.apply(state.variables(), batch["image"], batch["category"],
                                 method=scene_model.CTLModel.scene_query)
  return {"query": query, "attention": attention}


def product_embedding_step(state: TrainState, batch: dict, *, model: scene_model.CTLModel) -> dict:
  return {"embedding": model.apply(state.variables(), batch["image"],
                                   method=scene_model.CTLModel.product_embedding)}


def scene_query_from_features_step(state: TrainState, batch: dict, *,
                                   model: scene_model.CTLModel) -> dict:
  query, attention = model.apply(state.variables(), batch["global"], batch["regions"],
                                 batch["category"],
                                 method=scene_model.CTLModel.scene_query_from_features)
  return {"query": query, "attention": attention}


def product_embedding_from_features_step(state: TrainState, batch: dict, *,
                                         model: scene_model.CTLModel) -> dict:
  return {"embedding": model.apply(state.variables(), batch["global"],
                                   method=scene_model.CTLModel.product_embedding_from_features)}
