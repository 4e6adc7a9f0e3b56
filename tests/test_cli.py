"""The command line: config mistakes end in one error line, normal runs print progress only."""

import dataclasses
import glob
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import log_filters
from hardlabel_jax import models

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
EMBEDDED_HL = os.path.join("configs", "embedded_hl.py")
# The constructor keywords a config sets in `model_kwargs` (so `--config.model_kwargs.<k>=` can
# override them): the model's fields less those its registry entry fixes (ConvNet's depth and first
# padding; ResNet's stem, stage sizes and block) and those a run derives (num_classes, dtype).
MODEL_KWARGS = {
    "convnet_d3": {
        "norm": "instance",
        "width": 128
    },
    "convnet_d3_pad3": {
        "norm": "instance",
        "width": 128
    },
    "convnet_d4": {
        "norm": "instance",
        "width": 128
    },
    "resnet18": {
        "width": 64,
        "zero_init_residual": False
    },
    "resnet18_cifar": {
        "width": 64,
        "zero_init_residual": False
    },
    "resnet50": {
        "width": 64,
        "zero_init_residual": False
    },
    "resnet50_cifar": {
        "width": 64,
        "zero_init_residual": False
    },
}
_FIXED = {
    "num_classes", "dtype", "parent", "name", "depth", "first_padding", "stem", "stage_sizes",
    "block_cls"
}


def _fields(module: type) -> set[str]:
  return {f.name for f in dataclasses.fields(module)} - _FIXED


def _runs(config, where="config"):
  """The config and the runs it nests (teacher, scoring run), each with where it sits."""
  yield where, config
  for field in ("teacher_config", "score_config"):
    if config[field] is not None:
      yield from _runs(config[field], f"{where}.{field}")


