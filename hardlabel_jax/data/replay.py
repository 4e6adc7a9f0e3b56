"""Soft-label replay: training examples that rebuild a stored crop and attach its table label.

SL (DESIGN.md §3) trains on exactly the crops the teacher labelled: the stream position picks an
image (reshuffled per epoch) and a slot is drawn from the image's kept slots, or, under LPLD's
batch pruning, the position's step draws a kept stored batch (`table.StoredBatches`) that names
image and slot; the crop is rebuilt by the same pure function relabel used. The
rebuilt crop's box, flip and CutMix partner are checked against the ones stored in the table, so a
changed crop function or spec is an error, never silently mismatched labels. RDED's patch shuffle
(recipe 'rded') is not stored per row: it is re-derived from the same key, and the table header's
crop spec names the recipe and factor, so a table of the other recipe is refused when opened.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hardlabel_jax import hald
from hardlabel_jax.data import pipeline
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

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("table", None)
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
    pixels, fields, metadata = self.example.raw_crop(pool_position, slot)
    check_same_crop(self.table.metadata(pool_position, slot), metadata, int(fields["id"]), slot,
                    self.table.spec.cutmix)
    return {
        "image": self.example.normalizer(pixels),
        **fields, "soft_label": self.table.probs(pool_position, slot).astype(np.float32)
    }

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    if self.batches is not None:
      return self.replay(*self.batches.row(self.draw_seed, position))
    pool_position, epoch = self.order(position)
    return self.replay(pool_position, self.slot_for(pool_position, epoch))


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
