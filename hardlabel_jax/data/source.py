"""The contract every data source meets: random access to uint8 images keyed by a stable id.

An example's id is its index in the source split; together with the split's `fingerprint` it
names the example uniquely, so soft-label tables, difficulty scores and subsets can refer to it
(DESIGN.md §2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What a trainer needs to know about a split without reading its images."""

  name: str  # e.g. "embedded_mnist", "tfds:cifar100", "imagefolder:/path"
  split: str  # e.g. "train", "test"
  num_classes: int
  # (H, W, C) when every image has that shape, else (None, None, C) (ImageNet).
  image_shape: tuple[int | None, int | None, int]
  fingerprint: str  # hex digest naming the exact content of this split
  class_names: tuple[str, ...] = ()
  # Per-channel mean/std on the 0..1 pixel scale, used by normalisation.
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.5,)


@runtime_checkable
class ImageSource(Protocol):
  """Random-access split: `source[i] -> {'image': uint8[H,W,C], 'label': int, 'id': int}`.

  Grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`) plus metadata. Must be
  picklable, so Grain worker processes can read it.
  """

  info: SourceInfo

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> dict[str, Any]:
    ...

  def labels(self) -> np.ndarray:
    """All labels as int64 [len], in id order, without decoding images."""
    ...


def check_ids(ids: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
  """Validates example ids against a split of `size` examples and returns them as int64."""
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"example ids must be a 1-D list, got shape {ids.shape}")
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"example ids must be integers, got dtype {ids.dtype}")
  ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= size):
    raise ValueError(f"example ids must lie in [0, {size}); got min {ids.min()} max {ids.max()}")
  if np.unique(ids).size != ids.size:
    raise ValueError("example ids contain duplicates")
  return ids
