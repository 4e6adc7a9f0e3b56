"""`imagefolder:<path>`: class-per-directory image folders, as SRe²L/RDED/LPLD/HALD write them.

Layout: `<path>/<split>/<class_name>/<image>.{png,jpg,jpeg}` (extension case ignored; other files
and hidden entries ignored). If `<path>/<split>` does not exist but `<path>` itself holds class
directories with images, the whole folder is served as the requested split (a distilled set is
usually just `<path>/<class>/...`); its fingerprint still names the split asked for.

Labels: by default classes are the class directories sorted by name, label = position. Pass
`class_names` (e.g. ImageNet's synsets n01440764, ... from the reference source's
`info.class_names`) to use that ordering instead; every directory must then be one of them, and
classes without a directory simply have no examples. Or pass a `class_order` rule (class_order:
'index' for `new000`-style names, 'test_names', or an order file) with the test set's
`reference_classes`: the directories must then map one-to-one onto those classes, checked before
any image is read, and `info.class_names` are the directory names in label order. Ids: class by
class in label order, files sorted by name within a class; id = position.

Pixels: decoded with PIL to uint8 RGB (grayscale, palette and RGBA images converted), or kept as
one channel when every image is grayscale (mode L or 1). Folders whose images all share one size
are built once into the local TFDS cache (local_builder) and read back as ArrayRecord
(`cache=False` reads files directly instead); folders of mixed sizes are always read directly with
PIL, with image_shape (None, None, C).
Checks (DataSourceError): a split with no images, an empty class directory under `<path>/<split>`,
and a file PIL cannot open are refused when the folder is opened; a file that does not decode
(e.g. truncated) stops the cache build, which decodes every image, naming the file and keeping
nothing, and is named when read directly.
Fingerprint: sha256 over the file bytes, class names, relative paths, layout rule and split.
"""

from __future__ import annotations

import hashlib
import io
import operator
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hardlabel_jax.data import class_order as class_order_lib
from hardlabel_jax.data import local_builder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import SourceInfo

PREFIX = "imagefolder:"
EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("L", "1")
_BUILD_SPLIT = "data"  # TFDS split name inside the cache; user split names need not suit TFDS


def _image_files(directory: str) -> list[str]:
  """Image file names directly inside `directory`, sorted."""
  return sorted(f for f in os.listdir(directory) if not f.startswith(".")
                and f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(directory, f)))


