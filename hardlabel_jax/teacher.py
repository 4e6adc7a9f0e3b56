"""Teachers: a finished HL run's workdir, loaded as a frozen model, and its identity.

A teacher is a workdir (checkpoints + run_config.json + results.json written by the HL trainer).
Its identity is the recipe that made it (the fields its run reads) and its training split's
fingerprint, so a cached teacher is found by that identity and an explicit one checked against it.
Training a missing teacher is the plan's job (`hardlabel_jax.plan`); this module only loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models


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
    return {
        "workdir": os.path.abspath(self.workdir),
        "fingerprint": self.fingerprint,
        "model": self.results.get("config", {}).get("model"),
        "test_top1": self.results.get("test_top1")
    }


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where teachers, scores, distilled sets and tables shared between runs live."""
  return os.path.abspath(config.cache_dir or workdir)


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def is_finished(workdir: str) -> bool:
  """Whether `workdir` holds a completed HL run (its results.json is written last)."""
  return os.path.exists(os.path.join(workdir, "results.json"))


def identity(run_config: ml_collections.ConfigDict | Mapping[str, Any],
             dataset_fingerprint: str) -> dict[str, Any]:
  """What a teacher is: the fields its HL run reads and the fingerprint of its training split."""
  return {"run": cache.run_recipe(run_config), "dataset_fingerprint": dataset_fingerprint}


def stored_identity(path: str) -> dict[str, Any]:
  """The identity of the finished teacher run in `path`, from its run config and results."""
  if not is_finished(path):
    raise FileNotFoundError(f"config.teacher_workdir: {path} holds no finished run "
                            "(results.json missing)")
  run_config = _read_json(os.path.join(path, checkpointing.RUN_CONFIG_FILE))
  results = _read_json(os.path.join(path, "results.json"))
  return identity(run_config, results.get("dataset_fingerprint", ""))


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
  fingerprint = hashlib.sha256(json.dumps([run_config, step],
                                          sort_keys=True).encode()).hexdigest()[:16]
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))
  if _shapes(dict(expected)) != _shapes(variables):
    raise ValueError(f"the checkpoint in {path} does not fit {run_config['model']} with "
                     f"{num_classes} classes on inputs {input_shape[1:]}; was the teacher "
                     "trained on another data set?")
  variables = mesh_lib.replicate_host_arrays(variables, mesh)
  return Teacher(model, variables, path, results, fingerprint)
