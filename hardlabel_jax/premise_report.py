"""The premise sweep of a study → premise.md and two plots: does the best difficulty follow compute?

CAD-Prune's claim (Hard Truths §4) is that the difficulty a subset should have depends on the
compute it is trained with: less compute, easier images. A study with `study_cad_epochs` trains
CAD-Prune with scoring runs of several lengths K at every size (the downstream epochs fixed), and
one with `study_window_positions` trains windows of consecutive ranks by EL2N and by CAD, from the
lowest scores (position 0) to the highest (1; at position 1 `cad_window` is CAD-Prune). This module
reads those rows of results.csv and answers:
- accuracy against K per size, with the compute-matched K = E·n/N marked and its place among the
  K tried;
- accuracy against the window per size and score; whether the best window is easier (a lower
  position) at the smaller compute (fewer examples seen) than at the larger.

Accuracy is test top-1 in percent, mean ± standard error over seeds (seeds in brackets).

  python -m hardlabel_jax.premise_report --csv WORKDIR/results.csv   # redraws premise.md
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

from hardlabel_jax import metrics_log
from hardlabel_jax import study_report

PREMISE_FILE = "premise.md"
PLOTS = ("premise_k.png", "premise_windows.png")
WINDOW_METHODS = ("el2n_window", "cad_window")  # config_schema.WINDOW_SELECTIONS
SCORE_NAMES = {"el2n_window": "EL2N", "cad_window": "CAD"}


@dataclasses.dataclass(frozen=True)
class Point:
  """One point of a premise curve: a size, an x (K or position), accuracy mean ± s.e. in %."""

  ipc: int
  x: float
  mean: float
  stderr: float
  seeds: int


def _point(ipc: int, x: float, rows: list[dict[str, Any]]) -> Point:
  mean, stderr = study_report.mean_stderr([100 * r["test_top1"] for r in rows])
  return Point(ipc, x, mean, stderr, len(rows))


def _text(point: Point | None) -> str:
  if point is None:
    return "–"
  return f"{point.mean:.1f} ± {point.stderr:.1f} ({point.seeds})"


def _group(rows: list[dict[str, Any]], key) -> dict[Any, list[dict[str, Any]]]:
  groups: dict[Any, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(key(row), []).append(row)
  return groups


def _regime_rows(rows: list[dict[str, Any]], regime: str) -> list[dict[str, Any]]:
  return [r for r in rows if r["regime"] == regime]


def k_curve(rows: list[dict[str, Any]], regime: str = "hl") -> list[Point]:
  """CAD-Prune's accuracy per (size, scoring length K) of a study_cad_epochs sweep."""
  swept = [
      r for r in _regime_rows(rows, regime)
      if r["method"] == "cad_prune" and r.get("variant", "").startswith("k")
  ]
  groups = _group(swept, lambda r: (r["ipc"], r["cad_scoring_epochs"]))
  return sorted((_point(ipc, k, members) for (ipc, k), members in groups.items()), key=lambda p:
                (p.ipc, p.x))


def matched_epochs(rows: list[dict[str, Any]], regime: str = "hl") -> dict[int, int]:
  """The compute-matched K = E·n/N of every size with a CAD-ranked row."""
  return {
      r["ipc"]: r["cad_matched_epochs"]
      for r in _regime_rows(rows, regime)
      if r.get("cad_matched_epochs")
  }


def window_curves(rows: list[dict[str, Any]], regime: str = "hl") -> dict[str, list[Point]]:
  """Per rank-window method, its accuracy per (size, window position)."""
  curves = {}
  for method in WINDOW_METHODS:
    members = [
        r for r in _regime_rows(rows, regime) if r["method"] == method and "window_position" in r
    ]
    groups = _group(members, lambda r: (r["ipc"], r["window_position"]))
    if groups:
      curves[method] = sorted((_point(ipc, x, g) for (ipc, x), g in groups.items()), key=lambda p:
                              (p.ipc, p.x))
  return curves


