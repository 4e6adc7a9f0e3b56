"""Relabel (DESIGN.md §4): a teacher labels `crops_per_image` crop slots of every pool image.

The crops come from the same `CropExample.raw_crop` the SL pipeline replays, keyed by
`(crop_seed, example id, slot)`, so a stored label always belongs to the exact pixels the student
sees. The teacher runs jitted and sharded over the mesh; rows stream to disk shard by shard, so
memory is bounded by one shard whatever the data set size, and an interrupted relabel resumes at
the first unwritten shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import pipeline
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib

_TARGET_SHARD_BYTES = 64 << 20
# Fields that travel with each crop through the jitted step, so every process can write any row.
_METADATA_FIELDS = ("box", "flip", "partner_id", "mix_lambda", "cut_box")


@dataclasses.dataclass(frozen=True)
class CropRows:
  """Row offset within `[first_row, first_row + num_rows)` of the (position, slot) grid → crop.

  Offsets past the end (padding of the last batch) repeat real rows with `mask` 0, so batch
  statistics in BSSL mode still come from real crops.
  """

  example: pipeline.CropExample
  slots: int
  first_row: int
  num_rows: int

  def __call__(self, offset: int) -> dict[str, np.ndarray]:
    valid = offset < self.num_rows
    row = self.first_row + (offset if valid else offset % self.num_rows)
    position, slot = divmod(row, self.slots)
    pixels, fields, metadata = self.example.raw_crop(position, slot)
    return {"image": self.example.normalizer(pixels), "label": fields["label"],
            "mix_lambda": fields["mix_lambda"], "row": np.int32(row),
            "mask": np.float32(valid), **{k: metadata[k] for k in _METADATA_FIELDS if
                                          k in metadata}}


def teacher_log_probs_fn(teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh,
                         temperature: float, bn_mode: str) -> Callable:
  """Jitted `(variables, batch) -> batch + log softmax(z/T)`, every output replicated."""

  def fn(variables, batch):
    images = batch["image"]
    if bn_mode == "batch_stats" and "batch_stats" in variables:
      # HALD's BSSL: normalise with the statistics of the relabel batch, discard the update.
      logits, _ = teacher.model.apply(variables, images, train=True, mutable=["batch_stats"])
    else:
      logits = teacher.model.apply(variables, images, train=False)
    out = {k: v for k, v in batch.items() if k != "image"}
    out["log_probs"] = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    return out

  return jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))


def teacher_crop_outputs(example: pipeline.CropExample, *, slots: int, first_row: int,
                         num_rows: int, predict: Callable, variables: Any,
                         mesh: jax.sharding.Mesh, global_batch: int,
                         loading: pipeline.LoaderOptions = pipeline.LoaderOptions()
                         ) -> Iterator[dict[str, np.ndarray]]:
  """Teacher outputs for grid rows `[first_row, first_row + num_rows)`, valid rows only."""
  local_batch = pipeline.check_batch_split(global_batch, jax.process_count())
  num_batches = -(-num_rows // global_batch)
  dataset = (grain.MapDataset.range(num_batches * local_batch)
             .map(pipeline.ProcessPositions(global_batch, jax.process_index(),
                                            jax.process_count()))
             .map(CropRows(example, slots, first_row, num_rows))
             .batch(local_batch, drop_remainder=True))
  for local in pipeline.to_iterator(dataset, loading):
    out = jax.device_get(predict(variables, mesh_lib.global_batch(local, mesh)))
    keep = out.pop("mask") > 0
    yield {k: np.asarray(v)[keep] for k, v in out.items()}


def pool_center_outputs(predict: Callable, first_arg: Any, data: run_data.RunData,
                        config: ml_collections.ConfigDict,
                        mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """`predict(first_arg, batch)` on the centre view of every pool image: valid rows, pool order."""
  parts = {}
  for local in pipeline.evaluation_batches(
      pipeline.PoolView(data.train, data.pool_ids), size=config.image_size,
      crop_fraction=config.eval_crop_fraction, normalizer=data.normalizer,
      global_batch=config.eval_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), loading=pipeline.LoaderOptions.from_config(config)):
    out = jax.device_get(predict(first_arg, mesh_lib.global_batch(local, mesh)))
    keep = np.asarray(out.pop("mask")) > 0
    for name, value in out.items():
      parts.setdefault(name, []).append(np.asarray(value)[keep])
  return {name: np.concatenate(values) for name, values in parts.items()}


def table_spec(config: ml_collections.ConfigDict, data: run_data.RunData,
               teacher: teacher_lib.Teacher) -> table_lib.TableSpec:
  """The identity of the table this config asks for (what a stored table must match)."""
  spec = data.crop_spec
  return table_lib.TableSpec(
      dataset_name=data.train.info.name,
      dataset_fingerprint=data.train.info.fingerprint,
      ids=np.asarray(data.pool_ids, np.int64),
      num_classes=data.train.info.num_classes,
      teacher=teacher.describe(),
      teacher_fingerprint=teacher.fingerprint,
      crop_seed=int(config.crop_seed),
      crop_spec={"output_size": spec.output_size, "scale": list(spec.scale),
                 "ratio": list(spec.ratio), "flip": bool(spec.flip),
                 "cutmix_alpha": float(spec.cutmix_alpha)},
      temperature=float(config.temperature),
      label_format=config.label_format,
      topk=int(config.topk) if config.label_format != "full" else 0,
      slots_per_image=int(config.crops_per_image),
      teacher_bn_mode=config.teacher_bn_mode,
  )


def _identity_hash(spec: table_lib.TableSpec) -> str:
  ids_hash = hashlib.sha256(np.ascontiguousarray(spec.ids, np.int64).tobytes()).hexdigest()
  fields = [spec.dataset_fingerprint, ids_hash, spec.teacher_fingerprint, spec.crop_seed,
            spec.crop_spec, spec.temperature, spec.label_format, spec.topk,
            spec.slots_per_image, spec.teacher_bn_mode]
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def table_directory(config: ml_collections.ConfigDict, workdir: str,
                    spec: table_lib.TableSpec) -> str:
  """`config.label_table_dir`, or a cache path named by the table's identity."""
  if config.label_table_dir:
    return config.label_table_dir
  topk = f"-k{spec.topk}" if spec.topk else ""
  name = f"{spec.label_format}{topk}-c{spec.slots_per_image}-{_identity_hash(spec)}"
  return os.path.join(teacher_lib.cache_dir(config, workdir), "tables", name)


