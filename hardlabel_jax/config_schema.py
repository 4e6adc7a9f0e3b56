"""Every config field with its default, and validation with messages that name the field.

Experiment files under `configs/` start from `default_config()` and override what they need
(configs as code, as in big_vision). `validate` runs before any data is read or state is written.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from hardlabel_jax import hald
from hardlabel_jax import models

TASKS = ("train", "relabel", "drift", "score", "distill", "study")
SELECTIONS = ("random", "el2n_easy", "el2n_hard", "ccs", "cad_prune", "rded", "ca2d")
SCORED_SELECTIONS = ("el2n_easy", "el2n_hard", "ccs", "cad_prune", "ca2d")
CAD_DIRECTIONS = ("hardest", "easiest")
REGIMES = ("hl", "kd", "sl", "sl_kd", "hald")
# Regimes that train on a stored soft-label table (and so need a relabel first).
TABLE_REGIMES = ("sl", "hald")
# Regimes with a teacher queried online inside the jitted step.
ONLINE_TEACHER_REGIMES = ("kd", "sl_kd")
LABEL_FORMATS = ("full", "topk", "topk_q8")
TEACHER_BN_MODES = ("eval", "batch_stats")
DISTILLATION_LOSSES = ("kl", "kd", "dkd", "rld", "nkd", "ce")
# Losses whose formula uses the integer label; CutMix would make that label ambiguous.
LABEL_LOSSES = ("kd", "dkd", "rld", "nkd", "ce")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "hald", "constant")

# Fields that may change between a run and its resumption without invalidating the checkpoint.
RESUMABLE_FIELDS = frozenset({
    "log_every_steps", "checkpoint_every_steps", "num_workers", "read_threads", "read_buffer",
    "eval_batch_size",
    "data_dir", "tensorboard", "cache_dir", "label_table_dir", "table_positions_per_shard",
})


def default_config() -> ml_collections.ConfigDict:
  """All fields the trainer reads, with the defaults of a small HL run."""
  c = ml_collections.ConfigDict()
  c.task = "train"
  c.regime = "hl"
  c.seed = 0

  # Data: a source name (see hardlabel_jax.data.sources) and the pool of training ids.
  c.dataset = "embedded_mnist"
  c.train_split = "train"
  c.test_split = "test"
  c.data_dir = ""  # '' -> $HARDLABEL_DATA_DIR or ~/.cache/hardlabel_jax/tfds
  c.test_dataset = ""  # '' -> dataset; a distilled set is tested on the original test split
  c.normalization_mean = ()  # () -> the training source's; distilled sets use the original's
  c.normalization_std = ()
  c.images_per_class = 0  # 0 -> the full split; else a random class-balanced subset
  c.subset_seed = 0
  c.subset_ids_file = ""  # .npy or .json list of example ids; overrides images_per_class
  # Subset selection by difficulty (DESIGN.md §7): a method and the score file of a
  # task='score' run (EL2N for el2n_*, AUM for ccs, CAD for cad_prune), class-balanced.
  c.selection = "random"
  c.scores_file = ""  # '' with score_config set -> <cache_dir>/scores/<hash>/scores.npz
  c.score_config = None  # a full task='score' config, run first when the score file is absent
  c.ccs_beta = 0.1  # CCS: fraction of hardest (lowest-AUM) examples dropped per class
  c.ccs_strata = 50
  c.cad_direction = "hardest"  # cad_prune keeps the highest CAD (the paper) or the lowest
  # RDED / CA2D distilled sets (selection='rded'|'ca2d'), built on first use in cache_dir.
  c.rded_factor = 2  # factor×factor patches per distilled image
  c.rded_crops_per_image = 5
  c.rded_candidates_per_class = 0  # mipc; 0 -> min(300, smallest class)

  # Scoring runs (task='score'): HL training on the pool for K epochs, statistics every epoch.
  c.score_epochs = 0  # K; 0 -> CAD-Prune's K·N = E_down·n from the two fields below
  c.cad_subset_images_per_class = 0  # n / classes of the downstream subset
  c.cad_downstream_epochs = 0.0  # E_down of the downstream run
  c.cad_window = 6  # J: epochs per dynamic-uncertainty window
  c.cad_num_windows = 2  # W: windows averaged into CAD

  # Crops (torchvision RandomResizedCrop semantics) and evaluation view.
  c.image_size = 28
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  c.random_flip = True
  c.cutmix_alpha = 0.0  # 0 disables CutMix
  c.eval_crop_fraction = 1.0  # ImageNet: 0.875 (resize 256, centre crop 224)

  # Model.
  c.model = "convnet_d3"
  c.model_kwargs = ml_collections.ConfigDict()
  # Activations and convolutions in this dtype; parameters, BN statistics, losses and the
  # optimizer stay float32. 'auto': bfloat16 on TPU/GPU, float32 on CPU.
  c.compute_dtype = "auto"

  # Hard-label loss.
  c.label_smoothing = 0.0

  # Compute budget: training examples forwarded. 0 -> num_epochs × pool size.
  c.budget_examples = 0
  c.num_epochs = 10.0
  c.global_batch_size = 128
  c.eval_batch_size = 500

  # Online distillation (regime='kd'): a teacher HL run and a loss from hardlabel_jax.losses.
  c.teacher_workdir = ""  # '' -> <cache_dir>/teacher
  c.teacher_config = None  # a full HL config: trains the teacher there first if it is absent
  c.distillation_loss = "kd"
  c.distillation_kwargs = ml_collections.ConfigDict()  # e.g. temperature, alpha, beta
  c.logit_standardization = False
  c.kd_warmup_epochs = 0.0  # DKD/RLD ramp-in, min(epoch / warmup, 1); 0 disables

  # Soft labels (DESIGN.md §3–§5). The table is keyed by (crop_seed, example id, slot).
  c.cache_dir = ""  # teachers and tables shared between runs; '' -> the run's workdir
  c.label_table_dir = ""  # '' -> <cache_dir>/tables/<format>-<identity hash>
  c.temperature = 20.0  # soft labels softmax(z/T) and the KL of sl, sl_kd and hald
  c.label_format = "full"
  c.topk = 5  # classes kept per crop by the topk formats
  c.crops_per_image = 4  # stored crop slots per image
  c.crop_seed = 0  # seed of the stored crops (the run seed drives shuffling and fresh crops)
  # Weight of the stored-label KL (sl, hald soft phases, hybrid). 1 is the DD convention (no
  # T²); with Adam a constant weight is irrelevant to a single-loss run, but HALD switches
  # between CE and KL, whose gradients differ by ~T² in scale, so its soft phase may use T².
  c.soft_loss_weight = 1.0
  c.label_keep_fraction = 1.0  # LPLD label pruning: fraction of stored crops a run may use
  c.teacher_bn_mode = "eval"  # 'batch_stats': HALD's BSSL relabelling with batch statistics
  c.table_positions_per_shard = 0  # images per table shard; 0 -> about 64 MB per shard
  c.hald_schedule = "S6"  # S1, S6, S7, S8, alt:n, hybrid:λ
  c.hald_hard_fraction = 0.5  # share of epochs in the hard phase
  c.hald_label_smoothing = 0.8  # hard phase: one-hot smoothed by 0.8 (true class 0.2 + 0.8/C)
  c.hald_cutmix_alpha = 1.0  # hard phase: CutMix on every batch
  c.drift_crop_counts = (1, 2, 4, 8, 16, 32)  # task='drift': crops per image to measure

  # Optimizer and learning-rate schedule.
  c.optimizer = "sgd"
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.adam_b1 = 0.9
  # Adam's second-moment memory is ~1/(1-b2) steps. HALD switches between losses whose
  # gradients differ ~100× in scale (CE vs KL at T=20); a run of a few hundred steps needs a
  # shorter memory (e.g. 0.99) or the soft phase inherits the hard phase's step-size damping.
  c.adam_b2 = 0.999
  c.schedule = "cosine"
  c.warmup_epochs = 0.0
  c.step_milestones = (0.5, 0.75)  # fractions of training, for schedule='step'
  c.step_gamma = 0.1
  c.hald_eta = 1.0  # HALD: lr · 0.5 (1 + cos(π e / (E η)))

  # Label-regime studies (task='study', DESIGN.md §3): every cell of the grid regimes × methods ×
  # images per class × seeds is this config as a task='train' run with `budget_examples`, and
  # shares one teacher, one scoring run per score config and one table per subset (cache_dir).
  c.study_regimes = ("hl", "sl", "sl_kd", "hald")
  c.study_methods = ("random",)  # selection methods, and 'full' (the whole train split)
  c.study_images_per_class = (10,)
  c.study_seeds = (0,)
  c.study_score_epochs = 10  # K of the EL2N/AUM scoring run; CAD-Prune's K comes from the budget
  c.study_regime_overrides = ml_collections.ConfigDict()  # regime -> {field: value}

  # Run control.
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.num_workers = 0  # Grain worker processes
  # Grain read threads and batches read ahead inside each process (grain.ReadOptions).
  c.read_threads = 1
  c.read_buffer = 4
  c.tensorboard = True
  return c


def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ValueError(f"config.{field}: {message}")


def _require_choice(config: ml_collections.ConfigDict, field: str, choices: tuple) -> None:
  value = config[field]
  _require(value in choices, field, f"{value!r} is not one of {', '.join(choices)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field."""
  missing = sorted(set(default_config().keys()) - set(config.keys()))
  _require(not missing, missing[0] if missing else "", "missing field; start from "
           "hardlabel_jax.config_schema.default_config()")
  _require_choice(config, "task", TASKS)
  _require_choice(config, "regime", REGIMES)
  _require_choice(config, "optimizer", OPTIMIZERS)
  _require_choice(config, "schedule", SCHEDULES)
  _require(isinstance(config.dataset, str) and config.dataset, "dataset", "must be a name")
  _require(config.images_per_class >= 0, "images_per_class", "must be >= 0 (0 = full split)")
  _require_choice(config, "selection", SELECTIONS)
  _require(config.selection not in SCORED_SELECTIONS or bool(config.scores_file)
           or config.score_config is not None, "scores_file",
           f"selection {config.selection!r} needs the score file of a task='score' run (or a "
           "score_config to run one)")
  _require(config.selection == "random" or config.images_per_class > 0, "images_per_class",
           f"selection {config.selection!r} needs a positive number of images per class")
  _require(config.rded_factor >= 1, "rded_factor", "must be >= 1")
  _require(config.rded_crops_per_image >= 1, "rded_crops_per_image", "must be >= 1")
  _require(config.rded_candidates_per_class >= 0, "rded_candidates_per_class", "must be >= 0")
  _require(0 <= config.ccs_beta < 1, "ccs_beta", "must be in [0, 1)")
  _require(config.ccs_strata >= 1, "ccs_strata", "must be >= 1")
  _require_choice(config, "cad_direction", CAD_DIRECTIONS)
  _require(config.score_epochs >= 0, "score_epochs", "must be >= 0")
  _require(config.cad_window >= 2, "cad_window", "must be >= 2 (a standard deviation)")
  _require(config.cad_num_windows >= 1, "cad_num_windows", "must be >= 1")
  if config.task == "score":
    _require(config.score_epochs > 0 or (config.cad_subset_images_per_class > 0
                                         and config.cad_downstream_epochs > 0),
             "score_epochs", "set it, or cad_subset_images_per_class and cad_downstream_epochs "
             "so that K·N = E_down·n gives it")
  _require_choice(config, "compute_dtype", models.COMPUTE_DTYPES)
  _require(config.image_size > 0, "image_size", "must be positive")
  _require(config.global_batch_size > 0, "global_batch_size", "must be positive")
  _require(config.eval_batch_size > 0, "eval_batch_size", "must be positive")
  _require(config.budget_examples >= 0, "budget_examples", "must be >= 0")
  _require(config.budget_examples > 0 or config.num_epochs > 0, "num_epochs",
           "must be positive when budget_examples is 0")
  _require(config.learning_rate > 0, "learning_rate", "must be positive")
  _require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
  _require(config.cutmix_alpha >= 0, "cutmix_alpha", "must be >= 0")
  _require(config.weight_decay >= 0, "weight_decay", "must be >= 0")
  _require(0 <= config.adam_b1 < 1 and 0 <= config.adam_b2 < 1, "adam_b2",
           "Adam's b1 and b2 must lie in [0, 1)")
  _require(config.hald_eta > 0, "hald_eta", "must be positive")
  _require(config.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
  _require(all(0 < m < 1 for m in config.step_milestones), "step_milestones",
           "must be fractions of training in (0, 1)")
  _require_choice(config, "distillation_loss", DISTILLATION_LOSSES)
  _require(config.kd_warmup_epochs >= 0, "kd_warmup_epochs", "must be >= 0")
  if config.regime == "kd":
    _require(not (config.cutmix_alpha > 0 and config.distillation_loss in LABEL_LOSSES),
             "cutmix_alpha", f"CutMix makes the label of the {config.distillation_loss!r} loss "
             "ambiguous; use distillation_loss='kl' or cutmix_alpha=0")
    _require(config.kd_warmup_epochs == 0 or config.distillation_loss in ("dkd", "rld"),
             "kd_warmup_epochs", "only DKD and RLD have a warm-up")
  _require(config.temperature > 0, "temperature", "must be positive")
  _require_choice(config, "label_format", LABEL_FORMATS)
  _require(config.label_format == "full" or config.topk >= 1, "topk",
           "must be >= 1 for the topk formats")
  _require(config.soft_loss_weight > 0, "soft_loss_weight", "must be positive")
  _require(config.crops_per_image >= 1, "crops_per_image", "must be >= 1")
  _require(config.crop_seed >= 0, "crop_seed", "must be >= 0")
  _require(0 < config.label_keep_fraction <= 1, "label_keep_fraction", "must be in (0, 1]")
  _require_choice(config, "teacher_bn_mode", TEACHER_BN_MODES)
  _require(config.table_positions_per_shard >= 0, "table_positions_per_shard", "must be >= 0")
  _require(0 <= config.hald_hard_fraction <= 1, "hald_hard_fraction", "must be in [0, 1]")
  _require(0 <= config.hald_label_smoothing < 1, "hald_label_smoothing", "must be in [0, 1)")
  _require(config.hald_cutmix_alpha >= 0, "hald_cutmix_alpha", "must be >= 0")
  if config.regime == "hald":
    hald.parse_schedule(config.hald_schedule)
  _require(len(config.drift_crop_counts) > 0 and all(int(m) >= 1 for m in config.drift_crop_counts),
           "drift_crop_counts", "must be a non-empty list of positive crop counts")
  _require(config.log_every_steps > 0, "log_every_steps", "must be positive")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
  _require(config.num_workers >= 0, "num_workers", "must be >= 0")
  _require(config.read_threads >= 0, "read_threads", "must be >= 0")
  _require(config.read_buffer >= 1, "read_buffer", "must be >= 1")
  _require(0 < config.eval_crop_fraction <= 1, "eval_crop_fraction", "must be in (0, 1]")


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file by path (configs/ is no package; configs reuse configs)."""
  spec = importlib.util.spec_from_file_location(
      "hardlabel_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def sibling_config(config_file: str, name: str,
                   arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config `name` in the directory of `config_file` (pass `__file__`)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name), arg)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'runlocal,ipc=10' into fields, typed by `defaults` (big_vision)."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      parsed[key] = value.lower() in ("", "1", "true", "yes")
    else:
      parsed[key] = type(default)(value)
  return parsed
