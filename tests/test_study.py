"""Label-regime studies: the grid, shared caches, resumption after a kill, the report, bad grids."""

import csv
import json
import os
import re
import subprocess
import tarfile
import types

import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import difficulty
from hardlabel_jax import scoring
from hardlabel_jax import selection
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
      for name in ("hl-random-ipc5-s0", "sl-random-ipc5-s0")  # training_order: method first
  ]
  finished_at = [os.path.getmtime(p) for p in first_cells]
  assert len(_rows_without_wall_time(os.path.join(workdir, study.RESULTS_CSV))) == 2

  resumed_steps = []
  study.run(config, workdir, step_hook=resumed_steps.append)
  # Cell 3 resumes from its step-2 checkpoint (steps 3–4), cell 4 runs whole (steps 1–4).
  assert resumed_steps == [3, 4, 1, 2, 3, 4]
  assert [os.path.getmtime(p) for p in first_cells] == finished_at
  with open(os.path.join(workdir, study.CELLS_DIR, "hl-el2n_hard-ipc5-s0", "results.json")) as f:
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
    (dict(study_methods=("random", "cad_prune")), "config.cad_window_rule: CAD-Prune at 5 images"),
    (dict(study_methods=("random", "cad_prune"),
          cad_window_rule="fixed"), "config.cad_window: CAD-Prune at 5 images"),
    (dict(study_methods=("rded",), rded_candidates_per_class=10, study_images_per_class=(5,),
          rded_factor=2), "config.study_images_per_class: rded at 5 images per class stitch 20"),
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
                      }}, budget_examples=12_000, cad_num_windows=1)
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


def test_one_seed_makes_no_claim_about_random():
  # A single seed has a zero spread, so "gain > 2 s.e." would hold for any positive gain.
  rows = _rows({("hl", "random", 10): [0.60], ("hl", "ccs", 10): [0.61]})
  summary = study_report.summarize(rows)
  assert not any(g["beats_random"] for g in study_report.gains_over_random(summary))
  sentence = study_report.findings(summary)[-1]
  assert sentence.startswith("HL, ipc 10: not resolved with one seed (best ccs +1.0")


def _saturated_csv_rows() -> list[dict]:
  """SATURATED's rows with every other CSV column filled in."""
  filled = {
      "test_loss": 1.0,
      "examples_seen": 64,
      "steps": 4,
      "epochs": 1.0,
      "pool_size": 100,
      "wall_seconds": 2.5
  }
  return [{**row, **filled} for row in SATURATED]


def test_report_round_trips_through_the_csv(tmp_path):
  rows = _saturated_csv_rows()
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


def test_the_imagenet_study_grid_validates_at_full_scale_under_the_fixed_budget():
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "imagenet_study.py"))
  configs = study.validate_study(config, np.r_[np.full(999, 1300), 732], "/cache")
  assert len(configs) == 4 * 3 * (6 * 3 + 1)
  cad = next(c for c in configs if c.method == "cad_prune")
  assert configs[cad].score_config.score_epochs == 12  # K = B / N for every size
  assert {c.budget_examples for c in configs.values()} == {config.budget_examples}


