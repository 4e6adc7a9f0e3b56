"""The linear trainer: given data, a teacher and a table, budgeted steps → checkpoints → evaluation.

Read top to bottom as one run (big_vision style). The trainer builds nothing it trains on: the
plan (`hardlabel_jax.plan`) resolves and checks the teacher, scores, distilled set and soft-label
table first and passes them in; the trainer returns a `RunOutput` and the plan writes results.json.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hardlabel_jax import batch_feed
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import faults
from hardlabel_jax import hald
from hardlabel_jax import losses
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import optim
from hardlabel_jax import preemption
from hardlabel_jax import run_data
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax.data import dsa
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import pool_memory
from hardlabel_jax.data import replay
from hardlabel_jax.soft_labels import table as table_lib

RESULTS_FILE = "results.json"
# `batch_hook(step, per_example, checkpoint)`: see `train`.
BatchHook = Callable[[int, dict[str, np.ndarray], bool], None]


class NonFiniteLossError(FloatingPointError):
  """A NaN/Inf training loss (names the step) or test metric (names it); no results are written."""


@dataclasses.dataclass(frozen=True)
class FrozenModel:
  """A teacher as the loop sees it: a module and its variables, replicated over the mesh."""

  model: nn.Module
  variables: Any


@dataclasses.dataclass
class RunOutput:
  """What a training run returns: its results (results.json) and its final state."""

  results: dict[str, Any]
  state: train_state_lib.TrainState


@dataclasses.dataclass(frozen=True)
class Budget:
  """How long a run trains: the compute budget in examples and what it implies."""

  examples: int
  global_batch: int
  pool_size: int

  @property
  def steps(self) -> int:
    return self.examples // self.global_batch

  @property
  def steps_per_epoch(self) -> float:
    return self.pool_size / self.global_batch

  @property
  def epochs(self) -> float:
    return self.steps * self.global_batch / self.pool_size


def budget_from_config(config: ml_collections.ConfigDict, pool_size: int) -> Budget:
  """`budget_examples`, or `num_epochs` × pool size; at least one global batch."""
  examples = config.budget_examples or int(round(config.num_epochs * pool_size))
  budget = Budget(examples, config.global_batch_size, pool_size)
  if budget.steps < 1:
    raise ValueError(f"config.budget_examples: a budget of {examples} examples is less than one "
                     f"global batch of {config.global_batch_size}")
  return budget


def evaluate(state: train_state_lib.TrainState, eval_fn: Callable, data: run_data.RunData,
             config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Top-1 accuracy and mean NLL over the whole test split (centre views, padding masked)."""
  batches = pipeline.evaluation_batches(
      data.test, size=config.image_size, crop_fraction=config.eval_crop_fraction,
      normalizer=data.normalizer, global_batch=mesh_lib.padded_batch(config.eval_batch_size, mesh),
      process_index=jax.process_index(), process_count=jax.process_count(),
      loading=pipeline.LoaderOptions.from_config(config))
  feed = batch_feed.BatchFeed(mesh)
  # Read once at the end (summed on the host in batch order), with at most `_steps_in_flight`
  # batches unfinished: their sums are all-reduces, as a train step's gradients are.
  per_batch, most_in_flight = [], _steps_in_flight(mesh)
  for local in batches:
    per_batch.append(eval_fn(state, feed(local)))
    if len(per_batch) > most_in_flight:
      jax.block_until_ready(per_batch[-1 - most_in_flight])
  totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  for sums in jax.device_get(per_batch):
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  if not totals["count"]:
    raise ValueError(f"the test split {data.test.info.split!r} of {data.test.info.name} has no "
                     "examples to evaluate")
  return {
      "test_top1": totals["correct"] / totals["count"],
      "test_loss": totals["loss_sum"] / totals["count"],
      "test_examples": int(totals["count"])
  }


def check_test_metrics(test_metrics: dict[str, float], data: run_data.RunData,
                       num_classes: int) -> None:
  """Raises NonFiniteLossError naming each test metric that is NaN/Inf, and the likely cause."""
  bad = {
      k: test_metrics[k] for k in ("test_loss", "test_top1") if not math.isfinite(test_metrics[k])
  }
  if not bad:
    return
  # Read only on this error path: a TFDS test split's labels may take a while to read.
  labels = np.asarray(data.test.labels())
  outside = int(np.sum((labels < 0) | (labels >= num_classes)))
  if outside:
    cause = (f"{outside} test labels have no model output (the model has {num_classes} classes, "
             f"the test labels span {int(labels.min())}..{int(labels.max())}): the test split's "
             "classes do not match the train split's")
  else:
    cause = "the run diverged (lower the learning rate) or the test images hold NaN/Inf pixels"
  shown = ", ".join(f"{k} is {v}" for k, v in bad.items())
  raise NonFiniteLossError(f"after training, {shown} on the {test_metrics['test_examples']} test "
                           f"examples of {data.test.info.name}; likely cause: {cause}. No "
                           "results are written")


