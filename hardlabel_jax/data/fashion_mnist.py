"""`fashion_mnist_local`: Fashion-MNIST read from the original IDX files, no download needed.

The Debian package `dataset-fashion-mnist` installs the four gzipped IDX files at
/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz. Where to look:
`$HARDLABEL_FASHION_MNIST_DIR` if set (and only there), else `<data_dir>/fashion-mnist` when a
data_dir is given and holds the files, else the Debian path. Splits: 'train' (60,000) and 'test'
(10,000, the t10k files), in file order; example id = position in the file. Built once into the
local TFDS cache (local_builder); the fingerprint hashes the split's two .gz files as stored.
"""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

from hardlabel_jax.data import local_builder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import SourceInfo

NAME = "fashion_mnist_local"
ENV_DIR = "HARDLABEL_FASHION_MNIST_DIR"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")
IMAGE_SHAPE = (28, 28, 1)
MEAN = (0.2860,)  # the usual Fashion-MNIST training-set statistics
STD = (0.3530,)
# split name -> file prefix of the official release
FILE_PREFIX = {"train": "train", "test": "t10k"}
SPLIT_RULE = "fashion_mnist_local v1: official train / t10k files, file order"

_IDX_UBYTE_3D = 0x00000803  # IDX magic: unsigned byte data, 3 dimensions (images)
_IDX_UBYTE_1D = 0x00000801  # IDX magic: unsigned byte data, 1 dimension (labels)


def _files(directory: str, split: str) -> tuple[str, str]:
  """(images, labels) .gz paths of `split` in `directory`."""
  prefix = FILE_PREFIX[split]
  return (os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"),
          os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"))


def find_dir(data_dir: str | None = None) -> str:
  """The directory holding all four IDX files, or a DataSourceError saying how to get them."""
  if os.environ.get(ENV_DIR):
    candidates = [os.environ[ENV_DIR]]  # an explicit choice: never silently read another copy
  else:
    candidates = ([os.path.join(data_dir, "fashion-mnist")] if data_dir else []) + [DEBIAN_DIR]
  for directory in candidates:
    if all(os.path.isfile(p) for split in FILE_PREFIX for p in _files(directory, split)):
      return directory
  raise DataSourceError(
      f"{NAME}: Fashion-MNIST IDX files not found in {candidates}. Install them with "
      f"`sudo apt-get install dataset-fashion-mnist` (puts them in {DEBIAN_DIR}), or put "
      "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
      f"t10k-labels-idx1-ubyte.gz in a directory and set {ENV_DIR} to it (or put them in "
      "<data_dir>/fashion-mnist).")


def read_idx(raw_gz: bytes, magic: int) -> np.ndarray:
  """Parses a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
  data = gzip.decompress(raw_gz)
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise DataSourceError(f"IDX magic number {found:#010x}, expected {magic:#010x}")
  ndim = magic & 0xFF
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(dims)):
    raise DataSourceError(f"IDX payload of {len(data) - offset} bytes does not match dims {dims}")
  return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist_local(split: str, data_dir: str | None = None) -> local_builder.LocalSource:
  """The 'train' (60,000) or 'test' (10,000) split; built once into `data_dir`."""
  if split not in FILE_PREFIX:
    raise DataSourceError(f"{NAME} has splits {tuple(FILE_PREFIX)}, not {split!r}")
  directory = find_dir(data_dir)
  raw: dict[str, tuple[bytes, bytes]] = {}
  for s in FILE_PREFIX:
    images_path, labels_path = _files(directory, s)
    with open(images_path, "rb") as fi, open(labels_path, "rb") as fl:
      raw[s] = (fi.read(), fl.read())
  content = hashlib.sha256(SPLIT_RULE.encode())
  for s in FILE_PREFIX:
    content.update(raw[s][0] + raw[s][1])
  key = content.hexdigest()[:16]

  def make_splits() -> dict[str, local_builder.LocalSplit]:
    splits = {}
    for s, (images_gz, labels_gz) in raw.items():
      images = read_idx(images_gz, _IDX_UBYTE_3D)[..., None]  # [N,28,28] -> [N,28,28,1]
      labels = read_idx(labels_gz, _IDX_UBYTE_1D).astype(np.int64)
      if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
        raise DataSourceError(
            f"{NAME}/{s}: images {images.shape} do not match labels {labels.shape}")
      if labels.max() >= len(CLASS_NAMES):
        raise DataSourceError(f"{NAME}/{s}: label {labels.max()} out of range")
      splits[s] = local_builder.LocalSplit(images, labels)
    return splits

  data_path = local_builder.prepare_local(NAME, key, make_splits, image_shape=IMAGE_SHAPE,
                                          class_names=CLASS_NAMES, data_dir=data_dir)
  fingerprint = hashlib.sha256(raw[split][0] + raw[split][1])
  fingerprint.update(SPLIT_RULE.encode() + split.encode())
  info = SourceInfo(
      name=NAME,
      split=split,
      num_classes=len(CLASS_NAMES),
      image_shape=IMAGE_SHAPE,
      fingerprint=fingerprint.hexdigest(),
      class_names=CLASS_NAMES,
      mean=MEAN,
      std=STD,
  )
  return local_builder.LocalSource(data_path, split, info)
