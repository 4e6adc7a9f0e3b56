"""SRe²L's FKD soft-label folders: one imported as a soft-label table, a table exported as one.

The format, as VILA-Lab/SRe2L writes it (`SRe2L/relabel/generate_soft_label.py` `main_worker`
and `save`, `relabel/utils_fkd.py`) and reads it (`validate/train_FKD.py` `train`,
`utils_fkd.ImageFolder_FKD_MIX`, `get_FKD_info`, `get_img2batch_idx_list`, and the patched
`torch.utils.data._utils.fetch._MapDatasetFetcher` of `validate/README.md`):

- `<fkd_path>/epoch_{e}/batch_{b}.tar`, a `torch.save` of the list `[coords, flip, mix_index,
  mix_lam, mix_bbox, soft_label]` of relabel epoch e's b-th DataLoader batch of n images:
  - `coords` float32 [n, 4]: `RandomResizedCropWithCoords`'s box as fractions of the image,
    `(i / H, j / W, h / H, w / W)` (top, left, height, width; computed in float64, then float32);
  - `flip` bool [n]: `RandomHorizontalFlipWithRes`, applied after the crop;
  - `mix_index` int64 [n]: with `--mix-type cutmix`, image k's partner is image `mix_index[k]` of
    the same batch (`torch.randperm`), else None;
  - `mix_lam`: the batch's Beta(α, α) draw (not corrected for the box's clipping; train_FKD.py
    does not read it under CutMix), None without mixing;
  - `mix_bbox`: `[bbx1, bby1, bbx2, bby2]` (numpy ints) of the batch's one box, pasted as
    `images[:, :, bbx1:bbx2, bby1:bby2]` (rows, then columns of the crop), None without mixing;
  - `soft_label` [n, C]: the teacher's **raw logits** (eval mode) on the mixed crops, float16
    under `--use-fp16` (relabel.sh); the trainer takes `softmax(soft_label / T)` with its own -T
    (20 in train_FKD.sh), so a table here stores `softmax(z / T)` for the T given at import.
- Images: torchvision's `ImageFolder(root)` order (class directories sorted, then `os.walk` file
  names sorted, its IMG_EXTENSIONS); the files do not name their images.
- Batch order: a `DataLoader(RandomSampler(generator seeded --fkd-seed 42), batch_size=-b,
  drop_last=False)`; epoch e is the sampler's e-th pass cut into batches, the last one short.
  The trainer finds each batch's file from the first image index of its own batch
  (`get_img2batch_idx_list`, which replays the sampler with seed 42 whatever `--fkd_seed`), so any
  difference in image count, order, batch size or seed is a KeyError there (SRe²L issues #1, #21)
  or, worse, a silently wrong file; an unpatched fetcher never loads a batch ("config is not
  loaded", #17). `get_FKD_info` counts every entry of `<fkd_path>` as an epoch and takes the batch
  size from `epoch_0/batch_0`. Its plain `torch.load` cannot read a CutMix file on torch >= 2.6,
  whose weights-only default refuses mix_bbox's numpy ints; `load_batch` allows exactly those.

Import therefore replays the sampler with the installed torch (`sampler_orders`), maps the
ImageFolder order onto this library's example ids (`image_folder_order`), and checks every file
against what the sampler says it holds before anything is written: one error names the first
mismatch (a missing or extra file, a batch of the wrong size, a label width that is not the class
count, a mix_index outside its batch, a box that is no RandomResizedCrop box of its image). Each
row stores the exact pixel box the official replay cuts (`table.STORED_METADATA`), so the replay
(`data/replay.py` `StoredCrops`) and the export reproduce the crops bit for bit at any image size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
from PIL import Image
import torch

from hardlabel_jax import disk_space
from hardlabel_jax import metrics_log
from hardlabel_jax.data import crops
from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib

EPOCH_DIR = "epoch_{}"
BATCH_FILE = "batch_{}.tar"
_EPOCH_NAME = re.compile(r"epoch_(\d+)")
_BATCH_NAME = re.compile(r"batch_(\d+)\.tar")
# generate_soft_label.py's --fkd-seed and train_FKD.sh's -T.
DEFAULT_SEED = 42
DEFAULT_TEMPERATURE = 20.0
# torchvision/datasets/folder.py IMG_EXTENSIONS: the files an ImageFolder serves.
TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# relabel.sh saves logits with --use-fp16; generate_soft_label.py's default is float32.
LABEL_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# What torch.load may unpickle from a batch file besides tensors: mix_bbox's numpy ints
# (np.clip of Python ints), under the module name of NumPy 2 and of NumPy 1.
_NUMPY_GLOBALS = [
    np._core.multiarray.scalar,  # pylint: disable=protected-access
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # pylint: disable=protected-access
    np.dtype,
    type(np.dtype(np.int64)),
    type(np.dtype(np.int32)),
    type(np.dtype(np.float64)),
]
_SHARD_BYTES = 64 << 20  # as relabel's shards


class FkdFolderError(ValueError):
  """An FKD folder that does not fit the set it is imported for, or a table that FKD cannot hold."""


@dataclasses.dataclass(frozen=True)
class FkdBatch:
  """One `batch_{b}.tar`: n crops of one relabel batch (module docstring)."""

  coords: np.ndarray  # float32 [n, 4]
  flip: np.ndarray  # bool [n]
  mix_index: np.ndarray | None  # int64 [n]
  mix_lambda: float | None
  mix_bbox: tuple[int, int, int, int] | None  # bbx1, bby1, bbx2, bby2
  logits: np.ndarray  # float16 / float32 [n, C]

  @property
  def size(self) -> int:
    return int(self.flip.shape[0])


def _tensor(value: Any, name: str, path: str) -> np.ndarray:
  if not isinstance(value, torch.Tensor):
    raise FkdFolderError(f"{path}: {name} is a {type(value).__name__}, not a tensor")
  return value.detach().cpu().numpy()


def load_batch(path: str) -> FkdBatch:
  """Reads one batch file (tensors and numpy ints only: no code runs), its structure checked."""
  try:
    with torch.serialization.safe_globals(_NUMPY_GLOBALS):
      loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle, zip and runtime errors alike
    raise FkdFolderError(f"{path}: not a readable torch.save batch file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]})") from e
  if not isinstance(loaded, (list, tuple)) or len(loaded) != 6:
    raise FkdFolderError(
        f"{path}: holds {type(loaded).__name__} "
        f"{len(loaded) if isinstance(loaded, (list, tuple)) else ''}; expected the "
        "list [coords, flip, mix_index, mix_lam, mix_bbox, soft_label]")
  coords, flip, mix_index, mix_lam, mix_bbox, logits = loaded
  coords = _tensor(coords, "coords", path)
  flip = _tensor(flip, "flip", path)
  logits = _tensor(logits, "soft_label", path)
  n = flip.shape[0] if flip.ndim == 1 else -1
  if coords.dtype != np.float32 or coords.shape != (n, 4) or n < 1:
    raise FkdFolderError(f"{path}: coords {coords.dtype} {coords.shape} and flip {flip.shape} do "
                         "not fit: expected float32 [n, 4] and [n]")
  if flip.dtype not in (np.bool_, np.uint8):
    raise FkdFolderError(f"{path}: flip is {flip.dtype}, expected bool")
  if logits.ndim != 2 or logits.shape[0] != n or logits.dtype not in (np.float16, np.float32):
    raise FkdFolderError(
        f"{path}: soft_label is {logits.dtype} {logits.shape}, expected float16 or "
        f"float32 [{n}, classes]")
  if mix_index is not None:
    mix_index = _tensor(mix_index, "mix_index", path)
    if mix_index.shape != (n,) or mix_index.dtype.kind not in "iu":
      raise FkdFolderError(f"{path}: mix_index is {mix_index.dtype} {mix_index.shape}, expected "
                           f"integers [{n}]")
    mix_index = mix_index.astype(np.int64)
  if mix_bbox is not None:
    try:
      mix_bbox = tuple(int(v) for v in mix_bbox)
    except (TypeError, ValueError) as e:
      raise FkdFolderError(f"{path}: mix_bbox {mix_bbox!r} is not four integers") from e
    if len(mix_bbox) != 4:
      raise FkdFolderError(f"{path}: mix_bbox {mix_bbox!r} is not four integers")
  if mix_lam is not None:
    mix_lam = float(mix_lam)
  return FkdBatch(coords, flip.astype(bool), mix_index, mix_lam, mix_bbox, logits)


def save_batch(path: str, batch: FkdBatch) -> None:
  """Writes one batch file as generate_soft_label.py's `save` does: `torch.save` of the list."""
  bbox = None if batch.mix_bbox is None else [np.int64(v) for v in batch.mix_bbox]
  index = None if batch.mix_index is None else torch.from_numpy(
      np.asarray(batch.mix_index, np.int64))
  torch.save([
      torch.from_numpy(np.asarray(batch.coords, np.float32)),
      torch.from_numpy(np.asarray(batch.flip, bool)), index, batch.mix_lambda, bbox,
      torch.from_numpy(np.ascontiguousarray(batch.logits))
  ], path)


