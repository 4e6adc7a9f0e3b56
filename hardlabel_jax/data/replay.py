"""Soft-label replay: training examples that rebuild a stored crop and attach its table label.

SL (DESIGN.md §3) trains on exactly the crops the teacher labelled: the stream position picks an
image (reshuffled per epoch) and a slot is drawn from the image's kept slots, or, under LPLD's
batch pruning, the position's step draws a kept stored batch (`table.StoredBatches`) that names
image and slot; the crop is rebuilt by the same pure function relabel used. The
rebuilt crop's box, flip and CutMix partner are checked against the ones stored in the table, so a
changed crop function or spec is an error, never silently mismatched labels. RDED's patch shuffle
(recipe 'rded') is not stored per row: it is re-derived from the same key, and the table header's
crop spec names the recipe and factor, so a table of the other recipe is refused when opened.

An imported table (`TableSpec.stored_crops`, e.g. SRe²L's FKD labels, soft_labels/fkd.py) stores
arbitrary crops that no key rebuilds; its replay mode, chosen by the table, is `StoredCrops`: each
crop is cut from the pixel box its row stores, as the official trainer cuts it, and its stored
batches are the relabel's own (the table's sampler order).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hardlabel_jax import hald
from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib


class ReplayMismatchError(ValueError):
  """A rebuilt crop differs from the one its stored label was computed on."""


def check_same_crop(stored: dict, rebuilt: dict, example_id: int, slot: int, cutmix: bool) -> None:
  """Raises unless the rebuilt crop parameters equal the stored ones (box at fp16 precision)."""
  same = (np.array_equal(np.asarray(stored["box"], np.float16),
                         np.asarray(rebuilt["box"]).astype(np.float16))
          and int(stored["flip"]) == int(rebuilt["flip"]))
  if cutmix:
    same = (same and int(stored["partner_id"]) == int(rebuilt["partner_id"])
            and np.array_equal(np.asarray(stored["cut_box"]), np.asarray(rebuilt["cut_box"])))
  if not same:
    raise ReplayMismatchError(
        f"the crop rebuilt for example {example_id}, slot {slot} differs from the one stored in "
        f"the soft-label table (stored {stored}, rebuilt {rebuilt}); the crop code or crop "
        "config changed since relabelling: re-run task='relabel'")


@dataclasses.dataclass(frozen=True)
class StoredCrops:
  """An imported table's crops, rebuilt from their rows as SRe²L's train_FKD.py rebuilds them.

  Official (VILA-Lab/SRe2L relabel/utils_fkd.py): `RandomResizedCropWithCoords` turns the stored
  fractions back into a box (`i = coords[0] * H`, ...) and calls torchvision's `F.resized_crop`,
  whose PIL crop rounds the box to the pixels the relabel cut (the row's `pixel_box`), then
  resizes it bilinearly (`crops.crop_then_resize`); `RandomHorizontalFlipWithRes` flips it after;
  `cutmix` pastes rows `bbx1:bbx2`, columns `bby1:bby2` of the partner's own crop
  (`images[rand_index]`, the batch before mixing) into it (the row's `cut_box`).
  """

  source: ImageSource
  pool_ids: np.ndarray
  size: int  # the crops' output size (the relabel's --input-size)

  @functools.cached_property
  def _sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(self.pool_ids, kind="stable")
    return np.asarray(self.pool_ids)[order], order

  def position_of(self, example_id: int) -> int:
    """The pool position of `example_id` (a CutMix partner's)."""
    ids, order = self._sorted_ids
    index = int(np.searchsorted(ids, example_id))
    if index >= ids.size or ids[index] != example_id:
      raise ReplayMismatchError(f"example {example_id}, a CutMix partner stored in the table, is "
                                "not in the run's pool")
    return int(order[index])

  def _pixels(self, image: np.ndarray, row: np.void, example_id: int, slot: int) -> np.ndarray:
    top, left, height, width = (int(v) for v in row["pixel_box"])
    try:
      out = crops.crop_then_resize(image, top, left, height, width, self.size)
    except ValueError as e:
      raise ReplayMismatchError(f"example {example_id}, slot {slot}: {e}; the image is not the "
                                "one the table was imported for") from e
    return out[:, ::-1] if row["flip"] else out

  def crop(self, table: table_lib.SoftLabelTable, pool_position: int,
           slot: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The uint8 crop of a stored (position, slot) and its label fields (as `raw_crop`'s)."""
    row = table.row(pool_position, slot)
    example_id = int(self.pool_ids[pool_position])
    record = self.source[example_id]
    pixels = self._pixels(record["image"], row, example_id, slot)
    partner_label, partner_id, mix_lambda = int(record["label"]), -1, 1.0
    if table.spec.cutmix and int(row["partner_id"]) >= 0:
      partner_id = int(row["partner_id"])
      partner = self.source[partner_id]
      partner_row = table.row(self.position_of(partner_id), slot)
      partner_pixels = self._pixels(partner["image"], partner_row, partner_id, slot)
      top, left, height, width = (int(v) for v in row["cut_box"])
      pixels = pixels.copy()
      pixels[top:top + height, left:left + width] = partner_pixels[top:top + height,
                                                                   left:left + width]
      partner_label, mix_lambda = int(partner["label"]), float(row["mix_lambda"])
    fields = {
        "label": np.int32(record["label"]),
        "partner_label": np.int32(partner_label),
        "mix_lambda": np.float32(mix_lambda),
        "id": np.int64(example_id),
        "slot": np.int32(slot),
    }
    return np.ascontiguousarray(pixels), fields


@dataclasses.dataclass(frozen=True)
class TableCrops:
  """Global stream position → a stored crop with its soft label (`soft_label`, float32 [C])."""

  example: pipeline.CropExample  # seed and spec of the table's crops
  order: pipeline.EpochShuffle
  table_dir: str
  draw_seed: int
  keep_fraction: float = 1.0
  # LPLD batch pruning: each step replays one kept stored batch; None prunes per image.
  batches: table_lib.StoredBatches | None = None

  @functools.cached_property
  def table(self) -> table_lib.SoftLabelTable:
    # Opened lazily in each Grain worker: memory maps are not pickled across processes.
    return table_lib.SoftLabelTable.open(self.table_dir, verify_checksums=False)

  @functools.cached_property
  def stored(self) -> StoredCrops | None:
    """The replay of an imported table's stored crops; None for a keyed table (rebuilt by key)."""
    if not self.table.spec.stored_crops:
      return None
    if self.example.on_device:
      raise ValueError(
          "config.crop_backend: an imported table's crops are cut on the host as torchvision cuts "
          "them (crop, then resize), which the device crops do not do; set crop_backend='host'")
    return StoredCrops(self.example.source, self.example.pool_ids,
                       int(self.table.spec.crop_spec["output_size"]))

  @functools.cached_property
  def stored_batches(self) -> table_lib.StoredBatches | None:
    """`batches`, over an imported table's own sampler order (its relabel's batches)."""
    if self.batches is None or not self.table.spec.stored_crops:
      return self.batches
    return dataclasses.replace(self.batches, orders=self.table.batch_orders())

  def __getstate__(self):
    state = dict(self.__dict__)
    for name in ("table", "stored", "stored_batches"):
      state.pop(name, None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  def slot_for(self, pool_position: int, epoch: int) -> int:
    """The stored slot an image replays in an epoch (uniform over its kept slots)."""
    example_id = int(self.example.pool_ids[pool_position])
    kept = table_lib.kept_slots(self.draw_seed, example_id, self.table.spec.slots_per_image,
                                self.keep_fraction)
    return table_lib.draw_slot(self.draw_seed, example_id, epoch, kept)

  def replay(self, pool_position: int, slot: int) -> dict[str, np.ndarray]:
    """The training example of a stored (position, slot)."""
    if self.stored is not None:  # an imported table: the crop its row stores
      pixels, element = self.stored.crop(self.table, pool_position, slot)
      return {
          "image": self.example.normalizer(pixels),
          **element, "soft_label": self.table.probs(pool_position, slot).astype(np.float32)
      }
    if self.example.on_device:  # the crop's fields; the devices make its pixels
      element, metadata = self.example.device_element(pool_position, slot)
    else:
      pixels, element, metadata = self.example.raw_crop(pool_position, slot)
      element = {"image": self.example.normalizer(pixels), **element}
    check_same_crop(self.table.metadata(pool_position, slot), metadata, int(element["id"]), slot,
                    self.table.spec.cutmix)
    return {**element, "soft_label": self.table.probs(pool_position, slot).astype(np.float32)}

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if self.batches is not None:
      return self.replay(*self.stored_batches.row(self.draw_seed, position))
    pool_position, epoch = self.order(position)
    return self.replay(pool_position, self.slot_for(pool_position, epoch))

  def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The stacked elements of `positions`; a per-image replay drawn at once.

    The slots, crop draws and table rows of the whole batch are read together
    (`table_lib.draw_slots`, `CropExample.crop_fields_batch`, `SoftLabelTable.rows_at`): the same
    values as `self(position)` of each position, and the same check of every rebuilt crop.
    """
    if self.batches is not None or self.table.spec.stored_crops:
      return pipeline.stack_elements([self(int(p)) for p in positions])
    pool_positions, epochs = self.order.many(positions)
    ids = np.asarray(self.example.pool_ids, np.int64)[pool_positions]
    slots_per_image = self.table.spec.slots_per_image
    if table_lib.num_kept_slots(slots_per_image, self.keep_fraction) == slots_per_image:
      kept = None  # every slot is kept: an image's kept slots are 0..slots - 1
      counts = np.full(len(ids), slots_per_image, np.int64)
    else:
      kept = [
          table_lib.kept_slots(self.draw_seed, int(i), slots_per_image, self.keep_fraction)
          for i in ids
      ]
      counts = np.array([len(k) for k in kept], np.int64)
    index = table_lib.draw_slots(self.draw_seed, ids, epochs, counts)
    slots = index if kept is None else np.array([k[j] for k, j in zip(kept, index, strict=True)],
                                                np.int64)
    make = self.example.device_batch if self.example.on_device else self.example.host_batch
    element, metadata = make(pool_positions, slots)
    rows = self.table.rows_at(pool_positions, slots)
    same = ((rows["box"].astype(np.float16) == metadata["box"].astype(np.float16)).all(axis=1) &
            (rows["flip"].astype(np.int64) == metadata["flip"].astype(np.int64)))
    if self.table.spec.cutmix:
      same &= ((rows["partner_id"].astype(np.int64) == metadata["partner_id"]) &
               (rows["cut_box"].astype(np.int64) == metadata["cut_box"]).all(axis=1))
    for i in np.flatnonzero(~same)[:1]:  # the first mismatch raises, as the element path would
      check_same_crop(self.table.metadata(int(pool_positions[i]), int(slots[i])), {
          k: v[i] for k, v in metadata.items()
      }, int(ids[i]), int(slots[i]), self.table.spec.cutmix)
    probs = formats.decode(rows, self.table.fmt).astype(np.float32)
    return {**element, "soft_label": probs}


@dataclasses.dataclass(frozen=True)
class PhasedCrops:
  """HALD: a position's step phase picks stored crops (soft) or fresh CutMix crops (hard)."""

  phases: hald.StepPhases
  soft: TableCrops
  hard: pipeline.FreshCrops
  num_classes: int

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if self.phases.of_position(position) == hald.HARD:
      # Same keys in both phases so a batch always has one structure; the hard step ignores it.
      return {**self.hard(position), "soft_label": np.zeros(self.num_classes, np.float32)}
    return self.soft(position)

  def batch(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The stacked elements of `positions` (a batch lies in one phase: its step's)."""
    phases = {self.phases.of_position(int(p)) for p in positions}
    if phases != {hald.HARD} and phases != {hald.SOFT}:
      return pipeline.stack_elements([self(int(p)) for p in positions])
    if phases == {hald.HARD}:
      hard = self.hard.batch(positions)
      return {**hard, "soft_label": np.zeros((len(positions), self.num_classes), np.float32)}
    return self.soft.batch(positions)
