"""Relabel (DESIGN.md §4): a teacher labels `crops_per_image` crop slots of every pool image.

The crops come from the same `CropExample.raw_crop` the SL pipeline replays, keyed by
`(crop_seed, example id, slot)`, so a stored label always belongs to the exact pixels the student
sees. The teacher runs jitted and sharded over the mesh; rows stream to disk shard by shard, so
memory is bounded by one shard whatever the data set size, and an interrupted relabel resumes at
the first unwritten shard.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import disk_space
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import preemption
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import pipeline
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib

_TARGET_SHARD_BYTES = 64 << 20


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
      crop_spec={
          **run_data.crop_spec_record(config, spec),
          # Tables cropped by PIL's box resize (before 2026-12-04) record nothing.
          **({} if spec.resize == crops.PIL_BOX else {
                 "resize": spec.resize
             }),
          **_cutmix_partner(config),
          # The crops' resampler: a table is only replayed on crops made the same way (host
          # tables, made before device crops existed, record nothing).
          **({
              "resampler": device_pool.DEVICE_RESAMPLER
          } if data.on_device else {})
      },
      temperature=float(config.temperature),
      label_format=config.label_format,
      topk=int(config.topk) if config.label_format != "full" else 0,
      slots_per_image=int(config.crops_per_image),
      teacher_bn_mode=config_schema.resolved_teacher_bn_mode(config),
  )


def _cutmix_partner(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """How a CutMix table's partners are drawn; {} without CutMix or with the per-crop partner
  (the tables made before the relabel-batch rule, which stay valid)."""
  if not run_data.cutmix_in_relabel_batches(config):
    return {}
  return {"cutmix_partner": "relabel_batch", "relabel_batch_size": int(config.relabel_batch_size)}


def table_identity(config: ml_collections.ConfigDict, data_identity: Mapping[str, Any],
                   teacher_digest: str) -> dict[str, Any]:
  """What a table's rows depend on: its data and pool, its teacher, its crops and format."""
  fields = ("temperature", "label_format", "crops_per_image", "crop_seed", "teacher_bn_mode",
            "image_size", "random_flip", "cutmix_alpha")
  recipe = {k: config[k] for k in fields}
  recipe["train_crop_recipe"] = config_schema.train_crop_recipe(config)  # 'auto' resolved
  if recipe["train_crop_recipe"] == "rded":  # run_data.crop_spec: the factor sets the crops
    recipe["rded_factor"] = run_data.rded_factor(config)
  else:
    recipe.update(crop_scale=config.crop_scale, crop_ratio=config.crop_ratio)
  recipe["topk"] = config.topk if config.label_format != "full" else 0
  if config.crop_resize != crops.PIL_BOX:  # tables of PIL's box resize keep their digests
    recipe["crop_resize"] = config.crop_resize
  if run_data.cutmix_in_relabel_batches(config):
    recipe.update(table_cutmix="relabel_batch", relabel_batch_size=config.relabel_batch_size)
  recipe["teacher_bn_mode"] = config_schema.resolved_teacher_bn_mode(config)
  if device_pool.planned_backend(config.crop_backend) == device_pool.DEVICE:
    # Its own directory (a pool over the device budget still gets host crops, and its header
    # says so: the replay of the same pool falls back the same way).
    recipe["crop_resampler"] = device_pool.DEVICE_RESAMPLER
  if recipe["teacher_bn_mode"] == "batch_stats":
    # BSSL labels depend on their batch: its size and how batches are drawn
    # (data/relabel_batches.py).
    recipe["relabel_batch_size"] = config.relabel_batch_size
    recipe["bssl_batches"] = "per-slot permutation of the pool"
  return cache.canonical({"recipe": recipe, "data": data_identity, "teacher": teacher_digest})


def table_directory(config: ml_collections.ConfigDict, cache_root: str,
                    identity: Mapping[str, Any]) -> str:
  """`config.label_table_dir`, or `<cache>/tables/<format>-c<crops>-<identity digest>`."""
  if config.label_table_dir:
    return os.path.abspath(config.label_table_dir)
  recipe = identity["recipe"]
  topk = f"-k{recipe['topk']}" if recipe["topk"] else ""
  name = f"{recipe['label_format']}{topk}-c{recipe['crops_per_image']}-{cache.digest(identity)}"
  return os.path.join(cache_root, "tables", name)


