"""The premise sweep: rank windows (EL2N-Best's offset scan), CAD-Prune against K, what CAD picks.

No official code exists for CAD-Prune or its offset scan (Hard Truths publishes none; DESIGN.md
§7): the window is pinned on hand-made rankings, the sweep's cells and refusals through
`study.validate_study`, the analyses on hand-made rows and score files, and the whole sweep by
configs/fashion_premise.py:runlocal.
"""

import csv
import os

import numpy as np
import pytest

from hardlabel_jax import cad_picks
from hardlabel_jax import config_schema
from hardlabel_jax import plan
from hardlabel_jax import premise_report
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import study
from hardlabel_jax import study_report
from test_paper_protocol import EMBEDDED_COUNTS
from test_paper_protocol import paper_study

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")

# ----------------------------------------------------------------------------- the rank window

# Two classes of 6: class 0's ascending order is ids 5, 3, 1, 0, 2, 4; class 1's is 6..11.
LABELS = np.array([0] * 6 + [1] * 6)
SCORES = np.array([0.4, 0.3, 0.5, 0.2, 0.6, 0.1, 1, 2, 3, 4, 5, 6], np.float32)


@pytest.mark.parametrize(
    "position, want",
    [
        (0.0, [5, 3, 6, 7]),  # the two lowest scores of each class
        (0.25, [3, 1, 7, 8]),  # start ⌊0.25 · 4 + ½⌋ = 1
        (0.5, [1, 0, 8, 9]),  # start 2
        (0.625, [0, 2, 9, 10]),  # ⌊2.5 + ½⌋ = 3: half up, where Python's round() would give 2
        (1.0, [2, 4, 10, 11]),  # the two highest
    ])
def test_rank_window_slides_from_the_lowest_to_the_highest_scores(position, want):
  got = selection.select_rank_window(SCORES, LABELS, 2, position)
  np.testing.assert_array_equal(got, sorted(want))


def test_window_at_the_ends_is_the_easiest_and_the_hardest_selection():
  rng = np.random.default_rng(0)
  labels, scores = np.repeat(np.arange(5), 40), rng.uniform(size=200)
  np.testing.assert_array_equal(
      selection.select("el2n_window", labels, 7, scores=scores, position=1.0),
      selection.select("el2n_hard", labels, 7, scores=scores))
  np.testing.assert_array_equal(
      selection.select("cad_window", labels, 7, scores=scores, position=1.0),
      selection.select("cad_prune", labels, 7, scores=scores))
  np.testing.assert_array_equal(
      selection.select("el2n_window", labels, 7, scores=scores, position=0.0),
      selection.select("el2n_easy", labels, 7, scores=scores))
  # Over the whole set, not per class: the window of 35 ranks of 200.
  whole = selection.select_rank_window(scores, labels, 7, 0.5, class_balanced=False)
  ranks = np.argsort(np.argsort(scores))
  np.testing.assert_array_equal(np.sort(ranks[whole]), np.arange(83, 118))  # ⌊82.5 + ½⌋ = 83


def test_rank_window_ties_break_by_the_lower_id_and_bad_positions_are_refused():
  labels = np.zeros(5, np.int64)
  flat = np.zeros(5, np.float32)
  np.testing.assert_array_equal(selection.select_rank_window(flat, labels, 2, 1.0), [3, 4])
  np.testing.assert_array_equal(selection.select_rank_window(flat, labels, 2, 0.0), [0, 1])
  with pytest.raises(ValueError, match=r"window position must lie in \[0, 1\]"):
    selection.select_rank_window(flat, labels, 2, 1.5)
  config = paper_study(study_methods=("random",))
  config.task, config.window_position = "train", -0.1
  with pytest.raises(ValueError, match=r"window_position: must lie in \[0, 1\]"):
    config_schema.validate(config)


def test_a_pool_identity_names_its_window_and_cad_signal():

  def pool(**fields):
    config = paper_study(study_methods=("random",))
    config.update(task="train", images_per_class=5, **fields)
    return plan._data_identity(config, "fp", "scores", None)["pool"]  # pylint: disable=protected-access

  assert pool(selection="el2n_window", window_position=0.25)["window_position"] == 0.25
  assert pool(selection="el2n_window", window_position=0.25) != pool(selection="el2n_window",
                                                                     window_position=0.5)
  assert pool(selection="cad_prune", cad_signal="el2n") != pool(selection="cad_prune")
  assert "window_position" not in pool(selection="cad_prune")


# ----------------------------------------------------------------------------- the sweep's cells