def positions_per_shard(config: ml_collections.ConfigDict, spec: table_lib.TableSpec) -> int:
  """Images per shard: the config's, or enough for about 64 MB."""
  if config.table_positions_per_shard:
    return int(config.table_positions_per_shard)
  per_image = table_lib.bytes_per_row(spec) * spec.slots_per_image
  return max(1, _TARGET_SHARD_BYTES // per_image)


def _rows_of(outputs: dict[str, np.ndarray], spec: table_lib.TableSpec, first_row: int,
             rows: np.ndarray) -> None:
  """Encodes a batch of teacher outputs into its rows of a shard buffer."""
  index = outputs["row"] - first_row
  payload = formats.encode(outputs["log_probs"], spec.fmt)
  for name in payload.dtype.names:
    rows[name][index] = payload[name]
  rows["box"][index] = outputs["box"].astype(np.float16)
  rows["flip"][index] = outputs["flip"]
  if spec.cutmix:
    rows["partner_id"][index] = outputs["partner_id"]
    rows["mix_lambda"][index] = outputs["mix_lambda"].astype(np.float16)
    rows["cut_box"][index] = outputs["cut_box"]


def _completed_everywhere(writer: table_lib.TableWriter | None, num_shards: int) -> np.ndarray:
  """Process 0's view of finished shards, shared so every process skips the same ones."""
  done = np.zeros(num_shards, np.int32)
  if writer is not None:
    done[sorted(writer.completed_shards())] = 1
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    done = np.asarray(multihost_utils.broadcast_one_to_all(done))
  return done.astype(bool)


def relabel_with(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
                 teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh, *,
                 shard_hook: Callable[[int], None] | None = None) -> table_lib.SoftLabelTable:
  """Writes (or resumes, or reuses) the table this config asks for and opens it."""
  spec = table_spec(config, data, teacher)
  directory = table_directory(config, workdir, spec)
  if os.path.exists(os.path.join(directory, table_lib.HEADER_FILE)):
    return table_lib.SoftLabelTable.open(directory, expected=spec)
  per_shard = positions_per_shard(config, spec)
  is_writer = jax.process_index() == 0
  writer = table_lib.TableWriter(directory, spec, per_shard) if is_writer else None
  num_shards = -(-len(spec.ids) // per_shard)
  done = _completed_everywhere(writer, num_shards)
  example = pipeline.CropExample(data.train, data.pool_ids, data.crop_spec, config.crop_seed,
                                 data.normalizer)
  predict = teacher_log_probs_fn(teacher, mesh, config.temperature, config.teacher_bn_mode)
  row_dtype = table_lib.row_dtype(spec)
  progress = metrics_log.Progress(num_shards, per_shard * spec.slots_per_image,
                                  int(done.sum()))
  for shard in range(num_shards):
    if done[shard]:
      continue
    start, stop = shard * per_shard, min((shard + 1) * per_shard, len(spec.ids))
    first_row, num_rows = start * spec.slots_per_image, (stop - start) * spec.slots_per_image
    rows = np.zeros(num_rows, row_dtype)
    for outputs in teacher_crop_outputs(
        example, slots=spec.slots_per_image, first_row=first_row, num_rows=num_rows,
        predict=predict, variables=teacher.variables, mesh=mesh,
        global_batch=config.eval_batch_size, loading=pipeline.LoaderOptions.from_config(config)):
      _rows_of(outputs, spec, first_row, rows)
    if writer is not None:
      writer.write_shard(shard, rows)
    metrics_log.log_line(f"relabel shard {shard + 1}/{num_shards}: "
                         + progress.line(shard + 1, {}, progress.update(shard + 1)))
    if shard_hook is not None:
      shard_hook(shard)
  table = writer.finalize() if writer is not None else None
  mesh_lib.sync_processes("relabel finalized")
  if table is None:  # the other processes read what process 0 wrote
    table = table_lib.SoftLabelTable.open(directory, expected=spec)
  metrics_log.log_line(
      f"soft-label table {directory}: {table.num_rows} crops ({len(spec.ids)} images × "
      f"{spec.slots_per_image}), format {spec.label_format}, {table.bytes_per_row} bytes/crop, "
      f"labels {table.label_bytes / 1e6:.3f} MB ({table.label_bytes} bytes), on disk "
      f"{table.table_bytes / 1e6:.3f} MB")
  return table


def relabel(config: ml_collections.ConfigDict, workdir: str, *,
            devices: list[jax.Device] | None = None,
            shard_hook: Callable[[int], None] | None = None) -> table_lib.SoftLabelTable:
  """`task='relabel'`: builds the configured soft-label table (and its teacher if needed)."""
  config_schema.validate(config)
  mesh = mesh_lib.data_mesh(devices)
  mesh_lib.check_divisible(config.eval_batch_size, mesh, "eval batch size")
  data = run_data.load_run_data(config)
  teacher = teacher_lib.teacher_for_run(config, workdir, data, mesh, devices=devices)
  return relabel_with(config, workdir, data, teacher, mesh, shard_hook=shard_hook)
