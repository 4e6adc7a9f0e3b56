"""Forward passes over crops and centre views: the one place models run outside training.

Relabelling, RDED/CA2D crop scoring, scoring runs and the drift measurement all run a frozen model,
jitted and sharded over the mesh, over rows of a `(position, slot)` crop grid or over the centre
views of a pool. Every batch is padded to a multiple of the device count and the padding masked,
so any batch size runs on any device count and outputs hold exactly the real rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hardlabel_jax import batch_feed
from hardlabel_jax import bssl
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import run_data
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import relabel_batches

# Fields that travel with each crop through the jitted step, so every process can write any row.
_METADATA_FIELDS = ("box", "flip", "partner_id", "mix_lambda", "cut_box")


@dataclasses.dataclass(frozen=True)
class CropRows:
  """Row offset within `[first_row, first_row + num_rows)` of the (position, slot) grid → crop.

  Offsets past the end (padding of the last batch) repeat real rows with `mask` 0.
  """

  example: pipeline.CropExample
  slots: int
  first_row: int
  num_rows: int

  def __call__(self, offset: int) -> dict[str, np.ndarray]:
    valid = offset < self.num_rows
    row = self.first_row + (offset if valid else offset % self.num_rows)
    return _crop_row(self.example, self.slots, row, valid)


def _crop_row(example: pipeline.CropExample, slots: int, row: int,
              valid: bool) -> dict[str, np.ndarray]:
  """The normalised crop of grid row `row` with its label, metadata and mask."""
  position, slot = divmod(row, slots)
  if example.on_device:  # the crop's fields: `DeviceCrops` makes the pixels before `predict`
    fields = example.crop_fields(position, slot)
    metadata = fields  # crop_fields holds the crop metadata too
    kernel = {k: fields[k] for k in device_pool.KERNEL_FIELDS}
  else:
    pixels, fields, metadata = example.raw_crop(position, slot)
    kernel = {"image": example.normalizer(pixels)}
  return {
      **kernel, "label": fields["label"],
      "mix_lambda": fields["mix_lambda"],
      "row": np.int32(row),
      "mask": np.float32(valid),
      **{
          k: metadata[k] for k in _METADATA_FIELDS if k in metadata
      }
  }


def _check_device(example: pipeline.CropExample, device: device_pool.DeviceCrops | None) -> None:
  if example.on_device != (device is not None):
    raise ValueError("an on-device crop example needs its DeviceCrops, and a host one none "
                     f"(on_device={example.on_device}, DeviceCrops given: {device is not None})")


@dataclasses.dataclass(frozen=True)
class GroupedRows:
  """Offset into the flattened `relabel_batches.group_rows` table → crop; a -1 entry (padding)
  repeats the table's first row with `mask` 0, which no BSSL statistic reads."""

  example: pipeline.CropExample
  slots: int
  rows: np.ndarray

  def __call__(self, offset: int) -> dict[str, np.ndarray]:
    row = int(self.rows[offset])
    return _crop_row(self.example, self.slots, row if row >= 0 else int(self.rows[0]), row >= 0)


def _jit_log_probs(logits_of: Callable[[Any, dict], jax.Array], mesh: jax.sharding.Mesh,
                   temperature: float) -> Callable:
  """Jitted `(variables, batch) -> batch + log softmax(logits_of(variables, batch) / T)`."""

  def fn(variables, batch):
    logits = logits_of(variables, batch)
    out = {k: v for k, v in batch.items() if k != "image"}
    out["log_probs"] = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    return out

  return jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))


def log_probs_fn(model: nn.Module, mesh: jax.sharding.Mesh, temperature: float) -> Callable:
  """Jitted eval-mode `(variables, batch) -> batch + log softmax(z/T)`, outputs replicated.

  (BSSL, whose labels depend on their relabel batch, is `bssl_log_probs_fn`.)
  """
  return _jit_log_probs(lambda v, batch: model.apply(v, batch["image"], train=False), mesh,
                        temperature)


def bssl_log_probs_fn(model: nn.Module, mesh: jax.sharding.Mesh, temperature: float,
                      group_size: int) -> Callable:
  """Jitted BSSL labelling: each `group_size` rows of a batch normalised by their own stats."""
  return _jit_log_probs(
      lambda v, batch: bssl.grouped_logits(model, v, batch["image"], batch["mask"], group_size),
      mesh, temperature)


