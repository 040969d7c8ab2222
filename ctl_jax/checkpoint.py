"""Orbax checkpoints of the train state plus a JSON record of the run (config, categories).

Resume order: the latest checkpoint in `workdir/checkpoints` > a fresh initialisation (with the
user's backbone weights when `model.backbone_weights` is set).
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from ctl_jax.train_state import TrainState, abstract_state


class Checkpointer:
  """Periodic, asynchronous saves that keep the last `max_to_keep`; restore into a sharded target."""

  def __init__(self, workdir: str | os.PathLike, *, save_every_steps: int, max_to_keep: int):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_every_steps, create=True)
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: TrainState, meta: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` (which is at `step`) if the interval says so, or when `force`.

    The step is passed in so that deciding not to save never waits for the device.
    """
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """The state saved at `step` (default latest), with the shardings of `like`, and its meta."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(like)), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def restore_meta(self, step: int | None = None) -> dict:
    """The run record saved at `step` (default latest) without reading the state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
