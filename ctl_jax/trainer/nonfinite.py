"""NaN/Inf guard of the train step: detect on device, skip by config, report at the next sync.

`train.on_nonfinite`:
  'stop'  the run ends with NonFiniteError at the first check after a bad step; the bad state is
          never saved, so the last checkpoint is the last good one.
  'skip'  the step's update is dropped on device (jnp.where: state keeps its old values, the step
          counter and the input position still advance, so a resumed run stays exact), the skip
          is reported, and the run goes on; more than `train.max_skipped_steps` skips in one run
          stop it like 'stop' would.

Trade-off: the step computes a `finite` flag on device (loss, parameters and batch statistics
all finite) and the loop only reads the flags when it syncs anyway: at log steps and before
each save. Nothing waits for the device on other steps; the price is that a 'stop' comes up to
`log_every_steps` steps after the bad one (the state is not saved in between), and that the
report then names every bad step since the last check with its batch's image signatures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ctl_jax.trainer import cluster
from input_pipeline import storage

MODES = ("stop", "skip")
REPORT_FILE = "nonfinite.jsonl"


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/Inf loss or parameters (with train.on_nonfinite='stop')."""


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def guard(step_fn: Callable, mode: str) -> Callable:
  """`step_fn(state, batch) -> (state, metrics)` plus metrics['finite'] and, for 'skip', the
  update of a non-finite step dropped (every field but `step` keeps its old value)."""
  if mode not in MODES:
    raise ValueError(f"train.on_nonfinite={mode!r}; choose from {list(MODES)}")

  def guarded(state, batch):
    new, metrics = step_fn(state, batch)
    finite = jnp.isfinite(metrics["loss"]) & _all_finite((new.params, new.batch_stats))
    if mode == "skip":
      kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
      new = kept.replace(step=new.step)
    return new, {**metrics, "finite": finite}

  return guarded


class Monitor:
  """Collects each step's `finite` flag (on device) and the ids of its batch until `check`."""

  def __init__(self, mode: str, max_skipped: int, *, workdir: str, id_keys: Sequence[str],
               signatures: Callable[[dict], dict[str, list[str]]],
               last_good_step: Callable[[], int | None]):
    """
    Args:
      mode, max_skipped: `train.on_nonfinite` and `train.max_skipped_steps`.
      workdir: where the report file goes.
      id_keys: the host-batch entries that name a row's images.
      signatures: image signatures of the rows named by a dict of `id_keys` arrays.
      last_good_step: the newest saved step (named in the error of 'stop' mode).
    """
    self.mode, self.max_skipped = mode, max_skipped
    self.id_keys, self.signatures, self.last_good_step = tuple(id_keys), signatures, last_good_step
    self.skipped = 0
    self._pending: list[tuple[int, jax.Array, dict]] = []
    self._report_path = storage.join(workdir, REPORT_FILE)

  def record(self, step: int, metrics: dict, host_batch: dict) -> None:
    ids = {k: host_batch[k] for k in self.id_keys}
    self._pending.append((step, metrics["finite"], ids))

  def check(self) -> None:
    """Reads the pending flags (one transfer); reports bad steps; raises in 'stop' mode."""
    if not self._pending:
      return
    flags = jax.device_get([f for _, f, _ in self._pending])
    bad = [(step, ids) for (step, _, ids), ok in zip(self._pending, flags) if not ok]
    self._pending = []
    if not bad:
      return
    if self.mode == "stop":
      # Steps after the first bad one started from its non-finite state: only it is the fault.
      step, ids = bad[0]
      self._report(step, ids)
      raise NonFiniteError(
          f"non-finite loss or parameters at step {step} (see the batch signatures above and in "
          f"{self._report_path}); not saved: the last checkpoint, "
          f"step {self.last_good_step()}, is the last good state. Rerunning "
          f"resumes there and meets the same batches: lower the learning rate, clip gradients "
          f"(optimizer.grad_clip_norm) or set train.on_nonfinite='skip'.")
    for step, ids in bad:
      self._report(step, ids)
    self.skipped += len(bad)
    if self.skipped > self.max_skipped:
      raise NonFiniteError(f"{self.skipped} steps skipped for non-finite values in this run, "
                           f"more than train.max_skipped_steps={self.max_skipped}: the training "
                           f"has diverged rather than met a few bad batches")

  def _report(self, step: int, ids: dict) -> None:
    if jax.process_count() > 1:  # the whole global batch, in batch order
      ids = {k: np.asarray(v) for k, v in
             multihost_utils.process_allgather(ids, tiled=True).items()}
    signatures = self.signatures(ids)
    action = "update skipped" if self.mode == "skip" else "run stops"
    logging.error("non-finite loss or parameters at step %d (%s); the batch's images: %s", step,
                  action, "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in signatures.items()))
    if cluster.is_main_process():
      storage.append_text(self._report_path, json.dumps(
          {"step": step, "action": self.mode, "images": signatures}) + "\n")
