"""Batches onto the devices in one transfer, unpacked (and cropped, for a device pool) there.

A training batch is a dict of `[batch, ...]` arrays of several dtypes (images or crop fields,
labels, λ, ids, soft labels). Sent leaf by leaf it costs one host-to-device transfer per leaf and
step; here each process packs its rows into one uint8 array `[rows, bytes per row]` (every leaf's
bytes side by side), sends that, and one jitted program splits it back into the leaves by bitcast
and, when the pool is on the devices, makes the crops (`device_pool.DeviceCrops`). The row split
over the mesh is the batch's, so the program runs sharded like the step after it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import numpy as np

from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax.data import device_pool


def _device_dtype(dtype: np.dtype) -> np.dtype:
  """What a leaf becomes on the devices: 64-bit integers as 32-bit (JAX without x64, as
  `device_put` would), booleans as bytes."""
  dtype = np.dtype(dtype)
  if dtype == np.bool_:
    return np.dtype(np.uint8)
  if dtype.kind in "iu" and dtype.itemsize == 8:
    return np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
  if dtype.kind == "f" and dtype.itemsize == 8:
    return np.dtype(np.float32)
  return dtype


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """Where each leaf's bytes sit in a packed row: (name, device dtype, per-row shape)."""

  fields: tuple[tuple[str, str, tuple[int, ...]], ...]

  @classmethod
  def of(cls, batch: Mapping[str, np.ndarray]) -> "RowLayout":
    return cls(
        tuple((name, _device_dtype(np.asarray(value).dtype).str, tuple(np.shape(value)[1:]))
              for name, value in sorted(batch.items())))

  @functools.cached_property
  def widths(self) -> tuple[int, ...]:
    return tuple(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for _, dtype, shape in self.fields)

  @property
  def row_bytes(self) -> int:
    return sum(self.widths)

  def pack(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """`[rows, row_bytes]` uint8: every leaf (as its device dtype) flattened per row, in order."""
    rows = len(next(iter(batch.values())))
    parts = []
    for name, dtype, _ in self.fields:
      value = np.ascontiguousarray(np.asarray(batch[name]).astype(dtype, copy=False))
      parts.append(value.reshape(rows, -1).view(np.uint8))
    return np.concatenate(parts, axis=1)

  def unpack(self, packed: jax.Array) -> dict[str, jax.Array]:
    """The leaves of a packed `[rows, row_bytes]` array (inside a jitted program)."""
    out, start = {}, 0
    rows = packed.shape[0]
    for (name, dtype, shape), width in zip(self.fields, self.widths, strict=True):
      dtype = np.dtype(dtype)
      chunk = packed[:, start:start + width]
      start += width
      if dtype.itemsize > 1:
        chunk = jax.lax.bitcast_convert_type(chunk.reshape(rows, -1, dtype.itemsize), dtype)
      else:
        chunk = jax.lax.bitcast_convert_type(chunk, dtype)
      out[name] = chunk.reshape((rows,) + shape)
    return out


class BatchFeed:
  """Local host batches → global device batches: one transfer, then one program per layout."""

  def __init__(self, mesh: jax.sharding.Mesh, device: device_pool.DeviceCrops | None = None):
    self._mesh = mesh
    self._device = device
    self._sharding = mesh_lib.batch_sharded(mesh)
    self._programs: dict[RowLayout, object] = {}
    # Without a device pool the program still takes a (replicated, empty) first argument.
    self._pixels = (device.pixels if device is not None else jax.device_put(
        np.zeros((), np.uint8), mesh_lib.replicated(mesh)))

  def _program(self, layout: RowLayout):
    if layout not in self._programs:
      device = self._device

      def fn(pixels, packed):
        batch = layout.unpack(packed)
        if device is not None:
          batch = device.materialize(pixels, batch)
        return batch

      self._programs[layout] = jax.jit(
          fn, in_shardings=(mesh_lib.replicated(self._mesh), self._sharding),
          out_shardings=self._sharding)
    return self._programs[layout]

  def __call__(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    layout = RowLayout.of(local)
    packed = layout.pack(local)
    if jax.process_count() == 1:
      packed = jax.device_put(packed, self._sharding)
    else:
      packed = jax.make_array_from_process_local_data(self._sharding, packed)
    return self._program(layout)(self._pixels, packed)
