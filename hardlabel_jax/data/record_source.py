"""Base of the ImageSources that read records through a reader opened lazily in each process."""

from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np

from hardlabel_jax.data.source import SourceInfo


class RecordSource:
  """Random access by id over a record reader; picklable for Grain worker processes.

  A subclass sets `info` and `_len`, and implements `_open` (the reader: `reader[i]` and
  `reader.__getitems__(ids)` give records) and `_example` (record -> ImageSource example). The
  pickle carries neither the open reader nor cached labels: each process reopens on first use.
  """

  info: SourceInfo
  _len: int
  _reader: Any = None
  _labels: np.ndarray | None = None

  def _open(self) -> Any:
    """Opens the record reader."""
    raise NotImplementedError

  def _example(self, index: int, record: Any) -> dict[str, Any]:
    """Record `index` as {'image': uint8 [H,W,C], 'label': int, 'id': int}."""
    raise NotImplementedError

  def __len__(self) -> int:
    """Number of examples in the split."""
    return self._len

  def _ensure_reader(self) -> Any:
    """The reader, opened on first use in this process."""
    if self._reader is None:
      # Two Grain reader threads may both open one; harmless, the last assignment wins.
      self._reader = self._open()
    return self._reader

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Example `index` as {'image': uint8 [H,W,C], 'label': int, 'id': int}."""
    index = operator.index(index)
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for {self._len} examples")
    return self._example(index, self._ensure_reader()[index])

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Batched read (Grain's batched-source protocol): ArrayRecord fetches records in parallel,
    several times cheaper per record than one by one."""
    indices = [operator.index(i) for i in indices]
    records = self._ensure_reader().__getitems__(indices)
    return [self._example(i, r) for i, r in zip(indices, records, strict=True)]

  __getitems__ = _getitems  # the name PyTorch-style loaders look for

  def __getstate__(self) -> dict[str, Any]:
    """Drops the open reader and cached labels; the receiving process reopens lazily."""
    state = dict(self.__dict__)
    state.pop("_reader", None)
    state.pop("_labels", None)
    return state
