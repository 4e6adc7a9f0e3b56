"""A study's ablations against its base grid: per-seed paired differences and accuracy curves.

An ablation is the same study with one choice changed, trained into its own workdir (e.g.
`configs/fashion_hald_paper.py:ablation=label_smoothing`). Its cells share their seed, set, size
and label table with cells of the base grid, so each is paired with its base twin per seed:

- `arm − base`: the changed choice against the official one, same regime;
- `HALD − SL`: the arm's HALD against SL on the same table and seed (the arm's own SL cells
  where it trains them, e.g. a teacher ablation that changes the table; else the base grid's).

Differences are in points, mean over seeds ± standard error; "beats"/"loses" beyond 2 s.e.
Cells trained with `eval_every_epochs` also recorded the test accuracy along training
(`periodic_eval`); `phase_curves.png` draws them, averaged over seeds, with the evaluations right
after a hard epoch marked.

  python -m hardlabel_jax.ablation_report --base /tmp/fashion_hald_paper \\
      --arm label_smoothing=/tmp/fashion_hald_label_smoothing --out /tmp/fashion_hald_ablations
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Sequence

from hardlabel_jax import hald
from hardlabel_jax import metrics_log
from hardlabel_jax import periodic_eval
from hardlabel_jax import study
from hardlabel_jax import study_report

REPORT_FILE = "ablations.md"
GAPS_PLOT = "ablation_gaps.png"
CURVES_PLOT = "phase_curves.png"
CURVES_JSON = "phase_curves.json"


def _ordered(values) -> list:
  return list(dict.fromkeys(values))


def _key(row: dict[str, Any]) -> tuple:
  """(regime, method, ipc, crops, keep): a cell of the grid without its seed."""
  return (row["regime"], row["method"], row["ipc"], row.get("crops_per_image"),
          row.get("label_keep_fraction"))


def _by_seed(rows: list[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
  """Key → seed → test top-1 in %."""
  out: dict[tuple, dict[int, float]] = {}
  for row in rows:
    out.setdefault(_key(row), {})[row["seed"]] = 100 * row["test_top1"]
  return out


def _mean(values: dict[int, float]) -> float:
  return sum(values.values()) / len(values) if values else math.nan


def compare(base_rows: list[dict[str, Any]], arm_rows: list[dict[str,
                                                                 Any]]) -> list[dict[str, Any]]:
  """One entry per cell of the arm (without its seed): accuracies and the paired differences.

  `vs_base` pairs the arm with the base grid's same regime; for HALD cells `vs_sl` pairs it with
  SL on the same table (the arm's SL where it has one), and `base_vs_sl` is the base grid's own
  HALD − SL on the same seeds, so the two gaps can be read side by side.
  """
  base, arm = _by_seed(base_rows), _by_seed(arm_rows)
  out = []
  for key, values in arm.items():
    regime, method, ipc, crops, keep = key
    entry = {
        "regime": regime,
        "method": method,
        "ipc": ipc,
        "crops": crops,
        "keep": keep,
        "arm": _mean(values),
        "arm_seeds": len(values),
        # The base's mean over the seeds the arm trained, so the two columns compare alike.
        "base": _mean({
            s: v for s, v in base.get(key, {}).items() if s in values
        }),
        "vs_base": study_report.paired(values, base.get(key, {}))
    }
    if regime == "hald":
      sl_key = ("sl", *key[1:])
      sl = arm.get(sl_key) or base.get(sl_key, {})
      entry["sl_source"] = "arm" if sl_key in arm else "base"
      entry["vs_sl"] = study_report.paired(values, sl)
      entry["base_vs_sl"] = study_report.paired(
          {
              s: v for s, v in base.get(key, {}).items() if s in values
          }, base.get(sl_key, {}))
    out.append(entry)
  order = {"sl": 0, "hald": 1}
  return sorted(
      out, key=lambda e:
      (order.get(e["regime"], 2), e["ipc"], e["method"], e["crops"] or 0, -(e["keep"] or 1)))


def comparison_table(entries: list[dict[str, Any]]) -> str:
  """Markdown: one row per arm cell; the HALD columns blank for SL cells."""
  header = [
      "regime", "set", "ipc", "table", "base", "ablation", "ablation − base", "HALD − SL, base",
      "HALD − SL, ablation"
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for e in entries:
    hald_cells = ([
        e["base_vs_sl"].text(), e["vs_sl"].text() +
        (" (ablation's SL)" if e["sl_source"] == "arm" else "")
    ] if e["regime"] == "hald" else ["", ""])
    lines.append("| " + " | ".join([
        study_report.REGIME_NAMES.get(e["regime"], e["regime"]), e["method"],
        str(e["ipc"]),
        study_report.table_text(e["crops"], e["keep"]), f"{e['base']:.1f}", f"{e['arm']:.1f}",
        e["vs_base"].text(), *hald_cells
    ]) + " |")
  return "\n".join(lines)


def findings(name: str, entries: list[dict[str, Any]]) -> list[str]:
  """Per regime: how many arm cells beat / lose to the base, and HALD against SL."""
  sentences = []
  for regime in _ordered(e["regime"] for e in entries):
    here = [e for e in entries if e["regime"] == regime]
    counts = {
        v: sum(e["vs_base"].verdict == v for e in here)
        for v in ("beats", "loses", "noise", "one seed")
    }
    single = f", with one seed in {counts['one seed']}" if counts["one seed"] else ""
    sentences.append(
        f"{name}, {study_report.REGIME_NAMES.get(regime, regime)}: the ablation is above the "
        f"base in {counts['beats']}, below in {counts['loses']} and within noise in "
        f"{counts['noise']}{single} of {len(here)} cells (2 s.e., paired seeds).")
    if regime == "hald":
      above = [e for e in here if e["vs_sl"].verdict == "beats"]
      below = [e for e in here if e["vs_sl"].verdict == "loses"]
      sentences.append(
          f"{name}: HALD beats SL in {len(above)} and loses in {len(below)} of {len(here)} cells "
          f"(base grid on the same seeds: "
          f"{sum(e['base_vs_sl'].verdict == 'beats' for e in here)} and "
          f"{sum(e['base_vs_sl'].verdict == 'loses' for e in here)}).")
  return sentences


def base_gaps(base_rows: list[dict[str, Any]]) -> dict[tuple, study_report.Paired]:
  """(method, ipc, crops, keep) → the base grid's own HALD − SL over all its seeds."""
  by_seed = _by_seed(base_rows)
  return {
      key[1:]: study_report.paired(values, by_seed.get(("sl", *key[1:]), {}))
      for key, values in by_seed.items()
      if key[0] == "hald"
  }


def plot_gaps(arms: dict[str, list[dict[str, Any]]], base: dict[tuple, study_report.Paired],
              path: str) -> None:
  """HALD − SL per set, size and table of the ablations' HALD cells: the base grid's bar (all its
  seeds), then each ablation's (± s.e.)."""
  plt = study_report.pyplot()
  groups = _ordered((e["method"], e["ipc"], e["crops"], e["keep"])
                    for entries in arms.values()
                    for e in entries
                    if e["regime"] == "hald")
  fig, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 3.6))
  gaps = {"base (official)": base}
  for name, entries in arms.items():
    gaps[name] = {
        (e["method"], e["ipc"], e["crops"], e["keep"]): e["vs_sl"]
        for e in entries
        if e["regime"] == "hald"
    }
  width = 0.8 / len(gaps)
  cycle = plt.get_cmap("tab10")
  for index, (label, series) in enumerate(gaps.items()):
    drawn = [(g, series[group])
             for g, group in enumerate(groups)
             if group in series and series[group].seeds]
    axis.bar([g + (index - (len(gaps) - 1) / 2) * width for g, _ in drawn],
             [gap.mean for _, gap in drawn], width,
             yerr=[gap.stderr if gap.seeds > 1 else 0.0 for _, gap in drawn],
             color=cycle(index % 10), label=label, capsize=2)
  axis.axhline(0, color="black", linewidth=0.8)
  axis.set_xticks(range(len(groups)))
  axis.set_xticklabels([f"{m} {i}\n{study_report.table_text(c, k)}" for m, i, c, k in groups],
                       fontsize=7)
  axis.set_ylabel("HALD − SL (points, paired seeds)")
  axis.set_title("HALD against SL on the same table: official recipe and each ablation", fontsize=9)
  axis.legend(fontsize=7)
  axis.grid(alpha=0.3, axis="y")
  study_report.save_figure(fig, path)


