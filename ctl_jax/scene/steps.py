"""Pure step functions of the scene task; the trainer jits them once with explicit shardings."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ctl_jax.nn import losses
from ctl_jax.scene import distances
from ctl_jax.scene import losses as scene_losses
from ctl_jax.scene.model import SceneModel
from ctl_jax.trainer.state import TrainState, gradient_step


def triplet_loss(params: Any, state: TrainState, batch: dict, *, model: SceneModel, margin: float,
                 reduction: str, in_batch: bool = False) -> tuple[jax.Array, tuple[dict, dict]]:
  """Training-mode triplet loss of `batch` at `params`.

  With `in_batch`, every product of the batch that shares a row's category and is not in its
  scene is a negative of that row too, scored by one inner product with the ranking query.

  Returns:
    loss, and aux = (new batch_stats, scalar metrics: triplet accuracy, scored negative terms,
    mean d_pos and d_neg).
  """
  (d_pos, d_neg, aux), updates = model.apply(
      state.variables(params), batch, train=True,
      rngs={"dropout": jax.random.fold_in(state.rng, state.step)}, mutable=["batch_stats"])
  if in_batch:
    b, n = d_neg.shape
    candidates = jnp.concatenate([aux["positive"], aux["negative"].reshape(b * n, -1)])
    d_candidates = distances.distance_from_query(aux["query"], candidates)
    valid = scene_losses.in_batch_negative_mask(
        batch["category"], batch["positive_index"], batch["scene_products"],
        jnp.concatenate([batch["category"], jnp.repeat(batch["category"], n)]),
        jnp.concatenate([batch["positive_index"], batch["negative_index"].reshape(-1)]))
    loss = scene_losses.in_batch_triplet_hinge(d_pos, d_candidates, valid, margin, reduction)
    num_terms = jnp.sum(valid)
  else:
    loss = losses.triplet_hinge(d_pos, d_neg, margin, reduction)
    num_terms = jnp.asarray(d_neg.size)
  metrics = {"triplet_accuracy": jnp.mean(d_pos[:, None] < d_neg), "loss_terms": num_terms,
             "d_pos": jnp.mean(d_pos), "d_neg": jnp.mean(d_neg)}
  return loss, (updates["batch_stats"], metrics)


def train_step(state: TrainState, batch: dict, *, model: SceneModel, margin: float,
               reduction: str, schedule: Callable,
               in_batch: bool = False) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of triplets; returns the new state and scalar metrics."""
  loss_fn = functools.partial(triplet_loss, model=model, margin=margin, reduction=reduction,
                              in_batch=in_batch)
  return gradient_step(loss_fn, state, batch, schedule)


def scene_query_step(state: TrainState, batch: dict, *, model: SceneModel) -> dict:
  """Ranking query v = f_s + q_c and attention of each (cropped) scene image."""
  query, attention = model.apply(state.variables(), batch["image"], batch["category"],
                                 method=SceneModel.scene_query)
  return {"query": query, "attention": attention}


def product_embedding_step(state: TrainState, batch: dict, *, model: SceneModel) -> dict:
  """Embedding f_p of each product image."""
  return {"embedding": model.apply(state.variables(), batch["image"],
                                   method=SceneModel.product_embedding)}


def scene_query_from_features_step(state: TrainState, batch: dict, *,
                                   model: SceneModel) -> dict:
  """`scene_query_step` from cached backbone features (`global`, `regions`)."""
  query, attention = model.apply(state.variables(), batch["global"], batch["regions"],
                                 batch["category"], method=SceneModel.scene_query_from_features)
  return {"query": query, "attention": attention}


def product_embedding_from_features_step(state: TrainState, batch: dict, *,
                                         model: SceneModel) -> dict:
  """`product_embedding_step` from cached backbone features (`global`)."""
  return {"embedding": model.apply(state.variables(), batch["global"],
                                   method=SceneModel.product_embedding_from_features)}
