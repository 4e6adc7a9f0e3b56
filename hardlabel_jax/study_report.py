"""A study's results.csv → Markdown tables, findings and PNG plots (Hard Truths' analysis).

Accuracy is test top-1 in percent, mean ± sample std over seeds. "Beats random" means the mean
gain exceeds two standard errors of the difference (with one seed, any positive gain, flagged).
The spread of a regime at a size is best − worst mean over the subset methods (not `full`); the
paper's "performance saturation" is SL+KD's spread shrinking relative to HL's.

With a `study_label_tables` axis, an SL or HALD entry is a (regime, label table) pair: the table
("16 crops, keep 1/4") joins the method in the accuracy table and the regime elsewhere, so gains
over random and spreads compare methods under one regime at one table, never two tables. The
bytes table and its findings pair HALD with SL per seed at the same size and table (equal label
bytes): HALD − SL is the mean per-seed difference ± its standard error, "beats" beyond +2 s.e.

  python -m hardlabel_jax.study_report --csv WORKDIR/results.csv   # redraws the report
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

from hardlabel_jax import ddranking
from hardlabel_jax import metrics_log
from hardlabel_jax import selection

FULL = "full"
RANDOM = "random"
INT_FIELDS = ("ipc", "seed", "examples_seen", "steps", "pool_size", "label_bytes")
FLOAT_FIELDS = ("test_top1", "test_loss", "epochs", "wall_seconds")
# The label table of an SL/HALD row: empty for the other regimes, absent from older CSVs; a row
# without them has no such key.
TABLE_FIELDS = {"crops_per_image": int, "label_keep_fraction": float}
# Protocol columns, absent from CSVs written before they existed (read as empty).
PROTOCOL_FIELDS = {
    "budget_rule": str,
    "cad_scoring_epochs": int,
    "cad_window_used": int,
    "cad_matched_epochs": int,
    # A premise-sweep cell's K or window ('k12', 'w0.25') and its window position.
    "variant": str,
    "window_position": float,
    # 'none': a cell of the no-augmentation arm; the learning rate its accuracy trained at; the
    # study's protocol ('ddranking': chosen on the test set).
    "augmentation": str,
    "learning_rate": float,
    "protocol": str
}
# How a row of the no-augmentation arm is named beside its method (tables) or regime (gains).
ARM_TEXT = {ddranking.NO_AUGMENTATION: "no augmentation"}
SCORES_FILE = "scores.json"  # DD-Ranking's scores of the study's methods (ddranking.study_scores)
BUDGET_RULE_TEXT = {
    "fixed_examples": "fixed budget (every cell the same examples)",
    "epochs_per_subset": "epochs per subset (every cell the same epochs of its own pool)"
}
REGIME_NAMES = {"hl": "HL", "sl": "SL", "sl_kd": "SL+KD", "hald": "HALD", "kd": "KD"}
PLOTS = ("accuracy_vs_ipc.png", "gain_over_random.png", "accuracy_vs_label_bytes.png")
REPORT_FILE = "report.md"
CELLS_DIR = "cells"  # study.CELLS_DIR: each cell's workdir, with its results.json
RESULTS_CSV = "results.csv"  # study.RESULTS_CSV
CAD_SELECTIONS = ("cad_prune", "cad_window", "ca2d")  # config_schema.CAD_SELECTIONS
# Pages a study writes beside report.md (premise_report, cad_picks), linked when present.
LINKED_PAGES = (("premise.md", "the premise sweep: accuracy against K and the difficulty window"),
                ("picks.md", "what CAD-Prune picks"))


@dataclasses.dataclass(frozen=True)
class Report:
  """The report's Markdown text and the files written."""

  markdown: str
  paths: tuple[str, ...]


def read_csv(path: str) -> list[dict[str, Any]]:
  """A study's results.csv with numbers typed."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for field in INT_FIELDS:
      row[field] = int(row[field])
    for field in FLOAT_FIELDS:
      row[field] = float(row[field])
    for field, kind in {**TABLE_FIELDS, **PROTOCOL_FIELDS}.items():
      value = row.pop(field, None)
      if value not in (None, ""):
        row[field] = kind(value)
  return rows


def read_workdir(workdir: str) -> list[dict[str, Any]]:
  """A study workdir's results.csv (`read_csv`); a clear error where no cell has finished."""
  path = os.path.join(workdir, RESULTS_CSV)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: no cell of that study has finished")
  return read_csv(path)


def _ordered(values: Iterable) -> list:
  return list(dict.fromkeys(values))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean)**2 for v in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
  """Mean and its standard error (0 with one value)."""
  mean, std = _mean_std(values)
  return mean, std / math.sqrt(len(values))


def keep_text(keep: float) -> str:
  """A keep fraction as 1, 1/4, 1/16 (a unit fraction) or 0.3."""
  inverse = 1 / keep
  if keep < 1 and abs(inverse - round(inverse)) < 1e-9:
    return f"1/{round(inverse)}"
  return f"{keep:g}"


def table_text(crops: int | None, keep: float | None) -> str:
  """'16 crops, keep 1/4', '1 crop': a label table in the tables' method and regime columns."""
  if crops is None:
    return "study table"
  text = f"{crops} crop" + ("s" if crops != 1 else "")
  return text if keep is None or keep == 1 else f"{text}, keep {keep_text(keep)}"


