"""The plan: every artefact a task needs, resolved and checked before anything is written.

A task's inputs form a chain, built in this order: teacher → score file → training pool →
distilled or synthesised set → soft-label table → the training loop. `make_plan` resolves each
one's identity (the config fields it reads and its inputs' identities) and directory without
writing anything;
`check` compares every existing artefact and the workdir with what the run asks for; only then
does `build` train, score, distil and relabel what is missing. A teacher or scoring run that needs
training is planned, checked and run by this same module, so all recursion lives here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import ml_collections

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import distill
from hardlabel_jax import drift
from hardlabel_jax import image_sets
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import periodic_eval
from hardlabel_jax import relabel
from hardlabel_jax import run_data
from hardlabel_jax import scoring
from hardlabel_jax import synthesize
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax import tensor_sets
from hardlabel_jax import trainer
from hardlabel_jax import workdir_lock
from hardlabel_jax.data import image_folder
from hardlabel_jax.data import tensor_set
from hardlabel_jax.soft_labels import table as table_lib

RESULTS_FILE = trainer.RESULTS_FILE
# Tasks whose product is the image set itself (every other task trains or labels on it).
SET_TASKS = ("distill", "synthesize")


@dataclasses.dataclass(frozen=True)
class TeacherPlan:
  """Where the teacher lives, what it must be, and the config that trains it when missing."""

  directory: str
  # None only for a given teacher_workdir that holds no finished run (and no teacher_config).
  identity: dict[str, Any] | None
  train_config: ml_collections.ConfigDict | None
  explicit: bool

  @property
  def digest(self) -> str:
    return cache.digest(self.identity) if self.identity is not None else ""


@dataclasses.dataclass(frozen=True)
class ScorePlan:
  """The score file a scored selection ranks by, and the scoring run that writes it."""

  directory: str
  identity: dict[str, Any]
  config: ml_collections.ConfigDict  # task='score'

  @property
  def path(self) -> str:
    return os.path.join(self.directory, scoring.SCORES_FILE)


@dataclasses.dataclass(frozen=True)
class SetPlan:
  """An RDED/CA2D distilled or SRe²L/CDA synthesised set: identity, directory, building config."""

  directory: str
  identity: dict[str, Any]
  config: ml_collections.ConfigDict  # selection rded/ca2d/sre2l/cda, scores_file resolved

  @property
  def synthesized(self) -> bool:
    return self.config.selection in synthesize.METHODS


@dataclasses.dataclass(frozen=True)
class TablePlan:
  """The soft-label table a table regime (or task='relabel') reads."""

  directory: str
  identity: dict[str, Any]
  # A table imported from another code base's labels (config.imported_table_dir): only opened
  # and checked against the run's data, never built, and it records no identity of ours.
  imported: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
  """A task's config as it will run (paths resolved) and every artefact it needs."""

  task: str
  config: ml_collections.ConfigDict
  workdir: str
  teacher: TeacherPlan | None = None
  scores: ScorePlan | None = None
  distilled: SetPlan | None = None
  table: TablePlan | None = None
  score_epochs: int = 0  # task='score': K


def _fingerprint(config: ml_collections.ConfigDict) -> str:
  """The train split's fingerprint, its classes in `class_order` (opening a source never writes)."""
  return run_data.train_source(config).info.fingerprint


def _needs_teacher(task: str, config: ml_collections.ConfigDict) -> bool:
  if task in config_schema.TEACHER_TASKS or config.selection in SET_METHODS:
    return True
  # SL on a tensor set's stored soft labels replays them (tensor_sets), and an imported table holds
  # another code base's labels: no teacher labels them.
  return (task == "train" and config.regime != "hl"
          and not tensor_sets.replays_stored_labels(config)
          and not _reads_imported_table(task, config))


def _reads_imported_table(task: str, config: ml_collections.ConfigDict) -> bool:
  return (task == "train" and config.regime in config_schema.TABLE_REGIMES
          and bool(config.imported_table_dir))