class NonFiniteWatch:
  """The first step whose training loss was NaN/Inf, tracked on the device.

  `update` is dispatched with every step and never waits for it; `check` reads the device (one
  scalar) and is called only where the loop syncs anyway: at log points, before a checkpoint is
  saved (a NaN state is never written) and at the end. The error still names the exact step.
  """

  def __init__(self, mesh: jax.sharding.Mesh):
    replicated = mesh_lib.replicated(mesh)
    self._first = jax.device_put(np.zeros((), np.int32), replicated)  # 0: none yet
    self._loss = jax.device_put(np.zeros((), np.float32), replicated)
    self._update = jax.jit(_first_nonfinite, donate_argnums=(0, 1))

  def update(self, step: jax.Array, loss: jax.Array) -> None:
    self._first, self._loss = self._update(self._first, self._loss, step, loss)

  def check(self) -> None:
    first = int(self._first)
    if first:
      raise NonFiniteLossError(f"loss is {float(self._loss)} at step {first}; stopping (lower the "
                               "learning rate or check the data)")


def _first_nonfinite(first: jax.Array, loss_then: jax.Array, step: jax.Array,
                     loss: jax.Array) -> tuple[jax.Array, jax.Array]:
  newly = (first == 0) & ~jnp.isfinite(loss)
  return (jnp.where(newly, step.astype(jnp.int32),
                    first), jnp.where(newly, loss.astype(jnp.float32), loss_then))


class _DeferredLog:
  """A log point's metrics, copied to the host asynchronously and written after the next step
  is dispatched, so the host never waits for the step it logs (the device stays busy)."""

  def __init__(self, log: metrics_log.MetricsLog, progress: metrics_log.Progress,
               watch: NonFiniteWatch):
    self._log, self._progress, self._watch = log, progress, watch
    self._pending: tuple[int, dict[str, jax.Array]] | None = None

  def start(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.flush()
    for value in metrics.values():
      value.copy_to_host_async()
    self._pending = (step, metrics)

  def flush(self) -> None:
    """Writes the pending log point (checking the loss first); a no-op without one."""
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    self._watch.check()
    scalars = {k: float(v) for k, v in metrics.items()}
    rates = self._progress.update(step)
    self._log.write(step, {**scalars, **rates})
    metrics_log.log_line(self._progress.line(step, scalars, rates))


def _settle(outputs: tuple[int, Any], batch_hook: BatchHook | None,
            checkpoint: bool = False) -> None:
  """Hands a step's per-example outputs to `batch_hook` (reads the device)."""
  step, per_example = outputs
  if batch_hook is not None:
    batch_hook(step, jax.tree.map(np.asarray, per_example), checkpoint)


def _online_teacher_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, budget: Budget,
                         teacher: FrozenModel, common: dict) -> Callable:
  """KD (any registry loss) or SL+KD (KL at T against the teacher on the same crop)."""
  if config.regime == "sl_kd":
    loss_fn = losses.get_distillation_loss("kl", config.logit_standardization,
                                           temperature=config.temperature)
    warmup = 0.0
  else:
    loss_fn = losses.get_distillation_loss(config.distillation_loss,
                                           logit_standardization=config.logit_standardization,
                                           **config.distillation_kwargs.to_dict())
    warmup = config.kd_warmup_epochs
  step = train_steps.jit_train_step(train_steps.kd_train_step, mesh, num_replicated_args=1,
                                    teacher_model=teacher.model, distillation_loss=loss_fn,
                                    warmup_epochs=warmup, steps_per_epoch=budget.steps_per_epoch,
                                    **common)
  return lambda state, batch: step(state, batch, teacher.variables)


