"""RDED and CA2D distilled sets (DESIGN.md §7): teacher-scored crops stitched into grids.

RDED: per class `mipc` random real images; 5 RandomResizedCrops each (scale 0.08–1, ratio 1),
scored by teacher cross-entropy on the crop; each image keeps its lowest-CE crop; per class the
`ipc·factor²` best crops, downsampled to `size/factor`, are stitched into `ipc` images of
`factor×factor` patches (patches j, j+ipc, j+2·ipc, … of class-sorted crops fill image j in
row-major order). CA2D: the same crop/select/stitch on the CAD-Prune-ranked pool instead of
random images. The set is written as an image folder (`<dir>/train/<class>/<i>.png`, the format
of the PyTorch RDED code) with `provenance.json`, so the trainer reads it like any data set.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from PIL import Image

from hardlabel_jax import cache
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import sources

METHODS = ("rded", "ca2d")
PROVENANCE_FILE = "provenance.json"
_SPLIT = "train"


def candidates_per_class(config: ml_collections.ConfigDict, smallest_class: int) -> int:
  """mipc, the real images per class crops are drawn from: the config's, or min(300, smallest)."""
  return config.rded_candidates_per_class or min(300, smallest_class)


def candidate_pool(config: ml_collections.ConfigDict, labels: np.ndarray) -> np.ndarray:
  """The real images crops are drawn from: random (RDED) or top-mipc by CAD (CA2D), per class."""
  mipc = candidates_per_class(config, int(np.bincount(labels).min()))
  if config.selection == "rded":
    return selection.class_balanced_random(labels, mipc, config.subset_seed)
  scored = selection.load_scores(config.scores_file)
  if "cad" not in scored.scores:
    raise ValueError(f"config.scores_file: {config.scores_file} has no CAD scores; score with "
                     "at least cad_window + cad_num_windows epochs")
  chosen = selection.select("cad_prune", labels[scored.ids], mipc, scores=scored.scores["cad"],
                            direction=config.cad_direction)
  return np.sort(scored.ids[chosen]).astype(np.int64)


def select_crops(pool_labels: np.ndarray, crop_ce: np.ndarray, images_per_class: int,
                 factor: int) -> tuple[np.ndarray, np.ndarray]:
  """Per class, the `ipc·factor²` images whose best crop has the lowest CE, and those slots.

  `crop_ce` is `[pool, crops]`; returns pool positions (class-major, ascending CE within a class)
  and the chosen slot of each.
  """
  best_slot = np.argmin(crop_ce, axis=1)
  best_ce = crop_ce[np.arange(len(crop_ce)), best_slot]
  per_class = images_per_class * factor * factor
  positions = []
  for c in np.unique(pool_labels):
    members = np.flatnonzero(pool_labels == c)
    if len(members) < per_class:
      raise ValueError(f"class {c} has {len(members)} candidate images, fewer than "
                       f"images_per_class·factor² = {per_class}; raise rded_candidates_per_class")
    order = members[np.lexsort((members, best_ce[members]))]  # ties: lower position first
    positions.append(order[:per_class])
  positions = np.concatenate(positions)
  return positions, best_slot[positions]


def stitch(patches: np.ndarray, images_per_class: int, factor: int) -> np.ndarray:
  """`[ipc·f², p, p, C]` patches of one class → `[ipc, f·p, f·p, C]`; image j holds j, j+ipc, …"""
  count, size = patches.shape[0], patches.shape[1]
  if count != images_per_class * factor * factor:
    raise ValueError(f"expected {images_per_class * factor * factor} patches, got {count}")
  out = np.zeros((images_per_class, factor * size, factor * size, patches.shape[-1]), np.uint8)
  for j in range(images_per_class):
    for r in range(factor * factor):
      row, col = divmod(r, factor)
      out[j, row * size:(row + 1) * size,
          col * size:(col + 1) * size] = (patches[j + r * images_per_class])
  return out


def _crop_cross_entropy(config, data: run_data.RunData, pool: np.ndarray,
                        teacher: teacher_lib.Teacher, mesh) -> tuple[np.ndarray, Any]:
  """Teacher CE of `rded_crops_per_image` crops of every candidate, `[pool, crops]`."""
  spec = crops.CropSpec(output_size=config.image_size, scale=(0.08, 1.0), ratio=(1.0, 1.0),
                        flip=False)
  example = pipeline.CropExample(data.train, pool, spec, config.crop_seed, data.normalizer)
  slots = config.rded_crops_per_image
  predict = inference.log_probs_fn(teacher.model, mesh, 1.0, "eval")
  ce = np.zeros((len(pool), slots), np.float32)
  for out in inference.crop_outputs(example, slots=slots, first_row=0, num_rows=len(pool) * slots,
                                    predict=predict, variables=teacher.variables, mesh=mesh,
                                    batch_size=config.eval_batch_size,
                                    loading=pipeline.LoaderOptions.from_config(config)):
    position, slot = np.divmod(out["row"], slots)
    ce[position, slot] = -out["log_probs"][np.arange(len(position)), out["label"]]
  return ce, example


