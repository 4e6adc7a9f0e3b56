"""Label-regime studies (`task='study'`, DESIGN.md §3): does subset quality matter under a regime?

A grid of label regimes × selection methods × images per class × seeds; every cell is the same
config run as `task='train'` for the same compute budget (`budget_examples`). The cells share the
expensive parts through `cache_dir`: one teacher, one scoring run per score config (EL2N/AUM once,
CAD-Prune once per subset size since its K follows the budget) and one soft-label table per
subset. Each cell keeps its own workdir under `<workdir>/cells/`; a finished cell is skipped and an
interrupted one resumes from its checkpoint, so a killed study, started again, ends with the same
`results.csv` as an uninterrupted one. `study_report` turns the CSV into tables and plots.

`study_label_tables` adds a grid axis to the SL and HALD cells: one cell per (crops_per_image,
label_keep_fraction) pair, named `...-c16k0.25-s0`, so one study compares the regimes at several
soft-label budgets (HALD's accuracy vs label bytes). Left empty, the cells, their names and their
configs are those of a study without the field, and a cached study resumes as before.

`study_window_positions` and `study_cad_epochs` are the premise sweep's axes
(configs/fashion_premise.py): one el2n_window / cad_window cell per window position (`...-w0.25-s0`)
and one cad_prune cell per scoring length K (`...-k12-s0`); `premise_report` reads them, and
`cad_picks` describes the images every CAD-Prune cell at its compute-matched K trained on.

DD-Ranking's scores (`ddranking`, written by `study_report` into report.md and scores.json) need
two more kinds of cell: `study_no_augmentation` gives every cell but `full` a twin trained without
augmentation (`...-noaug-s0`), and `study_full_regimes` trains the full split under some regimes
only (the check: HL). `study_protocol='ddranking'` trains each cell as DD-Ranking evaluates: one
run per learning rate of its search in `cells/<cell>/lr<rate>/`, evaluated every 20 epochs, and
the cell's results.json the best evaluation of the best rate (chosen on the test set).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from hardlabel_jax import cad_picks
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import ddranking
from hardlabel_jax import distill
from hardlabel_jax import image_sets
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import plan as plan_lib
from hardlabel_jax import preemption
from hardlabel_jax import premise_report
from hardlabel_jax import run_data
from hardlabel_jax import scoring
from hardlabel_jax import selection
from hardlabel_jax import study_report
from hardlabel_jax import tensor_sets
from hardlabel_jax import trainer
from hardlabel_jax import workdir_lock
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import tensor_set

FULL = "full"  # the method that trains on the whole train split (ipc 0 in the CSV)
EXTERNAL = "external"  # an external set (study_external_set) trained as a pool of the data set
METHODS = config_schema.SELECTIONS + config_schema.STUDY_POOLS
CAD_METHODS = config_schema.CAD_SELECTIONS
CELLS_DIR = "cells"
RESULTS_CSV = "results.csv"
CELL_CONFIG_FILE = "study_cell.json"  # a cell's config as the study built it, before resolution
# crops_per_image and label_keep_fraction: the soft-label table an SL/HALD cell trained on (empty
# for the regimes that read no table).
# budget_rule: the study's (STUDY_BUDGET_RULES); cad_scoring_epochs and cad_window_used: the K and
# J of a CAD-ranked cell's scoring run, cad_matched_epochs the compute-matched K = E·n/N at its size
# (empty for the other methods). variant: a premise-sweep cell's K or window ('k12', 'w0.25'; empty
# elsewhere), window_position: a rank-window cell's position. augmentation: 'none' for a cell of
# the no-augmentation arm (study_no_augmentation), '' otherwise; learning_rate: the one the row's
# accuracy trained at (DD-Ranking's protocol: the one its search chose); protocol: study_protocol.
CSV_FIELDS = ("regime", "method", "ipc", "seed", "test_top1", "test_loss", "budget_rule",
              "examples_seen", "steps", "epochs", "pool_size", "label_source", "label_bytes",
              "crops_per_image", "label_keep_fraction", "cad_scoring_epochs", "cad_window_used",
              "cad_matched_epochs", "variant", "window_position", "wall_seconds", "augmentation",
              "learning_rate", "protocol")
# Where each regime's training targets come from (the bytes plot separates the three).
LABEL_SOURCES = {
    regime: "table" if regime in config_schema.TABLE_REGIMES else "teacher" if regime
            in config_schema.ONLINE_TEACHER_REGIMES else "hard" for regime in config_schema.REGIMES
}
_STUDY_FIELDS = tuple(k for k in config_schema.default_config() if k.startswith("study_"))
TABLE_FIELDS = ("crops_per_image", "label_keep_fraction")  # what a study_label_tables entry sets
# DD-Ranking's "without augmentation" (ddranking 0.2.0 aug_robust.py: no `aug_func` and the
# `default_transform`, Resize → ToTensor → Normalize): the whole image (crops.whole_image_spec;
# the centre square of a non-square one), unflipped, no CutMix, DSA or ShufflePatches, and HALD's
# hard phase without its CutMix. Applied after the regime overrides: the arm is its definition.
NO_AUGMENTATION = {
    "train_crop_recipe": "rrc",
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "random_flip": False,
    "cutmix_alpha": 0.0,
    "hald_cutmix_alpha": 0.0
}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One training run of the grid."""

  regime: str
  method: str
  ipc: int  # 0 for the full train split
  seed: int
  # The label table of a `study_label_tables` cell; 0 in a cell the axis does not split (the
  # study's own crops_per_image and label_keep_fraction), whose name stays as before the axis.
  crops: int = 0
  keep: float = 0.0
  # The premise sweep: a cad_prune cell's scoring length K of `study_cad_epochs` (0: the
  # compute-matched K), a rank-window cell's position of `study_window_positions`.
  cad_epochs: int = 0
  position: float | None = None
  # False: the cell of the no-augmentation arm (study_no_augmentation), named `...-noaug-s0`.
  augmented: bool = True

  @property
  def variant(self) -> str:
    """'k12' / 'w0.25' for a premise-sweep cell, '' for every other."""
    if self.cad_epochs:
      return f"k{self.cad_epochs}"
    return "" if self.position is None else f"w{self.position:g}"

  @property
  def name(self) -> str:
    size = "all" if self.method == FULL else f"ipc{self.ipc}"
    table = f"-c{self.crops}k{self.keep:g}" if self.crops else ""
    variant = f"-{self.variant}" if self.variant else ""
    arm = "" if self.augmented else "-noaug"
    return f"{self.regime}-{self.method}-{size}{table}{variant}{arm}-s{self.seed}"