def test_the_cifar100_study_is_tab4s_protocol_at_full_scale():
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "cifar100_study.py"))
  configs = study.validate_study(config, np.full(100, 500), "/cache")
  assert len(configs) == 3 * 3 * (6 * 2 + 1)
  cells = {c.name: cfg for c, cfg in configs.items()}
  hl, sl = cells["hl-random-ipc10-s0"], cells["sl-random-ipc10-s0"]
  assert (hl.num_epochs, hl.budget_examples, cells["hl-full-all-s0"].num_epochs) == (300.0, 0, 300)
  assert (hl.optimizer, hl.learning_rate, hl.momentum, hl.weight_decay) == ("sgd", 0.01, 0.9, 5e-4)
  assert (hl.schedule, tuple(hl.step_milestones), hl.step_gamma) == ("step", (0.5,), 0.1)
  assert (hl.train_crop_recipe, hl.dsa_strategy) == ("dsa", "color_crop_cutout_flip_scale_rotate")
  assert hl.global_batch_size == 256 and hl.model_kwargs.width == 128
  assert (sl.optimizer, sl.schedule, sl.temperature, sl.train_crop_recipe) == ("adamw", "cosine",
                                                                               20.0, "auto")
  # K = E·n/N = 300·1,000/50,000 = 6 and 300·5,000/50,000 = 30, windows spanning the run.
  for ipc, k in ((10, 6), (50, 30)):
    score = cells[f"hl-cad_prune-ipc{ipc}-s0"].score_config
    assert (score.score_epochs, score.cad_window_rule, score.cad_num_windows) == (k, "span", 2)
  assert [c.regime for c in study.training_order(config, list(configs))][:39] == ["hl"] * 39


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


# ----------------------------------------------------------------------------------------------
# CAD-Prune's windows. 'span' (default): W windows spanning the run, J = K − W, refused where
# J < 2. 'fixed': J=6, W=2 unless K is too short and `cad_windows_shrink` says to shrink.


def test_cad_windows_span_the_run_by_default_and_refuse_below_two_epochs():
  assert scoring.cad_windows(6, 2, rule="span") == (4, 2)  # CIFAR-100 IPC10: K = 6
  assert scoring.cad_windows(30, 2, rule="span") == (28, 2)  # IPC50: K = 30 (replication's J)
  assert scoring.cad_windows(8, 2, rule="span") == (6, 2)  # ImageNet's K ≈ 8: the paper's J = 6
  assert scoring.cad_windows(4, 2, rule="span") == (2, 2)
  assert scoring.cad_windows(3, 2, rule="span") is None  # J = 1: no standard deviation
  assert scoring.cad_windows(3, 1, rule="span") == (2, 1)
  with pytest.raises(ValueError, match="rule 'wide'"):
    scoring.cad_windows(6, 2, rule="wide")


def test_cad_windows_used_are_the_configured_ones_or_the_largest_that_fit():
  fixed = lambda k, j, w, shrink: scoring.cad_windows(k, w, rule="fixed", window=j, shrink=shrink)
  assert fixed(8, 6, 2, shrink=False) == (6, 2)
  assert fixed(30, 6, 2, shrink=True) == (6, 2)  # K fits: no shrink
  assert fixed(7, 6, 2, shrink=False) is None
  assert fixed(3, 6, 2, shrink=True) == (2, 1)
  assert fixed(5, 6, 2, shrink=True) == (4, 1)
  assert fixed(7, 6, 2, shrink=True) == (6, 1)
  assert fixed(5, 3, 4, shrink=True) == (3, 2)
  assert fixed(2, 6, 2, shrink=True) is None  # J >= 2 and W >= 1 need K >= 3


def test_a_study_whose_cad_run_is_shorter_than_its_windows_needs_the_shrink_flag():
  # 12,000 examples at 10 images per class on 4,000 images: K = 12,000 / 4,000 = 3 < 6 + 2.
  config = tiny_study("/teacher", "/cache", study_methods=("random", "cad_prune"),
                      study_images_per_class=(10,), budget_examples=12_000, cad_window_rule="fixed")
  with pytest.raises(
      ValueError, match=r"config\.cad_window: CAD-Prune at 10 images per class scores .* for "
      r"K=3 epochs, fewer than cad_window \+ cad_num_windows = 6 \+ 2 = 8.*cad_windows_shrink"):
    study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  config.cad_windows_shrink = True
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  score = configs[study.Cell("hl", "cad_prune", 10, 0)].score_config
  assert (score.score_epochs, score.cad_window, score.cad_num_windows) == (3, 6, 2)
  assert score.cad_windows_shrink  # the scoring run shrinks to J=2, W=1 and records it
  # K = 1 (64 examples at 5 images per class) holds no window even when shrinking.
  short = tiny_study("/teacher", "/cache", study_methods=("cad_prune",), cad_windows_shrink=True,
                     cad_window_rule="fixed")
  with pytest.raises(ValueError, match=r"config\.cad_windows_shrink: .* K=1 epochs, too few"):
    study.validate_study(short, EMBEDDED_COUNTS, "/cache")


