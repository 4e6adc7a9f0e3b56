"""A train split cut to its first n images of every class, seen as a whole split of its own.

The paper's small-scale tables run on CIFAR-100 (500 images per class). A miniature on a data set
with more images per class (Fashion-MNIST: 6,000) keeps the paper's ratios (IPC10 = 2 % of a
class, CAD-Prune's K = E·n/N) only when its pool holds 500 per class too. The cut keeps, for
every class, the images with the smallest ids (source order is already shuffled in the sets we
ship; no seed to record) and renumbers them 0..N'−1 in id order, so that soft-label tables,
scores and subsets keyed by id address the cut, and gives it its own fingerprint: an artefact of
the full split is never taken for one of the cut, or the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.data.source import SourceInfo


def first_per_class(labels: np.ndarray, images_per_class: int) -> np.ndarray:
  """Ids of the first `images_per_class` images of every class, ascending; too few is an error."""
  labels = np.asarray(labels)
  counts = np.bincount(labels)
  if counts.size == 0 or counts.min() < images_per_class:
    short = int(np.argmin(counts)) if counts.size else 0
    have = int(counts.min()) if counts.size else 0
    raise ValueError(f"config.train_images_per_class: {images_per_class} images per class, but "
                     f"class {short} of the train split has {have}")
  rank = np.zeros_like(labels)
  for c in range(counts.size):
    members = np.flatnonzero(labels == c)
    rank[members] = np.arange(members.size)
  return np.flatnonzero(rank < images_per_class).astype(np.int64)


class ClassCut:
  """`source` restricted to `first_per_class(images_per_class)`, ids renumbered 0..N'−1."""

  def __init__(self, source: ImageSource, images_per_class: int):
    self._source = source
    self.images_per_class = int(images_per_class)
    self._ids = first_per_class(np.asarray(source.labels()), self.images_per_class)
    self._labels = np.asarray(source.labels())[self._ids].astype(np.int64)
    base = source.info
    fingerprint = hashlib.sha256(
        f"{base.fingerprint}:first {self.images_per_class} per class".encode()).hexdigest()
    # Normalisation keeps the full split's statistics: the cut is a sample of the same images.
    self.info: SourceInfo = dataclasses.replace(base,
                                                name=f"{base.name}[{self.images_per_class}/class]",
                                                fingerprint=fingerprint)

  def __len__(self) -> int:
    return int(self._ids.size)

  def labels(self) -> np.ndarray:
    return self._labels

  def source_ids(self) -> np.ndarray:
    """The ids in the uncut split of the cut's examples 0..N'−1."""
    return self._ids.copy()

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._ids.size:
      raise IndexError(f"example {index} is outside the cut's {self._ids.size} examples")
    example = dict(self._source[int(self._ids[index])])
    example["id"] = index
    return example


def cut(source: ImageSource, images_per_class: int) -> ImageSource:
  """`source` itself at 0 images per class, else its `ClassCut`."""
  return ClassCut(source, images_per_class) if images_per_class else source