def _imported_table(config: ml_collections.ConfigDict,
                    data: run_data.RunData) -> table_lib.SoftLabelTable:
  """The imported table an sl/hald run reads instead of relabelling, checked against its data."""
  if data.on_device:
    raise ValueError("config.crop_backend: an imported table's crops are cut on the host as "
                     "torchvision cuts them (crop, then resize), which the device crops do not "
                     "do; set crop_backend='host'")
  return table_lib.open_imported(config.imported_table_dir, dataset_name=data.train.info.name,
                                 dataset_fingerprint=data.train.info.fingerprint, ids=data.pool_ids,
                                 num_classes=data.train.info.num_classes,
                                 image_size=config.image_size, temperature=config.temperature)


def _teacher_plan(config: ml_collections.ConfigDict, cache_root: str) -> TeacherPlan:
  teacher_config = config.teacher_config
  identity = None
  if teacher_config is not None:
    identity = teacher_lib.identity(teacher_config, _fingerprint(teacher_config))
  if config.teacher_workdir:
    directory = os.path.abspath(config.teacher_workdir)
    if identity is None and teacher_lib.is_finished(directory):
      # A given teacher is what its own run recorded; tables and sets built from it say so.
      identity = teacher_lib.stored_identity(directory)
    return TeacherPlan(directory, identity, teacher_config, True)
  if teacher_config is None:
    raise ValueError("config.teacher_config: this run needs a teacher; set teacher_config (an HL "
                     "config, trained on first use) or teacher_workdir (a finished HL run)")
  directory = os.path.join(cache_root, "teachers", cache.digest(identity))
  return TeacherPlan(directory, identity, teacher_config, False)


SET_METHODS = distill.METHODS + synthesize.METHODS  # selections that train on a built set


def _set_plan(config: ml_collections.ConfigDict, cache_root: str, fingerprint: str,
              teacher: TeacherPlan, scores_identity: str) -> SetPlan:
  """The distilled or synthesised set a run with selection rded/ca2d/sre2l/cda trains on."""
  if config.selection in synthesize.METHODS:
    ident = synthesize.identity(config, fingerprint, teacher.digest)
    return SetPlan(synthesize.set_directory(cache_root, ident), ident, config)
  ident = distill.identity(config, fingerprint, teacher.digest, scores_identity)
  return SetPlan(distill.set_directory(cache_root, ident), ident, config)


def _score_plan(config: ml_collections.ConfigDict, cache_root: str) -> ScorePlan:
  score_config = config.score_config
  identity = scoring.identity(score_config, _fingerprint(score_config))
  return ScorePlan(os.path.join(cache_root, "scores", cache.digest(identity)), identity,
                   score_config)


def _scores_identity(config: ml_collections.ConfigDict, scores: ScorePlan | None) -> str:
  """The identity of the score file a run ranks by: its planned run, or the given file's bytes."""
  if scores is not None:
    return cache.digest(scores.identity)
  if config.scores_file and os.path.exists(config.scores_file):
    return cache.file_digest(config.scores_file)
  return ""


def _data_identity(config: ml_collections.ConfigDict, fingerprint: str, scores_identity: str,
                   distilled: SetPlan | None) -> dict[str, Any]:
  """What a run's training pool is: a distilled set, or a split and the rule choosing ids."""
  if distilled is not None:
    return {"distilled": cache.digest(distilled.identity)}
  pool: dict[str, Any] = {
      "selection": config.selection,
      "images_per_class": config.images_per_class
  }
  if config.selection == "random":
    pool["subset_seed"] = config.subset_seed
    pool["ids_file"] = (cache.file_digest(config.subset_ids_file) if config.subset_ids_file
                        and os.path.exists(config.subset_ids_file) else "")
  else:
    pool.update(scores=scores_identity, subset_seed=config.subset_seed, ccs_beta=config.ccs_beta,
                ccs_strata=config.ccs_strata, ccs_scope=config.ccs_scope,
                cad_direction=config.cad_direction)
    # The score file holds both CAD signals and every rank window: which one chose the pool.
    if config.selection in config_schema.CAD_SELECTIONS:
      pool["cad_signal"] = config.cad_signal
    if config.selection in config_schema.WINDOW_SELECTIONS:
      pool["window_position"] = config.window_position
  return {
      "fingerprint": fingerprint,
      "pool": pool,
      "normalization": [list(config.normalization_mean),
                        list(config.normalization_std)]
  }


