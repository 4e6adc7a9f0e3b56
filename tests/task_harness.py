"""Every task of the library as a command on tiny data, run in-process or in a fresh process.

Shared by the fault-injection (SIGKILL) and preemption (SIGTERM, full disk) tests: one config per
task, the command `main.py` runs, and the products a task leaves (compared bit for bit between an
uninterrupted run and an interrupted-and-rerun one).
"""

import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import faults
from hardlabel_jax import plan
from hardlabel_jax import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# results.json fields that depend only on what was computed (not on time or on resumption).
RESULT_FIELDS = ("test_top1", "test_loss", "steps", "examples_seen", "epochs", "pool_size",
                 "label_bytes", "test_examples", "num_params")
BASE = {
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
CONFIG_FILE = '''
import json
from hardlabel_jax import config_schema

def get_config(arg=None):
  config = config_schema.default_config()
  with open({overrides!r}) as f:
    for key, value in json.load(f).items():
      config[key] = tuple(value) if isinstance(value, list) else value
  return config_schema.reset_unread(config)
'''


def write_config(directory, task: str, teacher: str, **extra) -> str:
  """The config file of `task` (with `extra` overrides), `teacher` as its teacher_workdir."""
  overrides = {**BASE, **TASKS[task], **extra}
  overrides = {k: teacher if v == TEACHER else v for k, v in overrides.items()}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "overrides.json"), "w") as f:
    json.dump(overrides, f)
  path = os.path.join(directory, "config.py")
  with open(path, "w") as f:
    f.write(CONFIG_FILE.format(overrides=os.path.join(directory, "overrides.json")))
  return path


def launch(config: str, root: str, faults_setting: str, *flags: str) -> subprocess.CompletedProcess:
  """The task's command (with `flags`) in a fresh process: workdir and cache under `root`."""
  env = {
      **os.environ, faults.ENV: faults_setting,
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(root), "xla"),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"
  }
  command = [
      sys.executable, "-m", "hardlabel_jax.main", "--config", config, "--workdir",
      os.path.join(root, "work"), f"--config.cache_dir={os.path.join(root, 'cache')}", *flags
  ]
  return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def run_in_process(config_file: str, root: str, log: str, monkeypatch) -> None:
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


def products(root: str) -> dict[str, object]:
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