def random_reference(rows: list[dict[str, Any]], regime: str = "hl") -> dict[int, Point]:
  """Random subsets' accuracy per size (the line every curve is read against)."""
  groups = _group([r for r in _regime_rows(rows, regime) if r["method"] == study_report.RANDOM],
                  lambda r: r["ipc"])
  return {ipc: _point(ipc, 0, members) for ipc, members in groups.items()}


def examples_per_size(rows: list[dict[str, Any]], regime: str = "hl") -> dict[int, float]:
  """Mean examples a cell of each size trained on: the size's downstream compute."""
  groups = _group([r for r in _regime_rows(rows, regime) if r["method"] != study_report.FULL],
                  lambda r: r["ipc"])
  return {ipc: sum(r["examples_seen"] for r in g) / len(g) for ipc, g in groups.items()}


def best(points: list[Point], ipc: int) -> Point | None:
  """The highest-mean point of one size (ties → the lower x)."""
  candidates = [p for p in points if p.ipc == ipc]
  return max(candidates, key=lambda p: (p.mean, -p.x)) if candidates else None


def _at(points: list[Point], ipc: int, x: float) -> Point | None:
  return next((p for p in points if p.ipc == ipc and p.x == x), None)


def k_table(rows: list[dict[str, Any]], regime: str = "hl") -> str:
  """Markdown: sizes as rows, K as columns, the compute-matched K starred, random last."""
  curve, matched, reference = k_curve(rows, regime), matched_epochs(rows, regime), random_reference(
      rows, regime)
  if not curve:
    return ""
  lengths = sorted({int(p.x) for p in curve})
  sizes = sorted({p.ipc for p in curve})
  head = ["ipc", *[f"K={k}" for k in lengths], "random", "matched K"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for ipc in sizes:
    cells = []
    for k in lengths:
      text = _text(_at(curve, ipc, k))
      cells.append(f"**{text}**" if matched.get(ipc) == k else text)
    lines.append(f"| {ipc} | " + " | ".join(cells)
                 + f" | {_text(reference.get(ipc))} | {matched.get(ipc, '–')} |")
  return "\n".join(lines)


def window_table(rows: list[dict[str, Any]], regime: str = "hl") -> str:
  """Markdown: (score, size) as rows, window positions as columns, random last."""
  curves, reference = window_curves(rows, regime), random_reference(rows, regime)
  if not curves:
    return ""
  positions = sorted({p.x for points in curves.values() for p in points})
  head = ["score", "ipc", *[f"@{x:g}" for x in positions], "random"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, points in curves.items():
    for ipc in sorted({p.ipc for p in points}):
      top = best(points, ipc)
      cells = []
      for x in positions:
        text = _text(_at(points, ipc, x))
        cells.append(f"**{text}**" if top is not None and top.x == x else text)
      lines.append(f"| {SCORE_NAMES[method]} | {ipc} | " + " | ".join(cells)
                   + f" | {_text(reference.get(ipc))} |")
  return "\n".join(lines)


def _k_findings(rows: list[dict[str, Any]], regime: str) -> list[str]:
  curve, matched = k_curve(rows, regime), matched_epochs(rows, regime)
  sentences = []
  for ipc in sorted({p.ipc for p in curve}):
    top = best(curve, ipc)
    points = sorted((p for p in curve if p.ipc == ipc), key=lambda p: -p.mean)
    k = matched.get(ipc)
    at_matched = _at(curve, ipc, k) if k else None
    if at_matched is None:
      sentences.append(f"ipc {ipc}: the best scoring length is K={top.x:g} ({_text(top)}); the "
                       "compute-matched K was not in the sweep.")
      continue
    place = points.index(at_matched) + 1
    gap = top.mean - at_matched.mean
    if top is at_matched:
      runner = points[1] if len(points) > 1 else None
      sentences.append(f"ipc {ipc}: the compute-matched K={k} ({_text(at_matched)}) is the best of "
                       f"{len(points)} scoring lengths"
                       + (f"; next K={runner.x:g} ({_text(runner)})." if runner else "."))
      continue
    sentences.append(f"ipc {ipc}: the compute-matched K={k} ({_text(at_matched)}) ranks {place} of "
                     f"{len(points)} scoring lengths; the best is K={top.x:g} ({_text(top)}, "
                     f"{gap:+.1f} points over the matched K"
                     + (", within 2 standard errors" if gap <= 2
                        * math.hypot(top.stderr, at_matched.stderr) else "") + ").")
  return sentences


def _move_text(method: str, low: float, high: float) -> str:
  """How the best window moves from the largest compute (`high`) to the smallest (`low`).

  Only EL2N's position is a difficulty (low = easy); a low CAD is an image the scoring run was
  sure of, learned or not, so CAD's move is named as a position only.
  """
  if low == high:
    return "at the same position at both ends of compute"
  if method != "el2n_window":
    return f"{'lower' if low < high else 'higher'} in CAD rank at the smaller compute"
  if low < high:
    return "easier (a lower EL2N position) at the smaller compute, as the premise says"
  return "harder (a higher EL2N position) at the smaller compute, against the premise"


def _window_findings(rows: list[dict[str, Any]], regime: str) -> list[str]:
  curves = window_curves(rows, regime)
  compute = examples_per_size(rows, regime)
  sentences = []
  for method, points in curves.items():
    sizes = sorted({p.ipc for p in points}, key=lambda i: compute.get(i, i))
    if not sizes:
      continue
    tops = {ipc: best(points, ipc) for ipc in sizes}
    parts = [f"ipc {ipc} @{tops[ipc].x:g} ({_text(tops[ipc])})" for ipc in sizes]
    sentence = f"{SCORE_NAMES[method]} windows, best per size (least compute first): " + \
        ", ".join(parts)
    if len(sizes) > 1:
      low, high = tops[sizes[0]].x, tops[sizes[-1]].x
      verdict = _move_text(method, low, high)
      other = _at(points, sizes[0], high)
      sentence += f"; the best window is {verdict}"
      if other is not None and low != high:
        sentence += (f" (at ipc {sizes[0]}, ipc {sizes[-1]}'s best @{high:g} gives "
                     f"{_text(other)})")
    sentences.append(sentence + ".")
  return sentences


def findings(rows: list[dict[str, Any]], regime: str = "hl") -> list[str]:
  """Sentences: where the matched K falls on the K curve, and how the best window moves."""
  return _k_findings(rows, regime) + _window_findings(rows, regime)


def plot_k_curve(rows: list[dict[str, Any]], path: str, regime: str = "hl") -> None:
  """Accuracy against K (log axis) per size; random dashed, the matched K a star."""
  plt = study_report.pyplot()
  curve, matched, reference = k_curve(rows, regime), matched_epochs(rows, regime), random_reference(
      rows, regime)
  fig, axis = plt.subplots(figsize=(4.6, 3.4))
  cycle = plt.get_cmap("tab10")
  for i, ipc in enumerate(sorted({p.ipc for p in curve})):
    points = [p for p in curve if p.ipc == ipc]
    axis.errorbar([p.x for p in points], [p.mean for p in points], yerr=[p.stderr for p in points],
                  marker="o", capsize=3, color=cycle(i), label=f"CAD-Prune, ipc {ipc}")
    if ipc in reference:
      axis.axhline(reference[ipc].mean, color=cycle(i), linestyle="--", linewidth=1,
                   label=f"random, ipc {ipc}")
    at = _at(curve, ipc, matched.get(ipc, -1))
    if at is not None:
      axis.plot([at.x], [at.mean], marker="*", markersize=14, color=cycle(i), linestyle="none")
  axis.set_xscale("log")
  lengths = sorted({p.x for p in curve})
  axis.set_xticks(lengths, [f"{k:g}" for k in lengths])
  axis.minorticks_off()
  axis.set_xlabel("CAD scoring run length K (epochs; ★ = E·n/N)")
  axis.set_ylabel("test top-1 (%)")
  axis.set_title(f"{study_report.REGIME_NAMES.get(regime, regime)}: CAD-Prune vs scoring compute",
                 fontsize=9)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=7)
  study_report.save_figure(fig, path)


def plot_window_curves(rows: list[dict[str, Any]], path: str, regime: str = "hl") -> None:
  """One panel per size: accuracy against window position, a line per score, random dashed."""
  plt = study_report.pyplot()
  curves, reference = window_curves(rows, regime), random_reference(rows, regime)
  sizes = sorted({p.ipc for points in curves.values() for p in points})
  fig, axes = plt.subplots(1, len(sizes), figsize=(3.8 * len(sizes), 3.4), squeeze=False)
  cycle = plt.get_cmap("tab10")
  for axis, ipc in zip(axes[0], sizes, strict=True):
    for i, (method, points) in enumerate(curves.items()):
      mine = [p for p in points if p.ipc == ipc]
      axis.errorbar([p.x for p in mine], [p.mean for p in mine], yerr=[p.stderr for p in mine],
                    marker="o", capsize=3, color=cycle(i), label=f"{SCORE_NAMES[method]} window")
    if ipc in reference:
      axis.axhline(reference[ipc].mean, color="gray", linestyle="--", label="random")
    axis.set_xlabel("window position (0 lowest score, 1 highest)")
    axis.set_title(f"ipc {ipc}")
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel("test top-1 (%)")
  axes[0][-1].legend(fontsize=7)
  study_report.save_figure(fig, path)


def write(rows: list[dict[str, Any]], out_dir: str,
          regime: str = "hl") -> study_report.Report | None:
  """premise.md and its plots in `out_dir`; None when the rows hold no premise sweep."""
  k_text, window_text = k_table(rows, regime), window_table(rows, regime)
  if not k_text and not window_text:
    return None
  name = study_report.REGIME_NAMES.get(regime, regime)
  lines = [f"# The premise: does the best difficulty follow compute? ({name})", ""]
  paths = []
  if k_text:
    lines += [
        "## CAD-Prune against its scoring run's length K (downstream epochs fixed)", "",
        "Test top-1 (%), mean ± s.e. (seeds); bold: the compute-matched K = E·n/N.", "", k_text, ""
    ]
    paths.append(os.path.join(out_dir, PLOTS[0]))
    plot_k_curve(rows, paths[-1], regime)
  if window_text:
    lines += [
        "## Windows of consecutive ranks, lowest score (@0) to highest (@1)", "",
        "Test top-1 (%), mean ± s.e. (seeds); bold: the best window of the row. EL2N @0 is the "
        "easiest images, @1 the hardest; CAD @1 is CAD-Prune's pick (the most uncertain), and a "
        "low CAD is an image the scoring run was sure of, learned or not.", "", window_text, ""
    ]
    paths.append(os.path.join(out_dir, PLOTS[1]))
    plot_window_curves(rows, paths[-1], regime)
  lines += ["## Findings", "", *[f"- {s}" for s in findings(rows, regime)], ""]
  lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]
  markdown = "\n".join(lines) + "\n"
  path = os.path.join(out_dir, PREMISE_FILE)
  metrics_log.write_text_atomic(path, markdown)
  return study_report.Report(markdown, (path, *paths))


def main(argv: Sequence[str]) -> None:
  """`--csv PATH [--out DIR]`: redraws premise.md of a finished or partial study."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--csv", required=True, help="a study's results.csv")
  parser.add_argument("--out", default="", help="output directory (default: the CSV's)")
  args = parser.parse_args(argv)
  report = write(study_report.read_csv(args.csv), args.out
                 or os.path.dirname(os.path.abspath(args.csv)))
  print(report.markdown if report else "no premise sweep in this CSV")


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  main(sys.argv[1:])
