"""Hard Truths' own protocol: epochs per subset, K per size, spanning windows, both CAD signals.

The official Dynamic Uncertainty selection (BAAI-DCAI/Dataset-Pruning ImageNet/get_coreset.py)
and the paper's Eq. 1–2 (DESIGN.md §7; no official CAD-Prune code is public) are ported to NumPy
here and compared with the library on a random [K, N] trajectory.
"""

import csv
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import difficulty
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import scoring
from hardlabel_jax import selection
from hardlabel_jax import study
from hardlabel_jax import study_report
from hardlabel_jax import train_steps
from hardlabel_jax.data import class_cut
from hardlabel_jax.data import crops
from hardlabel_jax.data import dsa
from helpers import Killed
from helpers import tiny_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
EMBEDDED_COUNTS = np.full(10, 400)  # the embedded train split: 400 images of each digit


def paper_study(**overrides):
  """HL × random, EL2N-hard, CAD-Prune, full × IPC 10, 50 under epochs per subset (E = 240)."""
  fields = dict(task="study", images_per_class=0, study_regimes=("hl",),
                study_methods=("random", "el2n_hard", "cad_prune", "full"),
                study_images_per_class=(10, 50), study_seeds=(0,), study_score_epochs=6,
                study_budget_rule="epochs_per_subset", study_epochs_per_subset=240.0,
                budget_examples=0, cache_dir="/cache")
  return tiny_config(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------
# NumPy ports of the official selection code and of the paper's equations.


def official_dynamic_uncertainty(true_prob, window):
  """BAAI-DCAI/Dataset-Pruning ImageNet/get_coreset.py, line by line, on a [K, N] array.

  A buffer of the last `window` epochs per example; after epoch idx (0-based) with
  window − 1 <= idx < K − 1 it appends torch.std (unbiased) × 10; the score is their mean. (The
  official loop updates only examples with a non-zero probability; the trajectories here have
  none at zero.)
  """
  epochs, n = true_prob.shape
  history = np.zeros((n, window))
  uncertainty = []
  for idx in range(epochs):
    history = np.concatenate([history[:, 1:], true_prob[idx][:, None]], axis=1)
    if window - 1 <= idx < epochs - 1:
      uncertainty.append(np.std(history, axis=1, ddof=1) * 10)
  return np.mean(np.array(uncertainty), axis=0)


def paper_cad(trajectory, window, num_windows):
  """Eq. 1–2: U_k = std_{j<J} s_{k+j} (unbiased); CAD = (1/W) Σ_{k=K−J−W}^{K−J−1} U_k."""
  epochs = trajectory.shape[0]
  u = [np.std(trajectory[k:k + window], axis=0, ddof=1) for k in range(epochs - window + 1)]
  return np.mean(u[epochs - window - num_windows:epochs - window], axis=0)


@pytest.mark.parametrize("epochs", [6, 30])
def test_spanning_cad_is_the_official_dynamic_uncertainty_over_every_window(epochs):
  rng = np.random.default_rng(epochs)
  true_prob = rng.uniform(0.01, 1.0, (epochs, 64)).astype(np.float32)
  window, num_windows = scoring.cad_windows(epochs, 2, rule="span")
  assert window == epochs - 2
  ours = np.asarray(difficulty.cad_scores(true_prob, window, num_windows))
  # J = K − W: the W windows CAD averages are all the windows the official loop appends.
  np.testing.assert_allclose(ours * 10, official_dynamic_uncertainty(true_prob, window), rtol=1e-5)
  np.testing.assert_allclose(ours, paper_cad(true_prob, window, num_windows), rtol=1e-5)
  # The same ranking, hence the same selection (the ×10 is a scale).
  np.testing.assert_array_equal(
      np.argsort(ours, kind="stable")[-10:],
      np.argsort(official_dynamic_uncertainty(true_prob, window), kind="stable")[-10:])


def test_fixed_window_cad_is_the_last_w_of_the_official_windows():
  rng = np.random.default_rng(1)
  true_prob = rng.uniform(0.01, 1.0, (30, 16))
  ours = np.asarray(difficulty.cad_scores(true_prob.astype(np.float32), 6, 2))
  np.testing.assert_allclose(ours, paper_cad(true_prob, 6, 2), rtol=1e-5)
  # Hand-worked: windows k = 22 and 23 (K − J − W = 22), each the std of 6 epochs.
  expected = (np.std(true_prob[22:28], axis=0, ddof=1) + np.std(true_prob[23:29], axis=0, ddof=1))
  np.testing.assert_allclose(ours, expected / 2, rtol=1e-5)


def test_the_score_file_holds_cad_of_both_signals_and_the_official_dynamic_uncertainty():
  rng = np.random.default_rng(2)
  per_epoch = {
      "true_prob": rng.uniform(0.01, 1, (6, 20)).astype(np.float32),
      "el2n": rng.uniform(0, 1.4, (6, 20)).astype(np.float32),
      "margin": rng.normal(size=(6, 20)).astype(np.float32),
      "correct": rng.uniform(size=(6, 20)) > 0.5,
      "prediction": rng.integers(0, 10, (6, 20)).astype(np.int32),
  }
  scores = scoring.scores_from_statistics(per_epoch, 4, 2)
  np.testing.assert_array_equal(scores["final_prediction"], per_epoch["prediction"][-1])
  np.testing.assert_allclose(scores["cad"], paper_cad(per_epoch["true_prob"], 4, 2), rtol=1e-5)
  np.testing.assert_allclose(scores["cad_el2n"], paper_cad(per_epoch["el2n"], 4, 2), rtol=1e-5)
  np.testing.assert_allclose(scores["dynamic_uncertainty"] * 10,
                             official_dynamic_uncertainty(per_epoch["true_prob"], 4), rtol=1e-5)
  assert selection.CAD_SCORES == {"true_prob": "cad", "el2n": "cad_el2n"}


def test_cad_signal_picks_the_trajectory_the_subset_is_ranked_by(tmp_path):
  labels = np.repeat(np.arange(10), 400)
  ids = np.arange(4000)
  rng = np.random.default_rng(3)
  scores = {"cad": rng.uniform(size=4000), "cad_el2n": rng.uniform(size=4000)}
  path = str(tmp_path / "scores.npz")
  train = run_data.train_source(tiny_config())
  selection.save_scores(path, scores, ids, {
      "dataset": train.info.name,
      "fingerprint": train.info.fingerprint
  })
  for signal, name in selection.CAD_SCORES.items():
    config = tiny_config(selection="cad_prune", images_per_class=3, scores_file=path,
                         cad_signal=signal)
    chosen = run_data.scored_pool(config, train)
    expected = np.concatenate([
        np.sort(np.flatnonzero(labels == c)[np.argsort(-scores[name][labels == c])[:3]])
        for c in range(10)
    ])
    np.testing.assert_array_equal(np.sort(chosen), np.sort(expected))
  with pytest.raises(ValueError, match=r"config\.cad_signal: 'logit' is not one of"):
    config_schema.validate(tiny_config(selection="cad_prune", scores_file=path, cad_signal="logit"))


# ----------------------------------------------------------------------------------------------
# The budget rule and K per subset size.


def test_epochs_per_subset_trains_every_cell_its_own_epochs_and_matches_k_per_size():
  config = paper_study(study_full_epochs=30.0)
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  ipc10 = configs[study.Cell("hl", "random", 10, 0)]
  ipc50 = configs[study.Cell("hl", "cad_prune", 50, 0)]
  full = configs[study.Cell("hl", "full", 0, 0)]
  for cfg, epochs in ((ipc10, 240.0), (ipc50, 240.0), (full, 30.0)):
    assert (cfg.budget_examples, cfg.num_epochs) == (0, epochs)
  # K = E·n/N: 240·100/4,000 = 6 at IPC10, 240·500/4,000 = 30 at IPC50.
  cad10 = configs[study.Cell("hl", "cad_prune", 10, 0)].score_config
  cad50 = ipc50.score_config
  assert (cad10.score_epochs, cad50.score_epochs) == (6, 30)
  assert (cad10.cad_window_rule, cad10.cad_num_windows) == ("span", 2)
  # One scoring run per distinct K: EL2N's 6 epochs are CAD's at IPC10 (the same identity).
  el2n = configs[study.Cell("hl", "el2n_hard", 50, 0)].score_config
  identity = checkpointing.run_identity
  assert identity(el2n) == identity(cad10) != identity(cad50)


@pytest.mark.parametrize("rounding, expected", [("ceil", 7), ("round", 6), ("floor", 6)])
def test_a_k_that_is_not_whole_is_rounded_by_the_named_rule(rounding, expected):
  # E = 250: K = 250·100/4,000 = 6.25.
  config = paper_study(study_methods=("cad_prune",), study_images_per_class=(10,),
                       study_epochs_per_subset=250.0, cad_epochs_rounding=rounding)
  cell = study.validate_study(config, EMBEDDED_COUNTS,
                              "/cache")[study.Cell("hl", "cad_prune", 10, 0)]
  assert cell.score_config.score_epochs == expected
  assert selection.cad_prune_epochs_exact(4000, 100, 250.0) == 6.25


def test_the_fixed_budget_rule_keeps_one_k_for_every_size():
  config = paper_study(study_budget_rule="fixed_examples", study_epochs_per_subset=0.0,
                       budget_examples=24_000)
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  ks = {
      c.ipc: cfg.score_config.score_epochs for c, cfg in configs.items() if c.method == "cad_prune"
  }
  assert ks == {10: 6, 50: 6}  # K = B / N
  assert configs[study.Cell("hl", "random", 50, 0)].budget_examples == 24_000


@pytest.mark.parametrize("overrides, message", [
    (dict(study_epochs_per_subset=0.0), r"config\.study_epochs_per_subset: .* positive"),
    (dict(study_budget_rule="fixed_examples", budget_examples=24_000),
     r"config\.study_epochs_per_subset: only study_budget_rule='epochs_per_subset'"),
    (dict(budget_examples=24_000), r"config\.budget_examples: set to 24000 but task=study"),
    (dict(study_budget_rule="by_size"), r"config\.study_budget_rule: 'by_size' is not one of"),
    (dict(study_first_regimes=("sl",)), r"config\.study_first_regimes: 'sl' is not a regime"),
])
def test_budget_rule_fields_are_checked(overrides, message):
  with pytest.raises(ValueError, match=message):
    study.validate_study(paper_study(**overrides), EMBEDDED_COUNTS, "/cache")


def test_a_subset_outside_cads_range_is_refused_with_nothing_written(tmp_path):
  # E = 80 at IPC10: K = 80·100/4,000 = 2, J = K − W = 0 < 2.
  cache, workdir = tmp_path / "cache", tmp_path / "study"
  config = paper_study(study_epochs_per_subset=80.0, cache_dir=str(cache))
  with pytest.raises(
      ValueError, match=r"config\.cad_window_rule: CAD-Prune at 10 images per "
      r"class .* K=2 epochs.*outside CAD-Prune's range at this budget"):
    study.run(config, str(workdir))
  assert not workdir.exists() and not cache.exists()
  # The same for a compute-matched scoring run of its own.
  score = tiny_config(task="score", images_per_class=0, score_epochs=0,
                      cad_subset_images_per_class=10, cad_downstream_epochs=80.0)
  with pytest.raises(ValueError, match="outside CAD-Prune's range"):
    scoring.scoring_epochs(score, 4000, 10)


def test_the_batch_is_capped_at_the_pool_as_dcs_loader_and_hl_trains_first():
  config = paper_study(study_regimes=("hl", "sl_kd"), study_first_regimes=("hl",),
                       study_batch_at_most_pool=True, global_batch_size=256,
                       study_methods=("random", "full"), teacher_workdir="/teacher")
  configs = study.validate_study(config, EMBEDDED_COUNTS, "/cache")
  batches = {c.name: cfg.global_batch_size for c, cfg in configs.items()}
  assert batches["hl-random-ipc10-s0"] == 96  # 100 images, rounded down to a multiple of 8
  assert batches["hl-random-ipc50-s0"] == 256
  assert batches["sl_kd-full-all-s0"] == 256
  order = [c.regime for c in study.training_order(config, list(configs))]
  assert order == ["hl"] * 3 + ["sl_kd"] * 3


def test_results_csv_and_report_name_the_budget_rule_and_cads_k():
  rows = []
  for method, ipc, k in (("random", 10, ""), ("cad_prune", 10, 6), ("cad_prune", 50, 30)):
    for seed in (0, 1):
      rows.append({
          "regime": "hl",
          "method": method,
          "ipc": ipc,
          "seed": seed,
          "test_top1": 0.5 + 0.01 * seed + (0.1 if method == "cad_prune" else 0),
          "test_loss": 1.0,
          "budget_rule": "epochs_per_subset",
          "examples_seen": 240 * ipc * 10,
          "steps": 240 * ipc * 10 // 96,
          "epochs": 240.0,
          "pool_size": ipc * 10,
          "label_source": "hard",
          "label_bytes": 0,
          "cad_scoring_epochs": k,
          "cad_window_used": k and k - 2,
          "wall_seconds": 1.0
      })
  table = study_report.protocol_table(rows)
  assert "| cad_prune | 50 | epochs_per_subset | 240 | 120000 | 1250 | 30 | 28 |" in table
  assert "| random | 10 | epochs_per_subset | 240 | 24000 | 250 | – | – |" in table
  gains = study_report.gain_table(study_report.summarize(rows))
  assert "| HL | cad_prune | +10.0 ± 0.7 (2) | – |" in gains
  assert study_report.budget_line(
      rows,
      None) == ("Budget rule: epochs per subset (every cell the same epochs of its own pool).")
  assert "budget_rule" in study.CSV_FIELDS and "cad_scoring_epochs" in study.CSV_FIELDS


def test_the_report_redrawn_from_a_csv_reads_the_protocol_columns(tmp_path):
  path = tmp_path / "results.csv"
  row = {field: "" for field in study.CSV_FIELDS}
  row.update(regime="hl", method="cad_prune", ipc=10, seed=0, test_top1=0.5, test_loss=1.0,
             budget_rule="epochs_per_subset", examples_seen=30000, steps=312, epochs=300.0,
             pool_size=100, label_source="hard", label_bytes=0, cad_scoring_epochs=6,
             cad_window_used=4, wall_seconds=1.0)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, study.CSV_FIELDS)
    writer.writeheader()
    writer.writerow(row)
  (read,) = study_report.read_csv(str(path))
  assert (read["cad_scoring_epochs"], read["cad_window_used"],
          read["budget_rule"]) == (6, 4, "epochs_per_subset")


