"""DD-Ranking's scores (HLR, IOR, LRS, ARS) and protocol: the official lines, the study's arms."""

import json
import math

import numpy as np
import pytest

from ddranking_official import official_aggregate
from ddranking_official import official_ars
from ddranking_official import official_lrs
from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import ddranking
from hardlabel_jax import periodic_eval
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import study
from hardlabel_jax import study_report
from hardlabel_jax.data import crops
from helpers import Killed
from helpers import tiny_config

EMBEDDED_COUNTS = np.full(10, 400)  # the embedded train split: 400 images of each digit


def test_the_scores_are_the_official_lines_on_hand_made_accuracies():
  """Hand-worked: α = 0 gives 1/(1 + e), α = ±1 gives 1 and 0; percent points as its code."""
  assert ddranking.label_robust_score(hlr=1.0, ior=1.0) == pytest.approx(1 / (1 + math.e))
  assert ddranking.label_robust_score(hlr=0.0, ior=2.0) == pytest.approx(1.0)
  assert ddranking.label_robust_score(hlr=2.0, ior=0.0) == pytest.approx(0.0)
  assert ddranking.augmentation_robust_score(2.0, 0.0) == pytest.approx(1.0)  # β = λ·2 + 0
  # Percent, not fractions: a 10-point IOR and 20-point HLR give α = −5, far below 0.
  assert ddranking.label_robust_score(20.0, 10.0) == pytest.approx((math.exp(-5) - math.exp(-1)) /
                                                                   (math.e - math.exp(-1)))
  for accuracies in [(56.5, 21.3, 42.7, 33.1), (46.4, 40.0, 39.5, 40.25), (90.0, 10.0, 10.0, 9.0)]:
    for lam in (0.5, 0.3):
      hlr, ior, lrs = official_lrs(*accuracies, lrs_lambda=lam)
      assert ddranking.hard_label_recovery(*accuracies[:2]) == hlr
      assert ddranking.improvement_over_random(*accuracies[2:]) == ior
      assert ddranking.label_robust_score(hlr, ior, lam) == pytest.approx(lrs, rel=1e-12)
      with_aug, without_aug, ars = official_ars(*accuracies, ars_lambda=lam)
      assert ddranking.augmentation_robust_score(with_aug, without_aug,
                                                 lam) == pytest.approx(ars, rel=1e-12)


def test_the_best_of_a_search_is_the_first_strictly_larger_from_zero():
  """ddranking 0.2.0 soft_label.py L212–235 (lr search) and L360–382 (evaluations): `best = 0`,
  replaced when `acc > best`."""
  assert ddranking.first_best([0.5, 0.7, 0.7, 0.6]) == (0.7, 1)
  assert ddranking.first_best([0.0, 0.0]) == (0.0, None)
  assert ddranking.first_best([]) == (0.0, None)
  assert ddranking.LEARNING_RATES == (0.001, 0.005, 0.01, 0.05, 0.1)
  assert ddranking.TEST_INTERVAL_EPOCHS == 20 and ddranking.NUM_EVAL == 5


def _row(regime, method, seed, top1, ipc=3, augmentation="", crops_per_image="", keep=""):
  return {
      "regime": regime,
      "method": method,
      "ipc": 0 if method == "full" else ipc,
      "seed": seed,
      "test_top1": top1,
      "augmentation": augmentation,
      "crops_per_image": crops_per_image,
      "label_keep_fraction": keep,
      "variant": "",
      "protocol": "library"
  }


# Per seed: full HL; set HL; set SL; random SL; and the no-augmentation arm's set/random under
# each regime (fractions, as results.csv holds them).
HAND_MADE = {
    0: dict(full=0.95, set_hl=0.61, rand_hl=0.55, set_sl=0.72, rand_sl=0.70, set_hl_na=0.58,
            rand_hl_na=0.50, set_sl_na=0.66, rand_sl_na=0.65),
    1: dict(full=0.93, set_hl=0.65, rand_hl=0.52, set_sl=0.74, rand_sl=0.69, set_hl_na=0.60,
            rand_hl_na=0.51, set_sl_na=0.67, rand_sl_na=0.62),
}


def _hand_made_rows():
  rows = []
  for seed, a in HAND_MADE.items():
    rows += [
        _row("hl", "full", seed, a["full"]),
        _row("hl", "random", seed, a["rand_hl"]),
        _row("hl", "external", seed, a["set_hl"]),
        _row("hl", "random", seed, a["rand_hl_na"], augmentation="none"),
        _row("hl", "external", seed, a["set_hl_na"], augmentation="none"),
        _row("sl", "random", seed, a["rand_sl"], crops_per_image=4, keep=1.0),
        _row("sl", "external", seed, a["set_sl"], crops_per_image=4, keep=1.0),
        _row("sl", "random", seed, a["rand_sl_na"], augmentation="none", crops_per_image=4,
             keep=1.0),
        _row("sl", "external", seed, a["set_sl_na"], augmentation="none", crops_per_image=4,
             keep=1.0),
    ]
  return rows


