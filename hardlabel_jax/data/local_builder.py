"""Builds local image splits once into a cached TFDS ArrayRecord data dir and serves them back.

A local set (the embedded MNIST subset, Fashion-MNIST from IDX files, an image folder) is handed
over as arrays per split and written by `HardlabelLocal`, a `tfds.core.GeneratorBasedBuilder`, to

    <data_dir>/hardlabel_local/<name>_<key>/1.0.0/

where `key` is a short hash of the source content, so a changed source builds into a new directory
and never reuses stale records. Records keep the order they were handed over (TFDS
`disable_shuffling=True`), so record index == example id. Beside the records each split's labels
are saved as `labels-<split>.npy` and an empty `HARDLABEL_READY` file marks a finished build.
Everything here runs without TensorFlow: images are stored as a raw uint8 `Tensor` feature (the
TFDS `Image` feature encodes with TF) and read back with `builder_from_directory(...)
.as_data_source(split)` (ArrayRecord random access), as raw records parsed by `LocalSource`.

`data_dir` defaults to `$HARDLABEL_DATA_DIR`, else `~/.cache/hardlabel_jax/tfds`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2  # TFDS's TF-free copy of tf.train.Example

from hardlabel_jax.data import errors
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.record_source import RecordSource
from hardlabel_jax.data.source import SourceInfo

ENV_DATA_DIR = "HARDLABEL_DATA_DIR"
BUILDER_NAME = "hardlabel_local"
_VERSION = "1.0.0"  # bump when the record layout changes, so old builds are not reused
_READY_FILE = "HARDLABEL_READY"

_log = logging.getLogger(__name__)


def default_data_dir() -> str:
  """Where local sets are built: `$HARDLABEL_DATA_DIR`, else `~/.cache/hardlabel_jax/tfds`."""
  return os.environ.get(ENV_DATA_DIR) or os.path.expanduser("~/.cache/hardlabel_jax/tfds")


@dataclasses.dataclass(frozen=True)
class LocalSplit:
  """One split to build: `images[i]` is uint8 [H,W,C] of example id i, `labels` int64 [N]."""

  # An array [N,H,W,C] or any lazy sequence (an image folder decodes files on access).
  images: Sequence[np.ndarray]
  labels: np.ndarray


@dataclasses.dataclass
class _LocalConfig(tfds.core.BuilderConfig):
  """Config naming one local set at one content key; carries the feature shapes."""

  image_shape: tuple[int, int, int] = (0, 0, 0)
  class_names: tuple[str, ...] = ()


class HardlabelLocal(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the splits handed to its constructor as records {image, label, id}."""

  VERSION = tfds.core.Version(_VERSION)
  # TFDS looks for README/citation metadata beside the builder's module; pointing it here
  # explicitly avoids a package-resource lookup that fails for namespace packages.
  pkg_dir_path = epath.Path(__file__).parent

  def __init__(self, *, splits: Mapping[str, LocalSplit] | None = None, **kwargs: Any):
    """Takes the splits to write (only needed for `download_and_prepare`)."""
    self._splits = dict(splits or {})
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    """Features: uint8 image Tensor as raw bytes (TF-free), ClassLabel, int64 id; order kept."""
    config = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # Raw bytes, not TFDS's default int64 list per pixel: ~3x faster to write and read.
            "image": tfds.features.Tensor(shape=tuple(config.image_shape), dtype=np.uint8,
                                          encoding="bytes"),
            "label": tfds.features.ClassLabel(names=list(config.class_names)),
            "id": tfds.features.Scalar(dtype=np.int64),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    """One generator per split handed over."""
    del dl_manager  # nothing to download: the data is already in memory
    return {name: self._generate_examples(name, split) for name, split in self._splits.items()}

  def _generate_examples(self, split_name: str, split: LocalSplit):
    """Yields the split's examples in id order; a bad image stops the build (nothing is kept)."""
    shape = tuple(self.builder_config.image_shape)
    for i in range(len(split.labels)):
      # Decoding happens here, once: an image folder's lazy images raise a DataSourceError naming
      # the file, and `_build` discards everything written so far.
      image = np.asarray(split.images[i])
      if image.dtype != np.uint8 or image.shape != shape:
        raise DataSourceError(f"{self.builder_config.description}, split {split_name!r}, example "
                              f"{i}: expected uint8 {shape}, got {image.dtype} {image.shape}")
      yield i, {"image": image, "label": int(split.labels[i]), "id": i}


def local_data_path(name: str, key: str, data_dir: str | None = None) -> str:
  """The directory a local set `name` with content key `key` is built into."""
  root = data_dir or default_data_dir()
  return os.path.join(root, BUILDER_NAME, f"{name}_{key}", _VERSION)


