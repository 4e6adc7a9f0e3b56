"""The plan: artefacts keyed by what made them, checked before any write, any device count."""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import image_sets
from hardlabel_jax import plan
from hardlabel_jax import relabel
from hardlabel_jax import scoring
from hardlabel_jax.data import sources
from helpers import tiny_config

EMBEDDED_HL = os.path.join(os.path.dirname(__file__), "..", "configs", "embedded_hl.py")


def _teacher_config(**overrides):
  return tiny_config(budget_examples=16 * 4, **overrides)


def _student(cache_dir, teacher_config=None, teacher_workdir="", **overrides):
  """A KD student whose teacher comes from the cache (teacher_config) or a given workdir."""
  config = tiny_config(regime="kd", budget_examples=16 * 2, cache_dir=str(cache_dir),
                       teacher_workdir=str(teacher_workdir), **overrides)
  config.teacher_config = teacher_config
  return config


def _tree(path) -> dict[str, float]:
  """Every file under `path` with its modification time (empty when `path` is absent)."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      out[full] = os.stat(full).st_mtime_ns
  return out


def _write_folder(root, labels_shift: int) -> str:
  """A 10-class image folder of embedded digits (10 train, 5 test per class), labels shifted."""
  for split, count in (("train", 10), ("test", 5)):
    source = sources.load_source("embedded_mnist", split)
    labels = np.asarray(source.labels())
    for c in range(10):
      folder = root / split / f"class_{(c + labels_shift) % 10}"
      folder.mkdir(parents=True)
      for i, index in enumerate(np.flatnonzero(labels == c)[:count]):
        Image.fromarray(source[int(index)]["image"][..., 0]).save(folder / f"{i:03d}.png")
  return f"imagefolder:{root}"


def test_identity_holds_only_the_fields_a_run_reads():
  hl = tiny_config()
  other = tiny_config()
  other.temperature, other.hald_schedule, other.log_every_steps = 4.0, "S1", 1
  assert cache.run_recipe(hl) == cache.run_recipe(other)  # unread and run-control fields
  assert cache.run_recipe(hl) != cache.run_recipe(tiny_config(learning_rate=0.2))
  score = tiny_config(task="score", score_epochs=3)
  score_warm = tiny_config(task="score", score_epochs=3)
  score_warm.temperature = 2.0
  assert scoring.identity(score, "fp") == scoring.identity(score_warm, "fp")
  assert cache.digest(scoring.identity(score, "fp")) != cache.digest(scoring.identity(score, "x"))
  sl = tiny_config(regime="sl")
  data = {"fingerprint": "fp"}
  assert (relabel.table_identity(sl, data, "t") == relabel.table_identity(
      tiny_config(regime="sl", learning_rate=0.2), data, "t"))
  assert (relabel.table_identity(sl, data, "t")
          != relabel.table_identity(tiny_config(regime="sl", temperature=4.0), data, "t"))


def test_a_stored_identity_is_checked_on_reuse(tmp_path):
  cache.write_identity(str(tmp_path), {"run": {"seed": 0, "width": 8}})
  cache.check_identity(str(tmp_path), {"run": {"seed": 0, "width": 8}}, "x")
  with pytest.raises(cache.IdentityMismatchError, match=r"run.width: saved 8 vs now 16"):
    cache.check_identity(str(tmp_path), {"run": {"seed": 0, "width": 16}}, "the teacher")


@pytest.mark.slow
def test_two_data_sets_sharing_a_cache_get_their_own_teachers(tmp_path):
  shared = tmp_path / "cache"
  folder = _write_folder(tmp_path / "folder", labels_shift=3)
  mnist = plan.train(_student(shared, _teacher_config()), str(tmp_path / "a"))
  other_teacher = _teacher_config(dataset=folder, images_per_class=0)
  other = plan.train(_student(shared, other_teacher, dataset=folder, images_per_class=0),
                     str(tmp_path / "b"))
  assert mnist.results["teacher_workdir"] != other.results["teacher_workdir"]
  assert len(os.listdir(shared / "teachers")) == 2
  for run in (mnist, other):
    with open(os.path.join(run.results["teacher_workdir"], "results.json")) as f:
      teacher_results = json.load(f)
    assert teacher_results["dataset_fingerprint"] == run.results["dataset_fingerprint"]


@pytest.mark.slow
def test_a_changed_teacher_config_trains_a_new_teacher(tmp_path):
  shared = tmp_path / "cache"
  narrow = plan.train(_student(shared, _teacher_config()), str(tmp_path / "a"))
  wide = plan.train(_student(shared, _teacher_config(model_kwargs={"width": 12})),
                    str(tmp_path / "b"))
  assert narrow.results["teacher_workdir"] != wide.results["teacher_workdir"]
  with open(os.path.join(wide.results["teacher_workdir"], "run_config.json")) as f:
    assert json.load(f)["model_kwargs"]["width"] == 12
  again = plan.train(_student(shared, _teacher_config()), str(tmp_path / "c"))
  assert again.results["teacher_workdir"] == narrow.results["teacher_workdir"]  # reused


def test_an_explicit_teacher_that_does_not_match_is_refused_before_any_write(tmp_path, teacher_dir):
  before = _tree(teacher_dir)
  wanted = tiny_config(budget_examples=16 * 12, model_kwargs={"width": 16})
  config = _student(tmp_path / "cache", wanted, teacher_workdir=teacher_dir)
  with pytest.raises(cache.IdentityMismatchError, match=r"model_kwargs.width: saved 8 vs now 16"):
    plan.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
  assert _tree(teacher_dir) == before


def test_an_explicit_teacher_of_another_data_set_is_refused(tmp_path, teacher_dir):
  folder = _write_folder(tmp_path / "folder", labels_shift=0)
  own = _student(tmp_path / "cache", teacher_workdir=teacher_dir)
  plan.check(plan.make_plan(own, str(tmp_path / "ok")))  # the teacher's own split: accepted
  folder_teacher = str(tmp_path / "folder_teacher")
  plan.train(tiny_config(dataset=folder, images_per_class=0, budget_examples=16), folder_teacher)
  before = _tree(folder_teacher)
  mnist_student = _student(tmp_path / "cache", teacher_workdir=folder_teacher)
  with pytest.raises(
      cache.IdentityMismatchError,
      match=r"was trained on 'imagefolder:.*' .* this run trains on 'embedded_mnist'"):
    plan.train(mnist_student, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
  assert _tree(folder_teacher) == before


def test_a_refused_run_leaves_workdir_and_cache_untouched(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  checkpointing.write_run_identity(str(workdir), tiny_config(regime="sl", seed=1))
  before = _tree(workdir)
  config = tiny_config(regime="sl", cache_dir=str(tmp_path / "cache"))
  config.teacher_config = _teacher_config()
  with pytest.raises(ValueError, match=r"different config \(seed: saved 1 vs now 0"):
    plan.train(config, str(workdir))
  assert _tree(workdir) == before
  assert not (tmp_path / "cache").exists()  # neither the teacher nor the table was started


def test_a_training_batch_that_does_not_divide_the_devices_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"config.global_batch_size: 12 is not divisible by the 8"):
    plan.train(tiny_config(global_batch_size=12), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_evaluation_pads_any_batch_and_counts_the_exact_test_set(tmp_path):
  out = plan.train(tiny_config(eval_batch_size=7, budget_examples=16 * 2), str(tmp_path))
  assert out.results["test_examples"] == 1000  # the embedded test split, padding masked
  assert out.results["device_count"] == 8
  assert round(out.results["test_top1"] * 1000) == pytest.approx(out.results["test_top1"] * 1000)


@pytest.mark.slow
def test_the_distill_task_builds_a_ca2d_set_with_its_scores(tmp_path, teacher_dir):
  score = tiny_config(task="score", images_per_class=20, score_epochs=3, cad_num_windows=1)
  config = config_schema.default_config()
  config.task, config.selection, config.images_per_class = "distill", "ca2d", 1
  config.rded_factor, config.rded_candidates_per_class = 1, 5
  config.teacher_workdir, config.cache_dir = teacher_dir, str(tmp_path / "cache")
  config.score_config = score
  directory = plan.distill_set(config, str(tmp_path / "run"))
  with open(os.path.join(directory, image_sets.PROVENANCE_FILE)) as f:
    provenance = json.load(f)
  (score_digest,) = os.listdir(tmp_path / "cache" / "scores")
  assert provenance["identity"]["scores"] == score_digest
  scored_ids = np.load(tmp_path / "cache" / "scores" / score_digest / scoring.SCORES_FILE)["ids"]
  sources_used = [p["id"] for image in provenance["images"] for p in image["patches"]]
  assert len(sources_used) == 10 and set(sources_used) <= set(scored_ids.tolist())
  assert cache.read_identity(directory) == cache.canonical(provenance["identity"])
  assert plan.distill_set(config, str(tmp_path / "run")) == directory  # reused


@pytest.mark.slow
def test_embedded_hl_gives_the_same_accuracy_on_1_2_4_8_devices(tmp_path):
  top1 = {}
  for count in (1, 2, 4, 8):
    config = config_schema.load_config_file(EMBEDDED_HL)
    config.num_epochs, config.model_kwargs.width, config.tensorboard = 1, 32, False
    out = plan.train(config, str(tmp_path / str(count)), devices=jax.devices()[:count])
    assert out.results["test_examples"] == 1000 and out.results["device_count"] == count
    top1[count] = out.results["test_top1"]
  print(f"embedded_hl, 1 epoch, width 32, test top-1 by device count: {top1}")
  assert top1[1] > 0.9, top1
  assert max(top1.values()) - min(top1.values()) <= 0.01, top1