def test_study_scores_are_per_seed_official_scores_then_mean_and_population_std():
  """Scores per evaluation run (seed), then np.mean / np.std over runs (soft_label.py L561–596,
  aug_robust.py L577–612), in percent: not the score of the mean accuracies."""
  scores = ddranking.study_scores(_hand_made_rows())
  assert scores["missing"] == [] and not scores["selected_on_test_set"]
  (lrs,) = scores["lrs"]
  assert (lrs["method"], lrs["ipc"], lrs["soft_regime"], lrs["seeds"]) == ("external", 3, "sl",
                                                                           [0, 1])
  official = [
      official_lrs(100 * a["full"], 100 * a["set_hl"], 100 * a["set_sl"], 100 * a["rand_sl"])
      for a in HAND_MADE.values()
  ]
  for i, name in enumerate(("hlr", "ior", "lrs")):
    expected = official_aggregate([run[i] for run in official])
    assert lrs[name]["mean"] == pytest.approx(expected["mean"], rel=1e-12)
    assert lrs[name]["std"] == pytest.approx(expected["std"], rel=1e-12)
  # Seed 0: HLR 34, IOR 2 points: α = −16; seed 1: HLR 28, IOR 5: α = −11.5.
  assert [s["hlr"] for s in lrs["per_seed"]] == pytest.approx([34.0, 28.0])
  assert [s["ior"] for s in lrs["per_seed"]] == pytest.approx([2.0, 5.0])
  ars = {e["regime"]: e for e in scores["ars"]}
  assert set(ars) == {"hl", "sl"} and ars["sl"]["crops_per_image"] == 4
  for regime, key in (("hl", "hl"), ("sl", "sl")):
    official = [
        official_ars(100 * a[f"set_{key}"], 100 * a[f"rand_{key}"], 100 * a[f"set_{key}_na"],
                     100 * a[f"rand_{key}_na"]) for a in HAND_MADE.values()
    ]
    for i, name in enumerate(("with_aug_score", "without_aug_score", "ars")):
      expected = official_aggregate([run[i] for run in official])
      assert ars[regime][name]["mean"] == pytest.approx(expected["mean"], rel=1e-12)
      assert ars[regime][name]["std"] == pytest.approx(expected["std"], rel=1e-12)


def test_scores_are_averaged_over_seeds_not_computed_from_mean_accuracies():
  """Seed 0: HLR 0, IOR 2 points (α = 1, LRS 1); seed 1: HLR 2, IOR 0 (α = −1, LRS 0). Mean
  0.5, np.std 0.5; the LRS of the mean accuracies (HLR 1, IOR 1) would be 1/(1 + e)."""
  rows = []
  for seed, (full, set_hl, set_sl, random_sl) in enumerate([(0.50, 0.50, 0.52, 0.50),
                                                            (0.52, 0.50, 0.50, 0.50)]):
    rows += [
        _row("hl", "full", seed, full),
        _row("hl", "external", seed, set_hl),
        _row("sl", "external", seed, set_sl),
        _row("sl", "random", seed, random_sl)
    ]
  (lrs,) = ddranking.study_scores(rows)["lrs"]
  assert [s["lrs"] for s in lrs["per_seed"]] == pytest.approx([1.0, 0.0])
  assert lrs["lrs"] == pytest.approx({"mean": 0.5, "std": 0.5})


def test_a_study_without_the_full_cell_or_the_arm_says_what_is_missing():
  rows = [r for r in _hand_made_rows() if r["method"] != "full" and not r["augmentation"]]
  scores = ddranking.study_scores(rows)
  assert scores["lrs"] == [] and scores["ars"] == []
  assert [m.split(":")[0] for m in scores["missing"]] == ["LRS", "ARS"]
  assert "study_no_augmentation=True" in scores["missing"][1]
  # A seed missing one cell drops out of that score alone.
  rows = [r for r in _hand_made_rows() if not (r["seed"] == 1 and r["method"] == "full")]
  scores = ddranking.study_scores(rows)
  assert scores["lrs"][0]["seeds"] == [0] and all(e["seeds"] == [0, 1] for e in scores["ars"])


