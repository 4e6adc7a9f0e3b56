"""Test-split evaluations during training, every `eval_every_epochs` whole epochs (an epoch hook).

The trainer evaluates once, after its last step (`trainer.evaluate`); a run with
`eval_every_epochs = N > 0` also evaluates after epochs N, 2N, ... by the trainer's own
`epoch_hook` (called after the step that completes each epoch) and records them in
`<workdir>/evaluations.json`, one atomic write per evaluation. A run resumed from a checkpoint
keeps the evaluations recorded before it and evaluates again the epochs it trains again (the same
state, so the same numbers). `summary()` adds the list and the best to results.json: the best
is DD-Ranking's (`ddranking.first_best`: the first of equal bests, from 0), a number chosen on
the test set.

DD-Ranking 0.2.0 evaluates where `(epoch + 1) % self.test_interval == 0` for 0-based epochs,
after 20, 40, ... whole epochs (`ddranking/metrics/soft_label.py` L374, `aug_robust.py` L301);
here an epoch ends with the step whose examples reach a multiple of the pool size.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections

from hardlabel_jax import ddranking
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import run_data
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax import trainer

EVALUATIONS_FILE = "evaluations.json"
EpochHook = Callable[[int, train_state_lib.TrainState], None]


class PeriodicEvaluation:
  """`(epoch, state)` → the test metrics after every `eval_every_epochs` whole epochs, on disk."""

  def __init__(self, config: ml_collections.ConfigDict, data: run_data.RunData,
               mesh: jax.sharding.Mesh, workdir: str):
    if config.eval_every_epochs < 1:
      raise ValueError(f"config.eval_every_epochs: {config.eval_every_epochs}; a periodic "
                       "evaluation needs an interval >= 1")
    self._config, self._data, self._mesh = config, data, mesh
    self._every = int(config.eval_every_epochs)
    self._path = os.path.join(workdir, EVALUATIONS_FILE)
    model = models.model_from_config(config, data.train.info.num_classes)
    self._eval_fn = train_steps.jit_eval_step(mesh, model)
    self._evaluations = self._recorded()

  def _recorded(self) -> dict[int, dict[str, Any]]:
    """The evaluations of an interrupted run in this workdir, by epoch (none in a fresh one)."""
    if not os.path.exists(self._path):
      return {}
    with open(self._path) as f:
      saved = json.load(f)
    if saved.get("eval_every_epochs") != self._every:
      raise ValueError(f"{self._path} holds evaluations every {saved.get('eval_every_epochs')} "
                       f"epochs, this run evaluates every {self._every}; use a new workdir")
    return {int(e["epoch"]): e for e in saved["evaluations"]}

  def __call__(self, epoch: int, state: train_state_lib.TrainState) -> None:
    done = epoch + 1  # whole epochs trained
    if done % self._every:
      return
    metrics = trainer.evaluate(state, self._eval_fn, self._data, self._config, self._mesh)
    trainer.check_test_metrics(metrics, self._data, self._data.train.info.num_classes)
    self._evaluations[done] = {
        "epoch": done,
        "step": int(state.step),
        "test_top1": metrics["test_top1"],
        "test_loss": metrics["test_loss"]
    }
    if jax.process_index() == 0:
      metrics_log.write_json_atomic(self._path, self._record())
    metrics_log.log_line(f"evaluation after epoch {done}: test top-1 {metrics['test_top1']:.4f}, "
                         f"test loss {metrics['test_loss']:.4f}")

  def _record(self) -> dict[str, Any]:
    return {
        "eval_every_epochs": self._every,
        "evaluations": [self._evaluations[e] for e in sorted(self._evaluations)]
    }

  def summary(self) -> dict[str, Any]:
    """For results.json: every evaluation, and the best top-1 with its epoch and loss (None
    without an evaluation above 0, where DD-Ranking reports 0)."""
    evaluations = self._record()["evaluations"]
    best, index = ddranking.first_best([e["test_top1"] for e in evaluations])
    chosen = evaluations[index] if index is not None else None
    return {
        **self._record(), "best_test_top1": best,
        "best_epoch": chosen["epoch"] if chosen else None,
        "best_test_loss": chosen["test_loss"] if chosen else None
    }


def chained(*hooks: EpochHook | None) -> EpochHook | None:
  """One epoch hook calling each given hook in order (None when none is given)."""
  present = [h for h in hooks if h is not None]
  if not present:
    return None

  def hook(epoch: int, state: train_state_lib.TrainState) -> None:
    for each in present:
      each(epoch, state)

  return hook
