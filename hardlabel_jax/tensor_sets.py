"""A tensor set (`tensors:<dir>`, data.tensor_set) as a run's data: its lr.pt and stored labels.

A run trains on a tensor set as a study's external set (image_sets.folder_config) or as
`dataset='tensors:<dir>'` with `test_dataset` the data set it was made from. What the set brings
besides its images, as DD-Ranking uses it (ddranking/metrics/soft_label.py `compute_metrics`):

- lr.pt, a learned learning rate: DD-Ranking trains the set's soft-label runs at `syn_lr` with the
  configured optimizer, and searches the hard-label run's rate. `tensor_set_learning_rate`:
  'soft_regimes' sets `learning_rate` of every regime but HL, 'every_regime' of all, 'ignore' of
  none. The run's log says which rate it took from where.
- soft labels (labels.pt [n, C], logits): an SL run replays them as its soft-label table, written
  once into the cache without a teacher: one slot per image, holding `softmax(labels / T)` at the
  run's `temperature` (DD-Ranking's KL and SCE losses soften the stored labels by their own T), for
  the whole image, unflipped. DD-Ranking's `soft_label_mode='S'` pairs each image with its one
  label and augments the image (DSA, CutMix) under it; here a stored label belongs to the exact
  pixels trained on, so the run's crop must be the whole image: crops_per_image 1, crop_scale
  (1, 1), crop_ratio the images' aspect, random_flip off, no CutMix (configs/check_set.py sets
  these for its SL cells), checked before anything is written. Other regimes read no stored
  labels (HALD's table is relabelled by its teacher, as on any set).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import disk_space
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import run_data
from hardlabel_jax.data import tensor_set
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib

# The crop every stored label belongs to: the image itself, unflipped (a row's box fractions).
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
_TARGET_SHARD_BYTES = 64 << 20


def is_tensor_run(config: ml_collections.ConfigDict) -> bool:
  """Whether the run trains on a tensor set."""
  return config.dataset.startswith(tensor_set.PREFIX)


def _path(config: ml_collections.ConfigDict) -> str:
  return tensor_set.set_path(config.dataset)


def replays_stored_labels(config: ml_collections.ConfigDict) -> bool:
  """Whether a run trains under SL on the soft labels its tensor set stores (no teacher needed)."""
  if not (is_tensor_run(config) and config.task == "train" and config.regime == "sl"):
    return False
  stored = tensor_set.stored_labels(_path(config))
  return stored is not None and stored.soft is not None


def learned_rate_applies(config: ml_collections.ConfigDict) -> bool:
  """Whether `tensor_set_learning_rate` gives this run's regime the set's lr.pt."""
  rule = config.tensor_set_learning_rate
  return rule == "every_regime" or (rule == "soft_regimes" and config.regime != "hl")


def learned_rate(config: ml_collections.ConfigDict) -> float | None:
  """The set's lr.pt where this run trains at it (`learned_rate_applies`), else None."""
  if not (is_tensor_run(config) and learned_rate_applies(config)):
    return None
  return tensor_set.learning_rate(_path(config))


def whole_image_fields(image_shape: Sequence[int]) -> dict[str, Any]:
  """The crop fields of a run whose crop is the whole image (torchvision's RandomResizedCrop at
  scale 1 and the image's own aspect returns the image), unflipped, one slot."""
  height, width = image_shape[:2]
  return {
      "crops_per_image": 1,
      "train_crop_recipe": "rrc",
      "crop_scale": (1.0, 1.0),
      "crop_ratio": (width / height, width / height),
      "random_flip": False,
      "cutmix_alpha": 0.0,
  }