def test_the_report_and_scores_json_round_trip_through_the_csv(tmp_path):
  filled = {
      "test_loss": 1.0,
      "examples_seen": 64,
      "steps": 4,
      "epochs": 1.0,
      "pool_size": 30,
      "label_source": "hard",
      "label_bytes": 0,
      "wall_seconds": 1.0
  }
  rows = [{**row, **filled} for row in _hand_made_rows()]
  path = str(tmp_path / "results.csv")
  study.write_csv(rows, path)
  read = study_report.read_csv(path)
  report = study_report.write_report(read, str(tmp_path))
  with open(tmp_path / study_report.SCORES_FILE) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(ddranking.study_scores(rows)))
  assert report.paths[-1] == str(tmp_path / study_report.SCORES_FILE)
  assert "## DD-Ranking scores (points)" in report.markdown
  lrs = saved["lrs"][0]
  assert (f"| external | 3 | SL | {lrs['hlr']['mean']:+.2f} ± {lrs['hlr']['std']:.2f} (2) |"
          in report.markdown)
  # The arm is its own entry: compared with random of the same arm, never pooled with the other.
  summary = {(s["regime"], s["method"], s["table"]): s for s in study_report.summarize(read)}
  assert summary["hl", "external", "no augmentation"]["mean"] == pytest.approx(59.0)
  assert summary["hl", "external", ""]["mean"] == pytest.approx(63.0)
  assert "| HL | external (no augmentation) | 59.0 ± 1.4 (2) | – |" in report.markdown
  gains = {
      (g["regime"], g["table"]): g["gain"]
      for g in study_report.gains_over_random(list(summary.values()))
  }
  assert gains["hl", "no augmentation"] == pytest.approx(8.5)  # 59.0 − 50.5
  assert "selected on the test set" not in report.markdown


def _study(**overrides):
  """HL and SL × random and full × 2 images per class × 1 seed (HL alone: no table, no teacher)."""
  fields = dict(task="study", images_per_class=0, study_regimes=("hl", "sl"),
                study_methods=("random", "full"), study_images_per_class=(2,), study_seeds=(0,),
                budget_examples=64, teacher_workdir="/nonexistent", crops_per_image=2,
                cutmix_alpha=1.0)
  if overrides.get("study_regimes") == ("hl",):
    fields.update(teacher_workdir="", crops_per_image=4)
  return tiny_config(**{**fields, **overrides})


def test_the_arm_trains_whole_images_and_the_full_cell_only_where_asked():
  config = _study(study_full_regimes=("hl",), study_no_augmentation=True)
  names = [c.name for c in study.grid(config)]
  assert names == [
      "hl-random-ipc2-s0", "hl-random-ipc2-noaug-s0", "hl-full-all-s0", "sl-random-ipc2-s0",
      "sl-random-ipc2-noaug-s0"
  ]
  cells = {c.name: c for c in study.grid(config)}
  plain = study.cell_config(config, cells["sl-random-ipc2-s0"], EMBEDDED_COUNTS, "/tmp/c")
  bare = study.cell_config(config, cells["sl-random-ipc2-noaug-s0"], EMBEDDED_COUNTS, "/tmp/c")
  config_schema.validate(bare)
  assert run_data.crop_spec(plain).cutmix_alpha == 1.0 and run_data.crop_spec(plain).flip
  # DD-Ranking's default_transform: the image resized, nothing random (crops.whole_image_spec).
  assert run_data.crop_spec(bare) == crops.whole_image_spec(config.image_size)
  assert bare.crops_per_image == plain.crops_per_image  # the same table size, whole-image slots
  # Without the fields the grid is as before them.
  assert [c.name for c in study.grid(_study())
         ] == ["hl-random-ipc2-s0", "hl-full-all-s0", "sl-random-ipc2-s0", "sl-full-all-s0"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(study_full_regimes=("hl",), study_methods=("random",)), "study_full_regimes"),
        (dict(study_full_regimes=("sl_kd",)), "study_full_regimes"),
        (dict(study_full_regimes=("hl", "hl")), "study_full_regimes"),
        (dict(study_no_augmentation=True, study_methods=("full",)), "study_no_augmentation"),
        (dict(study_protocol="dd"), "study_protocol"),
        (dict(study_protocol="ddranking", eval_every_epochs=5), "eval_every_epochs"),
        # 64 examples of 20 images are 3.2 epochs: no evaluation after 20 of them.
        (dict(study_protocol="ddranking"), "study_protocol"),
    ])