def premise_study(**overrides):
  fields = dict(study_methods=("random", "cad_prune", "el2n_window", "cad_window"),
                study_cad_epochs=(4, 12), study_window_positions=(0.0, 0.5))
  return paper_study(**{**fields, **overrides})


def test_the_sweep_has_one_cell_per_scoring_length_and_window(tmp_path):
  config = premise_study()
  configs = study.validate_study(config, EMBEDDED_COUNTS, str(tmp_path / "cache"))
  names = sorted(c.name for c in configs)
  assert "hl-cad_prune-ipc10-k4-s0" in names and "hl-cad_prune-ipc50-k12-s0" in names
  assert "hl-el2n_window-ipc10-w0.5-s0" in names and "hl-cad_window-ipc50-w0-s0" in names
  assert "hl-random-ipc10-s0" in names  # no axis, the name as before
  # 2 sizes × (random + 2 K + 2 scores × 2 windows).
  assert len(configs) == 2 * (1 + 2 + 4)
  by_name = {c.name: (c, cfg) for c, cfg in configs.items()}
  _, k12 = by_name["hl-cad_prune-ipc10-k12-s0"]
  assert k12.score_config.score_epochs == 12 and k12.selection == "cad_prune"
  # CAD windows at the compute-matched K: E·n/N = 240 · 100 / 4,000 = 6 at IPC10, 30 at IPC50.
  _, cad_window = by_name["hl-cad_window-ipc50-w0.5-s0"]
  assert (cad_window.score_config.score_epochs, cad_window.window_position) == (30, 0.5)
  _, el2n_window = by_name["hl-el2n_window-ipc10-w0-s0"]
  assert el2n_window.score_config.score_epochs == config.study_score_epochs
  assert el2n_window.window_position == 0.0 and "cad_signal" not in config_schema.fields_read(
      el2n_window)
  cell, _ = by_name["hl-cad_window-ipc10-w0-s0"]
  assert study.matched_cad_epochs(config, cell, EMBEDDED_COUNTS) == 6
  row = study.cell_row(
      cell, {
          "test_top1": 0.5,
          "test_loss": 1.0,
          "examples_seen": 1,
          "steps": 1,
          "epochs": 1.0,
          "pool_size": 100,
          "label_bytes": 0,
          "wall_seconds": 1.0
      }, "epochs_per_subset", 6)
  assert (row["variant"], row["window_position"], row["cad_matched_epochs"]) == ("w0", 0.0, 6)


@pytest.mark.parametrize("overrides, message", [
    (dict(study_cad_epochs=(3, 12)), r"study_cad_epochs has a scoring run of K=3 epochs.*outside "
     "CAD-Prune's range"),
    (dict(study_window_positions=()), r"study_window_positions: set it exactly when"),
    (dict(study_window_positions=(0.0, 1.2)), r"every position lies in \[0, 1\]"),
    (dict(study_window_positions=(0.5, 0.5)), r"repeats a position"),
    (dict(study_cad_epochs=(4, 4)), r"study_cad_epochs: .* repeats a length"),
    (dict(study_cad_epochs=(4.5,)), r"whole epochs >= 1"),
])
def test_a_sweep_out_of_range_is_refused_before_anything_is_written(tmp_path, overrides, message):
  config = premise_study(**overrides)
  with pytest.raises(ValueError, match=message):
    study.run(config, str(tmp_path / "study"))
  assert not os.path.exists(tmp_path / "study")


def test_windows_without_a_window_method_and_lengths_without_cad_prune_are_refused(tmp_path):
  config = paper_study(study_methods=("random", "el2n_hard"), study_window_positions=(0.5,))
  with pytest.raises(ValueError, match="study_window_positions: set it exactly when"):
    study.validate_study(config, EMBEDDED_COUNTS, str(tmp_path))
  config = paper_study(study_methods=("random", "cad_window"), study_window_positions=(0.5,),
                       study_cad_epochs=(4,))
  with pytest.raises(ValueError, match="study_cad_epochs: only cad_prune cells"):
    study.validate_study(config, EMBEDDED_COUNTS, str(tmp_path))


def test_report_modules_name_the_schemas_selections():
  assert study_report.CAD_SELECTIONS == config_schema.CAD_SELECTIONS
  assert premise_report.WINDOW_METHODS == config_schema.WINDOW_SELECTIONS


# ----------------------------------------------------------------------------- the analyses


def _row(method, ipc, seed, top1, **fields):
  return {
      "regime": "hl",
      "method": method,
      "ipc": ipc,
      "seed": seed,
      "test_top1": top1,
      "examples_seen": 300 * 10 * ipc,
      "label_source": "hard",
      "label_bytes": 0,
      **fields
  }


