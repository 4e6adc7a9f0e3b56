"""Scoring runs: per-epoch statistics keyed by id, scores, and selection from a score file."""

import functools
import glob
import os
import time
import types

import jax
import numpy as np
import optax
import pytest

from hardlabel_jax import difficulty
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import scoring
from hardlabel_jax import selection
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax.data import sources
from helpers import Killed
from helpers import tiny_config


def score_config(**overrides):
  # 20 images per class are scored: 200 examples, 3 epochs of batch 16 (37 steps).
  # Windows spanning the 3-epoch run: W = 1, J = K − W = 2.
  fields = dict(task="score", images_per_class=20, score_epochs=3, cad_num_windows=1)
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
  np.testing.assert_allclose(loaded.scores["aum_eval_logit"], per_epoch["margin"].mean(0),
                             rtol=1e-6)
  np.testing.assert_array_equal(loaded.scores["forgetting"],
                                difficulty.forgetting_events(per_epoch["correct"]))
  np.testing.assert_array_equal(loaded.scores["final_prediction"], per_epoch["prediction"][-1])
  # CAD with J=2, W=1 over K=3 epochs: U_0 = std(p_0, p_1) (the window before the last).
  np.testing.assert_allclose(loaded.scores["cad"], np.std(per_epoch["true_prob"][:2], 0, ddof=1),
                             rtol=1e-5, atol=1e-7)
  for name, values in scores.items():
    np.testing.assert_array_equal(loaded.scores[name], values)


def _recorded_margins(workdir):
  """The (step range, ids, margins) of every training-margin chunk of a scoring run."""
  chunks = []
  for path in sorted(glob.glob(os.path.join(workdir, scoring.EPOCHS_DIR, "margins_*.npz"))):
    first, last = map(int, os.path.basename(path)[len("margins_"):-len(".npz")].split("_"))
    with np.load(path) as chunk:
      chunks.append(((first, last), chunk["id"], chunk["margin"]))
  return chunks


def test_aum_is_the_mean_of_the_recorded_training_batch_margins(scored):
  # CCS's AUM (haizhongzheng/Coverage-centric-coreset-selection: core/training/Trainer.py L42–49
  # logs every training mini-batch's outputs, generate_importance_score.py L91–108 accumulates
  # p_y − max_{i≠y} p_i per index): the mean of each example's recorded training-batch margins.
  workdir, scores = scored
  chunks = _recorded_margins(workdir)
  # Chunks end at every checkpoint (every 4 steps) and at the last of the 37 steps.
  # A chunk ends wherever a checkpoint is saved: orbax saves step 1 of a run, then every 4th.
  assert [steps for steps, _, _ in chunks
         ] == [(1, 1)] + [(max(s - 3, 2), s) for s in range(4, 37, 4)] + [(37, 37)]
  ids = np.concatenate([i for _, i, _ in chunks])
  margins = np.concatenate([m for _, _, m in chunks])
  assert ids.size == 37 * 16 and np.all((margins >= -1) & (margins <= 1))
  loaded = selection.load_scores(os.path.join(workdir, scoring.SCORES_FILE))
  assert loaded.header["aum_undrawn_examples"] == 0
  counts = {i: int(np.sum(ids == i)) for i in loaded.ids.tolist()}
  # ⌊3 · 200 / 16⌋ = 37 steps draw 592 of the 600 epoch slots: 8 examples twice, 192 three times.
  assert sorted(counts.values()) == [2] * 8 + [3] * 192
  want = [margins[ids == i].mean() for i in loaded.ids.tolist()]
  np.testing.assert_allclose(loaded.scores["aum"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(scores["aum"], loaded.scores["aum"])


def test_recorded_margins_are_those_of_the_training_forward_pass():
  # The HL step records the margins of the train-mode forward pass its gradient comes from
  # (the official Trainer logs `outputs` of the very forward the loss is computed on).
  mesh = mesh_lib.data_mesh()
  model = models.create_model("convnet_d3", 5, width=8, norm="batch")
  tx = optax.sgd(0.1)
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, model, tx, input_shape=(1, 12, 12, 3)),
      out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
      "image": rng.normal(size=(16, 12, 12, 3)).astype(np.float32),
      "label": rng.integers(0, 5, 16).astype(np.int32),
      "partner_label": rng.integers(0, 5, 16).astype(np.int32),
      "mix_lambda": np.ones(16, np.float32),
      "id": np.arange(100, 116).astype(np.int64),
  }
  logits, _ = model.apply(state.variables(), batch["image"], train=True, mutable=["batch_stats"])
  want = difficulty.probability_margin(logits, batch["label"])
  step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, model=model, tx=tx,
                                    schedule=optax.constant_schedule(0.1), num_classes=5,
                                    label_smoothing=0.0, base_rng=jax.random.key(1),
                                    record_margins=True)
  _, metrics = step(state, mesh_lib.global_batch(batch, mesh))
  recorded = metrics[train_steps.PER_EXAMPLE]
  np.testing.assert_array_equal(recorded["id"], batch["id"])
  np.testing.assert_allclose(recorded["margin"], want, rtol=1e-5, atol=1e-6)


