"""`tensors:<dir>`: a set saved as tensors in DD-Ranking's layout (images.pt, labels.pt, lr.pt).

Trajectory-matching methods (MTT, DATM, ...) and DD-Ranking's demos keep a distilled set as
tensors (NUS-HPC-AI-Lab/DD-Ranking demo_soft.py, demo_hard.py: `torch.load(<dir>/images.pt,
map_location='cpu')`, the same for `labels.pt` and `lr.pt`). The files, read with PyTorch (the
`torch` extra) as `torch.load(..., map_location='cpu', weights_only=True)`:

  images.pt  [n, C, H, W], C = 1 or 3. Float tensors are what DD-Ranking's `TensorDataset` feeds
             the model as they are: images normalised with the data set's mean and std
             (ddranking/utils/data.py `get_dataset`: `ToTensor()` then `Normalize(mean, std)`).
             uint8 tensors are pixels.
  labels.pt  optional. An integer tensor [n]: hard labels. A float tensor [n, C]: soft labels,
             stored as logits (ddranking/loss/kl.py and sce.py take `softmax(labels / T)`).
  lr.pt      optional. One positive number: a learned learning rate (DATM's `syn_lr`), which
             DD-Ranking's `compute_metrics(syn_lr=...)` uses for the set's soft-label training.

Hard labels: labels.pt's integers. Without labels.pt, or with soft labels under
`hard_labels='class_major'`, DD-Ranking's rule (ddranking/metrics/soft_label.py `compute_metrics`:
`hard_labels = [0] * ipc + [1] * ipc + ...`): image i belongs to class i // (n / C), so n must be a
multiple of the class count. `hard_labels='argmax'` takes the argmax of each soft label instead.
How often the argmax disagrees with the hard label is reported either way.

Pixels (`pixel_scale`): a float value x becomes `round(255 (x std_c + mean_c))` ('normalized',
the inverse of ToTensor + Normalize, exact for a normalised uint8 image) or `round(255 x)`
('unit', a set saved after ToTensor alone), clipped to 0..255. Every conversion reports how many
values it clipped and by how much, since then the pixels trained on are no longer the set's: a
large share means the statistics are not the ones the set was normalised with (DD-Ranking's
CIFAR-100 uses CIFAR-10's), or the set is ZCA-whitened, which no per-channel statistics undo.

The set is one split, 'train', read against the data set it was made from (`Reading`: its class
count, channels and statistics), whose test split tests it. Ids are positions in the tensors.
Files are read once per process (keyed by their size and modification time).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import io
import math
import os
from typing import Any

import numpy as np

from hardlabel_jax.data import image_folder
from hardlabel_jax.data.array_source import ArraySource
from hardlabel_jax.data.errors import DataSourceError

PREFIX = "tensors:"
IMAGES_FILE = "images.pt"
LABELS_FILE = "labels.pt"
LR_FILE = "lr.pt"
SPLIT = "train"
# How float images map to pixels (module docstring).
NORMALIZED, UNIT = "normalized", "unit"
PIXEL_SCALES = (NORMALIZED, UNIT)
# The hard label of a soft-labelled image (module docstring).
CLASS_MAJOR, ARGMAX = "class_major", "argmax"
HARD_LABEL_RULES = (CLASS_MAJOR, ARGMAX)
_CHANNELS = (1, 3)


def is_tensor_set(path: str) -> bool:
  """Whether `path` is a directory holding `images.pt`."""
  return os.path.isfile(os.path.join(path, IMAGES_FILE))


def names_tensor_set(name: str) -> bool:
  """Whether a data set name or set path is a tensor set: `tensors:<dir>`, or a path (bare or
  'imagefolder:<path>', as `study_external_set` takes one) to a directory holding images.pt."""
  if name.startswith(PREFIX):
    return True
  return bool(name) and is_tensor_set(name.removeprefix(image_folder.PREFIX))


def set_path(name: str) -> str:
  """The directory of a `tensors:<dir>` name, absolute."""
  return os.path.abspath(name[len(PREFIX):])


@dataclasses.dataclass(frozen=True)
class Reading:
  """How a tensor set is read: the data set it was made from, and the conversion rules."""

  num_classes: int
  channels: int
  mean: tuple[float, ...]  # per channel, on the 0..1 scale: what 'normalized' undoes
  std: tuple[float, ...]
  pixel_scale: str = NORMALIZED
  hard_labels: str = CLASS_MAJOR

  def __post_init__(self):
    # Tuples of floats: a Reading keys the per-process cache, so it must hash.
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if self.pixel_scale not in PIXEL_SCALES:
      raise DataSourceError(f"pixel_scale {self.pixel_scale!r} is not one of {PIXEL_SCALES}")
    if self.hard_labels not in HARD_LABEL_RULES:
      raise DataSourceError(f"hard_labels {self.hard_labels!r} is not one of {HARD_LABEL_RULES}")
    if len(self.mean) != self.channels or len(self.std) != self.channels:
      raise DataSourceError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")


@dataclasses.dataclass(frozen=True)
class PixelConversion:
  """What turning images.pt into uint8 pixels did."""

  rule: str  # 'normalized', 'unit' or 'uint8' (pixels kept as they are)
  dtype: str  # images.pt's dtype
  values: int  # pixel values converted
  below: int  # values that rounded below 0, set to 0
  above: int  # values that rounded above 255, set to 255
  largest_excess: float  # the farthest a value lay outside 0..255, in pixel units (0: none)

  @property
  def clipped(self) -> int:
    return self.below + self.above

  def describe(self, stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> str:
    """One line: the rule, and how many values were clipped."""
    if self.rule == "uint8":
      return f"{self.values:,} uint8 pixel values kept as they are"
    how = (f"de-normalised with mean {stats[0]} std {stats[1]} (pixel_scale='normalized')"
           if self.rule == NORMALIZED and stats else f"scaled by 255 (pixel_scale='{self.rule}')")
    share = 100.0 * self.clipped / max(self.values, 1)
    line = (f"{self.values:,} {self.dtype} values {how}, rounded to uint8: {self.clipped:,} "
            f"({share:.3g}%) clipped ({self.below:,} below 0, {self.above:,} above 255")
    return line + (f", up to {self.largest_excess:.3g} pixel levels outside)"
                   if self.clipped else ")")


@dataclasses.dataclass(frozen=True)
class StoredLabels:
  """labels.pt as stored: hard labels int64 [n], or soft labels (logits) float32 [n, C]."""

  hard: np.ndarray | None
  soft: np.ndarray | None
  sha256: str


@dataclasses.dataclass(frozen=True, eq=False)  # compared (and cached) by identity: it holds arrays
class TensorSet:
  """A tensor set read against its data set: uint8 images, hard labels, what came with them."""

  path: str
  images: np.ndarray  # uint8 [n, H, W, C]
  labels: np.ndarray  # int64 [n], by labels.pt or the hard-label rule
  label_rule: str  # 'labels.pt', 'class_major' or 'argmax'
  soft_labels: np.ndarray | None  # float32 [n, C] logits as stored, or None
  argmax_mismatches: int  # soft labels whose argmax is not the hard label (0 without)
  pixels: PixelConversion
  reading: Reading

  def describe(self) -> str:
    """The lines a run logs about how the set was read."""
    n, height, width, channels = self.images.shape
    labels = {
        "labels.pt": "hard labels from labels.pt",
        CLASS_MAJOR: "hard labels by DD-Ranking's class-major rule (image i of class i // ipc)",
        ARGMAX: "hard labels = argmax of the soft labels (hard_labels='argmax')",
    }[self.label_rule]
    soft = ""
    if self.soft_labels is not None:
      soft = (f"; soft labels [{n}, {self.soft_labels.shape[1]}], argmax differs from the hard "
              f"label for {self.argmax_mismatches} of {n}")
    stats = (self.reading.mean, self.reading.std)
    return (f"{PREFIX}{self.path}: {n} images {height}x{width}x{channels}, {labels}{soft}; pixels: "
            f"{self.pixels.describe(stats)}")


def _torch() -> Any:
  """PyTorch, or a DataSourceError saying how to install it."""
  try:
    return importlib.import_module("torch")
  except ImportError as e:
    raise DataSourceError(f"reading a tensor set ({IMAGES_FILE}, {LABELS_FILE}, {LR_FILE}) needs "
                          "PyTorch: pip install -e '.[torch]'") from e


def _load(path: str) -> tuple[Any, str]:
  """The object a .pt file holds (tensors only) and the sha256 of its bytes."""
  with open(path, "rb") as f:
    raw = f.read()
  torch = _torch()
  try:
    loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and weights-only errors all mean "not a plain tensor file"
    raise DataSourceError(f"cannot read {path}: {type(e).__name__}: {e}; save the tensor itself, "
                          f"e.g. torch.save(images.cpu(), {os.path.basename(path)!r})") from e
  return loaded, hashlib.sha256(raw).hexdigest()


def _array(value: Any, path: str) -> np.ndarray:
  """A torch tensor as a NumPy array (half and bfloat16 as float32); anything else is an error."""
  torch = _torch()
  if not isinstance(value, torch.Tensor):
    held = (f"a dict with keys {sorted(map(str, value))[:5]}"
            if isinstance(value, dict) else f"a {type(value).__name__}")
    raise DataSourceError(f"{path} holds {held}, not a tensor; DD-Ranking's layout is one tensor "
                          "per file (torch.save(images, 'images.pt'), images [n, C, H, W])")
  value = value.detach().cpu()
  if value.dtype in (torch.float16, torch.bfloat16):
    value = value.float()
  return value.numpy()


def _signature(path: str) -> tuple[int, int] | None:
  """(size, mtime in ns) of a file, None when it does not exist: the per-process cache's key."""
  try:
    stat = os.stat(path)
  except FileNotFoundError:
    return None
  return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _stored_labels(path: str, signature: tuple[int, int] | None) -> StoredLabels | None:
  del signature  # part of the cache key only
  file = os.path.join(path, LABELS_FILE)
  if not os.path.exists(file):
    return None
  loaded, sha = _load(file)
  labels = _array(loaded, file)
  if labels.dtype == np.bool_:
    raise DataSourceError(f"{file}: labels are bool; hard labels are an integer tensor [n], soft "
                          "labels a float tensor [n, C]")
  if np.issubdtype(labels.dtype, np.integer):
    if labels.ndim != 1:
      raise DataSourceError(f"{file}: integer labels must be hard labels of shape [n], got "
                            f"{labels.shape}")
    return StoredLabels(labels.astype(np.int64), None, sha)
  if labels.ndim != 2:
    raise DataSourceError(f"{file}: float labels must be soft labels of shape [n, C], got "
                          f"{labels.shape}; hard labels are an integer tensor [n]")
  if not np.isfinite(labels).all():
    raise DataSourceError(f"{file}: {int((~np.isfinite(labels)).sum())} soft-label values are "
                          "NaN or infinite")
  return StoredLabels(None, labels.astype(np.float32), sha)


