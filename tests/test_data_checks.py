"""Data sets are checked before they are trusted, and no run writes a NaN test metric."""

import dataclasses
import os

import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import trainer
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import local_builder
from hardlabel_jax.data.array_source import ArraySource
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.sources import load_source
from helpers import tiny_config

SIZE = 28


def _write(split_dir, classes, per_class=3, ext=".png"):
  """Writes `per_class` noise images per class into `split_dir/<class>`; returns the paths."""
  rng = np.random.default_rng(len(split_dir.name))  # train and test differ
  paths = []
  for name in classes:
    os.makedirs(split_dir / name, exist_ok=True)
    for i in range(per_class):
      # Noise, so that a JPEG's scan data (not only its header) is most of the file.
      pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
      path = split_dir / name / f"{i:03d}{ext}"
      Image.fromarray(pixels).save(path)
      paths.append(path)
  return paths


def _truncate(path):
  """Cuts a file to three quarters of its bytes, as an interrupted copy leaves it."""
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) * 3 // 4])
  return raw


def _config(tmp_path, root, **overrides):
  fields = dict(dataset=f"imagefolder:{root}", image_size=SIZE, images_per_class=0,
                data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
  return tiny_config(**{**fields, **overrides})


def _visible_files(directory):
  """Files under `directory`, lock files (hidden, or `.lock`) aside; [] when it does not exist."""
  return sorted(
      os.path.join(r, f)
      for r, _, files in os.walk(directory)
      for f in files
      if not f.startswith(".") and not f.endswith(".lock"))


def _builds(data_dir):
  """Every local-set directory under `data_dir` a rerun could look into (lock files aside)."""
  root = os.path.join(data_dir, local_builder.BUILDER_NAME)
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  return [n for n in names if not n.startswith(".")]


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_truncated_image_is_named_and_nothing_is_cached(tmp_path, ext):
  root = tmp_path / "set"
  bad = _write(root / "train", ("ant", "bee"), ext=ext)[4]
  _write(root / "test", ("ant", "bee"), ext=ext)
  raw = _truncate(bad)
  workdir = tmp_path / "run"
  with pytest.raises(DataSourceError, match=f"cannot decode image {bad}: .*truncated"):
    plan.train(_config(tmp_path, root), str(workdir))
  assert _visible_files(workdir) == []
  before = _builds(tmp_path / "data")  # at most the intact test split's finished build
  for name in before:
    assert os.path.exists(tmp_path / "data" / local_builder.BUILDER_NAME / name / "1.0.0"
                          / "HARDLABEL_READY")
  bad.write_bytes(raw)  # the file fixed, a rerun builds the train split from scratch
  source = load_source(f"imagefolder:{root}", "train", str(tmp_path / "data"))
  assert len(source) == 6 and source[4]["image"].shape == (SIZE, SIZE, 3)
  assert len(_builds(tmp_path / "data")) == len(before) + 1


def test_an_uncached_folder_names_the_file_it_cannot_decode(tmp_path):
  bad = _write(tmp_path / "set" / "train", ("ant",), ext=".jpg")[1]
  _truncate(bad)
  source = image_folder.load_imagefolder(tmp_path / "set", "train", cache=False)
  assert source[0]["image"].shape == (SIZE, SIZE, 3)
  with pytest.raises(DataSourceError, match=f"cannot decode image {bad}"):
    source[1]  # pylint: disable=pointless-statement


def test_an_extra_test_class_stops_the_run_before_training(tmp_path):
  root = tmp_path / "set"
  _write(root / "train", ("ant", "bee"))
  _write(root / "test", ("ant", "bee", "cat"))
  workdir = tmp_path / "run"
  with pytest.raises(DataSourceError, match=r"test classes missing from train: \['cat'\]"):
    plan.train(_config(tmp_path, root), str(workdir))
  assert _visible_files(workdir) == []


def _with_names(source, names, split):
  source.info = dataclasses.replace(source.info, class_names=tuple(names), split=split)
  return source


def _arrays(num_classes, names=(), split="train", n=4):
  images = np.zeros((n, 4, 4, 1), np.uint8)
  source = ArraySource(images, np.arange(n) % num_classes, num_classes, split=split)
  return _with_names(source, names, split)


@pytest.mark.parametrize("train_names, test_names, class_order, match", [
    ("abc", "abcd", "", r"test classes missing from train: \['d'\]"),
    ("abcx", "abcd", "", r"\['d'\]; train classes missing from test: \['x'\]"),
    ("acb", "abc", "", r"another order, first at label 1: train \['c', 'b'\], test \['b', 'c'\]"),
    ("", "abcd", "", r"'train' of arrays has 3 classes but split 'test' of arrays has 4"),
    ("xyz", "abcd", "index", r"has 3 classes but .* has 4"),
])
def test_train_and_test_classes_must_agree(train_names, test_names, class_order, match):
  config = tiny_config(class_order=class_order)
  train = _arrays(max(len(train_names), 3), list(train_names))
  test = _arrays(len(test_names), list(test_names), split="test")
  with pytest.raises(DataSourceError, match=match):
    run_data.check_splits_agree(config, train, test)


def test_index_mapped_names_and_unnamed_sources_pass_on_counts():
  # A distilled set's class_00007 folders against MNIST's '0'..'9': mapped by number, not name.
  train = _arrays(10, [f"class_{c:05d}" for c in range(10)], n=10)
  test = _arrays(10, [str(c) for c in range(10)], split="test", n=10)
  run_data.check_splits_agree(tiny_config(class_order="index"), train, test)
  run_data.check_splits_agree(tiny_config(), _arrays(3), _arrays(3, split="test"))


def test_an_empty_split_or_class_is_refused(tmp_path):
  root = tmp_path / "set"
  _write(root / "train", ("ant", "bee"))
  os.makedirs(root / "train" / "cat")
  with pytest.raises(DataSourceError, match=r"split 'train': class directories \['cat'\] .* hold "
                     r"no"):
    load_source(f"imagefolder:{root}", "train", str(tmp_path / "data"))
  os.makedirs(root / "test" / "ant")
  with pytest.raises(DataSourceError, match=r"split 'test' is empty: .*without images: \['ant'\]"):
    load_source(f"imagefolder:{root}", "test", str(tmp_path / "data"))
  with pytest.raises(DataSourceError, match=r"arrays, split 'test' is empty"):
    ArraySource(np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0, int), 3, split="test")
  with pytest.raises(DataSourceError, match=r"split 'test' of arrays is empty"):
    run_data.check_splits_agree(tiny_config(), _arrays(3), _EmptyTest(_arrays(3, split="test")))
  assert _builds(tmp_path / "data") == []


