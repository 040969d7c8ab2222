"""Orbax checkpoints of the train state plus a JSON record of the run, verified on restore.

Resume order: the latest *good* checkpoint in `workdir/checkpoints` > a fresh initialisation
(with the user's backbone weights when `model.backbone_weights` is set). The state with the best
validation figure so far is kept in `workdir/best` (one step, its record holds the figures):
evaluation and export use it by default (`eval.checkpoint`), resuming never does.

Integrity. Orbax writes a step into a temporary folder and renames it when complete, so a save
cut short (kill -9, lost machine) never looks like a checkpoint. Damage after that (a truncated or
altered file) is caught on restore: unreadable files raise, and every leaf of the state has a
checksum in the meta record that the restored values must match. A damaged step is reported
and the previous one is tried; the damaged folders move to `workdir/checkpoints.corrupt/` (kept
for inspection, and out of the way of the steps the run will save again).

Compatibility. A checkpoint whose state has other leaves or shapes than the current model, or
whose record differs in a field the caller says defines the state (`validate`), is refused with
an `IncompatibleCheckpointError` naming what differs: it is never "repaired" by falling back.

Saves are asynchronous (orbax copies the state to host memory and writes it in a background
thread), so a save holds the loop for about one device-to-host copy, not for the disk.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ctl_jax.trainer import cluster
from ctl_jax.trainer.state import TrainState, abstract_state
from input_pipeline import storage


class IncompatibleCheckpointError(ValueError):
  """A checkpoint was written by a run whose state cannot continue in this one."""


class NoCheckpointError(FileNotFoundError):
  """The workdir has no checkpoint (yet): train first."""


def require_checkpoints(workdir: str | os.PathLike, name: str = "checkpoints") -> None:
  """NoCheckpointError, before anything is created, when `workdir` holds no checkpoint folder
  (a misspelt --workdir, or a run that never saved): commands that only read a trained run call
  this first, since opening a checkpoint manager creates its folder."""
  if not storage.isdir(workdir):
    raise NoCheckpointError(f"workdir {workdir} does not exist: check --workdir, or train first")
  if not storage.isdir(storage.join(workdir, name)):
    raise NoCheckpointError(f"no checkpoint in {workdir} (no {name}/ folder): check --workdir, "
                            "or train first")


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files cannot be read, or do not hold what was saved."""


def _host_copy(x) -> np.ndarray:
  """The whole value of `x` on this host (replicated arrays: the local replica, no transfer
  between processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def state_checksums(state: TrainState) -> dict[str, int]:
  """{leaf path: CRC-32 of its bytes} of every array of `state`.

  Computed on the host: one copy of the state (~0.1 s per 100 MB here) and no compiled program.
  (A jitted on-device checksum of every leaf took 30 s to compile for ResNet-50 on this
  machine, and that held the first save.)
  """
  paths_and_leaves = jax.tree_util.tree_flatten_with_path(
      flax.serialization.to_state_dict(state))[0]
  return {_path(p): zlib.crc32(np.ascontiguousarray(_host_copy(leaf)).reshape(-1).view(np.uint8))
          for p, leaf in paths_and_leaves}


def _key_name(k) -> str:
  """A path entry as text; a sequence index and a state-dict key '0' read the same."""
  for attribute in ("key", "name", "idx"):
    if hasattr(k, attribute):
      return str(getattr(k, attribute))
  return str(k)


def _path(keys) -> str:
  return "/".join(_key_name(k) for k in keys)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  return {_path(p): (tuple(x.shape), str(np.dtype(x.dtype)))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_differences(saved_tree: Any, target_tree: Any, limit: int = 10) -> list[str]:
  """Leaves missing from either side or with another shape/dtype, as readable lines."""
  saved, target = _shapes(saved_tree), _shapes(target_tree)
  lines = [f"{k}: only in the checkpoint {saved[k]}" for k in sorted(saved.keys() - target)]
  lines += [f"{k}: not in the checkpoint, now {target[k]}" for k in sorted(target.keys() - saved)]
  lines += [f"{k}: checkpoint {saved[k]}, now {target[k]}"
            for k in sorted(saved.keys() & target.keys()) if saved[k] != target[k]]
  return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


@functools.cache  # once per process
def _write_whole_replicas() -> None:
  """Each replicated array is written whole from its first replica.

  Orbax's default (replica-parallel writes) slices every replicated array into one piece per
  replica; each slice shape is a small XLA program compiled on the first save, which held the
  training loop for seconds (hundreds of arrays). Our state is replicated, so the whole-replica
  write costs one device-to-host copy per array and compiles nothing.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def _brief(error: BaseException, limit: int = 300) -> str:
  """One line of a storage library's error, with its cause (which names the file and array):
  TensorStore appends its whole spec (dozens of lines) to the message, which would bury it."""
  text = str(error).split("See full TensorStore details", 1)[0].strip()
  text = text.splitlines()[0] if text else ""
  if len(text) > limit:
    text = text[:limit] + "..."
  line = f"{type(error).__name__}: {text}" if text else type(error).__name__
  if error.__cause__ is not None:
    line += f"; caused by {_brief(error.__cause__, limit)}"
  return line


