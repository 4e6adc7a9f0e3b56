"""End-to-end HL training: results, resume after a kill, TFDS path, and clear errors."""

import json
import os

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from hardlabel_jax import config_schema
from hardlabel_jax import trainer
from hardlabel_jax.data import sources


def tiny_config(**overrides):
  """A seconds-long run on the embedded data: 10 images per class, a narrow ConvNet."""
  config = config_schema.default_config()
  config.dataset = "embedded_mnist"
  config.images_per_class = 10
  config.model_kwargs.width = 8
  config.global_batch_size = 16
  config.eval_batch_size = 200
  config.budget_examples = 16 * 10
  config.checkpoint_every_steps = 4
  config.log_every_steps = 5
  config.learning_rate = 0.05
  config.tensorboard = False
  for key, value in overrides.items():
    config[key] = value
  return config


class Killed(Exception):
  pass


def _kill_at(step_to_die):
  def hook(step):
    if step == step_to_die:
      raise Killed(f"simulated preemption after step {step}")
  return hook


def test_run_writes_results_and_metrics(tmp_path):
  results = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  saved = json.loads((tmp_path / "results.json").read_text())
  for key in ("test_top1", "test_loss", "steps", "examples_seen", "wall_seconds", "config"):
    assert key in saved
  assert saved["steps"] == 10 and saved["examples_seen"] == 160
  assert saved["pool_size"] == 100 and saved["regime"] == "hl" and saved["label_bytes"] == 0
  assert saved["config"]["images_per_class"] == 10
  assert 0.0 <= saved["test_top1"] <= 1.0 and np.isfinite(saved["test_loss"])
  assert results["test_top1"] == saved["test_top1"]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 5, 10]
  assert rows[-1]["test_top1"] == saved["test_top1"]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
  config = tiny_config(cutmix_alpha=1.0)
  whole = trainer.train_and_evaluate(config, str(tmp_path / "whole"))
  with pytest.raises(Killed):
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"), step_hook=_kill_at(6))
  resumed = trainer.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] == 4  # the last checkpoint before the kill
  chex.assert_trees_all_close(resumed["state"].params, whole["state"].params, atol=1e-6)
  chex.assert_trees_all_close(resumed["state"].opt_state, whole["state"].opt_state, atol=1e-6)
  assert resumed["test_top1"] == whole["test_top1"]


def test_finished_run_rerun_resumes_at_the_end(tmp_path):
  trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  again = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  assert again["resumed_from_step"] == 10


def test_workdir_of_another_config_is_refused(tmp_path):
  trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  before = (tmp_path / "results.json").read_text()
  with pytest.raises(ValueError, match="different config.*learning_rate"):
    trainer.train_and_evaluate(tiny_config(learning_rate=0.1), str(tmp_path))
  assert (tmp_path / "results.json").read_text() == before


def test_changing_only_logging_fields_still_resumes(tmp_path):
  trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  again = trainer.train_and_evaluate(tiny_config(log_every_steps=2), str(tmp_path))
  assert again["resumed_from_step"] == 10


@pytest.mark.parametrize("overrides, error, match", [
    ({"dataset": "no_such_set"}, sources.DataSourceError, "tfds:"),
    ({"global_batch_size": 12}, ValueError, "not divisible by the 8 devices"),
    ({"images_per_class": 401}, ValueError, "larger than the smallest class"),
    ({"budget_examples": 8}, ValueError, "less than one global batch"),
    ({"regime": "nope"}, ValueError, "config.regime"),
    ({"label_smoothing": 1.5}, ValueError, "config.label_smoothing"),
])
def test_bad_config_fails_before_writing(tmp_path, overrides, error, match):
  workdir = tmp_path / "run"
  with pytest.raises(error, match=match):
    trainer.train_and_evaluate(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_missing_tfds_data_says_how_to_prepare(tmp_path):
  config = tiny_config(dataset="tfds:cifar10", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(sources.DataSourceError, match="tfds build"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_nan_loss_fails_fast_naming_the_step(tmp_path):
  config = tiny_config(learning_rate=1e30, optimizer="sgd")
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step \d+"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "results.json").exists()


def test_tfds_path_end_to_end_on_mock_data(tmp_path):
  config = tiny_config(dataset="tfds:cifar10", image_size=32, images_per_class=2,
                       budget_examples=32, eval_batch_size=16, data_dir=str(tmp_path / "d"))
  with tfds.testing.mock_data(num_examples=40):
    results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["steps"] == 2 and results["pool_size"] == 20
  assert results["dataset"].startswith("tfds:cifar10")
  assert 0.0 <= results["test_top1"] <= 1.0


def kd_config(teacher_dir, **overrides):
  """A tiny student distilled from the tiny teacher run in `teacher_dir`."""
  config = tiny_config(regime="kd", teacher_workdir=str(teacher_dir), distillation_loss="rld",
                       kd_warmup_epochs=1.0)
  config.model_kwargs.width = 4
  for key, value in overrides.items():
    config[key] = value
  return config


def test_kd_student_learns_from_a_teacher_run(tmp_path):
  teacher = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "teacher"))
  student = trainer.train_and_evaluate(kd_config(tmp_path / "teacher"), str(tmp_path / "student"))
  assert student["regime"] == "kd" and student["steps"] == 10
  assert student["teacher_test_top1"] == teacher["test_top1"]
  assert student["teacher_workdir"] == str(tmp_path / "teacher")
  assert np.isfinite(student["test_loss"])


def test_kd_trains_a_missing_teacher_from_teacher_config(tmp_path):
  config = kd_config("", distillation_loss="kd", kd_warmup_epochs=0.0)
  config.teacher_config = tiny_config()
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "teacher" / "results.json").exists()
  assert results["teacher_workdir"] == str(tmp_path / "teacher")


def test_kd_without_teacher_fails_before_writing(tmp_path):
  with pytest.raises(FileNotFoundError, match="teacher_workdir"):
    trainer.train_and_evaluate(kd_config(tmp_path / "none"), str(tmp_path / "student"))
  assert not (tmp_path / "student").exists()


def test_kd_teacher_of_another_input_size_is_refused(tmp_path):
  trainer.train_and_evaluate(tiny_config(), str(tmp_path / "teacher"))
  with pytest.raises(ValueError, match="config.image_size"):
    trainer.train_and_evaluate(kd_config(tmp_path / "teacher", image_size=32),
                               str(tmp_path / "student"))


def test_kd_with_cutmix_and_a_label_loss_is_refused(tmp_path):
  with pytest.raises(ValueError, match="config.cutmix_alpha"):
    trainer.train_and_evaluate(kd_config(tmp_path, cutmix_alpha=1.0), str(tmp_path / "s"))


@pytest.mark.slow
def test_imagenet_config_runs_end_to_end_on_mock_data(tmp_path):
  """configs/imagenet_hl_resnet18.py as a TPU run would use it, on TFDS mock ImageNet."""
  path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "imagenet_hl_resnet18.py")
  config = config_schema.load_config_file(path, "runlocal")
  ids = tmp_path / "ids.json"
  ids.write_text(json.dumps(list(range(16))))
  config.subset_ids_file = str(ids)
  config.budget_examples = 32
  config.data_dir = str(tmp_path / "tfds")
  config.tensorboard = False
  with tfds.testing.mock_data(num_examples=24):
    results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["dataset"].startswith("tfds:imagenet2012")
  assert results["steps"] == 2 and results["pool_size"] == 16
  assert results["config"]["model"] == "resnet18" and results["config"]["image_size"] == 64
  assert np.isfinite(results["test_loss"])
