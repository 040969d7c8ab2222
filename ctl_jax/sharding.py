"""Data parallelism over one `data` mesh axis that spans every device of every host."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def global_batch_size_check(global_batch: int, mesh: Mesh) -> None:
  if global_batch % mesh.size:
    raise ValueError(f"global batch size {global_batch} must be a multiple of the "
                     f"{mesh.size} devices of the mesh")


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local rows -> global arrays sharded on `data` (each process passes its own rows)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
