"""ablation_report: an ablation's cells paired per seed with the base grid's, and phase curves."""

import json
import math
import os

import numpy as np
import pytest

from hardlabel_jax import ablation_report
from hardlabel_jax import periodic_eval
from hardlabel_jax import study
from hardlabel_jax import study_report
from test_study import _table_rows


def _rows(results: dict) -> list[dict]:
  """Every CSV column, from {(regime, method, crops): [top-1 per seed]} at ipc 10, keep 1."""
  return [
      row for (regime, method, crops), accs in results.items()
      for row in _table_rows({(regime, (crops, 1.0)): accs}, method)
  ]


BASE = {
    ("sl", "random", 1): [0.50, 0.52, 0.54],
    ("hald", "random", 1): [0.40, 0.41, 0.45],
    ("sl", "random", 10): [0.70, 0.70, 0.70],
    ("hald", "random", 10): [0.60, 0.60, 0.60],
}


def _study(tmp_path, name: str, results: dict) -> str:
  workdir = str(tmp_path / name)
  os.makedirs(workdir)
  study.write_csv(_rows(results), os.path.join(workdir, study.RESULTS_CSV))
  return workdir


def test_an_ablation_pairs_with_the_base_per_seed_and_with_its_sl():
  base = _rows(BASE)
  # Label smoothing: HALD only, so HALD − SL takes the base grid's SL.
  entries = ablation_report.compare(base, _rows({("hald", "random", 1): [0.60, 0.62, 0.61]}))
  (entry,) = entries
  assert entry["vs_base"].mean == pytest.approx(19.0)  # 20, 21, 16
  assert entry["vs_base"].stderr == pytest.approx(math.sqrt(7 / 3))
  assert entry["vs_sl"].mean == pytest.approx(9.0)  # 10, 10, 7 against the base's SL
  assert entry["vs_sl"].stderr == pytest.approx(1.0)
  assert entry["sl_source"] == "base"
  assert entry["base_vs_sl"].mean == pytest.approx(-10.0)  # -10, -11, -9
  assert entry["base_vs_sl"].stderr == pytest.approx(1 / math.sqrt(3))
  assert (entry["vs_base"].verdict, entry["vs_sl"].verdict,
          entry["base_vs_sl"].verdict) == ("beats", "beats", "loses")
  assert ablation_report.comparison_table(entries).splitlines()[2] == (
      "| HALD | random | 10 | 1 crop | 42.0 | 61.0 | +19.0 ± 1.5 (3) | -10.0 ± 0.6 (3) | "
      "+9.0 ± 1.0 (3) |")


def test_an_ablation_that_trains_its_own_sl_pairs_hald_with_that_sl():
  arm = _rows({("sl", "random", 1): [0.48, 0.50, 0.52], ("hald", "random", 1): [0.49, 0.50, 0.50]})
  entries = {e["regime"]: e for e in ablation_report.compare(_rows(BASE), arm)}
  assert entries["hald"]["sl_source"] == "arm"
  assert entries["hald"]["vs_sl"].mean == pytest.approx(-1 / 3)  # 1, 0, -2
  assert entries["hald"]["vs_sl"].verdict == "noise"
  assert entries["sl"]["vs_base"].mean == pytest.approx(-2.0)
  assert entries["sl"]["vs_base"].stderr == 0.0  # the same -2 on every seed
  table = ablation_report.comparison_table(list(entries.values()))
  assert "(ablation's SL)" in table.splitlines()[3]


def test_seeds_only_one_side_has_are_left_out_of_the_pairing():
  arm = _rows({("hald", "random", 1): [0.60]})  # seed 0 only
  (entry,) = ablation_report.compare(_rows(BASE), arm)
  assert (entry["vs_base"].seeds, entry["vs_base"].mean) == (1, pytest.approx(20.0))
  assert entry["vs_base"].verdict == "one seed" and entry["vs_base"].text() == "+20.0 (1)"
  assert entry["base_vs_sl"].mean == pytest.approx(-10.0)  # base seeds the arm has: seed 0
  missing = ablation_report.compare([], arm)[0]["vs_base"]
  assert missing.seeds == 0 and math.isnan(missing.mean) and missing.text() == "–"


def _cell(workdir: str, name: str, regime: str, evaluations: list[tuple[int, float]]) -> None:
  cell_dir = os.path.join(workdir, study.CELLS_DIR, name)
  os.makedirs(cell_dir)
  with open(os.path.join(cell_dir, study.CELL_CONFIG_FILE), "w") as f:
    json.dump(
        {
            "regime": regime,
            "selection": "random",
            "images_per_class": 10,
            "crops_per_image": 1,
            "label_keep_fraction": 1.0,
            "seed": 0,
            "num_epochs": 8.0,
            "hald_schedule": "S6",
            "hald_hard_fraction": 0.5
        }, f)
  with open(os.path.join(cell_dir, periodic_eval.EVALUATIONS_FILE), "w") as f:
    json.dump(
        {
            "eval_every_epochs": 2,
            "evaluations": [{
                "epoch": e,
                "step": 10 * e,
                "test_top1": acc,
                "test_loss": 1.0
            } for e, acc in evaluations]
        }, f)


