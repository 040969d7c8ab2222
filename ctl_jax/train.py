"""The trainer: one loop for every task, with sharded jitted steps, checkpoints, logging and a
final evaluation. What differs between tasks (data, model, step, batches, evaluation) comes from
the task object chosen by `config.task` (see scene_task.py)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctl_jax import (checkpoint, evaluate, features, pretrained, product_task, scene_task,
                     sharding, train_state)
from input_pipeline import feature_cache

TASKS = {"scene": scene_task.SceneTask, "product": product_task.ProductTask}
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
    return {"config": json.loads(self.config.to_json_best_effort()),
            "categories": self.task.categories(self.data), **self.task.checkpoint_meta(self.data)}

  def restore_or_init(self) -> train_state.TrainState:
    """Latest checkpoint of the workdir if any, else a fresh state."""
    state = self.fresh_state()
    step = self.checkpointer.latest_step()
    if step is None:
      return state
    state, meta = self.checkpointer.restore(state, step)
    categories = self.task.categories(self.data)
    if meta.get("categories") != categories:
      raise ValueError(f"checkpoint step {step} in {self.checkpointer.directory} was trained on "
                       f"categories {meta.get('categories')}, the data has {categories}")
    logging.info("restored checkpoint step %d from %s", step, self.checkpointer.directory)
    return state


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
  variables = pretrained.load_keras_resnet(path, dict(template))
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
  task = TASKS[config.task]()
  data = task.load_data(config)
  write_drop_report(data, workdir)
  mesh = sharding.make_mesh()
  sharding.global_batch_size_check(config.input.batch_size, mesh)
  model = task.create_model(config, data)
  tx, schedule = train_state.make_optimizer(config.optimizer, config.train.num_steps)
  ckpt = checkpoint.Checkpointer(workdir, save_every_steps=config.train.checkpoint_every_steps,
                                 max_to_keep=config.train.max_checkpoints_to_keep)
  logging.info("data %s: %s", config.data.root, data.summary())
  logging.info("%d process(es), %d device(s) (%s); workdir %s; checkpoints %s",
               jax.process_count(), jax.device_count(), jax.devices()[0].platform, workdir,
               ckpt.directory)
  return Run(config, workdir, task, data, model, mesh, tx, schedule, ckpt)


class MetricsLog:
  """Process 0 appends one JSON object per logged step to workdir/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0

  def write(self, step: int, values: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")


def make_train_step(run: Run, state: train_state.TrainState):
  """The task's step jitted once: state replicated, batch on `data`, state buffers donated."""
  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  fn = run.task.train_step(run.config, run.model, run.schedule)
  return jax.jit(fn, in_shardings=(state_sharding, sharding.batch_sharded(run.mesh)),
                 out_shardings=(state_sharding, sharding.replicated(run.mesh)), donate_argnums=0)


def train_batches(run: Run, start_step: int, cache: feature_cache.FeatureCache | None):
  """The task's host batches from `start_step` on (from the feature cache when given)."""
  return run.task.train_batches(run, start_step, cache)


def step_inputs(run: Run, host_batch: dict) -> dict:
  """The part of a host batch the jitted step reads."""
  return {k: v for k, v in host_batch.items() if k in run.task.step_inputs}


def train(run: Run, stop_after_step: int | None = None) -> train_state.TrainState:
  """Trains from the latest checkpoint (or scratch) to `train.num_steps`; saves as it goes.

  Args:
    stop_after_step: end early after this step, with a checkpoint, as an interrupted run would
      (the schedule and the data order still follow `train.num_steps`).
  """
  c = run.config
  last = c.train.num_steps if stop_after_step is None else min(stop_after_step, c.train.num_steps)
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
  log = MetricsLog(run.workdir)
  meta = run.meta()
  batch_size = c.input.batch_size
  t0, window_start = time.perf_counter(), start
  for step in range(start + 1, last + 1):
    _, device_batch = next(batches)
    state, metrics = step_fn(state, device_batch)
    if step % c.train.log_every_steps == 0 or step == c.train.num_steps:
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(values["loss"]):
        raise FloatingPointError(f"non-finite loss {values['loss']} at step {step}")
      elapsed = time.perf_counter() - t0
      values["triplets_per_second"] = (step - window_start) * batch_size / elapsed
      log.write(step, values)
      logging.info("step %d/%d loss %.4f triplet_acc %.3f %.1f triplets/s", step,
                   c.train.num_steps, values["loss"], values["triplet_accuracy"],
                   values["triplets_per_second"])
      t0, window_start = time.perf_counter(), step
    run.checkpointer.save(step, state, meta, force=step == last)
  run.checkpointer.wait()
  return state


def run_evaluation(run: Run, state: train_state.TrainState) -> dict:
  """Evaluates `state` and the baselines; process 0 writes eval_metrics.json and prints."""
  untrained = run.fresh_state() if run.config.eval.baselines else None
  results = run.task.evaluate(run, state, run.feature_cache(state), untrained_state=untrained)
  if jax.process_index() == 0:
    path = evaluate.write_results(results, run.workdir)
    print(run.task.format_table(results))
    print(f"wrote {path}")
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  run = setup(config, workdir)
  state = train(run)
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