_ABANDONED = ("Event loop is closed", "_read_array_index_and_device_put",
              "exception was never retrieved")


def _silence_abandoned_reads() -> None:
  """Keeps the echoes of a failed restore out of the log.

  When one array of a damaged checkpoint fails to read, orbax abandons the reads of the other
  arrays: their coroutines are collected unawaited and TensorStore's callbacks find the event
  loop closed, and each prints a traceback with TensorStore's whole spec (thousands of lines for
  a model), burying the one-line CorruptCheckpointError. Installed before a restore reads
  anything (the echoes can print before the failed read returns), these filters drop exactly
  those messages; every other error still prints."""
  if getattr(sys.excepthook, "_ctl_jax_quiet", False):
    return

  def abandoned(*parts) -> bool:
    text = " ".join(str(p) for p in parts)
    return any(marker in text for marker in _ABANDONED)

  previous_excepthook, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not abandoned(value):
      previous_excepthook(kind, value, tb)

  def unraisablehook(unraisable):
    if not abandoned(unraisable.exc_value, unraisable.object):
      previous_unraisable(unraisable)

  excepthook._ctl_jax_quiet = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
  logging.getLogger("asyncio").addFilter(
      lambda record: not abandoned(record.getMessage()))
  threading.excepthook = (lambda args, previous=threading.excepthook:
                          None if abandoned(args.exc_value) else previous(args))