def bssl_groups_per_call(group_size: int, batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """Relabel batches per jitted call: about `batch_size` rows, a whole number of groups that
  splits over the mesh's devices and processes."""
  devices = mesh.devices.size * jax.process_count()
  step = devices // math.gcd(devices, group_size)  # groups · group_size divisible by devices
  return max(step, batch_size // group_size // step * step)


def bssl_crop_outputs(
    example: pipeline.CropExample, *, slots: int, group_size: int, seed: int, predict: Callable,
    variables: Any, mesh: jax.sharding.Mesh, batch_size: int,
    loading: pipeline.LoaderOptions = pipeline.LoaderOptions(),
    device: device_pool.DeviceCrops | None = None) -> Iterator[dict[str, np.ndarray]]:
  """`predict` (`bssl_log_probs_fn`) over every row of the grid in BSSL batches; valid rows.

  An `on_device` example's crops are made by `device` (its pool on the mesh) before `predict`.
  """
  _check_device(example, device)
  feed = batch_feed.BatchFeed(mesh, device)  # one transfer a batch; the crops made there
  table = relabel_batches.group_rows(len(example.pool_ids), slots, group_size, seed)
  per_call = bssl_groups_per_call(group_size, batch_size, mesh)
  padding = np.full((-len(table) % per_call, group_size), -1, table.dtype)
  flat = np.concatenate([table, padding]).reshape(-1)
  dataset = pipeline.process_batches(GroupedRows(example, slots, flat), num_batches=len(flat) //
                                     (per_call * group_size), global_batch=per_call * group_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  for local in pipeline.to_iterator(dataset, loading):
    out = jax.device_get(predict(variables, feed(local)))
    keep = out.pop("mask") > 0
    yield {k: np.asarray(v)[keep] for k, v in out.items()}


def crop_outputs(example: pipeline.CropExample, *, slots: int, first_row: int, num_rows: int,
                 predict: Callable, variables: Any, mesh: jax.sharding.Mesh, batch_size: int,
                 loading: pipeline.LoaderOptions = pipeline.LoaderOptions(),
                 device: device_pool.DeviceCrops | None = None) -> Iterator[dict[str, np.ndarray]]:
  """`predict(variables, batch)` on grid rows `[first_row, first_row + num_rows)`, valid rows.

  An `on_device` example's crops are made by `device` (its pool on the mesh) before `predict`.
  """
  _check_device(example, device)
  feed = batch_feed.BatchFeed(mesh, device)  # one transfer a batch; the crops made there
  global_batch = mesh_lib.padded_batch(batch_size, mesh)
  dataset = pipeline.process_batches(CropRows(example, slots, first_row,
                                              num_rows), num_batches=-(-num_rows // global_batch),
                                     global_batch=global_batch, process_index=jax.process_index(),
                                     process_count=jax.process_count())
  for local in pipeline.to_iterator(dataset, loading):
    out = jax.device_get(predict(variables, feed(local)))
    keep = out.pop("mask") > 0
    yield {k: np.asarray(v)[keep] for k, v in out.items()}


def split_outputs(
    predict: Callable, first_arg: Any, source: Any, *, size: int, crop_fraction: float,
    normalizer: pipeline.Normalizer, batch_size: int, mesh: jax.sharding.Mesh,
    loading: pipeline.LoaderOptions = pipeline.LoaderOptions()
) -> Iterator[dict[str, np.ndarray]]:
  """`predict(first_arg, batch)` on the centre view of every example of `source`, valid rows."""
  for local in pipeline.evaluation_batches(source, size=size, crop_fraction=crop_fraction,
                                           normalizer=normalizer,
                                           global_batch=mesh_lib.padded_batch(batch_size, mesh),
                                           process_index=jax.process_index(),
                                           process_count=jax.process_count(), loading=loading):
    out = jax.device_get(predict(first_arg, mesh_lib.global_batch(local, mesh)))
    keep = np.asarray(out.pop("mask")) > 0
    yield {name: np.asarray(value)[keep] for name, value in out.items()}


def pool_center_outputs(predict: Callable, first_arg: Any, data: run_data.RunData,
                        config: ml_collections.ConfigDict,
                        mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """`predict(first_arg, batch)` on the centre view of every pool image, in pool order."""
  parts = {}
  for out in split_outputs(predict, first_arg, pipeline.PoolView(data.train, data.pool_ids),
                           size=config.image_size, crop_fraction=config.eval_crop_fraction,
                           normalizer=data.normalizer, batch_size=config.eval_batch_size, mesh=mesh,
                           loading=pipeline.LoaderOptions.from_config(config)):
    for name, value in out.items():
      parts.setdefault(name, []).append(value)
  return {name: np.concatenate(values) for name, values in parts.items()}