def _subdirs(directory: str) -> list[str]:
  """Non-hidden subdirectories of `directory`, sorted by name."""
  return sorted(d for d in os.listdir(directory)
                if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def _class_dirs(directory: str) -> list[str]:
  """Subdirectories of `directory` that hold at least one image, sorted by name."""
  return [d for d in _subdirs(directory) if _image_files(os.path.join(directory, d))]


def _decode(path: str, channels: int) -> np.ndarray:
  """Decodes one file to uint8 [H, W, channels]; a file that does not decode is named."""
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for corrupt data
    raise DataSourceError(f"cannot decode image {path}: {type(e).__name__}: {e}; replace or "
                          "remove the file") from e
  return array[..., None] if channels == 1 else array


class _FolderImages:
  """Lazy sequence of decoded images, so building the cache never holds a whole folder in memory."""

  def __init__(self, paths: Sequence[str], channels: int):
    """Decodes `paths[i]` on access."""
    self._paths = list(paths)
    self._channels = channels

  def __len__(self) -> int:
    """Number of images."""
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    """Image `index` as uint8 [H, W, C]."""
    return _decode(self._paths[index], self._channels)


class FolderSource:
  """ImageSource reading an image folder's files directly with PIL (mixed sizes, or cache=False).

  Picklable: holds file paths, labels and info only.
  """

  def __init__(self, paths: Sequence[str], labels: np.ndarray, info: SourceInfo):
    """Serves `paths[i]` with label `labels[i]` as example id i."""
    self.info = info
    self._paths = list(paths)
    self._labels = np.asarray(labels, dtype=np.int64)
    self._labels.flags.writeable = False

  def __len__(self) -> int:
    """Number of examples."""
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Example `index` as {'image': uint8 [H,W,C], 'label': int, 'id': int}."""
    index = operator.index(index)
    if not 0 <= index < len(self._paths):
      raise IndexError(f"index {index} out of range for {len(self._paths)} examples")
    image = _decode(self._paths[index], self.info.image_shape[-1])
    return {"image": image, "label": int(self._labels[index]), "id": index}

  def labels(self) -> np.ndarray:
    """All labels, int64 [len], in id order (read-only)."""
    return self._labels

  def __repr__(self) -> str:
    """Name, split and size."""
    return f"FolderSource({self.info.name!r}, split={self.info.split!r}, n={len(self._paths)})"


def _split_dir(path: str, split: str) -> tuple[str, str]:
  """The directory of a split's class folders and the layout rule (part of the fingerprint)."""
  if os.path.isdir(os.path.join(path, split)):
    return os.path.join(path, split), "imagefolder v1: <path>/<split>/<class>/<file>"
  if os.path.isdir(path) and _class_dirs(path):
    return path, "imagefolder v1: whole <path>/<class>/<file> as the split"
  raise DataSourceError(
      f"{PREFIX}{path}: found neither {os.path.join(path, split)} nor class directories of "
      f"{'/'.join(EXTENSIONS)} images in {path}; expected <path>/<split>/<class>/<image> or "
      "<path>/<class>/<image>")


def split_directory(path: str, split: str) -> str:
  """The directory holding `split`'s class folders: `<path>/<split>`, else `<path>` itself."""
  return _split_dir(os.fspath(path), split)[0]


def example_files(path: str, split: str, class_names: Sequence[str]) -> list[str]:
  """The files of `split` in example-id order, for the split's `info.class_names` (its class
  directories in label order): class by class, names sorted within a class, as
  `load_imagefolder` numbers them."""
  split_dir = split_directory(path, split)
  return [
      os.path.join(split_dir, name, file_name) for name in class_names
      if os.path.isdir(os.path.join(split_dir, name))
      for file_name in _image_files(os.path.join(split_dir, name))
  ]


def load_imagefolder(
    path: str,
    split: str,
    class_names: Sequence[str] | None = None,
    data_dir: str | None = None,
    *,
    cache: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_order: str = "",
    reference_classes: Sequence[str] | None = None,
) -> local_builder.LocalSource | FolderSource:
  """`split` of the image folder at `path` (layout and label rules: module docstring).

  `mean`/`std` default to 0.5 per channel; pass the reference data set's (e.g. ImageNet's) so a
  distilled set is normalised like the data it was distilled from. `class_order` (a rule of
  class_order) maps the directories onto `reference_classes`, the test set's class names in label
  order (None: the folder is its own test set); it excludes `class_names`.
  """
  path = os.fspath(path)
  split_dir, rule = _split_dir(path, split)
  dirs = _class_dirs(split_dir)
  empty = sorted(set(_subdirs(split_dir)) - set(dirs))
  if not dirs:
    hint = f" (directories without images: {empty[:5]})" if empty else ""
    raise DataSourceError(f"{PREFIX}{path}: split {split!r} is empty: no class directories with "
                          f"{'/'.join(EXTENSIONS)} images in {split_dir}{hint}")
  if class_order:
    if class_names is not None:
      raise DataSourceError(f"{PREFIX}{path}: pass class_names or class_order, not both")
    try:
      class_names = class_order_lib.label_order(class_order, dirs, reference_classes)
    except DataSourceError as e:
      hint = f" (directories without images: {empty[:5]})" if empty else ""
      raise DataSourceError(f"{PREFIX}{path}: {e}{hint}") from e
  if class_names is None:
    class_names = dirs
  class_names = tuple(class_names)
  index_of = {name: i for i, name in enumerate(class_names)}
  unknown = [d for d in dirs if d not in index_of]
  if unknown:
    raise DataSourceError(
        f"{PREFIX}{path}: class directories {unknown[:5]} are not among the {len(class_names)} "
        "class_names given")
  if empty and split_dir != path:
    # In <path>/<split>/ every directory is a class, and an empty one is a class without images
    # (a failed copy or write). A whole-folder split may hold other directories; a class missing
    # there is caught by comparing with the test split's classes (run_data) or by class_order.
    raise DataSourceError(
        f"{PREFIX}{path}: split {split!r}: class directories {empty[:5]} in {split_dir} hold no "
        f"{'/'.join(EXTENSIONS)} images; add their images or remove them")

  files: list[str] = []
  labels: list[int] = []
  content = hashlib.sha256(rule.encode() + "\n".join(class_names).encode())
  sizes: set[tuple[int, int]] = set()
  all_gray = True
  for name in sorted(dirs, key=index_of.__getitem__):  # label order, so ids run class by class
    for file_name in _image_files(os.path.join(split_dir, name)):
      file_path = os.path.join(split_dir, name, file_name)
      with open(file_path, "rb") as f:
        raw = f.read()
      content.update(f"\n{name}/{file_name}\n{len(raw)}\n".encode() + raw)
      try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
          sizes.add(image.size)
          all_gray &= image.mode in _GRAY_MODES
      except (OSError, SyntaxError, ValueError) as e:
        raise DataSourceError(f"{PREFIX}{path}: cannot read image {file_path}: {e}") from e
      files.append(file_path)
      labels.append(index_of[name])
  key = content.hexdigest()[:16]
  content.update(split.encode())
  channels = 1 if all_gray else 3
  width = height = None  # mixed sizes
  if len(sizes) == 1:
    (width, height), = sizes
  if mean is None or std is None:
    mean, std = (0.5,) * channels, (0.5,) * channels
  if len(mean) != channels or len(std) != channels:
    raise DataSourceError(f"{PREFIX}{path}: mean/std need {channels} values, got {mean} / {std}")
  info = SourceInfo(
      name=PREFIX + path,
      split=split,
      num_classes=len(class_names),
      image_shape=(height, width, channels),
      fingerprint=content.hexdigest(),
      class_names=class_names,
      mean=tuple(float(m) for m in mean),
      std=tuple(float(s) for s in std),
  )
  label_array = np.asarray(labels, dtype=np.int64)
  if not cache or height is None:
    return FolderSource(files, label_array, info)
  data_path = local_builder.prepare_local(
      "imagefolder",
      key,
      lambda: {_BUILD_SPLIT: local_builder.LocalSplit(_FolderImages(files, channels), label_array)},
      image_shape=(height, width, channels),
      class_names=class_names,
      data_dir=data_dir,
  )
  return local_builder.LocalSource(data_path, _BUILD_SPLIT, info)
