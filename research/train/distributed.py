"""Multi-process data parallelism on JAX's own runtime (`jax.distributed`).

One process per host (or per GPU) runs the same `python -m research.train` command with its
own `--process_id`; `initialize` joins them through the coordinator, after which
`jax.devices()` lists every process's devices. Training is data parallel: the state is
replicated over `global_mesh()`, each global batch is split along 'data', and each process
reads and augments only its rows of it (`process_rows`), which `put_batch` assembles into one
global array. Collectives run over NCCL on GPUs, ICI on TPUs and gloo on CPUs.

A single process (no flags, no environment) initialises nothing and behaves as before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

log = logging.getLogger(__name__)

DATA_AXIS = "data"
# jax.distributed.initialize reads JAX_COORDINATOR_ADDRESS itself (and detects SLURM, Open MPI,
# Kubernetes and Cloud TPU); the process count and id it does not, so we read these two.
ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
AUTO = "auto"  # --coordinator_address=auto: let JAX detect the cluster (TPU pod, SLURM, MPI)


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where to meet and who this process is: the three arguments of jax.distributed."""

    coordinator_address: str | None = None  # host:port of process 0, or AUTO
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def is_distributed(self) -> bool:
        return self.coordinator_address == AUTO or (self.num_processes or 1) > 1

    @classmethod
    def from_flags(
        cls,
        coordinator_address: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ProcessGroup:
        """The flags' values, each missing one from its environment variable."""

        def _int(value: int | None, name: str) -> int | None:
            if value is not None or not environ.get(name):
                return value
            try:
                return int(environ[name])
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {environ[name]!r}") from None

        group = cls(
            coordinator_address=coordinator_address or environ.get(ENV_ADDRESS) or None,
            num_processes=_int(num_processes, ENV_COUNT),
            process_id=_int(process_id, ENV_ID),
        )
        group.check()
        return group

    def check(self) -> None:
        if not self.is_distributed or self.coordinator_address == AUTO:
            return
        if self.coordinator_address is None:
            raise ValueError(
                f"{self.num_processes} processes need --coordinator_address=host:port "
                f"(or {ENV_ADDRESS}): the address of process 0"
            )
        if self.process_id is None or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"--process_id (or {ENV_ID}) must be one of 0..{self.num_processes - 1}, "
                f"got {self.process_id}"
            )


def initialize(group: ProcessGroup) -> bool:
    """Joins `group` through `jax.distributed.initialize`; a single process is a no-op.

    Call before anything touches a JAX device. On CPU the cross-process collectives need gloo,
    which is selected here (it only affects the CPU backend). Returns whether it initialised.
    """
    if not group.is_distributed:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if group.coordinator_address == AUTO:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            group.coordinator_address,
            num_processes=group.num_processes,
            process_id=group.process_id,
        )
    log.info(
        "Process %d of %d: %d local of %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_main_process() -> bool:
    """Process 0: the one that logs, writes TensorBoard and results, and calibrates."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` is set in any process; every process calls it at the same point (with
    several processes it is a collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # only with several processes

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


def global_mesh() -> Mesh:
    """A 1-D 'data' mesh over every process's devices, each process's devices contiguous, so
    each process owns one contiguous block of rows of a batch."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (DATA_AXIS,))


def process_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
    """The [start, stop) rows of a `global_batch` that this process's devices hold."""
    indices = sharding.addressable_devices_indices_map((global_batch,)).values()
    starts = [index[0].start or 0 for index in indices]
    stops = [global_batch if index[0].stop is None else index[0].stop for index in indices]
    start, stop = min(starts), max(stops)
    if sum(b - a for a, b in zip(starts, stops, strict=True)) != stop - start:
        raise ValueError(f"this process's rows of {sharding} are not one contiguous block")
    return start, stop


def put_batch(local: Any, sharding: NamedSharding) -> Any:
    """Process-local rows (a pytree of arrays) -> global arrays split over `sharding`.

    With one process this is `jax.device_put`; with several, each passes its own rows
    (`process_rows`) and `jax.make_array_from_process_local_data` assembles the global batch.
    """
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def put_replicated_batch(full: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A batch every process holds in full -> a global array split over `sharding` (each
    device takes its own rows of it)."""
    if jax.process_count() == 1:
        return jax.device_put(full, sharding)
    return jax.make_array_from_process_local_data(sharding, full, full.shape)


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """`tree` (the same values in every process) -> a copy on every device of `sharding`.

    With several processes the values go through host memory: `jax.device_put` of an array
    already committed to a local device (as restored from a checkpoint) would be a cross-host
    transfer, which the CPU backend does not do.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _replicate_leaf(x, sharding), tree)


def _replicate_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _replicate_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of `x` as NumPy in every process (gathered when others hold parts)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # only with several processes

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