def _table_of(row: dict) -> tuple[int | None, float | None]:
  return row.get("crops_per_image"), row.get("label_keep_fraction")


def method_label(row: dict[str, Any]) -> str:
  """A row's method as the tables name it: a premise-sweep cell's K or window joins it
  ('cad_prune K=12', 'el2n_window @0.25')."""
  variant = row.get("variant", "")
  if not variant:
    return row["method"]
  return f"{row['method']} " + (f"K={variant[1:]}" if variant[0] == "k" else f"@{variant[1:]}")


def _arm(row: dict[str, Any]) -> str:
  return row.get("augmentation", "")


def _with_arm(method: str, row: dict[str, Any]) -> str:
  """'random', or 'random (no augmentation)' for a row of the no-augmentation arm."""
  arm = ARM_TEXT.get(_arm(row), _arm(row))
  return f"{method} ({arm})" if arm else method


def _qualifier(table: str, arm: str) -> str:
  """'16 crops, keep 1/4', 'no augmentation', both, or '': what sets an entry apart."""
  return ", ".join(text for text in (table, ARM_TEXT.get(arm, arm)) if text)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per (regime, method, ipc, label table, arm): accuracy mean/std in %, seeds, bytes.

  `table` names the label table ('16 crops, keep 1/4') only where the regime's rows hold more
  than one (a study_label_tables axis), and the no-augmentation arm ('no augmentation'); elsewhere
  it is '' and the entry is as without the axis. A premise-sweep cell's K or window is part of
  its method (`method_label`).
  """
  tables: dict[str, set] = {}
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    tables.setdefault(row["regime"], set()).add(_table_of(row))
    groups.setdefault((row["regime"], method_label(row), row["ipc"], *_table_of(row), _arm(row)),
                      []).append(row)
  summary = []
  for (regime, method, ipc, crops, keep, arm), members in groups.items():
    summary.append({
        "regime": regime,
        "method": method,
        "ipc": ipc,
        **_stats(members),  # mean, std, n
        "label_source": members[0]["label_source"],
        "label_bytes": sum(r["label_bytes"] for r in members) / len(members),
        "crops": crops,
        "keep": keep,
        "table": _qualifier(table_text(crops, keep) if len(tables[regime]) > 1 else "", arm)
    })
  return summary


def _lookup(summary: list[dict]) -> dict[tuple, dict]:
  return {(s["regime"], s.get("table", ""), s["method"], s["ipc"]): s for s in summary}


def _series(entry: dict) -> str:
  """A method and, under a label-table axis, its table: 'random (16 crops, keep 1/4)'."""
  table = entry.get("table", "")
  return f"{entry['method']} ({table})" if table else entry["method"]


def _regime_text(regime: str, table: str = "") -> str:
  name = REGIME_NAMES.get(regime, regime)
  return f"{name} ({table})" if table else name


def _sizes(summary: list[dict]) -> list[int]:
  return sorted({s["ipc"] for s in summary if s["method"] != FULL})


def gains_over_random(summary: list[dict]) -> list[dict[str, Any]]:
  """Each subset method's mean gain over random (points) at the same regime, table and size."""
  table = _lookup(summary)
  gains = []
  for s in summary:
    base = table.get((s["regime"], s.get("table", ""), RANDOM, s["ipc"]))
    if s["method"] in (RANDOM, FULL) or base is None:
      continue
    error = math.sqrt(s["std"]**2 / s["n"] + base["std"]**2 / base["n"])
    gain = s["mean"] - base["mean"]
    gains.append({
        "regime": s["regime"],
        "table": s.get("table", ""),
        "method": s["method"],
        "ipc": s["ipc"],
        "gain": gain,
        "stderr": error,
        "seeds": min(s["n"], base["n"]),
        # One seed has no error bar: no claim either way.
        "beats_random": min(s["n"], base["n"]) >= 2 and gain > 2 * error and gain > 0
    })
  return gains


def spreads(summary: list[dict]) -> list[dict[str, Any]]:
  """Per regime (and label table) and size: best and worst subset method, spread, random's."""
  out = []
  for regime, table in _ordered((s["regime"], s.get("table", "")) for s in summary):
    for ipc in _sizes(summary):
      cells = [
          s for s in summary if s["regime"] == regime and s.get("table", "") == table
          and s["ipc"] == ipc and s["method"] != FULL
      ]
      if not cells:
        continue
      best = max(cells, key=lambda s: s["mean"])
      worst = min(cells, key=lambda s: s["mean"])
      random_cell = next((s for s in cells if s["method"] == RANDOM), None)
      out.append({
          "regime": regime,
          "table": table,
          "ipc": ipc,
          "methods": len(cells),
          "best": best["method"],
          "best_mean": best["mean"],
          "worst": worst["method"],
          "worst_mean": worst["mean"],
          "spread": best["mean"] - worst["mean"],
          "random_mean": random_cell["mean"] if random_cell else float("nan")
      })
  return out


def _cell_text(s: dict | None) -> str:
  if s is None:
    return "–"
  return f"{s['mean']:.1f} ± {s['std']:.1f} ({s['n']})"


