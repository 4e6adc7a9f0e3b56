"""Scoring runs (`task='score'`, DESIGN.md §7): per-example training dynamics, keyed by id.

An HL run on the pool (by default the whole train split) for K epochs; after every epoch the
model is evaluated on the centre view of every pool example and `difficulty.epoch_statistics`
(true-class probability, EL2N, margin, correctness) is stored, a few floats per example per
epoch. At the end the per-epoch statistics become scores — EL2N, AUM, forgetting events, dynamic
uncertainty and CAD — written with a header to `<workdir>/scores.npz` for the selectors. For
CAD-Prune, K comes from the downstream budget: `K·N = E_down·n`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import difficulty
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import train_state as train_state_lib

SCORES_FILE = "scores.npz"
EPOCHS_DIR = "score_epochs"
STATISTICS = ("true_prob", "el2n", "margin", "correct")


def scoring_epochs(config: ml_collections.ConfigDict, pool_size: int, num_classes: int) -> int:
  """K: `score_epochs`, or CAD-Prune's compute match `K·N = E_down·n`."""
  if config.score_epochs:
    return int(config.score_epochs)
  subset = config.cad_subset_images_per_class * num_classes
  return selection.cad_prune_epochs(pool_size, subset, config.cad_downstream_epochs)


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
      os.replace(tmp, self.path(epoch))
    mesh_lib.sync_processes(f"scored epoch {epoch}")  # every process reads them at the end
    metrics_log.log_line(f"scored epoch {epoch + 1}: mean true-class probability "
                         f"{stats['true_prob'].mean():.4f}, accuracy {stats['correct'].mean():.4f}")


def scores_from_statistics(per_epoch: dict[str, np.ndarray], window: int,
                           num_windows: int) -> dict[str, np.ndarray]:
  """`[epochs, n]` statistics → one score per example (higher = harder, AUM excepted)."""
  epochs = per_epoch["true_prob"].shape[0]
  scores = {
      "el2n": per_epoch["el2n"].mean(axis=0),
      "aum": per_epoch["margin"].mean(axis=0),  # low AUM = hard or mislabeled
      "forgetting": np.asarray(difficulty.forgetting_events(per_epoch["correct"])),
      "final_true_prob": per_epoch["true_prob"][-1],
  }
  if epochs >= window:
    scores["dynamic_uncertainty"] = np.asarray(
        difficulty.dynamic_uncertainty(per_epoch["true_prob"], window)).mean(axis=0)
  if epochs >= window + num_windows:
    scores["cad"] = np.asarray(difficulty.cad_scores(per_epoch["true_prob"], window, num_windows))
  return {k: np.asarray(v, np.float32) for k, v in scores.items()}


def identity(score_config: ml_collections.ConfigDict, dataset_fingerprint: str) -> dict[str, Any]:
  """What a score file is: the fields its scoring run reads and its split's fingerprint."""
  return {"run": cache.run_recipe(score_config), "dataset_fingerprint": dataset_fingerprint}


def training_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  """The HL run a scoring run trains: `epochs` epochs over the pool, whatever the budget says."""
  train_config = config.copy_and_resolve_references()
  train_config.num_epochs = float(epochs)
  train_config.budget_examples = 0
  return train_config


def write_scores(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
                 recorder: EpochRecorder, epochs: int, final_state: train_state_lib.TrainState,
                 scoring_test_top1: float) -> dict[str, np.ndarray]:
  """Per-epoch statistics of a finished scoring run → `<workdir>/scores.npz`; the scores."""
  if not os.path.exists(recorder.path(epochs - 1)):
    # steps = ⌊K·N / batch⌋ can stop a few examples short of the last epoch boundary.
    recorder(epochs - 1, final_state)
  missing = [e for e in range(epochs) if not os.path.exists(recorder.path(e))]
  if missing:
    raise RuntimeError(f"scoring epochs {missing} were not recorded in {workdir}/{EPOCHS_DIR}")
  per_epoch = {}
  for name in STATISTICS:
    per_epoch[name] = np.stack([np.load(recorder.path(e))[name] for e in range(epochs)])
  scores = scores_from_statistics(per_epoch, config.cad_window, config.cad_num_windows)
  header = {
      "dataset": data.train.info.name,
      "fingerprint": data.train.info.fingerprint,
      "model": config.model,
      "epochs": epochs,
      "seed": config.seed,
      "cad_window": config.cad_window,
      "cad_num_windows": config.cad_num_windows,
      "scoring_test_top1": scoring_test_top1
  }
  if jax.process_index() == 0:
    selection.save_scores(os.path.join(workdir, SCORES_FILE), scores, data.pool_ids, header)
  mesh_lib.sync_processes("scores written")
  metrics_log.log_line(f"scores {', '.join(sorted(scores))} for {len(data.pool_ids)} examples "
                       f"in {os.path.join(workdir, SCORES_FILE)}")
  return scores
