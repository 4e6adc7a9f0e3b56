"""Local semantic drift against HALD's gain over SL: does HALD gain where few crops' labels stray?

HALD's premise (DESIGN.md §5): a few stored crops' soft labels drift from their image's class, and
the hard phase corrects it, so HALD − SL should be largest where the drift is largest (few crops)
and close as crops grow. This joins `task='drift'` runs (one per set and size; `drift.json` names
its set, size, seed and relabel teacher) with a label-table study's paired HALD − SL
(`study_report.paired_gaps`, unpruned tables only: a drift run's m crops are the m-crop table's),
per (set, size, crops per image), and reports Pearson's r of the gap against each drift measure:

- `mean_label_mismatch`: the share of images whose m-crop average points at another class,
- `crop_mismatch`: the share of single stored crops that do,
- `kl`: KL(whole image ‖ m-crop average) at the drift run's temperature.

  python -m hardlabel_jax.drift_gap --study /tmp/fashion_hald_paper \\
      --drift '/tmp/fhd/*-auto' --out /tmp/fashion_hald_drift_gap
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from hardlabel_jax import cache
from hardlabel_jax import metrics_log
from hardlabel_jax import study_report

MEASURES = ("mean_label_mismatch", "crop_mismatch", "kl")
MEASURE_TEXT = {
    "mean_label_mismatch": "crop-average argmax ≠ label (share)",
    "crop_mismatch": "single crop argmax ≠ label (share)",
    "kl": "KL(whole ‖ crop average)"
}
REPORT_FILE = "drift_gap.md"
PLOT_FILE = "drift_gap.png"


def _set_of(record: dict[str, Any]) -> tuple[str, int]:
  """(method, ipc) of a drift run's set: a distilled or synthesized set (an image folder in the
  cache) by its artefact identity, a real subset by the run's selection and size."""
  name, _, folder = record["dataset"].partition(":")
  identity_path = os.path.join(folder, cache.IDENTITY_FILE)
  if name == "imagefolder" and os.path.exists(identity_path):
    with open(identity_path) as f:
      identity = json.load(f)
    return identity["method"], int(identity["ipc"])
  return record["config"]["selection"], int(record["config"]["images_per_class"])


def drift_runs(directories: Sequence[str]) -> dict[tuple, dict[str, Any]]:
  """(set, ipc) → the drift run there: its teacher mode, seed, directory and rows by crops.

  A set built in the cache is named by its identity (`method`, `ipc`), a real subset by the
  run's `selection` and `images_per_class`.

  Two runs of one (set, ipc) are refused (a BSSL and an eval-mode run: pick the study's)."""
  runs: dict[tuple, dict[str, Any]] = {}
  for directory in directories:
    path = os.path.join(directory, "drift.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: not a finished task='drift' workdir")
    with open(path) as f:
      record = json.load(f)
    config = record["config"]
    key = _set_of(record)
    if key in runs:
      raise ValueError(f"two drift runs of {key[0]} ipc {key[1]}: {runs[key]['directory']} and "
                       f"{directory}; give one per set and size")
    runs[key] = {
        "directory": directory,
        "teacher_bn_mode": config["teacher_bn_mode"],
        "seed": config["subset_seed"],
        "rows": {
            row["crops_per_image"]: row for row in record["rows"]
        }
    }
  return runs


def join(study_rows: list[dict[str, Any]], runs: dict[tuple, dict[str, Any]]) -> list[dict]:
  """One point per (set, ipc, crops) with both a paired HALD − SL and a drift row."""
  points = []
  for gap in study_report.paired_gaps(study_rows):
    run = runs.get((gap["method"], gap["ipc"]))
    if (not gap["seeds"] or gap["crops"] is None or gap["keep"] not in (None, 1.0) or run is None
        or gap["crops"] not in run["rows"]):
      continue
    drift = run["rows"][gap["crops"]]
    points.append({
        "method": gap["method"],
        "ipc": gap["ipc"],
        "crops": gap["crops"],
        "gap": gap["gap"],
        "stderr": gap["stderr"],
        "seeds": gap["seeds"],
        "sl": gap["sl"]["mean"],
        "hald": gap["hald"]["mean"],
        **{
            measure: float(drift[measure]) for measure in MEASURES
        }
    })
  return sorted(points, key=lambda p: (p["method"], p["ipc"], p["crops"]))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
  """Pearson's correlation (nan with under 3 points or a constant side)."""
  if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
    return math.nan
  return float(np.corrcoef(xs, ys)[0, 1])


def correlations(points: list[dict]) -> dict[str, dict[str, float]]:
  """Per measure: r against HALD − SL, against SL and against HALD (all points)."""
  return {
      measure: {
          target: pearson([p[measure]
                           for p in points], [p[target]
                                              for p in points])
          for target in ("gap", "sl", "hald")
      } for measure in MEASURES
  }