def accuracy_table(summary: list[dict]) -> str:
  """Markdown: one row per regime, method (and label table), one column per size (+ full data)."""
  table = _lookup(summary)
  sizes = _sizes(summary)
  has_full = any(s["method"] == FULL for s in summary)
  header = ["regime", "method", *[f"ipc {i}" for i in sizes]] + (["full data"] if has_full else [])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for regime in _ordered(s["regime"] for s in summary):
    for method in _ordered(s["method"] for s in summary if s["regime"] == regime):
      here = [s for s in summary if s["regime"] == regime and s["method"] == method]
      for label in _ordered(s.get("table", "") for s in here):
        key = (regime, label, method)
        cells = [_cell_text(table.get((*key, i))) if method != FULL else "–" for i in sizes]
        if has_full:
          cells.append(_cell_text(table.get((*key, 0))) if method == FULL else "–")
        name = _series({"method": method, "table": label})
        lines.append(f"| {REGIME_NAMES.get(regime, regime)} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def gain_table(summary: list[dict]) -> str:
  """Markdown: each subset method's gain over random ± its standard error, per regime and size."""
  gains = {(g["regime"], g["table"], g["method"], g["ipc"]): g for g in gains_over_random(summary)}
  if not gains:
    return ""
  sizes = _sizes(summary)
  header = ["regime", "method", *[f"ipc {i}" for i in sizes]]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for regime, table, method in _ordered((g[0], g[1], g[2]) for g in gains):
    cells = []
    for ipc in sizes:
      gain = gains.get((regime, table, method, ipc))
      cells.append(f"{gain['gain']:+.1f} ± {gain['stderr']:.1f} ({gain['seeds']})" if gain else "–")
    lines.append(f"| {_regime_text(regime, table)} | {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def protocol_table(rows: list[dict[str, Any]]) -> str:
  """Markdown: per method and size, the budget rule, epochs, examples seen and CAD's K, J.

  One line per distinct protocol, so a study whose cells trained differently shows each.
  """
  seen: dict[tuple, set] = {}
  for row in rows:
    key = (_with_arm(row["method"], row), row["ipc"])
    seen.setdefault(key, set()).add(
        (row.get("budget_rule", ""), round(row["epochs"], 2), row["examples_seen"], row["steps"],
         row.get("cad_scoring_epochs", ""), row.get("cad_window_used", "")))
  lines = [
      "| method | ipc | budget rule | epochs | examples seen | steps | CAD K | CAD J |",
      "|---|---|---|---|---|---|---|---|"
  ]
  for (method, ipc), protocols in seen.items():
    for rule, epochs, examples, steps, k, j in sorted(protocols, key=str):
      lines.append(f"| {method} | {ipc or 'all'} | {rule or '–'} | {epochs:g} | {examples} | "
                   f"{steps} | {k if k != '' else '–'} | {j if j != '' else '–'} |")
  return "\n".join(lines)


def spread_table(summary: list[dict]) -> str:
  """Markdown: per regime and size, random, the best method, its gain and the spread."""
  gains = {(g["regime"], g["table"], g["method"], g["ipc"]): g for g in gains_over_random(summary)}
  lines = [
      "| regime | ipc | random | best method | best − random | spread (best − worst) |",
      "|---|---|---|---|---|---|"
  ]
  for row in spreads(summary):
    gain = gains.get((row["regime"], row["table"], row["best"], row["ipc"]))
    gain_text = f"{gain['gain']:+.1f} ± {gain['stderr']:.1f}" if gain else "–"
    lines.append(f"| {_regime_text(row['regime'], row['table'])} | {row['ipc']} | "
                 f"{row['random_mean']:.1f} | {row['best']} ({row['best_mean']:.1f}) | "
                 f"{gain_text} | {row['spread']:.1f} |")
  return "\n".join(lines)


def findings(summary: list[dict], rows: list[dict[str, Any]] | None = None) -> list[str]:
  """Plain sentences: SL+KD's spread vs HL's; what beats random; HALD vs SL (needs `rows`)."""
  by_key = {(r["regime"], r["table"], r["ipc"]): r for r in spreads(summary)}
  sentences = []
  for ipc in _sizes(summary):
    hl, slkd = by_key.get(("hl", "", ipc)), by_key.get(("sl_kd", "", ipc))
    if hl and slkd and hl["methods"] > 1:
      verdict = "compresses" if slkd["spread"] < hl["spread"] else "does not compress"
      sentences.append(f"ipc {ipc}: SL+KD {verdict} the spread between methods relative to HL "
                       f"({slkd['spread']:.1f} vs {hl['spread']:.1f} points; random "
                       f"{slkd['random_mean']:.1f} vs {hl['random_mean']:.1f}).")
  gains = gains_over_random(summary)
  for regime, table in _ordered((g["regime"], g["table"]) for g in gains):
    for ipc in _sizes(summary):
      here = [g for g in gains if g["regime"] == regime and g["table"] == table and g["ipc"] == ipc]
      if not here:
        continue
      winners = [g for g in here if g["beats_random"]]
      best = max(here, key=lambda g: g["gain"])
      name = _regime_text(regime, table)
      if best["seeds"] < 2:
        sentences.append(f"{name}, ipc {ipc}: not resolved with one seed (best {best['method']} "
                         f"{best['gain']:+.1f}; run more seeds for an error bar).")
      elif winners:
        listed = ", ".join(f"{g['method']} ({g['gain']:+.1f} ± {g['stderr']:.1f})"
                           for g in sorted(winners, key=lambda g: -g["gain"]))
        sentences.append(f"{name}, ipc {ipc}: beats random by more than 2 standard errors: "
                         f"{listed}.")
      else:
        sentences.append(f"{name}, ipc {ipc}: no method beats random (best {best['method']} "
                         f"{best['gain']:+.1f} ± {best['stderr']:.1f}).")
  return sentences + (label_bytes_findings(rows) if rows else [])


@dataclasses.dataclass(frozen=True)
class Paired:
  """A per-seed difference in points: its mean, standard error and seeds (nan without any)."""

  mean: float
  stderr: float
  seeds: int

  @property
  def verdict(self) -> str:
    if self.seeds < 2:
      return "one seed" if self.seeds else "–"
    if self.mean > 2 * self.stderr:
      return "beats"
    return "loses" if self.mean < -2 * self.stderr else "noise"

  def text(self) -> str:
    if not self.seeds:
      return "–"
    if self.seeds < 2:
      return f"{self.mean:+.1f} (1)"
    return f"{self.mean:+.1f} ± {self.stderr:.1f} ({self.seeds})"


def paired(first: dict[int, float], second: dict[int, float]) -> Paired:
  """first − second over their common seeds."""
  seeds = sorted(set(first) & set(second))
  if not seeds:
    return Paired(math.nan, math.nan, 0)
  mean, stderr = mean_stderr([first[s] - second[s] for s in seeds])
  return Paired(mean, stderr, len(seeds))


def paired_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """SL and HALD per (method, ipc, label table), and HALD − SL paired over their common seeds.

  The same seed draws the same random subset, so the per-seed difference cancels the subset's
  luck; `gap` is its mean (points) and `stderr` its standard error. `verdict`: 'beats' (gap >
  2 s.e.), 'loses' (gap < −2 s.e.), 'noise', 'one seed', or None without a common seed.
  """
  cells: dict[tuple, dict[str, dict[int, dict]]] = {}
  for row in rows:
    if row["regime"] in ("sl", "hald"):
      # The no-augmentation arm pairs within itself, named beside the method.
      key = (_with_arm(row["method"], row), row["ipc"], *_table_of(row))
      cells.setdefault(key, {}).setdefault(row["regime"], {})[row["seed"]] = row
  out = []
  for (method, ipc, crops, keep), by_regime in cells.items():
    sl, hald = by_regime.get("sl", {}), by_regime.get("hald", {})
    hald_top1 = {seed: 100 * r["test_top1"] for seed, r in hald.items()}
    sl_top1 = {seed: 100 * r["test_top1"] for seed, r in sl.items()}
    difference = paired(hald_top1, sl_top1)
    per_seed = {seed: hald_top1[seed] - sl_top1[seed] for seed in sorted(set(sl) & set(hald))}
    members = [*sl.values(), *hald.values()]
    out.append({
        "method": method,
        "ipc": ipc,
        "crops": crops,
        "keep": keep,
        "label_bytes": sum(r["label_bytes"] for r in members) / len(members),
        "sl": _stats(list(sl.values())),
        "hald": _stats(list(hald.values())),
        "per_seed": per_seed,
        "gap": difference.mean,
        "stderr": difference.stderr,
        "seeds": difference.seeds,
        "verdict": difference.verdict if difference.seeds else None
    })
  return out


def _stats(rows: list[dict]) -> dict[str, Any] | None:
  """Accuracy mean ± std in % over `rows` (None without rows), as a summary entry has it."""
  if not rows:
    return None
  mean, std = _mean_std([100 * r["test_top1"] for r in rows])
  return {"mean": mean, "std": std, "n": len(rows)}


def _bytes_text(value: float) -> str:
  return f"{value / 1e6:.3f} MB" if value >= 1e6 else f"{value / 1e3:.1f} KB"


def _gap_text(gap: dict) -> str:
  if not gap["seeds"]:
    return "–"
  if gap["seeds"] < 2:
    return f"{gap['gap']:+.1f} (1)"
  return f"{gap['gap']:+.1f} ± {gap['stderr']:.1f} ({gap['seeds']})"


def _reference(rows: list[dict[str, Any]], regime: str, ipc: int) -> dict[str, Any] | None:
  return _stats(
      [r for r in rows if r["regime"] == regime and r["method"] == RANDOM and r["ipc"] == ipc])


def label_bytes_table(rows: list[dict[str, Any]]) -> str:
  """Markdown: per size and label table, its bytes, SL, HALD and the paired HALD − SL.

  '' unless the study has both SL and HALD cells. HL and SL+KD (random subsets, same size) are
  the references that store no labels.
  """
  if not {"sl", "hald"} <= {r["regime"] for r in rows}:
    return ""
  gaps = paired_gaps(rows)
  with_method = len(_ordered(g["method"] for g in gaps)) > 1
  references = [
      regime for regime in ("hl", "sl_kd")
      if any(r["regime"] == regime and r["method"] == RANDOM for r in rows)
  ]
  header = [
      "ipc", *(["method"] if with_method else []), "crops", "keep", "label bytes", "SL", "HALD",
      "HALD − SL (paired)", *[f"{REGIME_NAMES[r]} random" for r in references]
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for g in gaps:
    cells = [
        str(g["ipc"] or "all"), *([g["method"]] if with_method else []),
        "–" if g["crops"] is None else str(g["crops"]),
        "–" if g["keep"] is None else keep_text(g["keep"]),
        _bytes_text(g["label_bytes"]),
        _cell_text(g["sl"]),
        _cell_text(g["hald"]),
        _gap_text(g), *[_cell_text(_reference(rows, r, g["ipc"])) for r in references]
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


_VERDICTS = {
    "beats": "HALD beats SL",
    "loses": "HALD loses to SL",
    "noise": "HALD vs SL is not resolved (noise)",
    "one seed": "HALD vs SL is not resolved (one seed)"
}


def _stored_text(gap: dict) -> str:
  """'1 stored crop', '16 stored crops kept at 1/4'."""
  crops, keep = gap["crops"], gap["keep"]
  if crops is None:
    return "the study's label table"
  text = f"{crops} stored crop" + ("s" if crops != 1 else "")
  return text if keep is None or keep == 1 else f"{text} kept at {keep_text(keep)}"


def _paired_text(gap: dict) -> str:
  if gap["seeds"] < 2:
    return f"{gap['gap']:+.1f}, one seed"
  return f"{gap['gap']:+.1f} ± {gap['stderr']:.1f}, paired over {gap['seeds']} seeds"


def label_bytes_findings(rows: list[dict[str, Any]]) -> list[str]:
  """Per size: does HALD beat SL at each label table; does the gap close as crops grow."""
  gaps = [g for g in paired_gaps(rows) if g["seeds"]]
  with_method = len(_ordered(g["method"] for g in gaps)) > 1
  sentences = []
  for method, ipc in _ordered((g["method"], g["ipc"]) for g in gaps):
    here = [g for g in gaps if g["method"] == method and g["ipc"] == ipc]
    where = f"ipc {ipc or 'all'}" + (f", {method}" if with_method else "")
    clauses = [
        f"{_VERDICTS[g['verdict']]} with {_stored_text(g)} ({_paired_text(g)})" for g in here
    ]
    sentences.append(f"{where}: at equal label bytes, " + "; ".join(clauses) + ".")
    unpruned = [g for g in here if g["crops"] is not None and g["keep"] in (None, 1)]
    if len({g["crops"] for g in unpruned}) < 2:
      continue
    fewest = min(unpruned, key=lambda g: g["crops"])
    most = max(unpruned, key=lambda g: g["crops"])
    closes = abs(most["gap"]) < abs(fewest["gap"])
    common = sorted(set(fewest["per_seed"]) & set(most["per_seed"]))
    change = [most["per_seed"][s] - fewest["per_seed"][s] for s in common]
    sentence = (f"{where}: the HALD − SL gap {'closes' if closes else 'does not close'} as "
                f"stored crops grow ({fewest['gap']:+.1f} with {_stored_text(fewest)}, "
                f"{most['gap']:+.1f} with {_stored_text(most)}")
    if len(change) >= 2:
      mean, stderr = mean_stderr(change)
      resolved = "resolved" if abs(mean) > 2 * stderr else "not resolved (noise)"
      sentence += f"; change {mean:+.1f} ± {stderr:.1f} over {len(change)} seeds, {resolved}"
    sentences.append(sentence + ").")
  return sentences


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, path: str) -> None:
  plt = pyplot()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def _method_colors(summary: list[dict],
                   key: Callable[[dict], str] = lambda s: s["method"]) -> dict[str, Any]:
  """A colour per method (or per `key` of the entries, e.g. `_series`)."""
  plt = pyplot()
  methods = _ordered(key(s) for s in summary)
  cycle = plt.get_cmap("tab10")
  return {m: cycle(i % 10) for i, m in enumerate(methods)}


def plot_accuracy_vs_ipc(summary: list[dict], path: str) -> None:
  """One panel per regime: accuracy vs images per class, a line per method, full data dashed."""
  plt = pyplot()
  regimes = _ordered(s["regime"] for s in summary)
  colors = _method_colors(summary, _series)
  sizes = _sizes(summary)
  fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), sharey=True,
                           squeeze=False)
  for axis, regime in zip(axes[0], regimes, strict=True):
    cells = [s for s in summary if s["regime"] == regime]
    for series in _ordered(_series(s) for s in cells):
      points = sorted((s for s in cells if _series(s) == series), key=lambda s: s["ipc"])
      if points[0]["method"] == FULL:
        label = "full data" + (f" ({points[0]['table']})" if points[0].get("table") else "")
        axis.axhline(points[0]["mean"], color=colors[series], linestyle="--", label=label)
        continue
      axis.errorbar([s["ipc"] for s in points], [s["mean"] for s in points],
                    yerr=[s["std"] for s in points], marker="o", capsize=3, color=colors[series],
                    label=series)
    if len(sizes) > 1:
      axis.set_xscale("log")
    axis.set_xticks(sizes, [str(i) for i in sizes])
    axis.minorticks_off()
    axis.set_xlabel("images per class")
    axis.set_title(REGIME_NAMES.get(regime, regime))
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 (%)")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  save_figure(fig, path)


def plot_gain_over_random(summary: list[dict], path: str) -> None:
  """One panel per regime: each method's gain over random (points, ± 1 s.e.) per size."""
  plt = pyplot()
  gains = gains_over_random(summary)
  regimes = _ordered(s["regime"] for s in summary)
  colors = _method_colors(summary, _series)
  sizes = _sizes(summary)
  methods = _ordered(_series(g) for g in gains)  # a method at each label table of an axis
  fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), sharey=True,
                           squeeze=False)
  width = 0.8 / max(len(methods), 1)
  for axis, regime in zip(axes[0], regimes, strict=True):
    for k, method in enumerate(methods):
      here = {g["ipc"]: g for g in gains if g["regime"] == regime and _series(g) == method}
      xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(sizes))]
      axis.bar(xs, [here[s]["gain"] if s in here else 0 for s in sizes], width,
               yerr=[here[s]["stderr"] if s in here else 0 for s in sizes], capsize=2,
               color=colors[method], label=method)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(sizes)), [f"ipc {s}" for s in sizes])
    axis.set_title(REGIME_NAMES.get(regime, regime))
    axis.grid(alpha=0.3, axis="y")
  axes[0][0].set_ylabel("gain over random (points)")
  if methods:
    axes[0][-1].legend(fontsize=7)
  else:
    axes[0][0].text(0.5, 0.5, "no random baseline in this study", ha="center",
                    transform=axes[0][0].transAxes)
  save_figure(fig, path)