def test_a_compute_matched_scoring_run_refuses_windows_that_do_not_fit():
  config = tiny_config(task="score", images_per_class=0, score_epochs=0,
                       cad_subset_images_per_class=10, cad_downstream_epochs=120.0,
                       cad_window_rule="fixed")
  with pytest.raises(ValueError, match=r"config\.cad_window: .* K=3 epochs, fewer than"):
    scoring.scoring_epochs(config, 4000, 10)  # 120 × 100 / 4,000 = 3
  config.cad_windows_shrink = True
  assert scoring.scoring_epochs(config, 4000, 10) == 3
  config.score_epochs = 2  # an explicit K (EL2N): CAD is left out, nothing refused
  assert scoring.scoring_epochs(config, 4000, 10) == 2


class _Recorder:
  """Per-epoch statistics files, as scoring.EpochRecorder leaves them."""

  def __init__(self, directory, true_prob):
    self.directory = directory
    for epoch, probs in enumerate(true_prob):
      np.savez(self.path(epoch), true_prob=probs, el2n=1 - probs, margin=2 * probs - 1,
               prob_margin=2 * probs - 1, correct=probs > 0.5,
               prediction=np.zeros(probs.shape, np.int32))

  def path(self, epoch):
    return os.path.join(self.directory, f"epoch_{epoch}.npz")


def _score_file(tmp_path, shrink, epochs=3):
  rng = np.random.default_rng(0)
  true_prob = rng.uniform(0, 1, (epochs, 6)).astype(np.float32)
  config = tiny_config(task="score", images_per_class=0, score_epochs=epochs,
                       cad_window_rule="fixed", cad_windows_shrink=shrink)
  info = types.SimpleNamespace(name="toy", fingerprint="fp")
  data = types.SimpleNamespace(train=types.SimpleNamespace(info=info), pool_ids=np.arange(6))
  workdir = tmp_path / f"scores-{shrink}"
  workdir.mkdir()
  margins = types.SimpleNamespace(aum=lambda step: np.zeros(6, np.float32))  # CCS's, unused here
  scores = scoring.write_scores(config, str(workdir), data, _Recorder(str(workdir), true_prob),
                                epochs, types.SimpleNamespace(step=9), 0.5, margins)
  return os.path.join(workdir, scoring.SCORES_FILE), scores, true_prob


def test_the_score_file_records_the_cad_windows_it_used(tmp_path):
  path, scores, true_prob = _score_file(tmp_path, shrink=True)
  header = selection.load_scores(path).header
  assert (header["cad_window"], header["cad_num_windows"], header["cad_windows_shrink"]) == (6, 2,
                                                                                             True)
  assert (header["cad_window_used"], header["cad_num_windows_used"], header["epochs"]) == (2, 1, 3)
  np.testing.assert_allclose(scores["cad"], difficulty.cad_scores(true_prob, 2, 1), rtol=1e-6)
  # CAD with J=2, W=1 over K=3: U_0, the (sample) std of epochs 0 and 1 (k = K - J - W = 0).
  np.testing.assert_allclose(scores["cad"], np.std(true_prob[:2], axis=0, ddof=1), rtol=1e-5)
  config = tiny_config(selection="cad_prune", images_per_class=1, scores_file=path)
  assert scoring.cad_record(config) == {
      "cad_window_rule": "fixed",
      "cad_window": 6,
      "cad_num_windows": 2,
      "cad_windows_shrink": True,
      "cad_window_used": 2,
      "cad_num_windows_used": 1,
      "cad_scoring_epochs": 3
  }
  assert scoring.cad_record(tiny_config()) == {}  # random ranks by no score
  # Without the flag an explicit short K scores no CAD, and the header says none was used.
  path, scores, _ = _score_file(tmp_path, shrink=False)
  header = selection.load_scores(path).header
  assert "cad" not in scores and header["cad_window_used"] is None