def test_invalid_ddranking_fields_fail_before_training(overrides, field, tmp_path):
  with pytest.raises(ValueError, match=f"config.{field}"):
    study.run(_study(**{"study_regimes": ("hl",), **overrides}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_periodic_evaluation_is_read_only_when_set():
  """eval_every_epochs = 0 keeps every existing identity (teachers, scores, tables, cells)."""
  assert "eval_every_epochs" not in cache.run_recipe(tiny_config())
  assert cache.run_recipe(tiny_config(eval_every_epochs=20))["eval_every_epochs"] == 20
  with pytest.raises(ValueError, match="config.eval_every_epochs"):
    config_schema.validate(tiny_config(eval_every_epochs=-1))


def test_evaluations_survive_a_kill_and_resume_as_uninterrupted(tmp_path):
  """100 images, batches of 16, 13 steps: epochs end at steps 7 and 13; killed at step 8
  (checkpoint 6), the resumed run evaluates epoch 1 again, from the same state."""
  config = tiny_config(budget_examples=16 * 13, eval_every_epochs=1, checkpoint_every_steps=6)
  whole = plan.train(config, str(tmp_path / "whole")).results
  assert [e["epoch"] for e in whole["evaluations"]] == [1, 2]
  assert [e["step"] for e in whole["evaluations"]] == [7, 13]
  assert whole["evaluations"][-1]["test_top1"] == whole["test_top1"]  # the last step is epoch 2
  best, index = ddranking.first_best([e["test_top1"] for e in whole["evaluations"]])
  assert (whole["best_test_top1"], whole["best_epoch"]) == (best, index + 1)

  def kill(step):
    if step == 8:
      raise Killed

  with pytest.raises(Killed):
    plan.train(config, str(tmp_path / "killed"), step_hook=kill)
  with open(tmp_path / "killed" / periodic_eval.EVALUATIONS_FILE) as f:
    assert [e["epoch"] for e in json.load(f)["evaluations"]] == [1]
  resumed = plan.train(config, str(tmp_path / "killed")).results
  assert resumed["resumed_from_step"] == 6
  assert resumed["evaluations"] == whole["evaluations"]


@pytest.mark.slow
def test_the_learning_rate_search_keeps_the_first_best_evaluation(tmp_path):
  """DD-Ranking's protocol on a small case: 10 images, 400 examples = 40 epochs (evaluations
  after 20 and 40), each of its 5 learning rates; the row is the best evaluation of the best rate
  (soft_label.py L210–237, L374–382), and the report says it was selected on the test set."""
  config = _study(study_regimes=("hl",), study_methods=("random",), study_images_per_class=(1,),
                  study_protocol="ddranking", budget_examples=400, global_batch_size=8,
                  cutmix_alpha=0.0, checkpoint_every_steps=1000)
  (row,) = study.run(config, str(tmp_path / "study"))
  cell_dir = tmp_path / "study" / study.CELLS_DIR / "hl-random-ipc1-s0"
  searched = []
  for rate in ddranking.LEARNING_RATES:
    with open(cell_dir / f"lr{rate:g}" / plan.RESULTS_FILE) as f:
      results = json.load(f)
    assert results["config"]["learning_rate"] == rate
    assert [e["epoch"] for e in results["evaluations"]] == [20, 40]
    searched.append(max(e["test_top1"] for e in results["evaluations"]))
  assert len(set(searched)) > 1  # the rates train differently: the search has a choice
  best = max(searched)
  assert row["test_top1"] == best and row["protocol"] == "ddranking"
  assert row["learning_rate"] == ddranking.LEARNING_RATES[searched.index(best)]
  with open(cell_dir / plan.RESULTS_FILE) as f:
    cell = json.load(f)
  assert [s["best_test_top1"] for s in cell["learning_rate_search"]] == searched
  assert cell["selected_on_test_set"] and cell["epochs"] == 40.0
  report = open(tmp_path / "study" / study_report.REPORT_FILE).read()
  assert "selected on the test set (DD-Ranking's protocol" in report
  # The same workdir under the library's protocol would mix two protocols: refused.
  config.study_protocol = "library"
  with pytest.raises(ValueError, match="config.study_protocol.*finished under 'ddranking'"):
    study.run(config, str(tmp_path / "study"))


def test_a_searched_cell_takes_the_first_best_rate_and_its_best_evaluation():

  def run(rate, best, loss):
    return {
        "config": {
            "learning_rate": rate
        },
        "best_test_top1": best,
        "best_epoch": 20,
        "best_test_loss": loss,
        "test_top1": best - 0.1,
        "test_loss": 9.0,
        "wall_seconds": 2.0
    }

  results = study.searched_results(
      [run(0.001, 0.3, 1.0), run(0.005, 0.6, 0.5),
       run(0.01, 0.6, 0.4)])
  assert (results["selected_learning_rate"], results["test_top1"],
          results["test_loss"]) == (0.005, 0.6, 0.5)
  assert results["final_test_top1"] == pytest.approx(0.5) and results["wall_seconds"] == 6.0
  nothing = study.searched_results([run(0.001, 0.0, 1.0)])
  assert (nothing["selected_learning_rate"], nothing["test_top1"]) == (0.0, 0.0)
