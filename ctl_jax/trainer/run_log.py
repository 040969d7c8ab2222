"""What a run tells its user, all from process 0: the opening lines (where everything goes,
which hosts and devices), a progress bar with step rate and ETA, one log line and one
`metrics.jsonl` object per logged step, TensorBoard scalars, the dropped-records file, and the
evaluation's table and eval_metrics.json."""

from __future__ import annotations

import datetime
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence

import ml_collections
import tqdm

from ctl_jax.trainer import cluster
from input_pipeline import storage
from input_pipeline.readers.drops import DropReport

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RESULTS_FILE = "eval_metrics.json"
DROPS_FILE = "dropped_records.jsonl"  # one JSON object per record the readers skipped


def describe_outputs(config: ml_collections.ConfigDict, workdir: str,
                     checkpoint_dir: str) -> list[str]:
  """The opening lines of a run: what it runs (the config in brief; all of it is saved as
  W/config.json), where it writes, and what it runs on."""
  t = config.train
  board = storage.join(storage.absolute(workdir), TENSORBOARD_DIR)
  d, m, o = config.data, config.model, config.optimizer
  data = f"TFDS {d.tfds_name}" if d.get("tfds_name") else f"folder {d.root}"
  return [
      f"config: task {config.task}; data {data} (source {d.source}); backbone {m.backbone} "
      f"({'frozen' if m.get('freeze_backbone') else 'trained'}, {config.input.image_size} px); "
      f"batch {config.input.batch_size}, {t.num_steps} steps, {o.get('name', '?')} "
      f"lr {o.get('learning_rate', '?')}",
      f"workdir {storage.absolute(workdir)} (config.json, eval_metrics.json)",
      f"checkpoints {checkpoint_dir} (every {t.checkpoint_every_steps} steps and at the end, "
      f"keep {t.max_checkpoints_to_keep}, asynchronous)",
      f"metrics {storage.join(storage.absolute(workdir), METRICS_FILE)} "
      f"(every {t.log_every_steps} steps)",
      "TensorBoard " + (f"tensorboard --logdir {board}" if t.tensorboard
                        else "off (train.tensorboard=False)"),
      cluster.describe_topology(),
  ]


def _json_value(v):
  return v if not isinstance(v, float) or math.isfinite(v) else None  # JSON has no NaN/Inf


class MetricsLog:
  """Process 0 appends one JSON object per logged step to workdir/metrics.jsonl.

  Floats are written with `repr` precision (they read back bit for bit); NaN and Inf as null.
  """

  def __init__(self, workdir: str):
    self.path = storage.join(workdir, METRICS_FILE)
    self.enabled = cluster.is_main_process()

  def drop_after(self, step: int) -> None:
    """Forgets lines of steps after `step`: a resumed run redoes them (after a kill -9)."""
    if not self.enabled or not storage.exists(self.path):
      return
    lines = [line + "\n" for line in storage.read_text(self.path).splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
      storage.write_atomic(self.path, "".join(kept))

  def write(self, step: int, values: dict) -> None:
    if self.enabled:
      storage.append_text(self.path, json.dumps(
          {"step": step, **{k: _json_value(v) for k, v in values.items()}}) + "\n")


class TensorBoard:
  """Scalars under workdir/tensorboard (process 0; a no-op elsewhere or when disabled).

  A remote workdir gets its event files through `storage` like every other output: they are
  written to a local folder and uploaded whole at each flush (they are small)."""

  def __init__(self, workdir: str, enabled: bool):
    self._writer = None
    self._remote = None
    if enabled and cluster.is_main_process():
      import tensorflow as tf  # TF's summary writer; TensorBoard reads its event files
      self._tf = tf
      board = storage.join(workdir, TENSORBOARD_DIR)
      if storage.is_remote(board):
        self._remote = (tempfile.TemporaryDirectory(prefix="ctl_jax_tensorboard_"), board)
        board = self._remote[0].name
      with tf.device("/cpu:0"):
        self._writer = tf.summary.create_file_writer(board)

  def _flush(self) -> None:
    self._writer.flush()
    if self._remote is not None:
      storage.upload_tree(self._remote[0].name, self._remote[1])

  def scalars(self, step: int, values: dict, prefix: str = "") -> None:
    if self._writer is None:
      return
    with self._writer.as_default(step=step), self._tf.device("/cpu:0"):
      for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tf.summary.scalar(prefix + k, float(v))
    self._flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      if self._remote is not None:
        storage.upload_tree(self._remote[0].name, self._remote[1])
        self._remote[0].cleanup()


def _eta(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(seconds))) if math.isfinite(seconds) else "?"


