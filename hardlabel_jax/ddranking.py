"""DD-Ranking's scores of a distilled set (HLR, IOR, LRS, ARS) and the rules of its protocol.

Ported from `ddranking` 0.2.0 (NUS-HPC-AI-Lab/DD-Ranking; the wheel on PyPI):

- `ddranking/metrics/soft_label.py`, `LabelRobustScoreSoft.compute_metrics`, L561–564:
  `hlr = 1.00 * (full_data_hard_label_acc - syn_data_hard_label_acc)`,
  `ior = 1.00 * (syn_data_soft_label_acc - random_data_soft_label_acc)`,
  `alpha = lrs_lambda * ior - (1 - lrs_lambda) * hlr`,
  `lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))`, `lrs_lambda=0.5`.
- `ddranking/metrics/aug_robust.py`, `AugmentationRobustScore.compute_metrics`, L577–580: the
  gains over random with and without augmentation, `beta = ars_lambda * with_aug_score +
  (1 - ars_lambda) * without_aug_score` (a plus: both gains count for the set), the same map.

Units: percent. Its accuracies are `validate`'s `acc1.global_avg` of `utils/meter.py`
`accuracy()`, `correct * (100.0 / batch_size)`, so α is in points and, unlike its README's
"normalized to [0, 1]" (true for fractions), LRS and ARS leave [0, 1] for gaps beyond a point.

Aggregation: each evaluation run (`num_eval`, 5) gives one HLR, IOR, LRS (one ARS); the reported
scores are `np.mean` and `np.std` (population, ddof 0) of those per-run scores (L591–596 and
L607–612), never scores of mean accuracies. A run here is a seed of the study: that seed's random
subset (redrawn per seed, as its `_get_random_data_helper(eval_iter=i)` draws one per run), set
cell and full-data cell.

Its protocol (`study_protocol='ddranking'`): every synthetic and random run tries each of
`LEARNING_RATES` (`_hyper_param_search_for_*_label`, L211 and L240 of soft_label.py) and reports
the best test top-1 over evaluations after every `TEST_INTERVAL_EPOCHS` epochs (`test_interval`,
L130, `(epoch + 1) % self.test_interval == 0`), keeping the first best (`acc > best`, from 0); the
full data trains once at a fixed recipe. Both choices are made on the test set.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

SOURCE = ("ddranking 0.2.0: ddranking/metrics/soft_label.py L561-564 (HLR, IOR, LRS), "
          "ddranking/metrics/aug_robust.py L577-580 (ARS)")
LEARNING_RATES = (0.001, 0.005, 0.01, 0.05, 0.1)  # lr_list of both evaluators
TEST_INTERVAL_EPOCHS = 20  # self.test_interval of both evaluators
NUM_EVAL = 5  # num_eval's default: evaluation runs (seeds) per score
DEFAULT_LAMBDA = 0.5  # lrs_lambda and ars_lambda's defaults
HARD_REGIME = "hl"
FULL = "full"  # study.FULL: the full-data cell
RANDOM = "random"
NO_AUGMENTATION = "none"  # the `augmentation` of a row of the no-augmentation arm
LRS_SCORES = ("hlr", "ior", "lrs")  # per seed, then mean ± std, in an LRS entry
ARS_SCORES = ("with_aug_score", "without_aug_score", "ars")
NO_TABLE = (None, None)  # the (crops_per_image, label_keep_fraction) of a regime without a table


def hard_label_recovery(full_hard_label_acc: float, set_hard_label_acc: float) -> float:
  """HLR: how far the set's hard-label accuracy stays below the full data's (points)."""
  return 1.00 * (full_hard_label_acc - set_hard_label_acc)


def improvement_over_random(set_soft_label_acc: float, random_soft_label_acc: float) -> float:
  """IOR: the set's soft-label accuracy over a random subset's of the same size (points)."""
  return 1.00 * (set_soft_label_acc - random_soft_label_acc)


def exponential_score(weighted: float) -> float:
  """(e^x − e^−1) / (e − e^−1): DD-Ranking's map of a weighted gain (1 at x = 1, 0 at x = −1)."""
  return float((np.exp(weighted) - np.exp(-1)) / (np.exp(1) - np.exp(-1)))


