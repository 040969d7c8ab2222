"""Checkpoint integrity and compatibility, NaN/Inf handling, metrics.jsonl and TensorBoard, all in
one process (the multi-process, signal and kill -9 tests are in test_multihost.py)."""

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from ctl_jax import task as task_lib
from ctl_jax.scene.task import SceneTask
from ctl_jax.trainer import checkpoint, loop, nonfinite, run_log


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved_states(smoke_config, workdir, steps=(2, 4)):
  """A run whose checkpoints at `steps` hold distinct states (params + step)."""
  run = loop.setup(smoke_config, str(workdir))
  states = {}
  for step in steps:
    state = run.fresh_state()
    state = state.replace(step=state.step + step,
                          params=jax.tree.map(lambda x, s=step: x + s, state.params))
    run.checkpointer.save(step, state, run.meta(), force=True)
    states[step] = jax.device_get(state)
  run.checkpointer.wait()
  return run, states


def _largest_state_file(workdir, step):
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**"),
                                recursive=True) if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
  """Changes bytes in the middle of the file, keeping its size (silent disk corruption)."""
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    chunk = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0x5A for b in chunk))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes], ids=["truncated", "altered"])
def test_damaged_latest_checkpoint_falls_back_to_previous(smoke_config, tmp_path, damage,
                                                          caplog):
  _, states = _saved_states(smoke_config, tmp_path)
  damage(_largest_state_file(tmp_path, 4))
  run = loop.setup(smoke_config, str(tmp_path))  # a new run of the same command
  with caplog.at_level(logging.ERROR):
    restored = run.restore_or_init()
  assert int(restored.step) == 2
  assert _leaves_equal(jax.device_get(restored.params), states[2].params)
  assert any("checkpoint step 4" in r.getMessage() and "previous" in r.getMessage()
             for r in caplog.records)
  # The damaged step is moved aside, so the run saves a new step 4 where it was.
  assert run.checkpointer.all_steps() == [2]
  assert os.path.isdir(tmp_path / "checkpoints.corrupt" / "4")


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(smoke_config, tmp_path):
  _saved_states(smoke_config, tmp_path, steps=(2,))
  _truncate(_largest_state_file(tmp_path, 2))
  with pytest.raises(checkpoint.CorruptCheckpointError, match="no usable checkpoint"):
    loop.setup(smoke_config, str(tmp_path)).restore_or_init()


def test_checkpoint_of_incompatible_config_names_the_fields(smoke_config, tmp_path):
  _saved_states(smoke_config, tmp_path, steps=(2,))
  smoke_config.model.embed_dim = 24
  smoke_config.optimizer.name = "sgd"
  smoke_config.optimizer.learning_rate = 0.5  # not a state field: allowed to change
  with pytest.raises(checkpoint.IncompatibleCheckpointError) as error:
    loop.setup(smoke_config, str(tmp_path)).restore_or_init()
  message = str(error.value)
  assert "model.embed_dim: 16 -> 24" in message and "optimizer.name: 'adam' -> 'sgd'" in message
  assert "learning_rate" not in message.split("(Fields")[0]
  # The refused checkpoint is left in place, not treated as damage.
  assert checkpoint.Checkpointer(tmp_path, save_every_steps=1, max_to_keep=3).all_steps() == [2]


def test_changed_non_state_settings_resume(smoke_config, tmp_path):
  _, states = _saved_states(smoke_config, tmp_path, steps=(2,))
  smoke_config.optimizer.learning_rate = 0.5
  restored = loop.setup(smoke_config, str(tmp_path)).restore_or_init()
  assert int(restored.step) == 2 and _leaves_equal(jax.device_get(restored.params),
                                                   states[2].params)


POISONED_STEP = 3


class PoisonedTask(SceneTask):
  """The scene task whose step 3 yields NaN parameters and loss (as a diverging step would)."""

  def train_step(self, config, model, schedule):
    step_fn = super().train_step(config, model, schedule)

    def poisoned(state, batch):
      new, metrics = step_fn(state, batch)
      factor = jnp.where(new.step == POISONED_STEP, jnp.nan, 1.0)
      new = new.replace(params=jax.tree.map(lambda p: p * factor, new.params))
      return new, {**metrics, "loss": metrics["loss"] * factor}

    return poisoned