def make_plan(config: ml_collections.ConfigDict, workdir: str, task: str | None = None) -> Plan:
  """Resolves what `task` (default `config.task`) needs; reads sources, writes nothing."""
  task = task or config.task
  workdir = os.path.abspath(workdir)
  cache_root = teacher_lib.cache_dir(config, workdir)
  resolved = config.copy_and_resolve_references()
  teacher = _teacher_plan(config, cache_root) if _needs_teacher(task, config) else None
  scores = None
  if (config.selection in config_schema.SCORED_SELECTIONS and not config.scores_file
      and config.score_config is not None):
    scores = _score_plan(config, cache_root)
    resolved.scores_file = scores.path
  fingerprint = _fingerprint(config)
  scores_identity = _scores_identity(resolved, scores)
  distilled = None
  if config.selection in SET_METHODS:
    distilled = _set_plan(resolved, cache_root, fingerprint, teacher, scores_identity)
    if task not in SET_TASKS:
      resolved = image_sets.training_config(resolved, distilled.directory)
  if tensor_sets.is_tensor_run(resolved):  # its lr.pt; SL on its stored labels checked
    resolved = tensor_sets.training_config(resolved)
  table = None
  if _reads_imported_table(task, resolved):
    table = TablePlan(os.path.abspath(resolved.imported_table_dir), {}, imported=True)
  elif task == "train" and tensor_sets.replays_stored_labels(resolved):
    identity = tensor_sets.table_identity(
        resolved, _data_identity(config, fingerprint, scores_identity, distilled))
    table = TablePlan(tensor_sets.table_directory(resolved, cache_root, identity), identity)
  elif task == "relabel" or (task == "train" and config.regime in config_schema.TABLE_REGIMES):
    data_identity = _data_identity(config, fingerprint, scores_identity, distilled)
    identity = relabel.table_identity(resolved, data_identity, teacher.digest)
    table = TablePlan(relabel.table_directory(resolved, cache_root, identity), identity)
  score_epochs = 0
  if task == "score":
    data = run_data.load_run_data(config)
    score_epochs = scoring.scoring_epochs(config, len(data.pool_ids), data.train.info.num_classes)
    resolved = scoring.training_config(resolved, score_epochs)
  return Plan(task, resolved, workdir, teacher, scores, distilled, table, score_epochs)


def _base_config(plan: Plan) -> ml_collections.ConfigDict:
  """The run's config before a distilled or synthesised set replaced its data set."""
  return plan.distilled.config if plan.distilled is not None else plan.config


def _check_teacher(plan: Plan) -> None:
  teacher = plan.teacher
  if teacher_lib.is_finished(teacher.directory):
    stored = teacher_lib.stored_identity(teacher.directory)
    if teacher.train_config is not None:
      diff = config_schema.differences(stored, teacher.identity)
      if diff:
        field = "teacher_workdir" if teacher.explicit else "cache_dir"
        raise cache.IdentityMismatchError(
            f"config.{field}: the teacher in {teacher.directory} does not match teacher_config "
            f"({'; '.join(diff[:6])}); point teacher_workdir elsewhere or fix teacher_config")
    elif not _base_config(plan).dataset.startswith((image_folder.PREFIX, tensor_set.PREFIX)):
      # An external set (a folder or tensors) is made from the teacher's data, not the same split.
      wanted = _fingerprint(_base_config(plan))
      if stored["dataset_fingerprint"] != wanted:
        raise cache.IdentityMismatchError(
            f"config.teacher_workdir: the teacher in {teacher.directory} was trained on "
            f"{stored['run'].get('dataset')!r} (fingerprint {stored['dataset_fingerprint'][:12]}),"
            f" this run trains on {_base_config(plan).dataset!r} (fingerprint {wanted[:12]})")
    return
  if teacher.train_config is None:
    raise FileNotFoundError(
        f"config.teacher_workdir: no finished teacher run in {teacher.directory} (results.json "
        "missing) and no config.teacher_config to train one; train a teacher with "
        "configs/embedded_hl.py (or any HL config) and point teacher_workdir at its workdir")
  check(make_plan(teacher.train_config, teacher.directory, "train"))


