"""Scoring runs (`task='score'`, DESIGN.md §7): per-example training dynamics, keyed by id.

An HL run on the pool (by default the whole train split) for K epochs; after every epoch the
model is evaluated on the centre view of every pool example and `difficulty.epoch_statistics`
(true-class probability, EL2N, margins, correctness, predicted class) is stored, a few numbers per
example per epoch. Every training step also hands over the probability margin of each example of its
mini-batch (`TrainingMargins`), CCS's AUM. At the end these become scores — EL2N, AUM (training
batches, what `ccs` ranks by), `aum_eval_logit` (logit margins of the centre views), forgetting
events, dynamic uncertainty and CAD — written with a header to `<workdir>/scores.npz` for the
selectors. For CAD-Prune, K comes from the downstream budget: `K·N = E_down·n`.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import difficulty
from hardlabel_jax import faults
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import train_state as train_state_lib

SCORES_FILE = "scores.npz"
EPOCHS_DIR = "score_epochs"
STATISTICS = ("true_prob", "el2n", "margin", "prob_margin", "correct", "prediction")
# A chunk of training-batch margins: the rows of steps <first>..<last> (`TrainingMargins`).
_MARGINS_FILE = re.compile(r"margins_(\d{8})_(\d{8})\.npz")
# What a score file's `aum` is, in its identity: caches made when it meant the centre-view logit
# margin (now `aum_eval_logit`) are not reused.
AUM_DEFINITION = "mean training-batch softmax margin p_y - max_other p (CCS official)"
# Score-file header fields that say which CAD windows the scores used (and were asked for).
CAD_RECORD_FIELDS = ("cad_window_rule", "cad_window", "cad_num_windows", "cad_windows_shrink",
                     "cad_window_used", "cad_num_windows_used")


def scoring_epochs(config: ml_collections.ConfigDict, pool_size: int, num_classes: int) -> int:
  """K: `score_epochs`, or CAD-Prune's compute match `K·N = E_down·n` (its windows must fit)."""
  if config.score_epochs:
    return int(config.score_epochs)
  subset = config.cad_subset_images_per_class * num_classes
  epochs = selection.cad_prune_epochs(pool_size, subset, config.cad_downstream_epochs,
                                      config.cad_epochs_rounding)
  # This run exists for CAD: a K its windows do not fit is an error before training, not a
  # score file without CAD (or with silently smaller windows).
  check_cad_windows(config, epochs,
                    "CAD-Prune's compute-matched scoring run (K·N = E_down·n) lasts")
  return epochs


def cad_windows(epochs: int, num_windows: int, *, rule: str, window: int = 6,
                shrink: bool = False) -> tuple[int, int] | None:
  """(J, W) CAD uses on a K-epoch run under `rule`, or None when no window fits.

  'span': W = num_windows and J = K − W, so the W windows averaged start at epochs 0..W−1 and
  together cover the run (J >= 2: a standard deviation). 'fixed': J = `window`, or with `shrink`
  the largest J >= 2, then W >= 1, that fit in K.
  """
  if rule == "span":
    return (epochs - num_windows, num_windows) if epochs - num_windows >= 2 else None
  if rule != "fixed":
    raise ValueError(f"unknown CAD window rule {rule!r}")
  if epochs >= window + num_windows:
    return window, num_windows
  if not shrink or epochs < 3:
    return None
  # J (the uncertainty window) keeps as many epochs as leave one window, then W takes the rest.
  used_window = min(window, epochs - 1)
  return used_window, min(num_windows, epochs - used_window)


def config_cad_windows(config: ml_collections.ConfigDict, epochs: int) -> tuple[int, int] | None:
  """`cad_windows` with the config's rule, J, W and shrink."""
  return cad_windows(epochs, config.cad_num_windows, rule=config.cad_window_rule,
                     window=config.cad_window, shrink=config.cad_windows_shrink)


