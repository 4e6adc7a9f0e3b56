"""RDED and CA2D distilled sets (DESIGN.md §7): teacher-scored crops stitched into grids.

RDED (LINs-lab/RDED synthesize/main.py, synthesize/utils.py): per class `mipc` random real
images; 5 RandomResizedCrops each (scale 0.08–1, ratio 1) made at `size/factor`, scored by the
teacher's cross-entropy on the crop normalised and zero-padded, centred, to `size`; each image keeps
its lowest-CE crop; per class the `ipc·factor²` lowest-CE crops are stitched into `ipc` images of
`factor×factor` patches (patches j, j+ipc, j+2·ipc, … of class-sorted crops fill image j in
row-major order). The factor is `run_data.rded_factor`: 1 up to 64 px, as the official CIFAR and
Tiny-ImageNet scripts (one crop per image, no stitching), 2 above, as its ImageNet scripts.
CA2D (Hard Truths, DESIGN.md §7; no official code): RDED's algorithm with the random candidates
replaced by the top-mipc images of each class by CAD (`ca2d_pool='cad_top_mipc'`, the paper: the
ranking and direction `selection='cad_prune'` uses, from the same score file), then RDED's own
per-image best crop, class-wide lowest-CE filter and stitching. `ca2d_pool='cad_selection'` takes
exactly CAD-Prune's `ipc·factor²` images per class, each with its own best crop (no CE filter).
The set is written as an image folder (`<dir>/train/<class>/<i>.png`, the format of the PyTorch
RDED code) with `provenance.json` (the candidate pool and every patch's source), so the trainer
reads it like any data set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import faults
from hardlabel_jax import image_sets
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import pipeline
from hardlabel_jax.data.source import ImageSource

METHODS = config_schema.DISTILLED_SELECTIONS  # ("rded", "ca2d")


def candidates_per_class(config: ml_collections.ConfigDict, smallest_class: int) -> int:
  """mipc, the real images per class crops are drawn from: the config's, or min(300, smallest)."""
  return config.rded_candidates_per_class or min(300, smallest_class)


def ca2d_candidates_per_class(config: ml_collections.ConfigDict, train: ImageSource) -> int:
  """CA2D's candidates per class, by `ca2d_pool`: mipc capped at the smallest scored class, or
  `ipc·factor²` ('cad_selection')."""
  if config.images_per_class <= 0:
    raise ValueError("config.images_per_class: selection 'ca2d' needs a positive number of "
                     "images per class")
  if config.ca2d_pool == "cad_selection":
    return config.images_per_class * run_data.rded_factor(config)**2
  scored = selection.load_scores(config.scores_file, expected_fingerprint=train.info.fingerprint)
  _, counts = np.unique(np.asarray(train.labels())[scored.ids], return_counts=True)
  smallest = int(counts.min())
  return min(candidates_per_class(config, smallest), smallest)


def cad_prune_config(config: ml_collections.ConfigDict,
                     train: ImageSource) -> ml_collections.ConfigDict:
  """The `cad_prune` run whose training pool is CA2D's candidates (`ca2d_candidates_per_class`).

  Same score file and direction as `selection='cad_prune'`. 'cad_top_mipc' (the paper, DESIGN.md
  §7): the top-mipc images of each class by CAD, RDED's pool for its per-image best crop and
  class-wide CE filter. 'cad_selection': CAD-Prune's `ipc·factor²` images per class, one per patch
  (at factor 1 exactly the images `selection='cad_prune'` with the same `images_per_class` trains
  on).
  """
  out = config.copy_and_resolve_references()
  out.selection = "cad_prune"
  out.images_per_class = ca2d_candidates_per_class(config, train)
  return out


def candidate_pool(config: ml_collections.ConfigDict, train: ImageSource) -> np.ndarray:
  """The real images crops are drawn from, sorted: `mipc` random per class (RDED) or CA2D's by CAD.
  """
  if config.selection == "ca2d":
    return run_data.scored_pool(cad_prune_config(config, train), train)
  labels = np.asarray(train.labels())
  mipc = candidates_per_class(config, int(np.bincount(labels).min()))
  return selection.class_balanced_random(labels, mipc, config.subset_seed)