class TrainReport:
  """Progress bar, log lines, metrics.jsonl and TensorBoard for one call of the training loop."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, start_step: int,
               unit: str = "examples"):
    self.num_steps = config.train.num_steps
    self.batch_size = config.input.batch_size
    self.unit = unit  # what one row of a batch is: "triplets" (scene), "tuples" (product)
    self.metrics = MetricsLog(workdir)
    self.metrics.drop_after(start_step)
    self.tensorboard = TensorBoard(workdir, config.train.tensorboard)
    # A bar only on a terminal: in log files the log lines below carry the rate and the ETA.
    show_bar = cluster.is_main_process() and sys.stderr.isatty()
    self.bar = tqdm.tqdm(total=self.num_steps, initial=start_step, unit="step", desc="train",
                         disable=not show_bar, dynamic_ncols=True, mininterval=1.0)
    self._window = (time.perf_counter(), start_step)

  def advance(self) -> None:
    self.bar.update(1)

  def log(self, step: int, values: dict) -> dict:
    """Writes the metrics of `step`, with throughput since the previous call; returns them."""
    now = time.perf_counter()
    t0, s0 = self._window
    steps_per_second = (step - s0) / max(now - t0, 1e-9)
    rate = f"{self.unit}_per_second"
    values = {**values, "steps_per_second": steps_per_second,
              rate: steps_per_second * self.batch_size}
    self._window = (now, step)
    self.metrics.write(step, values)
    self.tensorboard.scalars(step, values, prefix="train/")
    loss = values.get("loss")
    self.bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "nan", refresh=False)
    logging.info("step %d/%d (%.0f%%) loss %s | %.2f steps/s, %.1f %s/s | ETA %s", step,
                 self.num_steps, 100 * step / self.num_steps,
                 "nan" if loss is None or not math.isfinite(loss) else f"{loss:.4f}",
                 steps_per_second, values[rate], self.unit,
                 _eta((self.num_steps - step) / steps_per_second if steps_per_second else math.inf))
    return values

  def validation(self, step: int, values: dict, seconds: float, best: bool) -> None:
    """Writes the validation metrics of `step` (`validation/...`); the `seconds` it took are
    left out of the training throughput."""
    values = {f"validation/{k}": v for k, v in values.items()}
    self.metrics.write(step, values)
    self.tensorboard.scalars(step, values)
    t0, s0 = self._window
    self._window = (t0 + seconds, s0)
    logging.info("step %d validation: %s (%.1f s)%s", step,
                 ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in values.items()), seconds,
                 " - best so far, kept" if best else "")

  def close(self) -> None:
    self.bar.close()
    self.tensorboard.close()


def format_table(results: dict, columns: Sequence[str]) -> str:
  """A fixed-width table of `columns`: the model, then each baseline, one row each."""
  width = max([16] + [len(k) + 1 for k in columns])
  rows = [("model", results)] + list(results.get("baselines", {}).items())
  header = f"{'method':<12}" + "".join(f"{k:>{width}}" for k in columns)
  lines = [header, "-" * len(header)]
  for name, values in rows:
    lines.append(f"{name:<12}" + "".join(f"{values.get(k, float('nan')):>{width}.4f}"
                                         for k in columns))
  return "\n".join(lines)


def write_results(results: dict, workdir: str) -> str:
  """workdir/eval_metrics.json; returns its path."""
  path = storage.join(workdir, RESULTS_FILE)
  storage.write_atomic(path, json.dumps(results, indent=2))
  return path


def write_drop_report(drops: DropReport | None, workdir: str) -> None:
  """Every record the readers dropped (lenient mode) to workdir/dropped_records.jsonl."""
  if drops is None or not cluster.is_main_process():
    return
  path = storage.join(workdir, DROPS_FILE)
  drops.write(path)
  if len(drops):
    logging.warning("%s; each one is listed in %s", drops.summary(), path)