def _make_steps(config: ml_collections.ConfigDict, model, tx, schedule, step_rng: jax.Array,
                mesh: jax.sharding.Mesh, budget: Budget, num_classes: int,
                teacher: FrozenModel | None, record_margins: bool = False) -> dict[str, Callable]:
  """The compiled train step of each phase of the configured regime, as `step(state, batch)`."""
  common = dict(model=model, tx=tx, schedule=schedule, base_rng=step_rng)
  if config_schema.train_crop_recipe(config) == "dsa":
    # Only the HL and online-teacher steps take it (config_schema.DSA_REGIMES).
    common["augment"] = functools.partial(dsa.augment, strategy=config.dsa_strategy)
  if record_margins and config.regime != "hl":
    raise ValueError(f"config.regime: per-example training margins are recorded by the HL step "
                     f"only, not under {config.regime!r}")
  if config.regime in config_schema.ONLINE_TEACHER_REGIMES:
    return {hald.TRAIN: _online_teacher_step(config, mesh, budget, teacher, common)}

  def hard(smoothing: float, batch_cutmix_alpha: float = 0.0) -> Callable:
    return train_steps.jit_train_step(train_steps.hl_train_step, mesh, num_classes=num_classes,
                                      label_smoothing=smoothing, record_margins=record_margins,
                                      batch_cutmix_alpha=batch_cutmix_alpha, **common)

  if config.regime == "hl":
    return {hald.TRAIN: hard(config.label_smoothing)}
  soft = train_steps.jit_train_step(train_steps.sl_train_step, mesh, temperature=config.temperature,
                                    soft_weight=config.soft_loss_weight, **common)
  if config.regime == "sl":
    return {hald.SOFT: soft}
  schedule_spec = hald.parse_schedule(config.hald_schedule)
  if schedule_spec.is_hybrid:
    return {
        hald.HYBRID: train_steps.jit_train_step(train_steps.hybrid_train_step, mesh,
                                                num_classes=num_classes,
                                                label_smoothing=config.hald_label_smoothing,
                                                temperature=config.temperature,
                                                hard_weight=schedule_spec.hybrid_weight,
                                                soft_weight=config.soft_loss_weight, **common)
    }
  # 'batch_reversed': the step CutMixes each hard batch with itself reversed (the official timm
  # Mixup); 'pool': the pipeline pastes a per-example partner drawn from the pool.
  on_device = config.hald_hard_cutmix == "batch_reversed"
  return {
      hald.SOFT: soft,
      hald.HARD: hard(config.hald_label_smoothing, config.hald_cutmix_alpha if on_device else 0.0)
  }


def step_phases(config: ml_collections.ConfigDict, budget: Budget) -> hald.StepPhases:
  """Which phase each step of the run is in (one phase for every regime but `hald`)."""
  if config.regime == "hald":
    schedule = hald.parse_schedule(config.hald_schedule)
  else:
    schedule = hald.Schedule(hald.SOFT if config.regime == "sl" else hald.TRAIN)
  return hald.StepPhases(schedule, budget.steps, budget.global_batch, budget.pool_size,
                         config.hald_hard_fraction)


def training_examples(config: ml_collections.ConfigDict, data: run_data.RunData,
                      table: table_lib.SoftLabelTable | None,
                      phases: hald.StepPhases) -> Callable[[int], dict]:
  """Global stream position → training example, for the configured regime."""
  order = pipeline.EpochShuffle(len(data.pool_ids), config.seed)
  train = pool_memory.in_memory(data.train, data.pool_ids)  # every epoch reads the pool again
  fresh = pipeline.CropExample(train, data.pool_ids, data.crop_spec, config.seed, data.normalizer,
                               on_device=data.on_device)
  if table is None:
    return pipeline.FreshCrops(fresh, order)
  stored = run_data.table_crop_example(config, data, train)
  # LPLD's stored batches are built here so that a pool smaller than a batch, or a fraction that
  # keeps no batch, stops the run before its first step.
  batches = table_lib.lpld_batches(table.spec, config.label_pruning, config.label_keep_fraction,
                                   config.global_batch_size)
  soft = replay.TableCrops(stored, order, table.directory, config.seed, config.label_keep_fraction,
                           batches)
  if config.regime == "sl" or phases.schedule.is_hybrid:
    return soft
  # Under 'batch_reversed' the hard step mixes the batch on the device; the crops stay unmixed.
  pipeline_alpha = config.hald_cutmix_alpha if config.hald_hard_cutmix == "pool" else 0.0
  hard_spec = dataclasses.replace(data.crop_spec, cutmix_alpha=pipeline_alpha)
  hard = pipeline.FreshCrops(
      pipeline.CropExample(train, data.pool_ids, hard_spec, config.seed, data.normalizer,
                           on_device=data.on_device), order, slot_offset=config.crops_per_image)
  return replay.PhasedCrops(phases, soft, hard, data.train.info.num_classes)


