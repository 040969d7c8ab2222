"""The trainer: one loop for every task, with sharded jitted steps, checkpoints, logging and a
final evaluation. What differs between tasks (data, model, step, batches, evaluation) comes from
the task object chosen by `config.task` (see scene_task.py).

Fault tolerance, for pods and preemptible machines:
- resume: a run starts from the newest good checkpoint of its workdir; the input position and
  the dropout rng follow from the step, so a resumed run computes what an uninterrupted one does;
- preemption: SIGTERM or SIGINT ends the run after the current step with a checkpoint (all hosts
  agree on the step) and `train` returns early (`Run.stopped_by` names the signal);
- numerical faults: see nonfinite.py (`train.on_nonfinite`);
- multi-host: every process runs this same code; logs, metrics and files come from process 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from ctl_jax.trainer import checkpoint
from ctl_jax.trainer import cluster
from ctl_jax.scene import evaluation as scene_eval
from ctl_jax.trainer import features
from ctl_jax.trainer import nonfinite
from ctl_jax.trainer import preemption
from ctl_jax.nn import keras_weights
from ctl_jax.product import task as product_task
from ctl_jax.trainer import run_log
from ctl_jax.scene import task as scene_task
from ctl_jax.trainer import sharding
from ctl_jax.trainer import state as train_state
from input_pipeline import feature_cache

TASKS = {"scene": scene_task.SceneTask, "product": product_task.ProductTask}
# Config fields every task's checkpoints depend on (each task adds its `checkpoint_fields`).
CHECKPOINT_FIELDS = ("task",)
DROPS_FILE = "dropped_records.jsonl"  # one JSON object per record the reader skipped


@dataclasses.dataclass
class Run:
  """What train and evaluate share: the data, the model, the mesh and the checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  task: object  # one of TASKS
  data: object  # what task.load_data returns
  model: object
  mesh: jax.sharding.Mesh
  tx: object
  schedule: object
  checkpointer: checkpoint.Checkpointer
  stopped_by: str | None = None  # the signal that ended the last `train` early, if any

  def fresh_state(self) -> train_state.TrainState:
    """The initial state (seeded; with the user's backbone weights if configured)."""
    return train_state.create_train_state(
        self.model, self.tx, jax.random.PRNGKey(self.config.seed), self.config.input.image_size,
        self.mesh, initial_variables=initial_backbone_variables(self.config, self.model))

  def feature_cache(self, state) -> feature_cache.FeatureCache | None:
    """The cache of backbone features when `data.source='features'` (extracted on first use)."""
    if self.config.data.source == "images":
      return None
    if self.config.data.source != "features":
      raise ValueError(f"data.source={self.config.data.source!r}; choose 'images' or 'features'")
    return features.extract_features(self, state)

  def meta(self) -> dict:
    return {"config": config_dict(self.config), "categories": self.task.categories(self.data),
            **self.task.checkpoint_meta(self.data)}

  def check_compatible(self, step: int, meta: dict) -> None:
    """Raises IncompatibleCheckpointError if checkpoint `step` (its record `meta`) was written
    by a run whose state this config cannot continue; logs other changed settings."""
    where = f"checkpoint step {step} in {self.checkpointer.directory}"
    categories = self.task.categories(self.data)
    if meta.get("categories") != categories:
      raise checkpoint.IncompatibleCheckpointError(
          f"{where} was trained on categories {meta.get('categories')}, the data has {categories}")
    fields = CHECKPOINT_FIELDS + tuple(self.task.checkpoint_fields)
    changed = config_differences(meta.get("config", {}), config_dict(self.config))
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

  def restore_or_init(self) -> train_state.TrainState:
    """Newest good checkpoint of the workdir if any (see checkpoint.py), else a fresh state."""
    state = self.fresh_state()
    found = self.checkpointer.restore_latest_good(state, validate=self.check_compatible)
    if found is None:
      return state
    state, _, step = found
    logging.info("restored checkpoint step %d from %s", step, self.checkpointer.directory)
    return state


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (what checkpoints record)."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
  """{dotted field: (saved value, current value)} of every field that differs (or is missing
  on one side: None)."""
  a, b = _flatten(saved), _flatten(current)
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def initial_backbone_variables(config, model) -> dict | None:
  """Backbone variables from the Keras file `model.backbone_weights`, or None (random init)."""
  path = config.model.backbone_weights
  if not path:
    return None
  if config.model.backbone != "resnet50":
    raise ValueError(f"model.backbone_weights is a Keras ResNet-50 file; model.backbone is "
                     f"{config.model.backbone!r}")
  if config.input.normalization != "caffe":
    raise ValueError("Keras ImageNet weights expect input.normalization='caffe' (BGR, mean "
                     f"subtracted), not {config.input.normalization!r}")
  template = jax.eval_shape(
      lambda: model.backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  variables = keras_weights.load_keras_resnet(path, dict(template))
  logging.info("backbone weights from %s", path)
  return {"params": {"backbone": variables["params"]},
          "batch_stats": {"backbone": variables["batch_stats"]}}


def write_drop_report(data, workdir: str) -> None:
  """Every record the reader dropped (lenient mode) to workdir/dropped_records.jsonl."""
  drops = getattr(data, "drops", None)  # the task's DropReport, if its data has one
  if drops is None or jax.process_index() != 0:
    return
  path = os.path.join(workdir, DROPS_FILE)
  drops.write(path)
  if len(drops):
    logging.warning("%s; each one is listed in %s", drops.summary(), path)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
  os.makedirs(workdir, exist_ok=True)
  if config.task not in TASKS:
    raise ValueError(f"task={config.task!r}; choose from {list(TASKS)}")
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=config.train.checkpoint_every_steps,
                                 max_to_keep=config.train.max_checkpoints_to_keep)
  for line in run_log.describe_outputs(config, workdir, ckpt.directory):
    logging.info("%s", line)
  if cluster.is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_dict(config), f, indent=2)
  task = TASKS[config.task]()
  data = task.load_data(config)
  write_drop_report(data, workdir)
  mesh = sharding.make_mesh()
  sharding.global_batch_size_check(config.input.batch_size, mesh)
  model = task.create_model(config, data)
  tx, schedule = train_state.make_optimizer(config.optimizer, config.train.num_steps)
  logging.info("data %s: %s", config.data.root, data.summary())
  return Run(config, workdir, task, data, model, mesh, tx, schedule, ckpt)


