"""`tiny_imagenet:<root>`: Tiny-ImageNet in the layout it is distributed in, no renaming needed.

The layout of `tiny-imagenet-200.zip`:

  <root>/wnids.txt                    the 200 WordNet ids, one a line (not in sorted order)
  <root>/words.txt                    wnid -> words (not read: the class names are the wnids)
  <root>/train/<wnid>/images/*.JPEG   500 images per class (train/<wnid>/*_boxes.txt ignored)
  <root>/val/images/*.JPEG            10,000 images, labelled by
  <root>/val/val_annotations.txt      `<file> <wnid> <x0> <y0> <x1> <y1>` per line (tabs)
  <root>/test/images/*.JPEG           unlabelled, not served

Splits: 'train', and 'test' (or 'val', the same split): the val images with the labels of
val_annotations.txt.

Class order (`class_order`): '' the wnids sorted, label = position. That is the order of
torchvision's `ImageFolder(<root>/train)`, and of RDED's renamed folders (LINs-lab/RDED
prepare/tinyimagenet.md: 00000 = n01443537, ..., 00032 = n02124075, ..., 00199 = n12267677, the
sorted wnids), so teachers trained by RDED, SRe²L or DD-Ranking (ImageFolder on the renamed or the
original train folders) predict these labels. The line order of wnids.txt is another order
(its first line, n02124075, is class 32 there); pass `class_order=<root>/wnids.txt` (any file of
wnids in label order) to use it. Either way wnids.txt must list exactly the train folders.

Ids: train class by class in label order, files sorted by name within a class; val files sorted
by name. Pixels: RGB uint8 (the release's grayscale JPEGs converted, as torchvision's loader
does); mean/std ImageNet's, as RDED and DD-Ranking normalise Tiny-ImageNet. Each split is built
once into the local cache (local_builder); its fingerprint hashes the files' bytes, names and
labels, the class order and the split.

Checks, each a DataSourceError raised before anything is built: wnids.txt missing, empty or
repeating a wnid; train folders and wnids.txt disagreeing; a class without images; a val image
missing from val_annotations.txt, an annotation naming an unknown wnid or a missing file; images
of more than one size; a file that does not decode (named; the build keeps nothing).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from hardlabel_jax.data import class_order as class_order_lib
from hardlabel_jax.data import local_builder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import SourceInfo

PREFIX = "tiny_imagenet:"
WNIDS_FILE = "wnids.txt"
VAL_ANNOTATIONS = os.path.join("val", "val_annotations.txt")
TEST_SPLITS = ("test", "val")  # both name the labelled val images
SPLITS = ("train",) + TEST_SPLITS
EXTENSIONS = (".jpeg", ".jpg", ".png")
MEAN = (0.485, 0.456, 0.406)  # ImageNet's, as RDED's and DD-Ranking's Tiny-ImageNet transforms
STD = (0.229, 0.224, 0.225)
SPLIT_RULE = "tiny_imagenet v1: train/<wnid>/images, val/images + val_annotations.txt"
_BUILD_SPLIT = "data"
_SHOWN = 5


def _shown(items: Sequence[str]) -> str:
  items = list(items)
  more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
  return ", ".join(repr(i) for i in items[:_SHOWN]) + more


def _images_in(directory: str) -> list[str]:
  """Image file names directly inside `directory`, sorted."""
  return sorted(f for f in os.listdir(directory) if not f.startswith(".")
                and f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(directory, f)))


def read_wnids(root: str) -> tuple[str, ...]:
  """wnids.txt's ids in line order; missing, empty or repeated ids are an error."""
  path = os.path.join(root, WNIDS_FILE)
  if not os.path.isfile(path):
    raise DataSourceError(f"{PREFIX}{root}: {path} not found; point tiny_imagenet: at the "
                          "tiny-imagenet-200 folder (wnids.txt, train/, val/)")
  with open(path, encoding="utf-8") as f:
    wnids = tuple(line.strip() for line in f if line.strip())
  if not wnids:
    raise DataSourceError(f"{PREFIX}{root}: {path} lists no wnids")
  repeated = [w for w, count in collections.Counter(wnids).items() if count > 1]
  if repeated:
    raise DataSourceError(f"{PREFIX}{root}: {path} lists {_shown(repeated)} more than once")
  return wnids


