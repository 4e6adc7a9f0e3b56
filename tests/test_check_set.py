"""The hard-label check of an external set (study method 'external', configs/check_set.py)."""

import csv
import json
import os

import numpy as np
from PIL import Image
import pytest

from ddranking_official import official_aggregate
from ddranking_official import official_ars
from ddranking_official import official_lrs
from hardlabel_jax import config_schema
from hardlabel_jax import image_sets
from hardlabel_jax import plan
from hardlabel_jax import study
from hardlabel_jax.data import sources
from helpers import tiny_config

CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "check_set.py")


def _write_official_set(root, per_class: int, classes=range(10), extension=".jpg"):
  """Real embedded images in SRe²L's layout: `new000/class000_id000.jpg`."""
  train = sources.load_source("embedded_mnist", "train")
  labels = np.asarray(train.labels())
  for c in classes:
    os.makedirs(root / f"new{c:03d}", exist_ok=True)
    for i, index in enumerate(np.flatnonzero(labels == c)[:per_class]):
      Image.fromarray(train[int(index)]["image"][..., 0]).save(
          root / f"new{c:03d}" / f"class{c:03d}_id{i:03d}{extension}")
  return str(root)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_check_runs_end_to_end_on_an_official_layout(teacher_dir, tmp_path):
  external = _write_official_set(tmp_path / "syn_data", 3)
  config = config_schema.load_config_file(CONFIG,
                                          f"set={external},teacher={teacher_dir},seeds=2,runlocal")
  rows = study.run(config, str(tmp_path / "check"))
  cells = {(r["regime"], r["method"], r["ipc"], r["augmentation"], r["seed"]) for r in rows}
  # Both arms of every subset cell, and the full split under HL alone (DD-Ranking's HLR).
  assert cells == {(g, m, 3, a, s)
                   for g in ("hl", "sl")
                   for m in ("random", "external")
                   for a in ("", "none")
                   for s in (0, 1)} | {("hl", "full", 0, "", s) for s in (0, 1)}
  for name in ("results.csv", "report.md", "gain_over_random.png", "scores.json"):
    assert os.path.exists(tmp_path / "check" / name)
  report = open(tmp_path / "check" / "report.md").read()
  assert "| HL | external |" in report and "best − random" in report
  assert "| HL | external (no augmentation) |" in report and "## DD-Ranking scores" in report
  # Each external cell trained on the 30 images of the folder, tested on the 1,000 real ones.
  assert {int(r["pool_size"]) for r in rows if r["method"] == "external"} == {30}
  _check_scores_from_the_csv(tmp_path / "check")


def _check_scores_from_the_csv(workdir):
  """scores.json against DD-Ranking's own lines (tests/ddranking_official.py: soft_label.py
  L561–564, aug_robust.py L577–580, their np.mean / np.std over runs) applied to results.csv,
  in its percent."""
  acc = {
      (r["regime"], r["method"], r["augmentation"], int(r["seed"])): 100 * float(r["test_top1"])
      for r in _rows(workdir / "results.csv")
  }
  with open(workdir / "scores.json") as f:
    scores = json.load(f)
  assert scores["missing"] == [] and scores["units"].startswith("percent")
  (lrs,) = scores["lrs"]
  assert (lrs["method"], lrs["soft_regime"], lrs["seeds"]) == ("external", "sl", [0, 1])
  runs = [
      official_lrs(acc["hl", "full", "", s], acc["hl", "external", "", s],
                   acc["sl", "external", "", s], acc["sl", "random", "", s]) for s in (0, 1)
  ]
  for i, name in enumerate(("hlr", "ior", "lrs")):
    assert lrs[name] == pytest.approx(official_aggregate([run[i] for run in runs]), rel=1e-9)
  ars = {e["regime"]: e for e in scores["ars"]}
  assert set(ars) == {"hl", "sl"}
  for regime, entry in ars.items():
    runs = [
        official_ars(acc[regime, "external", "", s], acc[regime, "random", "", s],
                     acc[regime, "external", "none", s], acc[regime, "random", "none", s])
        for s in (0, 1)
    ]
    for i, name in enumerate(("with_aug_score", "without_aug_score", "ars")):
      assert entry[name] == pytest.approx(official_aggregate([run[i] for run in runs]), rel=1e-9)