def check_cad_windows(config: ml_collections.ConfigDict, epochs: int, what: str) -> tuple[int, int]:
  """The (J, W) CAD uses on `epochs`, or a ValueError naming the fields that decide it."""
  used = config_cad_windows(config, epochs)
  if used is not None:
    return used
  if config.cad_window_rule == "span":
    raise ValueError(
        f"config.cad_window_rule: {what} K={epochs} epochs; windows spanning the run ('span') "
        f"take J = K − W = {epochs} − {config.cad_num_windows} = {epochs - config.cad_num_windows} "
        "epochs, fewer than the 2 a standard deviation needs: this subset size is outside "
        "CAD-Prune's range at this budget (more downstream epochs or a larger subset make K "
        "longer); no window is shrunk silently")
  needed = config.cad_window + config.cad_num_windows
  if config.cad_windows_shrink:
    raise ValueError(f"config.cad_windows_shrink: {what} K={epochs} epochs, too few for any CAD "
                     "window (J >= 2 and W >= 1 need K >= 3); raise the budget")
  raise ValueError(
      f"config.cad_window: {what} K={epochs} epochs, fewer than cad_window + "
      f"cad_num_windows = {config.cad_window} + {config.cad_num_windows} = {needed}; raise the "
      "budget, lower cad_window / cad_num_windows, use cad_window_rule='span', or set "
      "cad_windows_shrink=True to score with the largest J >= 2, W >= 1 that fit (recorded as "
      "cad_window_used, cad_num_windows_used)")


def cad_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """For a run that ranks by CAD, the windows its score file's CAD used (for results.json)."""
  if config.selection not in config_schema.CAD_SELECTIONS or not config.scores_file:
    return {}
  header = selection.load_scores(config.scores_file).header
  # `epochs` renamed: results.json's own `epochs` are the training run's.
  return {**{k: header.get(k) for k in CAD_RECORD_FIELDS}, "cad_scoring_epochs": header["epochs"]}


def _statistics_step(state: train_state_lib.TrainState, batch: dict[str, jax.Array], *,
                     model) -> dict[str, jax.Array]:
  logits = model.apply(state.variables(), batch["image"], train=False)
  return {**difficulty.epoch_statistics(logits, batch["label"]), "mask": batch["mask"]}


class EpochRecorder:
  """`(epoch, state)` → statistics of every pool example in `<workdir>/score_epochs/`."""

  def __init__(self, config: ml_collections.ConfigDict, data: run_data.RunData,
               mesh: jax.sharding.Mesh, workdir: str):
    self._config, self._data, self._mesh = config, data, mesh
    self._directory = os.path.join(workdir, EPOCHS_DIR)
    model = models.model_from_config(config, data.train.info.num_classes)
    self._step = jax.jit(functools.partial(_statistics_step, model=model),
                         in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                         out_shardings=mesh_lib.replicated(mesh))

  def path(self, epoch: int) -> str:
    return os.path.join(self._directory, f"epoch_{epoch:04d}.npz")

  def statistics(self, state: train_state_lib.TrainState) -> dict[str, np.ndarray]:
    """The statistics of every pool example, in pool order."""
    return inference.pool_center_outputs(self._step, state, self._data, self._config, self._mesh)

  def __call__(self, epoch: int, state: train_state_lib.TrainState) -> None:
    stats = self.statistics(state)
    if jax.process_index() == 0:
      os.makedirs(self._directory, exist_ok=True)
      tmp = self.path(epoch) + ".tmp.npz"
      np.savez(tmp, **stats)
      faults.point("score_epoch_write")
      os.replace(tmp, self.path(epoch))
    mesh_lib.sync_processes(f"scored epoch {epoch}")  # every process reads them at the end
    metrics_log.log_line(f"scored epoch {epoch + 1}: mean true-class probability "
                         f"{stats['true_prob'].mean():.4f}, accuracy {stats['correct'].mean():.4f}")


