"""Tensor sets (images.pt / labels.pt / lr.pt, DD-Ranking's layout) as data: pixels, labels, the
stored-label table an SL run replays, the learned learning rate, and the errors."""

import csv
import os

import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import study
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import replay
from hardlabel_jax.data import sources
from hardlabel_jax.data import tensor_set
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.soft_labels import table as table_lib
from helpers import tiny_config

torch = pytest.importorskip("torch")

MEAN, STD = (0.1307,), (0.3081,)  # embedded MNIST's, what the sets below are normalised with
CHECK_SET = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "check_set.py")
WHOLE_IMAGE = dict(crops_per_image=1, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                   random_flip=False)


def _real_images(per_class: int) -> np.ndarray:
  """The first `per_class` embedded train images of each class, class-major: uint8 [n, H, W, 1]."""
  train = sources.load_source("embedded_mnist", "train")
  labels = np.asarray(train.labels())
  ids = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
  return np.stack([train[int(i)]["image"] for i in ids])


def _normalised(images: np.ndarray) -> "torch.Tensor":
  """DD-Ranking's view of real images: ToTensor (uint8 / 255, [C, H, W]) then Normalize(mean, std)
  (ddranking/utils/data.py get_dataset), float32 [n, C, H, W]; torchvision's normalize is
  `tensor.sub_(mean[:, None, None]).div_(std[:, None, None])`."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
  mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
  return x.sub_(mean).div_(std)


def _write(directory, images, labels=None, lr=None) -> str:
  os.makedirs(directory, exist_ok=True)
  torch.save(images, os.path.join(directory, "images.pt"))
  if labels is not None:
    torch.save(labels, os.path.join(directory, "labels.pt"))
  if lr is not None:
    torch.save(lr, os.path.join(directory, "lr.pt"))
  return str(directory)


def _config(directory, tmp_path, **overrides):
  config = tiny_config(dataset=f"tensors:{directory}", test_dataset="embedded_mnist",
                       cache_dir=str(tmp_path / "cache"), images_per_class=0,
                       budget_examples=16 * 2)
  for key, value in overrides.items():
    config[key] = value
  return config


def _reading(**overrides) -> tensor_set.Reading:
  return tensor_set.Reading(**{
      "num_classes": 10,
      "channels": 1,
      "mean": MEAN,
      "std": STD,
      **overrides
  })


def test_normalised_images_come_back_as_their_exact_pixels_and_clipping_is_counted(tmp_path):
  images = _real_images(2)
  x = _normalised(images)
  labels = torch.arange(20).flip(0) % 10  # not class-major: labels.pt's integers are the labels
  directory = _write(tmp_path / "set", x, labels)
  train = run_data.train_source(_config(directory, tmp_path))
  assert len(train) == 20 and train.info.name == f"tensors:{directory}"
  for i in range(20):
    np.testing.assert_array_equal(train[i]["image"], images[i])  # round(255 (x·std + mean))
  np.testing.assert_array_equal(train.labels(), labels.numpy())
  read = tensor_set.read(directory, _reading())
  assert read.pixels.clipped == 0 and read.label_rule == "labels.pt"

  # Two values outside the pixel range: x = 10 is 255 (10·0.3081 + 0.1307) = 818.98 levels,
  # x = -1 is -45.2; both clipped, every other pixel still exact.
  row, col = np.unravel_index(images[1, ..., 0].argmax(), (28, 28))  # a bright pixel of image 1
  x[0, 0, 0, 0], x[1, 0, row, col] = 10.0, -1.0
  out = tensor_set.read(_write(tmp_path / "clipped", x, labels), _reading())
  assert (out.pixels.below, out.pixels.above) == (1, 1)
  assert out.pixels.largest_excess == pytest.approx(818.98335 - 255, abs=1e-3)
  assert out.images[0, 0, 0, 0] == 255 and out.images[1, row, col, 0] == 0
  changed = np.argwhere(out.images != images)
  np.testing.assert_array_equal(changed, [[0, 0, 0, 0], [1, row, col, 0]])
  assert ("15,680 float32 values de-normalised with mean (0.1307,) std (0.3081,) "
          "(pixel_scale='normalized'), rounded to uint8: 2 (0.0128%) clipped (1 below 0, 1 above "
          "255, up to 564 pixel levels outside)") in out.describe()

  # ToTensor alone ('unit') and uint8 pixels are read back exactly too.
  unit = _write(tmp_path / "unit", torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
  np.testing.assert_array_equal(tensor_set.read(unit, _reading(pixel_scale="unit")).images, images)
  raw = _write(tmp_path / "uint8", torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  assert tensor_set.read(raw, _reading()).pixels.rule == "uint8"
  np.testing.assert_array_equal(tensor_set.read(raw, _reading()).images, images)


def test_hard_labels_follow_dd_rankings_class_major_rule_or_the_argmax(tmp_path):
  """ddranking 0.2.0 metrics/soft_label.py `compute_metrics`: the hard labels of an image tensor
  are `[0] * ipc + [1] * ipc + ...` whatever its soft labels say."""
  x = _normalised(_real_images(2))
  class_major = np.repeat(np.arange(10), 2)
  no_labels = tensor_set.read(_write(tmp_path / "none", x), _reading())
  np.testing.assert_array_equal(no_labels.labels, class_major)
  assert no_labels.label_rule == "class_major" and no_labels.soft_labels is None
  argmax = class_major.copy()
  argmax[[3, 8, 15]] = (argmax[[3, 8, 15]] + 1) % 10  # three soft labels favour another class
  logits = np.eye(10, dtype=np.float32)[argmax] * 5
  directory = _write(tmp_path / "soft", x, torch.from_numpy(logits))
  by_rule = tensor_set.read(directory, _reading())
  np.testing.assert_array_equal(by_rule.labels, class_major)
  assert by_rule.argmax_mismatches == 3 and "differs from the hard label for 3 of 20" in (
      by_rule.describe())
  np.testing.assert_array_equal(by_rule.soft_labels, logits)  # kept as stored (logits)
  by_argmax = run_data.train_source(_config(directory, tmp_path,
                                            tensor_set_hard_labels="argmax")).labels()
  np.testing.assert_array_equal(by_argmax, argmax)


def test_an_sl_run_replays_the_stored_soft_labels_at_the_learned_rate(tmp_path, capsys):
  """DD-Ranking pairs each image with its stored soft label (metrics/soft_label.py
  `_compute_soft_label_metrics`: `TensorDataset(image_tensor, soft_labels)`), softened by its
  loss's temperature (loss/kl.py: `softmax(tea_outputs / T)`), and trains the set's soft-label run
  at `syn_lr` = lr.pt when given (`compute_metrics`: `hyper_param_search=False`)."""
  images = _real_images(2)
  logits = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32) * 3
  directory = _write(tmp_path / "set", _normalised(images), torch.from_numpy(logits),
                     torch.tensor(0.0123))
  config = _config(directory, tmp_path, regime="sl", temperature=4.0, **WHOLE_IMAGE)
  config_schema.validate(config)
  out = plan.train(config, str(tmp_path / "sl"))  # no teacher anywhere: the set labels itself
  assert "teacher_workdir" not in out.results and np.isfinite(out.results["test_loss"])
  learned = torch.tensor(0.0123).item()  # float32 lr.pt, as DD-Ranking's `syn_lr.item()`
  assert out.results["config"]["learning_rate"] == learned
  logged = capsys.readouterr().out
  assert f"learning_rate 0.0123 from {directory}/lr.pt (tensor_set_learning_rate=" in logged

  table = table_lib.SoftLabelTable.open(out.results["table_dir"])
  assert os.path.basename(table.directory).startswith("stored-full-c1-")
  assert table.spec.slots_per_image == 1 and out.results["label_bytes"] == 20 * (2 * 10 + 9)
  softened = np.exp(logits / 4.0) / np.exp(logits / 4.0).sum(axis=1, keepdims=True)
  data = run_data.load_run_data(plan.make_plan(config, str(tmp_path / "sl")).config)
  crops = replay.TableCrops(run_data.table_crop_example(config, data), pipeline.EpochShuffle(20, 0),
                            table.directory, draw_seed=0)
  for position, example_id in enumerate(table.spec.ids):
    expected = softened[example_id].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(table.probs(position, 0), expected)
    assert table.metadata(position, 0) == {"box": (0.0, 0.0, 1.0, 1.0), "flip": False}
    example = crops.replay(position, 0)  # what the SL step trains on: the whole image, its label
    np.testing.assert_array_equal(example["soft_label"], expected)
    np.testing.assert_allclose(example["image"], data.normalizer(images[example_id]), atol=1e-6)
  plan.train(config, str(tmp_path / "again"))
  assert len(os.listdir(tmp_path / "cache" / "tables")) == 1  # the second run reused the table


def test_the_learned_rate_goes_to_the_soft_regimes_unless_told_otherwise(tmp_path, teacher_dir):
  x = _normalised(_real_images(2))
  directory = _write(tmp_path / "set", x, torch.arange(20) // 2, torch.tensor([0.25]))
  own = tiny_config().learning_rate

  def rate(regime, rule="soft_regimes"):
    config = _config(directory, tmp_path, regime=regime, tensor_set_learning_rate=rule,
                     teacher_workdir=teacher_dir if regime != "hl" else "")
    return plan.make_plan(config, str(tmp_path / "w")).config.learning_rate

  assert (rate("hl"), rate("sl_kd"), rate("kd"), rate("hald")) == (own, 0.25, 0.25, 0.25)
  assert (rate("hl", "every_regime"), rate("sl_kd", "ignore")) == (0.25, own)
  assert not (tmp_path / "w").exists()
  # Read only by a run on a tensor set: elsewhere the field is refused as never read.
  with pytest.raises(ValueError, match="config.tensor_set_learning_rate: .* never reads it"):
    config_schema.validate(tiny_config(tensor_set_learning_rate="ignore"))


def _images_as_nhwc(directory):
  return _write(directory, _normalised(_real_images(2)).permute(0, 2, 3, 1))


BAD_SETS = [
    ("nhwc", _images_as_nhwc, r"images must be \[n, C, H, W\].*looks like \[n, H, W, C\]"),
    ("label_count", lambda d: _write(d, _normalised(_real_images(2)),
                                     torch.arange(19) % 10), "holds 19 labels for the 20 images"),
    ("soft_classes", lambda d: _write(d, _normalised(_real_images(2)), torch.zeros(20, 7)),
     "soft labels over 7 classes, but the data set the set was made from has 10"),
    ("label_range", lambda d: _write(d, _normalised(_real_images(2)), torch.arange(20)),
     r"10 labels lie outside 0..9, e.g. image 10 has label 10"),
    ("label_shape", lambda d: _write(d, _normalised(_real_images(2)),
                                     torch.zeros(20, 1).long()),
     r"integer labels must be hard labels of shape \[n\]"),
    ("not_class_major", lambda d: _write(d,
                                         _normalised(_real_images(2))[:15]),
     "needs a multiple of the 10 classes, but the set holds 15 images"),
    ("channels", lambda d: _write(d,
                                  _normalised(_real_images(2)).repeat(1, 3, 1, 1)),
     "images have 3 channels, the data set the set was made from has 1"),
    ("nan", lambda d: _write(d,
                             _normalised(_real_images(2)) * float("nan")),
     "15680 pixel values are NaN or infinite"),
    ("dict", lambda d: _write(d, {"data": _normalised(_real_images(2))}),
     r"holds a dict with keys \['data'\], not a tensor"),
    ("lr_two", lambda d: _write(d, _normalised(_real_images(2)), lr=torch.tensor([0.1, 0.2])),
     "a learned learning rate is one positive number"),
    ("lr_negative", lambda d: _write(d, _normalised(_real_images(2)), lr=torch.tensor(-0.1)),
     "a learned learning rate is one positive number"),
]


@pytest.mark.parametrize("name,write,message", BAD_SETS, ids=[case[0] for case in BAD_SETS])
def test_a_bad_tensor_set_is_one_clear_error_and_nothing_is_written(tmp_path, name, write, message):
  directory = write(tmp_path / name)
  with pytest.raises(DataSourceError, match=message):
    plan.train(_config(directory, tmp_path), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists() and not (tmp_path / "cache").exists()


def test_runs_the_set_cannot_serve_are_refused_before_anything_is_written(tmp_path):
  directory = _write(tmp_path / "set", _normalised(_real_images(2)), torch.zeros(20, 10))
  config = _config(directory, tmp_path, regime="sl")  # crops_per_image 4, random crops
  with pytest.raises(
      ValueError, match=r"config.crops_per_image: an SL run on tensors:.* replays "
      r"the soft labels of labels.pt, one per whole image.*crops_per_image=1, "
      r"train_crop_recipe='rrc', crop_scale=\(1.0, 1.0\), crop_ratio=\(1.0, 1.0\)"):
    plan.train(config, str(tmp_path / "w"))
  untested = _config(directory, tmp_path, test_dataset="")
  with pytest.raises(
      DataSourceError, match="is one training set, split 'train', not 'test'; "
      r"test it on the data set it was made from \(config.test_dataset\)"):
    plan.train(untested, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists() and not (tmp_path / "cache").exists()


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_check_runs_on_a_tensor_set(tmp_path, teacher_dir):
  logits = np.eye(10, dtype=np.float32)[np.repeat(np.arange(10), 2)] * 4
  directory = _write(tmp_path / "set", _normalised(_real_images(2)), torch.from_numpy(logits),
                     torch.tensor(0.004))
  config = config_schema.load_config_file(
      CHECK_SET, f"set={directory},teacher={teacher_dir},seeds=1,runlocal")
  rows = study.run(config, str(tmp_path / "check"))
  external = {r["regime"]: r for r in rows if r["method"] == "external" and not r["augmentation"]}
  assert set(external) == {"hl", "sl"} and {r["ipc"] for r in rows if r["method"] != "full"} == {2}
  # The set's SL cell trained on its stored labels (one whole-image slot) at lr.pt, its HL cell
  # at the config's rate; random's SL cell on one teacher-labelled whole-image slot as well.
  assert float(external["sl"]["learning_rate"]) == torch.tensor(0.004).item()
  assert float(external["hl"]["learning_rate"]) == config.learning_rate
  sl_bytes = {
      r["method"]: int(r["label_bytes"])
      for r in _rows(tmp_path / "check" / "results.csv")
      if r["regime"] == "sl"
  }
  assert sl_bytes == {"random": 20 * 29, "external": 20 * 29}
  assert os.path.exists(tmp_path / "check" / "report.md")


def test_the_ddranking_protocol_trains_a_set_with_its_own_rate_once(tmp_path):
  """DD-Ranking's `syn_lr` skips the learning-rate search of the set's soft-label runs
  (ddranking/metrics/soft_label.py L547, `hyper_param_search=True if syn_lr is None else
  False`): a tensor set's lr.pt cell trains once at it; its HL cell (lr.pt is not its rate) and
  random's cells are searched."""
  directory = _write(tmp_path / "set", _normalised(_real_images(2)), lr=torch.tensor(0.004))
  config = config_schema.load_config_file(CHECK_SET, f"set={directory},protocol=ddranking")
  counts = study.train_class_counts(config)
  config = study.with_external_size(config, counts)
  configs = study.validate_study(config, counts, str(tmp_path / "cache"))
  cells = {c.name: c for c in configs}
  runs = lambda name: [(d, r.learning_rate) for d, r in study.learning_rate_runs(
      config, cells[name], configs[cells[name]])]
  rate = torch.tensor(0.004).item()
  assert runs("sl-external-ipc2-s0") == [(f"lr{rate:g}", rate)]
  assert [d for d, _ in runs("hl-external-ipc2-s0")
         ] == [f"lr{r:g}" for r in (0.001, 0.005, 0.01, 0.05, 0.1)]
  assert len(runs("sl-random-ipc2-s0")) == 5