def check(plan: Plan) -> None:
  """Every identity check of `plan` and of the runs it would start; raises before any write."""
  if plan.teacher is not None:
    _check_teacher(plan)
    if plan.distilled is not None and plan.distilled.synthesized:
      # The teacher's recipe (finished run or the one that will train it) names its model.
      synthesize.check_teacher_config(plan.teacher.identity["run"],
                                      f"the teacher in {plan.teacher.directory}")
  if plan.scores is not None:
    if os.path.exists(plan.scores.path):
      cache.check_identity(plan.scores.directory, plan.scores.identity, "the score file")
    else:
      check(make_plan(plan.scores.config, plan.scores.directory, "score"))
  if plan.distilled is not None:
    cache.check_identity(plan.distilled.directory, plan.distilled.identity, "the image set")
  if plan.table is not None and plan.table.imported:
    _imported_table(plan.config, run_data.load_run_data(plan.config))  # opens, writes nothing
  elif plan.table is not None:
    cache.check_identity(plan.table.directory, plan.table.identity, "the soft-label table")
  if plan.task in config_schema.TRAINING_TASKS:
    checkpointing.check_same_run(plan.workdir, plan.config)


def _is_writer() -> bool:
  return jax.process_index() == 0


def _teacher(plan: Plan, data: run_data.RunData, mesh: jax.sharding.Mesh,
             devices: list[jax.Device] | None) -> teacher_lib.Teacher:
  teacher = plan.teacher
  if not teacher_lib.is_finished(teacher.directory):
    metrics_log.log_line(f"training the teacher in {teacher.directory}")
    train(teacher.train_config, teacher.directory, devices=devices)
    if _is_writer():
      cache.write_identity(teacher.directory, teacher.identity)
  return teacher_lib.load_teacher(teacher.directory, num_classes=data.train.info.num_classes,
                                  input_shape=run_data.input_shape(plan.config, data), mesh=mesh)


def _source_data(plan: Plan) -> run_data.RunData:
  """The whole train split the run draws from (an image set's source): the teacher's data."""
  return run_data.load_run_data(image_sets.source_config(_base_config(plan)))


@dataclasses.dataclass
class Artefacts:
  """What `build` returns: the run's data, mesh, teacher and table."""

  data: run_data.RunData
  mesh: jax.sharding.Mesh
  teacher: teacher_lib.Teacher | None
  table: table_lib.SoftLabelTable | None


def _building(directory: str, what: str) -> contextlib.AbstractContextManager:
  """The lock of an artefact this run builds in the cache (a second builder stops at once)."""
  return workdir_lock.hold(workdir_lock.artefact_lock_path(directory), f"{what} {directory}")


def _build_set(plan: Plan, source: run_data.RunData, teacher: teacher_lib.Teacher,
               mesh: jax.sharding.Mesh, batch_hook: Callable[[int], None] | None) -> None:
  image_set = plan.distilled
  if image_set.synthesized:
    synthesize.build(image_set.config, image_set.directory, image_set.identity, source, teacher,
                     mesh, batch_hook=batch_hook)
  else:
    distill.build(image_set.config, image_set.directory, image_set.identity, source, teacher, mesh)