def image_folder_order(root: str) -> list[str]:
  """The files of `torchvision.datasets.ImageFolder(root)` in dataset-index order.

  torchvision/datasets/folder.py: `find_classes` sorts every subdirectory of `root`;
  `make_dataset` walks each (`sorted(os.walk(..., followlinks=True))`, file names sorted) and keeps
  files whose lower-case name ends with an IMG_EXTENSIONS suffix; a class without one is an error.
  """
  classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
  if not classes:
    raise FkdFolderError(f"{root}: no class directories (torchvision's ImageFolder finds none)")
  files, empty = [], []
  for name in classes:
    found = [
        os.path.join(directory, file_name)
        for directory, _, file_names in sorted(os.walk(os.path.join(root, name), followlinks=True))
        for file_name in sorted(file_names)
        if file_name.lower().endswith(TORCHVISION_EXTENSIONS)
    ]
    if not found:
      empty.append(name)
    files += found
  if empty:
    raise FkdFolderError(f"{root}: class directories {empty[:5]} hold no image; torchvision's "
                         "ImageFolder refuses them (Found no valid file for the classes)")
  return files


def dataset_index_ids(root: str, example_files: Sequence[str]) -> np.ndarray:
  """`[N]`: the example id (index into `example_files`, the set's files in id order) of each
  index of torchvision's ImageFolder over `root`."""
  ours = {os.path.normpath(path): i for i, path in enumerate(example_files)}
  theirs = [os.path.normpath(path) for path in image_folder_order(root)]
  missing = [path for path in theirs if path not in ours]
  if missing:
    raise FkdFolderError(f"{missing[0]}: torchvision's ImageFolder serves this file, the set does "
                         f"not ({len(missing)} such files); the FKD labels cover images the set "
                         "does not hold")
  if len(theirs) != len(ours):
    extra = sorted(set(ours) - set(theirs))
    raise FkdFolderError(f"{extra[0]}: the set holds this file, torchvision's ImageFolder over "
                         f"{root} does not ({len(extra)} such files)")
  return np.array([ours[path] for path in theirs], np.int64)


