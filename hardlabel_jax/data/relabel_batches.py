"""Relabel batches: which stored crops a table's teacher sees together, as HALD's relabel does.

`Jiacheng8/HALD` `relabel/relabel_slc.py` relabels epoch e of the set (table slot e here) in
batches of `-b 16` drawn from a per-epoch permutation of all images (`torch.randperm`, seeded
`fkd_seed + e`; `drop_last=False`, so the last batch is short). Two things depend on the batch:
- BSSL (`hardlabel_jax/bssl.py`): the teacher's BatchNorm statistics are the batch's own;
- CutMix (`relabel/utils_fkd.py` `cutmix`, `--mix-type cutmix`): one `rand_index =
  torch.randperm(batch)`, one λ ~ Beta(α, α) and one box per batch; every image gets the box
  pasted from image `rand_index[i]` of the same batch, and the label is the teacher's on the
  mixed image. `rand_bbox` takes `cut = int(side · √(1 − λ))` and a uniform centre per axis,
  clipped to the image.

Here slot s's order is a permutation keyed by (crop_seed, s), cut into batches of
`relabel_batch_size`; a batch's CutMix draw is keyed by (crop_seed, s, batch). Everything is a
pure function of those keys, so a crop's partner, box and λ (`CutmixPlan`) are known to the
relabel and to every replay without either one seeing the other's batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_STREAM_ORDER = 3  # SeedSequence streams (data/crops.py uses 0–2)
_STREAM_CUTMIX = 4


def relabel_order(num_positions: int, slot: int, seed: int) -> np.ndarray:
  """The pool positions in the order relabel epoch `slot` draws them (a keyed permutation)."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, slot, _STREAM_ORDER]))
  return rng.permutation(num_positions)


def group_rows(num_positions: int, slots: int, group_size: int, seed: int) -> np.ndarray:
  """`[batches, group_size]` table rows (position · slots + slot) of every relabel batch, -1 pads.

  Slot by slot: each slot's permutation cut into batches of `group_size`, the last one short and
  padded, so no batch mixes two relabel epochs.
  """
  if group_size < 1:
    raise ValueError(f"a relabel batch needs >= 1 image, got {group_size}")
  groups = []
  for slot in range(slots):
    rows = relabel_order(num_positions, slot, seed) * slots + slot
    pad = -len(rows) % group_size
    groups.append(np.concatenate([rows, np.full(pad, -1, rows.dtype)]).reshape(-1, group_size))
  return np.concatenate(groups).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class CutmixPlan:
  """Per (pool position, slot): the CutMix partner's position, pasted box and own-label weight."""

  partner_position: np.ndarray  # int64 [positions, slots]
  cut_box: np.ndarray  # int32 [positions, slots, 4]: top, left, height, width in output pixels
  mix_lambda: np.ndarray  # float32 [positions, slots]: 1 − pasted area / image area


def batch_box(rng: np.random.Generator, size: int,
              alpha: float) -> tuple[int, int, int, int, float]:
  """One batch's λ and box (utils_fkd.py `cutmix` + `rand_bbox`): top, left, height, width, λ.

  `rand_bbox(images.size(), lam)` reads the NCHW size as W = size[2] (rows) and H = size[3]
  (columns) and pastes `[bbx1:bbx2, bby1:bby2]`: rows first, then columns; the returned λ is the
  area left unpasted (the label is the teacher's on the mixed pixels, so λ only weighs hard labels).
  """
  lam = rng.beta(alpha, alpha)
  cut = int(size * np.sqrt(1.0 - lam))
  cx, cy = int(rng.integers(0, size)), int(rng.integers(0, size))
  x1, x2 = np.clip([cx - cut // 2, cx + cut // 2], 0, size)  # rows
  y1, y2 = np.clip([cy - cut // 2, cy + cut // 2], 0, size)  # columns
  area = int(x2 - x1) * int(y2 - y1)
  return int(x1), int(y1), int(x2 - x1), int(y2 - y1), 1.0 - area / (size * size)


def cutmix_plan(num_positions: int, slots: int, group_size: int, seed: int, alpha: float,
                size: int) -> CutmixPlan:
  """The partner, box and λ of every (position, slot) of a table CutMixed per relabel batch."""
  partner = np.zeros((num_positions, slots), np.int64)
  cut_box = np.zeros((num_positions, slots, 4), np.int32)
  mix_lambda = np.zeros((num_positions, slots), np.float32)
  batches_per_slot = -(-num_positions // group_size)
  for index, group in enumerate(group_rows(num_positions, slots, group_size, seed)):
    slot, batch = divmod(index, batches_per_slot)
    positions = group[group >= 0] // slots
    rng = np.random.default_rng(np.random.SeedSequence([seed, slot, batch, _STREAM_CUTMIX]))
    rand_index = rng.permutation(len(positions))
    top, left, height, width, lam = batch_box(rng, size, alpha)
    partner[positions, slot] = positions[rand_index]
    cut_box[positions, slot] = (top, left, height, width)
    mix_lambda[positions, slot] = lam
  return CutmixPlan(partner, cut_box, mix_lambda)