def _premise_rows():
  rows = []
  for seed, noise in enumerate((-0.01, 0.01)):
    for ipc in (10, 50):
      rows.append(_row("random", ipc, seed, 0.70 + noise))
      matched = 6 if ipc == 10 else 30
      for k, acc in ((4, 0.60), (6, 0.65), (30, 0.75)):
        rows.append(
            _row("cad_prune", ipc, seed, acc + noise, variant=f"k{k}", cad_scoring_epochs=k,
                 cad_matched_epochs=matched))
      # EL2N: the easy window wins at IPC10, the middle one at IPC50.
      best = 0.0 if ipc == 10 else 0.5
      for position in (0.0, 0.5, 1.0):
        rows.append(
            _row("el2n_window", ipc, seed, (0.80 if position == best else 0.60) + noise,
                 variant=f"w{position:g}", window_position=position))
  return rows


def test_premise_tables_and_findings_on_hand_made_rows(tmp_path):
  rows = _premise_rows()
  k_table = premise_report.k_table(rows)
  assert "| ipc | K=4 | K=6 | K=30 | random | matched K |" in k_table
  # Mean ± s.e. of (64, 66): 65.0 ± 1.0; the matched K bold.
  assert "| 10 | 60.0 ± 1.0 (2) | **65.0 ± 1.0 (2)** | 75.0 ± 1.0 (2) | 70.0 ± 1.0 (2) | 6 |" \
      in k_table
  assert "| 50 | 60.0 ± 1.0 (2) | 65.0 ± 1.0 (2) | **75.0 ± 1.0 (2)** | 70.0 ± 1.0 (2) | 30 |" \
      in k_table
  window_table = premise_report.window_table(rows)
  assert "| EL2N | 10 | **80.0 ± 1.0 (2)** | 60.0 ± 1.0 (2) | 60.0 ± 1.0 (2) | 70.0 ± 1.0 (2) |" \
      in window_table
  sentences = premise_report.findings(rows)
  assert sentences[0] == ("ipc 10: the compute-matched K=6 (65.0 ± 1.0 (2)) ranks 2 of 3 scoring "
                          "lengths; the best is K=30 (75.0 ± 1.0 (2), +10.0 points over the "
                          "matched K).")
  assert sentences[1].startswith("ipc 50: the compute-matched K=30 (75.0 ± 1.0 (2)) is the best "
                                 "of 3 scoring lengths; next K=6")
  assert sentences[2] == ("EL2N windows, best per size (least compute first): ipc 10 @0 "
                          "(80.0 ± 1.0 (2)), ipc 50 @0.5 (80.0 ± 1.0 (2)); the best window is "
                          "easier (a lower EL2N position) at the smaller compute, as the premise "
                          "says "
                          "(at ipc 10, ipc 50's best @0.5 gives 60.0 ± 1.0 (2)).")
  page = premise_report.write(rows, str(tmp_path))
  assert [os.path.basename(p) for p in page.paths] == ["premise.md", *premise_report.PLOTS]
  assert all(os.path.getsize(p) > 0 for p in page.paths)
  assert premise_report.write([_row("random", 10, 0, 0.7)], str(tmp_path / "none")) is None
  # The study's own tables keep each K and window apart as a method of its own.
  labels = {s["method"] for s in study_report.summarize(rows)}
  assert {"cad_prune K=6", "el2n_window @0.5", "random"} <= labels


def test_premise_fields_round_trip_through_the_csv(tmp_path):
  filled = dict(test_loss=1.0, steps=1, epochs=300.0, pool_size=100, wall_seconds=1.0,
                budget_rule="epochs_per_subset")
  rows = [
      _row("cad_prune", 10, 0, 0.5, variant="k4", cad_scoring_epochs=4, cad_matched_epochs=6,
           **filled),
      _row("el2n_window", 10, 0, 0.4, variant="w0.25", window_position=0.25, **filled),
      _row("random", 10, 0, 0.6, **filled)
  ]
  path = str(tmp_path / "results.csv")
  study.write_csv(rows, path)
  assert study_report.read_csv(path) == rows


def _score_file(tmp_path):
  # 6 examples (ids 10..15) of 2 classes; the scoring model's last epoch: id 11 mistaken for 1.
  ids = np.arange(10, 16)
  scores = {
      "final_true_prob": np.array([0.9, 0.2, 0.7, 0.8, 0.6, 0.4], np.float32),
      "final_prediction": np.array([0, 1, 0, 1, 1, 0], np.float32),
  }
  path = str(tmp_path / "scores.npz")
  selection.save_scores(path, scores, ids, {"dataset": "toy", "fingerprint": "fp"})
  labels = np.zeros(16, np.int64)
  labels[13:] = 1
  return selection.load_scores(path), labels