class TrainingMargins:
  """A scoring run's training-batch margins (a `trainer.BatchHook`), in step chunks on disk.

  CCS's AUM (DESIGN.md §9) is the mean over the scoring run of p_y − max_{i≠y} p_i of each
  example in the training mini-batches it was drawn in. Every step's `{id, margin}` rows are
  buffered and written as `<workdir>/score_epochs/margins_<first>_<last>.npz` (steps first..last)
  whenever a checkpoint follows, so a run resumed from step c finds exactly the rows of steps
  1..c; chunks of later steps, left by a run killed before their checkpoint, are recorded anew.
  """

  def __init__(self, pool_ids: np.ndarray, workdir: str):
    self._directory = os.path.join(workdir, EPOCHS_DIR)
    self._pool_ids = np.asarray(pool_ids, np.int64)
    self._order = np.argsort(self._pool_ids, kind="stable")
    self._rows: list[tuple[np.ndarray, np.ndarray]] = []
    self._first: int | None = None  # the first step of the buffered rows
    self._last: int | None = None  # the last step handed over

  def _chunks(self, through: int) -> list[tuple[int, int, str]]:
    """(first, last, path) of the stored chunks of steps up to `through`, checked contiguous."""
    chunks = []
    if os.path.isdir(self._directory):
      for name in os.listdir(self._directory):
        match = _MARGINS_FILE.fullmatch(name)
        if match and int(match.group(2)) <= through:
          first, last = map(int, match.groups())
          chunks.append((first, last, os.path.join(self._directory, name)))
    chunks.sort()
    covered = 0
    for first, last, _ in chunks:
      if first != covered + 1:
        break
      covered = last
    if covered != through:
      # E.g. a checkpoint saved off the interval (orbax's preemption save): no chunk ends there.
      raise RuntimeError(
          f"the training-batch margins of steps {covered + 1}..{through} are not in "
          f"{self._directory} (chunks {[steps[:2] for steps in chunks]}); rerun the scoring run "
          "in a fresh workdir")
    return chunks

  def _resume(self, restored_step: int) -> None:
    """Checks the chunks of steps 1..restored_step; drops those of later steps."""
    self._chunks(restored_step)
    if jax.process_index() == 0 and os.path.isdir(self._directory):
      for name in os.listdir(self._directory):
        match = _MARGINS_FILE.fullmatch(name)
        if match and int(match.group(2)) > restored_step:
          os.remove(os.path.join(self._directory, name))

  def __call__(self, step: int, per_example: dict[str, np.ndarray], checkpoint: bool) -> None:
    if self._last is None:
      self._resume(step - 1)
    elif step != self._last + 1:
      raise RuntimeError(f"training margins of step {step} arrived after step {self._last}")
    self._last = step
    if self._first is None:
      self._first = step
    ids = np.asarray(per_example["id"], np.int64)
    self._rows.append((ids, np.asarray(per_example["margin"], np.float32)))
    if checkpoint:
      self._write()

  def _write(self) -> None:
    """The buffered rows as one chunk file (atomically), then an empty buffer."""
    if jax.process_index() == 0:  # the rows are replicated: every process holds all of them
      os.makedirs(self._directory, exist_ok=True)
      path = os.path.join(self._directory, f"margins_{self._first:08d}_{self._last:08d}.npz")
      tmp = path + ".tmp.npz"
      np.savez(tmp, id=np.concatenate([ids for ids, _ in self._rows]),
               margin=np.concatenate([margins for _, margins in self._rows]))
      os.replace(tmp, path)
    self._rows, self._first = [], None

  def aum(self, steps: int) -> np.ndarray:
    """Each pool example's mean training-batch margin over steps 1..steps (NaN if never drawn)."""
    mesh_lib.sync_processes("training margins written")  # process 0 wrote the chunks
    ids, margins = [], []
    for _, _, path in self._chunks(steps):
      with np.load(path) as chunk:
        ids.append(chunk["id"])
        margins.append(chunk["margin"])
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    sorted_ids = self._pool_ids[self._order]
    at = np.clip(np.searchsorted(sorted_ids, ids), 0, max(sorted_ids.size - 1, 0))
    if not np.array_equal(sorted_ids[at], ids):
      raise RuntimeError(f"training margins in {self._directory} name ids outside the pool")
    margins = np.concatenate(margins) if margins else np.zeros(0, np.float32)
    return np.array(difficulty.training_aum(self._order[at], margins, self._pool_ids.size))