def test_the_study_report_says_which_cad_windows_were_used(tmp_path):
  path, _, _ = _score_file(tmp_path, shrink=True)
  workdir = tmp_path / "study"
  # A CAD-Prune cell found through its score file; a CA2D cell (its training config names no
  # score file) through the record the plan writes into results.json.
  for name, results in (("hl-cad_prune-ipc10-s0", {
      "config": {
          "selection": "cad_prune",
          "scores_file": path
      }
  }), ("hl-ca2d-ipc10-s0", {
      "config": {
          "selection": "random",
          "scores_file": ""
      },
      **scoring.cad_record(tiny_config(selection="cad_prune", images_per_class=1, scores_file=path))
  }), ("hl-random-ipc10-s0", {
      "config": {
          "selection": "random",
          "scores_file": ""
      }
  })):
    os.makedirs(workdir / study.CELLS_DIR / name)
    with open(workdir / study.CELLS_DIR / name / "results.json", "w") as f:
      json.dump(results, f)
  line = ("CAD scores used J=2, W=1 over K=3 scoring epochs (shrunk from J=6, W=2 by "
          "cad_windows_shrink).")
  assert study_report.cad_windows_line(str(workdir)) == line
  rows = _saturated_csv_rows()
  report = study_report.write_report(rows, str(workdir))
  assert f"- {line}\n" in report.markdown
  assert study_report.cad_windows_line(str(tmp_path / "no_cells")) is None


# ----------------------------------------------------------------------------------------------
# study_label_tables: SL and HALD at several (crops_per_image, label_keep_fraction) tables.


def _table_study(**overrides):
  """HL, SL and HALD × random × 10 images per class × seeds 0, 1; tables as `overrides` say."""
  fields = dict(study_regimes=("hl", "sl", "hald"), study_methods=("random",),
                study_images_per_class=(10,), study_seeds=(0, 1))
  return tiny_study("/teacher", "/cache", **{**fields, **overrides})


def test_label_tables_split_only_the_table_regimes_in_grid_order():
  config = _table_study(study_label_tables=((1, 1.0), (16, 0.25)))
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  assert [cell.name for cell in configs] == [
      "hl-random-ipc10-s0", "hl-random-ipc10-s1", "sl-random-ipc10-c1k1-s0",
      "sl-random-ipc10-c1k1-s1", "sl-random-ipc10-c16k0.25-s0", "sl-random-ipc10-c16k0.25-s1",
      "hald-random-ipc10-c1k1-s0", "hald-random-ipc10-c1k1-s1", "hald-random-ipc10-c16k0.25-s0",
      "hald-random-ipc10-c16k0.25-s1"
  ]
  assert study.Cell("hl", "random", 10, 0) in configs  # hl reads no table: crops=0 as before
  assert study.Cell("sl", "random", 10, 1, 16, 0.25).name == "sl-random-ipc10-c16k0.25-s1"
  assert study.Cell("sl", "random", 10, 0, 16, 0.0625).name == "sl-random-ipc10-c16k0.0625-s0"


def test_a_table_cell_trains_with_its_table_and_reads_no_study_field():
  config = _table_study(study_label_tables=((2, 1.0), (16, 0.25)), label_pruning="per_image")
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  for cell, cell_cfg in configs.items():
    assert cell_cfg.study_label_tables == ()
    if cell.regime == "hl":
      assert (cell_cfg.crops_per_image, cell_cfg.label_keep_fraction) == (4, 1.0)  # defaults
    else:
      assert (cell_cfg.crops_per_image, cell_cfg.label_keep_fraction) == (cell.crops, cell.keep)
      # label_pruning is read only by a fraction below 1, so the study may set it for the axis.
      assert cell_cfg.label_pruning == ("per_image" if cell.keep < 1 else "lpld_batches")
  # The (2, 1.0) table is the study's own table (tiny_study: crops_per_image=2): the cell is
  # the run a study without the axis trains, so it shares its caches.
  plain = study.validate_study(_table_study(), EMBEDDED_COUNTS, "/cache")
  identity = checkpointing.run_identity
  assert identity(configs[study.Cell("hald", "random", 10, 1, 2,
                                     1.0)]) == identity(plain[study.Cell("hald", "random", 10, 1)])


