"""`tfds:<name>`: any prepared TFDS image-classification data set, read through ArrayRecord.

`<name>` is what `tfds.data_source` accepts: `cifar100`, `imagenet2012`, `mnist:3.0.1`,
`cifar10_corrupted/fog_5`, ... Splits use the TFDS split API (`train`, `test`, `train[:10%]`).
Reading needs no TensorFlow: TFDS decodes `Image` features with PIL (grayscale keeps its channel
axis). Preparing needs TensorFlow and is never triggered here (`download=False`): a data set that is
not prepared gives a DataSourceError saying which `tfds build` command prepares it. Example id =
record index in the split. Fingerprint = sha256 of the builder's full name (config and version
included), the split and its number of examples. `data_dir` defaults to TFDS's own
(`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
from typing import Any
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds

from hardlabel_jax.data import local_builder
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.record_source import RecordSource
from hardlabel_jax.data.source import SourceInfo

PREFIX = "tfds:"

# Per-channel normalisation by TFDS builder-name prefix (longest prefix first). CIFAR stds are the
# values of the DC/MTT/RDED code (not the true per-pixel std), so results match that literature.
_STATS: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...] = (
    ("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("cifar100", (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    ("cifar10", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    ("fashion_mnist", (0.2860,), (0.3530,)),
    ("mnist", (0.1307,), (0.3081,)),
)
_IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_LABEL_CHUNK = 4096

_log = logging.getLogger(__name__)


def _mean_std(builder_name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Known statistics for the data set, else 0.5 per channel."""
  for prefix, mean, std in _STATS:
    if builder_name.startswith(prefix) and len(mean) == channels:
      return mean, std
  return (0.5,) * channels, (0.5,) * channels


def _data_root(data_dir: str | None) -> str:
  """The TFDS data dir that is read: the one given, else TFDS's default."""
  return os.fspath(data_dir) if data_dir else tfds.core.constants.DATA_DIR


def _not_prepared_message(name: str, builder: Any, data_dir: str | None) -> str:
  """Says exactly how to prepare `name` as ArrayRecord under `data_dir`."""
  root = _data_root(data_dir)
  build = f"tfds build {builder.name} --data_dir {root} --file_format=array_record"
  if builder.builder_config is not None:
    build += f" --config {builder.builder_config.name}"
  head = (f"tfds:{name} is not prepared in {builder.data_dir}. Prepare it once, in an environment "
          "with TensorFlow (pip install tensorflow tensorflow-datasets; reading it afterwards "
          "needs no TensorFlow):\n")
  if builder.name == "imagenet2012":
    manual = os.path.join(root, "downloads", "manual")
    missing = [t for t in _IMAGENET_TARS if not os.path.isfile(os.path.join(manual, t))]
    return head + (
        f"  1. ImageNet cannot be downloaded automatically: register at "
        f"https://image-net.org/download-images and place {' and '.join(_IMAGENET_TARS)} in "
        f"{manual} (missing now: {', '.join(missing) or 'none'}).\n"
        f"  2. {build}\n"
        "  (about 150 GB of output; the train tar alone is 138 GB).")
  return head + f"  {build}"


def _open_reader(name: str, split: str, data_dir: str | None, skip_image: bool = False) -> Any:
  """`tfds.data_source` without ever downloading; `skip_image` leaves images as encoded bytes."""
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_image else None
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)


def _is_mocked(reader: Any) -> bool:
  """True under `tfds.testing.mock_data`, whose fake records cannot skip decoding without TF."""
  return isinstance(getattr(reader, "data_source", None), mock.NonCallableMock)


