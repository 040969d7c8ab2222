"""The trainer: one loop for every task, with sharded jitted steps, checkpoints, logging and a
final evaluation. What differs between tasks (data, model, step, batches, evaluation) comes from
the task chosen by `config.task` (the interface is `ctl_jax/task.py`).

Fault tolerance, for pods and preemptible machines:
- resume: a run starts from the newest good checkpoint of its workdir; the input position and
  the dropout rng follow from the step, so a resumed run computes what an uninterrupted one does;
- preemption: SIGTERM or SIGINT ends the run after the current step with a checkpoint (all hosts
  agree on the step) and `train` returns early (`Run.stopped_by` names the signal);
- numerical faults: see nonfinite.py (`train.on_nonfinite`);
- multi-host: every process runs this same code; logs, metrics and files come from process 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import ml_collections
import optax

from ctl_jax import task as task_lib
from ctl_jax.nn import keras_weights
from ctl_jax.trainer import (
  checkpoint,
  cluster,
  config_fields,
  features,
  nonfinite,
  optimizer,
  preemption,
  run_log,
  sharding,
  workdir_lock,
)
from ctl_jax.trainer.state import TrainState, create_train_state
from input_pipeline import storage
from input_pipeline.feature_cache import FeatureCache

# Config fields every task's checkpoints depend on (each task adds its `checkpoint_fields`).
CHECKPOINT_FIELDS = ("task",)
BEST = "best"  # workdir/best: the state with the best validation figure
CHECKPOINT_CHOICES = ("best", "latest")  # eval.checkpoint
DATA_SOURCES = ("images", "features")  # data.source


@dataclasses.dataclass
class Run:
  """What train and evaluate share: the data, the model, the mesh and the checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  task: task_lib.Task
  data: task_lib.TaskData
  record: dict  # the task's checkpoint_meta of the data (categories, ...)
  model: nn.Module
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  schedule: Callable
  checkpointer: checkpoint.Checkpointer
  best: checkpoint.Checkpointer  # the state of the best validation figure (workdir/best)
  stopped_by: str | None = None  # the signal that ended the last `train` early, if any

  def close(self) -> None:
    self.checkpointer.close()
    self.best.close()

  def fresh_state(self) -> TrainState:
    """The initial state (seeded; with the user's backbone weights if configured)."""
    c = self.config
    return create_train_state(
        self.model, self.tx, jax.random.PRNGKey(c.seed), c.input.image_size, self.mesh,
        initial_variables=keras_weights.initial_backbone_variables(c.model, c.input, self.model))

  def feature_cache(self, state: TrainState) -> FeatureCache | None:
    """The cache of backbone features when `data.source='features'` (extracted on first use)."""
    if self.config.data.source == "images":
      return None
    return features.extract_features(
        self.config, self.workdir, self.model, state, self.task.cache_items(self.data),
        region_kinds=self.task.region_kinds)

  def meta(self) -> dict:
    """The record saved with every checkpoint."""
    return {"config": config_fields.config_dict(self.config), **self.record}

  def check_compatible(self, step: int, meta: dict) -> None:
    """Raises IncompatibleCheckpointError if checkpoint `step` (its record `meta`) was written
    by a run whose state this config cannot continue; logs other changed settings."""
    where = f"checkpoint step {step} in {self.checkpointer.directory}"
    categories = self.record["categories"]
    if meta.get("categories") != categories:
      raise checkpoint.IncompatibleCheckpointError(
          f"{where} was trained on categories {meta.get('categories')}, the data has {categories}")
    fields = CHECKPOINT_FIELDS + tuple(self.task.checkpoint_fields)
    changed = config_fields.config_differences(meta.get("config", {}),
                                               config_fields.config_dict(self.config))
    incompatible = {k: v for k, v in changed.items() if k in fields}
    if incompatible:
      raise checkpoint.IncompatibleCheckpointError(
          f"{where} was written with another model or task; differing fields "
          f"(checkpoint -> now): " + ", ".join(f"{k}: {a!r} -> {b!r}"
                                               for k, (a, b) in incompatible.items())
          + f". Use another --workdir, or the checkpoint's values. (Fields that decide "
          f"compatibility: {', '.join(fields)}.)")
    if changed:
      logging.info("resuming with changed settings (checkpoint -> now): %s",
                   ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))

  def restore_or_init(self) -> TrainState:
    """Newest good checkpoint of the workdir if any (see checkpoint.py), else a fresh state."""
    state = self.fresh_state()
    found = self.checkpointer.restore_latest_good(state, validate=self.check_compatible)
    if found is None:
      return state
    state, _, step = found
    logging.info("restored checkpoint step %d from %s", step, self.checkpointer.directory)
    return state