def pool_record(config: ml_collections.ConfigDict, train: ImageSource,
                pool: np.ndarray) -> dict[str, Any]:
  """provenance's `candidate_pool`: its rule, images per class, and each class's candidate ids.

  CA2D's in CAD order (the ranking CAD-Prune keeps first: highest CAD for 'hardest'; ties → the
  score file's earlier example), RDED's random ones by id.
  """
  labels = np.asarray(train.labels())
  record: dict[str, Any] = {"rule": "random"}
  ordered = pool
  if config.selection == "ca2d":
    scored = selection.load_scores(config.scores_file, expected_fingerprint=train.info.fingerprint)
    position = np.full(len(labels), -1, np.int64)
    position[scored.ids] = np.arange(len(scored.ids))
    # The score run_data.scored_pool ranks by: the CAD of the trajectory `cad_signal` names.
    cad = scored.scores[selection.CAD_SCORES[config.cad_signal]][position[pool]]
    key = -cad if config.cad_direction == "hardest" else cad
    ordered = pool[np.lexsort((position[pool], key))]
    record = {"rule": config.ca2d_pool, "cad_direction": config.cad_direction}
  classes, counts = np.unique(labels[pool], return_counts=True)
  record["mipc"] = int(counts.max())
  record["classes"] = [{
      "label": int(c),
      "ids": [int(i) for i in ordered[labels[ordered] == c]]
  } for c in classes]
  return record


def select_crops(pool_labels: np.ndarray, crop_ce: np.ndarray, images_per_class: int,
                 factor: int) -> tuple[np.ndarray, np.ndarray]:
  """Per class, the `ipc·factor²` images whose best crop has the lowest CE, and those slots.

  `crop_ce` is `[pool, crops]`; returns pool positions (class-major, ascending CE within a class)
  and the chosen slot of each. RDED's and CA2D's (top-mipc by CAD) pools keep the class-wide
  lowest (LINs-lab/RDED synthesize/main.py); a 'cad_selection' pool holds exactly `ipc·factor²`
  images per class, so every image is kept and the CE only orders the patches (stitching order).
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


def pad_center(image: np.ndarray, size: int) -> np.ndarray:
  """`[h, w, C]` → `[size, size, C]` with zeros around, the odd pixel below and right."""
  top, left = (size - image.shape[0]) // 2, (size - image.shape[1]) // 2
  out = np.zeros((size, size, image.shape[-1]), image.dtype)
  out[top:top + image.shape[0], left:left + image.shape[1]] = image
  return out


@dataclasses.dataclass(frozen=True)
class PaddedNormalizer:
  """RDED's scoring view of a patch: normalised, then zero-padded, centred, to the full size.

  As `selector` in LINs-lab/RDED synthesize/utils.py: the crops are normalised at `size/factor`
  and `pad` adds zeros, so the border is the mean colour, not black.
  """

  normalizer: pipeline.Normalizer
  size: int

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return pad_center(self.normalizer(image), self.size)


def scoring_spec(config: ml_collections.ConfigDict) -> crops.CropSpec:
  """RDED's scoring crops: RandomResizedCrop(size // factor, ratio (1, 1), scale 0.08–1)."""
  return crops.CropSpec(output_size=config.image_size // run_data.rded_factor(config),
                        scale=(0.08, 1.0), ratio=(1.0, 1.0), flip=False, resize=config.crop_resize)


def scoring_example(config: ml_collections.ConfigDict, train: ImageSource, pool: np.ndarray,
                    normalizer: pipeline.Normalizer,
                    on_device: bool = False) -> pipeline.CropExample:
  """(pool position, slot) → RDED's crop at `size/factor` and its padded, normalised view.

  `MultiRandomCrop` in LINs-lab/RDED synthesize/utils.py: RandomResizedCrop(size // factor, ratio
  (1, 1), default scale 0.08–1, bilinear, antialiased) of the image; its `raw_crop` is the patch
  that is stitched, pure in (crop_seed, id, slot).
  """
  return pipeline.CropExample(train, pool, scoring_spec(config), config.crop_seed,
                              PaddedNormalizer(normalizer, config.image_size), on_device=on_device)