def _main(*args, env=None, timeout=300):
  """`python -m hardlabel_jax.main ARGS` on one CPU device; the finished process."""
  env = {
      **os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
      "JAX_PLATFORMS": "cpu",
      **(env or {})
  }
  return subprocess.run([sys.executable, "-m", "hardlabel_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_model_kwargs_defaults_name_every_free_constructor_keyword():
  assert sorted(MODEL_KWARGS) == sorted(models.MODEL_NAMES)
  for name, keywords in MODEL_KWARGS.items():
    module = models.ConvNet if name.startswith("convnet") else models.ResNet
    assert set(keywords) == _fields(module), name
    assert models.model_kwargs_defaults(name) == keywords, name


def test_equal_models_have_equal_identities():
  # {'width': 32} and {'width': 32, 'norm': 'instance'} build the same network: a run config or
  # cache written before the configs spelt out their keywords is still the same run.
  implicit, explicit = config_schema.default_config(), config_schema.default_config()
  implicit.model_kwargs.width = 32
  explicit.model_kwargs.width, explicit.model_kwargs.norm = 32, "instance"
  assert cache.run_recipe(implicit) == cache.run_recipe(explicit)
  assert checkpointing.run_identity(implicit) == checkpointing.run_identity(explicit)
  explicit.model_kwargs.norm = "batch"
  assert cache.run_recipe(implicit) != cache.run_recipe(explicit)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_config_sets_its_models_keywords(path, arg):
  config = config_schema.load_config_file(path, arg)
  for where, run in _runs(config):
    assert set(run.model_kwargs) == set(MODEL_KWARGS[run.model]), f"{where} ({run.model})"
    models.create_model(run.model, 10, **run.model_kwargs)  # values the constructor accepts


def test_a_config_file_with_a_misspelt_field_is_refused_with_the_closest(tmp_path):
  config = config_schema.default_config()
  config.learning_rat = 0.1
  with pytest.raises(
      ValueError, match=r"^config.learning_rat: unknown field; did you mean "
      r"'learning_rate'\?$"):
    config_schema.validate(config)


def _assert_one_error_line(result, *fragments):
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


@pytest.mark.parametrize("override, fragments", [
    ("--config.learning_rat=0.1", ["config.learning_rat", "did you mean config.learning_rate"]),
    ("--config.model_kwargs.widht=16", ["did you mean config.model_kwargs.width"]),
    ("--config.distillation_kwargs.temperature=2",
     ["config.distillation_kwargs.temperature", "no such field"]),
    ("--config.num_epochs=abc", ["config.num_epochs: 'abc' is not a valid float"]),
    ("--config.global_batch_size=1.5", ["config.global_batch_size: '1.5' is not a valid int"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_config_mistake_is_one_error_line_and_writes_nothing(tmp_path, override, fragments):
  workdir = tmp_path / "run"
  result = _main("--config", f"{EMBEDDED_HL}:runlocal", "--workdir", str(workdir), override)
  _assert_one_error_line(result, *fragments)
  assert not workdir.exists()


def test_a_config_file_with_an_unknown_field_is_one_error_line(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text("from hardlabel_jax import config_schema\n\n\ndef get_config():\n"
                  "  config = config_schema.default_config()\n  config.num_epocs = 1\n"
                  "  return config\n")
  result = _main("--config", str(path), "--workdir", str(tmp_path / "run"))
  _assert_one_error_line(result, "config.num_epocs: unknown field; did you mean 'num_epochs'?")


def test_only_the_expected_orbax_notice_is_filtered(tmp_path):
  """The item of a composite checkpoint lacks metadata by design; a step directory does not."""
  step = tmp_path / "checkpoints" / "31"
  (step / "state").mkdir(parents=True)
  (step / "_CHECKPOINT_METADATA").write_text("{}")

  def record(message, *args):
    return logging.LogRecord("absl", logging.WARNING, "checkpoint.py", 1, message, args, None)

  expected = log_filters._ExpectedNotices()
  missing = "Metadata file does not exist: %s"
  assert not expected.filter(record(missing, step / "state" / "_CHECKPOINT_METADATA"))
  assert expected.filter(record(missing, tmp_path / "checkpoints" / "7" / "_CHECKPOINT_METADATA"))
  assert expected.filter(record("Failed to read Metadata file: %s", step / "_CHECKPOINT_METADATA"))


@pytest.mark.slow
def test_a_normal_run_prints_progress_and_results_only_and_a_refusal_one_line(tmp_path):
  """A first build of the local set (TFDS), Grain workers; then the same workdir, another lr."""
  workdir = str(tmp_path / "run")
  args = ("--config", f"{EMBEDDED_HL}:runlocal", "--workdir", workdir,
          "--config.model_kwargs.width=8", "--config.num_epochs=0.1", "--config.num_workers=2")
  env = {"HARDLABEL_DATA_DIR": str(tmp_path / "data")}
  result = _main(*args, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stderr.strip() == ""
  progress = re.compile(r"(training convnet_d3 on |step \d+/\d+ \| |test top-1 )")
  assert [line for line in result.stdout.splitlines() if not progress.match(line)] == []

  refused = _main(*args, "--config.learning_rate=0.07", env=env)
  assert refused.returncode == 1, refused.stderr
  assert "Traceback" not in refused.stderr
  assert re.fullmatch(
      r"error: workdir \S+ holds a run with a different config \(.*"
      r"learning_rate: saved 0.05 vs now 0.07.*\n", refused.stderr)


def test_a_workdir_written_before_a_field_existed_still_resumes(tmp_path):
  config = config_schema.default_config()
  config.regime = "kd"
  config.teacher_config = config_schema.default_config()
  saved = checkpointing.run_identity(config)
  del saved["class_order"], saved["teacher_config"]["synth_lr"]  # fields added later
  saved["model_kwargs"] = {}  # written before configs spelt out the model's keywords
  with open(tmp_path / checkpointing.RUN_CONFIG_FILE, "w") as f:
    json.dump(saved, f)
  checkpointing.check_same_run(str(tmp_path), config)
  config.teacher_config.learning_rate = 0.5
  with pytest.raises(ValueError, match=r"teacher_config\.learning_rate: saved 0\.01 vs now 0\.5"):
    checkpointing.check_same_run(str(tmp_path), config)


def test_a_default_changed_since_of_a_field_the_run_never_reads_still_resumes(tmp_path):
  # An HL run with the cosine schedule never reads hald_eta (the hald schedule's η); its default
  # went from 1.0 to 0.0 after workdirs were written with it.
  config = config_schema.default_config()
  config.regime, config.teacher_config = "kd", config_schema.default_config()
  saved = checkpointing.run_identity(config)
  saved["hald_eta"] = 1.0
  saved["teacher_config"]["hald_eta"] = 1.0
  with open(tmp_path / checkpointing.RUN_CONFIG_FILE, "w") as f:
    json.dump(saved, f)
  assert "hald_eta" not in config_schema.fields_read(config)
  checkpointing.check_same_run(str(tmp_path), config)
  config.schedule, config.hald_eta = "hald", 2.0  # now read, and different: another run
  with pytest.raises(ValueError, match=r"hald_eta: saved 1\.0 vs now 2\.0"):
    checkpointing.check_same_run(str(tmp_path), config)