def _point_label(s: dict) -> str:
  """'10' or, under a label-table axis, '10: c16 k1/4' (ipc: stored crops, keep fraction)."""
  ipc = str(s["ipc"] or "all")
  if not s.get("table"):
    return ipc
  keep = "" if s["keep"] in (None, 1) else f" k{keep_text(s['keep'])}"
  return f"{ipc}: c{s['crops']}{keep}"


def plot_accuracy_vs_label_bytes(summary: list[dict], path: str) -> None:
  """Accuracy against stored soft-label bytes (SL, HALD), one panel per set; HL and SL+KD of the
  same set drawn as references.

  A colour per size; under a label-table axis the tables of one regime and size are joined by a
  line in order of bytes (SL solid, HALD dashed).
  """
  plt = pyplot()
  markers = {"sl": "o", "hald": "s"}
  lines = {"sl": "-", "hald": "--"}
  stored = [s for s in summary if s["label_bytes"] > 0]
  sets = _ordered(s["method"] for s in stored) or [RANDOM]
  sizes = _ordered(s["ipc"] for s in sorted(summary, key=lambda s: s["ipc"] or 1 << 30))
  cycle = plt.get_cmap("tab10")
  colors = {ipc: cycle(i % 10) for i, ipc in enumerate(sizes)}
  fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 4), sharey=True, squeeze=False)
  joined = False
  for axis, method in zip(axes[0], sets, strict=True):
    here = [s for s in stored if s["method"] == method]
    for s in here:
      axis.scatter(s["label_bytes"], s["mean"], color=colors[s["ipc"]],
                   marker=markers.get(s["regime"], "^"), s=30)
      axis.annotate(_point_label(s), (s["label_bytes"], s["mean"]), fontsize=5, xytext=(3, 3),
                    textcoords="offset points")
    for regime, ipc in _ordered((s["regime"], s["ipc"]) for s in here):
      points = sorted((s for s in here if (s["regime"], s["ipc"]) == (regime, ipc)),
                      key=lambda s: s["label_bytes"])
      if len(points) > 1:
        joined = True
        axis.plot([s["label_bytes"] for s in points], [s["mean"] for s in points],
                  color=colors[ipc], linestyle=lines.get(regime, ":"), linewidth=0.8)
    for regime, style in (("hl", ":"), ("sl_kd", "-.")):
      for s in summary:
        if s["regime"] == regime and s["method"] == method and not s["table"]:
          axis.axhline(s["mean"], color=colors[s["ipc"]], linestyle=style, linewidth=0.8)
          axis.annotate(f"{REGIME_NAMES[regime]} ipc {s['ipc']}", (0.01, s["mean"]),
                        xycoords=("axes fraction", "data"), fontsize=6, color="gray")
    if here:
      axis.set_xscale("log")
    else:
      axis.text(0.5, 0.5, "no stored soft labels (no SL / HALD cells)", ha="center",
                transform=axis.transAxes)
    axis.set_title(f"{method} (HL: 0 bytes; SL+KD: teacher online)", fontsize=9)
    if any(s.get("table") for s in here):
      axis.set_xlabel("soft-label bytes used (points: ipc: c<crops> k<keep>)", fontsize=8)
    else:
      axis.set_xlabel("soft-label bytes used (points: ipc)", fontsize=8)
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 (%)")
  handles = [
      plt.Line2D([], [], color=c, marker="o", linestyle="", label=f"ipc {ipc or 'all'}")
      for ipc, c in colors.items()
  ]
  handles += [
      plt.Line2D([], [], color="black", marker=mk, linestyle=lines[r] if joined else "",
                 label=REGIME_NAMES[r]) for r, mk in markers.items()
  ]
  handles += [
      plt.Line2D([], [], color="gray", linestyle=style, label=REGIME_NAMES[r])
      for r, style in (("hl", ":"), ("sl_kd", "-."))
  ]
  axes[0][-1].legend(handles=handles, fontsize=7, loc="lower right")
  save_figure(fig, path)


