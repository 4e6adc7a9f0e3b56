"""Orbax checkpoints of the train state together with the Grain iterator position.

Saving both means a preempted run resumes on exactly the batch it would have seen next, so a
killed-and-resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from hardlabel_jax import config_schema
from hardlabel_jax import metrics_log

RUN_CONFIG_FILE = "run_config.json"


class Checkpointer:
  """Latest-N checkpoints of `{state, data}` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, save_every_steps: int, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_every_steps, create=True)
    self._manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                          options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); returns whether it saved."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iterator))
    return self._manager.save(step, args=args, force=force)

  def restore(self, state_template: Any, data_iterator: grain.DatasetIterator) -> Any:
    """Restores the latest state into the template's shardings and rewinds the iterator."""
    step = self._manager.latest_step()
    args = ocp.args.Composite(state=ocp.args.StandardRestore(state_template),
                              data=grain.checkpoint.CheckpointRestore(data_iterator))
    return self._manager.restore(step, args=args)["state"]

  def restore_variables(self) -> dict[str, Any]:
    """The latest model variables (`params`, `batch_stats`) as host arrays, without a template."""
    step = self._manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self._manager.directory}")
    # The stored shardings name the devices of the run that saved it (a pod, 2 processes, 8
    # devices); restoring onto this process's first device works on any topology.
    path = os.path.join(os.fspath(self._manager.directory), str(step), "state")
    with ocp.StandardCheckpointer() as reader:
      stored = reader.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored,
                          is_leaf=lambda x: hasattr(x, "shape"))
    state = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
      variables["batch_stats"] = state["batch_stats"]
    return variables

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that define a run's result (everything but logging/IO knobs)."""
  return {
      k: v
      for k, v in json.loads(config.to_json_best_effort()).items()
      if k not in config_schema.RESUMABLE_FIELDS
  }


def check_same_run(workdir: str, config: ml_collections.ConfigDict,
                   filename: str = RUN_CONFIG_FILE) -> None:
  """Refuses to resume a workdir whose checkpoints (or `filename`) came from another config."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = run_identity(config)
  differing = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  if differing:
    details = "; ".join(
        f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in differing[:5])
    raise ValueError(f"workdir {workdir} holds a run with a different config ({details}). "
                     "Use a new --workdir, or restore the original config to resume.")


def write_run_identity(workdir: str, config: ml_collections.ConfigDict,
                       filename: str = RUN_CONFIG_FILE) -> None:
  """Records the run's identity next to its checkpoints (atomically)."""
  metrics_log.write_json_atomic(os.path.join(workdir, filename), run_identity(config))
