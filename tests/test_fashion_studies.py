"""configs/fashion_study.py and configs/fashion_hald.py: their grids and their smoke runs."""

import csv
import os

import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import study

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
FASHION_COUNTS = np.full(10, 6000)  # Fashion-MNIST's train split: 6,000 images of each class


def _load(name, arg=None):
  return config_schema.load_config_file(os.path.join(CONFIG_DIR, name), arg)


def test_fashion_study_is_the_paper_grid_at_its_epochs_per_subset(tmp_path):
  config = _load("fashion_study.py")
  configs = study.validate_study(config, FASHION_COUNTS, str(tmp_path))
  assert len(configs) == 3 * (7 * 2 + 1) * 3 == 135
  # The paper's 1,500 epochs of IPC10 and 300 of IPC50; the pool seen 2.5 times.
  assert config.budget_examples / 100 == 1500 and config.budget_examples / 500 == 300
  assert study.cad_scoring_epochs(config, 10, 60_000, 10) == 3
  assert study.cad_scoring_epochs(config, 50, 60_000, 10) == 3
  assert config.study_score_epochs == 3  # EL2N and CCS share CAD-Prune's scoring run
  cad = configs[study.Cell("hl", "cad_prune", 10, 0)]
  assert cad.score_config.score_epochs == 3
  score = cad.score_config
  assert (score.cad_window, score.cad_num_windows, score.cad_windows_shrink) == (6, 2, True)
  assert config.teacher_config.model_kwargs.norm == "batch"  # SRe²L matches BN statistics
  assert config.budget_examples % config.global_batch_size == 0
  assert len(
      study.validate_study(_load("fashion_study.py", "seeds=1"), FASHION_COUNTS,
                           str(tmp_path))) == 45


def test_fashion_hald_pairs_sl_and_hald_at_six_tables(tmp_path):
  config = _load("fashion_hald.py")
  configs = study.validate_study(config, FASHION_COUNTS, str(tmp_path))
  assert len(configs) == 2 * 3 * (1 + 1 + 6 + 6) == 84  # sizes × seeds × (hl, sl_kd, 2 × 6)
  tables = {(c.crops, c.keep) for c in configs if c.regime in ("sl", "hald")}
  assert tables == {(1, 1.0), (2, 1.0), (4, 1.0), (16, 1.0), (16, 0.25), (16, 0.0625)}
  sl = configs[study.Cell("sl", "random", 10, 2, crops=16, keep=0.0625)]
  hald = configs[study.Cell("hald", "random", 10, 2, crops=16, keep=0.0625)]
  # One table and one recipe: only the regime differs between the pair.
  differing = {k for k in sl.keys() if sl[k] != hald[k]} - {"regime"}
  assert differing <= set(config_schema.FIELD_GROUPS["hald"]), differing
  assert (sl.crops_per_image, sl.label_keep_fraction) == (16, 1 / 16)
  assert config.budget_examples / 100 == 300


@pytest.mark.slow
def test_both_runlocal_studies_run_and_report(tmp_path):
  """The two smoke runs, sharing one cache (one teacher), end with their reports."""
  cache = str(tmp_path / "cache")
  config = _load("fashion_study.py", "runlocal")
  config.cache_dir = cache
  rows = study.run(config, str(tmp_path / "study"))
  assert {r["method"] for r in rows} == {"random", "el2n_hard", "ccs", "rded", "sre2l", "full"}
  assert all(0 <= r["test_top1"] <= 1 for r in rows)
  config = _load("fashion_hald.py", "runlocal")
  config.cache_dir = cache
  workdir = tmp_path / "hald"
  rows = study.run(config, str(workdir))
  assert len(rows) == 6
  with open(workdir / "results.csv") as f:
    tables = {
        (r["regime"], r["crops_per_image"], r["label_keep_fraction"]) for r in csv.DictReader(f)
    }
  assert ("hald", "4", "0.25") in tables and ("sl", "1", "1.0") in tables
  report = (workdir / "report.md").read_text()
  assert "HALD vs SL at equal soft-label bytes" in report
  assert (workdir / "accuracy_vs_label_bytes.png").stat().st_size > 0