def _cad_windows_of(results: dict[str, Any]) -> dict[str, Any] | None:
  """The CAD windows a cell's scores used: its results.json's record, else its score file's."""
  if results.get("cad_window_used") is not None:
    return results
  config = results.get("config", {})
  path = config.get("scores_file", "")
  if config.get("selection") not in CAD_SELECTIONS or not path or not os.path.exists(path):
    return None
  header = selection.load_scores(path).header
  if header.get("cad_window_used") is None:
    return None
  return {**header, "cad_scoring_epochs": header["epochs"]}


def cad_windows_line(out_dir: str) -> str | None:
  """One sentence: which J, W the CAD scores of the study's cells used (None without CAD cells)."""
  used = {}
  for path in sorted(glob.glob(os.path.join(out_dir, CELLS_DIR, "*", "results.json"))):
    with open(path) as f:
      record = _cad_windows_of(json.load(f))
    if record is not None:
      key = (record["cad_scoring_epochs"], record["cad_window_used"],
             record["cad_num_windows_used"], record["cad_window"], record["cad_num_windows"],
             record.get("cad_window_rule") or "fixed")  # a record from before the rule existed
      used[key] = bool(record.get("cad_windows_shrink"))
  if not used:
    return None
  parts = []
  for (epochs, window, num_windows, asked_window, asked_num, rule), shrink in sorted(used.items()):
    part = f"J={window}, W={num_windows} over K={epochs} scoring epochs"
    if rule == "span":
      part += " (windows spanning the run: J = K − W)"
    elif (window, num_windows) != (asked_window, asked_num):
      part += (f" (shrunk from J={asked_window}, W={asked_num} by cad_windows_shrink)"
               if shrink else f" (configured J={asked_window}, W={asked_num})")
    parts.append(part)
  return "CAD scores used " + "; ".join(parts) + "."


