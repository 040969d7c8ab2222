"""Two runs on one workdir: the second stops at once with a message naming the first, and a lock
left by a process that died (kill -9) does not stop the next run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctl_jax.trainer import workdir_lock

ROOT = Path(__file__).resolve().parents[2]


def _python(code, timeout=120):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_second_train_on_a_held_workdir_stops_with_the_holder(stl_root, tmp_path):
  workdir = tmp_path / "work"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text("")
  with workdir_lock.hold(workdir):
    result = subprocess.run(
        [sys.executable, "run.py", "train", "--config", "configs/smoke.py",
         f"--workdir={workdir}", f"--config.data.root={stl_root}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("E")]
  assert len(errors) == 1 and "WorkdirLockedError" in errors[0], errors
  assert f"pid {os.getpid()}" in errors[0] and "pass another --workdir" in errors[0]
  assert (workdir / "metrics.jsonl").read_text() == ""  # the second run wrote nothing
  assert not (workdir / "checkpoints").exists()


def test_held_lock_refuses_another_process_and_is_released_on_exit(tmp_path):
  take = f"""
      from ctl_jax.trainer import workdir_lock
      try:
        with workdir_lock.hold({str(tmp_path)!r}):
          print("taken")
      except workdir_lock.WorkdirLockedError as e:
        print("refused:", e)
      """
  with workdir_lock.hold(tmp_path):
    with workdir_lock.hold(tmp_path):  # re-entrant within a process
      pass
    assert "refused: workdir" in _python(take).stdout  # still held after the inner block
  assert _python(take).stdout.strip() == "taken"


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
  killed = _python(f"""
      import os, signal
      from ctl_jax.trainer import workdir_lock
      with workdir_lock.hold({str(tmp_path)!r}):
        os.kill(os.getpid(), signal.SIGKILL)
      """)
  assert killed.returncode == -signal.SIGKILL
  record = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert record["pid"] != os.getpid()  # the dead process's record is still there...
  with workdir_lock.hold(tmp_path):  # ...but its lock went with it
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_taken_before_anything_is_read(smoke_config, tmp_path):
  """In process: a held workdir stops train_and_evaluate before the data or a checkpoint."""
  from ctl_jax.trainer import loop
  smoke_config.data.root = str(tmp_path / "no-such-data")  # reading it would be a DataError
  workdir = tmp_path / "work"
  workdir.mkdir()
  held = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from ctl_jax.trainer import workdir_lock
          with workdir_lock.hold({str(workdir)!r}):
            print("held", flush=True)
            sys.stdin.read()
          """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert held.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {held.pid} on "):
      loop.train_and_evaluate(smoke_config, str(workdir))
  finally:
    held.communicate("", timeout=60)
