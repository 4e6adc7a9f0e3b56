"""Every experiment config loads and validates; recipe values match the papers they cite."""

import glob
import os

import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import hald

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_validates(path, arg):
  config = config_schema.load_config_file(path, arg)
  config_schema.validate(config)
  if config.teacher_config is not None:
    config_schema.validate(config.teacher_config)


def test_imagenet_hald_recipe_is_the_papers():
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "imagenet_hald_ipc10.py"))
  assert (config.model, config.global_batch_size, config.optimizer) == ("resnet18", 16, "adamw")
  assert (config.learning_rate, config.weight_decay, config.hald_eta) == (1e-3, 0.01, 2.0)
  assert (config.temperature, config.hald_label_smoothing, config.hald_cutmix_alpha) == (20, .8, 1)
  pool, epochs = 1000 * config.images_per_class, config.num_epochs
  steps = int(epochs * pool) // config.global_batch_size
  phases = hald.StepPhases(hald.parse_schedule(config.hald_schedule), steps,
                           config.global_batch_size, pool)
  per_epoch = pool // config.global_batch_size
  # S6 over 300 epochs: 75 soft, 150 hard, 75 soft.
  assert phases.counts() == {"soft": 150 * per_epoch, "hard": 150 * per_epoch}
  assert phases.of_step(75 * per_epoch - 1) == "soft"
  assert phases.of_step(75 * per_epoch) == "hard"
  assert phases.of_step(225 * per_epoch) == "soft"


@pytest.mark.parametrize("field, value", [
    ("regime", "soft"), ("task", "bogus"), ("label_format", "fp8"), ("temperature", 0.0),
    ("crops_per_image", 0), ("label_keep_fraction", 0.0), ("teacher_bn_mode", "train"),
    ("hald_schedule", "S5"),
])
def test_bad_soft_label_fields_name_the_field(field, value):
  config = config_schema.default_config()
  config.regime = "hald"
  config[field] = value
  with pytest.raises(ValueError, match=f"config.{field}"):
    config_schema.validate(config)


@pytest.mark.parametrize("overrides, field", [
    ({"selection": "el2n_hard"}, "scores_file"),
    ({"selection": "coreset", "scores_file": "x.npz"}, "selection"),
    ({"task": "score", "score_epochs": 0}, "score_epochs"),
    ({"cad_window": 1}, "cad_window"),
])
def test_bad_selection_fields_name_the_field(overrides, field):
  config = config_schema.default_config()
  for key, value in overrides.items():
    config[key] = value
  with pytest.raises(ValueError, match=f"config.{field}"):
    config_schema.validate(config)