def test_without_label_tables_the_grid_and_its_cells_are_unchanged():
  config = _table_study()
  assert config.study_label_tables == ()
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  assert [cell.name for cell in configs
         ] == [f"{r}-random-ipc10-s{s}" for r in ("hl", "sl", "hald") for s in (0, 1)]
  assert all((c.crops, c.keep) == (0, 0.0) for c in configs)
  sl = configs[study.Cell("sl", "random", 10, 0)]
  assert (sl.crops_per_image, sl.label_keep_fraction, sl.label_pruning) == (2, 1.0, "lpld_batches")
  assert study.Cell("sl", "random", 10, 0) == study.Cell("sl", "random", 10, 0, 0, 0.0)


def test_label_tables_given_as_lists_are_normalised():
  config = _table_study(study_label_tables=[[1, 1], [16, 0.25]])
  cells = study.grid(config)
  assert {(c.crops, c.keep) for c in cells if c.regime == "sl"} == {(1, 1.0), (16, 0.25)}
  assert all(isinstance(c.keep, float) for c in cells)
  assert config_schema.label_tables(config) == ((1, 1.0), (16, 0.25))


@pytest.mark.parametrize("overrides, message", [
    (dict(study_label_tables=((0, 1.0),)), "(0, 1.0): crops_per_image 0 must be an int >= 1"),
    (dict(study_label_tables=((2.5, 1.0),)), "crops_per_image 2.5 must be an int >= 1"),
    (dict(study_label_tables=((4, 0.0),)), "(4, 0.0): label_keep_fraction 0.0 must be in (0, 1]"),
    (dict(study_label_tables=((4, 1.5),)), "label_keep_fraction 1.5 must be in (0, 1]"),
    (dict(study_label_tables=((4, 0.5), (4, 0.5))), "repeats an entry (c4k0.5)"),
    (dict(study_label_tables=((4,),)), "(4,) is not a (crops_per_image, label_keep_fraction) pair"),
    (dict(study_label_tables=(4, 0.5)), "4 is not a (crops_per_image, label_keep_fraction) pair"),
    (dict(study_label_tables=((4, 1.0),), study_regimes=("hl", "sl_kd"),
          crops_per_image=4), "only sl, hald cells read a label table"),
    (dict(study_label_tables=((4, 1.0),), study_regime_overrides={"sl": {
        "crops_per_image": 8
    }}), "study_regime_overrides.sl.crops_per_image: study_label_tables sets it"),
])
def test_invalid_label_tables_are_refused_naming_the_field(overrides, message):
  config = _table_study(**overrides)
  field = "" if message.startswith("study_") else "study_label_tables: .*"
  with pytest.raises(ValueError, match=r"^config\." + field + re.escape(message)):
    study.validate_study(config, EMBEDDED_COUNTS, "/cache")


def test_label_tables_under_train_are_refused():
  with pytest.raises(ValueError, match=r"config\.study_label_tables: .* never reads it"):
    config_schema.validate(tiny_config(study_label_tables=((1, 1.0),)))


