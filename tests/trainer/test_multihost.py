"""`run.py train` as real processes: 2 processes x 2 CPU devices joined by jax.distributed (gloo
on 127.0.0.1) against 1 process x 4 devices, SIGTERM -> checkpoint and exit 0, and kill -9 ->
rerun resumes exactly."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ctl_jax.trainer import checkpoint, loop, run_log

ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # the repository
TIMEOUT = 900  # seconds; generous: several engineers share 2 cores


def _command(smoke_config, workdir, **overrides):
  fields = {"data.root": smoke_config.data.root, "train.log_every_steps": 1, **overrides}
  return ([sys.executable, os.path.join(ROOT, "run.py"), "train", "--config",
           os.path.join(ROOT, "configs", "smoke.py"), f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in fields.items()])


def _env(devices):
  """Like the test process (same device count per run, same compiler settings): results can be
  compared bit for bit with runs in this process."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _metrics(workdir):
  """The training lines of metrics.jsonl."""
  path = os.path.join(workdir, run_log.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [json.loads(line) for line in f if line.endswith("\n")]
  return [m for m in lines if "loss" in m]  # training lines (not `validation/...`)


def _final_params(smoke_config, workdir):
  """Params of the latest checkpoint of `workdir`, restored in this (4-device) process."""
  run = loop.setup(smoke_config, str(workdir))
  return jax.device_get(run.restore_or_init().params)


def _wait_for_step(process, workdir, step):
  deadline = time.monotonic() + TIMEOUT
  while not any(m["step"] >= step for m in _metrics(workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)


def test_two_processes_match_one_process(smoke_config, tmp_path):
  smoke_config.train.log_every_steps = 1
  smoke_config.train.num_steps = 4
  single = tmp_path / "single"
  loop.train(loop.setup(smoke_config, str(single)))

  multi = tmp_path / "multi"
  port = _free_port()
  processes = [subprocess.Popen(
      _command(smoke_config, multi, **{"train.num_steps": 4, "eval.baselines": False})
      + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
      for i in range(2)]
  outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  (out0, err0), (out1, err1) = outputs
  assert "2 process(es)" in err0 and "4 device(s)" in err0 and "2 per process" in err0
  # Logs, metrics and the results table come from process 0 only.
  assert "step 4/4" in err0 and "step 4/4" not in err1
  assert "auc" in out0 and "auc" not in out1

  one, two = _metrics(single), _metrics(multi)
  assert [m["step"] for m in two] == [1, 2, 3, 4]
  # Same global batches, same initial state: the same losses up to the order of the
  # cross-device sums (gloo between processes vs in-process all-reduce).
  np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-5)
  two_params, one_params = (_flat(_final_params(smoke_config, w)) for w in (multi, single))
  assert two_params.keys() == one_params.keys()
  modules = {path[:-1] for path in two_params}
  compared = 0
  for path, value in two_params.items():
    if path[-2:] == ("Dense_0", "bias") and path[:-2] + ("BatchNorm_0",) in modules:
      # Dense_0 -> BatchNorm_0: the batch mean cancels this bias, so its gradient is 0 but for
      # rounding, and Adam scales that noise to full-size steps: noise in both runs, unused.
      continue
    np.testing.assert_allclose(value, one_params[path], rtol=1e-4, atol=1e-5, err_msg=str(path))
    compared += 1
  assert compared == len(two_params) - 3  # all but the first biases of heads f, l and h


def _flat(params):
  return {tuple(k.key for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


NUM_STEPS = 12


@pytest.fixture(scope="module")
def uninterrupted_params(tmp_path_factory, stl_root):
  from configs import smoke
  config = smoke.get_config()
  config.data.root = str(stl_root)
  config.train.num_steps = NUM_STEPS
  config.train.log_every_steps = 1
  workdir = tmp_path_factory.mktemp("uninterrupted")
  return jax.device_get(loop.train(loop.setup(config, str(workdir))).params)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits_0_then_resumes_exactly(smoke_config, tmp_path, sig,
                                                       uninterrupted_params):
  smoke_config.train.num_steps = NUM_STEPS
  process = subprocess.Popen(_command(smoke_config, tmp_path, **{"train.num_steps": NUM_STEPS}),
                             env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
  _wait_for_step(process, tmp_path, 3)
  process.send_signal(sig)
  _, err = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, err[-3000:]
  # The opening lines say where everything goes.
  for where in ("checkpoints", "metrics.jsonl", "tensorboard --logdir", "4 device(s)"):
    assert where in err
  stopped_at = _metrics(tmp_path)[-1]["step"]
  assert 3 <= stopped_at < NUM_STEPS and f"stopped by {sig.name} after step {stopped_at}" in err
  ckpt = checkpoint.Checkpointer(tmp_path, save_every_steps=2, max_to_keep=3)
  assert ckpt.latest_step() == stopped_at  # the step it finished, not the last periodic save
  resumed = loop.train(loop.setup(smoke_config, str(tmp_path)))
  assert int(resumed.step) == NUM_STEPS
  np.testing.assert_equal(jax.device_get(resumed.params), uninterrupted_params)


def test_kill_9_then_rerun_resumes_exactly(smoke_config, tmp_path, uninterrupted_params):
  smoke_config.train.num_steps = NUM_STEPS
  command = _command(smoke_config, tmp_path, **{"train.num_steps": NUM_STEPS})
  process = subprocess.Popen(command, env=_env(4), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)
  ckpt = checkpoint.Checkpointer(tmp_path, save_every_steps=2, max_to_keep=3)
  _wait_for_step(process, tmp_path, 5)  # checkpoints at 2 and 4 are complete or under way
  process.kill()
  process.communicate(timeout=TIMEOUT)
  assert process.returncode == -signal.SIGKILL
  ckpt.manager.reload()
  killed_at = _metrics(tmp_path)[-1]["step"]
  assert ckpt.latest_step() is not None and ckpt.latest_step() < NUM_STEPS
  # The same command again: resumes from the last complete checkpoint, with the input position
  # and dropout rng of that step, and ends where a run that was never killed ends.
  rerun = subprocess.run(command, env=_env(4), capture_output=True, text=True, cwd=ROOT,
                         timeout=TIMEOUT)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "restored checkpoint step" in rerun.stderr
  steps = [m["step"] for m in _metrics(tmp_path)]
  assert steps == list(range(1, NUM_STEPS + 1)), (killed_at, steps)  # redone steps replace lines
  np.testing.assert_equal(_final_params(smoke_config, tmp_path), uninterrupted_params)