def _check_whole_image_crop(config: ml_collections.ConfigDict, image_shape: Sequence[int]) -> None:
  """Raises naming the fields unless the run's one crop slot is the whole image, unflipped."""
  wanted = whole_image_fields(image_shape)
  resolved = {
      k: tuple(config[k]) if isinstance(config[k], (list, tuple)) else config[k] for k in wanted
  }
  resolved["train_crop_recipe"] = config_schema.train_crop_recipe(config)  # 'auto' resolved
  differ = [k for k, v in wanted.items() if resolved[k] != v]
  if differ:
    settings = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
    raise ValueError(
        f"config.{differ[0]}: an SL run on {config.dataset} replays the soft labels of "
        f"{tensor_set.LABELS_FILE}, one per whole image, so its crop must be that image: set "
        f"{settings} (now {', '.join(f'{k}={resolved[k]!r}' for k in differ)}); configs/"
        "check_set.py sets them for its SL cells")


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with the set's lr.pt as `learning_rate` where it applies; an SL run on
  stored labels is checked to crop the whole image (module docstring). Writes nothing."""
  out = config.copy_and_resolve_references()
  rate = tensor_set.learning_rate(_path(config))
  if rate is not None and config.task in config_schema.TRAINING_TASKS and learned_rate_applies(
      config):
    out.learning_rate = rate
  if replays_stored_labels(config):
    _check_whole_image_crop(out, run_data.train_source(out).info.image_shape)
  return out


def describe(config: ml_collections.ConfigDict, data: run_data.RunData) -> str:
  """What a run takes from its tensor set: how it was read, the learning rate, the labels."""
  reading = run_data.tensor_reading(config, data.test.info)
  lines = [tensor_set.read(_path(config), reading).describe()]
  rate = tensor_set.learning_rate(_path(config))
  if rate is not None:
    if config.task in config_schema.TRAINING_TASKS and learned_rate_applies(config):
      lines.append(f"learning_rate {config.learning_rate:g} from {_path(config)}/"
                   f"{tensor_set.LR_FILE} (tensor_set_learning_rate="
                   f"{config.tensor_set_learning_rate!r}, regime {config.regime!r})")
    else:
      lines.append(f"{tensor_set.LR_FILE} ({rate:g}) not used: tensor_set_learning_rate="
                   f"{config.tensor_set_learning_rate!r}, regime {config.regime!r}; "
                   f"learning_rate {config.learning_rate:g}")
  if replays_stored_labels(config):
    lines.append(f"SL targets: the stored soft labels of {tensor_set.LABELS_FILE}, "
                 f"softmax(labels / {config.temperature:g}), one whole-image slot per image")
  return "\n".join(lines)


def table_identity(config: ml_collections.ConfigDict,
                   data_identity: Mapping[str, Any]) -> dict[str, Any]:
  """What a stored-label table's rows depend on: the labels file, its softening and format, and
  the pool it is keyed by."""
  stored = tensor_set.stored_labels(_path(config))
  recipe = {
      "stored_labels_sha256": stored.sha256,
      "temperature": config.temperature,
      "label_format": config.label_format,
      "topk": config.topk if config.label_format != "full" else 0,
      "crop_seed": config.crop_seed,
      "image_size": config.image_size,
  }
  return cache.canonical({"recipe": recipe, "data": data_identity})


def table_directory(config: ml_collections.ConfigDict, cache_root: str,
                    identity: Mapping[str, Any]) -> str:
  """`config.label_table_dir`, or `<cache>/tables/stored-<format>-c1-<identity digest>`."""
  if config.label_table_dir:
    return os.path.abspath(config.label_table_dir)
  recipe = identity["recipe"]
  topk = f"-k{recipe['topk']}" if recipe["topk"] else ""
  return os.path.join(cache_root, "tables",
                      f"stored-{recipe['label_format']}{topk}-c1-{cache.digest(identity)}")


def table_spec(config: ml_collections.ConfigDict, data: run_data.RunData) -> table_lib.TableSpec:
  """The header of the stored-label table of this run: its data, pool and crop, the labels file
  in place of a teacher."""
  stored = tensor_set.stored_labels(_path(config))
  return table_lib.TableSpec(
      dataset_name=data.train.info.name,
      dataset_fingerprint=data.train.info.fingerprint,
      ids=np.asarray(data.pool_ids, np.int64),
      num_classes=data.train.info.num_classes,
      teacher={
          "stored_labels": os.path.join(_path(config), tensor_set.LABELS_FILE),
          "sha256": stored.sha256
      },
      teacher_fingerprint=f"stored_labels:{stored.sha256}",
      crop_seed=int(config.crop_seed),
      crop_spec={
          **run_data.crop_spec_record(config, data.crop_spec),
          "labels": "stored, whole image",
      },
      temperature=float(config.temperature),
      label_format=config.label_format,
      topk=int(config.topk) if config.label_format != "full" else 0,
      slots_per_image=1,
  )


def stored_log_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
  """`log_softmax(logits / T)` per row, float32 (computed in float64)."""
  scaled = np.asarray(logits, np.float64) / temperature
  scaled -= scaled.max(axis=1, keepdims=True)
  return (scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))).astype(np.float32)


def _rows(spec: table_lib.TableSpec, log_probs: np.ndarray) -> np.ndarray:
  rows = np.zeros(log_probs.shape[0], table_lib.row_dtype(spec))
  payload = formats.encode(log_probs, spec.fmt)
  for name in payload.dtype.names:
    rows[name] = payload[name]
  rows["box"] = np.asarray(WHOLE_IMAGE_BOX, np.float16)
  rows["flip"] = 0
  return rows


def write_table(config: ml_collections.ConfigDict, directory: str,
                data: run_data.RunData) -> table_lib.SoftLabelTable:
  """Writes (or reuses) the table of the set's stored soft labels for the run's pool; opens it."""
  spec = table_spec(config, data)
  if os.path.exists(os.path.join(directory, table_lib.HEADER_FILE)):
    return table_lib.SoftLabelTable.open(directory, expected=spec)
  soft = tensor_set.stored_labels(_path(config)).soft
  log_probs = stored_log_probs(soft[spec.ids], config.temperature)
  per_shard = int(config.table_positions_per_shard) or max(
      1, _TARGET_SHARD_BYTES // table_lib.bytes_per_row(spec))
  table = None
  if jax.process_index() == 0:
    writer = table_lib.TableWriter(directory, spec, per_shard)
    disk_space.require(directory, spec.num_rows * table_lib.bytes_per_row(spec),
                       "the stored soft-label table")
    for shard in range(writer.num_shards):
      start, stop = writer.shard_positions(shard)
      if shard not in writer.completed_shards():
        writer.write_shard(shard, _rows(spec, log_probs[start:stop]))
    table = writer.finalize()
  mesh_lib.sync_processes("stored soft-label table written")
  if table is None:  # the other processes read what process 0 wrote
    table = table_lib.SoftLabelTable.open(directory, expected=spec)
  metrics_log.log_line(
      f"soft-label table {directory}: the stored labels of {data.train.info.name} "
      f"({len(spec.ids)} images × 1 whole-image slot, T={config.temperature:g}), format "
      f"{spec.label_format}, labels {table.label_bytes} bytes")
  return table