def test_phase_curves_read_the_periodic_evaluations_and_hald_hard_epochs(tmp_path):
  workdir = _study(tmp_path, "curve", {("sl", "random", 1): [0.5], ("hald", "random", 1): [0.4]})
  _cell(workdir, "hald-random-ipc10-c1k1-s0", "hald", [(2, 0.30), (4, 0.10), (6, 0.12), (8, 0.40)])
  _cell(workdir, "sl-random-ipc10-c1k1-s0", "sl", [(2, 0.30), (4, 0.40), (6, 0.45), (8, 0.50)])
  curves = {c["regime"]: c for c in ablation_report.phase_curves(workdir)}
  # S6 over 8 epochs: 2 soft, 4 hard (epochs 2–5), 2 soft (hald.phase_of_epoch).
  assert curves["hald"]["hard_epochs"] == [2, 3, 4, 5]
  assert curves["sl"]["hard_epochs"] == []
  assert curves["hald"]["epochs"] == [2, 4, 6, 8]
  np.testing.assert_allclose(curves["hald"]["test_top1"], [30.0, 10.0, 12.0, 40.0])


def test_curves_of_one_arm_and_table_average_over_seeds():
  curve = {
      "arm": "x",
      "regime": "hald",
      "method": "random",
      "ipc": 10,
      "crops": 1,
      "keep": 1.0,
      "hard_epochs": [2, 3]
  }
  curves = [{
      **curve, "seed": 0,
      "epochs": [2, 4, 6],
      "test_top1": [10.0, 20.0, 30.0]
  }, {
      **curve, "seed": 1,
      "epochs": [2, 4],
      "test_top1": [20.0, 40.0]
  }, {
      **curve, "arm": "y",
      "seed": 0,
      "epochs": [2],
      "test_top1": [5.0]
  }]
  x, y = ablation_report.mean_curves(curves)
  assert (x["arm"], x["seeds"], x["epochs"], x["test_top1"]) == ("x", 2, [2, 4], [15.0, 30.0])
  assert (y["arm"], y["seeds"], y["test_top1"]) == ("y", 1, [5.0])


def test_the_report_writes_its_tables_and_plots(tmp_path):
  base = _study(tmp_path, "base", BASE)
  arm = _study(tmp_path, "arm", {("hald", "random", 1): [0.60, 0.62, 0.61]})
  _cell(arm, "hald-random-ipc10-c1k1-s0", "hald", [(2, 0.30), (4, 0.10), (6, 0.12), (8, 0.40)])
  out = str(tmp_path / "out")
  report = ablation_report.write_report(base, {"label_smoothing": arm}, out)
  assert [os.path.basename(p) for p in report.paths
         ] == ["ablations.md", "ablation_gaps.png", "phase_curves.png", "phase_curves.json"]
  assert all(os.path.getsize(p) > 0 for p in report.paths)
  assert ("label_smoothing, HALD: the ablation is above the base in 1, below in 0 and within "
          "noise in 0 of 1 cells") in report.markdown
  assert ("label_smoothing: HALD beats SL in 1 and loses in 0 of 1 cells (base grid on the same "
          "seeds: 0 and 1).") in report.markdown


def test_the_report_modules_name_the_studys_files():
  # study_report cannot import study (study writes its report), so it repeats the names.
  assert (study_report.RESULTS_CSV, study_report.CELLS_DIR) == (study.RESULTS_CSV, study.CELLS_DIR)


def test_the_report_refuses_a_missing_study_and_no_arm(tmp_path):
  base = _study(tmp_path, "base", BASE)
  with pytest.raises(FileNotFoundError, match="no cell of that study has finished"):
    ablation_report.write_report(base, {"x": str(tmp_path / "nowhere")}, str(tmp_path / "out"))
  with pytest.raises(ValueError, match="no ablation to compare"):
    ablation_report.write_report(base, {}, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_the_base_bars_pair_hald_with_sl_over_all_the_base_seeds():
  gaps = ablation_report.base_gaps(_rows(BASE))
  assert gaps["random", 10, 1, 1.0].mean == pytest.approx(-10.0)  # -10, -11, -9
  assert gaps["random", 10, 1, 1.0].seeds == 3
  assert gaps["random", 10, 10, 1.0].mean == pytest.approx(-10.0)
  assert gaps["random", 10, 10, 1.0].stderr == pytest.approx(0.0, abs=1e-12)