def identity(config: ml_collections.ConfigDict, fingerprint: str, teacher_digest: str,
             scores: str) -> dict[str, Any]:
  """Everything that defines a distilled set's content (`scores`: the score file's identity)."""
  return {
      "method": config.selection,
      "fingerprint": fingerprint,
      "teacher": teacher_digest,
      "ipc": config.images_per_class,
      "factor": config.rded_factor,
      "mipc": config.rded_candidates_per_class,
      "crops": config.rded_crops_per_image,
      "crop_seed": config.crop_seed,
      "subset_seed": config.subset_seed,
      "image_size": config.image_size,
      "scores": scores,
      "cad_direction": config.cad_direction if config.selection == "ca2d" else "",
      "normalization": [list(config.normalization_mean),
                        list(config.normalization_std)]
  }


def set_directory(cache_root: str, ident: Mapping[str, Any]) -> str:
  """`<cache>/distilled/<method>-ipc<n>-f<factor>-<identity digest>`."""
  name = f"{ident['method']}-ipc{ident['ipc']}-f{ident['factor']}-{cache.digest(ident)}"
  return os.path.join(cache_root, "distilled", name)


def _write_set(config: ml_collections.ConfigDict, directory: str, ident: dict,
               teacher: teacher_lib.Teacher, example: pipeline.CropExample, labels: np.ndarray,
               pool: np.ndarray, positions: np.ndarray, slots: np.ndarray, ce: np.ndarray) -> None:
  """Stitches the chosen crops into `directory` (PNGs + provenance), atomically."""
  patch_size = config.image_size // config.rded_factor
  partial = directory + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  provenance = {"identity": ident, "teacher": teacher.describe(), "images": []}
  per_class = config.images_per_class * config.rded_factor**2
  for start in range(0, len(positions), per_class):
    chunk = range(start, start + per_class)
    patches = np.stack([
        crops.resized_crop(
            example.raw_crop(int(positions[k]), int(slots[k]))[0], 0, 0, config.image_size,
            config.image_size, patch_size) for k in chunk
    ])
    label = int(labels[pool[positions[start]]])
    class_dir = os.path.join(partial, _SPLIT, f"class_{label:05d}")
    os.makedirs(class_dir, exist_ok=True)
    for j, image in enumerate(stitch(patches, config.images_per_class, config.rded_factor)):
      if image.shape[0] != config.image_size:  # size not divisible by factor
        image = crops.resized_crop(image, 0, 0, image.shape[0], image.shape[1], config.image_size)
      name = f"{j:05d}.png"
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
          os.path.join(class_dir, name))
      members = [start + j + r * config.images_per_class for r in range(config.rded_factor**2)]
      provenance["images"].append({
          "file": f"{_SPLIT}/class_{label:05d}/{name}",
          "label": label,
          "patches": [{
              "id": int(pool[positions[k]]),
              "slot": int(slots[k]),
              "teacher_ce": float(ce[positions[k], slots[k]])
          } for k in members]
      })
  cache.write_identity(partial, ident)
  with open(os.path.join(partial, PROVENANCE_FILE), "w") as f:
    json.dump(provenance, f, indent=1)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(partial, directory)


def is_built(directory: str) -> bool:
  """Whether `directory` holds a finished set (provenance.json is written last)."""
  return os.path.exists(os.path.join(directory, PROVENANCE_FILE))


def build(config: ml_collections.ConfigDict, directory: str, ident: Mapping[str, Any],
          data: run_data.RunData, teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh) -> str:
  """Writes the RDED/CA2D set `ident` describes into `directory` (whole train split as `data`)."""
  labels = np.asarray(data.train.labels())
  pool = candidate_pool(config, labels)
  ce, example = _crop_cross_entropy(config, data, pool, teacher, mesh)
  positions, slots = select_crops(labels[pool], ce, config.images_per_class, config.rded_factor)
  if jax.process_index() == 0:  # every process scored the crops; one writes the set
    _write_set(config, directory, dict(ident), teacher, example, labels, pool, positions, slots, ce)
  mesh_lib.sync_processes("distilled set written")
  metrics_log.log_line(f"{config.selection} set ({config.images_per_class} images per class, "
                       f"{config.rded_factor}×{config.rded_factor} patches) in {directory}")
  return directory


def source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config whose data is the whole train split the set's candidates are drawn from."""
  out = config.copy_and_resolve_references()
  out.selection, out.images_per_class = "random", 0
  return out


def training_config(config: ml_collections.ConfigDict, directory: str) -> ml_collections.ConfigDict:
  """The config of a run on a distilled set: train on the folder, test on the original."""
  out = config.copy_and_resolve_references()
  reference = sources.load_source(config.dataset, config.test_split, config.data_dir or None)
  out.test_dataset = config.test_dataset or config.dataset
  out.dataset = f"imagefolder:{directory}"
  out.train_split = _SPLIT
  out.selection, out.images_per_class, out.scores_file = "random", 0, ""
  out.normalization_mean = tuple(config.normalization_mean) or tuple(reference.info.mean)
  out.normalization_std = tuple(config.normalization_std) or tuple(reference.info.std)
  return out
