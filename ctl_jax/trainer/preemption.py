"""Stop requests (SIGTERM from a scheduler, SIGINT from Ctrl-C) turned into a clean stop at a step
that every process agrees on, so the trainer can save a checkpoint and exit 0.

One process: Python handlers set a flag that the loop reads after each step.
Several processes (`jax.distributed`): JAX's preemption sync manager already catches SIGTERM on
any host and agrees on a step at which all hosts stop (`reached_preemption_sync_point`, called
once per step, costs no communication until a notice arrives). SIGINT is forwarded to it as a
SIGTERM of this process, so Ctrl-C on one host stops the whole job at one step as well.
A second SIGINT restores the default handler's behaviour: the process ends at once, unsaved.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _distributed() -> bool:
  return jax.process_count() > 1 or jax.distributed.is_initialized()


class StopRequests:
  """Context manager: installs the handlers, and `should_stop(step)` says when to stop.

  All processes must call `should_stop` at every step (with the same step numbers).
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._distributed = _distributed()

  def __enter__(self) -> StopRequests:
    if threading.current_thread() is not threading.main_thread():
      logging.warning("training outside the main thread: SIGTERM/SIGINT will not save a checkpoint")
      return self
    # With jax.distributed, SIGTERM belongs to JAX's preemption notifier: leave it alone.
    ours = (signal.SIGINT,) if self._distributed else SIGNALS
    for sig in ours:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: give up on the clean stop
    self.signal_name = name
    logging.warning("%s received: finishing the current step, then saving a checkpoint "
                    "(Ctrl-C again to abort without saving)", name)
    if self._distributed:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier tells every process

  def should_stop(self, step: int) -> bool:
    """True when the run must stop after `step` (the same answer on every process)."""
    if self._distributed:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None
