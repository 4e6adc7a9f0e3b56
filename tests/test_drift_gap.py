"""drift_gap: drift runs joined with a study's paired HALD − SL, and their correlation."""

import json
import math
import os

import numpy as np
import pytest

from hardlabel_jax import cache
from hardlabel_jax import drift_gap
from hardlabel_jax import study
from test_ablation_report import _rows


def _drift_run(root, name: str, rows: list[tuple[int, float, float, float]], *, distilled: str = "",
               ipc: int = 10) -> str:
  """A task='drift' workdir: (crops, kl, crop_mismatch, mean_label_mismatch) rows. `distilled`
  names the method of a set built in the cache (an image folder with its identity)."""
  directory = os.path.join(str(root), name)
  os.makedirs(directory)
  dataset = "fashion_mnist_local[500/class]"
  if distilled:
    folder = os.path.join(str(root), "cache", f"{distilled}-ipc{ipc}")
    os.makedirs(folder)
    with open(os.path.join(folder, cache.IDENTITY_FILE), "w") as f:
      json.dump({"method": distilled, "ipc": ipc}, f)
    dataset = f"imagefolder:{folder}"
  record = {
      "dataset": dataset,
      "config": {
          # A distilled set's run reads the folder, not a selection (as plan resolves it).
          "selection": "random",
          "images_per_class": 0 if distilled else ipc,
          "subset_seed": 0,
          "teacher_bn_mode": "eval" if distilled else "auto"
      },
      "rows": [{
          "crops_per_image": c,
          "kl": kl,
          "crop_mismatch": single,
          "mean_label_mismatch": average
      } for c, kl, single, average in rows]
  }
  with open(os.path.join(directory, "drift.json"), "w") as f:
    json.dump(record, f)
  return directory


def _study(tmp_path) -> str:
  workdir = str(tmp_path / "study")
  os.makedirs(workdir)
  rows = _rows({
      ("sl", "random", 1): [0.50, 0.52],
      ("hald", "random", 1): [0.55, 0.55],
      ("sl", "random", 10): [0.70, 0.70],
      ("hald", "random", 10): [0.60, 0.62],
      ("sl", "rded", 1): [0.40, 0.40],
      ("hald", "rded", 1): [0.40, 0.42],
  })
  study.write_csv(rows, os.path.join(workdir, study.RESULTS_CSV))
  return workdir


def test_drift_rows_join_the_paired_gaps_by_set_size_and_crops(tmp_path):
  runs = [
      _drift_run(tmp_path, "random", [(1, 2.5, 0.6, 0.6), (10, 1.0, 0.6, 0.3)]),
      _drift_run(tmp_path, "rded", [(1, 2.0, 0.5, 0.5), (2, 1.5, 0.5, 0.45)], distilled="rded"),
  ]
  workdir = _study(tmp_path)
  report = drift_gap.write_report(workdir, runs, str(tmp_path / "out"))
  joined = drift_gap.join(drift_gap.study_report.read_csv(os.path.join(workdir, study.RESULTS_CSV)),
                          drift_gap.drift_runs(runs))
  # rded at 2 crops has drift but no cells; random at 10 crops and rded at 1 have both.
  assert [(p["method"], p["crops"]) for p in joined] == [("random", 1), ("random", 10), ("rded", 1)]
  gaps = {(p["method"], p["crops"]): p["gap"] for p in joined}
  assert gaps == pytest.approx({("random", 1): 4.0, ("random", 10): -9.0, ("rded", 1): 1.0})
  assert joined[0]["mean_label_mismatch"] == 0.6 and joined[2]["kl"] == 2.0
  expected = np.corrcoef([0.6, 0.3, 0.5], [4.0, -9.0, 1.0])[0, 1]
  assert drift_gap.correlations(joined)["mean_label_mismatch"]["gap"] == pytest.approx(expected)
  assert f"| crop-average argmax ≠ label (share) | {expected:+.2f} |" in report.markdown
  assert "| rded | 10 | 1 | 50 % | 50 % | 2.00 | 40.0 | 41.0 | +1.0 ± 1.0 (2) |" in report.markdown
  assert os.path.getsize(tmp_path / "out" / "drift_gap.png") > 0


def test_pearson_needs_three_points_and_spread():
  assert drift_gap.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
  assert math.isnan(drift_gap.pearson([1, 2], [1, 2]))
  assert math.isnan(drift_gap.pearson([1, 1, 1], [1, 2, 3]))


def test_two_runs_of_one_set_or_no_common_point_are_refused(tmp_path):
  workdir = _study(tmp_path)
  first = _drift_run(tmp_path, "a", [(1, 2.5, 0.6, 0.6)])
  second = _drift_run(tmp_path, "b", [(1, 2.4, 0.6, 0.6)])
  with pytest.raises(ValueError, match="two drift runs of random ipc 10"):
    drift_gap.write_report(workdir, [first, second], str(tmp_path / "out"))
  other = _drift_run(tmp_path, "c", [(4, 1.0, 0.6, 0.4)])  # no 4-crop cells
  with pytest.raises(ValueError, match="has both a paired HALD − SL and a drift row"):
    drift_gap.write_report(workdir, [other], str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="not a finished task='drift' workdir"):
    drift_gap.write_report(workdir, [str(tmp_path)], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