# Top-1 per seed of SL and HALD (random, ipc 10) at three tables, and the references. HALD − SL
# per seed: c1k1 (4, 6, 5) → +5 ± 1/√3 (beats); c16k0.25 (-3, -4, -2) → -3 ± 1/√3 (loses);
# c16k1 (2, 0, 1) → +1 ± 1/√3 (noise). From 1 to 16 crops the gap changes by (-2, -6, -4).
TABLE_RESULTS = {
    ("hl", None): [0.30, 0.32, 0.34],
    ("sl_kd", None): [0.80, 0.82, 0.84],
    ("sl", (1, 1.0)): [0.50, 0.52, 0.54],
    ("sl", (16, 0.25)): [0.60, 0.62, 0.64],
    ("sl", (16, 1.0)): [0.70, 0.72, 0.74],
    ("hald", (1, 1.0)): [0.54, 0.58, 0.59],
    ("hald", (16, 0.25)): [0.57, 0.58, 0.62],
    ("hald", (16, 1.0)): [0.72, 0.72, 0.75],
}


def _table_rows(results=None, method="random"):
  """CSV rows (every column) from {(regime, (crops, keep) or None): [top-1 per seed]}."""
  rows = []
  for (regime, table), accs in (results or TABLE_RESULTS).items():
    for seed, acc in enumerate(accs):
      crops, keep = table or ("", "")
      rows.append({
          "regime": regime,
          "method": method,
          "ipc": 10,
          "seed": seed,
          "test_top1": acc,
          "test_loss": 1.0,
          "examples_seen": 64,
          "steps": 4,
          "epochs": 1.0,
          "pool_size": 100,
          "label_source": study.LABEL_SOURCES[regime],
          "label_bytes": round(1000 * 209 * crops * keep) if table else 0,
          "crops_per_image": crops,
          "label_keep_fraction": keep,
          "wall_seconds": 2.5
      })
  return rows


def test_label_tables_round_trip_through_the_csv(tmp_path):
  path = str(tmp_path / "results.csv")
  study.write_csv(_table_rows(), path)
  rows = study_report.read_csv(path)
  sl = next(r for r in rows if r["regime"] == "sl")
  assert (sl["crops_per_image"], sl["label_keep_fraction"]) == (1, 1.0)
  assert isinstance(sl["crops_per_image"], int) and isinstance(sl["label_keep_fraction"], float)
  hl = next(r for r in rows if r["regime"] == "hl")
  assert "crops_per_image" not in hl and "label_keep_fraction" not in hl  # no table


def test_an_old_csv_without_the_table_columns_still_reads(tmp_path):
  old_fields = [f for f in study.CSV_FIELDS if f not in ("crops_per_image", "label_keep_fraction")]
  path = str(tmp_path / "results.csv")
  rows = _saturated_csv_rows()
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=old_fields)
    writer.writeheader()
    writer.writerows(rows)
  assert study_report.read_csv(path) == rows
  summary = study_report.summarize(study_report.read_csv(path))
  assert all(s["table"] == "" and s["crops"] is None for s in summary)
  report = study_report.write_report(study_report.read_csv(path), str(tmp_path))
  assert "| SL+KD | full | – | 95.0 ± 0.0 (2) |" in report.markdown


def test_label_bytes_table_pairs_hald_with_sl_per_seed():
  rows = _table_rows()
  gaps = {(g["crops"], g["keep"]): g for g in study_report.paired_gaps(rows)}
  assert gaps[1, 1.0]["gap"] == pytest.approx(5.0)
  assert gaps[1, 1.0]["stderr"] == pytest.approx(1 / np.sqrt(3))
  assert gaps[16, 0.25]["gap"] == pytest.approx(-3.0)
  assert gaps[16, 1.0]["gap"] == pytest.approx(1.0)
  assert [g["verdict"] for g in gaps.values()] == ["beats", "loses", "noise"]
  assert study_report.label_bytes_table(rows).splitlines() == [
      "| ipc | crops | keep | label bytes | SL | HALD | HALD − SL (paired) | HL random | "
      "SL+KD random |",
      "|---|---|---|---|---|---|---|---|---|",
      "| 10 | 1 | 1 | 209.0 KB | 52.0 ± 2.0 (3) | 57.0 ± 2.6 (3) | +5.0 ± 0.6 (3) | "
      "32.0 ± 2.0 (3) | 82.0 ± 2.0 (3) |",
      "| 10 | 16 | 1/4 | 836.0 KB | 62.0 ± 2.0 (3) | 59.0 ± 2.6 (3) | -3.0 ± 0.6 (3) | "
      "32.0 ± 2.0 (3) | 82.0 ± 2.0 (3) |",
      "| 10 | 16 | 1 | 3.344 MB | 72.0 ± 2.0 (3) | 73.0 ± 1.7 (3) | +1.0 ± 0.6 (3) | "
      "32.0 ± 2.0 (3) | 82.0 ± 2.0 (3) |",
  ]
  assert study_report.label_bytes_table(_table_rows({("hl", None): [0.3]})) == ""