# ----------------------------------------------------------------------------------------------
# The class cut: a pool of n images per class seen as the whole train split.


def test_the_class_cut_is_the_first_n_of_every_class_renumbered_with_its_own_fingerprint():
  full = run_data.train_source(tiny_config())
  cut = run_data.train_source(tiny_config(train_images_per_class=7))
  labels = np.asarray(full.labels())
  assert len(cut) == 70 and np.bincount(cut.labels()).tolist() == [7] * 10
  expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:7] for c in range(10)]))
  np.testing.assert_array_equal(cut.source_ids(), expected)
  for index in (0, 33, 69):
    example = cut[index]
    original = full[int(expected[index])]
    assert example["id"] == index and example["label"] == original["label"]
    np.testing.assert_array_equal(example["image"], original["image"])
  assert cut.info.fingerprint != full.info.fingerprint
  assert cut.info.fingerprint != run_data.train_source(
      tiny_config(train_images_per_class=8)).info.fingerprint
  assert (cut.info.mean, cut.info.std) == (full.info.mean, full.info.std)
  with pytest.raises(IndexError):
    cut[70]
  with pytest.raises(ValueError, match=r"config\.train_images_per_class: 401 images per class"):
    class_cut.first_per_class(labels, 401)
  with pytest.raises(ValueError, match=r"config\.train_images_per_class: must be an int >= 0"):
    config_schema.validate(tiny_config(train_images_per_class=-1))