def _step_signatures(run, step):
  """The image signatures of the global batch of `step` (one process: the host batch)."""
  batch = next(run.task.train_batches(run.config, run.data, step - 1, None))
  return run.task.signatures(run.data, {k: batch[k] for k in run.task.id_keys})


def test_nonfinite_step_stops_and_keeps_last_good_checkpoint(smoke_config, tmp_path,
                                                            monkeypatch, caplog):
  monkeypatch.setitem(task_lib.TASKS, "scene", PoisonedTask)
  smoke_config.train.num_steps = 6
  smoke_config.train.log_every_steps = 2  # the flag is read at step 4, one step after the fault
  smoke_config.train.checkpoint_every_steps = 2
  run = loop.setup(smoke_config, str(tmp_path))
  with caplog.at_level(logging.ERROR), pytest.raises(nonfinite.NonFiniteError,
                                                     match=r"at step 3 .*checkpoint, step 2,"):
    loop.train(run)
  assert run.checkpointer.all_steps() == [2]
  restored = run.restore_or_init()
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(restored.params)))
  expected = _step_signatures(run, POISONED_STEP)
  with open(tmp_path / nonfinite.REPORT_FILE) as f:
    records = [json.loads(line) for line in f]
  assert records == [{"step": 3, "action": "stop", "images": expected}]
  logged = "\n".join(r.getMessage() for r in caplog.records)
  assert "step 3" in logged and all(sig in logged for sig in expected["scene"])


def test_nonfinite_step_skipped_by_config(smoke_config, tmp_path, monkeypatch):
  monkeypatch.setitem(task_lib.TASKS, "scene", PoisonedTask)
  smoke_config.train.num_steps = 4
  smoke_config.train.log_every_steps = 1
  smoke_config.train.checkpoint_every_steps = 1
  smoke_config.train.on_nonfinite = "skip"
  run = loop.setup(smoke_config, str(tmp_path))
  final = loop.train(run)
  assert int(final.step) == 4
  like = run.fresh_state()
  saved = {s: jax.device_get(run.checkpointer.restore(like, s)[0]) for s in (2, 3, 4)}
  # Step 3's update was dropped: parameters and optimizer state as after step 2.
  assert _leaves_equal(saved[3].params, saved[2].params)
  assert _leaves_equal(saved[3].opt_state, saved[2].opt_state)
  assert not _leaves_equal(saved[4].params, saved[3].params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved[4].params))
  lines = _training_lines(tmp_path)
  assert [line["step"] for line in lines] == [1, 2, 3, 4]
  assert [line["skipped_steps"] for line in lines] == [0, 0, 1, 1]
  assert lines[2]["loss"] is None
  assert all(np.isfinite(line["loss"]) for line in lines if line["step"] != 3)
  with open(tmp_path / nonfinite.REPORT_FILE) as f:
    assert [json.loads(line)["action"] for line in f] == ["skip"]


def _training_lines(workdir):
  """The training lines of metrics.jsonl (validation lines hold `validation/...` instead)."""
  with open(workdir / run_log.METRICS_FILE) as f:
    return [line for line in map(json.loads, f) if "loss" in line]


def _tensorboard_scalars(logdir):
  scalars = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  return scalars


def test_metrics_jsonl_and_tensorboard(smoke_config, tmp_path):
  smoke_config.train.log_every_steps = 1
  run = loop.setup(smoke_config, str(tmp_path))
  loop.train(run, stop_after_step=3)
  loop.train(loop.setup(smoke_config, str(tmp_path)))  # resumes at 3, logs step 4
  lines = _training_lines(tmp_path)
  assert [line["step"] for line in lines] == [1, 2, 3, 4]
  board = _tensorboard_scalars(tmp_path / run_log.TENSORBOARD_DIR)
  for name in ("loss", "triplet_accuracy", "learning_rate", "triplets_per_second"):
    assert sorted(board[f"train/{name}"]) == [1, 2, 3, 4]
    # metrics.jsonl has every bit of the float32 value (TensorBoard stores float32).
    assert [np.float32(line[name]) for line in lines] == [np.float32(board[f"train/{name}"][s])
                                                    for s in (1, 2, 3, 4)]
  # The learning rate of each step's update, from the schedule (warmup from 0).
  assert [line["learning_rate"] for line in lines] == [float(np.float32(run.schedule(s)))
                                                 for s in range(4)]
  assert lines[0]["learning_rate"] == 0.0 and lines[2]["learning_rate"] > 0