def label_robust_score(hlr: float, ior: float, lrs_lambda: float = DEFAULT_LAMBDA) -> float:
  """LRS of one run: α = λ·IOR − (1 − λ)·HLR through `exponential_score`."""
  return exponential_score(lrs_lambda * ior - (1 - lrs_lambda) * hlr)


def augmentation_robust_score(with_aug_score: float, without_aug_score: float,
                              ars_lambda: float = DEFAULT_LAMBDA) -> float:
  """ARS of one run: β = λ·(gain with augmentation) + (1 − λ)·(gain without), mapped alike."""
  return exponential_score(ars_lambda * with_aug_score + (1 - ars_lambda) * without_aug_score)


def mean_std(values: Sequence[float]) -> dict[str, float]:
  """`np.mean` and `np.std` (population, ddof 0) over runs, as DD-Ranking reports a score."""
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def first_best(accuracies: Sequence[float]) -> tuple[float, int | None]:
  """The best accuracy and its index by DD-Ranking's loop: from 0, replaced only by a larger one.

  So the first of equal bests wins, and with no accuracy above 0 the index is None (its
  `best_lr` stays 0 and the accuracy reported is 0).
  """
  best, index = 0, None
  for i, accuracy in enumerate(accuracies):
    if accuracy > best:
      best, index = accuracy, i
  return float(best), index


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def _blank_as_none(value: Any) -> Any:
  return None if value in ("", None) else value


def _key(row: dict[str, Any]) -> tuple:
  """(regime, label table, method, ipc, augmentation, seed): one cell of a study.

  The table is (crops_per_image, label_keep_fraction), (None, None) for a regime without one (a
  study's rows hold '' there, a read CSV nothing).
  """
  table = (_blank_as_none(row.get("crops_per_image")),
           _blank_as_none(row.get("label_keep_fraction")))
  return (row["regime"], table, row["method"], row["ipc"], row.get("augmentation", ""), row["seed"])


def study_scores(rows: list[dict[str, Any]], lam: float = DEFAULT_LAMBDA) -> dict[str, Any]:
  """HLR, IOR, LRS and ARS of every method of a study against its random subsets, per seed.

  `rows` are a study's rows (study.cell_row, or study_report.read_csv): `test_top1` a fraction,
  taken ×100 into DD-Ranking's percent. For each method other than random and full and each
  size: LRS under every regime but HL (its IOR's soft labels), with the HL rows of the set and of
  the full data (the study's own augmentation) for HLR; ARS under every regime with both arms
  (`augmentation` '' and 'none'). A score is over the seeds that have all its cells; what a
  study lacks for a score is listed under `missing`. Premise-sweep rows (a `variant`) are left
  out.
  """
  cells = {}
  for row in rows:
    if row.get("variant"):
      continue
    cells[_key(row)] = 100.0 * float(row["test_top1"])
  regimes = list(dict.fromkeys(k[0] for k in cells))
  methods = [m for m in dict.fromkeys(k[2] for k in cells) if m not in (RANDOM, FULL)]
  sizes = sorted({k[3] for k in cells if k[2] not in (FULL,)})
  seeds = sorted({k[5] for k in cells})
  protocols = sorted({row.get("protocol") or "library" for row in rows})
  full_seeds = {
      k[5]: v for k, v in cells.items() if k[:3] == (HARD_REGIME, NO_TABLE, FULL) and k[4] == ""
  }
  has_no_aug = any(k[4] == NO_AUGMENTATION for k in cells)
  lrs_entries, ars_entries, missing = [], [], []
  if not full_seeds:
    missing.append("LRS: no full-data HL cell (add 'full' to study_methods; "
                   "study_full_regimes=('hl',) trains it under HL alone)")
  if not has_no_aug:
    missing.append("ARS: no cell without augmentation (study_no_augmentation=True)")
  for method in methods:
    for ipc in sizes:
      for regime in regimes:
        tables = dict.fromkeys(k[1] for k in cells if k[0] == regime and k[2:4] == (method, ipc))
        for table in tables:
          label = _entry_label(method, ipc, regime, table)
          if regime != HARD_REGIME and full_seeds:
            entry = _lrs_entry(cells, full_seeds, method, ipc, regime, table, seeds, lam)
            if entry is None:
              missing.append(f"LRS of {label}: no seed has the full and set HL cells and the set "
                             "and random cells under the regime")
            else:
              lrs_entries.append(entry)
          if has_no_aug:
            entry = _ars_entry(cells, method, ipc, regime, table, seeds, lam)
            if entry is None:
              missing.append(f"ARS of {label}: no seed has the set and random cells with and "
                             "without augmentation")
            else:
              ars_entries.append(entry)
  return {
      "source": SOURCE,
      "units": "percent (test top-1 x 100), as DD-Ranking's validate() returns accuracy",
      "lambda": lam,
      "aggregate": "mean and population std (numpy.std, ddof 0) over seeds of per-seed scores",
      "protocol": protocols[0] if len(protocols) == 1 else protocols,
      "selected_on_test_set": "ddranking" in protocols,
      "lrs": lrs_entries,
      "ars": ars_entries,
      "missing": missing
  }