# ----------------------------------------------------------------------------------------------
# DSA as a training-crop recipe: on the device, keyed by (seed, step), any mesh, exact on resume.


def test_the_dsa_recipe_trains_on_the_whole_image_augmented_by_seed_and_step():
  config = tiny_config(train_crop_recipe="dsa")
  spec = run_data.crop_spec(config)
  assert (spec.scale, spec.ratio, spec.flip, spec.cutmix_alpha) == ((1.0, 1.0), (1.0, 1.0), False,
                                                                    0.0)
  # A square image at the output size passes the host crop unchanged: DSA sees the image itself.
  data = run_data.load_run_data(config)
  image = data.train[int(data.pool_ids[0])]["image"]
  crop, _, _ = crops.crop_image(image, 0, 0, 0, spec)
  np.testing.assert_array_equal(crop, image)
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
  batch = {"image": images}
  augment = functools.partial(dsa.augment, strategy=config.dsa_strategy)
  base = jax.random.PRNGKey(config.seed)
  step3 = train_steps.augmented(batch, augment, base, jnp.int32(3))["image"]
  again = train_steps.augmented(batch, augment, base, jnp.int32(3))["image"]
  step4 = train_steps.augmented(batch, augment, base, jnp.int32(4))["image"]
  np.testing.assert_array_equal(step3, again)
  assert not np.allclose(step3, images) and not np.allclose(step3, step4)
  key = jax.random.fold_in(jax.random.fold_in(base, 3), 1)  # the documented stream
  np.testing.assert_array_equal(step3, dsa.augment(images, key, config.dsa_strategy))
  assert train_steps.augmented(batch, None, base, jnp.int32(3)) is batch