def phase_curves(workdir: str) -> list[dict[str, Any]]:
  """The periodic evaluations of a study's cells, with each cell's hard epochs (HALD only)."""
  curves = []
  pattern = os.path.join(workdir, study.CELLS_DIR, "*", periodic_eval.EVALUATIONS_FILE)
  for path in sorted(glob.glob(pattern)):
    cell_dir = os.path.dirname(path)
    with open(path) as f:
      evaluations = json.load(f)["evaluations"]
    with open(os.path.join(cell_dir, study.CELL_CONFIG_FILE)) as f:
      cell = json.load(f)
    epochs = int(round(cell["num_epochs"]))
    hard = []
    if cell["regime"] == "hald":
      schedule = hald.parse_schedule(cell["hald_schedule"])
      hard = [
          e for e in range(epochs)
          if hald.phase_of_epoch(e, epochs, schedule, cell["hald_hard_fraction"]) == hald.HARD
      ]
    curves.append({
        "cell": os.path.basename(cell_dir),
        "regime": cell["regime"],
        "method": cell["selection"],
        "ipc": cell["images_per_class"],
        "crops": cell["crops_per_image"],
        "keep": cell["label_keep_fraction"],
        "seed": cell["seed"],
        "epochs": [e["epoch"] for e in evaluations],
        "test_top1": [100 * e["test_top1"] for e in evaluations],
        "hard_epochs": hard
    })
  return curves