def make_train_step(run: Run, state: train_state.TrainState):
  """The task's step, guarded against non-finite values (see nonfinite.py), jitted once: state
  replicated, batch on `data`, state buffers donated."""
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  fn = nonfinite.guard(run.task.train_step(run.config, run.model, run.schedule),
                       run.config.train.on_nonfinite)
  return jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharded(run.mesh)),
                 out_shardings=(state_sharding, sharding.replicated(run.mesh)), donate_argnums=0)


def train_batches(run: Run, start_step: int, cache: feature_cache.FeatureCache | None):
  """The task's host batches from `start_step` on (from the feature cache when given)."""
  return run.task.train_batches(run, start_step, cache)


def step_inputs(run: Run, host_batch: dict) -> dict:
  """The part of a host batch the jitted step reads."""
  return {k: v for k, v in host_batch.items() if k in run.task.step_inputs}


def train(run: Run, stop_after_step: int | None = None) -> train_state.TrainState:
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
  batches = sharding.prefetch_to_device(train_batches(run, start, run.feature_cache(state)),
                                       run.mesh, size=c.input.prefetch,
                                       keys=run.task.step_inputs)
  meta = run.meta()
  monitor = nonfinite.Monitor(run, c.train.on_nonfinite, c.train.max_skipped_steps)
  report = run_log.TrainReport(c, run.workdir, start)
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
        if stop:
          run.stopped_by = stop_requests.signal_name
          break
  finally:
    run.checkpointer.wait()  # the last good checkpoint is complete on disk, whatever happened
    report.close()
  if run.stopped_by:
    logging.warning("stopped by %s after step %d: checkpoint saved in %s; run the same command "
                    "to resume", run.stopped_by, step, run.checkpointer.directory)
  return state


def run_evaluation(run: Run, state: train_state.TrainState) -> dict:
  """Evaluates `state` and the baselines; process 0 writes eval_metrics.json, TensorBoard
  scalars `eval/...` and prints the table."""
  untrained = run.fresh_state() if run.config.eval.baselines else None
  results = run.task.evaluate(run, state, run.feature_cache(state), untrained_state=untrained)
  if cluster.is_main_process():
    path = scene_eval.write_results(results, run.workdir)
    board = run_log.TensorBoard(run.workdir, run.config.train.tensorboard)
    board.scalars(int(jax.device_get(state.step)), results, prefix="eval/")
    board.close()
    print(run.task.format_table(results))
    print(f"wrote {path}")
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains, then evaluates; returns the results, or None when a signal stopped the training."""
  run = setup(config, workdir)
  state = train(run)
  if run.stopped_by:
    return None
  return run_evaluation(run, state)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  run = setup(config, workdir)
  if run.checkpointer.latest_step() is None:
    raise FileNotFoundError(f"no checkpoint under {run.checkpointer.directory}: train first")
  return run_evaluation(run, run.restore_or_init())


def extract_features(config: ml_collections.ConfigDict, workdir: str):
  """Fills the feature cache of `config` (resumable) and returns it."""
  with config.unlocked():
    config.data.source = "features"
  run = setup(config, workdir)
  cache = run.feature_cache(run.restore_or_init())
  logging.info("feature cache complete: %s", cache.root)
  return cache
