"""Label-regime studies: the grid, shared caches, resumption after a kill, the report, bad grids."""

import csv
import json
import os

import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import study
from hardlabel_jax import study_report
from helpers import Killed
from helpers import tiny_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
EMBEDDED_COUNTS = np.full(10, 400)  # the embedded train split: 400 images of each digit


def tiny_study(teacher_dir, cache_dir, **overrides):
  """HL and SL × random and EL2N-hard × 5 images per class × 1 seed, 4 steps a cell."""
  fields = dict(task="study", images_per_class=0, study_regimes=("hl", "sl"),
                study_methods=("random", "el2n_hard"), study_images_per_class=(5,),
                study_seeds=(0,), study_score_epochs=1, budget_examples=64,
                teacher_workdir=teacher_dir, cache_dir=cache_dir, crops_per_image=2,
                checkpoint_every_steps=2)
  return tiny_config(**{**fields, **overrides})


def _rows_without_wall_time(path):
  with open(path, newline="") as f:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, teacher_dir):
  root = tmp_path_factory.mktemp("study")
  cache = str(root / "cache")
  workdir = str(root / "uninterrupted")
  rows = study.run(tiny_study(teacher_dir, cache), workdir)
  return workdir, cache, rows


@pytest.mark.slow
def test_tiny_study_writes_one_row_per_cell_and_the_report(finished_study):
  workdir, cache, rows = finished_study
  with open(os.path.join(workdir, study.RESULTS_CSV), newline="") as f:
    table = list(csv.DictReader(f))
  assert tuple(table[0]) == study.CSV_FIELDS
  assert [(r["regime"], r["method"], r["ipc"], r["seed"]) for r in table] == [
      ("hl", "random", "5", "0"), ("hl", "el2n_hard", "5", "0"), ("sl", "random", "5", "0"),
      ("sl", "el2n_hard", "5", "0")
  ]
  assert all(r["examples_seen"] == "64" and r["pool_size"] == "50" for r in table)
  assert [r["label_source"] for r in table] == ["hard", "hard", "table", "table"]
  # SL reads a table of 50 images × 2 crops × (9 bytes of crop metadata + 2 bytes × 10 classes).
  assert [int(r["label_bytes"]) for r in table] == [0, 0, 50 * 2 * 29, 50 * 2 * 29]
  assert [float(r["test_top1"]) for r in table] == [r["test_top1"] for r in rows]
  # One scoring run and one table per subset, shared through the cache.
  assert len(os.listdir(os.path.join(cache, "scores"))) == 1
  assert len(os.listdir(os.path.join(cache, "tables"))) == 2
  for name in study_report.PLOTS:
    with open(os.path.join(workdir, name), "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(os.path.join(workdir, name)) > 5000
  with open(os.path.join(workdir, study_report.REPORT_FILE)) as f:
    report = f.read()
  assert "| HL | el2n_hard |" in report and "## Findings" in report


@pytest.mark.slow
def test_killed_study_reruns_only_missing_cells_and_gives_the_same_csv(
    finished_study, teacher_dir, tmp_path):
  reference_dir, cache, _ = finished_study
  config = tiny_study(teacher_dir, cache)
  workdir = str(tmp_path / "killed")
  steps_taken = []

  def die_in_third_cell(step):
    steps_taken.append(step)
    if len(steps_taken) == 4 + 4 + 3:  # 4 steps per cell: dies after step 3 of cell 3
      raise Killed("simulated preemption")

  with pytest.raises(Killed):
    study.run(config, workdir, step_hook=die_in_third_cell)
  first_cells = [
      os.path.join(workdir, study.CELLS_DIR, name, "results.json")
      for name in ("hl-random-ipc5-s0", "hl-el2n_hard-ipc5-s0")
  ]
  finished_at = [os.path.getmtime(p) for p in first_cells]
  assert len(_rows_without_wall_time(os.path.join(workdir, study.RESULTS_CSV))) == 2

  resumed_steps = []
  study.run(config, workdir, step_hook=resumed_steps.append)
  # Cell 3 resumes from its step-2 checkpoint (steps 3–4), cell 4 runs whole (steps 1–4).
  assert resumed_steps == [3, 4, 1, 2, 3, 4]
  assert [os.path.getmtime(p) for p in first_cells] == finished_at
  with open(os.path.join(workdir, study.CELLS_DIR, "sl-random-ipc5-s0", "results.json")) as f:
    assert json.load(f)["resumed_from_step"] == 2
  assert (_rows_without_wall_time(os.path.join(workdir,
                                               study.RESULTS_CSV)) == _rows_without_wall_time(
                                                   os.path.join(reference_dir, study.RESULTS_CSV)))


@pytest.mark.parametrize("overrides, field", [
    (dict(study_regimes=("hl", "soft")), "config.study_regimes: 'soft'"),
    (dict(study_methods=("random", "coolset")), "config.study_methods: 'coolset'"),
    (dict(study_images_per_class=(401,)), "config.study_images_per_class: 401 images per class"),
    (dict(study_images_per_class=(0,)), "config.study_images_per_class"),
    (dict(study_seeds=(0, 0)), "config.study_seeds"),
    (dict(budget_examples=0), "config.budget_examples"),
    (dict(budget_examples=8), "config.budget_examples: 8 examples is less than one global batch"),
    (dict(teacher_workdir=""), "config.teacher_config: sl need a teacher"),
    (dict(study_regime_overrides={"sl": {
        "lerning_rate": 0.1
    }}), "config.study_regime_overrides.sl.lerning_rate"),
    (dict(study_regime_overrides={"hald": {
        "learning_rate": 0.1
    }}), "config.study_regime_overrides.hald"),
    (dict(study_regime_overrides={"hl": {
        "temperature": 4.0
    }}), "config.study_regime_overrides.hl.temperature: set to 4.0 but the hl cells"),
    (dict(study_regimes=("hl", "sl_kd")), "config.crops_per_image: set to 2 but task=study"),
    (dict(study_methods=("random", "cad_prune")), "config.cad_window: CAD-Prune at 5 images"),
    (dict(study_methods=("rded",), rded_candidates_per_class=10, study_images_per_class=(5,)),
     "config.study_images_per_class: rded at 5 images per class stitch 20 crops"),
    (dict(learning_rate=-1.0), "config.learning_rate"),
])
def test_invalid_grid_fails_before_training_naming_the_field(overrides, field, tmp_path,
                                                             teacher_dir):
  config = tiny_study(teacher_dir, str(tmp_path / "cache"), **overrides)
  workdir = str(tmp_path / "study")
  with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
    study.run(config, workdir)
  assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "cache")