def test_picks_hand_worked(tmp_path):
  scores, labels = _score_file(tmp_path)
  picks = cad_picks.pick_statistics(scores, labels, np.array([11, 12, 14, 15]), 2, ipc=2, seed=0)
  np.testing.assert_allclose(picks.chosen_true_prob, [(0.2 + 0.7) / 2, (0.6 + 0.4) / 2])
  np.testing.assert_allclose(picks.class_true_prob, [0.6, 0.6])
  np.testing.assert_allclose(picks.chosen_correct, [0.5, 0.5])
  np.testing.assert_allclose(picks.class_correct, [2 / 3, 2 / 3])
  np.testing.assert_array_equal(picks.confusion, [[1, 1], [1, 1]])
  text = cad_picks.table([picks], ("top", "bottom"))
  assert "| top | 0.450 | 0.600 | 50% | 67% | bottom (1 of 2) |" in text
  assert "| all | 0.475 | 0.600 | 50% | 67% | 2 of 4 |" in text
  page = cad_picks.write([picks], str(tmp_path), ("top", "bottom"))
  assert all(os.path.getsize(p) > 0 for p in page.paths)
  with pytest.raises(ValueError, match=r"chosen ids \[99\] are not in the score file"):
    cad_picks.pick_statistics(scores, labels, np.array([99]), 2, ipc=1, seed=0)
  old = str(tmp_path / "old.npz")
  selection.save_scores(old, {"final_true_prob": np.ones(6, np.float32)}, np.arange(10, 16), {
      "dataset": "toy",
      "fingerprint": "fp"
  })
  with pytest.raises(cad_picks.MissingPredictionsError, match="no final_prediction"):
    cad_picks.pick_statistics(selection.load_scores(old), labels, np.array([11]), 2, ipc=1, seed=0)


@pytest.mark.slow
def test_fashion_premise_runlocal_sweeps_k_and_windows_end_to_end(tmp_path):
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_premise.py"),
                                          "runlocal")
  workdir = tmp_path / "study"
  rows = study.run(config, str(workdir))
  # IPC2 × (random + K ∈ {4, 6} + 2 scores × windows {0, 1}).
  assert len(rows) == 7
  by = {(r["method"], r["variant"]): r for r in rows}
  assert by["cad_prune", "k4"]["cad_matched_epochs"] == 4
  assert by["cad_prune", "k6"]["cad_scoring_epochs"] == 6
  # CAD's window at the top is CAD-Prune at the matched K: the same images, the same run.
  assert by["cad_window", "w1"]["test_top1"] == by["cad_prune", "k4"]["test_top1"]
  assert by["cad_window", "w0"]["test_top1"] != by["cad_window", "w1"]["test_top1"]
  with open(workdir / "results.csv") as f:
    assert {r["variant"] for r in csv.DictReader(f)} == {"", "k4", "k6", "w0", "w1"}
  premise = (workdir / "premise.md").read_text()
  assert "| 2 | **" in premise and "EL2N windows, best per size" in premise
  assert "[what CAD-Prune picks](picks.md)" in (workdir / "report.md").read_text()
  # The picks are the K=4 cell's pool: 2 per class of the 400 digits the pool is cut to.
  picks = (workdir / "picks.md").read_text()
  assert "### ipc 2 (1 seed)" in picks and "| all |" in picks
  # The bottom window's pool: the 2 lowest-CAD digits of every class in its score file.
  configs = study.validate_study(config, np.full(10, 40), config.cache_dir
                                 or str(workdir / "cache"))
  cell, cell_cfg = next(
      (c, cfg) for c, cfg in configs.items() if c.name == "hl-cad_window-ipc2-w0-s0")
  resolved = plan.make_plan(cell_cfg, str(workdir / "cells" / cell.name), "train").config
  train = run_data.train_source(resolved)
  scored = selection.load_scores(resolved.scores_file)
  labels = np.asarray(train.labels())[scored.ids]
  want = [
      scored.ids[np.flatnonzero(labels == c)[np.argsort(scored.scores["cad"][labels == c],
                                                        kind="stable")[:2]]] for c in range(10)
  ]
  np.testing.assert_array_equal(run_data.scored_pool(resolved, train),
                                np.sort(np.concatenate(want)))