def label_tables(config: ml_collections.ConfigDict, regime: str) -> tuple[tuple[int, float], ...]:
  """The (crops, keep) tables the regime's cells split into; ((0, 0.0),) when not split."""
  return config_schema.regime_label_tables(config, regime) or ((0, 0.0),)


def method_variants(config: ml_collections.ConfigDict, method: str) -> list[dict[str, Any]]:
  """The premise axis a method's cells split into: one K or window position each, or none."""
  if method in config_schema.WINDOW_SELECTIONS:
    return [{"position": float(p)} for p in config.study_window_positions]
  if method == "cad_prune" and config.study_cad_epochs:
    return [{"cad_epochs": int(k)} for k in config.study_cad_epochs]
  return [{}]


def full_regimes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The regimes the `full` method trains under: study_full_regimes, or every regime."""
  return tuple(config.study_full_regimes) or tuple(config.study_regimes)


def augmentation_arms(config: ml_collections.ConfigDict, method: str) -> tuple[bool, ...]:
  """(True,), and False too for every method but `full` with study_no_augmentation."""
  return (True, False) if config.study_no_augmentation and method != FULL else (True,)


def grid(config: ml_collections.ConfigDict) -> list[Cell]:
  """Every cell, in CSV order: regime, method, images per class, label table, variant, the
  augmentation arm, seed."""
  cells = []
  for regime in config.study_regimes:
    tables = label_tables(config, regime)
    for method in config.study_methods:
      if method == FULL and regime not in full_regimes(config):
        continue
      sizes = (0,) if method == FULL else config.study_images_per_class
      cells += [
          Cell(regime, method, int(ipc), int(seed), crops, keep, augmented=augmented, **variant)
          for ipc in sizes
          for crops, keep in tables
          for variant in method_variants(config, method)
          for augmented in augmentation_arms(config, method)
          for seed in config.study_seeds
      ]
  return cells


def _fail(field: str, message: str) -> None:
  raise ValueError(f"config.{field}: {message}")


def _train_base(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The study config as a plain train config: study fields back at their defaults.

  Resetting them keeps a cell's identity (and the hashes of the teacher, score and table caches)
  independent of the grid, so extending a study reuses everything already computed.
  """
  base = config.copy_and_resolve_references()
  defaults = config_schema.default_config()
  for field in _STUDY_FIELDS:
    base[field] = defaults[field]
  base.task = "train"
  return base


def score_config(config: ml_collections.ConfigDict, method: str, ipc: int, class_counts: np.ndarray,
                 cad_epochs: int = 0) -> ml_collections.ConfigDict:
  """The scoring run a scored method ranks by: HL on the whole split, seeded by the study.

  A CAD-ranked method's run lasts `cad_epochs` when given (the premise sweep), else the
  compute-matched K.
  """
  score = _train_base(config)
  score.task = "score"
  score.regime = "hl"
  score.selection = "random"
  score.images_per_class = 0
  score.subset_ids_file = ""
  score.scores_file = ""
  score.score_config = None
  score.teacher_config = None
  score.teacher_workdir = ""
  score.budget_examples = 0
  score.score_epochs = config.study_score_epochs
  if method in CAD_METHODS:
    score.score_epochs = cad_epochs or cad_scoring_epochs(config, ipc, int(class_counts.sum()),
                                                          len(class_counts))
  # Fields only other runs read (soft labels, KD, an optimizer the study does not use) back at
  # their defaults: the scoring run must validate, and its identity (its cache entry) must not
  # depend on them.
  return config_schema.reset_unread(score)


def epochs_per_subset(config: ml_collections.ConfigDict) -> bool:
  """Whether the study trains every cell a fixed number of epochs of its own pool."""
  return config.study_budget_rule == "epochs_per_subset"


def downstream_epochs(config: ml_collections.ConfigDict, ipc: int, num_classes: int) -> float:
  """E_down of a subset of `ipc` images per class: the rule's epochs, or the budget over n."""
  if epochs_per_subset(config):
    return float(config.study_epochs_per_subset)
  return config.budget_examples / (ipc * num_classes)


def cad_scoring_epochs(config: ml_collections.ConfigDict, ipc: int, num_examples: int,
                       num_classes: int) -> int:
  """CAD-Prune's K: the scoring run on all N examples costs the cell's compute, K·N = E_down·n.

  Under the epochs-per-subset rule K grows with the subset (K = E·n/N); under the fixed budget
  one K = B/N serves every size. A K that is not whole is rounded by `cad_epochs_rounding`. Set
  as `score_epochs` (not via the cad_* fields) so every size with the same K, and the EL2N run
  when its length is K too, share one scoring run.
  """
  return selection.cad_prune_epochs(num_examples, ipc * num_classes,
                                    downstream_epochs(config, ipc, num_classes),
                                    config.cad_epochs_rounding)