class TfdsSource(RecordSource):
  """ImageSource over one split of a prepared TFDS data set; pickles as name, split, data dir."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    """Opens `split` of TFDS data set `name` (without the `tfds:` prefix)."""
    self._tfds_name = name
    self._split = split
    self._data_dir = os.fspath(data_dir) if data_dir else None
    try:
      builder = tfds.builder(name, data_dir=self._data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataSourceError(
          f"tfds:{name}: no TFDS data set of that name (see `tfds.list_builders()` or "
          "https://www.tensorflow.org/datasets/catalog)") from e
    except (AssertionError, ValueError) as e:  # unknown config or version
      raise DataSourceError(f"tfds:{name}: {e}") from e
    try:
      reader = _open_reader(name, split, self._data_dir)
    except Exception as e:  # TFDS signals "not prepared" with several exception types
      if not builder.is_prepared():
        raise DataSourceError(_not_prepared_message(name, builder, self._data_dir)) from e
      if builder.info.splits and _base_split(split) not in builder.info.splits:
        raise DataSourceError(
            f"tfds:{name} has splits {sorted(builder.info.splits)}, not {split!r}") from e
      if isinstance(e, NotImplementedError):  # prepared, but as TFRecord (no random access)
        raise DataSourceError(
            f"tfds:{name} is prepared in {builder.data_dir} as {builder.info.file_format}, which "
            "has no random access. Re-prepare it as ArrayRecord: "
            f"tfds build {builder.name} --data_dir {_data_root(self._data_dir)} "
            "--file_format=array_record --overwrite") from e
      raise DataSourceError(f"tfds:{name} split {split!r} cannot be opened: {e}") from e
    features = builder.info.features
    if "image" not in features or "label" not in features:
      raise DataSourceError(
          f"tfds:{name} is not an image-classification set: needs 'image' and 'label' features, "
          f"has {sorted(features)}")
    image_shape = tuple(features["image"].shape)
    if len(image_shape) != 3 or image_shape[-1] is None:
      raise DataSourceError(f"tfds:{name}: image shape {image_shape} is not [H, W, C]")
    mean, std = _mean_std(builder.name, image_shape[-1])
    label = features["label"]
    self._reader = reader
    self._len = len(reader)
    fingerprint = hashlib.sha256(f"{builder.info.full_name}\n{split}\n{self._len}".encode())
    self.info = SourceInfo(
        name=PREFIX + name,
        split=split,
        num_classes=int(label.num_classes),
        image_shape=image_shape,
        fingerprint=fingerprint.hexdigest(),
        class_names=tuple(label.names),
        mean=mean,
        std=std,
    )

  def _open(self) -> Any:
    """The decoding TFDS reader."""
    return _open_reader(self._tfds_name, self._split, self._data_dir)

  def _example(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
    """A decoded TFDS record as an ImageSource example."""
    image = record["image"]
    if not image.flags.writeable:  # PIL-decoded arrays can be read-only; callers may edit in place
      image = image.copy()
    return {"image": image, "label": int(record["label"]), "id": index}

  def labels(self) -> np.ndarray:
    """All labels, int64 [len], in id order (read-only); read once without decoding images.

    Cached as `<data_dir>/hardlabel_labels/<fingerprint>.npy` (the local cache dir when no
    data_dir was given or it is not writable), since ImageNet's 1.28 M records take minutes.
    """
    if self._labels is None:
      self._labels = self._cached_labels()
      self._labels.flags.writeable = False
    return self._labels

  def _label_cache_paths(self) -> list[str]:
    """Where the labels cache may live, preferred first."""
    roots = [r for r in (self._data_dir, local_builder.default_data_dir()) if r and "://" not in r
            ]  # remote data dirs (gs://) get the local cache instead
    return [os.path.join(r, "hardlabel_labels", f"{self.info.fingerprint}.npy") for r in roots]

  def _cached_labels(self) -> np.ndarray:
    """Labels from the .npy cache, else read from the records and cached."""
    paths = self._label_cache_paths()
    for path in paths:
      if os.path.isfile(path):
        labels = np.load(path)
        if labels.shape == (self._len,):
          return labels
    labels = self._read_labels()
    for path in paths:
      try:
        local_builder.save_npy_atomic(path, labels)
        break
      except OSError as e:
        _log.warning("cannot cache labels at %s: %s", path, e)
    return labels

  def _read_labels(self) -> np.ndarray:
    """Reads every record's label, skipping image decoding, in parallel batches."""
    reader = _open_reader(self._tfds_name, self._split, self._data_dir, skip_image=True)
    if _is_mocked(reader):
      # Fake records can only be produced fully decoded, one at a time.
      full = self._ensure_reader()
      return np.array([int(full[i]["label"]) for i in range(self._len)], dtype=np.int64)
    labels = np.empty(self._len, dtype=np.int64)
    starts = range(0, self._len, _LABEL_CHUNK)

    def read_chunk(start: int) -> None:
      keys = list(range(start, min(start + _LABEL_CHUNK, self._len)))
      for key, record in zip(keys, reader.__getitems__(keys), strict=True):
        labels[key] = record["label"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
      list(pool.map(read_chunk, starts))
    return labels

  def __repr__(self) -> str:
    """Name, split and size."""
    return f"TfdsSource({self._tfds_name!r}, split={self._split!r}, n={self._len})"


def _base_split(split: str) -> str:
  """`train` from `train[:10%]`, for checking a split name exists."""
  return split.split("[", 1)[0]


def load_tfds(name: str, split: str, data_dir: str | None = None) -> TfdsSource:
  """`split` of TFDS data set `name` (`tfds:` prefix optional)."""
  if name.startswith(PREFIX):
    name = name[len(PREFIX):]
  return TfdsSource(name, split, data_dir)