@pytest.mark.slow
def test_an_exported_library_set_gives_the_in_library_numbers(teacher_dir, tmp_path):
  # RDED built in-library vs the same files exported in SRe²L's layout and read back as an
  # external set: same images, ids, crops and seed, so the same test accuracy and loss.
  base = tiny_config(task="study", teacher_workdir=teacher_dir, cache_dir=str(tmp_path / "cache"))
  base.images_per_class = 0
  base.study_regimes, base.study_seeds, base.study_images_per_class = ("hl",), (0,), (2,)
  base.train_crop_recipe = "rded"  # the same student crops for both
  base.rded_factor, base.rded_candidates_per_class = 1, 8
  base.budget_examples = 64
  inside = base.copy_and_resolve_references()
  inside.study_methods = ("rded",)
  (row,) = study.run(inside, str(tmp_path / "inside"))
  built = [d for d in os.listdir(tmp_path / "cache" / "distilled")]
  assert len(built) == 1
  exported = str(tmp_path / "exported")
  assert len(image_sets.export_official(str(tmp_path / "cache" / "distilled" / built[0]),
                                        exported)) == 20
  outside = base.copy_and_resolve_references()
  config_schema.unset(outside, "rded_candidates_per_class", "teacher_workdir")  # HL: no teacher
  outside.study_methods = ("external",)
  outside.study_external_set = exported
  outside.study_external_class_order = "index"
  outside.study_images_per_class = ()
  (other,) = study.run(outside, str(tmp_path / "outside"))
  assert other["method"] == "external" and other["ipc"] == 2
  assert (other["test_top1"], other["test_loss"]) == (row["test_top1"], row["test_loss"])


def test_check_refuses_bad_sets_before_training(tmp_path):
  uneven = tmp_path / "uneven"
  _write_official_set(uneven, 2)
  _write_official_set(uneven, 3, classes=[4])
  config = config_schema.load_config_file(CONFIG, f"set={uneven},runlocal")
  with pytest.raises(ValueError, match="study_external_set.*2 to 3 images per class"):
    study.run(config, str(tmp_path / "w1"))
  missing = _write_official_set(tmp_path / "missing", 2, classes=range(9))
  config = config_schema.load_config_file(CONFIG, f"set={missing},runlocal")
  with pytest.raises(ValueError, match="9"):
    study.run(config, str(tmp_path / "w2"))
  config = config_schema.load_config_file(CONFIG, f"set={missing},runlocal")
  config.study_methods = ("random",)
  with pytest.raises(ValueError, match="study_external_set"):
    study.run(config, str(tmp_path / "w3"))
  config = config_schema.load_config_file(CONFIG, f"set={uneven},runlocal")
  config.study_images_per_class = (5,)
  with pytest.raises(ValueError, match="study_external_set|study_images_per_class"):
    study.run(config, str(tmp_path / "w4"))
  assert not any((tmp_path / w).exists() for w in ("w1", "w2", "w3", "w4"))
  with pytest.raises(ValueError, match="study_external_set"):
    study.run(config_schema.load_config_file(CONFIG, "runlocal"), str(tmp_path / "w5"))


def test_a_plan_on_an_external_cell_trains_on_the_folder(tmp_path):
  external = _write_official_set(tmp_path / "set", 2, extension=".png")
  config = config_schema.load_config_file(CONFIG, f"set={external},runlocal")
  counts = study.train_class_counts(config)
  config = study.with_external_size(config, counts)
  assert tuple(config.study_images_per_class) == (2,)
  cell = study.Cell("hl", "external", 2, 1)
  cell_config = study.cell_config(config, cell, counts, str(tmp_path / "cache"))
  assert cell_config.dataset == f"imagefolder:{external}"
  assert cell_config.test_dataset == "embedded_mnist" and cell_config.class_order == "index"
  resolved = plan.make_plan(cell_config, str(tmp_path / "w"), "train").config
  assert resolved.selection == "random" and resolved.images_per_class == 0


def test_the_ddranking_protocol_of_the_check_validates_at_its_scale(tmp_path):
  """`protocol=ddranking`: 5 seeds (num_eval), 300 epochs per cell (num_epochs), every subset
  cell at its 5 learning rates, the full split once; the budget rounds up to whole batches that
  complete epoch 300, whose evaluation DD-Ranking makes (soft_label.py L374)."""
  external = _write_official_set(tmp_path / "set", 2, extension=".png")
  config = config_schema.load_config_file(CONFIG, f"set={external},protocol=ddranking")
  counts = study.train_class_counts(config)
  config = study.with_external_size(config, counts)
  configs = study.validate_study(config, counts, str(tmp_path / "cache"))
  assert tuple(config.study_seeds) == tuple(range(5)) and not (tmp_path / "cache").exists()
  cells = {c.name: c for c in configs}
  assert len(cells) == 3 * 2 * 2 * 5 + 5  # regimes × methods × arms × seeds, full HL per seed
  external_cell = cells["sl_kd-external-ipc2-noaug-s4"]
  runs = study.learning_rate_runs(config, external_cell, configs[external_cell])
  assert [(name, run.learning_rate) for name, run in runs] == [("lr0.001", 0.001),
                                                               ("lr0.005", 0.005), ("lr0.01", 0.01),
                                                               ("lr0.05", 0.05), ("lr0.1", 0.1)]
  assert all(run.eval_every_epochs == 20 for _, run in runs)
  # 20 images × 300 epochs in batches of 48: 125 steps (6,000 examples, 300 epochs).
  assert configs[external_cell].budget_examples == 6000
  full = cells["hl-full-all-s0"]
  (only,) = study.learning_rate_runs(config, full, configs[full])
  assert only[0] == "lr0.002" and configs[full].budget_examples == 4000 * 300