def build(plan: Plan, *, devices: list[jax.Device] | None = None,
          shard_hook: Callable[[int], None] | None = None) -> Artefacts:
  """Builds (or reuses) every artefact of a checked plan, in order; opens what the task reads.

  `shard_hook` runs after each stored table shard and each synthesised batch (tests preempt there).
  """
  mesh = mesh_lib.data_mesh(devices)
  if plan.scores is not None and not os.path.exists(plan.scores.path):
    metrics_log.log_line(f"scoring run for the selection in {plan.scores.directory}")
    score(plan.scores.config, plan.scores.directory, devices=devices)
    if _is_writer():
      cache.write_identity(plan.scores.directory, plan.scores.identity)
    mesh_lib.sync_processes("score identity written")
  source = _source_data(plan) if plan.teacher is not None or plan.task in SET_TASKS else None
  teacher = _teacher(plan, source, mesh, devices) if plan.teacher is not None else None
  if plan.distilled is not None and not image_sets.is_built(plan.distilled.directory):
    with _building(plan.distilled.directory, "the image set"):
      _build_set(plan, source, teacher, mesh, shard_hook)
  data = source if plan.task in SET_TASKS else run_data.load_run_data(plan.config)
  if tensor_sets.is_tensor_run(plan.config) and plan.task not in SET_TASKS:
    metrics_log.log_line(tensor_sets.describe(plan.config, data))
  table = None
  if plan.table is not None and plan.table.imported:
    table = _imported_table(plan.config, data)
  elif plan.table is not None:
    # A finished table is only opened (readers need no lock); a missing one is built under one.
    building = (contextlib.nullcontext() if os.path.isdir(plan.table.directory) else _building(
        plan.table.directory, "the soft-label table"))
    with building:
      if plan.task == "train" and tensor_sets.replays_stored_labels(plan.config):
        table = tensor_sets.write_table(plan.config, plan.table.directory, data)
      else:
        table = relabel.write_table(plan.config, plan.table.directory, data, teacher, mesh,
                                    shard_hook=shard_hook)
      if _is_writer():
        cache.write_identity(plan.table.directory, plan.table.identity)
  return Artefacts(data, mesh, teacher, table)


@contextlib.contextmanager
def prepared(config: ml_collections.ConfigDict, workdir: str, task: str, *,
             devices: list[jax.Device] | None = None,
             shard_hook: Callable[[int], None] | None = None) -> Iterator[tuple[Plan, Artefacts]]:
  """Validates, plans and checks everything (writing nothing); then, holding the workdir's lock
  for the whole `with` block (the task runs inside it), builds the artefacts."""
  config_schema.validate(config)
  mesh = mesh_lib.data_mesh(devices)
  if task in config_schema.TRAINING_TASKS:
    mesh_lib.check_divisible(config.global_batch_size, mesh)
  plan = make_plan(config, workdir, task)
  check(plan)
  with workdir_lock.hold(workdir_lock.workdir_lock_path(plan.workdir),
                         f"the workdir {plan.workdir}"):
    yield plan, build(plan, devices=devices, shard_hook=shard_hook)


def _teacher_summary(teacher: teacher_lib.Teacher | None) -> dict[str, Any]:
  if teacher is None:
    return {}
  return {
      "teacher_workdir": teacher.workdir,
      "teacher_test_top1": teacher.results.get("test_top1"),
      "teacher_model": teacher.results.get("config", {}).get("model")
  }


def _run(plan: Plan, artefacts: Artefacts, *, step_hook: Callable[[int], None] | None = None,
         epoch_hook: Callable | None = None,
         batch_hook: trainer.BatchHook | None = None) -> trainer.RunOutput:
  """The training loop on built artefacts; writes results.json (its last file)."""
  teacher = None
  if artefacts.teacher is not None and plan.config.regime != "hl":
    teacher = trainer.FrozenModel(artefacts.teacher.model, artefacts.teacher.variables)
  evaluation = None
  if plan.config.eval_every_epochs:  # the test split after every N epochs, through the hook
    evaluation = periodic_eval.PeriodicEvaluation(plan.config, artefacts.data, artefacts.mesh,
                                                  plan.workdir)
  hook = periodic_eval.chained(epoch_hook, evaluation)
  output = trainer.train(plan.config, plan.workdir, artefacts.data, artefacts.mesh, teacher=teacher,
                         table=artefacts.table, step_hook=step_hook, epoch_hook=hook,
                         batch_hook=batch_hook)
  if evaluation is not None:
    output.results.update(evaluation.summary())
  output.results.update(_teacher_summary(artefacts.teacher if teacher is not None else None))
  # The CAD windows the run's score file used (shrunk or not), for the study report.
  output.results.update(scoring.cad_record(_base_config(plan)))
  path = os.path.join(plan.workdir, RESULTS_FILE)
  if _is_writer():
    metrics_log.write_json_atomic(path, output.results)
  mesh_lib.sync_processes("results written")  # a teacher's results.json marks it finished
  metrics_log.log_line(f"test top-1 {output.results['test_top1']:.4f}, test loss "
                       f"{output.results['test_loss']:.4f}; results in {path}")
  return output