def mean_curves(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Curves of one arm, regime, set, size and table averaged over their seeds (epoch by epoch,
  over the epochs every seed evaluated); `seeds` counts them."""
  groups: dict[tuple, list[dict]] = {}
  for c in curves:
    key = (c.get("arm", ""), c["regime"], c["method"], c["ipc"], c["crops"], c["keep"])
    groups.setdefault(key, []).append(c)
  out = []
  for (arm, regime, method, ipc, crops, keep), members in groups.items():
    epochs = sorted(set.intersection(*(set(c["epochs"]) for c in members)))
    values = [{e: v for e, v in zip(c["epochs"], c["test_top1"], strict=True)} for c in members]
    out.append({
        "arm": arm,
        "regime": regime,
        "method": method,
        "ipc": ipc,
        "crops": crops,
        "keep": keep,
        "seeds": len(members),
        "epochs": epochs,
        "test_top1": [sum(v[e] for v in values) / len(values) for e in epochs],
        "hard_epochs": members[0]["hard_epochs"]
    })
  return out


def plot_phase_curves(curves: list[dict[str, Any]], path: str) -> None:
  """A panel per (set, ipc): test top-1 after each evaluated epoch, mean over seeds, a line per
  arm, regime and table; a square marks an evaluation right after a hard epoch."""
  plt = study_report.pyplot()
  curves = mean_curves(curves)
  panels = _ordered((c["method"], c["ipc"]) for c in curves)
  columns = max(1, min(3, len(panels)))
  rows = max(1, math.ceil(len(panels) / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
  series = _ordered((c["arm"], c["regime"], c["crops"], c["keep"]) for c in curves)
  cycle = plt.get_cmap("tab10")
  colors = {s: cycle(i % 10) for i, s in enumerate(series)}
  for axis, (method, ipc) in zip(list(axes.flat)[:len(panels)], panels, strict=True):
    for c in (c for c in curves if (c["method"], c["ipc"]) == (method, ipc)):
      color = colors[c["arm"], c["regime"], c["crops"], c["keep"]]
      label = (f"{c['arm'] + ': ' if c['arm'] else ''}"
               f"{study_report.REGIME_NAMES.get(c['regime'], c['regime'])}, "
               f"{study_report.table_text(c['crops'], c['keep'])} ({c['seeds']} seed"
               f"{'s' if c['seeds'] > 1 else ''})")
      axis.plot(c["epochs"], c["test_top1"], color=color,
                linestyle="--" if c["regime"] == "hald" else "-", label=label, linewidth=1)
      hard = set(c["hard_epochs"])
      after_hard = [
          (e, v) for e, v in zip(c["epochs"], c["test_top1"], strict=True) if e - 1 in hard
      ]
      axis.scatter([e for e, _ in after_hard], [v for _, v in after_hard], color=color, marker="s",
                   s=12)
    axis.set_title(f"{method}, ipc {ipc} (■: after a hard epoch)", fontsize=8)
    axis.set_xlabel("epochs trained")
    axis.set_ylabel("test top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=5)
  for axis in list(axes.flat)[len(panels):]:
    axis.set_visible(False)
  study_report.save_figure(fig, path)


def write_report(base_dir: str, arms: dict[str, str], out_dir: str) -> study_report.Report:
  """ablations.md, ablation_gaps.png and, where cells evaluated along training,
  phase_curves.png/.json into `out_dir`; `arms` maps an ablation's name to its workdir."""
  if not arms:
    raise ValueError("no ablation to compare: give at least one --arm NAME=WORKDIR")
  base_rows = study_report.read_workdir(base_dir)
  compared = {
      name: compare(base_rows, study_report.read_workdir(workdir)) for name, workdir in arms.items()
  }
  os.makedirs(out_dir, exist_ok=True)  # only once every study has been read
  lines = [
      "# Ablations against the base grid", "", f"Base grid: `{base_dir}`.", "",
      "Accuracies are test top-1 (%) means over the ablation's seeds (the base's over the same "
      "cells' seeds); differences are paired per seed, in points, mean ± standard error "
      "(seeds).", ""
  ]
  sentences = []
  for name, entries in compared.items():
    lines += [f"## {name} (`{arms[name]}`)", "", comparison_table(entries), ""]
    sentences += findings(name, entries)
  lines += ["## Findings", "", *[f"- {s}" for s in sentences], ""]
  paths = []
  if any(e["regime"] == "hald" for entries in compared.values() for e in entries):
    paths.append(os.path.join(out_dir, GAPS_PLOT))
    plot_gaps(compared, base_gaps(base_rows), paths[-1])
    lines.append(f"![{GAPS_PLOT}]({GAPS_PLOT})")
  curves = [{
      **c, "arm": name
  } for name, workdir in (("base", base_dir), *arms.items()) for c in phase_curves(workdir)]
  if curves:
    paths.append(os.path.join(out_dir, CURVES_PLOT))
    plot_phase_curves(curves, paths[-1])
    paths.append(os.path.join(out_dir, CURVES_JSON))
    metrics_log.write_json_atomic(paths[-1], {"curves": curves})
    lines.append(f"![{CURVES_PLOT}]({CURVES_PLOT})")
  markdown = "\n".join(lines) + "\n"
  report_path = os.path.join(out_dir, REPORT_FILE)
  metrics_log.write_text_atomic(report_path, markdown)
  return study_report.Report(markdown, (report_path, *paths))


def main(argv: Sequence[str]) -> None:
  """`--base WORKDIR --arm NAME=WORKDIR ... [--out DIR]`."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", required=True, help="the base study's workdir")
  parser.add_argument("--arm", action="append", default=[], help="NAME=WORKDIR of an ablation")
  parser.add_argument("--out", default="", help="output directory (default: <base>/ablations)")
  args = parser.parse_args(argv)
  arms = {}
  for text in args.arm:
    name, sep, workdir = text.partition("=")
    if not sep or not name or not workdir:
      parser.error(f"--arm {text!r}: expected NAME=WORKDIR")
    arms[name] = workdir
  report = write_report(args.base, arms, args.out or os.path.join(args.base, "ablations"))
  print(report.markdown)
  print("\n".join(report.paths))


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