def sampler_orders(num_images: int, epochs: int, seed: int = DEFAULT_SEED) -> np.ndarray:
  """`[epochs, num_images]`: the dataset indices each relabel epoch's DataLoader draws, in order.

  generate_soft_label.py builds one `RandomSampler(dataset, generator=torch.Generator()
  .manual_seed(fkd_seed))` and iterates it once per epoch (through the DataLoader's batch
  sampler, as `get_img2batch_idx_list` does); this replays exactly that with the installed torch.
  """
  generator = torch.Generator()
  generator.manual_seed(int(seed))
  sampler = torch.utils.data.RandomSampler(range(num_images), generator=generator)
  # Each pass is run to its end, as the DataLoader runs it: RandomSampler.__iter__ then draws one
  # more permutation for the `num_samples % n` remainder even when that is 0, so epoch e + 1's
  # order is the generator's (2e + 3)-th randperm, not the (e + 2)-th.
  return np.stack([np.array(list(sampler), np.int64) for _ in range(epochs)])


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """What a folder's file names and first batch say: epochs, batches per epoch, batch size."""

  epochs: int
  batches_per_epoch: int
  batch_size: int
  num_images: int

  def batch_rows(self, batch: int) -> int:
    """How many images the sampler puts in batch `batch` of an epoch (the last one is short)."""
    return min(self.batch_size, self.num_images - batch * self.batch_size)

  def path(self, root: str, epoch: int, batch: int) -> str:
    return os.path.join(root, EPOCH_DIR.format(epoch), BATCH_FILE.format(batch))


def _numbered(where: str, pattern: re.Pattern, template: str, what: str) -> int:
  """k, where the entries of directory `where` are exactly `template.format(0..k-1)`."""
  numbers = set()
  for name in sorted(os.listdir(where)):
    match = pattern.fullmatch(name)
    if match is None or name != template.format(int(match.group(1))):
      # get_FKD_info counts every entry of the folder as an epoch and sorts batch files by number.
      raise FkdFolderError(f"{os.path.join(where, name)}: not an FKD {what} ({template}); remove "
                           "it")
    numbers.add(int(match.group(1)))
  for k in range(len(numbers)):
    if k not in numbers:
      raise FkdFolderError(f"{os.path.join(where, template.format(k))}: missing (the folder "
                           f"holds {what}s up to {template.format(max(numbers))})")
  return len(numbers)