def test_findings_say_where_hald_beats_sl_and_whether_the_gap_closes():
  rows = _table_rows()
  sentences = study_report.findings(study_report.summarize(rows), rows)
  assert sentences[-2:] == [
      "ipc 10: at equal label bytes, HALD beats SL with 1 stored crop (+5.0 ± 0.6, paired over 3 "
      "seeds); HALD loses to SL with 16 stored crops kept at 1/4 (-3.0 ± 0.6, paired over 3 "
      "seeds); HALD vs SL is not resolved (noise) with 16 stored crops (+1.0 ± 0.6, paired over "
      "3 seeds).",
      "ipc 10: the HALD − SL gap closes as stored crops grow (+5.0 with 1 stored crop, +1.0 with "
      "16 stored crops; change -4.0 ± 1.2 over 3 seeds, resolved)."
  ]
  # Without rows (or with one seed) no claim is made from an error bar that does not exist.
  assert not any("HALD" in s for s in study_report.findings(study_report.summarize(rows)))
  one_seed = _table_rows({k: v[:1] for k, v in TABLE_RESULTS.items()})
  sentence = study_report.label_bytes_findings(one_seed)[0]
  assert "HALD vs SL is not resolved (one seed) with 1 stored crop (+4.0, one seed)" in sentence


def test_a_label_table_axis_compares_methods_at_one_table(tmp_path):
  results = {("sl", (1, 1.0)): [0.50, 0.52], ("sl", (16, 0.25)): [0.60, 0.62]}
  rows = _table_rows(results) + _table_rows(
      {
          ("sl", (1, 1.0)): [0.55, 0.57],
          ("sl", (16, 0.25)): [0.60, 0.62]
      }, method="ccs") + _table_rows({("hl", None): [0.3, 0.3]})
  summary = study_report.summarize(rows)
  assert [(s["regime"], s["method"], s["table"]) for s in summary
         ] == [("sl", "random", "1 crop"), ("sl", "random", "16 crops, keep 1/4"),
               ("sl", "ccs", "1 crop"), ("sl", "ccs", "16 crops, keep 1/4"), ("hl", "random", "")]
  gains = {g["table"]: g for g in study_report.gains_over_random(summary)}
  assert gains["1 crop"]["gain"] == pytest.approx(5.0)  # ccs vs random at 1 crop, not at 16
  assert gains["16 crops, keep 1/4"]["gain"] == pytest.approx(0.0)
  spreads = {s["table"]: s["spread"] for s in study_report.spreads(summary)}
  assert spreads == pytest.approx({"1 crop": 5.0, "16 crops, keep 1/4": 0.0, "": 0.0})
  table = study_report.accuracy_table(summary)
  assert "| SL | random (16 crops, keep 1/4) | 61.0 ± 1.4 (2) |" in table
  assert "| HL | random | 30.0 ± 0.0 (2) |" in table
  assert "| SL (1 crop) | 10 | 51.0 | ccs (56.0) | +5.0 ± 1.4 | 5.0 |" in (
      study_report.spread_table(summary))
  report = study_report.write_report(rows, str(tmp_path))
  assert "## HALD vs SL" not in report.markdown  # SL cells only: nothing to pair with
  assert all(os.path.getsize(p) > 5000 for p in report.paths[1:])
  assert study_report._point_label(summary[1]) == "10: c16 k1/4"