def prepare_local(
    name: str,
    key: str,
    make_splits: Callable[[], Mapping[str, LocalSplit]],
    *,
    image_shape: tuple[int, int, int],
    class_names: Sequence[str],
    data_dir: str | None = None,
) -> str:
  """Builds the set unless a finished build exists; returns its data path.

  `make_splits` is called only when building, so parsing the raw source is paid once. Safe when
  processes race: the build runs under an exclusive file lock, and TFDS writes into a temporary
  directory that it renames into place, so a crashed build never looks finished. Every split must
  hold examples with labels in [0, len(class_names)), and every image must decode to
  `image_shape`; otherwise a DataSourceError names the split and example (for an image folder, the
  file) and nothing is left in `data_dir` that a rerun would reuse.
  """
  root = data_dir or default_data_dir()
  data_path = local_data_path(name, key, root)
  ready = os.path.join(data_path, _READY_FILE)
  if os.path.exists(ready):
    return data_path
  lock_dir = os.path.join(root, BUILDER_NAME)
  os.makedirs(lock_dir, exist_ok=True)
  with open(os.path.join(lock_dir, f".{name}_{key}.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits here, then finds the build done
    try:
      if not os.path.exists(ready):
        splits = make_splits()
        check_splits(name, splits, len(class_names))
        _build(name, key, splits, image_shape, class_names, root, data_path)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return data_path


def check_splits(name: str, splits: Mapping[str, LocalSplit], num_classes: int) -> None:
  """Raises a DataSourceError naming the split unless each is non-empty with labels in range."""
  for split_name, split in splits.items():
    labels = np.asarray(split.labels)
    where = f"{name}, split {split_name!r}"
    if labels.ndim != 1 or len(split.images) != labels.shape[0]:
      raise DataSourceError(f"{where}: {len(split.images)} images but labels of shape "
                            f"{labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
      raise DataSourceError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    errors.check_labels(labels, num_classes, where)


def _discard(data_path: str) -> None:
  """Removes what a failed build left at `data_path` (TFDS removes its own temporary dir)."""
  # Not READY, so no reader trusts it; but TFDS would skip generating into an existing dir.
  shutil.rmtree(data_path, ignore_errors=True)
  try:
    os.rmdir(os.path.dirname(data_path))  # the per-key folder, when no other version is in it
  except OSError:
    pass


def _build(
    name: str,
    key: str,
    splits: Mapping[str, LocalSplit],
    image_shape: tuple[int, int, int],
    class_names: Sequence[str],
    root: str,
    data_path: str,
) -> None:
  """Writes records, label arrays and the ready marker for one local set."""
  start = time.perf_counter()
  config = _LocalConfig(
      name=f"{name}_{key}",
      description=f"hardlabel_jax local set {name}",
      image_shape=tuple(int(d) for d in image_shape),
      class_names=tuple(class_names),
  )
  builder = HardlabelLocal(data_dir=root, config=config, file_format="array_record", splits=splits)
  if os.path.abspath(os.fspath(builder.data_path)) != os.path.abspath(data_path):
    raise RuntimeError(f"TFDS chose {builder.data_path}, expected {data_path}")
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False,  # a local set must never reach out to the TFDS GCS bucket
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    ))
    for split_name, split in splits.items():
      written = builder.info.splits[split_name].num_examples
      if written != len(split.labels):
        raise RuntimeError(f"{name}/{split_name}: wrote {written} of {len(split.labels)} records")
      save_npy_atomic(os.path.join(data_path, f"labels-{split_name}.npy"),
                      np.asarray(split.labels, dtype=np.int64))
  except BaseException:
    _discard(data_path)
    raise
  with open(os.path.join(data_path, _READY_FILE), "w"):
    pass  # written last: its presence means records and labels are complete
  _log.info("built %s into %s in %.1f s", name, data_path, time.perf_counter() - start)


def save_npy_atomic(path: str, array: np.ndarray) -> None:
  """np.save through a temporary file and rename, so readers never see a partial file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npy.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, array)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared data dir must stay readable
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


class LocalSource(RecordSource):
  """ImageSource over one split of a set built by `prepare_local`; pickles as path, split, info."""

  def __init__(self, data_path: str, split: str, info: SourceInfo):
    """Serves `split` of the set built at `data_path`, described by `info`."""
    self.info = info
    self._data_path = data_path
    self._split = split
    self._len = len(self.labels())

  def _open(self) -> Any:
    """Raw records, parsed by `_example`.

    TFDS's generic numpy deserialisation costs ~0.2 ms a record, ten times this three-field parse.
    """
    return tfds.builder_from_directory(self._data_path).as_data_source(
        self._split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)

  def _example(self, index: int, record: bytes) -> dict[str, Any]:
    """A serialized record (the tf.train.Example HardlabelLocal wrote) as an ImageSource example."""
    del index  # the record stores its id
    feature = tf_example_pb2.Example.FromString(record).features.feature
    image = np.frombuffer(feature["image"].bytes_list.value[0], dtype=np.uint8)
    return {
        "image": image.reshape(self.info.image_shape).copy(),  # copy: writable, owns its memory
        "label": feature["label"].int64_list.value[0],
        "id": feature["id"].int64_list.value[0],
    }

  def labels(self) -> np.ndarray:
    """All labels, int64 [len], in id order (read-only), from the array saved at build time."""
    if self._labels is None:
      labels = np.load(os.path.join(self._data_path, f"labels-{self._split}.npy"))
      labels.flags.writeable = False
      self._labels = labels
    return self._labels

  def __repr__(self) -> str:
    """Name, split, size and where the records live."""
    return (f"LocalSource({self.info.name!r}, split={self.info.split!r}, n={self._len}, "
            f"path={self._data_path!r})")
