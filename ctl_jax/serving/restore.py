"""A trained model restored for inference from its workdir alone: the config and the task's
record come from the checkpoint, so serving needs no training data."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import ml_collections

from ctl_jax import task as task_lib
from ctl_jax.trainer import checkpoint, config_fields, optimizer, sharding
from ctl_jax.trainer.state import TrainState, create_train_state
from input_pipeline import storage


@dataclasses.dataclass
class Restored:
  """A checkpoint of some task, ready for inference."""

  config: ml_collections.ConfigDict
  meta: dict  # the checkpoint's record: config, categories and the task's fields
  model: nn.Module
  state: TrainState
  mesh: jax.sharding.Mesh
  step: int

  @property
  def categories(self) -> list[str]:
    return list(self.meta["categories"])


def open_checkpoint(workdir: str | os.PathLike, choice: str | None = None
                    ) -> tuple[checkpoint.Checkpointer, int, dict]:
  """(Checkpointer, step, record) of the state `workdir` serves: the best validated one
  (workdir/best) or the latest, as `choice` says (default: the run's `eval.checkpoint`);
  NoCheckpointError when there is none."""
  checkpoint.require_checkpoints(workdir)
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=1, max_to_keep=1_000_000)
  step = ckpt.latest_step()
  if step is None:
    raise checkpoint.NoCheckpointError(f"no checkpoint under {ckpt.directory}: train first")
  meta = ckpt.restore_meta(step)
  if choice is None:
    choice = meta.get("config", {}).get("eval", {}).get("checkpoint", "latest")
  if choice == "best" and storage.isdir(storage.join(workdir, "best")):
    best = checkpoint.Checkpointer(workdir, save_every_steps=1, max_to_keep=1, name="best")
    best_step = best.latest_step()
    if best_step is not None:
      ckpt.close()
      return best, best_step, best.restore_meta(best_step)
    best.close()
  return ckpt, step, meta


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
  """The locked run config saved with a checkpoint, on today's fields of its task."""
  if "config" not in meta:
    raise config_fields.ConfigError("the checkpoint has no run config: pass --config")
  task = task_lib.get_task(meta["config"].get("task", ""))
  return config_fields.upgraded(meta["config"], task.config_base)


def restore(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
            task: str | None = None) -> Restored:
  """The served checkpoint of `workdir` (`open_checkpoint`: the best validated state unless the
  config says `eval.checkpoint='latest'`) with its model (config from the checkpoint unless
  given); IncompatibleCheckpointError when the checkpoint holds another task's model than
  `task` or the given config's."""
  ckpt, step, meta = open_checkpoint(workdir, None if config is None else config.eval.checkpoint)
  saved_task = meta.get("config", {}).get("task")
  if config is None:
    config = config_from_meta(meta)
  else:  # the user's: exactly its task's fields, as for training
    chosen = task_lib.get_task(config.task)
    config_fields.check_fields(config, chosen.name, chosen.config_base)
    if saved_task and saved_task != config.task:
      ckpt.close()
      raise checkpoint.IncompatibleCheckpointError(
          f"{workdir} holds a {saved_task}-task model (checkpoint step {step}); the --config "
          f"is a {config.task}-task config: pass that run's config, or none (the checkpoint "
          f"has its own)")
  if task is not None and config.task != task:
    ckpt.close()
    flag = {"scene": "--scene", "product": "--product"}
    raise checkpoint.IncompatibleCheckpointError(
        f"{workdir} holds a {config.task}-task model (checkpoint step {step}); this needs a "
        f"{task}-task model" + (f": use {flag[config.task]} IMG" if config.task in flag else ""))
  model = task_lib.get_task(config.task).create_model(config, meta)
  mesh = sharding.make_mesh()
  tx, _ = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  like = create_train_state(model, tx, jax.random.PRNGKey(config.seed), config.input.image_size,
                            mesh)
  state, _ = ckpt.restore(like, step)
  ckpt.close()
  return Restored(config, meta, model, state, mesh, step)