@pytest.mark.slow
def test_a_study_with_label_tables_runs_end_to_end(teacher_dir, tmp_path):
  config = tiny_study(teacher_dir, str(tmp_path / "cache"), study_regimes=("sl",),
                      study_methods=("random",), study_label_tables=((1, 1.0), (2, 0.5)))
  workdir = str(tmp_path / "study")
  rows = study.run(config, workdir)
  assert sorted(os.listdir(os.path.join(
      workdir, study.CELLS_DIR))) == ["sl-random-ipc5-c1k1-s0", "sl-random-ipc5-c2k0.5-s0"]
  assert [(r["crops_per_image"], r["label_keep_fraction"]) for r in rows] == [(1, 1.0), (2, 0.5)]
  assert rows[0]["label_bytes"] == 50 * 1 * 29  # 50 images × 1 crop × 29 bytes a row
  assert 0 < rows[1]["label_bytes"] < 50 * 2 * 29  # half of the 2-crop table's rows
  read = study_report.read_csv(os.path.join(workdir, study.RESULTS_CSV))
  assert [(r["crops_per_image"], r["label_keep_fraction"]) for r in read] == [(1, 1.0), (2, 0.5)]
  with open(os.path.join(workdir, study_report.REPORT_FILE)) as f:
    report = f.read()
  assert "| SL | random (1 crop) |" in report and "| SL | random (2 crops, keep 1/2) |" in report


def test_cells_train_by_seed_then_size_then_method_and_regime():
  """A study cut short holds whole comparisons of its first seeds and sizes, not whole regimes."""
  config = config_schema.default_config()
  config.study_regimes = ("hl", "sl")
  config.study_methods = ("random", "full", "rded")
  config.study_images_per_class = (10, 50)
  config.study_seeds = (1, 0)
  names = [c.name for c in study.training_order(config, study.grid(config))]
  assert names == [
      "hl-random-ipc10-s1", "sl-random-ipc10-s1", "hl-rded-ipc10-s1", "sl-rded-ipc10-s1",
      "hl-full-all-s1", "sl-full-all-s1", "hl-random-ipc50-s1", "sl-random-ipc50-s1",
      "hl-rded-ipc50-s1", "sl-rded-ipc50-s1", "hl-random-ipc10-s0", "sl-random-ipc10-s0",
      "hl-rded-ipc10-s0", "sl-rded-ipc10-s0", "hl-full-all-s0", "sl-full-all-s0",
      "hl-random-ipc50-s0", "sl-random-ipc50-s0", "hl-rded-ipc50-s0", "sl-rded-ipc50-s0"
  ]


@pytest.mark.slow
def test_finished_cells_carried_to_another_workdir_are_not_trained_again(
    finished_study, tmp_path, teacher_dir):
  # launch/study_cells.sh: a study's finished cells (records only, no checkpoints) saved on one
  # machine and restored on the next; the same study command there trains nothing again and
  # writes the same results.
  workdir, cache, rows = finished_study
  script = os.path.join(os.path.dirname(__file__), os.pardir, "launch", "study_cells.sh")
  archive = str(tmp_path / "cells.tar.gz")
  subprocess.run([script, "save", workdir, archive], check=True, capture_output=True)
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert names and not any("checkpoints" in name for name in names)
  assert {os.path.basename(n) for n in names
         } == {"results.json", "run_config.json", "study_cell.json", "metrics.jsonl"}
  moved = str(tmp_path / "moved")
  subprocess.run([script, "restore", moved, archive], check=True, capture_output=True)
  again = study.run(tiny_study(teacher_dir, cache), moved, step_hook=_never_called)
  assert again == rows
  with open(os.path.join(workdir,
                         study.RESULTS_CSV)) as a, open(os.path.join(moved,
                                                                     study.RESULTS_CSV)) as b:
    assert a.read() == b.read()


def _never_called(step):
  raise AssertionError(f"a restored study trained a step ({step})")