class Checkpointer:
  """Asynchronous saves that keep the last `max_to_keep`; verified restore into a sharded target."""

  def __init__(self, workdir: str | os.PathLike, *, save_every_steps: int, max_to_keep: int,
               name: str = "checkpoints"):
    """Checkpoints in `workdir/name` ('checkpoints': the run's; 'best': the best validated)."""
    _write_whole_replicas()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_every_steps, create=True,
                                           cleanup_tmp_directories=True)
    self.workdir = storage.absolute(workdir)
    self.directory = storage.join(self.workdir, name)
    self.quarantine_directory = storage.join(self.workdir, f"{name}.corrupt")
    # Handlers named up front: item_metadata() can then read a step's tree before restoring it.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: TrainState, meta: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves `state` (which is at `step`) if the interval says so, or when `force`.

    The meta record gains `step` and the checksums of `state`. The step is passed in so that
    deciding not to save never waits for the device.
    """
    if not force and not self.manager.should_save(step):
      return False
    meta = {**meta, "step": step, "checksums": state_checksums(state)}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """The state saved at `step` (default latest), with the shardings of `like`, and its meta.

    Raises:
      IncompatibleCheckpointError: the saved state has other leaves or shapes than `like`.
      CorruptCheckpointError: unreadable files, or values that fail their checksums.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise NoCheckpointError(f"no checkpoint in {self.directory}")
    where = f"checkpoint step {step} in {self.directory}"
    # Before the first read: the echoes of an abandoned read can print before its error returns.
    _silence_abandoned_reads()
    try:
      saved_tree = self.manager.item_metadata(step)["state"]
    except Exception as e:  # any unreadable metadata file is damage
      _silence_abandoned_reads()
      raise CorruptCheckpointError(f"{where}: unreadable metadata ({_brief(e)})") from e
    target = abstract_state(like)
    differences = structure_differences(saved_tree, flax.serialization.to_state_dict(target))
    if differences:
      raise IncompatibleCheckpointError(
          f"{where} holds a different model state than this config builds:\n  "
          + "\n  ".join(differences))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # tensorstore/orbax raise many types for truncated or garbled files
      _silence_abandoned_reads()
      raise CorruptCheckpointError(f"{where}: unreadable ({_brief(e)})") from e
    state, meta = restored["state"], dict(restored["meta"] or {})
    expected = meta.get("checksums")
    if expected is None:
      logging.warning("%s has no checksums (written by an older version): not verified", where)
    else:
      actual = state_checksums(state)
      bad = sorted(k for k in expected.keys() | actual.keys()
                   if expected.get(k) != actual.get(k))
      if bad:
        raise CorruptCheckpointError(f"{where}: {len(bad)} array(s) do not match the checksums "
                                     f"saved with them, e.g. {bad[:3]}")
    return state, meta

  def restore_latest_good(self, like: TrainState,
                          validate: Callable[[int, dict], None] | None = None,
                          ) -> tuple[TrainState, dict, int] | None:
    """(state, meta, step) of the newest checkpoint that passes every check, or None if none.

    Damaged checkpoints newer than the one restored are reported and moved to the quarantine
    folder. If checkpoints exist but none is usable, raises instead of starting from scratch.

    Args:
      validate: `validate(step, meta)` raises IncompatibleCheckpointError when the checkpoint's
        record says it belongs to another experiment; checked before any array is read.
    """
    damaged: list[tuple[int, str]] = []
    for step in reversed(self.all_steps()):
      result, problem = None, None
      try:
        if validate is not None:
          validate(step, self._meta_or_corrupt(step))
        result = self.restore(like, step)
      except CorruptCheckpointError as e:
        problem = str(e)
      # Every process restores; all must succeed before anyone trains from this step.
      if not cluster.all_processes_agree(problem is None):
        problem = problem or f"checkpoint step {step}: another process could not restore it"
      if problem is not None:
        logging.error("%s; trying the previous checkpoint", problem)
        damaged.append((step, problem))
        continue
      if damaged:
        self._quarantine([s for s, _ in damaged])
      state, meta = result
      return state, meta, step
    if damaged:
      raise CorruptCheckpointError(
          f"no usable checkpoint in {self.directory}:\n  " + "\n  ".join(p for _, p in damaged)
          + f"\nMove {self.directory} away to start from scratch.")
    return None

  def _meta_or_corrupt(self, step: int) -> dict:
    _silence_abandoned_reads()
    try:
      return self.restore_meta(step)
    except Exception as e:
      _silence_abandoned_reads()
      raise CorruptCheckpointError(f"checkpoint step {step} in {self.directory}: unreadable "
                                   f"record ({_brief(e)})") from e

  def _quarantine(self, steps: list[int]) -> None:
    """Moves damaged steps out of the checkpoint folder (process 0; the others wait)."""
    if cluster.is_main_process():
      storage.makedirs(self.quarantine_directory)
      for step in steps:
        target = storage.join(self.quarantine_directory, str(step))
        storage.remove_tree(target)
        storage.move(storage.join(self.directory, str(step)), target)
        logging.warning("moved damaged checkpoint step %d to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("ctl_jax checkpoint quarantine")
    self.manager.reload()

  def restore_meta(self, step: int | None = None) -> dict:
    """The run record saved at `step` (default latest) without reading the state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise NoCheckpointError(f"no checkpoint in {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