def test_a_cell_config_is_a_train_run_of_its_cell():
  config = tiny_study("/teacher", "/cache", study_methods=("full", "ccs", "cad_prune"),
                      study_images_per_class=(10, 50), study_seeds=(0, 1),
                      study_regime_overrides={"sl": {
                          "learning_rate": 0.5
                      }}, budget_examples=12_000, cad_window=2, cad_num_windows=1)
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  names = [cell.name for cell in configs]
  assert len(names) == 2 * (2 + 2 * 2 * 2)  # full: one cell per regime and seed
  assert names[:3] == ["hl-full-all-s0", "hl-full-all-s1", "hl-ccs-ipc10-s0"]
  full = configs[study.Cell("sl", "full", 0, 1)]
  assert (full.task, full.regime, full.selection, full.images_per_class) == ("train", "sl",
                                                                             "random", 0)
  assert (full.seed, full.subset_seed, full.learning_rate, full.cache_dir) == (1, 1, 0.5, "/cache")
  assert full.study_seeds == config_schema.default_config().study_seeds
  hl = configs[study.Cell("hl", "cad_prune", 50, 0)]
  assert hl.learning_rate == config.learning_rate
  # K·N = E_down·n: 12,000 examples of budget on 4,000 images → K = 3 at every size, so both
  # sizes share one CAD scoring run; EL2N/AUM (CCS) scores come from a 1-epoch run.
  score_cfgs = {
      c.name: c_cfg.score_config for c, c_cfg in configs.items() if c_cfg.score_config is not None
  }
  assert score_cfgs["hl-cad_prune-ipc10-s0"].score_epochs == 3
  identity = lambda c: checkpointing.run_identity(c)
  assert identity(score_cfgs["hl-cad_prune-ipc10-s0"]) == identity(
      score_cfgs["sl-cad_prune-ipc50-s1"])
  assert score_cfgs["hl-ccs-ipc10-s0"].score_epochs == 1
  assert score_cfgs["hl-ccs-ipc10-s0"].images_per_class == 0  # scored on the whole split


def test_demo_grid_validates_and_shares_one_scoring_run():
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "demo.py"))
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  scored = {
      json.dumps(checkpointing.run_identity(c.score_config), sort_keys=True)
      for c in configs.values()
      if c.score_config is not None
  }
  assert len(scored) == 1


def _rows(results):
  """CSV-like rows from {(regime, method, ipc): [top-1 per seed]}."""
  return [{
      "regime": r,
      "method": m,
      "ipc": i,
      "seed": s,
      "test_top1": acc,
      "label_source": study.LABEL_SOURCES[r],
      "label_bytes": 100 * i if r == "sl" else 0
  } for (r, m, i), accs in results.items() for s, acc in enumerate(accs)]


SATURATED = _rows({
    ("hl", "random", 10): [0.60, 0.62],
    ("hl", "ccs", 10): [0.70, 0.72],
    ("hl", "rded", 10): [0.20, 0.22],
    ("sl_kd", "random", 10): [0.90, 0.92],
    ("sl_kd", "ccs", 10): [0.91, 0.91],
    ("sl_kd", "rded", 10): [0.88, 0.90],
    ("sl_kd", "full", 0): [0.95, 0.95],
})


