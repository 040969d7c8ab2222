"""What the trainer asks of a task, and the registry of tasks (`config.task`).

The trainer core (`ctl_jax/trainer/`) owns the loop, the state, checkpoints, sharding, the
feature cache and the run's logs; everything that differs between the papers' tasks comes from a
`Task`:

  scene    (Kang et al., CVPR 2019)  ctl_jax/scene/task.py    STL scenes -> products
  product  (Li et al., KDD 2020)     ctl_jax/product/task.py  CTL outfit items -> items

Serving restores a task's model from a checkpoint through the same interface
(`checkpoint_meta` is saved with every checkpoint; `create_model` rebuilds the model from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ctl_jax.product.task import ProductTask
from ctl_jax.scene.task import SceneTask
from ctl_jax.trainer.config_fields import ConfigError
from input_pipeline.feature_cache import FeatureCache
from input_pipeline.readers.drops import DropReport

Batch = dict[str, np.ndarray]
# The pure step: step(state, batch) -> (state, scalar metrics); the trainer jits it.
StepFn = Callable[[Any, dict], tuple[Any, dict]]
# Per feature-cache kind: (keys, images, crops or None) of every image the model needs.
CacheItems = dict[str, tuple[list[str], Any, np.ndarray | None]]


class TaskData(Protocol):
  """A task's dataset, read once at start-up."""

  @property
  def categories(self) -> list[str]: ...

  @property
  def drops(self) -> DropReport | None: ...  # records the readers skipped (lenient mode)

  def summary(self) -> str: ...


@runtime_checkable
class Task(Protocol):
  """A task of the trainer (see `TASKS`); `isinstance(x, Task)` checks every member is there."""

  name: str
  # The config module whose fields are exactly the fields this task reads.
  config_base: str
  # What one row of a training batch is, for the logs ("triplets", "tuples").
  example_unit: str
  # Host-batch entries the jitted step reads (the rest is bookkeeping for logs).
  step_inputs: tuple[str, ...]
  # Host-batch entries naming a row's images (the report of a non-finite step).
  id_keys: tuple[str, ...]
  # Feature-cache kinds that also keep the backbone's region map.
  region_kinds: tuple[str, ...]
  # Config fields that shape the train state: a checkpoint written with others is refused.
  checkpoint_fields: tuple[str, ...]
  # The validation metric (a key of `evaluate(..., split="validation")`) that picks the best
  # state: larger is better.
  selection_metric: str

  def load_data(self, config: ml_collections.ConfigDict) -> TaskData: ...

  def checkpoint_meta(self, data: TaskData) -> dict:
    """What serving needs besides the weights and the config; has at least `categories`."""

  def create_model(self, config: ml_collections.ConfigDict, meta: dict) -> nn.Module:
    """The model, from the config and a `checkpoint_meta` record (training or restored)."""

  def train_step(self, config: ml_collections.ConfigDict, model: nn.Module,
                 schedule: Callable) -> StepFn: ...

  def train_batches(self, config: ml_collections.ConfigDict, data: TaskData, start_step: int,
                    cache: FeatureCache | None) -> Iterator[Batch]:
    """This process's host batches from `start_step` on: images, or cached features."""

  def cache_items(self, data: TaskData) -> CacheItems: ...

  def signatures(self, data: TaskData, ids: dict) -> dict[str, list[str]]:
    """Image signatures of the rows `ids` (the `id_keys` entries of a batch)."""

  def evaluate(self, config: ml_collections.ConfigDict, data: TaskData, model: nn.Module,
               mesh: jax.sharding.Mesh, state: Any, cache: FeatureCache | None,
               untrained_state: Any = None, split: str = "test") -> dict:
    """Held-out metrics of `state` on `split` ('test', or 'validation': carved from the
    training scenes/outfits, see `data.validation_fraction`) and, with `config.eval.baselines`
    (test only), of the baselines."""

  def table_columns(self, results: dict) -> Sequence[str]:
    """The metrics the printed table shows, in order."""


TASKS: dict[str, type] = {"scene": SceneTask, "product": ProductTask}


def get_task(name: str) -> Task:
  """The task of `config.task`."""
  if name not in TASKS:
    raise ConfigError(f"task={name!r}; choose from {list(TASKS)}")
  return TASKS[name]()
