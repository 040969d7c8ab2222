"""Pure step functions of the product-based task; the trainer jits them once with shardings.

The style loss is chosen by `loss.name` from STYLE_LOSSES; the category classifier's
cross-entropy over every item of the batch is added with weight `loss.category_weight`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ctl_jax.nn import example_major, losses
from ctl_jax.nn.losses import squared_l2
from ctl_jax.product import losses as product_losses
from ctl_jax.product.model import ProductModel
from ctl_jax.trainer.state import TrainState, gradient_step


def _triplet(out, d_pos, d_neg, settings):
  return losses.triplet_hinge(d_pos, d_neg, settings["margin"], settings["reduction"])


def _contrastive(out, d_pos, d_neg, settings):
  return product_losses.contrastive(d_pos, d_neg, settings["contrastive_margin"])


def _proxy(out, d_pos, d_neg, settings):
  # Anchor and positive belong to the same outfit: both are classified into its proxy.
  x = example_major.merge([out["anchor"][:, None], out["positive"][:, None]])
  proxies = example_major.merge([out["proxies"][:, None], out["proxies"][:, None]])
  return product_losses.sampled_proxy_softmax(x, proxies, settings["temperature"])


STYLE_LOSSES: dict[str, Callable] = {"triplet": _triplet, "contrastive": _contrastive,
                                     "proxy": _proxy}


def product_loss(params: Any, state: TrainState, batch: dict, *, model: ProductModel,
                 loss_name: str, settings: dict,
                 category_weight: float) -> tuple[jax.Array, tuple[Any, dict]]:
  """Training-mode loss of `batch` at `params`: style loss + weighted category cross-entropy.

  Returns:
    loss, and aux = (new batch_stats, dict of scalar diagnostics).
  """
  out, updates = model.apply(
      state.variables(params), batch, train=True,
      rngs={"dropout": jax.random.fold_in(state.rng, state.step)}, mutable=["batch_stats"])
  d_pos = squared_l2(out["anchor"], out["positive"])
  d_neg = squared_l2(out["anchor"][:, None, :], out["negative"])
  style = STYLE_LOSSES[loss_name](out, d_pos, d_neg, settings)
  # Example-major, like the model's items: role-major order would reshard the batch.
  logits = example_major.merge([out["anchor_logits"][:, None], out["positive_logits"][:, None],
                                out["negative_logits"]])
  labels = example_major.merge([batch["anchor_category"][:, None],
                                batch["positive_category"][:, None], batch["negative_category"]])
  category = product_losses.categorical_cross_entropy(logits, labels)
  loss = style + category_weight * category
  aux = {"style_loss": style, "category_loss": category,
         "triplet_accuracy": jnp.mean(d_pos[:, None] < d_neg),
         "category_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
         "d_pos": jnp.mean(d_pos), "d_neg": jnp.mean(d_neg)}
  return loss, (updates["batch_stats"], aux)


def train_step(state: TrainState, batch: dict, *, model: ProductModel, loss_name: str,
               settings: dict, category_weight: float,
               schedule: Callable) -> tuple[TrainState, dict]:
  """One optimizer step on a batch of tuples; returns the new state and scalar metrics."""
  loss_fn = functools.partial(product_loss, model=model, loss_name=loss_name, settings=settings,
                              category_weight=category_weight)
  return gradient_step(loss_fn, state, batch, schedule)


def item_step(state: TrainState, batch: dict, *, model: ProductModel) -> dict:
  """Style, logits and backbone vector of item crops (inference mode)."""
  return model.apply(state.variables(), batch["image"], method="item_outputs")


def item_from_features_step(state: TrainState, batch: dict, *, model: ProductModel) -> dict:
  """`item_step` from cached backbone features (`global`)."""
  return model.apply(state.variables(), batch["global"], method="item_outputs_from_features")