def test_summary_gains_and_spreads_on_hand_worked_rows():
  summary = {(s["regime"], s["method"], s["ipc"]): s for s in study_report.summarize(SATURATED)}
  assert summary["hl", "random", 10]["mean"] == pytest.approx(61.0)
  assert summary["hl", "random", 10]["std"] == pytest.approx(np.std([60, 62], ddof=1))
  assert summary["sl_kd", "ccs", 10]["std"] == 0.0
  gains = {
      (g["regime"], g["method"]): g for g in study_report.gains_over_random(list(summary.values()))
  }
  assert gains["hl", "ccs"]["gain"] == pytest.approx(10.0)
  assert gains["hl", "ccs"]["stderr"] == pytest.approx(np.sqrt(2 * 2 / 2))  # std √2 each, n=2
  assert gains["hl", "ccs"]["beats_random"] and not gains["hl", "rded"]["beats_random"]
  assert not gains["sl_kd", "ccs"]["beats_random"]  # +0 points
  spread = {s["regime"]: s for s in study_report.spreads(list(summary.values()))}
  assert spread["hl"]["spread"] == pytest.approx(50.0) and spread["hl"]["best"] == "ccs"
  assert spread["sl_kd"]["spread"] == pytest.approx(2.0)  # full data is not a subset method
  sentences = study_report.findings(list(summary.values()))
  assert sentences[0].startswith("ipc 10: SL+KD compresses the spread")
  assert "HL, ipc 10: beats random by more than 2 standard errors: ccs (+10.0" in sentences[1]
  assert sentences[2].startswith("SL+KD, ipc 10: no method beats random")


def test_report_round_trips_through_the_csv(tmp_path):
  rows = [{
      **row, "test_loss": 1.0,
      "examples_seen": 64,
      "steps": 4,
      "epochs": 1.0,
      "pool_size": 100,
      "wall_seconds": 2.5
  } for row in SATURATED]
  path = str(tmp_path / "results.csv")
  study.write_csv(rows, path)
  assert study_report.read_csv(path) == rows
  report = study_report.write_report(study_report.read_csv(path), str(tmp_path))
  assert "| SL+KD | full | – | 95.0 ± 0.0 (2) |" in report.markdown
  assert all(os.path.getsize(p) > 0 for p in report.paths)


@pytest.mark.slow
def test_changing_the_recipe_under_finished_cells_is_refused(finished_study, teacher_dir):
  workdir, cache, _ = finished_study
  config = tiny_study(teacher_dir, cache, learning_rate=0.1)
  with pytest.raises(ValueError, match="holds a run with a different config.*learning_rate"):
    study.run(config, workdir)
  extended = tiny_study(teacher_dir, cache, study_seeds=(0, 1))
  configs = study.validate_study(extended, EMBEDDED_COUNTS, cache)
  for cell in study.grid(extended):  # a new seed adds cells; the finished ones still match
    checkpointing.check_same_run(os.path.join(workdir, study.CELLS_DIR, cell.name), configs[cell],
                                 study.CELL_CONFIG_FILE)


@pytest.mark.parametrize("name, counts, cells, cad_epochs", [
    ("cifar100_study.py", np.full(100, 500), 4 * 3 * (6 * 2 + 1), 30),
    ("imagenet_study.py", np.r_[np.full(999, 1300), 732], 4 * 3 * (6 * 3 + 1), 12),
])
def test_paper_study_grids_validate_at_full_scale(name, counts, cells, cad_epochs):
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, name))
  configs = study.validate_study(config, counts, "/cache")
  assert len(configs) == cells
  cad = next(c for c in configs if c.method == "cad_prune")
  assert configs[cad].score_config.score_epochs == cad_epochs
  assert {c.budget_examples for c in configs.values()} == {config.budget_examples}


@pytest.mark.slow
def test_cifar100_study_runs_end_to_end_on_mock_data(tmp_path):
  """configs/cifar100_study.py:runlocal through the TFDS pipeline, on TFDS mock CIFAR-100."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "cifar100_study.py"), "runlocal")
  config.data_dir = str(tmp_path / "tfds")
  with tfds.testing.mock_data(num_examples=1000):
    rows = study.run(config, str(tmp_path / "study"))
  assert [(r["regime"], r["method"], r["ipc"]) for r in rows] == [("hl", "random", 1),
                                                                  ("hl", "full", 0),
                                                                  ("sl", "random", 1),
                                                                  ("sl", "full", 0)]
  assert [r["pool_size"] for r in rows] == [100, 1000, 100, 1000]
  assert rows[2]["label_bytes"] == 100 * (9 + 2 * 100)  # one fp16 crop row per image
  assert all(0 <= r["test_top1"] <= 1 for r in rows)