def _entry_label(method: str, ipc: int, regime: str, table: tuple) -> str:
  crops, keep = table
  where = f" with {crops} crops, keep {keep:g}" if crops is not None else ""
  return f"{method} at ipc {ipc} under {regime}{where}"


def _table_fields(table: tuple) -> dict[str, Any]:
  crops, keep = table
  return {} if crops is None else {"crops_per_image": crops, "label_keep_fraction": keep}


def _lrs_entry(cells: dict, full_seeds: dict, method: str, ipc: int, regime: str, table: tuple,
               seeds: list, lam: float) -> dict[str, Any] | None:
  per_seed = []
  for seed in seeds:
    values = {
        "full_hl": full_seeds.get(seed),
        "set_hl": cells.get((HARD_REGIME, NO_TABLE, method, ipc, "", seed)),
        "set_soft": cells.get((regime, table, method, ipc, "", seed)),
        "random_soft": cells.get((regime, table, RANDOM, ipc, "", seed))
    }
    if not all(_is_number(v) for v in values.values()):
      continue
    hlr = hard_label_recovery(values["full_hl"], values["set_hl"])
    ior = improvement_over_random(values["set_soft"], values["random_soft"])
    per_seed.append({
        "seed": seed,
        **values, "hlr": hlr,
        "ior": ior,
        "lrs": label_robust_score(hlr, ior, lam)
    })
  if not per_seed:
    return None
  return {
      "method": method,
      "ipc": ipc,
      "soft_regime": regime,
      **_table_fields(table), "seeds": [s["seed"] for s in per_seed],
      "per_seed": per_seed,
      **{
          score: mean_std([s[score] for s in per_seed]) for score in ("hlr", "ior", "lrs")
      }
  }


def _ars_entry(cells: dict, method: str, ipc: int, regime: str, table: tuple, seeds: list,
               lam: float) -> dict[str, Any] | None:
  per_seed = []
  for seed in seeds:
    values = {
        f"{who}_{arm_name}": cells.get((regime, table, name, ipc, arm, seed))
        for who, name in (("set", method), ("random", RANDOM))
        for arm_name, arm in (("aug", ""), ("no_aug", NO_AUGMENTATION))
    }
    if not all(_is_number(v) for v in values.values()):
      continue
    with_aug = 1.00 * (values["set_aug"] - values["random_aug"])
    without_aug = 1.00 * (values["set_no_aug"] - values["random_no_aug"])
    per_seed.append({
        "seed": seed,
        **values, "with_aug_score": with_aug,
        "without_aug_score": without_aug,
        "ars": augmentation_robust_score(with_aug, without_aug, lam)
    })
  if not per_seed:
    return None
  return {
      "method": method,
      "ipc": ipc,
      "regime": regime,
      **_table_fields(table), "seeds": [s["seed"] for s in per_seed],
      "per_seed": per_seed,
      **{
          score: mean_std([s[score] for s in per_seed]) for score in ARS_SCORES
      }
  }
