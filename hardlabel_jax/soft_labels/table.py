"""Soft-label tables on disk: a header, the pool's ids and raw shards of fixed-size rows.

A table directory `D` holds `header.json`, `ids.npy` and `shard-00000.bin`, ... Shard s holds
pool positions `[s P, min((s + 1) P, n))` x all slots, rows in (position, slot) order, as the raw
bytes of `row_dtype(spec)`: per-crop metadata (`box`, `flip`, and with CutMix `partner_id`,
`mix_lambda`, `cut_box`) followed by the payload of `formats`. Tables are written under
`D.partial/` and renamed to `D` only once complete, so a half-written table is never readable at
`D`; an interrupted write resumes from its finished shards. Every shard's sha256 is in the header,
and opening a table checks it, its size and (optionally) that the table was made for the expected
data, teacher and settings.

Where a table's crops come from (`TableSpec.stored_crops`): a table relabelled here stores crops
that are a pure function of (crop seed, id, slot), so a replay rebuilds each one from its key and
checks it against the row ('keyed', the default). A table imported from another code base's labels
(`soft_labels/fkd.py`) stores arbitrary crops, so its rows hold what rebuilds them: the pixel box
the crop was cut from (`pixel_box`, uint16 source pixels, exact at any image size, where the
keyed `box` is fp16 fractions), the flip, the row's place in its relabel epoch's sampler order
(`sampler_rank`: stored batch `rank // B`, row `rank % B`) and the CutMix fields; its crop spec
says `crops: 'stored'`. Tables of the keyed layout read as before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

from hardlabel_jax import disk_space
from hardlabel_jax import faults
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import keyed_draws
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.soft_labels import formats

FORMAT_VERSION = 1
HEADER_FILE = "header.json"
IDS_FILE = "ids.npy"
PROGRESS_FILE = "progress.json"
PARTIAL_SUFFIX = ".partial"
BN_MODES = ("eval", "batch_stats")
RELABEL_HINT = "re-run task='relabel'"

# Per-crop metadata, always stored: crop box (top, left, height, width as image fractions), flip.
BASE_METADATA = (("box", "<f2", (4,)), ("flip", "<u1"))
# With CutMix also the partner's example id (-1: none), lambda and the pasted box in output pixels.
CUTMIX_METADATA = (("partner_id", "<i4"), ("mix_lambda", "<f2"), ("cut_box", "<u2", (4,)))
# A stored-crop table (crop spec `crops: 'stored'`): the box in source pixels (top, left, height,
# width, exactly what the crop cut), the flip and the row's rank in its epoch's sampler order.
STORED_METADATA = (("pixel_box", "<u2", (4,)), ("flip", "<u1"), ("sampler_rank", "<u4"))
# `crop_spec['crops']` of a table whose rows store their crops (absent: keyed crops).
STORED_CROPS = "stored"

# A stream tag keeps the pruning draws independent of any other use of (seed, example_id).
_KEEP_STREAM = 0x4B455054  # "KEPT"
_DRAW_STREAM = 0x44524157  # "DRAW"
_BATCH_DRAW_STREAM = 0x42445257  # "BDRW"

# Label pruning (DESIGN.md §4, §9): LPLD's stored batches (its official granularity, the default
# wherever a fraction below 1 is kept) or a per-image subset of each image's slots.
LPLD_BATCHES = "lpld_batches"
PER_IMAGE = "per_image"
# HALD's soft phase (validate/train_fkd.py main): whole stored batches, each soft epoch taking the
# next of a seeded permutation of all of them (no replacement until every one was replayed).
HALD_BATCHES = "hald_batches"
# SRe²L's soft phase (validate/train_FKD.py `train`): relabel epoch e's stored batches in their
# stored order, batch b at step b of epoch e, epoch after epoch.
FKD_BATCHES = "fkd_batches"
LABEL_PRUNING_MODES = (LPLD_BATCHES, PER_IMAGE, HALD_BATCHES, FKD_BATCHES)
# The draw rule of each stored-batch mode (StoredBatches.draw_rule).
_DRAW_RULES = {LPLD_BATCHES: "uniform", HALD_BATCHES: "permutation", FKD_BATCHES: "sequential"}
_BATCH_PASS_STREAM = 0x42505353  # "BPSS": the permutation of one pass over the stored batches


class TableError(ValueError):
  """A soft-label table is missing, incomplete, corrupted or made for something else."""


class TableMissingError(TableError):
  """No table at the directory."""


class TableInterruptedError(TableError):
  """Only an unfinished `.partial` table exists: relabel was interrupted."""


class TableCorruptedError(TableError):
  """A file of the table is missing, has the wrong size or checksum."""


class TableMismatchError(TableError):
  """The table was made for other data, another teacher or other settings."""


def _json_normalised(value: Any, name: str) -> Any:
  # A JSON round trip makes tuples lists, so a spec compares equal to its reloaded self.
  try:
    return json.loads(json.dumps(value, sort_keys=True))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}: must be JSON-serialisable ({e})") from e


def ids_sha256(ids: np.ndarray) -> str:
  """sha256 of the ids as little-endian int64."""
  return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()


def _same_folder_moved(stored: str, expected: str, same_content: bool) -> bool:
  """Both names are image folders with the same content: a cache or set moved or copied.

  An image folder's name is its path, but its fingerprint hashes its layout rule, class names,
  file names and bytes, never the path; so equal fingerprints are the same set wherever it lies.
  """
  return (same_content and stored.startswith(image_folder.PREFIX)
          and expected.startswith(image_folder.PREFIX))


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """Everything that defines a table's content (`==` ignores `ids`, `teacher`: see `mismatches`)."""
  dataset_name: str
  dataset_fingerprint: str
  ids: np.ndarray = dataclasses.field(compare=False, repr=False)
  num_classes: int
  teacher_fingerprint: str
  crop_seed: int
  crop_spec: dict = dataclasses.field(hash=False)
  temperature: float
  label_format: str
  topk: int = 0
  slots_per_image: int = 1
  teacher_bn_mode: str = "eval"
  teacher: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def __post_init__(self):
    ids = np.array(self.ids, dtype=np.int64).reshape(-1) if np.ndim(self.ids) else None
    if ids is None or ids.size == 0:
      raise ValueError("ids: must be a non-empty 1-D array of example ids")
    ids.setflags(write=False)
    object.__setattr__(self, "ids", ids)
    object.__setattr__(self, "crop_spec", _json_normalised(self.crop_spec, "crop_spec"))
    object.__setattr__(self, "teacher", _json_normalised(self.teacher, "teacher"))
    object.__setattr__(self, "temperature", float(self.temperature))
    # Plain Python ints and strs keep the spec JSON-able and equal to its reloaded self.
    for name in ("num_classes", "crop_seed", "topk", "slots_per_image"):
      object.__setattr__(self, name, int(getattr(self, name)))
    for name in ("dataset_name", "dataset_fingerprint", "teacher_fingerprint", "label_format",
                 "teacher_bn_mode"):
      object.__setattr__(self, name, str(getattr(self, name)))
    if not isinstance(self.crop_spec, dict):
      raise ValueError(f"crop_spec: must be a dict, got {self.crop_spec!r}")
    if not self.temperature > 0:
      raise ValueError(f"temperature: must be positive, got {self.temperature}")
    if int(self.slots_per_image) < 1:
      raise ValueError(f"slots_per_image: must be >= 1, got {self.slots_per_image}")
    if self.teacher_bn_mode not in BN_MODES:
      raise ValueError(f"teacher_bn_mode: must be one of {BN_MODES}, got {self.teacher_bn_mode!r}")
    _ = self.fmt  # Validates label_format, num_classes and topk.

  @property
  def fmt(self) -> formats.LabelFormat:
    return formats.LabelFormat(self.label_format, self.num_classes, self.topk)

  @property
  def stored_crops(self) -> bool:
    """Whether rows store their crops (an imported table) rather than rebuild them from a key."""
    return self.crop_spec.get("crops") == STORED_CROPS

  @property
  def cutmix(self) -> bool:
    if self.stored_crops:  # an imported table says whether its crops were CutMixed
      return bool(self.crop_spec["cutmix"])
    return float(self.crop_spec.get("cutmix_alpha", 0.0)) > 0

  @property
  def stored_batch_size(self) -> int:
    """The batch size of a stored-crop table's relabel (its stored batches); 0 for keyed crops."""
    return int(self.crop_spec["batch_size"]) if self.stored_crops else 0

  @property
  def num_positions(self) -> int:
    return int(self.ids.size)

  @property
  def num_rows(self) -> int:
    return self.num_positions * self.slots_per_image

  @property
  def ids_sha256(self) -> str:
    return ids_sha256(self.ids)

  def to_json(self) -> dict[str, Any]:
    """JSON-able dict; the ids themselves go to `ids.npy`, only their count and sha256 stay here."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ids"}
    out["num_ids"] = self.num_positions
    out["ids_sha256"] = self.ids_sha256
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any], ids: np.ndarray) -> "TableSpec":
    """Inverse of `to_json`; raises TableCorruptedError when `ids` do not match the recorded sha."""
    data = dict(data)
    num_ids, sha = data.pop("num_ids"), data.pop("ids_sha256")
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size != num_ids or ids_sha256(ids) != sha:
      raise TableCorruptedError(f"{IDS_FILE}: holds {ids.size} ids whose sha256 does not match "
                                f"the header ({num_ids} ids); the table is corrupted, "
                                f"{RELABEL_HINT}")
    return cls(ids=ids, **data)

  def data_mismatches(self, dataset_name: str, dataset_fingerprint: str, ids: np.ndarray,
                      num_classes: int) -> list[str]:
    """One message per way the table's data (split, pool, classes) differs from a run's."""
    out = []
    if self.dataset_fingerprint != dataset_fingerprint:
      out.append(f"dataset_fingerprint: table has {self.dataset_fingerprint!r}, expected "
                 f"{dataset_fingerprint!r} (the table was made for another data set: "
                 f"{self.dataset_name!r})")
    if self.dataset_name != dataset_name and not _same_folder_moved(
        self.dataset_name, dataset_name, self.dataset_fingerprint == dataset_fingerprint):
      out.append(f"dataset_name: table has {self.dataset_name!r}, expected {dataset_name!r}")
    ids = np.asarray(ids, np.int64)
    if not np.array_equal(self.ids, ids):
      if self.ids.size != ids.size:
        detail = f"{self.ids.size} ids vs {ids.size}"
      else:
        detail = f"same count {self.ids.size} but different ids"
      out.append(f"ids: the table was made for another subset: {detail}")
    if self.num_classes != int(num_classes):
      out.append(f"num_classes: table has {self.num_classes!r}, expected {int(num_classes)!r}")
    return out

  def mismatches(self, expected: "TableSpec") -> list[str]:
    """One message per identity field in which this (the table's) spec differs from `expected`."""
    out = self.data_mismatches(expected.dataset_name, expected.dataset_fingerprint, expected.ids,
                               expected.num_classes)

    def check(name, ours, theirs, why=""):
      if ours != theirs:
        out.append(f"{name}: table has {ours!r}, expected {theirs!r}{why}")

    check("teacher_fingerprint", self.teacher_fingerprint, expected.teacher_fingerprint,
          " (another teacher)")
    check("teacher_bn_mode", self.teacher_bn_mode, expected.teacher_bn_mode)
    check("crop_seed", self.crop_seed, expected.crop_seed)
    check("crop_spec", self.crop_spec, expected.crop_spec)
    check("temperature", self.temperature, expected.temperature)
    check("label_format", self.label_format, expected.label_format)
    check("topk", self.topk, expected.topk)
    check("slots_per_image", self.slots_per_image, expected.slots_per_image)
    return out


def _metadata_fields(spec: TableSpec) -> tuple:
  base = STORED_METADATA if spec.stored_crops else BASE_METADATA
  return base + (CUTMIX_METADATA if spec.cutmix else ())


def metadata_dtype(spec: TableSpec) -> np.dtype:
  """Packed dtype of a row's metadata: 9 bytes, 23 with CutMix (stored crops: 13, 27)."""
  return np.dtype(list(_metadata_fields(spec)))


def row_dtype(spec: TableSpec) -> np.dtype:
  """Packed little-endian dtype of one stored row: metadata fields, then payload fields."""
  payload = spec.fmt.payload_dtype
  fields = list(_metadata_fields(spec))
  fields += [(name, payload.fields[name][0]) for name in payload.names]
  return np.dtype(fields)


def bytes_per_row(spec: TableSpec) -> int:
  """Bytes of one stored row (metadata + payload)."""
  return row_dtype(spec).itemsize


def _dtype_json(dtype: np.dtype) -> Any:
  return json.loads(json.dumps(dtype.descr))


def shard_name(shard: int) -> str:
  return f"shard-{shard:05d}.bin"


def _num_shards(num_positions: int, positions_per_shard: int) -> int:
  return -(-num_positions // positions_per_shard)


def _file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _fsync_dir(path: str) -> None:
  # Makes a rename durable; not every file system lets a directory be opened, so best effort.
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(path) or ".")


def _json_bytes(data: dict[str, Any]) -> bytes:
  return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def _state(spec: TableSpec, positions_per_shard: int,
           shards: dict[int, dict[str, Any]]) -> dict[str, Any]:
  return {
      "format_version": FORMAT_VERSION,
      "spec": spec.to_json(),
      "positions_per_shard": positions_per_shard,
      "num_shards": _num_shards(spec.num_positions, positions_per_shard),
      "row_dtype": _dtype_json(row_dtype(spec)),
      "bytes_per_row": bytes_per_row(spec),
      "shards": [shards[s] for s in sorted(shards)]
  }


def _table_directory(directory: str) -> str:
  return os.path.normpath(os.fspath(directory))


class TableWriter:
  """Writes a table shard by shard into `directory.partial/`, resumable, renamed when finished."""

  def __init__(self, directory: str, spec: TableSpec, positions_per_shard: int):
    if int(positions_per_shard) < 1:
      raise ValueError(f"positions_per_shard: must be >= 1, got {positions_per_shard}")
    self.directory = _table_directory(directory)
    self.partial = self.directory + PARTIAL_SUFFIX
    self.spec = spec
    self.positions_per_shard = int(positions_per_shard)
    self.row_dtype = row_dtype(spec)
    self.num_shards = _num_shards(spec.num_positions, self.positions_per_shard)
    if os.path.exists(os.path.join(self.directory, HEADER_FILE)):
      raise FileExistsError(f"{self.directory} already holds a finished soft-label table; delete "
                            "it or choose another directory to relabel again")
    if os.path.exists(self.directory) and (not os.path.isdir(self.directory)
                                           or os.listdir(self.directory)):
      raise FileExistsError(f"{self.directory} exists and is not a soft-label table; remove it or "
                            "choose another directory")
    self._shards = self._resume()

  def _resume(self) -> dict[int, dict[str, Any]]:
    """The verified finished shards of a `.partial` dir with the same spec; else starts afresh."""
    try:
      kept = self._verified_partial_shards()
    except (OSError, ValueError, KeyError, TypeError, IndexError):
      kept = None  # An unreadable progress record is treated like none: start afresh.
    if kept is None:
      shutil.rmtree(self.partial, ignore_errors=True)
      os.makedirs(self.partial)
      with open(os.path.join(self.partial, IDS_FILE), "wb") as f:
        np.save(f, self.spec.ids.astype("<i8"))
        f.flush()
        os.fsync(f.fileno())
      kept = {}
    for name in os.listdir(self.partial):
      if name.endswith(".tmp"):
        os.remove(os.path.join(self.partial, name))
    self._write_progress(kept)
    return kept

  def _verified_partial_shards(self) -> dict[int, dict[str, Any]] | None:
    if not os.path.isdir(self.partial):
      return None
    # After finalize writes the header it drops progress.json, so either records the state.
    for name in (PROGRESS_FILE, HEADER_FILE):
      path = os.path.join(self.partial, name)
      if os.path.exists(path):
        with open(path) as f:
          state = json.load(f)
        break
    else:
      return None
    old = TableSpec.from_json(state["spec"], np.load(os.path.join(self.partial, IDS_FILE)))
    if (state["format_version"] != FORMAT_VERSION or old.mismatches(self.spec)
        or state["positions_per_shard"] != self.positions_per_shard
        or state["row_dtype"] != _dtype_json(self.row_dtype)):
      return None
    kept = {}
    for entry in state["shards"]:
      shard = int(entry["file"][len("shard-"):-len(".bin")])
      path = os.path.join(self.partial, entry["file"])
      if (entry == self._shard_entry(shard, entry["sha256"]) and os.path.exists(path)
          and os.path.getsize(path) == entry["bytes"] and _file_sha256(path) == entry["sha256"]):
        kept[shard] = entry
    return kept

  def _shard_entry(self, shard: int, sha: str) -> dict[str, Any]:
    rows = self.shard_rows(shard)
    return {
        "file": shard_name(shard),
        "rows": rows,
        "bytes": rows * self.row_dtype.itemsize,
        "sha256": sha
    }

  def _write_progress(self, shards: dict[int, dict[str, Any]]) -> None:
    state = _state(self.spec, self.positions_per_shard, shards)
    _atomic_write(os.path.join(self.partial, PROGRESS_FILE), _json_bytes(state))

  def completed_shards(self) -> set[int]:
    return set(self._shards)

  def shard_positions(self, shard: int) -> tuple[int, int]:
    """Pool positions `[start, stop)` that shard `shard` holds."""
    if not 0 <= shard < self.num_shards:
      raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
    start = shard * self.positions_per_shard
    return start, min(start + self.positions_per_shard, self.spec.num_positions)

  def shard_rows(self, shard: int) -> int:
    start, stop = self.shard_positions(shard)
    return (stop - start) * self.spec.slots_per_image

  def write_shard(self, shard: int, rows: np.ndarray) -> None:
    """Writes one shard's rows ((position, slot) order) durably and records it as finished."""
    expected_rows = self.shard_rows(shard)
    if not isinstance(rows, np.ndarray) or rows.dtype != self.row_dtype:
      raise ValueError(f"rows: expected dtype {self.row_dtype}, got "
                       f"{getattr(rows, 'dtype', type(rows))}")
    if rows.shape != (expected_rows,):
      raise ValueError(f"rows: shard {shard} holds {expected_rows} rows (positions "
                       f"{self.shard_positions(shard)} x {self.spec.slots_per_image} slots), got "
                       f"shape {rows.shape}")
    data = np.ascontiguousarray(rows).tobytes()
    path = os.path.join(self.partial, shard_name(shard))
    # A shard cut short by a full disk frees its space; a rerun writes it again.
    with disk_space.writing(self.directory, f"shard {shard} of the soft-label table", len(data)):
      with disk_space.removed_on_failure(path + ".tmp"), open(path + ".tmp", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        faults.point("table_shard_write")
    os.replace(path + ".tmp", path)
    self._shards[shard] = self._shard_entry(shard, hashlib.sha256(data).hexdigest())
    self._write_progress(self._shards)

  def finalize(self) -> "SoftLabelTable":
    """Writes the header and renames the finished table into place; returns it opened."""
    missing = sorted(set(range(self.num_shards)) - set(self._shards))
    if missing:
      raise ValueError(f"cannot finalize {self.directory}: shards {missing} are not written")
    header = _state(self.spec, self.positions_per_shard, self._shards)
    header["label_bytes"] = sum(entry["bytes"] for entry in self._shards.values())
    ids_bytes = os.path.getsize(os.path.join(self.partial, IDS_FILE))
    # table_bytes counts header.json itself, so iterate until its own length stops changing.
    header["table_bytes"] = 0
    while True:
      size = header["label_bytes"] + ids_bytes + len(_json_bytes(header))
      if size == header["table_bytes"]:
        break
      header["table_bytes"] = size
    _atomic_write(os.path.join(self.partial, HEADER_FILE), _json_bytes(header))
    os.remove(os.path.join(self.partial, PROGRESS_FILE))
    if os.path.isdir(self.directory):
      os.rmdir(self.directory)  # Empty (checked on construction); os.replace needs it gone.
    os.replace(self.partial, self.directory)
    _fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
    return SoftLabelTable.open(self.directory, expected=self.spec, verify_checksums=False)


class SoftLabelTable:
  """A finished table, read through read-only memory maps of its shards."""

  def __init__(self, directory: str, header: dict[str, Any], spec: TableSpec):
    self.directory = directory
    self.spec = spec
    self.header = header
    self.positions_per_shard = int(header["positions_per_shard"])
    self.num_shards = int(header["num_shards"])
    self.row_dtype = row_dtype(spec)
    self.fmt = spec.fmt
    self._maps: dict[int, np.memmap] = {}

  @classmethod
  def open(cls, directory: str, expected: TableSpec | None = None,
           verify_checksums: bool = True) -> "SoftLabelTable":
    """Opens and checks a table; raises TableError saying what is wrong and how to fix it."""
    directory = _table_directory(directory)
    header_path = os.path.join(directory, HEADER_FILE)
    if not os.path.exists(header_path):
      partial = directory if directory.endswith(PARTIAL_SUFFIX) else directory + PARTIAL_SUFFIX
      if os.path.isdir(partial) or os.path.exists(os.path.join(directory, PROGRESS_FILE)):
        raise TableInterruptedError(
            f"soft-label table {directory} is incomplete: relabel was interrupted (unfinished "
            f"shards in {partial}); {RELABEL_HINT} with the same settings to resume")
      raise TableMissingError(f"no soft-label table at {directory} (no {HEADER_FILE}); "
                              f"{RELABEL_HINT} to build it")
    try:
      with open(header_path) as f:
        header = json.load(f)
      version = header["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise TableCorruptedError(f"{header_path} is unreadable ({e}); delete {directory} and "
                                f"{RELABEL_HINT}") from e
    if version != FORMAT_VERSION:
      raise TableCorruptedError(f"{directory} has table format version {version}, this code "
                                f"reads {FORMAT_VERSION}; {RELABEL_HINT}")
    ids_path = os.path.join(directory, IDS_FILE)
    if not os.path.exists(ids_path):
      raise TableCorruptedError(f"{ids_path} is missing; delete {directory} and {RELABEL_HINT}")
    spec = TableSpec.from_json(header["spec"], np.load(ids_path))
    if header["row_dtype"] != _dtype_json(row_dtype(spec)):
      raise TableCorruptedError(f"{directory}: the header's row layout {header['row_dtype']} is "
                                f"not the layout of its spec; {RELABEL_HINT}")
    table = cls(directory, header, spec)
    table._check_shards(verify_checksums)
    if expected is not None:
      problems = spec.mismatches(expected)
      if problems:
        raise TableMismatchError(
            f"soft-label table {directory} does not match this run: " + "; ".join(problems)
            + f". Point to the right table or {RELABEL_HINT} to build one for these settings")
    return table

  def _check_shards(self, verify_checksums: bool) -> None:
    entries = {entry["file"]: entry for entry in self.header["shards"]}
    for shard in range(self.num_shards):
      name = shard_name(shard)
      path = os.path.join(self.directory, name)
      entry = entries.get(name)
      rows = self._shard_rows(shard)
      fix = f"delete {self.directory} and {RELABEL_HINT}"
      if entry is None or entry["rows"] != rows:
        raise TableCorruptedError(f"{self.directory}: the header does not list {name} with "
                                  f"{rows} rows; {fix}")
      if not os.path.exists(path):
        raise TableCorruptedError(f"shard {name} of {self.directory} is missing; {fix}")
      size = os.path.getsize(path)
      if size != rows * self.bytes_per_row:
        raise TableCorruptedError(f"shard {path} has {size} bytes, expected {rows} rows x "
                                  f"{self.bytes_per_row} = {rows * self.bytes_per_row} "
                                  f"(truncated?); {fix}")
      if verify_checksums and _file_sha256(path) != entry["sha256"]:
        raise TableCorruptedError(f"shard {path} is corrupted: its sha256 checksum does not "
                                  f"match the header; {fix}")

  def _shard_rows(self, shard: int) -> int:
    start = shard * self.positions_per_shard
    stop = min(start + self.positions_per_shard, self.spec.num_positions)
    return (stop - start) * self.spec.slots_per_image

  def _shard_map(self, shard: int) -> np.memmap:
    if shard not in self._maps:
      self._maps[shard] = np.memmap(os.path.join(self.directory,
                                                 shard_name(shard)), dtype=self.row_dtype, mode="r",
                                    shape=(self._shard_rows(shard),))
    return self._maps[shard]

  @property
  def num_positions(self) -> int:
    return self.spec.num_positions

  @property
  def num_rows(self) -> int:
    return self.spec.num_rows

  @property
  def bytes_per_row(self) -> int:
    return self.row_dtype.itemsize

  @property
  def payload_bytes_per_row(self) -> int:
    return self.fmt.payload_bytes_per_row

  @property
  def metadata_bytes_per_row(self) -> int:
    return self.bytes_per_row - self.payload_bytes_per_row

  @property
  def label_bytes(self) -> int:
    """Exact bytes of all rows (payload + metadata)."""
    return int(self.header["label_bytes"])

  @property
  def table_bytes(self) -> int:
    """Bytes of every file of the table, header and ids included."""
    return int(self.header["table_bytes"])

  def rows(self, position: int) -> np.ndarray:
    """The `slots_per_image` rows of one pool position (a copy)."""
    if not 0 <= position < self.num_positions:
      raise IndexError(f"position {position} out of range [0, {self.num_positions})")
    shard, local = divmod(int(position), self.positions_per_shard)
    slots = self.spec.slots_per_image
    return np.array(self._shard_map(shard)[local * slots:(local + 1) * slots])

  def row(self, position: int, slot: int) -> np.void:
    if not 0 <= slot < self.spec.slots_per_image:
      raise IndexError(f"slot {slot} out of range [0, {self.spec.slots_per_image})")
    return self.rows(position)[slot]

  def gather(self, positions: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Rows for parallel arrays of positions and slots, as one structured array."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    slots = np.broadcast_to(np.asarray(slots, dtype=np.int64), positions.shape)
    if positions.size and (positions.min() < 0 or positions.max() >= self.num_positions):
      raise IndexError(f"positions out of range [0, {self.num_positions})")
    if slots.size and (slots.min() < 0 or slots.max() >= self.spec.slots_per_image):
      raise IndexError(f"slots out of range [0, {self.spec.slots_per_image})")
    out = np.empty(positions.size, dtype=self.row_dtype)
    shard, local = np.divmod(positions, self.positions_per_shard)
    index = local * self.spec.slots_per_image + slots
    for s in np.unique(shard):
      sel = shard == s
      out[sel] = self._shard_map(int(s))[index[sel]]
    return out

  def batch_orders(self) -> np.ndarray:
    """A stored-crop table's sampler order: `[slots, positions]`, the pool positions of each
    relabel epoch in the order its batches hold them (from the rows' `sampler_rank`)."""
    if not self.spec.stored_crops:
      raise ValueError(f"{self.directory}: a keyed table has no stored sampler order (its batches "
                       "are the keyed relabel order, relabel_batches.relabel_order)")
    slots, positions = self.spec.slots_per_image, self.num_positions
    ranks = np.empty((positions, slots), np.int64)
    for shard in range(self.num_shards):
      start = shard * self.positions_per_shard
      rows = self._shard_map(shard)["sampler_rank"].reshape(-1, slots)
      ranks[start:start + rows.shape[0]] = rows
    orders = np.argsort(ranks, axis=0, kind="stable").T
    for slot in range(slots):
      if not np.array_equal(ranks[orders[slot], slot], np.arange(positions)):
        raise TableCorruptedError(f"{self.directory}: the sampler ranks of slot {slot} are not a "
                                  f"permutation of 0..{positions - 1}; the table is corrupted")
    orders.setflags(write=False)
    return orders

  def rows_at(self, positions: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The stored rows of many (position, slot) pairs at once (a copy), in order."""
    positions = np.asarray(positions, np.int64)
    slots = np.asarray(slots, np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= self.num_positions):
      raise IndexError(f"positions out of range [0, {self.num_positions})")
    if slots.size and (slots.min() < 0 or slots.max() >= self.spec.slots_per_image):
      raise IndexError(f"slots out of range [0, {self.spec.slots_per_image})")
    shards, local = np.divmod(positions, self.positions_per_shard)
    flat = local * self.spec.slots_per_image + slots
    out = np.empty(len(positions), self.row_dtype)
    for shard in np.unique(shards):
      at = shards == shard
      out[at] = self._shard_map(int(shard))[flat[at]]
    return out

  def probs(self, position: int, slot: int) -> np.ndarray:
    """Decoded float32 probabilities `[C]` of one stored crop."""
    return formats.decode(self.rows(position)[slot:slot + 1], self.fmt)[0]

  def metadata(self, position: int, slot: int) -> dict[str, Any]:
    """The crop metadata of one stored crop as Python values."""
    row = self.row(position, slot)
    if self.spec.stored_crops:
      out = {
          "pixel_box": tuple(int(v) for v in row["pixel_box"]),
          "flip": bool(row["flip"]),
          "sampler_rank": int(row["sampler_rank"])
      }
    else:
      out = {"box": tuple(float(v) for v in row["box"]), "flip": bool(row["flip"])}
    if self.spec.cutmix:
      out["partner_id"] = int(row["partner_id"])
      out["mix_lambda"] = float(row["mix_lambda"])
      out["cut_box"] = tuple(int(v) for v in row["cut_box"])
    return out


def open_imported(directory: str, *, dataset_name: str, dataset_fingerprint: str, ids: np.ndarray,
                  num_classes: int, image_size: int, temperature: float) -> SoftLabelTable:
  """An imported (stored-crop) table a run reads instead of relabelling, checked against the run.

  The table must be of the run's data (split fingerprint, pool ids, classes), its crops of the
  run's `image_size`, and its labels at the run's `temperature` (the official trainers take one T
  for the stored labels and the student: train_FKD.py `softmax(soft_label / T)`).
  """
  table = SoftLabelTable.open(directory)
  spec = table.spec
  if not spec.stored_crops:
    raise TableMismatchError(
        f"config.imported_table_dir: {table.directory} was relabelled here (its crops are keyed), "
        "not imported; point config.label_table_dir at it, or import a folder with "
        "python -m hardlabel_jax.fkd_labels")
  problems = spec.data_mismatches(dataset_name, dataset_fingerprint, ids, num_classes)
  size = int(spec.crop_spec["output_size"])
  if size != int(image_size):
    problems.append(f"image_size: the table's crops are {size} px, config.image_size is "
                    f"{image_size}")
  if spec.temperature != float(temperature):
    problems.append(f"temperature: the table holds softmax(z / {spec.temperature:g}), "
                    f"config.temperature is {temperature:g}")
  if problems:
    raise TableMismatchError(f"config.imported_table_dir: the imported table {table.directory} "
                             "does not fit this run: " + "; ".join(problems))
  return table


def _check_keep_fraction(keep_fraction: float) -> None:
  if not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f"keep_fraction: must be in (0, 1], got {keep_fraction}")


def num_kept_slots(slots: int, keep_fraction: float) -> int:
  """`max(1, round(keep_fraction * slots))`, halves rounded up."""
  _check_keep_fraction(keep_fraction)
  return max(1, int(np.floor(keep_fraction * slots + 0.5)))


def kept_slots(seed: int, example_id: int, slots: int, keep_fraction: float) -> np.ndarray:
  """Sorted random subset of an image's slots that label pruning keeps; pure in (seed, id)."""
  if slots < 1:
    raise ValueError(f"slots: must be >= 1, got {slots}")
  count = num_kept_slots(slots, keep_fraction)
  rng = np.random.default_rng(np.random.SeedSequence([seed, example_id, _KEEP_STREAM]))
  return np.sort(rng.choice(slots, size=count, replace=False)).astype(np.int64)


def draw_slot(seed: int, example_id: int, epoch: int, kept: np.ndarray) -> int:
  """One of `kept`, uniformly; a pure function of (seed, example_id, epoch)."""
  kept = np.asarray(kept)
  if kept.size == 0:
    raise ValueError("kept: no slots to draw from")
  rng = np.random.default_rng(np.random.SeedSequence([seed, example_id, epoch, _DRAW_STREAM]))
  return int(kept[rng.integers(kept.size)])


def draw_slots(seed: int, example_ids: np.ndarray, epochs: np.ndarray,
               kept_counts: np.ndarray) -> np.ndarray:
  """`draw_slot`'s index into each image's kept slots, for many (id, epoch) pairs at once.

  Returns int64 [N] indices (`kept[index]` is the slot): the same draws as `draw_slot`, from
  the keys' NumPy streams computed together (`keyed_draws`), a rejected Lemire draw redone alone.
  """
  example_ids = np.asarray(example_ids, np.int64)
  epochs = np.asarray(epochs, np.int64)
  kept_counts = np.asarray(kept_counts, np.int64)
  if kept_counts.size and kept_counts.min() < 1:
    raise ValueError("kept: no slots to draw from")
  keys = np.stack([
      np.full_like(example_ids, seed), example_ids, epochs,
      np.full_like(example_ids, _DRAW_STREAM)
  ], axis=1)
  draws = kept_counts > 1  # integers(1) returns 0 without drawing
  index, rejected = keyed_draws.Streams(keys).bounded(draws, np.maximum(kept_counts, 1))
  index = np.where(draws, index.astype(np.int64), 0)
  for i in np.flatnonzero(rejected):
    index[i] = draw_slot(seed, int(example_ids[i]), int(epochs[i]), np.arange(kept_counts[i]))
  return index


def uses_lpld_batches(pruning: str, keep_fraction: float) -> bool:
  """Whether a run replays stored batches: `'lpld_batches'` at a fraction below 1, or
  `'hald_batches'` / `'fkd_batches'` at any fraction."""
  # A fraction of 1 keeps every crop in either mode and replays them per image, as LPLD's own
  # script does at ratio 0 (main_table_in1k.sh: `--prune_metric order --granularity epoch`).
  if pruning not in LABEL_PRUNING_MODES:
    raise ValueError(f"pruning: must be one of {LABEL_PRUNING_MODES}, got {pruning!r}")
  _check_keep_fraction(keep_fraction)
  return pruning in (HALD_BATCHES, FKD_BATCHES) or (pruning == LPLD_BATCHES and keep_fraction < 1.0)


@functools.lru_cache(maxsize=8)
def _slot_order(seed: int, num_positions: int, slot: int) -> np.ndarray:
  # The relabel order of the slot (data/relabel_batches.py): stored batches are then relabel
  # batches (several consecutive ones when the run's batch is a multiple of relabel_batch_size),
  # so a kept batch holds every CutMix partner and BSSL batch-mate of its crops, as in the
  # official code, where the stored batches are the relabel batches.
  order = relabel_batches.relabel_order(num_positions, slot, seed)
  order.setflags(write=False)
  return order


@dataclasses.dataclass(frozen=True)
class StoredBatches:
  """LPLD's stored batches over a table's (position, slot) grid, the kept ones and a run's draws."""

  # Official (he-y/soft-label-pruning-for-dataset-distillation, relabel_and_validate/
  # train_FKD_label_pruning_batch.py `main`; utils_pruning.py `EpochBatchSampler`; utils_fkd.py
  # `get_img2batch_idx_list`): relabelling stores epoch after epoch of seeded shuffled batches
  # (`drop_last=False`), numbered across epochs, `bpe = ceil(N / B)` per epoch; training keeps the
  # pool `range(total)[:int((1 - r) * total)]` and builds each epoch of `bpe` steps from
  # `torch.randint(len(pool))` draws, with replacement, a drawn last batch of an epoch replaced by
  # the batch before it ("drop last batch"). Here slot `s` plays relabel epoch `s`: stored batch
  # `b` is slot `b // bpe` of the positions `order_s[k B:(k + 1) B]`, `k = b % bpe`, `order_s` a
  # permutation that is a pure function of `(seed, s)`, or, for an imported table, the order its
  # rows store (`orders`): then stored batch e·bpe + b is the official relabel's epoch e, batch b.

  num_positions: int
  slots: int
  batch_size: int
  seed: int  # of the batch grouping: the table's crop seed, so the kept rows are the table's
  keep_fraction: float
  # 'uniform': every step draws a kept batch with replacement (LPLD); 'permutation': steps walk
  # seeded permutations of the drawable batches, one pass after another (HALD's soft phase);
  # 'sequential': step t replays drawable batch t in stored order, again from the first after the
  # last (SRe²L's train_FKD.py; it refuses --epochs above the stored ones instead).
  draw_rule: str = "uniform"
  # `[slots, num_positions]`: the pool positions of every slot in stored-batch order (an imported
  # table's sampler order, `SoftLabelTable.batch_orders`); None: the keyed relabel order.
  orders: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  def __post_init__(self):
    _check_keep_fraction(self.keep_fraction)
    rules = tuple(_DRAW_RULES.values())
    if self.draw_rule not in rules:
      raise ValueError(f"draw_rule: one of {rules}, got {self.draw_rule!r}")
    if self.slots < 1 or self.batch_size < 1:
      raise ValueError(f"slots and batch_size: must be >= 1, got {self.slots}, {self.batch_size}")
    if self.orders is not None and np.shape(self.orders) != (self.slots, self.num_positions):
      raise ValueError(f"orders: expected shape {(self.slots, self.num_positions)} (slots x "
                       f"positions), got {np.shape(self.orders)}")
    if self.num_positions < self.batch_size:
      mode = next(m for m, rule in _DRAW_RULES.items() if rule == self.draw_rule)
      raise ValueError(f"label_pruning='{mode}': the pool of {self.num_positions} images "
                       f"is smaller than one global batch of {self.batch_size}, so no stored "
                       "batch fills a step; use label_pruning='per_image'")
    if self.num_kept < 1:
      raise ValueError(f"keep_fraction (config.label_keep_fraction) {self.keep_fraction} keeps "
                       f"floor({self.keep_fraction} x {self.num_batches}) = 0 of the "
                       f"{self.num_batches} stored batches ({self.slots} slots x "
                       f"{self.batches_per_slot} batches of {self.batch_size}); raise it")

  @property
  def batches_per_slot(self) -> int:
    return -(-self.num_positions // self.batch_size)

  @property
  def num_batches(self) -> int:
    return self.slots * self.batches_per_slot

  @property
  def num_kept(self) -> int:
    """`floor(keep_fraction x num_batches)`: the official `int((1 - r) * total)`."""
    # The epsilon absorbs the binary representation of a decimal fraction (0.29 x 100 -> 28.99).
    return int(np.floor(self.keep_fraction * self.num_batches + 1e-9))

  def _is_last_of_slot(self, index: np.ndarray) -> np.ndarray:
    index = np.asarray(index)
    if self.batches_per_slot == 1:
      # No batch before it to replace it with, and it is full (N = B): it stays drawable.
      return np.zeros(index.shape, dtype=bool)
    return index % self.batches_per_slot == self.batches_per_slot - 1

  def drawable(self) -> np.ndarray:
    """The kept batches a draw can return: the kept pool less each slot's last batch (LPLD drops
    it always; HALD's permutation only where it is short, as a step has one shape)."""
    kept = np.arange(self.num_kept, dtype=np.int64)
    if self.draw_rule != "uniform" and self.num_positions % self.batch_size == 0:
      return kept
    return kept[~self._is_last_of_slot(kept)]

  @property
  def kept_rows(self) -> int:
    """Rows (distinct stored crops) of the drawable batches: each is a full batch."""
    return int(self.drawable().size) * self.batch_size

  def batch(self, index: int) -> tuple[np.ndarray, int]:
    """The pool positions and the slot of stored batch `index` (the last of a slot may be short)."""
    if not 0 <= index < self.num_batches:
      raise IndexError(f"stored batch {index} out of range [0, {self.num_batches})")
    slot, k = divmod(int(index), self.batches_per_slot)
    order = (self.orders[slot] if self.orders is not None else _slot_order(
        self.seed, self.num_positions, slot))
    return order[k * self.batch_size:(k + 1) * self.batch_size], slot

  def draw(self, draw_seed: int, step: int) -> int:
    """The stored batch training step `step` replays; a pure function of (draw_seed, step)."""
    if self.draw_rule == "sequential":
      # train_FKD.py: epoch e's loader yields batch_0 .. batch_{bpe-1} of epoch_e (the sampler
      # replays the relabel's order). A short last batch is not drawable here (a step has one
      # shape), so an epoch is the slot's full batches.
      drawable = self.drawable()
      return int(drawable[int(step) % drawable.size])
    if self.draw_rule == "permutation":
      # train_fkd.py: `pool = torch.randperm(args.n * batch_num_per_epoch)` (seeded fkd_seed +
      # times), each epoch takes the next batch_num_per_epoch entries and a fresh permutation
      # follows an exhausted pool. A short last batch of a relabel epoch (drop_last=False there)
      # is not drawable here (a step has one shape): the drawable batches are permuted instead.
      drawable = self.drawable()
      pass_index, offset = divmod(int(step), drawable.size)
      rng = np.random.default_rng(
          np.random.SeedSequence([draw_seed, pass_index, _BATCH_PASS_STREAM]))
      return int(drawable[rng.permutation(drawable.size)[offset]])
    # Every step draws independently and uniformly, so an epoch (`bpe` steps) needs no state of
    # its own and a resumed run redraws exactly the batches it would have drawn.
    rng = np.random.default_rng(np.random.SeedSequence([draw_seed, step, _BATCH_DRAW_STREAM]))
    index = int(rng.integers(self.num_kept))
    return index - 1 if bool(self._is_last_of_slot(index)) else index

  def row(self, draw_seed: int, position: int) -> tuple[int, int]:
    """Global stream position -> the (pool position, slot) it replays."""
    step, within = divmod(int(position), self.batch_size)
    positions, slot = self.batch(self.draw(draw_seed, step))
    return int(positions[within]), slot


def lpld_batches(spec: TableSpec, pruning: str, keep_fraction: float,
                 global_batch: int) -> StoredBatches | None:
  """The table's stored batches for a run with `global_batch`, or None unless the run replays
  stored batches (`uses_lpld_batches`).

  A stored-crop table's batches are its relabel's (`spec.stored_batch_size`, its sampler order:
  `SoftLabelTable.batch_orders`, which the replay supplies), so a run must step in batches of that
  size, as train_FKD.py refuses a `--batch-size` other than the relabel's.
  """
  if not uses_lpld_batches(pruning, keep_fraction):
    return None
  if spec.stored_crops and global_batch != spec.stored_batch_size:
    raise ValueError(
        f"config.global_batch_size: {global_batch}, but label_pruning={pruning!r} replays the "
        f"imported table's stored batches of {spec.stored_batch_size} crops (its relabel's batch "
        "size; train_FKD.py refuses another --batch-size too); set global_batch_size="
        f"{spec.stored_batch_size} or label_pruning='per_image'")
  return StoredBatches(spec.num_positions, spec.slots_per_image, global_batch, spec.crop_seed,
                       keep_fraction, _DRAW_RULES[pruning])


def kept_label_bytes(table: SoftLabelTable | TableSpec, seed: int, keep_fraction: float,
                     pruning: str = PER_IMAGE, global_batch: int = 0) -> int:
  """Exact bytes of the rows a run can use: its kept crops (per image, or LPLD's batches) x row."""
  del seed  # Only which rows are kept depends on a seed, never how many.
  spec = table.spec if isinstance(table, SoftLabelTable) else table
  batches = lpld_batches(spec, pruning, keep_fraction, global_batch)
  if batches is not None:
    return batches.kept_rows * bytes_per_row(spec)
  return spec.num_positions * num_kept_slots(spec.slots_per_image,
                                             keep_fraction) * bytes_per_row(spec)
