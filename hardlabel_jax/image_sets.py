"""Image sets the library builds (RDED/CA2D distilled, SRe²L/CDA synthesised) as data sets.

A set is an image folder `<dir>/train/class_<label>/<i>.<ext>` (the layout the trainer reads as
`imagefolder:<dir>`) with `provenance.json` written last, then the directory renamed into place.
A run on a set trains on the folder and tests on the original test split, normalised as the data
the set was made from.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from PIL import Image

from hardlabel_jax import config_schema
from hardlabel_jax import run_data
from hardlabel_jax.data import sources

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


def training_config(config: ml_collections.ConfigDict, directory: str) -> ml_collections.ConfigDict:
  """The config of a run on the set in `directory`: train on the folder, test on the original."""
  out = config.copy_and_resolve_references()
  reference = sources.load_source(config.dataset, config.test_split, config.data_dir or None)
  out.test_dataset = config.test_dataset or config.dataset
  out.dataset = f"imagefolder:{directory}"
  out.train_split = SPLIT
  out.class_order = "index"  # class_00007 holds label 7; every test class must have a folder
  # The set's crop recipe is fixed here: 'auto' is RDED's own recipe on an RDED/CA2D set and the
  # generic crop on a synthesised one (config_schema.train_crop_recipe), but the selection this
  # run keeps ('random') would always resolve it to the generic crop.
  out.train_crop_recipe = config_schema.train_crop_recipe(config)
  if out.train_crop_recipe == "rded":
    out.rded_factor = run_data.rded_factor(config)
  out.selection, out.images_per_class, out.scores_file = "random", 0, ""
  out.normalization_mean = tuple(config.normalization_mean) or tuple(reference.info.mean)
  out.normalization_std = tuple(config.normalization_std) or tuple(reference.info.std)
  return out
