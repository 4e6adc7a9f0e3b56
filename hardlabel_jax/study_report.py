"""A study's results.csv → Markdown tables, findings and PNG plots (Hard Truths' analysis).

Accuracy is test top-1 in percent, mean ± sample std over seeds. "Beats random" means the mean
gain exceeds two standard errors of the difference (with one seed, any positive gain, flagged).
The spread of a regime at a size is best − worst mean over the subset methods (not `full`); the
paper's "performance saturation" is SL+KD's spread shrinking relative to HL's.

  python -m hardlabel_jax.study_report --csv WORKDIR/results.csv   # redraws the report
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
from typing import Any, Iterable, Sequence

from hardlabel_jax import selection

FULL = "full"
RANDOM = "random"
INT_FIELDS = ("ipc", "seed", "examples_seen", "steps", "pool_size", "label_bytes")
FLOAT_FIELDS = ("test_top1", "test_loss", "epochs", "wall_seconds")
REGIME_NAMES = {"hl": "HL", "sl": "SL", "sl_kd": "SL+KD", "hald": "HALD", "kd": "KD"}
PLOTS = ("accuracy_vs_ipc.png", "gain_over_random.png", "accuracy_vs_label_bytes.png")
REPORT_FILE = "report.md"
CELLS_DIR = "cells"  # study.CELLS_DIR: each cell's workdir, with its results.json
CAD_SELECTIONS = ("cad_prune", "ca2d")


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
  return rows


def _ordered(values: Iterable) -> list:
  return list(dict.fromkeys(values))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean)**2 for v in values) / (len(values) - 1))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per (regime, method, ipc): accuracy mean/std in %, seeds, mean label bytes."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault((row["regime"], row["method"], row["ipc"]), []).append(row)
  summary = []
  for (regime, method, ipc), members in groups.items():
    mean, std = _mean_std([100 * r["test_top1"] for r in members])
    summary.append({
        "regime": regime,
        "method": method,
        "ipc": ipc,
        "n": len(members),
        "mean": mean,
        "std": std,
        "label_source": members[0]["label_source"],
        "label_bytes": sum(r["label_bytes"] for r in members) / len(members)
    })
  return summary


def _lookup(summary: list[dict]) -> dict[tuple, dict]:
  return {(s["regime"], s["method"], s["ipc"]): s for s in summary}


def _sizes(summary: list[dict]) -> list[int]:
  return sorted({s["ipc"] for s in summary if s["method"] != FULL})


def gains_over_random(summary: list[dict]) -> list[dict[str, Any]]:
  """Each subset method's mean gain over random (points) at the same regime and size."""
  table = _lookup(summary)
  gains = []
  for s in summary:
    base = table.get((s["regime"], RANDOM, s["ipc"]))
    if s["method"] in (RANDOM, FULL) or base is None:
      continue
    error = math.sqrt(s["std"]**2 / s["n"] + base["std"]**2 / base["n"])
    gain = s["mean"] - base["mean"]
    gains.append({
        "regime": s["regime"],
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
  """Per regime and size: best and worst subset method, their spread, random's accuracy."""
  out = []
  for regime in _ordered(s["regime"] for s in summary):
    for ipc in _sizes(summary):
      cells = [
          s for s in summary if s["regime"] == regime and s["ipc"] == ipc and s["method"] != FULL
      ]
      if not cells:
        continue
      best = max(cells, key=lambda s: s["mean"])
      worst = min(cells, key=lambda s: s["mean"])
      random_cell = next((s for s in cells if s["method"] == RANDOM), None)
      out.append({
          "regime": regime,
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
  """Markdown: one row per regime and method, one column per images per class (+ full data)."""
  table = _lookup(summary)
  sizes = _sizes(summary)
  has_full = any(s["method"] == FULL for s in summary)
  header = ["regime", "method", *[f"ipc {i}" for i in sizes]] + (["full data"] if has_full else [])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for regime in _ordered(s["regime"] for s in summary):
    for method in _ordered(s["method"] for s in summary if s["regime"] == regime):
      cells = [_cell_text(table.get((regime, method, i))) if method != FULL else "–" for i in sizes]
      if has_full:
        cells.append(_cell_text(table.get((regime, method, 0))) if method == FULL else "–")
      lines.append(f"| {REGIME_NAMES.get(regime, regime)} | {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def spread_table(summary: list[dict]) -> str:
  """Markdown: per regime and size, random, the best method, its gain and the spread."""
  gains = {(g["regime"], g["method"], g["ipc"]): g for g in gains_over_random(summary)}
  lines = [
      "| regime | ipc | random | best method | best − random | spread (best − worst) |",
      "|---|---|---|---|---|---|"
  ]
  for row in spreads(summary):
    gain = gains.get((row["regime"], row["best"], row["ipc"]))
    gain_text = f"{gain['gain']:+.1f} ± {gain['stderr']:.1f}" if gain else "–"
    lines.append(f"| {REGIME_NAMES.get(row['regime'], row['regime'])} | {row['ipc']} | "
                 f"{row['random_mean']:.1f} | {row['best']} ({row['best_mean']:.1f}) | "
                 f"{gain_text} | {row['spread']:.1f} |")
  return "\n".join(lines)


def findings(summary: list[dict]) -> list[str]:
  """Plain sentences: does SL+KD compress the spread relative to HL; what beats random under HL."""
  by_key = {(r["regime"], r["ipc"]): r for r in spreads(summary)}
  sentences = []
  for ipc in _sizes(summary):
    hl, slkd = by_key.get(("hl", ipc)), by_key.get(("sl_kd", ipc))
    if hl and slkd and hl["methods"] > 1:
      verdict = "compresses" if slkd["spread"] < hl["spread"] else "does not compress"
      sentences.append(f"ipc {ipc}: SL+KD {verdict} the spread between methods relative to HL "
                       f"({slkd['spread']:.1f} vs {hl['spread']:.1f} points; random "
                       f"{slkd['random_mean']:.1f} vs {hl['random_mean']:.1f}).")
  gains = gains_over_random(summary)
  for regime in _ordered(g["regime"] for g in gains):
    for ipc in _sizes(summary):
      here = [g for g in gains if g["regime"] == regime and g["ipc"] == ipc]
      if not here:
        continue
      winners = [g for g in here if g["beats_random"]]
      best = max(here, key=lambda g: g["gain"])
      name = REGIME_NAMES.get(regime, regime)
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
  return sentences


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> None:
  plt = _pyplot()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def _method_colors(summary: list[dict]) -> dict[str, Any]:
  plt = _pyplot()
  methods = _ordered(s["method"] for s in summary)
  cycle = plt.get_cmap("tab10")
  return {m: cycle(i % 10) for i, m in enumerate(methods)}


def plot_accuracy_vs_ipc(summary: list[dict], path: str) -> None:
  """One panel per regime: accuracy vs images per class, a line per method, full data dashed."""
  plt = _pyplot()
  regimes = _ordered(s["regime"] for s in summary)
  colors = _method_colors(summary)
  sizes = _sizes(summary)
  fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), sharey=True,
                           squeeze=False)
  for axis, regime in zip(axes[0], regimes, strict=True):
    cells = [s for s in summary if s["regime"] == regime]
    for method in _ordered(s["method"] for s in cells):
      points = sorted((s for s in cells if s["method"] == method), key=lambda s: s["ipc"])
      if method == FULL:
        axis.axhline(points[0]["mean"], color=colors[method], linestyle="--", label="full data")
        continue
      axis.errorbar([s["ipc"] for s in points], [s["mean"] for s in points],
                    yerr=[s["std"] for s in points], marker="o", capsize=3, color=colors[method],
                    label=method)
    if len(sizes) > 1:
      axis.set_xscale("log")
    axis.set_xticks(sizes, [str(i) for i in sizes])
    axis.minorticks_off()
    axis.set_xlabel("images per class")
    axis.set_title(REGIME_NAMES.get(regime, regime))
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 (%)")
  axes[0][-1].legend(fontsize=7, loc="lower right")
  _save(fig, path)


def plot_gain_over_random(summary: list[dict], path: str) -> None:
  """One panel per regime: each method's gain over random (points, ± 1 s.e.) per size."""
  plt = _pyplot()
  gains = gains_over_random(summary)
  regimes = _ordered(s["regime"] for s in summary)
  colors = _method_colors(summary)
  sizes = _sizes(summary)
  methods = _ordered(g["method"] for g in gains)
  fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), sharey=True,
                           squeeze=False)
  width = 0.8 / max(len(methods), 1)
  for axis, regime in zip(axes[0], regimes, strict=True):
    for k, method in enumerate(methods):
      here = {g["ipc"]: g for g in gains if g["regime"] == regime and g["method"] == method}
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
  _save(fig, path)


def plot_accuracy_vs_label_bytes(summary: list[dict], path: str) -> None:
  """Accuracy against stored soft-label bytes (SL, HALD); HL and SL+KD drawn as references."""
  plt = _pyplot()
  colors = _method_colors(summary)
  markers = {"sl": "o", "hald": "s"}
  fig, axis = plt.subplots(figsize=(6, 4))
  stored = [s for s in summary if s["label_bytes"] > 0]
  for s in stored:
    axis.scatter(s["label_bytes"], s["mean"], color=colors[s["method"]],
                 marker=markers.get(s["regime"], "^"), s=36)
    axis.annotate(str(s["ipc"] or "all"), (s["label_bytes"], s["mean"]), fontsize=6, xytext=(3, 3),
                  textcoords="offset points")
  for regime, style in (("hl", ":"), ("sl_kd", "--")):
    reference = [s for s in summary if s["regime"] == regime and s["method"] == RANDOM]
    for s in reference:
      axis.axhline(s["mean"], color="gray", linestyle=style, linewidth=0.8)
      axis.annotate(f"{REGIME_NAMES[regime]} random ipc {s['ipc']}", (0.01, s["mean"]),
                    xycoords=("axes fraction", "data"), fontsize=6, color="gray")
  handles = [
      plt.Line2D([], [], color=c, marker="o", linestyle="", label=m) for m, c in colors.items()
  ]
  handles += [
      plt.Line2D([], [], color="black", marker=mk, linestyle="", label=REGIME_NAMES[r])
      for r, mk in markers.items()
  ]
  axis.legend(handles=handles, fontsize=7, loc="lower right")
  if stored:
    axis.set_xscale("log")
  else:
    axis.text(0.5, 0.5, "no stored soft labels (no SL / HALD cells)", ha="center",
              transform=axis.transAxes)
  axis.set_xlabel("soft-label bytes used (stored table; points are labelled with ipc)")
  axis.set_ylabel("test top-1 (%)")
  axis.set_title("accuracy vs soft-label storage (HL: 0 bytes; SL+KD: teacher online)", fontsize=9)
  axis.grid(alpha=0.3)
  _save(fig, path)


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
             record["cad_num_windows_used"], record["cad_window"], record["cad_num_windows"])
      used[key] = bool(record.get("cad_windows_shrink"))
  if not used:
    return None
  parts = []
  for (epochs, window, num_windows, asked_window, asked_num), shrink in sorted(used.items()):
    part = f"J={window}, W={num_windows} over K={epochs} scoring epochs"
    if (window, num_windows) != (asked_window, asked_num):
      part += (f" (shrunk from J={asked_window}, W={asked_num} by cad_windows_shrink)"
               if shrink else f" (configured J={asked_window}, W={asked_num})")
    parts.append(part)
  return "CAD scores used " + "; ".join(parts) + "."


def write_report(rows: list[dict[str, Any]], out_dir: str) -> Report:
  """Writes report.md and the three plots into `out_dir`; returns the text and paths."""
  summary = summarize(rows)
  paths = tuple(os.path.join(out_dir, name) for name in PLOTS)
  plot_accuracy_vs_ipc(summary, paths[0])
  plot_gain_over_random(summary, paths[1])
  plot_accuracy_vs_label_bytes(summary, paths[2])
  lines = [
      "## Test top-1 (%), mean ± std over seeds (seeds)", "",
      accuracy_table(summary), "", "## Spread between subset methods and gain over random (points)",
      "",
      spread_table(summary), "", "## Findings", ""
  ]
  cad_line = cad_windows_line(out_dir)
  lines += [f"- {sentence}" for sentence in findings(summary) + ([cad_line] if cad_line else [])]
  lines += [""]
  lines += [f"![{name}]({name})" for name in PLOTS]
  markdown = "\n".join(lines) + "\n"
  report_path = os.path.join(out_dir, REPORT_FILE)
  tmp = report_path + ".tmp"
  with open(tmp, "w") as f:
    f.write(markdown)
  os.replace(tmp, report_path)
  return Report(markdown, (report_path, *paths))


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