def scoring_device(config: ml_collections.ConfigDict, data: run_data.RunData, pool: np.ndarray,
                   mesh: jax.sharding.Mesh) -> device_pool.DeviceCrops | None:
  """The candidate pool on the devices with RDED's padded scoring view, when `crop_backend`
  puts it there (the candidates, not the run's pool, are what is cropped)."""
  backend = device_pool.choose(config.crop_backend, config.device_pool_budget_mb, data.train, pool,
                               jax.local_devices())
  if backend != device_pool.DEVICE:
    return None
  return device_pool.place(data.train, pool, scoring_spec(config), data.normalizer.mean,
                           data.normalizer.std, mesh, pad_to=config.image_size)


def _crop_cross_entropy(config, data: run_data.RunData, pool: np.ndarray,
                        teacher: teacher_lib.Teacher, mesh,
                        device: device_pool.DeviceCrops | None) -> tuple[np.ndarray, Any]:
  """Teacher CE of `rded_crops_per_image` crops of every candidate, `[pool, crops]`."""
  example = scoring_example(config, data.train, pool, data.normalizer, device is not None)
  slots = config.rded_crops_per_image
  predict = inference.log_probs_fn(teacher.model, mesh, 1.0)
  ce = np.zeros((len(pool), slots), np.float32)
  for out in inference.crop_outputs(example, slots=slots, first_row=0, num_rows=len(pool) * slots,
                                    predict=predict, variables=teacher.variables, mesh=mesh,
                                    batch_size=config.eval_batch_size,
                                    loading=pipeline.LoaderOptions.from_config(config),
                                    device=device):
    position, slot = np.divmod(out["row"], slots)
    ce[position, slot] = -out["log_probs"][np.arange(len(position)), out["label"]]
  return ce, example


def chosen_patches(example: pipeline.CropExample, positions: np.ndarray, slots: np.ndarray,
                   device: device_pool.DeviceCrops | None, mesh: jax.sharding.Mesh) -> np.ndarray:
  """The uint8 pixels of the chosen crops, `[n, size/factor, size/factor, C]`: exactly those the
  teacher scored (made on the devices when the scoring crops were)."""
  if device is None:
    return np.stack(
        [example.raw_crop(int(p), int(s))[0] for p, s in zip(positions, slots, strict=True)])
  padded = mesh_lib.padded_batch(len(positions), mesh)
  rows = [
      example.crop_fields(int(positions[k % len(positions)]), int(slots[k % len(positions)]))
      for k in range(padded)
  ]
  fields = {k: np.stack([row[k] for row in rows]) for k in device_pool.KERNEL_FIELDS + ("cut_box",)}
  return device.uint8_crops(mesh_lib.shard_host_arrays(fields, mesh))[:len(positions)]


def identity(config: ml_collections.ConfigDict, fingerprint: str, teacher_digest: str,
             scores: str) -> dict[str, Any]:
  """Everything that defines a distilled set's content (`scores`: the score file's identity)."""
  # Patches cropped on the devices differ from PIL's by rounding: their sets get their own
  # directory (host sets keep the digests they had before device crops existed).
  resampler = ({
      "crop_resampler": device_pool.DEVICE_RESAMPLER
  } if device_pool.planned_backend(config.crop_backend) == device_pool.DEVICE else {})
  return {
      **resampler, "method": config.selection,
      "fingerprint": fingerprint,
      "teacher": teacher_digest,
      "ipc": config.images_per_class,
      "factor": run_data.rded_factor(config),
      "mipc": config.rded_candidates_per_class,
      "crops": config.rded_crops_per_image,
      **({} if config.crop_resize == crops.PIL_BOX else {
             "crop_resize": config.crop_resize
         }), "crop_seed": config.crop_seed,
      "subset_seed": config.subset_seed,
      "image_size": config.image_size,
      "scores": scores,
      "cad_direction": config.cad_direction if config.selection == "ca2d" else "",
      "cad_signal": config.cad_signal if config.selection == "ca2d" else "",
      "ca2d_pool": config.ca2d_pool if config.selection == "ca2d" else "",
      "normalization": [list(config.normalization_mean),
                        list(config.normalization_std)]
  }