def scores_from_statistics(per_epoch: dict[str, np.ndarray], window: int, num_windows: int,
                           training_aum: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """`[epochs, n]` statistics (and CCS's `aum`, when given) → one score per example.

  Higher = harder except `aum` and `aum_eval_logit` (low = hard or mislabeled).
  """
  epochs = per_epoch["true_prob"].shape[0]
  scores = {
      "el2n": per_epoch["el2n"].mean(axis=0),
      "aum_eval_logit": per_epoch["margin"].mean(axis=0),
      "forgetting": np.asarray(difficulty.forgetting_events(per_epoch["correct"])),
      "final_true_prob": per_epoch["true_prob"][-1],
      # The scoring model's last-epoch class (exact in float32): what a chosen image is confused
      # with (study_report's picks analysis).
      "final_prediction": per_epoch["prediction"][-1],
  }
  if training_aum is not None:
    scores["aum"] = training_aum
  if epochs > window:
    # BAAI-DCAI/Dataset-Pruning get_coreset.py averages the windows that end before the last
    # epoch (k = 0 .. K−J−1): the window ending at the last recorded epoch is never appended.
    scores["dynamic_uncertainty"] = np.asarray(
        difficulty.dynamic_uncertainty(per_epoch["true_prob"], window))[:-1].mean(axis=0)
  if epochs >= window + num_windows:
    for signal, name in selection.CAD_SCORES.items():
      scores[name] = np.asarray(difficulty.cad_scores(per_epoch[signal], window, num_windows))
  return {k: np.asarray(v, np.float32) for k, v in scores.items()}


def identity(score_config: ml_collections.ConfigDict, dataset_fingerprint: str) -> dict[str, Any]:
  """What a score file is: the fields its scoring run reads and its split's fingerprint."""
  return {
      "run": cache.run_recipe(score_config),
      "dataset_fingerprint": dataset_fingerprint,
      "aum": AUM_DEFINITION,
      # A run recorded with fewer per-epoch statistics (before `prediction`) is not resumed.
      "statistics": list(STATISTICS)
  }


def training_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  """The HL run a scoring run trains: `epochs` epochs over the pool, whatever the budget says."""
  train_config = config.copy_and_resolve_references()
  train_config.num_epochs = float(epochs)
  train_config.budget_examples = 0
  return train_config


def write_scores(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
                 recorder: EpochRecorder, epochs: int, final_state: train_state_lib.TrainState,
                 scoring_test_top1: float, margins: TrainingMargins) -> dict[str, np.ndarray]:
  """Per-epoch statistics and training margins of a finished scoring run → `scores.npz`."""
  if not os.path.exists(recorder.path(epochs - 1)):
    # steps = ⌊K·N / batch⌋ can stop a few examples short of the last epoch boundary.
    recorder(epochs - 1, final_state)
  missing = [e for e in range(epochs) if not os.path.exists(recorder.path(e))]
  if missing:
    raise RuntimeError(f"scoring epochs {missing} were not recorded in {workdir}/{EPOCHS_DIR}")
  per_epoch = {}
  for name in STATISTICS:
    per_epoch[name] = np.stack([np.load(recorder.path(e))[name] for e in range(epochs)])
  used = config_cad_windows(config, epochs)
  # Without a fit (and without the shrink) the windows stay as configured: CAD is left out.
  window, num_windows = used or (config.cad_window, config.cad_num_windows)
  aum = margins.aum(int(final_state.step))
  undrawn = np.isnan(aum)
  if undrawn.any():
    # Only a one-epoch run whose ⌊N / batch⌋ steps stop short of the epoch draws no batch with
    # them (the official loader keeps the last, smaller batch); their nearest measurement is the
    # final model's margin on their centre view.
    aum[undrawn] = per_epoch["prob_margin"][-1][undrawn]
    metrics_log.log_line(f"aum: {int(undrawn.sum())} examples never drawn in a training batch "
                         "take the final model's centre-view probability margin")
  scores = scores_from_statistics(per_epoch, window, num_windows, training_aum=aum)
  header = {
      "dataset": data.train.info.name,
      "fingerprint": data.train.info.fingerprint,
      "model": config.model,
      "epochs": epochs,
      "seed": config.seed,
      "cad_window_rule": config.cad_window_rule,
      "cad_window": config.cad_window,
      "cad_num_windows": config.cad_num_windows,
      "cad_windows_shrink": bool(config.cad_windows_shrink),
      # Which per-epoch trajectory each CAD score is the dynamic uncertainty of.
      "cad_signals": {
          name: signal for signal, name in selection.CAD_SCORES.items()
      },
      # null when K holds no CAD window: the file then has no 'cad' scores.
      "cad_window_used": used[0] if used else None,
      "cad_num_windows_used": used[1] if used else None,
      "scoring_test_top1": scoring_test_top1,
      "aum": AUM_DEFINITION,
      "aum_undrawn_examples": int(undrawn.sum())
  }
  if jax.process_index() == 0:
    selection.save_scores(os.path.join(workdir, SCORES_FILE), scores, data.pool_ids, header)
  mesh_lib.sync_processes("scores written")
  metrics_log.log_line(f"scores {', '.join(sorted(scores))} for {len(data.pool_ids)} examples "
                       f"in {os.path.join(workdir, SCORES_FILE)}")
  return scores
