"""Data parallelism over one `data` mesh axis that spans every device of every host."""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ctl_jax.trainer.config_fields import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes, in process order)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`; the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shardings_of(tree: Any) -> Any:
  """The sharding of every leaf of `tree` (e.g. a train state, for jit's in/out_shardings)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def global_batch_size_check(global_batch: int, mesh: Mesh,
                            field: str = "input.batch_size") -> None:
  """ConfigError unless the global batch splits evenly over the mesh's devices."""
  if global_batch % mesh.size:
    raise ConfigError(f"{field}={global_batch} must be a multiple of the {mesh.size} devices "
                      f"of the mesh (global batch, split over every device of every host)")


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local rows -> global arrays sharded on `data` (each process passes its own rows)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def prefetch_to_device(
    host_batches: Iterable[dict[str, Any]], mesh: Mesh, size: int = 2,
    keys: Collection[str] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, jax.Array]]]:
  """Yields (host batch, global device batch of its `keys`), the device copies `size` ahead.

  Transfers are asynchronous, so while the step runs on batch t the next batches are already on
  their way to the devices: the step does not wait on a host-to-device copy. The host batch
  comes along for bookkeeping (signatures in logs).
  """
  queue = collections.deque()
  for batch in host_batches:
    selected = batch if keys is None else {k: v for k, v in batch.items() if k in keys}
    queue.append((batch, to_global(selected, mesh)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