def stored_labels(path: str) -> StoredLabels | None:
  """labels.pt of the set at `path` as stored, None without one (read once per process)."""
  return _stored_labels(os.path.abspath(path), _signature(os.path.join(path, LABELS_FILE)))


@functools.lru_cache(maxsize=8)
def _learning_rate(path: str, signature: tuple[int, int] | None) -> float | None:
  del signature  # part of the cache key only
  file = os.path.join(path, LR_FILE)
  if not os.path.exists(file):
    return None
  loaded, _ = _load(file)
  value = loaded if isinstance(loaded, (int, float)) else _array(loaded, file)
  value = np.asarray(value, dtype=np.float64)
  if value.size != 1 or not math.isfinite(float(value.reshape(-1)[0])) or value.reshape(-1)[0] <= 0:
    raise DataSourceError(f"{file}: a learned learning rate is one positive number, got "
                          f"{value.reshape(-1)[:4].tolist()} (shape {value.shape})")
  return float(value.reshape(-1)[0])


def learning_rate(path: str) -> float | None:
  """lr.pt of the set at `path`, None without one (read once per process)."""
  return _learning_rate(os.path.abspath(path), _signature(os.path.join(path, LR_FILE)))


def _pixels(images: np.ndarray, reading: Reading, path: str) -> tuple[np.ndarray, PixelConversion]:
  """images.pt [n, C, H, W] as uint8 [n, H, W, C] and what the conversion did."""
  if images.dtype == np.uint8:
    out = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return out, PixelConversion("uint8", "uint8", int(images.size), 0, 0, 0.0)
  if not np.issubdtype(images.dtype, np.floating):
    raise DataSourceError(f"{path}: images of dtype {images.dtype}; DD-Ranking's images are float "
                          "(normalised) or uint8 pixels")
  if not np.isfinite(images).all():
    raise DataSourceError(f"{path}: {int((~np.isfinite(images)).sum())} pixel values are NaN or "
                          "infinite")
  values = images.astype(np.float64)
  if reading.pixel_scale == NORMALIZED:
    shape = (1, -1, 1, 1)
    values = (values * np.reshape(reading.std, shape) + np.reshape(reading.mean, shape)) * 255.0
  else:
    values = values * 255.0
  rounded = np.rint(values)
  below, above = rounded < 0, rounded > 255
  excess = max(
      float(-values.min()) if below.any() else 0.0,
      float(values.max() - 255.0) if above.any() else 0.0)
  out = np.clip(rounded, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
  conversion = PixelConversion(reading.pixel_scale, str(images.dtype), int(images.size),
                               int(below.sum()), int(above.sum()), excess)
  return np.ascontiguousarray(out), conversion


def _class_major(n: int, num_classes: int, why: str) -> np.ndarray:
  """DD-Ranking's hard labels: n / C images per class, class by class."""
  if n % num_classes:
    raise DataSourceError(f"{why}: DD-Ranking's rule gives image i the class i // ipc, which needs "
                          f"a multiple of the {num_classes} classes, but the set holds {n} images")
  return np.repeat(np.arange(num_classes, dtype=np.int64), n // num_classes)


def _hard_labels(stored: StoredLabels | None, n: int, reading: Reading,
                 path: str) -> tuple[np.ndarray, str]:
  """The hard labels of the set and the rule that gave them."""
  file = os.path.join(path, LABELS_FILE)
  if stored is None:
    return _class_major(n, reading.num_classes, f"{path} has no {LABELS_FILE}"), CLASS_MAJOR
  labels = stored.hard if stored.hard is not None else stored.soft
  if labels.shape[0] != n:
    raise DataSourceError(f"{file} holds {labels.shape[0]} labels for the {n} images of "
                          f"{IMAGES_FILE}")
  if stored.soft is not None:
    if stored.soft.shape[1] != reading.num_classes:
      raise DataSourceError(f"{file}: soft labels over {stored.soft.shape[1]} classes, but the "
                            f"data set the set was made from has {reading.num_classes}")
    if reading.hard_labels == ARGMAX:
      return np.argmax(stored.soft, axis=1).astype(np.int64), ARGMAX
    return _class_major(n, reading.num_classes, f"{file} holds soft labels"), CLASS_MAJOR
  bad = np.flatnonzero((stored.hard < 0) | (stored.hard >= reading.num_classes))
  if bad.size:
    raise DataSourceError(f"{file}: {bad.size} labels lie outside 0..{reading.num_classes - 1}, "
                          f"e.g. image {bad[0]} has label {stored.hard[bad[0]]}")
  return stored.hard, "labels.pt"


@functools.lru_cache(maxsize=4)
def _read(path: str, signatures: tuple[Any, ...], reading: Reading) -> TensorSet:
  del signatures  # part of the cache key only
  file = os.path.join(path, IMAGES_FILE)
  if not os.path.isfile(file):
    raise DataSourceError(f"{PREFIX}{path}: no {IMAGES_FILE} in {path}")
  loaded, _ = _load(file)
  images = _array(loaded, file)
  if images.ndim != 4 or images.shape[1] not in _CHANNELS:
    hint = ("; that looks like [n, H, W, C]: save images.permute(0, 3, 1, 2)"
            if images.ndim == 4 and images.shape[3] in _CHANNELS else "")
    raise DataSourceError(f"{file}: images must be [n, C, H, W] with C = 1 or 3 (DD-Ranking's "
                          f"layout), got shape {tuple(images.shape)}{hint}")
  if images.shape[0] == 0:
    raise DataSourceError(f"{file} holds no images")
  if images.shape[1] != reading.channels:
    raise DataSourceError(f"{file}: images have {images.shape[1]} channels, the data set the set "
                          f"was made from has {reading.channels}")
  stored = stored_labels(path)
  labels, rule = _hard_labels(stored, images.shape[0], reading, path)
  pixels, conversion = _pixels(images, reading, file)
  soft = stored.soft if stored is not None else None
  mismatches = int((np.argmax(soft, axis=1) != labels).sum()) if soft is not None else 0
  return TensorSet(path, pixels, labels, rule, soft, mismatches, conversion, reading)


def read(path: str, reading: Reading) -> TensorSet:
  """The tensor set at `path` read by `reading` (once per process while its files stay the same)."""
  path = os.path.abspath(path)
  signatures = tuple(_signature(os.path.join(path, f)) for f in (IMAGES_FILE, LABELS_FILE))
  return _read(path, signatures, reading)


@functools.lru_cache(maxsize=4)
def _source(tensor_set: TensorSet) -> ArraySource:
  reading = tensor_set.reading
  return ArraySource(tensor_set.images, tensor_set.labels, reading.num_classes,
                     name=PREFIX + tensor_set.path, split=SPLIT, mean=reading.mean, std=reading.std)


def load_tensor_set(path: str, split: str, reading: Reading | None) -> ArraySource:
  """The set at `path` as its one split 'train' (the module docstring says how it is read)."""
  if split != SPLIT:
    raise DataSourceError(f"{PREFIX}{path} is one training set, split {SPLIT!r}, not {split!r}; "
                          "test it on the data set it was made from (config.test_dataset)")
  if reading is None:
    raise DataSourceError(f"{PREFIX}{path} is read against the data set it was made from (its "
                          "classes, channels, mean and std); set config.test_dataset to that data "
                          "set")
  # The same TensorSet object while the files are unchanged, so one source (and fingerprint).
  return _source(read(path, reading))