def budget_line(rows: list[dict[str, Any]], budget: str | None) -> str:
  """The protocol sentence: the study's own words, else the rules its rows name."""
  if budget:
    return f"Budget rule: {budget}."
  rules = _ordered(row.get("budget_rule", "") for row in rows)
  named = [BUDGET_RULE_TEXT.get(rule, rule) for rule in rules if rule]
  return f"Budget rule: {'; '.join(named)}." if named else "Budget rule: not recorded (older CSV)."


def selected_on_test_set(rows: list[dict[str, Any]]) -> bool:
  """Whether the rows' accuracies are DD-Ranking's, chosen on the test set."""
  return any(row.get("protocol") == "ddranking" for row in rows)


def _score_text(stat: dict[str, float], seeds: int, points: bool) -> str:
  """A gain in points (+1.23 ± 0.45) or an LRS / ARS (4 significant digits), with its seeds."""
  mean, std = (f"{stat['mean']:+.2f}", f"{stat['std']:.2f}") if points else (f"{stat['mean']:.4g}",
                                                                             f"{stat['std']:.4g}")
  return f"{mean} ± {std} ({seeds})"


def _score_labels(entries: list[dict[str, Any]], regime_key: str) -> list[str]:
  """Each entry's regime, with its label table where the regime's entries hold several."""
  tables: dict[str, set] = {}
  for e in entries:
    tables.setdefault(e[regime_key], set()).add(
        (e.get("crops_per_image"), e.get("label_keep_fraction")))
  return [
      _regime_text(
          e[regime_key],
          table_text(e["crops_per_image"], e["label_keep_fraction"])
          if len(tables[e[regime_key]]) > 1 else "") for e in entries
  ]