def read_layout(fkd_path: str, num_images: int, batch_size: int = 0) -> FolderLayout:
  """The folder's epochs and batches, checked against a set of `num_images` and the sampler.

  Every `epoch_{e}` must hold `batch_0.tar` .. `batch_{k-1}.tar` with k = ⌈N / B⌉, and nothing
  else may be in the folder. B is `epoch_0/batch_0`'s size (get_FKD_info); a `batch_size` given
  must equal it (train_FKD.py's check of --batch-size).
  """
  if not os.path.isdir(fkd_path):
    raise FkdFolderError(f"{fkd_path}: no such directory")
  epochs = _numbered(fkd_path, _EPOCH_NAME, EPOCH_DIR, "epoch directory")
  if not epochs:
    raise FkdFolderError(f"{os.path.join(fkd_path, EPOCH_DIR.format(0))}: missing; not an FKD "
                         "folder")
  per_epoch = []
  for epoch in range(epochs):
    where = os.path.join(fkd_path, EPOCH_DIR.format(epoch))
    if not os.path.isdir(where):
      raise FkdFolderError(f"{where}: not a directory")
    per_epoch.append(_numbered(where, _BATCH_NAME, BATCH_FILE, "batch file"))
  if not per_epoch[0]:
    raise FkdFolderError(f"{os.path.join(fkd_path, EPOCH_DIR.format(0), BATCH_FILE.format(0))}: "
                         "missing")
  first = load_batch(os.path.join(fkd_path, EPOCH_DIR.format(0), BATCH_FILE.format(0))).size
  if batch_size and batch_size != first:
    raise FkdFolderError(f"--batch_size: {batch_size}, but {fkd_path}/epoch_0/batch_0.tar holds "
                         f"{first} crops (the relabel's -b; train_FKD.py requires the same)")
  last = load_batch(os.path.join(fkd_path, EPOCH_DIR.format(0),
                                 BATCH_FILE.format(per_epoch[0] - 1))).size
  labelled = first * (per_epoch[0] - 1) + last  # get_FKD_info's num_img
  if labelled != num_images:
    raise FkdFolderError(f"{fkd_path}: labels {labelled} images ({per_epoch[0]} batches, the last "
                         f"of {last}), the set has {num_images}; import it for the set it was "
                         "relabelled on")
  expected = -(-num_images // first)
  for epoch, count in enumerate(per_epoch):
    if count != expected:
      where = os.path.join(fkd_path, EPOCH_DIR.format(epoch))
      if count < expected:
        raise FkdFolderError(f"{where}/batch_{count}.tar: missing; the sampler cuts the set's "
                             f"{num_images} images into {expected} batches of {first}")
      raise FkdFolderError(f"{where}/batch_{expected}.tar: one batch too many; the sampler cuts "
                           f"the set's {num_images} images into {expected} batches of {first}")
  return FolderLayout(epochs, expected, first, num_images)


def _file_sha256(path: str, digest: Any) -> None:
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)


def image_sizes(example_files: Sequence[str]) -> np.ndarray:
  """`[N, 2]` (height, width) of every image, from the file headers."""
  out = np.empty((len(example_files), 2), np.int64)
  for i, path in enumerate(example_files):
    with Image.open(path) as image:
      out[i] = image.size[1], image.size[0]
  return out


def pixel_boxes(coords: np.ndarray, sizes: np.ndarray, where: str,
                names: Sequence[str]) -> np.ndarray:
  """`[n, 4]` (top, left, height, width) pixels of FKD `coords` on images of `sizes` [n, (H, W)].

  The official replay cuts `round(coords · size)` (PIL rounds the box); a coordinate must be
  exactly `float32(pixel / size)`, the value RandomResizedCropWithCoords stores, and the box must
  lie in the image: otherwise the crop does not belong to that image (another order, another set).
  """
  scale = np.concatenate([sizes, sizes], axis=1).astype(np.float64)
  boxes = np.rint(coords.astype(np.float64) * scale)
  exact = np.all((boxes / scale).astype(np.float32) == coords, axis=1)
  inside = ((boxes[:, :2] >= 0).all(axis=1) & (boxes[:, 2:] >= 1).all(axis=1) &
            (boxes[:, 0] + boxes[:, 2] <= sizes[:, 0]) & (boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]))
  bad = np.flatnonzero(~(exact & inside))
  if bad.size:
    k = int(bad[0])
    raise FkdFolderError(
        f"{where}: row {k}: coords {coords[k].tolist()} are not a RandomResizedCrop box of "
        f"{names[k]} ({sizes[k, 0]}x{sizes[k, 1]} px, where they would be {boxes[k].tolist()}); "
        "the batch holds other images than the sampler says (another set, image order, "
        "--fkd-seed or batch size)")
  return boxes.astype(np.int64)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
  z = logits.astype(np.float64) / temperature
  z -= z.max(axis=1, keepdims=True)
  return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)