def table(points: list[dict]) -> str:
  header = [
      "set", "ipc", "crops", "crop-average ≠ label", "single crop ≠ label", "KL", "SL", "HALD",
      "HALD − SL (paired)"
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for p in points:
    gap = (f"{p['gap']:+.1f} ± {p['stderr']:.1f} ({p['seeds']})"
           if p["seeds"] > 1 else f"{p['gap']:+.1f} (1)")
    lines.append("| " + " | ".join([
        p["method"],
        str(p["ipc"]),
        str(p["crops"]), f"{100 * p['mean_label_mismatch']:.0f} %",
        f"{100 * p['crop_mismatch']:.0f} %", f"{p['kl']:.2f}", f"{p['sl']:.1f}", f"{p['hald']:.1f}",
        gap
    ]) + " |")
  return "\n".join(lines)


def plot(points: list[dict], path: str) -> None:
  """HALD − SL against each drift measure; a colour per set, a marker per size."""
  plt = study_report.pyplot()
  sets = list(dict.fromkeys(p["method"] for p in points))
  sizes = list(dict.fromkeys(p["ipc"] for p in points))
  cycle = plt.get_cmap("tab10")
  markers = "osD^v"
  fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6), sharey=True)
  r = correlations(points)
  for axis, measure in zip(axes, MEASURES, strict=True):
    for p in points:
      axis.errorbar(p[measure], p["gap"], yerr=p["stderr"] if p["seeds"] > 1 else None,
                    color=cycle(sets.index(p["method"]) % 10),
                    marker=markers[sizes.index(p["ipc"]) % len(markers)], capsize=2, linestyle="")
      axis.annotate(str(p["crops"]), (p[measure], p["gap"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel(MEASURE_TEXT[measure], fontsize=8)
    axis.set_title(f"r = {r[measure]['gap']:+.2f} (points: crops per image)", fontsize=8)
    axis.grid(alpha=0.3)
  axes[0].set_ylabel("HALD − SL (points, paired seeds)")
  handles = [
      plt.Line2D([], [], color=cycle(i % 10), marker="o", linestyle="", label=s)
      for i, s in enumerate(sets)
  ] + [
      plt.Line2D([], [], color="black", marker=markers[i % len(markers)], linestyle="",
                 label=f"ipc {ipc}") for i, ipc in enumerate(sizes)
  ]
  axes[-1].legend(handles=handles, fontsize=7)
  study_report.save_figure(fig, path)


def write_report(study_dir: str, drift_dirs: Sequence[str], out_dir: str) -> study_report.Report:
  """drift_gap.md and drift_gap.png in `out_dir`."""
  study_rows = study_report.read_workdir(study_dir)
  runs = drift_runs(drift_dirs)
  points = join(study_rows, runs)
  if not points:
    raise ValueError(f"no (set, ipc, crops) of {study_dir} has both a paired HALD − SL and a "
                     f"drift row in {', '.join(drift_dirs)}")
  r = correlations(points)
  teachers = sorted({run["teacher_bn_mode"] for run in runs.values()})
  lines = [
      "# Local semantic drift against HALD − SL", "",
      f"Study: `{study_dir}`; drift runs: {len(runs)} (relabel teacher as the runs recorded it: "
      f"{', '.join(teachers)}; "
      f"sets of seed {', '.join(str(s) for s in sorted({run['seed'] for run in runs.values()}))})"
      ".", "",
      table(points), "", "Pearson's r over the table's rows:", "",
      "| drift measure | r with HALD − SL | r with SL | r with HALD |", "|---|---|---|---|"
  ]
  lines += [
      f"| {MEASURE_TEXT[m]} | {r[m]['gap']:+.2f} | {r[m]['sl']:+.2f} | {r[m]['hald']:+.2f} |"
      for m in MEASURES
  ]
  lines += ["", f"![{PLOT_FILE}]({PLOT_FILE})"]
  os.makedirs(out_dir, exist_ok=True)
  plot_path = os.path.join(out_dir, PLOT_FILE)
  plot(points, plot_path)
  markdown = "\n".join(lines) + "\n"
  report_path = os.path.join(out_dir, REPORT_FILE)
  metrics_log.write_text_atomic(report_path, markdown)
  return study_report.Report(markdown, (report_path, plot_path))


def main(argv: Sequence[str]) -> None:
  """`--study WORKDIR --drift GLOB ... [--out DIR]`."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--study", required=True, help="the label-table study's workdir")
  parser.add_argument("--drift", action="append", required=True,
                      help="task='drift' workdirs (a glob), one per set and size")
  parser.add_argument("--out", default="", help="output directory (default: <study>/drift_gap)")
  args = parser.parse_args(argv)
  directories = sorted(d for pattern in args.drift for d in glob.glob(pattern))
  if not directories:
    parser.error(f"--drift {args.drift}: no directory matches")
  report = write_report(args.study, directories, args.out or os.path.join(args.study, "drift_gap"))
  print(report.markdown)
  print("\n".join(report.paths))


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