def cell_pool_size(cell: Cell, class_counts: np.ndarray) -> int:
  """The images a cell trains on: `ipc` per class, or the whole split for `full`."""
  return int(class_counts.sum()) if cell.method == FULL else cell.ipc * len(class_counts)


def cell_batch_size(config: ml_collections.ConfigDict, cell: Cell, class_counts: np.ndarray) -> int:
  """`global_batch_size`, or the cell's pool rounded down to a multiple of 8 when that is smaller.

  The DC/DSA evaluation loader (`DataLoader(batch_size=256)`) never batches more images than the
  set holds; a multiple of 8 keeps every batch splittable over 8 devices.
  """
  pool = cell_pool_size(cell, class_counts)
  return max(8, min(int(config.global_batch_size), pool // 8 * 8))


def cell_config(config: ml_collections.ConfigDict, cell: Cell, class_counts: np.ndarray,
                cache_dir: str) -> ml_collections.ConfigDict:
  """The task='train' config of one cell (regime overrides applied last, unread fields reset)."""
  cell_cfg = _train_base(config)
  cell_cfg.regime = cell.regime
  cell_cfg.seed = cell.seed
  cell_cfg.subset_seed = cell.seed  # a random subset is redrawn per seed
  cell_cfg.cache_dir = cache_dir
  if cell.method == FULL:
    cell_cfg.selection, cell_cfg.images_per_class = "random", 0
  elif cell.method == EXTERNAL:
    cell_cfg = image_sets.folder_config(cell_cfg, external_path(config),
                                        config.study_external_class_order)
    if (config.study_external_table and cell.regime in config_schema.TABLE_REGIMES
        and cell.augmented):
      # The labels the set's method published (hardlabel_jax.fkd_labels), not our relabel; they
      # belong to their own crops, so the no-augmentation arm's whole images are relabelled.
      cell_cfg.imported_table_dir = os.path.abspath(config.study_external_table)
  else:
    cell_cfg.selection, cell_cfg.images_per_class = cell.method, cell.ipc
  if epochs_per_subset(config):
    # Every subset trains E epochs of its own pool; the full split its own (reported) epochs.
    cell_cfg.budget_examples = 0
    full_epochs = config.study_full_epochs or config.study_epochs_per_subset
    cell_cfg.num_epochs = float(full_epochs if cell.method ==
                                FULL else config.study_epochs_per_subset)
  if config.study_batch_at_most_pool:
    cell_cfg.global_batch_size = cell_batch_size(config, cell, class_counts)
  if cell.crops:  # a study_label_tables cell (no regime override sets these: _check_grid_fields)
    cell_cfg.crops_per_image, cell_cfg.label_keep_fraction = cell.crops, cell.keep
  if cell.position is not None:
    cell_cfg.window_position = cell.position
  if cell.method in config_schema.SCORED_SELECTIONS:
    cell_cfg.score_config = score_config(config, cell.method, cell.ipc, class_counts,
                                         cell.cad_epochs)
  overrides = config.study_regime_overrides.get(cell.regime)
  for field, value in (overrides.items() if overrides else ()):
    cell_cfg[field] = value
  if not cell.augmented:
    for field, value in NO_AUGMENTATION.items():
      cell_cfg[field] = value
  if config.study_protocol == "ddranking":
    cell_cfg.eval_every_epochs = ddranking.TEST_INTERVAL_EPOCHS
    if epochs_per_subset(config):
      # DD-Ranking trains whole epochs, the last batch short, and evaluates after the last one;
      # whole batches here, so the budget rounds up to the batch that completes epoch E.
      batch = cell_cfg.global_batch_size
      cell_cfg.budget_examples = math.ceil(
          cell_cfg.num_epochs * cell_pool_size(cell, class_counts) / batch) * batch
  # The study's fields for other regimes and methods (a temperature, a teacher) back at their
  # defaults: the cell must validate, and an HL cell's identity must not depend on them.
  return config_schema.reset_unread(cell_cfg)


def learning_rate_runs(
    config: ml_collections.ConfigDict, cell: Cell,
    cell_cfg: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(subdirectory, config) of the training runs a cell's accuracy comes from.

  The library's protocol: the cell itself, in its own workdir (''). DD-Ranking's: one run per
  learning rate of its search (`lr0.001`, ...), or, for the full data, which it trains once at a
  fixed recipe, and for a set with its own learned rate (a tensor set's lr.pt, as DD-Ranking's
  `syn_lr` skips the search, soft_label.py L547), one at that rate.
  """
  if config.study_protocol != "ddranking":
    return [("", cell_cfg)]
  learned = tensor_sets.learned_rate(cell_cfg)
  if cell.method == FULL or learned is not None:
    rates = (learned if learned is not None else cell_cfg.learning_rate,)
  else:
    rates = ddranking.LEARNING_RATES
  runs = []
  for rate in rates:
    run = cell_cfg.copy_and_resolve_references()
    run.learning_rate = float(rate)
    runs.append((f"lr{rate:g}", run))
  return runs


def _run_dir(cell_dir: str, subdirectory: str) -> str:
  return os.path.join(cell_dir, subdirectory) if subdirectory else cell_dir


def searched_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """A cell's results under DD-Ranking's protocol, from its runs' results (search order).

  Its rule (`_hyper_param_search_for_*_label`): the run whose best evaluation is highest, the
  first of equal ones, starting from 0; the cell's test_top1 is that best evaluation, chosen on
  the test set. With no evaluation above 0 the accuracy is 0 and the rate 0, as there.
  """
  best, index = ddranking.first_best([r["best_test_top1"] for r in runs])
  chosen = runs[0 if index is None else index]
  return {
      **chosen, "protocol": "ddranking",
      "selected_on_test_set": True,
      "test_top1": best,
      "test_loss": chosen["test_loss"] if index is None else chosen["best_test_loss"],
      "final_test_top1": chosen["test_top1"],
      "final_test_loss": chosen["test_loss"],
      "selected_learning_rate": 0.0 if index is None else chosen["config"]["learning_rate"],
      "learning_rate_search": [{
          "learning_rate": r["config"]["learning_rate"],
          "best_test_top1": r["best_test_top1"],
          "best_epoch": r["best_epoch"]
      } for r in runs],
      "wall_seconds": sum(r["wall_seconds"] for r in runs)
  }


def _check_evaluated(configs: dict[Cell, ml_collections.ConfigDict],
                     class_counts: np.ndarray) -> None:
  """DD-Ranking's protocol: every cell trains at least one evaluation interval."""
  interval = ddranking.TEST_INTERVAL_EPOCHS
  for cell, cell_cfg in configs.items():
    epochs = trainer.budget_from_config(cell_cfg, cell_pool_size(cell, class_counts)).epochs
    if epochs < interval:
      _fail(
          "study_protocol", f"'ddranking' reports the best test accuracy of evaluations after "
          f"every {interval} epochs; cell {cell.name} trains {epochs:.1f} epochs, so it has none "
          f"(DD-Ranking would report 0). Give every cell >= {interval} epochs, e.g. "
          "study_budget_rule='epochs_per_subset' with study_epochs_per_subset and "
          "study_full_epochs")


def _check_grid_fields(config: ml_collections.ConfigDict) -> None:
  """The grid's own fields: known names, no repeats, positive sizes, a positive budget."""
  for field, known in (("study_regimes", config_schema.REGIMES), ("study_methods", METHODS)):
    values = tuple(config[field])
    if not values:
      _fail(field, "is empty")
    for value in values:
      if value not in known:
        _fail(field, f"{value!r} is not one of {', '.join(known)}")
    if len(set(values)) != len(values):
      _fail(field, f"{values} repeats an entry")
  for regime in config.study_first_regimes:
    if regime not in config.study_regimes:
      _fail("study_first_regimes", f"{regime!r} is not a regime of this study "
            f"({', '.join(config.study_regimes)})")
  if not config.study_seeds or any(int(s) < 0 for s in config.study_seeds):
    _fail("study_seeds", "must be a non-empty list of seeds >= 0")
  if len(set(config.study_seeds)) != len(config.study_seeds):
    _fail("study_seeds", f"{tuple(config.study_seeds)} repeats a seed")
  if set(config.study_methods) - {FULL}:
    if not config.study_images_per_class or any(int(i) < 1 for i in config.study_images_per_class):
      _fail("study_images_per_class", "must be a non-empty list of sizes >= 1")
  if epochs_per_subset(config):
    if config.study_epochs_per_subset <= 0:
      _fail(
          "study_epochs_per_subset", "study_budget_rule='epochs_per_subset' trains every cell "
          "this many epochs of its own pool; set a positive number")
    if config.study_full_epochs < 0:
      _fail("study_full_epochs", "must be >= 0 (0: study_epochs_per_subset)")
  else:
    for field in ("study_epochs_per_subset", "study_full_epochs"):
      if config[field]:
        _fail(
            field, "only study_budget_rule='epochs_per_subset' reads it; this study gives every "
            "cell budget_examples")
    if config.budget_examples <= 0:
      _fail(
          "budget_examples", "every cell of a study trains for the same budget; set a positive "
          "number of training examples")
    if config.budget_examples < config.global_batch_size:
      _fail(
          "budget_examples", f"{config.budget_examples} examples is less than one global batch "
          f"({config.global_batch_size})")
  _check_premise_axes(config)
  _check_ddranking_fields(config)
  if set(config.study_methods) & {"el2n_easy", "el2n_hard", "el2n_window", "ccs"} and \
      config.study_score_epochs < 1:
    _fail("study_score_epochs", "EL2N and CCS rank by a scoring run; it needs >= 1 epoch")
  tables = config_schema.label_tables(config)
  if tables and not set(config.study_regimes) & set(config_schema.TABLE_REGIMES):
    _fail(
        "study_label_tables", f"only {', '.join(config_schema.TABLE_REGIMES)} cells read a "
        f"label table; this study has none ({', '.join(config.study_regimes)})")
  defaults = config_schema.default_config()
  for regime, overrides in config.study_regime_overrides.items():
    if regime not in config.study_regimes:
      _fail(f"study_regime_overrides.{regime}", f"is not a regime of this study "
            f"({', '.join(config.study_regimes)})")
    for field in overrides:
      if field not in defaults or field.startswith("study_") or field in ("task", "regime"):
        _fail(f"study_regime_overrides.{regime}.{field}", "is not a cell config field")
      if tables and regime in config_schema.TABLE_REGIMES and field in TABLE_FIELDS:
        # The override would give every table of the axis one value: cells named apart, run alike.
        _fail(f"study_regime_overrides.{regime}.{field}",
              "study_label_tables sets it in every table cell; remove one of the two")


def _check_ddranking_fields(config: ml_collections.ConfigDict) -> None:
  """study_full_regimes, study_no_augmentation and study_protocol: what DD-Ranking's scores need."""
  regimes = tuple(config.study_full_regimes)
  if regimes and FULL not in config.study_methods:
    _fail("study_full_regimes", "only 'full' cells read it; add 'full' to study_methods or leave "
          "it empty")
  for regime in regimes:
    if regime not in config.study_regimes:
      _fail("study_full_regimes", f"{regime!r} is not a regime of this study "
            f"({', '.join(config.study_regimes)})")
  if len(set(regimes)) != len(regimes):
    _fail("study_full_regimes", f"{regimes} repeats a regime")
  if config.study_no_augmentation and not set(config.study_methods) - {FULL}:
    _fail(
        "study_no_augmentation", "the arm trains every cell but 'full' without augmentation; "
        "this study has no other method")
  interval = ddranking.TEST_INTERVAL_EPOCHS
  if config.study_protocol == "ddranking" and config.eval_every_epochs not in (0, interval):
    _fail(
        "eval_every_epochs", f"study_protocol='ddranking' evaluates every {interval} epochs "
        "(DD-Ranking's test_interval); leave it at 0")


def _check_premise_axes(config: ml_collections.ConfigDict) -> None:
  """study_window_positions exactly with a rank-window method; study_cad_epochs with cad_prune."""
  positions = tuple(float(p) for p in config.study_window_positions)
  windows = set(config.study_methods) & set(config_schema.WINDOW_SELECTIONS)
  if bool(positions) != bool(windows):
    _fail(
        "study_window_positions", "set it exactly when study_methods has "
        f"{' or '.join(config_schema.WINDOW_SELECTIONS)} (their cells are one per position)")
  if any(not 0 <= p <= 1 for p in positions):
    _fail(
        "study_window_positions", f"{positions}: every position lies in [0, 1] (0: the lowest "
        "scores of each class, 1: the highest)")
  if len(set(positions)) != len(positions):
    _fail("study_window_positions", f"{positions} repeats a position")
  epochs = tuple(config.study_cad_epochs)
  if epochs and "cad_prune" not in config.study_methods:
    _fail(
        "study_cad_epochs", "only cad_prune cells split by scoring length; add 'cad_prune' to "
        "study_methods or leave it empty")
  if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in epochs):
    _fail("study_cad_epochs", f"{epochs}: scoring lengths are whole epochs >= 1")
  if len(set(epochs)) != len(epochs):
    _fail("study_cad_epochs", f"{epochs} repeats a length")


def _check_sizes(config: ml_collections.ConfigDict, class_counts: np.ndarray) -> None:
  """Subset sizes the data can hold, and CAD scoring runs long enough for their windows."""
  smallest = int(class_counts.min())
  distilled = set(config.study_methods) & set(distill.METHODS)
  for ipc in (int(i) for i in config.study_images_per_class):
    if ipc > smallest:
      _fail(
          "study_images_per_class", f"{ipc} images per class is more than class "
          f"{int(class_counts.argmin())} has ({smallest})")
    needed = ipc * run_data.rded_factor(config)**2
    candidates = min(distill.candidates_per_class(config, smallest), smallest)
    if "rded" in distilled and needed > candidates:
      _fail(
          "study_images_per_class", f"rded at {ipc} images per class stitch {needed} crops of "
          f"as many real images per class; only {candidates} candidates "
          "(rded_candidates_per_class)")
    if "ca2d" in distilled and config.ca2d_pool == "cad_top_mipc" and needed > candidates:
      # CA2D filters the best crops of the top-mipc images by CAD of every class, as RDED.
      _fail(
          "study_images_per_class", f"ca2d at {ipc} images per class stitch {needed} crops of "
          f"as many real images per class; only {candidates} candidates by CAD "
          "(rded_candidates_per_class)")
    if "ca2d" in distilled and config.ca2d_pool == "cad_selection" and needed > smallest:
      # 'cad_selection' builds from CAD-Prune's ipc·f² images of every class, whatever mipc says.
      _fail(
          "study_images_per_class", f"ca2d at {ipc} images per class needs {needed} real "
          f"images of every class; class {int(class_counts.argmin())} has {smallest}")
    cad = set(config.study_methods) & set(CAD_METHODS)
    if cad - {"cad_prune"} or (cad and not config.study_cad_epochs):
      epochs = cad_scoring_epochs(config, ipc, int(class_counts.sum()), len(class_counts))
      # The scoring run gets K as score_epochs, so it cannot refuse a K its windows do not fit
      # (an EL2N run may be as short): the study refuses it here, naming the fields.
      scoring.check_cad_windows(config, epochs,
                                f"CAD-Prune at {ipc} images per class scores (K·N = E_down·n) for")
  if "cad_prune" in config.study_methods:
    for epochs in (int(k) for k in config.study_cad_epochs):
      scoring.check_cad_windows(config, epochs, "study_cad_epochs has a scoring run of")


def external_path(config: ml_collections.ConfigDict) -> str:
  """The directory of `study_external_set`, given as a path, 'imagefolder:<path>' or
  'tensors:<dir>' (a directory holding images.pt is a tensor set whichever way it is named)."""
  path = config.study_external_set
  for prefix in (image_folder.PREFIX, tensor_set.PREFIX):
    path = path.removeprefix(prefix)
  return os.path.abspath(path)


def external_images_per_class(config: ml_collections.ConfigDict, num_classes: int) -> int:
  """The external set's images per class (equal for every class), its classes mapped onto the
  test split's by `study_external_class_order` (a mismatch fails here, before any training)."""
  folder = image_sets.folder_config(_train_base(config), external_path(config),
                                    config.study_external_class_order)
  counts = np.bincount(np.asarray(run_data.train_source(folder).labels()), minlength=num_classes)
  if counts.min() != counts.max():
    _fail(
        "study_external_set", f"{config.study_external_set} holds {counts.min()} to "
        f"{counts.max()} images per class; the check compares with random subsets of the same "
        "images per class, so every class needs as many")
  return int(counts[0])


def with_external_size(config: ml_collections.ConfigDict,
                       class_counts: np.ndarray) -> ml_collections.ConfigDict:
  """The study with the external set's images per class as its size (the grid compares at it)."""
  has_method = EXTERNAL in config.study_methods
  if has_method != bool(config.study_external_set):
    _fail("study_external_set", "set it exactly when study_methods has 'external' (the set's path)")
  if not has_method:
    return config
  ipc = external_images_per_class(config, len(class_counts))
  if tuple(config.study_images_per_class) not in ((), (ipc,)):
    _fail(
        "study_images_per_class", f"{tuple(config.study_images_per_class)}: the external set "
        f"has {ipc} images per class; leave it empty or set ({ipc},)")
  out = config.copy_and_resolve_references()
  out.study_images_per_class = (ipc,)
  return out


def _check_teacher(config: ml_collections.ConfigDict) -> None:
  needs = [r for r in config.study_regimes if r != "hl"]
  needs += [m for m in config.study_methods if m in plan_lib.SET_METHODS]
  if needs and config.teacher_config is None and not config.teacher_workdir:
    _fail(
        "teacher_config", f"{', '.join(needs)} need a teacher; set teacher_config (trained on "
        "first use) or teacher_workdir")


def train_class_counts(config: ml_collections.ConfigDict) -> np.ndarray:
  """Training images per class of the study's train split."""
  train = run_data.train_source(config)
  return np.bincount(np.asarray(train.labels()), minlength=train.info.num_classes)


def validate_study(config: ml_collections.ConfigDict, counts: np.ndarray,
                   cache_dir: str) -> dict[Cell, ml_collections.ConfigDict]:
  """Every cell's config, or a ValueError naming the field, before anything is trained."""
  config_schema.validate(config)
  if config.task != "study":
    _fail("task", f"{config.task!r}: a study config has task='study'")
  _check_grid_fields(config)
  _check_sizes(config, counts)
  _check_teacher(config)
  configs = {cell: cell_config(config, cell, counts, cache_dir) for cell in grid(config)}
  for cell, cell_cfg in configs.items():
    try:
      config_schema.validate(cell_cfg)
    except ValueError as e:
      raise ValueError(f"study cell {cell.name}: {e}") from e
  if config.study_protocol == "ddranking":
    _check_evaluated(configs, counts)
  return configs


def _table_columns(cell: Cell, results: dict[str, Any]) -> tuple[Any, Any]:
  """The crops_per_image and label_keep_fraction a cell trained with; empty without a table."""
  if cell.regime not in config_schema.TABLE_REGIMES:
    return "", ""
  config = results.get("config") or {}
  if "crops_per_image" in config and "label_keep_fraction" in config:
    return int(config["crops_per_image"]), float(config["label_keep_fraction"])
  return (cell.crops, cell.keep) if cell.crops else ("", "")


def cell_row(cell: Cell, results: dict[str, Any], budget_rule: str,
             matched_epochs: int = 0) -> dict[str, Any]:
  """The CSV row of a finished cell of a study under `budget_rule`; `matched_epochs` is CAD's
  compute-matched K at the cell's size (0 for a cell that does not rank by CAD)."""
  crops, keep = _table_columns(cell, results)
  return {
      "regime": cell.regime,
      "method": cell.method,
      "ipc": cell.ipc,
      "seed": cell.seed,
      "test_top1": results["test_top1"],
      "test_loss": results["test_loss"],
      "budget_rule": budget_rule,
      "examples_seen": results["examples_seen"],
      "steps": results["steps"],
      "epochs": round(results["epochs"], 4),
      "pool_size": results["pool_size"],
      "label_source": LABEL_SOURCES[cell.regime],
      "label_bytes": results["label_bytes"],
      "crops_per_image": crops,
      "label_keep_fraction": keep,
      "cad_scoring_epochs": results.get("cad_scoring_epochs") or "",
      "cad_window_used": results.get("cad_window_used") or "",
      "cad_matched_epochs": matched_epochs or "",
      "variant": cell.variant,
      "window_position": "" if cell.position is None else cell.position,
      "wall_seconds": round(results["wall_seconds"], 1),
      "augmentation": "" if cell.augmented else ddranking.NO_AUGMENTATION,
      "learning_rate": results.get("selected_learning_rate",
                                   results.get("config", {}).get("learning_rate", "")),
      "protocol": results.get("protocol", "library")
  }


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
  """`rows` as CSV with the fixed columns, atomically."""
  metrics_log.write_csv_atomic(path, rows, CSV_FIELDS)


def matched_cad_epochs(config: ml_collections.ConfigDict, cell: Cell,
                       class_counts: np.ndarray) -> int:
  """CAD's compute-matched K at a CAD-ranked cell's size; 0 for the other cells."""
  if cell.method not in CAD_METHODS:
    return 0
  return cad_scoring_epochs(config, cell.ipc, int(class_counts.sum()), len(class_counts))


def _finished_rows(workdir: str, cells: list[Cell], config: ml_collections.ConfigDict,
                   class_counts: np.ndarray) -> list[dict[str, Any]]:
  rows = []
  for cell in cells:
    path = os.path.join(workdir, CELLS_DIR, cell.name, plan_lib.RESULTS_FILE)
    if os.path.exists(path):
      with open(path) as f:
        rows.append(
            cell_row(cell, json.load(f), config.study_budget_rule,
                     matched_cad_epochs(config, cell, class_counts)))
  return rows


def budget_text(config: ml_collections.ConfigDict) -> str:
  """The study's budget rule in words, for the log and the report."""
  if epochs_per_subset(config):
    full = config.study_full_epochs or config.study_epochs_per_subset
    return (f"epochs per subset: every cell trains {config.study_epochs_per_subset:g} epochs of "
            f"its own pool, the full split {full:g}")
  return f"fixed budget: every cell trains {config.budget_examples} examples"


def run(config: ml_collections.ConfigDict, workdir: str, *, devices: list[jax.Device] | None = None,
        step_hook: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
  """Trains every missing cell, then writes results.csv and the report; returns the rows."""
  cache_dir = os.path.abspath(config.cache_dir or os.path.join(workdir, "cache"))
  counts = train_class_counts(config)
  config = with_external_size(config, counts)
  configs = validate_study(config, counts, cache_dir)
  mesh = mesh_lib.data_mesh(devices)
  mesh_lib.check_divisible(config.global_batch_size, mesh)
  if not jax.config.jax_compilation_cache_dir:
    # Cells differ in data, not in shapes: their steps compile to the same programs, so a
    # persistent cache turns every compile after the first into a lookup (~3 s → ~0 per cell).
    jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir, "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  for cell, cell_cfg in configs.items():
    # A cell finished or begun under another config would mix two studies in one table. (The
    # cell's own run_config.json holds its resolved config: score file and distilled set paths.)
    cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
    checkpointing.check_same_run(cell_dir, cell_cfg, CELL_CONFIG_FILE)
    results_path = os.path.join(cell_dir, plan_lib.RESULTS_FILE)
    if os.path.exists(results_path):
      _check_finished_protocol(config, cell, results_path)
      continue
    for subdirectory, run_cfg in learning_rate_runs(config, cell, cell_cfg):
      run_dir = _run_dir(cell_dir, subdirectory)
      if not os.path.exists(os.path.join(run_dir, plan_lib.RESULTS_FILE)):
        # The shared teacher, scores, sets and tables a run still to train would use, and the
        # workdir it resumes in, checked up front too (a finished run is only read).
        plan_lib.check(plan_lib.make_plan(run_cfg, run_dir, "train"))
  lock = workdir_lock.workdir_lock_path(workdir)
  with workdir_lock.hold(lock, f"the study workdir {os.path.abspath(workdir)}"):
    return _train_cells(config, configs, counts, workdir, cache_dir, devices, step_hook)


def _check_finished_protocol(config: ml_collections.ConfigDict, cell: Cell, path: str) -> None:
  """A finished cell's accuracy came from this study's protocol (its results.json says which)."""
  with open(path) as f:
    protocol = json.load(f).get("protocol", "library")
  if protocol != config.study_protocol:
    _fail(
        "study_protocol", f"{config.study_protocol!r}, but cell {cell.name} in "
        f"{os.path.dirname(path)} finished under {protocol!r}; use a new workdir")


def _train_searched_cell(config: ml_collections.ConfigDict, cell: Cell,
                         cell_cfg: ml_collections.ConfigDict, cell_dir: str,
                         devices: list[jax.Device] | None,
                         step_hook: Callable[[int], None] | None) -> None:
  """DD-Ranking's protocol: each of the cell's runs (a finished one is read), then the cell's
  results.json, its chosen run's (the file that marks the cell finished)."""
  runs = []
  for subdirectory, run_cfg in learning_rate_runs(config, cell, cell_cfg):
    run_dir = _run_dir(cell_dir, subdirectory)
    path = os.path.join(run_dir, plan_lib.RESULTS_FILE)
    if not os.path.exists(path):
      if preemption.stop_requested():
        raise preemption.stop(f"study stopped in cell {cell.name} before its run {subdirectory}")
      plan_lib.train(run_cfg, run_dir, devices=devices, step_hook=step_hook)
    with open(path) as f:
      runs.append(json.load(f))
  results = searched_results(runs)
  if jax.process_index() == 0:
    metrics_log.write_json_atomic(os.path.join(cell_dir, plan_lib.RESULTS_FILE), results)
  metrics_log.log_line(f"study: {cell.name} chose learning rate "
                       f"{results['selected_learning_rate']:g} (test top-1 "
                       f"{results['test_top1']:.4f}, selected on the test set)")


def cad_prune_picks(config: ml_collections.ConfigDict, configs: dict[Cell,
                                                                     ml_collections.ConfigDict],
                    class_counts: np.ndarray, workdir: str) -> list[cad_picks.Picks]:
  """The picks of every finished CAD-Prune cell at its compute-matched K, one per size and seed.

  The pool is chosen again from the cell's score file (selection is a pure function of it), so
  the picture is of exactly the images the cell trained on.
  """
  picks, seen = [], set()
  for cell, cell_cfg in configs.items():
    if cell.method != "cad_prune" or (cell.ipc, cell.seed) in seen:
      continue
    if cell.cad_epochs and cell.cad_epochs != matched_cad_epochs(config, cell, class_counts):
      continue
    cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
    if not os.path.exists(os.path.join(cell_dir, plan_lib.RESULTS_FILE)):
      continue
    resolved = plan_lib.make_plan(cell_cfg, cell_dir, "train").config
    train = run_data.train_source(resolved)
    scores = selection.load_scores(resolved.scores_file)
    try:
      picks.append(
          cad_picks.pick_statistics(scores, np.asarray(train.labels()),
                                    run_data.scored_pool(resolved, train), len(class_counts),
                                    ipc=cell.ipc, seed=cell.seed))
    except cad_picks.MissingPredictionsError as e:
      metrics_log.log_line(f"study: no picks analysis for {cell.name}: {e}")
      continue
    seen.add((cell.ipc, cell.seed))
  return picks


def training_order(config: ml_collections.ConfigDict, cells: list[Cell]) -> list[Cell]:
  """Cells by seed, then size (the full split after the first size), then method and regime.

  A study cut short then holds whole comparisons (every method and regime of the first seeds
  and sizes) rather than whole regimes; the CSV keeps the grid's order whatever trained first.
  `study_first_regimes` trains those regimes' cells (in this order) before any other.
  """
  seeds = [int(s) for s in config.study_seeds]
  sizes = [int(i) for i in config.study_images_per_class]
  methods, regimes = list(config.study_methods), list(config.study_regimes)

  first = tuple(config.study_first_regimes)

  def key(cell: Cell) -> tuple:
    # The full split is every size's reference: it trains once the first size's cells have.
    size = 0.5 if cell.method == FULL else sizes.index(cell.ipc)
    return (cell.regime not in first, seeds.index(cell.seed), size, methods.index(cell.method),
            regimes.index(cell.regime))

  return sorted(cells, key=key)  # stable: a size's label tables keep their grid order


def _train_cells(config: ml_collections.ConfigDict, configs: dict[Cell, ml_collections.ConfigDict],
                 counts: np.ndarray, workdir: str, cache_dir: str, devices: list[jax.Device] | None,
                 step_hook: Callable[[int], None] | None) -> list[dict[str, Any]]:
  """Trains the cells not finished yet (each in its own locked workdir), then the report."""
  cells = list(configs)
  is_writer = jax.process_index() == 0
  csv_path = os.path.join(workdir, RESULTS_CSV)
  todo = training_order(config, [
      c for c in cells
      if not os.path.exists(os.path.join(workdir, CELLS_DIR, c.name, plan_lib.RESULTS_FILE))
  ])
  tables = config_schema.label_tables(config)
  axis = (f"{len(tables)} label tables for "
          f"{', '.join(r for r in config.study_regimes if r in config_schema.TABLE_REGIMES)} × "
          if tables else "")
  premise = [
      f"{len(values)} {what}" for values, what in ((config.study_window_positions,
                                                    "window positions"), (config.study_cad_epochs,
                                                                          "CAD scoring lengths"))
      if values
  ]
  axis += "".join(f"{text} × " for text in premise)
  if config.study_no_augmentation:
    axis += "2 augmentation arms (all but full) × "
  if config.study_protocol == "ddranking":
    axis += f"{len(ddranking.LEARNING_RATES)} learning rates (all but full, DD-Ranking) × "
  metrics_log.log_line(f"study: {len(cells)} cells ({len(config.study_regimes)} regimes × "
                       f"{len(config.study_methods)} methods × "
                       f"{len(config.study_images_per_class)} sizes × {axis}"
                       f"{len(config.study_seeds)} seeds), {len(cells) - len(todo)} already "
                       f"finished; {budget_text(config)}; "
                       f"shared teacher, scores and tables in {cache_dir}")
  started = time.perf_counter()
  for done, cell in enumerate(todo):
    if preemption.stop_requested():
      # The cells before this one are in the CSV; a preempted cell keeps its checkpoint.
      raise preemption.stop(f"study stopped before cell {cells.index(cell) + 1}/{len(cells)} "
                            f"{cell.name}, {len(cells) - len(todo) + done} cells finished in "
                            f"{workdir}")
    elapsed = time.perf_counter() - started
    eta = f", ETA {metrics_log.format_seconds(elapsed / done * (len(todo) - done))}" if done else ""
    metrics_log.log_line(f"study: cell {cells.index(cell) + 1}/{len(cells)} {cell.name} "
                         f"({done}/{len(todo)} of this session done{eta})")
    cell_dir = os.path.join(workdir, CELLS_DIR, cell.name)
    if is_writer:
      os.makedirs(cell_dir, exist_ok=True)
      checkpointing.write_run_identity(cell_dir, configs[cell], CELL_CONFIG_FILE)
    if config.study_protocol == "ddranking":
      _train_searched_cell(config, cell, configs[cell], cell_dir, devices, step_hook)
    else:
      plan_lib.train(configs[cell], cell_dir, devices=devices, step_hook=step_hook)
    if is_writer:
      write_csv(_finished_rows(workdir, cells, config, counts), csv_path)
  rows = _finished_rows(workdir, cells, config, counts)
  if is_writer:
    write_csv(rows, csv_path)
    # The premise sweep's and CAD-Prune's picks' own pages first: report.md links them.
    extra = [
        premise_report.write(rows, workdir),
        cad_picks.write(cad_prune_picks(config, configs, counts, workdir), workdir,
                        run_data.train_source(config).info.class_names or None)
    ]
    report = study_report.write_report(rows, workdir, budget=budget_text(config))
    metrics_log.log_line(report.markdown)
    paths = [*report.paths, *(path for page in extra if page for path in page.paths)]
    metrics_log.log_line("results: " + ", ".join([csv_path, *paths]))
  return rows