def _cut_box(bbox: tuple[int, int, int, int], size: int, where: str) -> tuple[int, int, int, int]:
  x1, y1, x2, y2 = bbox
  if not (0 <= x1 <= x2 <= size and 0 <= y1 <= y2 <= size):
    raise FkdFolderError(f"{where}: mix_bbox {list(bbox)} does not lie in a {size}x{size} crop "
                         "(is --image_size the relabel's --input-size?)")
  return x1, y1, x2 - x1, y2 - y1


def _stored_spec(source: ImageSource, pool_ids: np.ndarray, layout: FolderLayout, *,
                 image_size: int, temperature: float, label_format: str, topk: int, seed: int,
                 cutmix: bool, teacher: dict[str, Any]) -> table_lib.TableSpec:
  info = source.info
  return table_lib.TableSpec(
      dataset_name=info.name, dataset_fingerprint=info.fingerprint, ids=pool_ids,
      num_classes=info.num_classes, teacher_fingerprint=f"fkd:{teacher.get('sha256', '')}",
      teacher=teacher, crop_seed=seed, crop_spec={
          "crops": table_lib.STORED_CROPS,
          "origin": "fkd",
          "output_size": int(image_size),
          "cutmix": bool(cutmix),
          "batch_size": layout.batch_size,
          "seed": int(seed),
          "sampler": "torch.utils.data.RandomSampler",
          "crop": "torchvision resized_crop (PIL crop, then bilinear resize)",
      }, temperature=temperature, label_format=label_format,
      topk=topk if label_format != "full" else 0, slots_per_image=layout.epochs,
      teacher_bn_mode="eval")