def class_names(root: str, class_order: str = "") -> tuple[str, ...]:
  """The wnids in label order (module docstring), checked against the train folders."""
  wnids = read_wnids(root)
  train = os.path.join(root, "train")
  if not os.path.isdir(train):
    raise DataSourceError(f"{PREFIX}{root}: no train/ folder in {root}")
  folders = sorted(d for d in os.listdir(train)
                   if not d.startswith(".") and os.path.isdir(os.path.join(train, d)))
  present = frozenset(folders)
  missing = [w for w in wnids if w not in present]
  extra = sorted(present - frozenset(wnids))
  if missing or extra:
    parts = ([f"wnids {_shown(missing)} have no train/<wnid> folder"] if missing else
             []) + ([f"train folders {_shown(extra)} are not in {WNIDS_FILE}"] if extra else [])
    raise DataSourceError(f"{PREFIX}{root}: train/ and {WNIDS_FILE} disagree: " + "; ".join(parts))
  try:
    return class_order_lib.label_order(class_order, folders, None)
  except DataSourceError as e:
    raise DataSourceError(f"{PREFIX}{root}: {e}") from e


def _train_files(root: str, names: Sequence[str]) -> tuple[list[str], list[int]]:
  files, labels = [], []
  for label, wnid in enumerate(names):
    directory = os.path.join(root, "train", wnid, "images")
    found = _images_in(directory) if os.path.isdir(directory) else []
    if not found:
      raise DataSourceError(f"{PREFIX}{root}: class {wnid} has no images in {directory}")
    files += [os.path.join(directory, f) for f in found]
    labels += [label] * len(found)
  return files, labels


def _read_annotations(root: str, known: set[str]) -> dict[str, str]:
  """val_annotations.txt as file name -> wnid; an unknown wnid or a repeated file is an error."""
  path = os.path.join(root, VAL_ANNOTATIONS)
  if not os.path.isfile(path):
    raise DataSourceError(f"{PREFIX}{root}: {path} not found; the val images are labelled by it")
  out: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) < 2:
        raise DataSourceError(f"{path} line {number}: expected '<file> <wnid> ...', got "
                              f"{line.strip()!r}")
      name, wnid = fields[0], fields[1]
      if wnid not in known:
        raise DataSourceError(f"{path} line {number}: {name} is annotated with {wnid!r}, which is "
                              f"not in {WNIDS_FILE}")
      if name in out:
        raise DataSourceError(f"{path} line {number}: {name} is annotated twice")
      out[name] = wnid
  return out


def _val_files(root: str, names: Sequence[str]) -> tuple[list[str], list[int]]:
  directory = os.path.join(root, "val", "images")
  if not os.path.isdir(directory):
    raise DataSourceError(f"{PREFIX}{root}: no val/images/ folder in {root}")
  annotations = _read_annotations(root, set(names))
  found = _images_in(directory)
  unannotated = [f for f in found if f not in annotations]
  if unannotated:
    raise DataSourceError(f"{PREFIX}{root}: val images {_shown(unannotated)} are not in "
                          f"{VAL_ANNOTATIONS}, so their labels are unknown")
  absent = sorted(set(annotations) - set(found))
  if absent:
    raise DataSourceError(f"{PREFIX}{root}: {VAL_ANNOTATIONS} annotates {_shown(absent)}, which "
                          f"are not in {directory}")
  if not found:
    raise DataSourceError(f"{PREFIX}{root}: {directory} holds no images")
  label_of = {wnid: i for i, wnid in enumerate(names)}
  return [os.path.join(directory, f) for f in found], [label_of[annotations[f]] for f in found]


