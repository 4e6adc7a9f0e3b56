"""What CAD-Prune picks: its chosen images seen through the scoring run that ranked them.

For each CAD-Prune subset of a study (one per size and seed) and the score file it was chosen
from: per class, the chosen images' final true-class probability p(y|x) under the scoring model
against the class's mean, the share of them that model classifies correctly, and the confusion
matrix of the chosen images (true class × the scoring model's last-epoch class). High CAD means an
image whose p(y|x) moved the most over the run's last windows; this says whether that is a
boundary image the model still confuses, or one it learned late and now gets right.

Writes picks.md, picks.json and picks_confusion.png (summed over seeds, one panel per size).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from hardlabel_jax import metrics_log
from hardlabel_jax import selection
from hardlabel_jax import study_report

PICKS_FILE = "picks.md"
PICKS_JSON = "picks.json"
PICKS_PLOT = "picks_confusion.png"


@dataclasses.dataclass(frozen=True)
class Picks:
  """One subset's picks, per class (index = class)."""

  ipc: int
  seed: int
  chosen_true_prob: np.ndarray  # float [C]: mean final p(y|x) of the chosen images
  class_true_prob: np.ndarray  # float [C]: mean final p(y|x) of all the class's images
  chosen_correct: np.ndarray  # float [C]: share of the chosen the scoring model gets right
  class_correct: np.ndarray  # float [C]: the same over the whole class
  confusion: np.ndarray  # int [C, C]: chosen images by true class × predicted class


class MissingPredictionsError(ValueError):
  """A score file written before scoring runs recorded the predicted class."""


def pick_statistics(scores: selection.ScoreFile, labels: np.ndarray, chosen_ids: np.ndarray,
                    num_classes: int, *, ipc: int, seed: int) -> Picks:
  """The per-class picture of `chosen_ids` (example ids) in the score file's scoring run.

  `labels` is indexed by example id (the train split's labels).
  """
  if "final_prediction" not in scores.scores:
    raise MissingPredictionsError("the score file has no final_prediction (written before "
                                  "scoring runs recorded each example's predicted class)")
  position = {int(i): p for p, i in enumerate(scores.ids)}
  missing = [int(i) for i in chosen_ids if int(i) not in position]
  if missing:
    raise ValueError(f"chosen ids {missing[:5]} are not in the score file")
  pool_labels = np.asarray(labels)[scores.ids]
  prob = np.asarray(scores.scores["final_true_prob"], np.float64)
  predicted = np.asarray(scores.scores["final_prediction"]).astype(np.int64)
  correct = predicted == pool_labels
  chosen = np.zeros(scores.ids.size, bool)
  chosen[[position[int(i)] for i in chosen_ids]] = True
  per_class = np.zeros((4, num_classes))
  for c in range(num_classes):
    mine, picked = pool_labels == c, (pool_labels == c) & chosen
    per_class[:, c] = (prob[picked].mean() if picked.any() else np.nan, prob[mine].mean(),
                       correct[picked].mean() if picked.any() else np.nan, correct[mine].mean())
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (pool_labels[chosen], predicted[chosen]), 1)
  return Picks(ipc, seed, *per_class, confusion)


def _by_size(picks: Sequence[Picks]) -> dict[int, list[Picks]]:
  groups: dict[int, list[Picks]] = {}
  for p in picks:
    groups.setdefault(p.ipc, []).append(p)
  return dict(sorted(groups.items()))


def table(picks: Sequence[Picks], class_names: Sequence[str] | None = None) -> str:
  """Markdown per size: per class the picks' p(y|x) and accuracy against the class's, and the
  class the picks are most often mistaken for (means over seeds)."""
  lines = []
  for ipc, group in _by_size(picks).items():
    chosen = np.nanmean([p.chosen_true_prob for p in group], axis=0)
    whole = np.mean([p.class_true_prob for p in group], axis=0)
    right = np.nanmean([p.chosen_correct for p in group], axis=0)
    right_all = np.mean([p.class_correct for p in group], axis=0)
    confusion = np.sum([p.confusion for p in group], axis=0)
    lines += [
        f"### ipc {ipc} ({len(group)} seed{'s' if len(group) > 1 else ''})", "",
        "| class | picks' p(y\\|x) | class p(y\\|x) | picks correct | class correct | picks "
        "mistaken for |", "|---|---|---|---|---|---|"
    ]
    for c in range(confusion.shape[0]):
      off = confusion[c].copy()
      off[c] = 0
      name = class_names[c] if class_names else str(c)
      other = (f"{class_names[off.argmax()] if class_names else off.argmax()} "
               f"({off.max()} of {confusion[c].sum()})" if off.max() else "–")
      lines.append(f"| {name} | {chosen[c]:.3f} | {whole[c]:.3f} | {100 * right[c]:.0f}% | "
                   f"{100 * right_all[c]:.0f}% | {other} |")
    lines.append(f"| all | {np.nanmean(chosen):.3f} | {whole.mean():.3f} | "
                 f"{100 * np.nanmean(right):.0f}% | {100 * right_all.mean():.0f}% | "
                 f"{int(confusion.sum() - np.trace(confusion))} of {int(confusion.sum())} |")
    lines.append("")
  return "\n".join(lines)


def plot_confusion(picks: Sequence[Picks], path: str) -> None:
  """One heat map per size: the picks' true class × scoring-model class, summed over seeds."""
  plt = study_report.pyplot()
  groups = _by_size(picks)
  fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), squeeze=False)
  for axis, (ipc, group) in zip(axes[0], groups.items(), strict=True):
    confusion = np.sum([p.confusion for p in group], axis=0)
    image = axis.imshow(confusion, cmap="viridis")
    axis.set_xlabel("scoring model's class (last epoch)")
    axis.set_ylabel("true class")
    axis.set_title(f"CAD-Prune picks, ipc {ipc} ({len(group)} seed{'s' if len(group) > 1 else ''})",
                   fontsize=9)
    fig.colorbar(image, ax=axis, fraction=0.046)
  study_report.save_figure(fig, path)


def write(picks: Sequence[Picks], out_dir: str,
          class_names: Sequence[str] | None = None) -> study_report.Report | None:
  """picks.md, picks.json and the confusion plot in `out_dir`; None without picks."""
  if not picks:
    return None
  markdown = "\n".join([
      "# What CAD-Prune picks", "",
      "Under the scoring run that ranked them: the picks' final true-class probability and "
      "accuracy against their class's, and the class they are most often mistaken for "
      "(means over seeds; the last row counts every mistaken pick).", "",
      table(picks, class_names), f"![{PICKS_PLOT}]({PICKS_PLOT})"
  ]) + "\n"
  paths = [os.path.join(out_dir, name) for name in (PICKS_FILE, PICKS_JSON, PICKS_PLOT)]
  records: list[dict[str, Any]] = [{
      k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(p).items()
  } for p in picks]
  for path, text in ((paths[0], markdown), (paths[1], json.dumps(records, indent=1))):
    metrics_log.write_text_atomic(path, text)
  plot_confusion(picks, paths[2])
  return study_report.Report(markdown, tuple(paths))
