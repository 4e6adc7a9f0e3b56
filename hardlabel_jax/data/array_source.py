"""An in-memory source over NumPy arrays: distilled sets held in RAM, and tests."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from hardlabel_jax.data import errors
from hardlabel_jax.data.source import SourceInfo


class ArraySource:
  """`ImageSource` over `images` uint8 [N, H, W, C] and `labels` int [N]; ids are row indices."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str = "arrays",
               split: str = "train", mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
      raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    errors.check_labels(labels, num_classes, f"{name}, split {split!r}")
    self._images = images
    self._labels = labels.astype(np.int64)
    digest = hashlib.sha256(images.tobytes() + self._labels.tobytes() + split.encode())
    channels = images.shape[-1]
    self.info = SourceInfo(name=name, split=split, num_classes=num_classes,
                           image_shape=images.shape[1:], fingerprint=digest.hexdigest(), mean=mean
                           or (0.5,) * channels, std=std or (0.5,) * channels)

  def __len__(self) -> int:
    return self._images.shape[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    return {"image": self._images[index], "label": int(self._labels[index]), "id": index}

  def labels(self) -> np.ndarray:
    return self._labels.copy()
