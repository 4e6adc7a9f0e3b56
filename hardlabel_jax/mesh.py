"""The device mesh: one `data` axis over every device of every process (DESIGN.md §2)."""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_divisible(global_batch: int, mesh: Mesh, field: str = "global_batch_size") -> None:
  """Training batches are split evenly over devices; a config that cannot be is refused."""
  if global_batch % mesh.size:
    raise ValueError(f"config.{field}: {global_batch} is not divisible by the {mesh.size} devices "
                     f"of the mesh; choose a multiple of {mesh.size}")


def padded_batch(batch: int, mesh: Mesh) -> int:
  """`batch` rounded up to a multiple of the device count (evaluation masks the padding)."""
  return -(-batch // mesh.size) * mesh.size


def replicated(mesh: Mesh) -> NamedSharding:
  """Parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Batch arrays: leading axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def _host_arrays_to_global(tree: Any, sharding: NamedSharding) -> Any:
  """Each process fills its own devices from the full host arrays it holds."""

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def replicate_host_arrays(tree: Any, mesh: Mesh) -> Any:
  """Host arrays every process holds in full → global arrays replicated over the mesh.

  (`jax.device_put` onto a multi-process mesh would need cross-host transfers, which CPU and
  some GPU backends lack; every process already has the data, so each fills its own devices.)
  """
  return _host_arrays_to_global(tree, replicated(mesh))


def shard_host_arrays(tree: Any, mesh: Mesh) -> Any:
  """Host arrays every process holds in full → global arrays split over the mesh's data axis."""
  return _host_arrays_to_global(tree, batch_sharded(mesh))


def sync_processes(name: str) -> None:
  """Waits until every process reaches `name` (files one process wrote are then visible)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Assembles each process's local rows into global arrays sharded over the mesh.

  With one process the whole batch goes in one `device_put` (its leaves' transfers dispatched
  together: 250 against 420 µs per ConvNet batch of 5 leaves, one device; 360 against 520 on 8);
  with several, each process contributes its rows leaf by leaf.
  """
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(local_batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