def test_training_margins_chunks_resume_and_coverage(tmp_path):
  pool = np.array([30, 10, 20])  # pool order: AUM comes back in it, whatever the id order
  row = lambda ids, margins: {"id": np.array(ids), "margin": np.array(margins, np.float32)}
  margins = scoring.TrainingMargins(pool, str(tmp_path))
  margins(1, row([10, 20], [0.5, 0.1]), False)
  margins(2, row([30, 10], [-0.2, 0.3]), True)  # a checkpoint follows: steps 1–2 on disk
  margins(3, row([20], [0.7]), False)  # killed before the next checkpoint: step 3 is lost
  epochs_dir = tmp_path / scoring.EPOCHS_DIR
  assert sorted(os.listdir(epochs_dir)) == ["margins_00000001_00000002.npz"]
  # A chunk past the checkpoint the run restarts from (written, its checkpoint not) is dropped.
  np.savez(epochs_dir / "margins_00000003_00000004.npz", id=np.array([20]), margin=np.ones(1))
  resumed = scoring.TrainingMargins(pool, str(tmp_path))
  resumed(3, row([20, 30], [0.3, 0.0]), True)
  assert sorted(
      os.listdir(epochs_dir)) == ["margins_00000001_00000002.npz", "margins_00000003_00000003.npz"]
  # Ids 30, 10, 20: (−0.2 + 0)/2, (0.5 + 0.3)/2, (0.1 + 0.3)/2.
  np.testing.assert_allclose(resumed.aum(3), [-0.1, 0.4, 0.2], atol=1e-6)
  with pytest.raises(RuntimeError, match="margins of steps 4..5 are not in"):
    resumed.aum(5)
  with pytest.raises(RuntimeError, match="arrived after step 3"):
    resumed(5, row([10], [0.0]), False)
  # A run restarted from a checkpoint no chunk ends at (an off-interval save) is refused.
  with pytest.raises(RuntimeError, match="margins of steps 4..4 are not in"):
    scoring.TrainingMargins(pool, str(tmp_path))(5, row([10], [0.0]), False)


def test_examples_never_drawn_take_the_final_centre_view_margin(tmp_path):
  # ⌊N / batch⌋ steps of a one-epoch run leave N mod batch examples out of every training batch.
  epochs_dir = tmp_path / scoring.EPOCHS_DIR
  epochs_dir.mkdir()
  stats = dict(true_prob=np.full(3, 0.5, np.float32), el2n=np.zeros(3, np.float32),
               margin=np.zeros(3, np.float32), prob_margin=np.array([0.1, 0.2, 0.3], np.float32),
               correct=np.ones(3, bool), prediction=np.zeros(3, np.int32))
  recorder = types.SimpleNamespace(path=lambda e: str(epochs_dir / f"epoch_{e:04d}.npz"))
  np.savez(recorder.path(0), **stats)
  info = types.SimpleNamespace(name="toy", fingerprint="fp")
  data = types.SimpleNamespace(train=types.SimpleNamespace(info=info), pool_ids=np.arange(3))
  margins = types.SimpleNamespace(aum=lambda steps: np.array([0.5, np.nan, -0.5], np.float32))
  scores = scoring.write_scores(score_config(score_epochs=1), str(tmp_path), data, recorder, 1,
                                types.SimpleNamespace(step=1), 0.5, margins)
  np.testing.assert_allclose(scores["aum"], [0.5, 0.2, -0.5])
  header = selection.load_scores(str(tmp_path / scoring.SCORES_FILE)).header
  assert header["aum_undrawn_examples"] == 1