def _label_summary(config: ml_collections.ConfigDict,
                   table: table_lib.SoftLabelTable | None) -> dict:
  """`label_bytes` (soft-label bytes the run used; 0 without a table) and the table's identity."""
  if table is None:
    return {"label_bytes": 0}
  batches = table_lib.lpld_batches(table.spec, config.label_pruning, config.label_keep_fraction,
                                   config.global_batch_size)
  summary = {
      "label_bytes": table_lib.kept_label_bytes(table, config.seed, config.label_keep_fraction,
                                                config.label_pruning, config.global_batch_size),
      "table_dir": os.path.abspath(table.directory),
      "table_bytes": table.table_bytes,
      "table_label_bytes": table.label_bytes,
      "label_format": table.spec.label_format,
      "crops_per_image": table.spec.slots_per_image,
      "label_keep_fraction": config.label_keep_fraction,
      # 'none' at a fraction of 1, where either mode replays every crop.
      "label_pruning": config.label_pruning if config.label_keep_fraction < 1 else "none"
  }
  if batches is not None:
    summary.update(stored_batches=batches.num_batches, kept_batches=batches.num_kept,
                   drawable_batches=int(batches.drawable().size))
  return summary


def _steps_in_flight(mesh: jax.sharding.Mesh) -> int:
  """How many dispatched steps may be unfinished before the loop waits for the oldest.

  On the CPU backend one: the devices of a mesh share the host's thread pool, and two queued
  steps' all-reduces could each hold some of the devices' threads while waiting for the others,
  until XLA's rendezvous gives up (40 s) and aborts the process. Seen with unbounded dispatch on
  8 simulated devices; waiting for the previous step (as the loop always did) never deadlocks.
  Elsewhere a few, so that the host prepares the next batches while the device computes.
  """
  return 1 if mesh.devices.flat[0].platform == "cpu" else 4


# Each phase's compiled step, `step(state, batch) -> (state, metrics)` (`_make_steps`).
StepFunctions = dict[str, Callable]


def _train_loop(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                state: train_state_lib.TrainState, iterator, feed: batch_feed.BatchFeed,
                step_fns: StepFunctions, phases: hald.StepPhases, budget: Budget, start_step: int,
                checkpointer: checkpointing.Checkpointer, log: metrics_log.MetricsLog,
                progress: metrics_log.Progress, *, step_hook, epoch_hook,
                batch_hook: BatchHook | None) -> tuple[train_state_lib.TrainState, float]:
  """Steps start_step+1..budget.steps with checkpoints; the final state and the seconds it took.

  A preemption signal (`hardlabel_jax.preemption`) stops it after the step it arrives in: that
  step is saved with the iterator position, then `Preempted` is raised.
  """
  start_time = time.perf_counter()
  # No step reads its loss back: it is watched on the device, log points copy their metrics
  # asynchronously, and the per-example outputs a batch hook wants are read one step late. The
  # host runs at most `_steps_in_flight` steps ahead.
  watch = NonFiniteWatch(mesh)
  deferred = _DeferredLog(log, progress, watch)
  pending = None  # the previous step's outputs, for batch_hook
  in_flight = collections.deque()
  most_in_flight = _steps_in_flight(mesh)
  for step in range(start_step + 1, budget.steps + 1):
    step_fn = step_fns[phases.of_step(step - 1)]
    state, metrics = step_fn(state, feed(next(iterator)))
    outputs = (step, metrics.pop(train_steps.PER_EXAMPLE, None))
    watch.update(state.step, metrics["loss"])
    in_flight.append(metrics["loss"])
    if len(in_flight) > most_in_flight:
      in_flight.popleft().block_until_ready()
    deferred.flush()  # the previous step's log point, if it was one
    if batch_hook is not None:
      if pending is not None:
        _settle(pending, batch_hook)
      pending = outputs
    if step % config.log_every_steps == 0 or step == budget.steps or step == start_step + 1:
      deferred.start(step, metrics)
    if epoch_hook is not None:
      done_before = (step - 1) * config.global_batch_size // budget.pool_size
      for epoch in range(done_before, step * config.global_batch_size // budget.pool_size):
        epoch_hook(epoch, state)
    if checkpointer.will_save(step) or step == budget.steps:
      deferred.flush()
      watch.check()  # a NaN state is never saved
      if pending is not None:
        # Recorded before the checkpoint exists, so a run resumed from it finds them; the save
        # waits for this step's state anyway. Asked of the checkpointer, not the interval:
        # orbax also saves the first step of a run, and a kill after that save lost steps 1..1.
        _settle(pending, batch_hook, checkpoint=True)
        pending = None
    checkpointer.save(step, state, iterator)
    faults.point("train_step")
    if step_hook is not None:
      step_hook(step)
    # Asked at the last step too (the sync manager counts every step); a stop there lets the run
    # finish, and whatever comes next (a study's next cell) stops instead.
    if preemption.stop_requested(step) and step < budget.steps:
      deferred.flush()
      watch.check()
      _save_preempted(step, state, iterator, checkpointer, pending, batch_hook)
      raise preemption.stop(f"training stopped at step {step} of {budget.steps}, checkpoint "
                            f"{step} saved in {os.path.abspath(workdir)}")
  deferred.flush()
  watch.check()
  if pending is not None:
    _settle(pending, batch_hook, checkpoint=True)
  checkpointer.save(budget.steps, state, iterator, force=checkpointer.latest_step() != budget.steps)
  checkpointer.wait()
  return state, time.perf_counter() - start_time


def _save_preempted(step: int, state: train_state_lib.TrainState, iterator,
                    checkpointer: checkpointing.Checkpointer, pending, batch_hook) -> None:
  """Saves `step` off the interval (unless orbax's preemption save already did) and waits."""
  if checkpointer.latest_step() != step:
    if pending is not None:  # what the hook persists belongs with the checkpoint
      _settle(pending, batch_hook, checkpoint=True)
    checkpointer.save(step, state, iterator, force=True)
  checkpointer.wait()


def _initial_state(config: ml_collections.ConfigDict, data: run_data.RunData,
                   mesh: jax.sharding.Mesh, budget: Budget) -> tuple:
  """The run's model, optimizer, schedule, initial state (replicated) and step RNG."""
  model = models.model_from_config(config, data.train.info.num_classes)
  schedule = optim.learning_rate_schedule(config, budget.steps, budget.steps_per_epoch)
  tx = optim.make_optimizer(config, schedule)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, model, tx,
                        input_shape=run_data.input_shape(config, data)),
      out_shardings=mesh_lib.replicated(mesh))(init_rng)
  return model, tx, schedule, state, step_rng