def import_folder(fkd_path: str, table_dir: str, source: ImageSource, example_files: Sequence[str],
                  root: str, *, image_size: int, temperature: float = DEFAULT_TEMPERATURE,
                  label_format: str = "full", topk: int = 0, seed: int = DEFAULT_SEED,
                  batch_size: int = 0) -> table_lib.SoftLabelTable:
  """Imports an FKD folder of the set `source` (every image of it) into a table at `table_dir`.

  `example_files` are the set's files in example-id order and `root` the directory the relabel's
  ImageFolder read (image_folder.split_directory); `image_size` is the relabel's --input-size,
  `temperature` the T of the trainer the labels are meant for, `seed` its --fkd-seed. Slot e of
  the table is epoch e. Every file is checked before the table is written (into
  `table_dir.partial`, renamed when whole); a refused folder leaves nothing behind.
  """
  table_dir = os.path.normpath(os.path.abspath(table_dir))
  for path in (table_dir, table_dir + table_lib.PARTIAL_SUFFIX):
    if os.path.exists(path):
      raise FileExistsError(f"{path} exists; import into a new directory")
  num_images = len(source)
  if len(example_files) != num_images:
    raise FkdFolderError(f"the set has {num_images} examples but {len(example_files)} files")
  pool_ids = np.arange(num_images, dtype=np.int64)  # an FKD folder labels the whole ImageFolder
  layout = read_layout(fkd_path, num_images, batch_size)
  id_of_index = dataset_index_ids(root, example_files)
  sizes = image_sizes(example_files)
  labels = np.asarray(source.labels(), np.int64)
  orders = sampler_orders(num_images, layout.epochs, seed)
  first = load_batch(layout.path(fkd_path, 0, 0))
  if first.mix_index is not None and first.mix_bbox is None:
    raise FkdFolderError(f"{layout.path(fkd_path, 0, 0)}: a mixup folder (--mix-type mixup "
                         "blends whole images); a table stores crops with one pasted box")
  has_mix = first.mix_index is not None
  staged_spec = _stored_spec(source, pool_ids, layout, image_size=image_size,
                             temperature=temperature, label_format=label_format, topk=topk,
                             seed=seed, cutmix=has_mix, teacher={})
  fmt = staged_spec.fmt
  parent = os.path.dirname(table_dir)
  os.makedirs(parent, exist_ok=True)
  row_dtype = table_lib.row_dtype(staged_spec)
  disk_space.require(parent, 2 * num_images * layout.epochs * row_dtype.itemsize,
                     "the imported table and its staging copy")
  scratch = tempfile.mkdtemp(prefix=".fkd-import-", dir=parent)
  try:
    rows = np.lib.format.open_memmap(os.path.join(scratch, "rows.npy"), mode="w+", dtype=row_dtype,
                                     shape=(num_images, layout.epochs))
    digest = hashlib.sha256()
    agree = pasted = 0
    label_dtype = None
    for epoch in range(layout.epochs):
      for batch_index in range(layout.batches_per_epoch):
        path = layout.path(fkd_path, epoch, batch_index)
        batch = load_batch(path)
        start = batch_index * layout.batch_size
        index = orders[epoch, start:start + layout.batch_rows(batch_index)]
        if batch.size != index.size:
          raise FkdFolderError(f"{path}: holds {batch.size} crops, but the sampler's batch "
                               f"{batch_index} of {num_images} images in batches of "
                               f"{layout.batch_size} holds {index.size}")
        if batch.logits.shape[1] != source.info.num_classes:
          raise FkdFolderError(f"{path}: soft labels over {batch.logits.shape[1]} classes, but "
                               f"the set has {source.info.num_classes}")
        if not np.isfinite(batch.logits).all():
          raise FkdFolderError(f"{path}: soft labels hold NaN or infinite logits")
        if (batch.mix_index is not None) != has_mix or (has_mix and batch.mix_bbox is None):
          raise FkdFolderError(f"{path}: mixed differently from epoch_0/batch_0.tar (mix_index "
                               f"{'given' if batch.mix_index is not None else 'None'}, mix_bbox "
                               f"{'given' if batch.mix_bbox is not None else 'None'})")
        label_dtype = label_dtype or str(batch.logits.dtype)
        ids = id_of_index[index]
        boxes = pixel_boxes(batch.coords, sizes[ids], path, [example_files[i] for i in ids])
        target = rows[ids, epoch]  # pool position = id
        target["pixel_box"] = boxes
        target["flip"] = batch.flip
        target["sampler_rank"] = start + np.arange(index.size)
        if has_mix:
          if batch.mix_index.min() < 0 or batch.mix_index.max() >= index.size:
            k = int(np.flatnonzero((batch.mix_index < 0) | (batch.mix_index >= index.size))[0])
            raise FkdFolderError(f"{path}: mix_index[{k}] = {int(batch.mix_index[k])} is outside "
                                 f"the batch of {index.size}")
          top, left, height, width = _cut_box(batch.mix_bbox, image_size, path)
          target["partner_id"] = ids[batch.mix_index]
          target["cut_box"] = (top, left, height, width)
          target["mix_lambda"] = 1.0 - height * width / float(image_size * image_size)
          pasted += height * width > 0
        payload = formats.encode(_log_softmax(batch.logits, temperature), fmt)
        for name in payload.dtype.names:
          target[name] = payload[name]
        rows[ids, epoch] = target
        agree += int((batch.logits.argmax(axis=1) == labels[ids]).sum())
        _file_sha256(path, digest)
    teacher = {
        "source": "fkd",
        "fkd_path": os.path.abspath(fkd_path),
        "sha256": digest.hexdigest(),
        "label_dtype": label_dtype,
        "torch": torch.__version__,
        # The stored logits' argmax is the image's class for this fraction of the crops (chance
        # 1/C): a folder read in another order than it was written in sits near chance.
        "label_agreement": agree / float(num_images * layout.epochs),
    }
    # A folder whose boxes paste nothing anywhere (an export of a table without CutMix) holds
    # unmixed crops: its table is one without CutMix.
    cutmix = has_mix and pasted > 0
    spec = _stored_spec(source, pool_ids, layout, image_size=image_size, temperature=temperature,
                        label_format=label_format, topk=topk, seed=seed, cutmix=cutmix,
                        teacher=teacher)
    table = _write(table_dir, spec, rows)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  metrics_log.log_line(
      f"imported {fkd_path}: {layout.epochs} epochs x {layout.batches_per_epoch} batches of "
      f"{layout.batch_size} over {num_images} images into {table_dir} ({table.label_bytes} label "
      f"bytes, T = {temperature:g}); the stored logits' argmax is the image's class for "
      f"{teacher['label_agreement']:.1%} of the crops (chance {1 / source.info.num_classes:.1%})")
  return table


