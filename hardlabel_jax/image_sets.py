"""Image sets the library builds (RDED/CA2D distilled, SRe²L/CDA synthesised) as data sets.

A set is an image folder `<dir>/train/class_<label>/<i>.<ext>` (the layout the trainer reads as
`imagefolder:<dir>`) with `provenance.json` written last, then the directory renamed into place.
A run on a set trains on the folder and tests on the original test split, normalised as the data
the set was made from.
"""

from __future__ import annotations

import os
import shutil

import ml_collections
import numpy as np
from PIL import Image

from hardlabel_jax import config_schema
from hardlabel_jax import hald_hyper
from hardlabel_jax import run_data
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import sources
from hardlabel_jax.data import tensor_set

PROVENANCE_FILE = "provenance.json"
SPLIT = "train"
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}


def class_directory(label: int) -> str:
  """The folder of a class inside a set: `train/class_00007` (names sort in label order)."""
  return os.path.join(SPLIT, f"class_{label:05d}")


def save_image(image: np.ndarray, path: str) -> None:
  """Writes `[H, W, C]` uint8 as PNG or JPEG by the extension (JPEG: PIL's default quality 75)."""
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def is_built(directory: str) -> bool:
  """Whether `directory` holds a finished set (provenance.json is written last)."""
  return os.path.exists(os.path.join(directory, PROVENANCE_FILE))


def source_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config whose data is the whole train split a set is made from (the teacher's data)."""
  out = config.copy_and_resolve_references()
  out.selection, out.images_per_class = "random", 0
  return out


def folder_config(config: ml_collections.ConfigDict, directory: str,
                  class_order: str) -> ml_collections.ConfigDict:
  """The config of a run training on an image folder made from `config`'s data, tested on it.

  The folder is normalised as the data it was made from, and its classes are mapped onto the
  test split's by `class_order`; the pool is the whole folder. A directory holding `images.pt`
  is a tensor set (`tensors:<dir>`, data.tensor_set), read against the same test split; its
  labels are its own, so it takes no class_order.
  """
  out = config.copy_and_resolve_references()
  reference = sources.load_source(config.dataset, config.test_split, config.data_dir or None)
  out.test_dataset = config.test_dataset or config.dataset
  tensors = tensor_set.is_tensor_set(directory)
  out.dataset = f"{tensor_set.PREFIX if tensors else image_folder.PREFIX}{directory}"
  out.train_split = SPLIT  # <dir>/train/<class>, or <dir>/<class> when there is no train/
  out.class_order = class_order
  out.train_images_per_class = 0  # the folder is a split of its own (the cut made it, if any)
  out.selection, out.images_per_class, out.scores_file, out.subset_ids_file = "random", 0, "", ""
  if config.schedule == "hald" and not config.hald_eta:
    # hyper.yaml's η is keyed by the data set and IPC the folder was made from, which the folder's
    # run (another data set's name, a whole-folder pool) no longer says: fixed here.
    out.hald_eta, out.hald_eta_like = hald_hyper.resolved_eta(config), ""
  out.normalization_mean = tuple(config.normalization_mean) or tuple(reference.info.mean)
  out.normalization_std = tuple(config.normalization_std) or tuple(reference.info.std)
  return out


def training_config(config: ml_collections.ConfigDict, directory: str) -> ml_collections.ConfigDict:
  """The config of a run on the set in `directory`: train on the folder, test on the original."""
  out = folder_config(config, directory, "index")  # class_00007 holds label 7
  # The set's crop recipe is fixed here: 'auto' is RDED's own recipe on an RDED/CA2D set and the
  # generic crop on a synthesised one (config_schema.train_crop_recipe), but the selection this
  # run keeps ('random') would always resolve it to the generic crop.
  out.train_crop_recipe = config_schema.train_crop_recipe(config)
  out.teacher_bn_mode = config_schema.resolved_teacher_bn_mode(config)  # 'auto' reads selection
  if out.train_crop_recipe == "rded":
    out.rded_factor = run_data.rded_factor(config)
  return out


def export_official(directory: str, out: str) -> list[str]:
  """Copies a built set into the SRe²L/CDA/LPLD layout `<out>/new<c:03d>/class<c:03d>_id<i:03d>`.

  The files are copied byte for byte (the same pixels); read back with `class_order='index'`.
  """
  written = []
  split = os.path.join(directory, SPLIT)
  for class_name in sorted(os.listdir(split)):
    label = int(class_name.rsplit("_", 1)[1])
    target = os.path.join(out, f"new{label:03d}")
    os.makedirs(target, exist_ok=True)
    for index, name in enumerate(sorted(os.listdir(os.path.join(split, class_name)))):
      extension = os.path.splitext(name)[1]
      path = os.path.join(target, f"class{label:03d}_id{index:03d}{extension}")
      shutil.copyfile(os.path.join(split, class_name, name), path)
      written.append(path)
  return written