def check_config(config: ml_collections.ConfigDict) -> tuple[task_lib.Task, jax.sharding.Mesh]:
  """The task and the mesh of a runnable config; ConfigError naming what is wrong otherwise."""
  task = task_lib.get_task(config.task)
  config_fields.check_fields(config, task.name, task.config_base)
  if config.eval.checkpoint not in CHECKPOINT_CHOICES:
    raise config_fields.ConfigError(f"eval.checkpoint={config.eval.checkpoint!r}; choose from "
                                    f"{CHECKPOINT_CHOICES}")
  if config.data.source not in DATA_SOURCES:
    raise config_fields.ConfigError(f"data.source={config.data.source!r}; choose from "
                                    f"{DATA_SOURCES}")
  if config.features.verify not in features.VERIFY_CHOICES:
    raise config_fields.ConfigError(f"features.verify={config.features.verify!r}; choose from "
                                    f"{features.VERIFY_CHOICES}")
  mesh = sharding.make_mesh()
  sharding.global_batch_size_check(config.input.batch_size, mesh)
  return task, mesh


@contextlib.contextmanager
def command_run(config: ml_collections.ConfigDict, workdir: str) -> Iterator[Run]:
  """The `Run` of a command: its workdir created once the config is known to be runnable and
  locked by process 0 against a second run (see workdir_lock.py); its checkpointers closed at
  the end, however it ends (their background threads would otherwise outlive the loop that
  serves them and print tracebacks at exit)."""
  check_config(config)
  created = not storage.exists(workdir)
  storage.makedirs(workdir)
  try:
    with workdir_lock.hold(workdir) if cluster.is_main_process() else contextlib.nullcontext():
      run = setup(config, workdir)
      try:
        yield run
      finally:
        run.close()
  except Exception:
    if created and cluster.is_main_process():
      _remove_if_only_bookkeeping(workdir)
    raise


# What `setup` writes before the data is read: a run that fails there (bad data) leaves nothing.
_BOOKKEEPING = {workdir_lock.LOCK_FILE, "config.json", run_log.DROPS_FILE}