def ddranking_tables(scores: dict[str, Any]) -> str:
  """Markdown: LRS with its HLR and IOR, and ARS with its two gains over random, per method,
  size and regime, mean ± population std over seeds (seeds); '' without a score."""
  blocks = []
  if scores["lrs"]:
    lines = ["| method | ipc | soft labels | HLR | IOR | LRS |", "|---|---|---|---|---|---|"]
    for e, label in zip(scores["lrs"], _score_labels(scores["lrs"], "soft_regime"), strict=True):
      n = len(e["seeds"])
      lines.append(f"| {e['method']} | {e['ipc']} | {label} | {_score_text(e['hlr'], n, True)} | "
                   f"{_score_text(e['ior'], n, True)} | {_score_text(e['lrs'], n, False)} |")
    blocks.append("\n".join(lines))
  if scores["ars"]:
    lines = [
        "| method | ipc | labels | gain with augmentation | gain without | ARS |",
        "|---|---|---|---|---|---|"
    ]
    for e, label in zip(scores["ars"], _score_labels(scores["ars"], "regime"), strict=True):
      n = len(e["seeds"])
      lines.append(f"| {e['method']} | {e['ipc']} | {label} | "
                   f"{_score_text(e['with_aug_score'], n, True)} | "
                   f"{_score_text(e['without_aug_score'], n, True)} | "
                   f"{_score_text(e['ars'], n, False)} |")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def _ddranking_section(scores: dict[str, Any]) -> list[str]:
  """The report's lines on DD-Ranking's scores (none without a score)."""
  tables = ddranking_tables(scores)
  if not tables:
    return []
  accuracies = (
      "The accuracies are DD-Ranking's protocol's, **selected on the test set** (the best of "
      f"{len(ddranking.LEARNING_RATES)} learning rates and of evaluations every "
      f"{ddranking.TEST_INTERVAL_EPOCHS} epochs)." if scores["selected_on_test_set"] else
      "The accuracies are final test accuracies at the study's recipe (DD-Ranking itself picks "
      "the learning rate and the epoch on the test set: study_protocol='ddranking').")
  lines = [
      "## DD-Ranking scores (points), mean ± std over seeds (seeds)", "",
      f"As `{ddranking.SOURCE}`, per seed, then the mean and numpy's population std (ddof 0) over "
      f"seeds, λ = {scores['lambda']:g}: HLR = full-data HL − set HL; IOR = set − random under "
      "the soft labels; LRS = (e^α − e^−1)/(e − e^−1), α = λ·IOR − (1 − λ)·HLR; ARS the same map "
      "of λ·(gain over random with augmentation) + (1 − λ)·(gain without). Accuracies are in "
      "percent, as its code passes them, so LRS and ARS leave [0, 1] beyond a point's gap. "
      + accuracies, "", tables, ""
  ]
  if scores["missing"]:
    lines += ["Not computed: " + "; ".join(scores["missing"]) + ".", ""]
  return lines + [f"Per-seed values: [{SCORES_FILE}]({SCORES_FILE}).", ""]


