"""Joining a multi-host cluster with JAX's own distributed runtime, and what processes share.

Every process of a multi-host run runs the same command; `jax.distributed.initialize` connects
them through a coordinator (process 0) before any JAX computation. Where the cluster comes from,
in order:
  1. explicit values (the `--coordinator_address`, `--num_processes`, `--process_id` flags);
  2. the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`;
  3. with `auto_detect`, JAX's detection of Slurm, Open MPI, Cloud TPU and GKE jobs;
  4. otherwise a single process (nothing to join).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

_HOSTNAME_BYTES = 64


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How to join; all None means a single process (unless `auto_detect`)."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto_detect: bool = False

  @property
  def is_distributed(self) -> bool:
    return self.auto_detect or any(
        v is not None for v in (self.coordinator_address, self.num_processes, self.process_id))


def spec_from(coordinator_address: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, auto_detect: bool = False,
              environ: Mapping[str, str] = os.environ) -> ClusterSpec:
  """Flags first, then the `JAX_*` environment variables for whatever the flags left unset."""
  env_int = lambda name: int(environ[name]) if environ.get(name, "") != "" else None
  return ClusterSpec(
      coordinator_address=coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None,
      num_processes=num_processes if num_processes is not None else env_int("JAX_NUM_PROCESSES"),
      process_id=process_id if process_id is not None else env_int("JAX_PROCESS_ID"),
      auto_detect=auto_detect)


def join(spec: ClusterSpec) -> None:
  """Connects this process to the cluster `spec` describes (no-op for a single process).

  Must run before anything touches a JAX device. On CPU, cross-process collectives go through
  gloo over TCP (the choice is ignored by GPU and TPU backends).
  """
  if not spec.is_distributed:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                             num_processes=spec.num_processes, process_id=spec.process_id)


def is_main_process() -> bool:
  """Process 0 writes logs, metrics, TensorBoard events and result files."""
  return jax.process_index() == 0


def hostnames() -> list[str]:
  """The host name of every process, in process order (a collective: all processes call it)."""
  name = socket.gethostname().encode()[:_HOSTNAME_BYTES].ljust(_HOSTNAME_BYTES, b"\0")
  if jax.process_count() == 1:
    return [name.rstrip(b"\0").decode()]
  mine = np.frombuffer(name, np.uint8)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
  return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in every]


def all_processes_agree(value: bool) -> bool:
  """True only if `value` is True on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return bool(value)
  every = multihost_utils.process_allgather(np.asarray(bool(value), np.int32))
  return bool(np.all(np.asarray(every)))


def describe_topology() -> str:
  """`N process(es) on hosts [...]; M devices (platform kind), K per process`."""
  hosts = hostnames()
  distinct = sorted(set(hosts))
  d = jax.devices()[0]
  return (f"{jax.process_count()} process(es) on {len(distinct)} host(s) {distinct}; this is "
          f"process {jax.process_index()}; {jax.device_count()} device(s) "
          f"({d.platform} {d.device_kind}), {jax.local_device_count()} per process")