class _EmptyTest:
  """A source with no examples (as a sliced TFDS split `test[:0]` would be)."""

  def __init__(self, source):
    self.info = source.info

  def __len__(self):
    return 0


@pytest.mark.parametrize("labels, match", [
    ([0, 1, 3, 2], r"1 labels lie outside 0..2 .* example 2 has label 3"),
    ([0, -1, 1, 2], r"example 1 has label -1"),
])
def test_labels_out_of_range_are_refused(tmp_path, labels, match):
  images = np.zeros((4, 4, 4, 1), np.uint8)
  with pytest.raises(DataSourceError, match=r"arrays, split 'train': .*" + match):
    ArraySource(images, np.array(labels), 3)
  splits = {"train": local_builder.LocalSplit(images, np.array(labels))}
  with pytest.raises(DataSourceError, match=r"bad, split 'train': .*" + match):
    local_builder.prepare_local("bad", "k", lambda: splits, image_shape=(4, 4, 1),
                                class_names=("a", "b", "c"), data_dir=str(tmp_path))
  with pytest.raises(DataSourceError, match=r"bad, split 'test' is empty"):
    local_builder.prepare_local(
        "bad", "k", lambda: {"test": local_builder.LocalSplit(images[:0], np.zeros(0, int))},
        image_shape=(4, 4, 1), class_names=("a", "b", "c"), data_dir=str(tmp_path))
  assert _builds(tmp_path) == []


def test_a_nan_test_loss_is_refused_and_no_results_are_written(tmp_path, monkeypatch):
  load = run_data.load_run_data

  def with_an_unknown_test_class(config):
    # A test split holding a label the model has no output for (class 10 of MNIST's 10), past
    # the checks of load_run_data, as a source that misreports its classes would be.
    data = load(config)
    images = np.stack([data.test[i]["image"] for i in range(20)])
    labels = np.arange(20) % 11
    data.test = ArraySource(images, labels, 11, name="eleven", split="test")
    return data

  monkeypatch.setattr(run_data, "load_run_data", with_an_unknown_test_class)
  workdir = tmp_path / "run"
  with pytest.raises(
      trainer.NonFiniteLossError,
      match=r"test_loss is nan on the 20 test examples of eleven; likely cause: 1 "
      r"test labels have no model output \(the model has 10 classes, the test labels span 0..10\)"):
    plan.train(tiny_config(), str(workdir))
  assert not (workdir / trainer.RESULTS_FILE).exists()


def test_a_diverged_evaluation_names_the_metric():
  data = run_data.RunData(_arrays(3), _arrays(3, split="test"), np.arange(4), None, None)
  metrics = {"test_top1": 0.5, "test_loss": float("inf"), "test_examples": 4}
  with pytest.raises(trainer.NonFiniteLossError, match=r"test_loss is inf .* run diverged"):
    trainer.check_test_metrics(metrics, data, 3)
  trainer.check_test_metrics({**metrics, "test_loss": 1.0}, data, 3)