def write_report(rows: list[dict[str, Any]], out_dir: str, budget: str | None = None) -> Report:
  """Writes report.md and the three plots into `out_dir`; returns the text and paths.

  `budget`: the study's budget rule in words (study.budget_text); without it (a report redrawn
  from a CSV) the rule is named from the CSV's `budget_rule` column.
  """
  summary = summarize(rows)
  paths = tuple(os.path.join(out_dir, name) for name in PLOTS)
  plot_accuracy_vs_ipc(summary, paths[0])
  plot_gain_over_random(summary, paths[1])
  plot_accuracy_vs_label_bytes(summary, paths[2])
  selected = (f": selected on the test set (DD-Ranking's protocol, the best of "
              f"{len(ddranking.LEARNING_RATES)} learning rates and of evaluations every "
              f"{ddranking.TEST_INTERVAL_EPOCHS} epochs)" if selected_on_test_set(rows) else "")
  lines = [
      "## Protocol", "",
      budget_line(rows, budget), "",
      protocol_table(rows), "", f"## Test top-1 (%), mean ± std over seeds (seeds){selected}", "",
      accuracy_table(summary), ""
  ]
  gains = gain_table(summary)
  if gains:
    lines += [
        "## Gain over random (points), mean ± standard error (seeds)",
        "",
        gains,
        "",
    ]
  if any(row["methods"] > 1 for row in spreads(summary)):  # one method has no spread to show
    lines += [
        "## Spread between subset methods and gain over random (points)", "",
        spread_table(summary), ""
    ]
  scores = ddranking.study_scores(rows)
  lines += _ddranking_section(scores)
  if scores["lrs"] or scores["ars"]:
    scores_path = os.path.join(out_dir, SCORES_FILE)
    metrics_log.write_json_atomic(scores_path, scores)
    paths = (*paths, scores_path)
  bytes_table = label_bytes_table(rows)
  if bytes_table:
    lines += [
        "## HALD vs SL at equal soft-label bytes", "", bytes_table, "",
        "HALD − SL: the mean over seeds of the per-seed difference (same seed, size and table) ± "
        "its standard error (seeds); HL and SL+KD (random subsets) store no labels.", ""
    ]
  lines += ["## Findings", ""]
  cad_line = cad_windows_line(out_dir)
  lines += [
      f"- {sentence}" for sentence in findings(summary, rows) + ([cad_line] if cad_line else [])
  ]
  lines += [""]
  pages = [
      (name, text) for name, text in LINKED_PAGES if os.path.exists(os.path.join(out_dir, name))
  ]
  if pages:
    lines += ["See also: " + "; ".join(f"[{text}]({name})" for name, text in pages) + ".", ""]
  lines += [f"![{name}]({name})" for name in PLOTS]
  markdown = "\n".join(lines) + "\n"
  report_path = os.path.join(out_dir, REPORT_FILE)
  metrics_log.write_text_atomic(report_path, markdown)
  return Report(markdown, (report_path, *paths))  # plots, then scores.json when written


def main(argv: Sequence[str]) -> None:
  """`--csv PATH [--out DIR]`: redraws the report of a finished or partial study."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--csv", required=True, help="a study's results.csv")
  parser.add_argument("--out", default="", help="output directory (default: the CSV's)")
  args = parser.parse_args(argv)
  report = write_report(read_csv(args.csv), args.out or os.path.dirname(os.path.abspath(args.csv)))
  print(report.markdown)
  print("\n".join(report.paths))


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