def set_directory(cache_root: str, ident: Mapping[str, Any]) -> str:
  """`<cache>/distilled/<method>-ipc<n>-f<factor>-<identity digest>`."""
  name = f"{ident['method']}-ipc{ident['ipc']}-f{ident['factor']}-{cache.digest(ident)}"
  return os.path.join(cache_root, "distilled", name)


def _write_set(config: ml_collections.ConfigDict, directory: str, ident: dict,
               teacher: teacher_lib.Teacher, patches: np.ndarray, labels: np.ndarray,
               pool: np.ndarray, positions: np.ndarray, slots: np.ndarray, ce: np.ndarray,
               candidates: dict[str, Any]) -> None:
  """Stitches the chosen crops into `directory` (PNGs + provenance), atomically."""
  factor = run_data.rded_factor(config)
  partial = directory + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  provenance = {
      "identity": ident,
      "teacher": teacher.describe(),
      "candidate_pool": candidates,
      "images": []
  }
  per_class = config.images_per_class * factor**2
  for start in range(0, len(positions), per_class):
    # The scored crops themselves, already at size/factor (the official code stitches those).
    label = int(labels[pool[positions[start]]])
    class_dir = os.path.join(partial, image_sets.class_directory(label))
    os.makedirs(class_dir, exist_ok=True)
    for j, image in enumerate(
        stitch(patches[start:start + per_class], config.images_per_class, factor)):
      if image.shape[0] != config.image_size:  # size not divisible by factor
        image = crops.resized_crop(image, 0, 0, image.shape[0], image.shape[1], config.image_size)
      name = f"{j:05d}.png"
      image_sets.save_image(image, os.path.join(class_dir, name))
      faults.point("set_image_write")
      members = [start + j + r * config.images_per_class for r in range(factor**2)]
      provenance["images"].append({
          "file": os.path.join(image_sets.class_directory(label), name),
          "label": label,
          "patches": [{
              "id": int(pool[positions[k]]),
              "slot": int(slots[k]),
              "teacher_ce": float(ce[positions[k], slots[k]])
          } for k in members]
      })
  cache.write_identity(partial, ident)
  with open(os.path.join(partial, image_sets.PROVENANCE_FILE), "w") as f:
    json.dump(provenance, f, indent=1)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(partial, directory)


def build(config: ml_collections.ConfigDict, directory: str, ident: Mapping[str, Any],
          data: run_data.RunData, teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh) -> str:
  """Writes the RDED/CA2D set `ident` describes into `directory` (whole train split as `data`)."""
  labels = np.asarray(data.train.labels())
  pool = candidate_pool(config, data.train)
  device = scoring_device(config, data, pool, mesh)
  ce, example = _crop_cross_entropy(config, data, pool, teacher, mesh, device)
  factor = run_data.rded_factor(config)
  positions, slots = select_crops(labels[pool], ce, config.images_per_class, factor)
  patches = chosen_patches(example, positions, slots, device, mesh)  # on every process
  if jax.process_index() == 0:  # every process scored the crops; one writes the set
    _write_set(config, directory, dict(ident), teacher, patches, labels, pool, positions, slots, ce,
               pool_record(config, data.train, pool))
  mesh_lib.sync_processes("distilled set written")
  metrics_log.log_line(f"{config.selection} set ({config.images_per_class} images per class, "
                       f"{factor}×{factor} patches) in {directory}")
  return directory
