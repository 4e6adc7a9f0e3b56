"""Scoring runs: per-epoch statistics keyed by id, scores, and selection from a score file."""

import os

import jax
import numpy as np
import pytest

from hardlabel_jax import difficulty
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import scoring
from hardlabel_jax import selection
from hardlabel_jax.data import sources
from helpers import tiny_config


def score_config(**overrides):
  # 20 images per class are scored: 200 examples, 3 epochs of batch 16 (37 steps).
  fields = dict(task="score", images_per_class=20, score_epochs=3, cad_window=2, cad_num_windows=1)
  return tiny_config(**{**fields, **overrides})


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("score"))
  scores = plan.score(score_config(), workdir)
  return workdir, scores


def test_scoring_run_records_every_epoch_and_writes_scores(scored):
  workdir, scores = scored
  loaded = selection.load_scores(os.path.join(workdir, scoring.SCORES_FILE))
  pool = run_data.load_run_data(score_config()).pool_ids
  np.testing.assert_array_equal(loaded.ids, pool)  # keyed by stable example id
  assert loaded.header["epochs"] == 3 and loaded.header["model"] == "convnet_d3"
  per_epoch = {
      name: np.stack([
          np.load(os.path.join(workdir, scoring.EPOCHS_DIR, f"epoch_{e:04d}.npz"))[name]
          for e in range(3)
      ]) for name in scoring.STATISTICS
  }
  assert per_epoch["true_prob"].shape == (3, 200)
  np.testing.assert_allclose(loaded.scores["el2n"], per_epoch["el2n"].mean(0), rtol=1e-6)
  np.testing.assert_allclose(loaded.scores["aum"], per_epoch["margin"].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(loaded.scores["forgetting"],
                                difficulty.forgetting_events(per_epoch["correct"]))
  # CAD with J=2, W=1 over K=3 epochs: U_0 = std(p_0, p_1) (the window before the last).
  np.testing.assert_allclose(loaded.scores["cad"], np.std(per_epoch["true_prob"][:2], 0, ddof=1),
                             rtol=1e-5, atol=1e-7)
  for name, values in scores.items():
    np.testing.assert_array_equal(loaded.scores[name], values)


def test_statistics_on_eight_devices_equal_one(scored):
  config = score_config()
  data = run_data.load_run_data(config)
  state = plan.train(tiny_config(images_per_class=20, budget_examples=32),
                     os.path.join(scored[0], "probe")).state
  one = scoring.EpochRecorder(config, data, jax.sharding.Mesh(np.array(jax.devices()[:1]),
                                                              ("data",)), "/nonexistent")
  eight = scoring.EpochRecorder(config, data, jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
                                "/nonexistent")
  a, b = one.statistics(state), eight.statistics(state)
  for name in scoring.STATISTICS:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, score", [("el2n_hard", "el2n"), ("el2n_easy", "el2n"),
                                           ("cad_prune", "cad"), ("ccs", "aum")])
def test_training_pool_selected_from_a_score_file(scored, method, score):
  workdir, scores = scored
  config = tiny_config(selection=method, images_per_class=5,
                       scores_file=os.path.join(workdir, scoring.SCORES_FILE), ccs_strata=4)
  pool = run_data.load_run_data(config).pool_ids
  loaded = selection.load_scores(config.scores_file)
  labels = np.asarray(sources.load_source("embedded_mnist", "train").labels())
  assert len(pool) == 50 and np.all(np.bincount(labels[pool], minlength=10) == 5)
  assert set(pool) <= set(loaded.ids.tolist())
  if method in ("el2n_hard", "cad_prune", "el2n_easy"):
    by_id = dict(zip(loaded.ids.tolist(), loaded.scores[score], strict=True))
    for c in range(10):
      chosen = sorted(by_id[i] for i in pool if labels[i] == c)
      others = [by_id[i] for i in loaded.ids if labels[i] == c and i not in set(pool)]
      if method == "el2n_easy":
        assert max(chosen) <= min(others)
      else:
        assert min(chosen) >= max(others)


def test_score_file_of_another_data_set_is_refused(scored, tmp_path):
  workdir, _ = scored
  loaded = selection.load_scores(os.path.join(workdir, scoring.SCORES_FILE))
  other = str(tmp_path / "other.npz")
  selection.save_scores(other, loaded.scores, loaded.ids, {
      **loaded.header, "fingerprint": "someone-else"
  })
  config = tiny_config(selection="el2n_hard", images_per_class=5, scores_file=other)
  with pytest.raises(ValueError, match="someone-else"):
    plan.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_cad_prune_epochs_come_from_the_downstream_budget():
  config = score_config(score_epochs=0, cad_subset_images_per_class=10, cad_downstream_epochs=30.0)
  # K·N = E_down·n: K = 30 · 100 / 200 = 15.
  assert scoring.scoring_epochs(config, pool_size=200, num_classes=10) == 15


def test_a_missing_score_file_is_made_from_score_config(tmp_path):
  config = tiny_config(selection="el2n_hard", images_per_class=5, cache_dir=str(tmp_path / "c"),
                       score_config=score_config(score_epochs=2))
  results = plan.train(config, str(tmp_path / "run"))
  (digest,) = os.listdir(tmp_path / "c" / "scores")
  scores_file = tmp_path / "c" / "scores" / digest / scoring.SCORES_FILE
  assert scores_file.exists() and results.results["pool_size"] == 50
  again = plan.train(config, str(tmp_path / "run2"))  # reuses the scores
  assert os.listdir(tmp_path / "c" / "scores") == [digest]
  assert again.results["test_top1"] == results.results["test_top1"]