def _decode(path: str) -> np.ndarray:
  """One file as RGB uint8 [H, W, 3]; a file that does not decode is named."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt data
    raise DataSourceError(f"cannot decode image {path}: {type(e).__name__}: {e}; replace or "
                          "remove the file") from e


class _Images:
  """Lazy sequence of decoded images, so the build never holds a whole split in memory."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    return _decode(self._paths[index])


def _file_signature(paths: Sequence[str]) -> str:
  """A digest of the files' names, sizes and modification times: the key of the content hash."""
  digest = hashlib.sha256()
  for path in paths:
    stat = os.stat(path)
    digest.update(f"{path}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _content(paths: tuple[str, ...], labels: tuple[int, ...], names: tuple[str, ...],
             signature: str) -> tuple[str, tuple[int, int]]:
  """sha256 over the files' bytes, relative names, labels and the class order, and their one
  image size; hashed once per process while the files stay the same (`signature`)."""
  del signature  # part of the cache key only
  content = hashlib.sha256(SPLIT_RULE.encode() + "\n".join(names).encode())
  sizes: dict[tuple[int, int], str] = {}
  for path, label in zip(paths, labels, strict=True):
    with open(path, "rb") as f:
      raw = f.read()
    content.update(f"\n{os.path.basename(path)}\n{label}\n{len(raw)}\n".encode() + raw)
    try:
      with Image.open(io.BytesIO(raw)) as image:  # reads the header only
        sizes.setdefault(image.size, path)
    except (OSError, SyntaxError, ValueError) as e:
      raise DataSourceError(f"cannot read image {path}: {e}") from e
  if len(sizes) > 1:
    shown = "; ".join(f"{w}x{h} ({p})" for (w, h), p in list(sizes.items())[:3])
    raise DataSourceError(f"{PREFIX}: images of more than one size: {shown}; Tiny-ImageNet's are "
                          "all 64x64")
  (size,) = sizes
  return content.hexdigest(), size


def load_tiny_imagenet(root: str, split: str, data_dir: str | None = None, *, class_order: str = "",
                       reference_classes: Sequence[str] | None = None) -> local_builder.LocalSource:
  """`split` ('train', or 'test' = 'val') of the Tiny-ImageNet folder `root` (module docstring).

  `reference_classes` (the test split's classes, when a run maps the train split onto them) must
  be this folder's own classes in the same order.
  """
  root = os.path.abspath(root)
  if split not in SPLITS:
    raise DataSourceError(f"{PREFIX}{root} has splits 'train' and 'test' (the val images with "
                          f"{VAL_ANNOTATIONS}; the release's test/ images have no labels), not "
                          f"{split!r}")
  names = class_names(root, class_order)
  if reference_classes is not None and tuple(reference_classes) != names:
    raise DataSourceError(f"{PREFIX}{root}: the test split's classes are not this folder's in "
                          f"this order (class_order={class_order!r}); train and test a "
                          "Tiny-ImageNet run on the same folder and class order")
  canonical = "train" if split == "train" else "test"
  files, labels = (_train_files if canonical == "train" else _val_files)(root, names)
  digest, (width, height) = _content(tuple(files), tuple(labels), names, _file_signature(files))
  image_shape = (height, width, 3)
  label_array = np.asarray(labels, dtype=np.int64)
  data_path = local_builder.prepare_local(
      "tiny_imagenet",
      hashlib.sha256((digest + canonical).encode()).hexdigest()[:16],
      lambda: {_BUILD_SPLIT: local_builder.LocalSplit(_Images(files), label_array)},
      image_shape=image_shape,
      class_names=names,
      data_dir=data_dir,
  )
  info = SourceInfo(
      name=PREFIX + root,
      split=canonical,
      num_classes=len(names),
      image_shape=image_shape,
      fingerprint=hashlib.sha256((digest + canonical).encode()).hexdigest(),
      class_names=names,
      mean=MEAN,
      std=STD,
  )
  return local_builder.LocalSource(data_path, _BUILD_SPLIT, info)