def train(config: ml_collections.ConfigDict, workdir: str, *,
          devices: list[jax.Device] | None = None,
          step_hook: Callable[[int], None] | None = None) -> trainer.RunOutput:
  """`task='train'`: plans, checks and builds the inputs, trains, evaluates, writes results."""
  with prepared(config, workdir, "train", devices=devices) as (plan, artefacts):
    return _run(plan, artefacts, step_hook=step_hook)


def score(config: ml_collections.ConfigDict, workdir: str, *,
          devices: list[jax.Device] | None = None,
          step_hook: Callable[[int], None] | None = None) -> dict[str, Any]:
  """`task='score'`: an HL run recording per-example statistics, then `<workdir>/scores.npz`."""
  with prepared(config, workdir, "score", devices=devices) as (plan, artefacts):
    metrics_log.log_line(f"scoring {len(artefacts.data.pool_ids)} examples over "
                         f"{plan.score_epochs} epochs")
    recorder = scoring.EpochRecorder(config, artefacts.data, artefacts.mesh, plan.workdir)
    margins = scoring.TrainingMargins(artefacts.data.pool_ids, plan.workdir)
    output = _run(plan, artefacts, step_hook=step_hook, epoch_hook=recorder, batch_hook=margins)
    return scoring.write_scores(config, plan.workdir, artefacts.data, recorder, plan.score_epochs,
                                output.state, output.results["test_top1"], margins)


def relabel_table(config: ml_collections.ConfigDict, workdir: str, *,
                  devices: list[jax.Device] | None = None,
                  shard_hook: Callable[[int], None] | None = None) -> table_lib.SoftLabelTable:
  """`task='relabel'`: builds (or resumes, or reuses) the configured soft-label table."""
  with prepared(config, workdir, "relabel", devices=devices,
                shard_hook=shard_hook) as (_, artefacts):
    return artefacts.table


def measure_drift(config: ml_collections.ConfigDict, workdir: str, *,
                  devices: list[jax.Device] | None = None) -> list[dict]:
  """`task='drift'`: local semantic drift of the teacher's crop labels; CSV, JSON, PNG."""
  with prepared(config, workdir, "drift", devices=devices) as (plan, artefacts):
    return drift.measure(plan.config, plan.workdir, artefacts.data, artefacts.teacher,
                         artefacts.mesh)


def distill_set(config: ml_collections.ConfigDict, workdir: str, *,
                devices: list[jax.Device] | None = None) -> str:
  """`task='distill'`: builds (or reuses) the RDED/CA2D set, with its teacher and scores."""
  if config.selection not in distill.METHODS:
    raise ValueError(f"config.selection: {config.selection!r} is not a distillation method "
                     f"({', '.join(distill.METHODS)})")
  with prepared(config, workdir, "distill", devices=devices) as (plan, _):
    return plan.distilled.directory


def synthesize_set(config: ml_collections.ConfigDict, workdir: str, *,
                   devices: list[jax.Device] | None = None,
                   batch_hook: Callable[[int], None] | None = None) -> str:
  """`task='synthesize'`: builds (or resumes, or reuses) the SRe²L/CDA set and its teacher."""
  if config.selection not in synthesize.METHODS:
    raise ValueError(f"config.selection: {config.selection!r} is not a synthesis method "
                     f"({', '.join(synthesize.METHODS)})")
  with prepared(config, workdir, "synthesize", devices=devices, shard_hook=batch_hook) as (plan, _):
    return plan.distilled.directory