def _remove_if_only_bookkeeping(workdir: str) -> None:
  """Deletes a workdir this command created when it holds nothing but its bookkeeping files."""
  if storage.is_remote(workdir):
    return  # an object store has no folders: nothing is left but the files, kept for the user
  try:
    names = set(os.listdir(workdir))
  except OSError:
    return
  if names <= _BOOKKEEPING:
    for name in names:
      os.remove(os.path.join(workdir, name))
    os.rmdir(workdir)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config against its task, reads the data and builds the model and optimizer."""
  task, mesh = check_config(config)
  storage.makedirs(workdir)  # only once the config is known to be runnable
  for line in run_log.describe_outputs(config, workdir,
                                      storage.join(storage.absolute(workdir), "checkpoints")):
    logging.info("%s", line)
  if cluster.is_main_process():
    storage.write_atomic(storage.join(workdir, "config.json"),
                         json.dumps(config_fields.config_dict(config), indent=2))
  data = task.load_data(config)
  run_log.write_drop_report(data.drops, workdir)
  # The checkpoint managers (which create their folders and threads) once the data is known good.
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=config.train.checkpoint_every_steps,
                                 max_to_keep=config.train.max_checkpoints_to_keep)
  best = checkpoint.Checkpointer(workdir, save_every_steps=1, max_to_keep=1, name=BEST)
  record = task.checkpoint_meta(data)
  model = task.create_model(config, record)
  tx, schedule = optimizer.make_optimizer(config.optimizer, config.train.num_steps)
  logging.info("data %s: %s", config.data.root, data.summary())
  return Run(config, workdir, task, data, record, model, mesh, tx, schedule, ckpt, best)


class Validation:
  """Model selection: the task's validation metrics every `eval.every_steps` (at the first and
  the last step too); the state with the best `task.selection_metric` is kept in workdir/best."""

  def __init__(self, run: Run, cache: FeatureCache | None, report: run_log.TrainReport):
    self.run, self.cache, self.report = run, cache, report
    self.metric = run.task.selection_metric
    self.best_value = -float("inf")
    step = run.best.latest_step()
    if step is not None:  # resuming: the best so far is the one on disk
      self.best_value = float(run.best.restore_meta(step)["validation"][self.metric])

  def due(self, step: int, last: int) -> bool:
    every = self.run.config.eval.every_steps
    return step % every == 0 or step == last

  def __call__(self, step: int, state: TrainState, meta: dict) -> None:
    start = time.perf_counter()
    results = self.run.task.evaluate(self.run.config, self.run.data, self.run.model,
                                     self.run.mesh, state, self.cache, split="validation")
    values = {k: v for k, v in results.items() if isinstance(v, float)}
    value = values.get(self.metric, float("nan"))
    best = value > self.best_value  # NaN (nothing to rank) is never best
    if best:
      self.best_value = value
      self.run.best.save(step, state, {**meta, "validation": values}, force=True)
    self.report.validation(step, values, time.perf_counter() - start, best)


def validation_enabled(config: ml_collections.ConfigDict) -> bool:
  return config.eval.every_steps > 0 and config.data.validation_fraction > 0


def make_train_step(run: Run, state: TrainState) -> Callable:
  """The task's step, guarded against non-finite values (see nonfinite.py), jitted once: state
  replicated, batch on `data`, state buffers donated."""
  state_sharding = sharding.shardings_of(state)
  fn = nonfinite.guard(run.task.train_step(run.config, run.model, run.schedule),
                       run.config.train.on_nonfinite)
  return jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharded(run.mesh)),
                 out_shardings=(state_sharding, sharding.replicated(run.mesh)), donate_argnums=0)


def train(run: Run, stop_after_step: int | None = None) -> TrainState:
  """Trains from the latest good checkpoint (or scratch) to `train.num_steps`; saves as it goes.

  Nothing waits for the device between log steps and saves. A SIGTERM/SIGINT ends the loop
  after the current step with a checkpoint and sets `run.stopped_by`.

  Args:
    stop_after_step: end early after this step, with a checkpoint, as an interrupted run would
      (the schedule and the data order still follow `train.num_steps`).
  """
  c = run.config
  last = c.train.num_steps if stop_after_step is None else min(stop_after_step, c.train.num_steps)
  run.stopped_by = None
  state = run.restore_or_init()
  start = int(jax.device_get(state.step))
  if start >= c.train.num_steps:
    logging.info("checkpoint step %d >= train.num_steps %d: nothing to train", start,
                 c.train.num_steps)
    return state
  step_fn = make_train_step(run, state)
  cache = run.feature_cache(state)
  host_batches = run.task.train_batches(c, run.data, start, cache)
  batches = sharding.prefetch_to_device(host_batches, run.mesh, size=c.input.prefetch,
                                        keys=run.task.step_inputs)
  meta = run.meta()
  monitor = nonfinite.Monitor(
      c.train.on_nonfinite, c.train.max_skipped_steps, workdir=run.workdir,
      id_keys=run.task.id_keys, signatures=lambda ids: run.task.signatures(run.data, ids),
      last_good_step=run.checkpointer.latest_step)
  report = run_log.TrainReport(c, run.workdir, start, unit=run.task.example_unit)
  validation = Validation(run, cache, report) if validation_enabled(c) else None
  if validation is not None and start == 0:
    validation(0, state, meta)  # the untrained figure: where the curve starts
  logging.info("training steps %d..%d of %d", start + 1, last, c.train.num_steps)
  try:
    with preemption.StopRequests() as stop_requests:
      for step in range(start + 1, last + 1):
        host_batch, device_batch = next(batches)
        state, metrics = step_fn(state, device_batch)
        monitor.record(step, metrics, host_batch)
        report.advance()
        stop = stop_requests.should_stop(step)
        save = stop or step == last or step % c.train.checkpoint_every_steps == 0
        log = stop or step == c.train.num_steps or step % c.train.log_every_steps == 0
        if save or log:
          monitor.check()  # before anything is written: a non-finite state is never saved
        if log:
          values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
          report.log(step, {**values, "skipped_steps": monitor.skipped})
        if save:
          run.checkpointer.save(step, state, meta, force=True)
        if validation is not None and not stop and validation.due(step, c.train.num_steps):
          validation(step, state, meta)
        if stop:
          run.stopped_by = stop_requests.signal_name
          break
  finally:
    if hasattr(host_batches, "close"):  # ends a tf.data pipeline's threads now (StoppableBatches)
      host_batches.close()
    run.checkpointer.wait()  # the last good checkpoint is complete on disk, whatever happened
    run.best.wait()
    report.close()
  if run.stopped_by:
    logging.warning("stopped by %s after step %d: checkpoint saved in %s; run the same command "
                    "to resume", run.stopped_by, step, run.checkpointer.directory)
  return state


def selected_state(run: Run, latest: TrainState) -> TrainState:
  """The state `eval.checkpoint` chooses: the best validated one (workdir/best) when there is
  one, else `latest`."""
  step = run.best.latest_step()
  if run.config.eval.checkpoint == "latest" or step is None:
    return latest
  state, meta = run.best.restore(latest, step)
  logging.info("evaluating the best validated state: step %d (validation %s %.4f)", step,
               run.task.selection_metric, meta["validation"][run.task.selection_metric])
  return state


def run_evaluation(run: Run, state: TrainState) -> dict:
  """Evaluates `state` (or the best validated one, see `selected_state`) and the baselines;
  process 0 writes eval_metrics.json, TensorBoard scalars `eval/...` and prints the table."""
  state = selected_state(run, state)
  untrained = run.fresh_state() if run.config.eval.baselines else None
  results = run.task.evaluate(run.config, run.data, run.model, run.mesh, state,
                              run.feature_cache(state), untrained_state=untrained)
  if cluster.is_main_process():
    path = run_log.write_results(results, run.workdir)
    board = run_log.TensorBoard(run.workdir, run.config.train.tensorboard)
    board.scalars(int(jax.device_get(state.step)), results, prefix="eval/")
    board.close()
    print(run_log.format_table(results, run.task.table_columns(results)))
    print(f"wrote {path}")
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains, then evaluates; returns the results, or None when a signal stopped the training."""
  with command_run(config, workdir) as run:
    state = train(run)
    if run.stopped_by:
      return None
    return run_evaluation(run, state)


def restore_trained(run: Run) -> TrainState:
  """The newest good checkpoint of the run; NoCheckpointError when there is none."""
  if run.checkpointer.latest_step() is None:
    raise checkpoint.NoCheckpointError(f"no checkpoint under {run.checkpointer.directory}: "
                                       f"train first")
  return run.restore_or_init()


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the best validated state of `workdir`, or its newest good checkpoint
  (`eval.checkpoint`; `run.py evaluate`)."""
  checkpoint.require_checkpoints(workdir)
  with command_run(config, workdir) as run:
    return run_evaluation(run, restore_trained(run))


def extract_features(config: ml_collections.ConfigDict, workdir: str) -> FeatureCache:
  """Fills the feature cache of `config` (resumable) and returns it."""
  with config.unlocked():
    config.data.source = "features"
  with command_run(config, workdir) as run:
    cache = run.feature_cache(run.restore_or_init())
  logging.info("feature cache complete: %s", cache.root)
  return cache
