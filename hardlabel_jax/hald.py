"""HALD phase schedules: which epochs train on stored soft labels and which on hard labels (§5).

HALD's public code does not mix losses per step; it switches whole epochs between a *soft* phase
(replay stored crops with their table labels, KL at T) and a *hard* phase (fresh crops, CutMix on
every batch, heavily smoothed one-hot labels). `hybrid:λ` is the per-step mixture, kept as an
ablation: every step is then a `hybrid` step.
"""

from __future__ import annotations

import dataclasses
import math

SOFT = "soft"
HARD = "hard"
HYBRID = "hybrid"
TRAIN = "train"  # the single phase of regimes without a schedule (hl, kd, sl_kd)
NAMED_SCHEDULES = ("S1", "S6", "S7", "S8")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A parsed `hald_schedule`: a name (`S1`, `S6`, `S7`, `S8`, `alt`, `hybrid`) and its number."""

  name: str
  block_epochs: int = 0  # alt:n
  hybrid_weight: float = 0.0  # hybrid:λ, the weight of the hard-label CE

  @property
  def is_hybrid(self) -> bool:
    return self.name == HYBRID


def parse_schedule(text: str) -> Schedule:
  """Parses `S1`, `S6`, `S7`, `S8`, `alt:n` or `hybrid:λ`; raises naming the config field."""
  name, _, value = str(text).partition(":")
  if name in NAMED_SCHEDULES and not value:
    return Schedule(name)
  try:
    if name == "alt":
      block = int(value)
      if block >= 1:
        return Schedule("alt", block_epochs=block)
    elif name == HYBRID:
      weight = float(value)
      if 0.0 <= weight <= 1.0:
        return Schedule(HYBRID, hybrid_weight=weight)
  except ValueError:
    pass
  raise ValueError(f"config.hald_schedule: {text!r} is not one of S1, S6, S7, S8, alt:n "
                   "(n >= 1 epochs per block) or hybrid:λ (0 <= λ <= 1)")


def _split(total_epochs: int, hard_fraction: float) -> tuple[int, int]:
  """(soft epochs, hard epochs) of a run, the hard ones rounded to whole epochs."""
  hard = int(round(total_epochs * hard_fraction))
  return total_epochs - hard, hard


def phase_of_epoch(epoch: int, total_epochs: int, schedule: Schedule,
                   hard_fraction: float = 0.5) -> str:
  """The phase (`soft`, `hard` or `hybrid`) of 0-based `epoch` in a run of `total_epochs`."""
  if not 0 <= epoch < total_epochs:
    raise ValueError(f"epoch {epoch} is outside a run of {total_epochs} epochs")
  if schedule.is_hybrid:
    return HYBRID
  if schedule.name in (TRAIN, SOFT, HARD):  # a constant phase
    return schedule.name
  if schedule.name == "alt":
    return SOFT if (epoch // schedule.block_epochs) % 2 == 0 else HARD
  soft, hard = _split(total_epochs, hard_fraction)
  if schedule.name == "S1":  # hard → soft
    return HARD if epoch < hard else SOFT
  if schedule.name == "S8":  # soft → hard
    return SOFT if epoch < soft else HARD
  if schedule.name == "S6":  # first half of the soft epochs → all hard epochs → the rest soft
    first_soft = soft // 2
    return HARD if first_soft <= epoch < first_soft + hard else SOFT
  # S7: first half of the hard epochs → all soft epochs → the rest hard
  first_hard = hard // 2
  return SOFT if first_hard <= epoch < first_hard + soft else HARD


def epoch_of_step(step_index: int, global_batch: int, pool_size: int) -> int:
  """The epoch a 0-based step belongs to: the one holding its first example."""
  return (step_index * global_batch) // pool_size


def total_epochs(num_steps: int, global_batch: int, pool_size: int) -> int:
  """Whole epochs a run touches (a trailing partial epoch counts)."""
  return max(1, math.ceil(num_steps * global_batch / pool_size))


@dataclasses.dataclass(frozen=True)
class StepPhases:
  """0-based step index (or stream position) → phase, so the data and the step always agree."""

  schedule: Schedule
  num_steps: int
  global_batch: int
  pool_size: int
  hard_fraction: float = 0.5

  def of_step(self, step_index: int) -> str:
    epoch = epoch_of_step(step_index, self.global_batch, self.pool_size)
    epochs = total_epochs(self.num_steps, self.global_batch, self.pool_size)
    return phase_of_epoch(epoch, epochs, self.schedule, self.hard_fraction)

  def of_position(self, position: int) -> str:
    """Phase of a global stream position: a whole batch shares its step's phase."""
    return self.of_step(int(position) // self.global_batch)

  def counts(self) -> dict[str, int]:
    """Steps per phase, for logs and results."""
    out = {TRAIN: 0, SOFT: 0, HARD: 0, HYBRID: 0}
    for step_index in range(self.num_steps):
      out[self.of_step(step_index)] += 1
    return {k: v for k, v in out.items() if v}