def positions_per_shard(config: ml_collections.ConfigDict, spec: table_lib.TableSpec) -> int:
  """Images per shard: the config's, or enough for about 64 MB; the whole pool under BSSL."""
  if config_schema.resolved_teacher_bn_mode(config) == "batch_stats":
    # A BSSL batch draws its images from the whole pool, so no shard is complete before all are.
    if config.table_positions_per_shard and config.table_positions_per_shard < len(spec.ids):
      raise ValueError(
          f"config.table_positions_per_shard: {config.table_positions_per_shard} images per shard, "
          f"but teacher_bn_mode='batch_stats' draws every relabel batch from all {len(spec.ids)} "
          "images, so a BSSL table is one shard; leave it 0")
    return len(spec.ids)
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
    done = np.asarray(multihost_utils.broadcast_one_to_all(done))
  return done.astype(bool)


def _shard_span(shard: int, per_shard: int, num_positions: int) -> tuple[int, int]:
  """Pool positions `[start, stop)` of shard `shard` (TableWriter.shard_positions, which only
  process 0 holds)."""
  return shard * per_shard, min((shard + 1) * per_shard, num_positions)


def write_table(config: ml_collections.ConfigDict, directory: str, data: run_data.RunData,
                teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh, *,
                shard_hook: Callable[[int], None] | None = None) -> table_lib.SoftLabelTable:
  """Writes (or resumes, or reuses) the table this config asks for in `directory`; opens it."""
  spec = table_spec(config, data, teacher)
  if os.path.exists(os.path.join(directory, table_lib.HEADER_FILE)):
    return table_lib.SoftLabelTable.open(directory, expected=spec)
  per_shard = positions_per_shard(config, spec)
  is_writer = jax.process_index() == 0
  writer = table_lib.TableWriter(directory, spec, per_shard) if is_writer else None
  num_shards = -(-len(spec.ids) // per_shard)
  done = _completed_everywhere(writer, num_shards)
  example = run_data.table_crop_example(config, data)
  device = run_data.device_crops(data, mesh) if not all(done) else None
  bssl = config_schema.resolved_teacher_bn_mode(config) == "batch_stats"
  if bssl:
    predict = inference.bssl_log_probs_fn(teacher.model, mesh, config.temperature,
                                          config.relabel_batch_size)
  else:
    predict = inference.log_probs_fn(teacher.model, mesh, config.temperature)
  row_dtype = table_lib.row_dtype(spec)
  # Checked on every process (each then stops alike); the byte count is exact (fixed-size rows).
  todo_rows = sum((stop - start) * spec.slots_per_image for start, stop in (
      _shard_span(s, per_shard, len(spec.ids)) for s in range(num_shards) if not done[s]))
  disk_space.require(directory, todo_rows * row_dtype.itemsize,
                     f"the soft-label table's {num_shards - int(done.sum())} unwritten shard(s)")
  progress = metrics_log.Progress(num_shards, per_shard * spec.slots_per_image, int(done.sum()))
  for shard in range(num_shards):
    if done[shard]:
      continue
    start, stop = _shard_span(shard, per_shard, len(spec.ids))
    first_row, num_rows = start * spec.slots_per_image, (stop - start) * spec.slots_per_image
    rows = np.zeros(num_rows, row_dtype)
    loading = pipeline.LoaderOptions.from_config(config)
    if bssl:  # one shard: every row, in BSSL batches drawn slot by slot from the whole pool
      outputs_of = inference.bssl_crop_outputs(example, slots=spec.slots_per_image,
                                               group_size=config.relabel_batch_size,
                                               seed=config.crop_seed, predict=predict,
                                               variables=teacher.variables, mesh=mesh,
                                               batch_size=config.eval_batch_size, loading=loading,
                                               device=device)
    else:
      outputs_of = inference.crop_outputs(example, slots=spec.slots_per_image, first_row=first_row,
                                          num_rows=num_rows, predict=predict,
                                          variables=teacher.variables, mesh=mesh,
                                          batch_size=config.eval_batch_size, loading=loading,
                                          device=device)
    for outputs in outputs_of:
      _rows_of(outputs, spec, first_row, rows)
    if writer is not None:
      writer.write_shard(shard, rows)
    metrics_log.log_line(f"relabel shard {shard + 1}/{num_shards}: "
                         + progress.line(shard + 1, {}, progress.update(shard + 1)))
    if shard_hook is not None:
      shard_hook(shard)
    if shard + 1 < num_shards and preemption.stop_requested():
      raise preemption.stop(f"relabel stopped after shard {shard + 1} of {num_shards} of "
                            f"{directory} (every written shard is kept)")
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