@pytest.mark.parametrize("overrides, message", [
    (dict(regime="sl", teacher_workdir="/t"), r"config\.train_crop_recipe: 'dsa' augments on the "
     r"device, so a 'sl' run"),
    (dict(dsa_strategy="color_warp"), r"config\.dsa_strategy: .*'warp'"),
    (dict(crop_scale=(0.5, 1.0)), r"config\.crop_scale: set to .* never reads it"),
])
def test_the_dsa_recipe_refuses_what_it_cannot_honour(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_schema.validate(tiny_config(train_crop_recipe="dsa", **overrides))


@pytest.mark.slow
def test_a_dsa_run_is_the_same_on_8_devices_and_after_a_kill(tmp_path):
  config = tiny_config(train_crop_recipe="dsa", schedule="step", step_milestones=(0.5,))
  one = plan.train(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = plan.train(config, str(tmp_path / "eight"), devices=jax.devices()[:8])
  chex.assert_trees_all_close(eight.state.params, one.state.params, atol=2e-5)

  def kill_at_6(step):
    if step == 6:
      raise Killed("simulated preemption after step 6")

  with pytest.raises(Killed):
    plan.train(config, str(tmp_path / "resumed"), devices=jax.devices()[:1], step_hook=kill_at_6)
  resumed = plan.train(config, str(tmp_path / "resumed"), devices=jax.devices()[:1])
  assert resumed.results["resumed_from_step"] == 4
  chex.assert_trees_all_close(resumed.state.params, one.state.params, atol=1e-6)
  assert resumed.results["test_top1"] == one.results["test_top1"]


@pytest.mark.slow
def test_fashion_paper_runlocal_runs_the_protocol_end_to_end(tmp_path):
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_paper.py"), "runlocal")
  rows = study.run(config, str(tmp_path / "study"))
  assert len(rows) == 8
  by_name = {(r["regime"], r["method"]): r for r in rows}
  assert all(r["budget_rule"] == "epochs_per_subset" for r in rows)
  # 80 epochs of 20 images (batch 16: the pool rounded down to a multiple of 8) and 2 of 400.
  assert by_name["hl", "random"]["steps"] == 80 * 20 // 16
  assert by_name["hl", "full"]["examples_seen"] == 2 * 400 // 48 * 48
  assert (by_name["hl", "cad_prune"]["cad_scoring_epochs"],
          by_name["hl", "cad_prune"]["cad_window_used"]) == (4, 2)
  report = (tmp_path / "study" / "report.md").read_text()
  assert "Budget rule: epochs per subset" in report and "## Gain over random" in report
  # CA2D's patches come from the top-mipc images of their class by CAD (provenance).
  (cell,) = [c for c in os.listdir(tmp_path / "study" / "cells") if c.startswith("hl-ca2d")]
  results = json.loads((tmp_path / "study" / "cells" / cell / "results.json").read_text())
  provenance = json.loads(
      open(os.path.join(results["config"]["dataset"].split(":", 1)[1], "provenance.json")).read())
  pool = provenance["candidate_pool"]
  assert pool["rule"] == "cad_top_mipc" and pool["mipc"] == 10
  candidates = {entry["label"]: set(entry["ids"]) for entry in pool["classes"]}
  assert len(provenance["images"]) == 20
  for image in provenance["images"]:
    assert {patch["id"] for patch in image["patches"]} <= candidates[image["label"]]