@pytest.mark.slow
def test_killed_and_resumed_scoring_run_gives_the_same_scores(scored, tmp_path):
  workdir = str(tmp_path / "resumed")

  def kill_at_6(step):
    if step == 6:
      raise Killed("simulated preemption after step 6")

  with pytest.raises(Killed):
    plan.score(score_config(), workdir, step_hook=kill_at_6)
  epochs_dir = os.path.join(workdir, scoring.EPOCHS_DIR)
  assert sorted(
      os.listdir(epochs_dir)) == ["margins_00000001_00000001.npz", "margins_00000002_00000004.npz"]
  # A chunk written past the checkpoint a run restarts from is recorded anew.
  stale = os.path.join(epochs_dir, "margins_00000005_00000008.npz")
  np.savez(stale, id=np.zeros(64, np.int64), margin=np.full(64, 9.0, np.float32))
  resumed = plan.score(score_config(), workdir)
  with np.load(stale) as chunk:
    assert chunk["margin"].max() <= 1  # rewritten by the resumed run
  _, whole = scored
  assert sorted(resumed) == sorted(whole)
  for name, values in whole.items():
    np.testing.assert_allclose(resumed[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_scoring_run_killed_after_its_first_checkpoint_resumes(scored, tmp_path):
  """Orbax saves step 1: its margins must be on disk too (a kill at step 2 once stranded a run)."""
  workdir = str(tmp_path / "resumed")

  def kill_at_2(step):
    if step == 2:
      # The save of step 1 is asynchronous: the kill comes once it has committed.
      deadline = time.monotonic() + 60
      while not os.path.exists(os.path.join(workdir, "checkpoints", "1")):
        assert time.monotonic() < deadline, "checkpoint 1 never committed"
        time.sleep(0.05)
      raise Killed("simulated preemption after step 2")

  with pytest.raises(Killed):
    plan.score(score_config(), workdir, step_hook=kill_at_2)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  resumed = plan.score(score_config(), workdir)
  _, whole = scored
  for name, values in whole.items():
    np.testing.assert_allclose(resumed[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


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
  extra = dict(ccs_strata=4, ccs_scope="per_class") if method == "ccs" else {}
  config = tiny_config(selection=method, images_per_class=5,
                       scores_file=os.path.join(workdir, scoring.SCORES_FILE), **extra)
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


def test_ccs_pool_is_chosen_over_the_whole_scored_pool_by_default(scored):
  # The official CCS prunes and stratifies over the whole data set (train.py L135–141), with the
  # paper's β at the pruning rate: 50 of 200 kept is 75%, β = 0.1 (CCS paper, Appendix B).
  workdir, _ = scored
  config = tiny_config(selection="ccs", images_per_class=5,
                       scores_file=os.path.join(workdir, scoring.SCORES_FILE))
  pool = run_data.load_run_data(config).pool_ids
  loaded = selection.load_scores(config.scores_file)
  labels = np.asarray(sources.load_source("embedded_mnist", "train").labels())[loaded.ids]
  want = loaded.ids[selection.select_ccs(loaded.scores["aum"], labels, 5, beta=0.1,
                                         seed=config.subset_seed)]
  np.testing.assert_array_equal(pool, np.sort(want))
  assert len(pool) == 50
  lowest = loaded.ids[np.argsort(loaded.scores["aum"])[:20]]  # ⌊0.1 · 200⌋ pruned first
  assert not set(pool.tolist()) & set(lowest.tolist())


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
