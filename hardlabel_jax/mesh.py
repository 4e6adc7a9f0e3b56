"""The device mesh: one `data` axis over every device of every process (DESIGN.md §2)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_divisible(global_batch: int, mesh: Mesh, what: str = "global batch size") -> None:
  """Batch axes are split evenly over devices; say so clearly when they cannot be."""
  if global_batch % mesh.size:
    raise ValueError(f"{what} {global_batch} is not divisible by the {mesh.size} devices of the "
                     f"mesh; choose a multiple of {mesh.size}")


def replicated(mesh: Mesh) -> NamedSharding:
  """Parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Batch arrays: leading axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Assembles each process's local rows into global arrays sharded over the mesh."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
