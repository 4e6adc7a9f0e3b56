"""Orbax checkpoints of the train state together with the Grain iterator position.

Saving both means a preempted run resumes on exactly the batch it would have seen next, so a
killed-and-resumed run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from hardlabel_jax import config_schema
from hardlabel_jax import disk_space
from hardlabel_jax import faults
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log

RUN_CONFIG_FILE = "run_config.json"
# Checkpoints that failed to restore are moved here (next to `checkpoints/`), never deleted.
FAILED_DIR = "checkpoints_failed"
# Orbax's files besides the arrays (metadata, OCDBT manifests, the data iterator's state), per
# checkpoint: 119 kB on disk for a 16 kB state measured here; counted in the space check.
CHECKPOINT_OVERHEAD_BYTES = 128 << 10
# Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete.
_UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"


class NoUsableCheckpointError(RuntimeError):
  """Every checkpoint of a workdir failed to restore."""


class Checkpointer:
  """Latest-N checkpoints of `{state, data}` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, save_every_steps: int, max_to_keep: int = 2,
               owner: bool = False):
    # At least two are kept, so a damaged latest checkpoint leaves one to fall back to.
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max(max_to_keep, 2),
                                                 save_interval_steps=save_every_steps, create=True)
    self._workdir = os.path.abspath(workdir)
    if owner:
      self._remove_unfinished()
    self._manager = self._open()
    self._state_bytes: int | None = None
    self._space_checked = False
    self._decision: tuple[int, bool] | None = None  # (step, orbax's should_save) of the last ask

  def _remove_unfinished(self) -> None:
    """Removes saves a stopped run left half-written (orbax's temporary step directories).

    Orbax would remove each when it next saves that step, with a warning; none is ever restored.
    Only the run that owns the workdir (`owner=True`, holding its lock) does this: a reader (a
    teacher's checkpoints) must not touch a save that may still be in progress.
    """
    directory = os.path.join(self._workdir, "checkpoints")
    if jax.process_index() == 0 and os.path.isdir(directory):
      for name in os.listdir(directory):
        if name.endswith(_UNFINISHED_SUFFIX):
          shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    mesh_lib.sync_processes("unfinished checkpoints removed")

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(os.path.join(self._workdir, "checkpoints"), options=self._options)

  def _move_aside(self, step: int) -> str:
    """Moves the damaged checkpoint `step` out of the manager's sight (kept for inspection)."""
    target = os.path.join(self._workdir, FAILED_DIR, str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      suffix = 0
      while os.path.exists(target if not suffix else f"{target}.{suffix}"):
        suffix += 1
      target = target if not suffix else f"{target}.{suffix}"
      self._manager.close()
      os.replace(os.path.join(self._workdir, "checkpoints", str(step)), target)
    mesh_lib.sync_processes(f"checkpoint {step} moved aside")
    self._manager = self._open()
    return target

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def will_save(self, step: int) -> bool:
    """Whether `save(step, ...)` will write a checkpoint (orbax also saves a run's first step).

    Orbax is asked once a step: the loop asks, then saves, and the answer is kept for the save
    (asking costs ~0.1 ms, and building the save's arguments more, on every step of a run).
    """
    if self._decision is None or self._decision[0] != step:
      with self._full_disk():  # may re-raise a background write's failure
        self._decision = (step, self._manager.should_save(step))
    return self._decision[1]

  def _full_disk(self, state: Any = None) -> Any:
    """A context naming this workdir's checkpoints and their size when the disk fills.

    Orbax writes in background threads; their failure reaches the main thread at the next save
    or wait, so every call that may re-raise it is wrapped.
    """
    if state is not None and self._state_bytes is None:
      self._state_bytes = state_bytes(state)  # once: a run's state keeps its shapes
    return disk_space.writing(os.path.join(self._workdir, "checkpoints"), "a checkpoint",
                              self._state_bytes)

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator,
           force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); returns whether it saved.

    Before the first save of a run, refuses (OutOfSpaceError) when the checkpoints it will keep
    at once cannot fit: orbax writes the newest before it deletes the oldest, so max_to_keep + 1.
    """
    if not force and not self.will_save(step):
      return False
    self._decision = None  # a save changes what orbax answers next
    with self._full_disk(state):
      if not self._space_checked:
        self._space_checked = True
        stored = len(self._manager.all_steps())
        copies = max(self._options.max_to_keep + 1 - stored, 1)
        disk_space.require(
            os.path.join(self._workdir, "checkpoints"),
            copies * (self._state_bytes + CHECKPOINT_OVERHEAD_BYTES),
            f"{copies} checkpoint(s) of {disk_space.format_bytes(self._state_bytes)} of arrays")
      args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iterator))
      saved = self._manager.save(step, args=args, force=force)
      if saved:
        faults.point("checkpoint_write")  # the save is asynchronous: its files are being written
    return saved

  def restore(self, state_template: Any, data_iterator: grain.DatasetIterator) -> Any:
    """Restores the newest checkpoint that restores into the template and rewinds the iterator.

    A checkpoint that fails (files truncated by a full disk, a partial copy, a kill mid-write) is
    reported with its step and reason, moved to `checkpoints_failed/`, and the next older one is
    tried; with none left, NoUsableCheckpointError says so.
    """
    moved = []
    while (step := self._manager.latest_step()) is not None:
      args = ocp.args.Composite(state=ocp.args.StandardRestore(state_template),
                                data=grain.checkpoint.CheckpointRestore(data_iterator))
      try:
        return self._manager.restore(step, args=args)["state"]
      except Exception as e:  # pylint: disable=broad-except
        # Orbax surfaces damaged files as JSONDecodeError, ValueError, OSError, KeyError, ...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        target = self._move_aside(step)
        moved.append(target)
        metrics_log.log_line(f"warning: checkpoint {step} in {self._workdir} does not restore "
                             f"({reason}); moved to {target}, trying the previous one")
    raise NoUsableCheckpointError(
        f"no checkpoint in {self._workdir}/checkpoints restores (moved aside: "
        f"{', '.join(moved)}); remove the workdir's checkpoints to start again from step 0")

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
    with self._full_disk():
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._full_disk():
      self._manager.close()

  def close_after_error(self) -> None:
    """Closes on the way out of a failed run: the save threads stop, their own errors dropped
    (the error being raised already says what went wrong)."""
    try:
      self._manager.close()
    except Exception:  # pylint: disable=broad-except
      pass


def state_bytes(state: Any) -> int:
  """Bytes of a state's arrays as a checkpoint stores them (one copy of a replicated array)."""
  return int(sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state)))


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that define a run's result (everything but logging/IO knobs)."""
  return config_schema.with_model_defaults({
      k: v
      for k, v in json.loads(config.to_json_best_effort()).items()
      if k not in config_schema.RESUMABLE_FIELDS
  })


