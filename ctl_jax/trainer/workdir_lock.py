"""One run per workdir: process 0 of a run holds `workdir/run.lock` while it works.

Two runs writing one workdir would interleave checkpoints and append every step twice to
metrics.jsonl. The lock is an advisory `flock` on the lock file: the kernel releases it when its
holder ends, however it ends (kill -9 included), so a lock left behind by a dead process is never
taken for a live one, and nobody has to delete it. The file records the holder (host, pid,
command, start time) for the message a second run stops with.

On a file system without `flock` (some network mounts) the run goes on with a warning: concurrent
runs are then not detected. An object-store workdir (`gs://...`) has no locks at all: its lock
file lives on the local disk (`~/.cache/ctl_jax/locks/`, named by a hash of the URL), so two runs
on one host are stopped, runs on two hosts are not. Within one process the lock is re-entrant
(a test, or a command that calls another, may take it twice).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator

from input_pipeline import storage

LOCK_FILE = "run.lock"

_held: dict[str, tuple[int, int]] = {}  # real workdir path -> (file descriptor, depth)


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      record = json.load(f)
    return (f"pid {record['pid']} on {record['host']} since {record['since']} "
            f"(`{record['command']}`)")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


def _lock_path(workdir: str | os.PathLike) -> tuple[str, str]:
  """(lock file, key of the workdir) for a local folder or an object-store URL."""
  if storage.is_remote(workdir):
    url = os.fspath(workdir).rstrip("/")
    folder = os.path.join(os.path.expanduser("~"), ".cache", "ctl_jax", "locks")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, hashlib.sha256(url.encode()).hexdigest()[:24] + ".lock"), url
  return os.path.join(workdir, LOCK_FILE), os.path.realpath(workdir)


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds the lock of `workdir` (an existing folder) for the `with` block.

  Raises:
    WorkdirLockedError: a live process holds it; the message names that process.
  """
  path, key = _lock_path(workdir)
  if key in _held:  # re-entrant within this process
    fd, depth = _held[key]
    _held[key] = (fd, depth + 1)
    try:
      yield
    finally:
      fd, depth = _held[key]
      _held[key] = (fd, depth - 1)
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      os.close(fd)
      raise WorkdirLockedError(
          f"workdir {workdir} is in use by {_holder(path)} (lock {path}); wait for that run "
          f"to end, or pass another --workdir") from None
    logging.warning("cannot lock %s (%s): a second run on this workdir would not be detected",
                    path, e.strerror)
    os.close(fd)
    yield
    return
  record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
  _held[key] = (fd, 1)
  try:
    yield
  finally:
    fd, depth = _held[key]
    if depth <= 1:
      del _held[key]
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
    else:
      _held[key] = (fd, depth - 1)
