"""Teachers for online distillation: a finished HL run's workdir, loaded as a frozen model.

The teacher is identified by its workdir (checkpoints + run_config.json + results.json written by
the HL trainer), so any teacher this library trained can be reused by any student run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hardlabel_jax import checkpointing
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import run_data


@dataclasses.dataclass
class Teacher:
  """A frozen model, its variables (replicated over the mesh) and its own results."""

  model: nn.Module
  variables: dict[str, Any]
  workdir: str
  results: dict[str, Any]
  fingerprint: str = ""  # hash of the teacher's run config and checkpoint step

  def describe(self) -> dict[str, Any]:
    """What a soft-label table header records about its teacher."""
    return {"workdir": os.path.abspath(self.workdir), "fingerprint": self.fingerprint,
            "model": self.results.get("config", {}).get("model"),
            "test_top1": self.results.get("test_top1")}


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where teachers and soft-label tables shared between runs live: `cache_dir` or the workdir."""
  return config.cache_dir or workdir


def teacher_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`config.teacher_workdir`, or `<cache_dir>/teacher` when it is empty."""
  return config.teacher_workdir or os.path.join(cache_dir(config, workdir), "teacher")


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def is_finished(workdir: str) -> bool:
  """Whether `workdir` holds a completed HL run (its results.json is written last)."""
  return os.path.exists(os.path.join(workdir, "results.json"))


def ensure_teacher(config: ml_collections.ConfigDict, workdir: str,
                   train_fn: Callable[[ml_collections.ConfigDict, str], Any]) -> str:
  """Returns the teacher's workdir, training it first from `config.teacher_config` if absent."""
  path = teacher_workdir(config, workdir)
  if is_finished(path):
    return path
  if config.teacher_config is None:
    raise FileNotFoundError(
        f"config.teacher_workdir: no finished teacher run in {path} (results.json missing) and "
        "no config.teacher_config to train one; train a teacher with configs/embedded_hl.py "
        "(or any HL config) and point teacher_workdir at its workdir")
  train_fn(config.teacher_config, path)
  return path


def teacher_for_run(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
                    mesh: jax.sharding.Mesh,
                    devices: list[jax.Device] | None = None) -> Teacher:
  """A run's teacher, loaded for its data; trained first from `teacher_config` if absent."""
  from hardlabel_jax import trainer  # pylint: disable=g-import-not-at-top  (trainer imports us)

  path = ensure_teacher(config, workdir,
                        lambda c, w: trainer.train_and_evaluate(c, w, devices=devices))
  return load_teacher(path, num_classes=data.train.info.num_classes,
                      input_shape=run_data.input_shape(config, data), mesh=mesh)


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda x: tuple(x.shape), tree)


def load_teacher(path: str, *, num_classes: int, input_shape: tuple[int, ...],
                 mesh: jax.sharding.Mesh) -> Teacher:
  """Rebuilds the teacher's model from its run config and restores its latest variables."""
  if not is_finished(path):
    raise FileNotFoundError(f"config.teacher_workdir: {path} holds no finished run")
  run_config = _read_json(os.path.join(path, checkpointing.RUN_CONFIG_FILE))
  results = _read_json(os.path.join(path, "results.json"))
  if run_config["image_size"] != input_shape[1]:
    raise ValueError(f"config.image_size: the teacher in {path} was trained at "
                     f"{run_config['image_size']} px, the student uses {input_shape[1]} px")
  model = models.model_from_config(run_config, num_classes)
  checkpointer = checkpointing.Checkpointer(path, save_every_steps=1)
  try:
    step = checkpointer.latest_step()
    variables = checkpointer.restore_variables()
  finally:
    checkpointer.close()
  fingerprint = hashlib.sha256(
      json.dumps([run_config, step], sort_keys=True).encode()).hexdigest()[:16]
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape),
                                               train=False))
  if _shapes(dict(expected)) != _shapes(variables):
    raise ValueError(f"the checkpoint in {path} does not fit {run_config['model']} with "
                     f"{num_classes} classes on inputs {input_shape[1:]}; was the teacher "
                     "trained on another data set?")
  variables = mesh_lib.replicate_host_arrays(variables, mesh)
  return Teacher(model, variables, path, results, fingerprint)