def check_same_run(workdir: str, config: ml_collections.ConfigDict,
                   filename: str = RUN_CONFIG_FILE) -> None:
  """Refuses to resume a workdir whose checkpoints (or `filename`) came from another config."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _completed(json.load(f), run_identity(config_schema.default_config()))
  wanted = run_identity(config)
  # Only what the run reads can make it another run: a default changed since, of a field this run
  # never reads (an η of a schedule it does not use), leaves its result as it was.
  differing = config_schema.differences(_read_by(saved, config), _read_by(wanted, config))
  if differing:
    raise ValueError(f"workdir {workdir} holds a run with a different config "
                     f"({'; '.join(differing[:5])}). Use a new --workdir, or restore the original "
                     "config to resume.")


def _read_by(identity: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`identity` restricted to the fields `config`'s run reads, nested runs (teacher_config,
  score_config) to the fields theirs read."""
  read = config_schema.fields_read(config)
  out = {}
  for key, value in identity.items():
    if key not in read:
      continue
    nested = config.get(key)
    if isinstance(value, dict) and "task" in value and isinstance(nested,
                                                                  ml_collections.ConfigDict):
      value = _read_by(value, nested)
    out[key] = value
  return out


def _completed(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  """A stored run config with the fields added since it was written at what it ran with.

  That is their defaults, except for a field whose default is not what runs did before it existed
  (`config_schema.BEFORE_THE_FIELD`): a run written without `crop_resize` cropped by PIL's box
  resize, so it is not resumed under the crop-then-resize default. Nested runs (teacher_config,
  score_config) are completed too.
  """
  out = {**defaults, **config_schema.BEFORE_THE_FIELD, **saved}
  for key, value in out.items():
    if isinstance(value, dict) and "task" in value:
      out[key] = _completed(value, json.loads(config_schema.default_config().to_json_best_effort()))
  return config_schema.with_model_defaults(out)


def write_run_identity(workdir: str, config: ml_collections.ConfigDict,
                       filename: str = RUN_CONFIG_FILE) -> None:
  """Records the run's identity next to its checkpoints (atomically)."""
  metrics_log.write_json_atomic(os.path.join(workdir, filename), run_identity(config))
