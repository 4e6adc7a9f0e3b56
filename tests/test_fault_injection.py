"""Fault injection: SIGKILL every task at seeded points, rerun, and compare with an unkilled run.

For each task an uninterrupted reference run (in the test's process) logs every pass of the
library's fault points (hardlabel_jax.faults: training steps, asynchronous checkpoint writes, JSON
renames, table shards, set images, synthesis chunks, scoring epochs). Five points are drawn from
that log with a seeded generator, spread over the kinds of point the task has; the same command is
then killed at each in turn (SIGKILL, in a fresh process each time) and finally run to the end. Its
products must equal the reference's bit for bit: every task is deterministic on one machine.
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import faults
from hardlabel_jax import plan
from hardlabel_jax import study

KILLS_PER_TASK = 5
# results.json fields that depend only on what was computed (not on time or on resumption).
RESULT_FIELDS = ("test_top1", "test_loss", "steps", "examples_seen", "epochs", "pool_size",
                 "label_bytes", "test_examples", "num_params")
_BASE = {
    "dataset": "embedded_mnist",
    "images_per_class": 5,
    "model_kwargs": {
        "width": 4
    },
    "global_batch_size": 16,
    "eval_batch_size": 500,
    "budget_examples": 16 * 12,
    "checkpoint_every_steps": 3,
    "log_every_steps": 100,
    "learning_rate": 0.05,
    "tensorboard": False,
    "crops_per_image": 2,
    "table_positions_per_shard": 10,
}
TEACHER = "<teacher>"
TASKS = {
    "train_hl": {},
    "train_kd": {
        "regime": "kd",
        "teacher_workdir": TEACHER
    },
    "train_sl": {
        "regime": "sl",
        "teacher_workdir": TEACHER
    },
    "train_sl_kd": {
        "regime": "sl_kd",
        "teacher_workdir": TEACHER
    },
    "train_hald": {
        "regime": "hald",
        "teacher_workdir": TEACHER
    },
    "relabel": {
        "task": "relabel",
        "teacher_workdir": TEACHER
    },
    "score": {
        "task": "score",
        "score_epochs": 4
    },
    "distill": {
        "task": "distill",
        "selection": "rded",
        "images_per_class": 2,
        "rded_candidates_per_class": 4,
        "rded_factor": 1,
        "teacher_workdir": TEACHER
    },
    "synthesize": {
        "task": "synthesize",
        "selection": "sre2l",
        "images_per_class": 2,
        "synth_iterations": 200,
        "teacher_workdir": TEACHER
    },
    "study": {
        "task": "study",
        "study_regimes": ["hl", "sl"],
        "study_methods": ["random"],
        "study_images_per_class": [3],
        "study_seeds": [0],
        "budget_examples": 16 * 6,
        "teacher_workdir": TEACHER
    },
}
_CONFIG_FILE = '''
import json
from hardlabel_jax import config_schema

def get_config(arg=None):
  config = config_schema.default_config()
  with open({overrides!r}) as f:
    for key, value in json.load(f).items():
      config[key] = tuple(value) if isinstance(value, list) else value
  return config_schema.reset_unread(config)
'''


@pytest.fixture(scope="module")
def bn_teacher(tiny_bn_teacher):
  return tiny_bn_teacher


def _write_config(directory, task: str, teacher: str) -> str:
  overrides = {**_BASE, **TASKS[task]}
  overrides = {k: teacher if v == TEACHER else v for k, v in overrides.items()}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "overrides.json"), "w") as f:
    json.dump(overrides, f)
  path = os.path.join(directory, "config.py")
  with open(path, "w") as f:
    f.write(_CONFIG_FILE.format(overrides=os.path.join(directory, "overrides.json")))
  return path


def _launch(config: str, root: str, faults_setting: str) -> subprocess.CompletedProcess:
  """The task's command in a fresh process: workdir and cache under `root`."""
  env = {
      **os.environ, faults.ENV: faults_setting,
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(root), "xla"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"
  }
  command = [
      sys.executable, "-m", "hardlabel_jax.main", "--config", config, "--workdir",
      os.path.join(root, "work"), f"--config.cache_dir={os.path.join(root, 'cache')}"
  ]
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _run_in_process(config_file: str, root: str, log: str, monkeypatch) -> None:
  """The uninterrupted reference, run as main.py would, every fault point logged to `log`."""
  config = config_schema.load_config_file(config_file)
  config.cache_dir = os.path.join(root, "cache")
  monkeypatch.setattr(faults, "_INJECTOR", faults._Injector(log))  # pylint: disable=protected-access
  tasks = {
      "train": plan.train,
      "relabel": plan.relabel_table,
      "score": plan.score,
      "distill": plan.distill_set,
      "synthesize": plan.synthesize_set,
      "study": study.run
  }
  tasks[config.task](config, os.path.join(root, "work"))


