"""The optimizer and learning-rate schedule of the `optimizer` config section (optax)."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import optax


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


def make_optimizer(opt_config: ml_collections.ConfigDict,
                   num_steps: int) -> tuple[optax.GradientTransformation, Callable]:
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