def _write(table_dir: str, spec: table_lib.TableSpec,
           staged_rows: np.ndarray) -> table_lib.SoftLabelTable:
  """The staged rows (`[positions, epochs]`, a scratch memory map filled file by file) written
  as the table's shards, in the final spec's layout (without CutMix fields when nothing was
  pasted)."""
  dtype = table_lib.row_dtype(spec)
  per_image = dtype.itemsize * spec.slots_per_image
  writer = table_lib.TableWriter(table_dir, spec, max(1, _SHARD_BYTES // per_image))
  for shard in range(writer.num_shards):
    start, stop = writer.shard_positions(shard)
    staged = np.asarray(staged_rows[start:stop]).reshape(-1)
    rows = np.zeros(staged.shape, dtype)
    for name in dtype.names:
      rows[name] = staged[name]
    writer.write_shard(shard, rows)
  return writer.finalize()


def _keyed_boxes(table: table_lib.SoftLabelTable, ids: np.ndarray, slot: int,
                 sizes: np.ndarray) -> np.ndarray:
  """`[n, 4]` pixel boxes of a keyed table's crops: rebuilt from their keys, checked against the
  stored fp16 fractions (as a replay checks them)."""
  crop_spec = table.spec.crop_spec
  spec = crops.CropSpec(output_size=int(crop_spec["output_size"]), scale=tuple(crop_spec["scale"]),
                        ratio=tuple(crop_spec["ratio"]), flip=bool(crop_spec["flip"]))
  rows = table.gather(ids, slot)
  out = np.empty((ids.size, 4), np.int64)
  for k, example_id in enumerate(ids):
    params = crops.crop_params(table.spec.crop_seed, int(example_id), slot, tuple(sizes[k]), spec)
    fractions = params.box_fractions(tuple(sizes[k])).astype(np.float16)
    if (not np.array_equal(fractions, rows["box"][k])
        or bool(params.flip) != bool(rows["flip"][k])):
      raise FkdFolderError(f"{table.directory}: the crop of example {int(example_id)}, slot {slot} "
                           "rebuilt from its key differs from the stored one; the crop code or "
                           "the set changed since relabelling")
    out[k] = params.top, params.left, params.height, params.width
  return out


def _logits(probs: np.ndarray, temperature: float) -> np.ndarray:
  """Logits z with `softmax(z / T) = probs` (renormalised), the row's largest at 0."""
  log_p = np.log(np.maximum(probs.astype(np.float64), np.exp(formats.LOG_PROB_FLOOR)))
  return temperature * (log_p - log_p.max(axis=1, keepdims=True))


def export_table(table: table_lib.SoftLabelTable, fkd_path: str, source: ImageSource,
                 example_files: Sequence[str], root: str, *, batch_size: int = 0,
                 seed: int = DEFAULT_SEED, label_dtype: str = "float16") -> FolderLayout:
  """Writes `table` as an FKD folder at `fkd_path` that train_FKD.py reads over `root`.

  Slot e is epoch e, batched as generate_soft_label.py's sampler (`seed`, `batch_size`) draws the
  ImageFolder; an imported table keeps its own batch size and seed (and its sampler order is
  checked against the sampler's). The logits are `T · log p` (the row's largest at 0), so the
  trainer's `softmax(z / T)` at the table's T is the stored distribution; `label_dtype` float16
  is relabel.sh's `--use-fp16`. A table without CutMix gets an identity mix_index and an empty
  box (train_FKD.py's patched fetcher calls `mix_index.cpu()`, so None cannot be read; an empty
  box pastes nothing under any --mix-type). Refused: a table of part of the set (FKD labels the
  whole ImageFolder), a keyed table with CutMix (its partners were drawn in other batches than
  the sampler's) or with RDED's patch shuffle (which FKD's crops cannot express). A keyed table's
  crops are cut here by PIL's resize of the box (`crops.resized_crop`), train_FKD.py cuts the same
  box then resizes: the two differ at the box's border pixels.
  """
  spec = table.spec
  if label_dtype not in LABEL_DTYPES:
    raise FkdFolderError(f"--label_dtype: one of {', '.join(LABEL_DTYPES)}, got {label_dtype!r}")
  problems = spec.data_mismatches(source.info.name, source.info.fingerprint, np.arange(len(source)),
                                  source.info.num_classes)
  if problems:
    raise FkdFolderError(f"{table.directory}: FKD folders label every image of the set, in its "
                         f"ImageFolder order, and this table does not: {'; '.join(problems)}")
  if spec.stored_crops:
    if batch_size and batch_size != spec.stored_batch_size:
      raise FkdFolderError(f"--batch_size: {batch_size}, but the imported table's batches hold "
                           f"{spec.stored_batch_size}")
    batch_size, seed = spec.stored_batch_size, int(spec.crop_spec["seed"])
  else:
    if spec.cutmix:
      raise FkdFolderError(
          f"{table.directory}: its CutMix partners and boxes were drawn per relabel batch of this "
          "library's order (or per crop), not in the batches train_FKD.py's sampler makes, so "
          "FKD's mix_index cannot hold them; export a table without CutMix or an imported one")
    if int(spec.crop_spec.get("shuffle_factor", 1)) > 1:
      raise FkdFolderError(f"{table.directory}: its crops are cut from RDED's patch-shuffled "
                           "images, which FKD's coords cannot express")
    if batch_size < 1:
      raise FkdFolderError("--batch_size: a keyed table has no relabel batches of its own; give "
                           "the -b train_FKD.py will run with")
  fkd_path = os.path.normpath(os.path.abspath(fkd_path))
  partial = fkd_path + table_lib.PARTIAL_SUFFIX
  for path in (fkd_path, partial):
    if os.path.exists(path):
      raise FileExistsError(f"{path} exists; export into a new directory")
  num_images = len(source)
  layout = FolderLayout(spec.slots_per_image, -(-num_images // batch_size), batch_size, num_images)
  id_of_index = dataset_index_ids(root, example_files)
  sizes = image_sizes(example_files)
  orders = sampler_orders(num_images, layout.epochs, seed)
  if spec.stored_crops and not np.array_equal(table.batch_orders(), id_of_index[orders]):
    raise FkdFolderError(f"{table.directory}: its stored batch order is not the order torch "
                         f"{torch.__version__}'s RandomSampler draws for seed {seed}; train_FKD.py "
                         "would read its batches for other images")
  size = int(spec.crop_spec["output_size"])
  disk_space.require(os.path.dirname(fkd_path), table.label_bytes, "the FKD folder")
  os.makedirs(partial)
  try:
    for epoch in range(layout.epochs):
      os.makedirs(os.path.join(partial, EPOCH_DIR.format(epoch)))
      for batch_index in range(layout.batches_per_epoch):
        start = batch_index * batch_size
        ids = id_of_index[orders[epoch, start:start + layout.batch_rows(batch_index)]]
        rows = table.gather(ids, epoch)
        if spec.stored_crops:
          boxes = rows["pixel_box"].astype(np.int64)
        else:
          boxes = _keyed_boxes(table, ids, epoch, sizes[ids])
        scale = np.concatenate([sizes[ids], sizes[ids]], axis=1).astype(np.float64)
        coords = (boxes / scale).astype(np.float32)
        where = layout.path(partial, epoch, batch_index)
        if spec.cutmix:
          rank = {int(i): k for k, i in enumerate(ids)}
          mix_index = np.array([rank.get(int(p), -1) for p in rows["partner_id"]], np.int64)
          cut = rows["cut_box"].astype(np.int64)
          if (mix_index < 0).any() or not (cut == cut[0]).all():
            raise FkdFolderError(f"{table.directory}: epoch {epoch}, batch {batch_index}: its "
                                 "CutMix is not one box per stored batch with partners inside it")
          top, left, height, width = (int(v) for v in cut[0])
          bbox, lam = (top, left, top + height, left + width), float(rows["mix_lambda"][0])
        else:
          mix_index, bbox, lam = np.arange(ids.size), (0, 0, 0, 0), 1.0
        logits = _logits(formats.decode(rows, spec.fmt), spec.temperature)
        fp16_min = float(np.finfo(np.float16).min)
        if label_dtype == "float16":
          logits = np.maximum(logits, fp16_min)
        save_batch(
            where,
            FkdBatch(coords, rows["flip"].astype(bool), mix_index, lam, bbox,
                     logits.astype(np.dtype(label_dtype))))
    os.replace(partial, fkd_path)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  metrics_log.log_line(f"exported {table.directory} to {fkd_path}: {layout.epochs} epochs x "
                       f"{layout.batches_per_epoch} batches of {batch_size} (crops of {size} px, "
                       f"logits {label_dtype} for -T {spec.temperature:g}, --fkd_seed {seed})")
  return layout