def standalone_step_rate(config: ml_collections.ConfigDict, data: run_data.RunData,
                         mesh: jax.sharding.Mesh, *, teacher: FrozenModel | None = None,
                         table: table_lib.SoftLabelTable | None = None, steps: int = 20,
                         repeats: int = 3) -> dict[str, float]:
  """Examples/s of the run's own compiled step(s) alone, without its input pipeline.

  Each phase's step (HALD: soft and hard) runs `steps` times on one real batch of that phase,
  already on the devices (the median over `repeats`, after a compiling call); the run's rate is
  the phases' harmonic mean weighted by their step counts. What a whole cell reaches as a
  fraction of this is what its input pipeline and loop cost (`benchmarks.cell`).
  """
  budget = budget_from_config(config, len(data.pool_ids))
  model, tx, schedule, state, step_rng = _initial_state(config, data, mesh, budget)
  phases = step_phases(config, budget)
  step_fns = _make_steps(config, model, tx, schedule, step_rng, mesh, budget,
                         data.train.info.num_classes, teacher)
  feed = batch_feed.BatchFeed(mesh, run_data.device_crops(data, mesh))
  # The run's own batches, by index (this process's rows, as the loop's stream makes them).
  batches = pipeline.process_batches(training_examples(config, data, table,
                                                       phases), num_batches=budget.steps,
                                     global_batch=config.global_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  batch_size = config.global_batch_size
  seconds_per_step = {}
  counts = phases.counts()
  for step in range(budget.steps):  # the first step of each phase
    phase = phases.of_step(step)
    if phase in seconds_per_step:
      continue
    batch = feed(batches[step])  # on the devices, the crops made, before the timing
    state, _ = step_fns[phase](state, batch)  # compiles
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step_fns[phase](state, batch)
      jax.block_until_ready((state, metrics))
      times.append((time.perf_counter() - start) / steps)
    seconds_per_step[phase] = float(np.median(times))
    if len(seconds_per_step) == len(counts):
      break
  total = sum(counts[p] for p in seconds_per_step)
  mean_seconds = sum(counts[p] * t for p, t in seconds_per_step.items()) / total
  return {
      "examples_per_sec": batch_size / mean_seconds,
      **{
          f"{phase}_examples_per_sec": batch_size / t for phase, t in seconds_per_step.items()
      }
  }


def train(config: ml_collections.ConfigDict, workdir: str, data: run_data.RunData,
          mesh: jax.sharding.Mesh, *, teacher: FrozenModel | None = None,
          table: table_lib.SoftLabelTable | None = None,
          step_hook: Callable[[int], None] | None = None,
          epoch_hook: Callable[[int, train_state_lib.TrainState], None] | None = None,
          batch_hook: BatchHook | None = None) -> RunOutput:
  """Trains under the configured regime for the budget and evaluates on the test split.

  The caller (the plan) has validated the config and checked the workdir. `epoch_hook(epoch,
  state)` runs after the step that completes each (0-based) epoch, before the next step (scoring
  runs record per-example statistics there). `batch_hook(step, per_example, checkpoint)` (HL only)
  gets every step's `{id, margin}` host arrays (`train_steps.hl_train_step`), in step order, a step
  late so that dispatch stays asynchronous; `checkpoint=True` marks a step on the checkpoint
  interval or the last one, whose checkpoint is saved after the call, so what the hook persists
  there is on disk before a resumed run restarts from that step.
  """
  run_start = time.perf_counter()
  budget = budget_from_config(config, len(data.pool_ids))
  is_writer = jax.process_index() == 0
  info = data.train.info
  model, tx, schedule, state, step_rng = _initial_state(config, data, mesh, budget)

  phases = step_phases(config, budget)
  iterator = pipeline.position_stream(training_examples(config, data, table, phases),
                                      global_batch=config.global_batch_size, num_steps=budget.steps,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      loading=pipeline.LoaderOptions.from_config(config))

  os.makedirs(workdir, exist_ok=True)
  if is_writer:  # every process renaming the same temp file would race
    checkpointing.write_run_identity(workdir, config)
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint_every_steps, owner=True)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state, iterator)
  start_step = int(state.step)

  step_fns = _make_steps(config, model, tx, schedule, step_rng, mesh, budget, info.num_classes,
                         teacher, record_margins=batch_hook is not None)
  feed = batch_feed.BatchFeed(mesh, run_data.device_crops(data, mesh))
  log = metrics_log.MetricsLog(workdir, tensorboard=config.tensorboard, enabled=is_writer)
  progress = metrics_log.Progress(budget.steps, config.global_batch_size, start_step)
  metrics_log.log_line(
      f"training {config.model} on {len(data.pool_ids)} examples of {info.name} "
      f"({info.num_classes} classes), {budget.steps} steps × {config.global_batch_size} = "
      f"{budget.steps * config.global_batch_size} examples ({budget.epochs:.1f} epochs) on "
      f"{mesh.size} devices, crops made on the {data.crop_backend}; starting at step {start_step}")

  try:
    state, train_seconds = _train_loop(config, workdir, mesh, state, iterator, feed, step_fns,
                                       phases, budget, start_step, checkpointer, log, progress,
                                       step_hook=step_hook, epoch_hook=epoch_hook,
                                       batch_hook=batch_hook)
  except BaseException:
    # Stops orbax's save threads before the interpreter does (they would print tracebacks at
    # exit); a completed preemption save has already been waited for.
    log.close()
    checkpointer.close_after_error()
    raise

  eval_fn = train_steps.jit_eval_step(mesh, model)
  test_metrics = evaluate(state, eval_fn, data, config, mesh)
  try:
    # Before anything records them: results.json (written by the plan) must never hold a NaN.
    check_test_metrics(test_metrics, data, info.num_classes)
    log.write(budget.steps, test_metrics)
  finally:
    log.close()
    checkpointer.close()
  results = {
      **test_metrics,
      "steps": budget.steps,
      "examples_seen": budget.steps * config.global_batch_size,
      "epochs": budget.epochs,
      "wall_seconds": time.perf_counter() - run_start,
      "train_seconds_this_process": train_seconds,
      "resumed_from_step": start_step,
      "regime": config.regime,
      **_label_summary(config, table),
      "phase_steps": phases.counts(),
      "pool_size": int(len(data.pool_ids)),
      "crop_backend": data.crop_backend,
      "dataset": info.name,
      "dataset_fingerprint": info.fingerprint,
      "num_params": models.count_params(state.params),
      "device_count": mesh.size,
      "process_count": jax.process_count(),
      "config": json.loads(config.to_json_best_effort()),
  }
  return RunOutput(results, state)