def choose_kills(passes: list[str], count: int, seed: int) -> list[tuple[str, int]]:
  """`count` (point, n-th pass) of the reference log, spread over its kinds, in log order."""
  rng = np.random.default_rng(seed)
  kinds = sorted(set(passes))
  occurrences = {k: [i for i, p in enumerate(passes) if p == k] for k in kinds}
  chosen: set[int] = set()
  order = list(rng.permutation(kinds))
  while len(chosen) < min(count, len(passes)):
    for kind in order:
      free = [i for i in occurrences[kind] if i not in chosen]
      if free and len(chosen) < count:
        chosen.add(int(rng.choice(free)))
  kills = []
  for index in sorted(chosen):
    kind = passes[index]
    kills.append((kind, occurrences[kind].index(index) + 1))
  return kills


def test_choose_kills_spreads_over_kinds_and_keeps_log_order():
  passes = ["train_step"] * 20 + ["checkpoint_write", "json_write"] + ["train_step"] * 5
  kills = choose_kills(passes, 5, seed=0)
  assert len(kills) == 5 and {"checkpoint_write", "json_write"} <= {k for k, _ in kills}
  positions = [[i for i, p in enumerate(passes) if p == k][n - 1] for k, n in kills]
  assert positions == sorted(positions)


def _products(root: str) -> dict[str, object]:
  """What a task produced, keyed by path below `root` (bytes, arrays or deterministic fields)."""
  out: dict[str, object] = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    if "/checkpoints" in path or "/xla/" in path or os.path.isdir(path):
      continue
    if name == "results.json":
      with open(path) as f:
        results = json.load(f)
      out[rel] = {k: results.get(k) for k in RESULT_FIELDS}
    elif name == "results.csv":
      with open(path) as f:
        out[rel] = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in csv.DictReader(f)]
    elif name.endswith(".npz"):
      with np.load(path) as data:
        out[rel] = {k: data[k].tolist() for k in data.files}
    elif name.endswith((".png", ".jpg")) or name.startswith("shard"):
      with open(path, "rb") as f:
        out[rel] = f.read()
  return out


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_killed_task_reruns_to_the_uninterrupted_products(task, bn_teacher, tmp_path, monkeypatch):
  config = _write_config(str(tmp_path), task, bn_teacher)
  reference_log = str(tmp_path / "reference.log")
  _run_in_process(config, str(tmp_path / "reference"), reference_log, monkeypatch)
  with open(reference_log) as f:
    passes = [line.strip() for line in f]
  kills = choose_kills(passes, KILLS_PER_TASK, seed=sorted(TASKS).index(task))
  assert len(kills) == KILLS_PER_TASK
  chain_log = str(tmp_path / "chain.log")
  survived = []
  for name, n in kills:
    killed = _launch(config, str(tmp_path / "chain"), f"{chain_log}::{name}:{n}")
    assert killed.returncode == -signal.SIGKILL, (name, n, killed.returncode, killed.stderr[-3000:])
    survived.append(f"{name}:{n}")
  final = _launch(config, str(tmp_path / "chain"), chain_log)
  assert final.returncode == 0, (survived, final.stderr[-3000:])
  expected = _products(str(tmp_path / "reference"))
  got = _products(str(tmp_path / "chain"))
  assert expected, "the reference produced nothing to compare"
  assert sorted(got) == sorted(expected), (survived, set(got) ^ set(expected))
  for key, value in expected.items():
    assert got[key] == value, (key, survived)
  print(f"{task}: survived {len(survived)} kills at {', '.join(survived)}")
