"""Every config field with its default, and validation with messages that name the field.

Experiment files under `configs/` start from `default_config()` and override what they need
(configs as code, as in big_vision). `validate` runs before any data is read or state is written.
The config is flat; `FIELD_GROUPS` groups its fields by concern, `fields_read` says which fields a
config's task, regime and selection read, and `validate` refuses a field changed from its default
that none of them reads (a setting that would silently do nothing).
"""

from __future__ import annotations

import difflib
import importlib.util
import numbers
import os
from typing import Any, Iterable, Mapping

import ml_collections

from hardlabel_jax import hald
from hardlabel_jax import hald_hyper
from hardlabel_jax import models
from hardlabel_jax import preemption
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import dsa
from hardlabel_jax.data import tensor_set

TASKS = ("train", "relabel", "drift", "score", "distill", "synthesize", "study")
SELECTIONS = ("random", "el2n_easy", "el2n_hard", "ccs", "cad_prune", "el2n_window", "cad_window",
              "rded", "ca2d", "sre2l", "cda")
SCORED_SELECTIONS = ("el2n_easy", "el2n_hard", "ccs", "cad_prune", "el2n_window", "cad_window",
                     "ca2d")
# A window of consecutive ranks by EL2N or CAD at `window_position` (0 lowest, 1 highest): the
# offset scan ("EL2N-Best") that asks which difficulty suits a compute budget.
WINDOW_SELECTIONS = ("el2n_window", "cad_window")
# Selections that rank by CAD (their scoring run lasts CAD-Prune's compute-matched K).
CAD_SELECTIONS = ("cad_prune", "cad_window", "ca2d")
CAD_DIRECTIONS = ("hardest", "easiest")
# The per-epoch trajectory CAD's dynamic uncertainty is the std of: the true-class probability
# p(y|x) (the paper's Eq. 1, Dynamic Uncertainty's code) or the example's EL2N (the replication's).
CAD_SIGNALS = ("true_prob", "el2n")
# How a K-epoch scoring run's windows are chosen: 'span' W = cad_num_windows and J = K − W (windows
# that span the run, the replication's rule and the paper's at ImageNet's K ≈ 8); 'fixed' the
# literal J = cad_window (the paper's J = 6 read as a constant).
CAD_WINDOW_RULES = ("span", "fixed")
# How K = E_down·n/N becomes a whole number of scoring epochs.
CAD_EPOCHS_ROUNDINGS = ("ceil", "round", "floor")
# A study's budget rule: every cell trains `budget_examples` (fixed compute, the scalability
# analysis), or `study_epochs_per_subset` epochs of its own pool (the paper's method tables).
STUDY_BUDGET_RULES = ("fixed_examples", "epochs_per_subset")
# How a study's cell turns into its accuracy: 'library' one run at the config's recipe, its final
# test accuracy; 'ddranking' DD-Ranking 0.2.0's evaluation (hardlabel_jax/ddranking.py): the best
# test accuracy of a learning-rate search and of evaluations every 20 epochs (chosen on the test
# set).
STUDY_PROTOCOLS = ("library", "ddranking")
# CA2D's candidate pool (distill.candidate_pool): 'cad_top_mipc' the top-mipc images of each class
# by CAD, then RDED's per-image best crop and class-wide CE filter (the paper, DESIGN.md §7);
# 'cad_selection' exactly CAD-Prune's ipc·factor² images per class, each its own best crop.
CA2D_POOLS = ("cad_top_mipc", "cad_selection")
# How HALD's hard phase CutMixes (trainer._make_steps): the official batch-reversed partner on
# the device, or a per-example partner from the pool in the pipeline.
HALD_HARD_CUTMIX = ("batch_reversed", "pool")
# How a soft-label table's stored crops find their CutMix partner (run_data.table_cutmix_plan).
TABLE_CUTMIX = ("relabel_batch", "pool")
# CCS prunes and stratifies over the whole pool (the official code) or within each class.
CCS_SCOPES = ("global", "per_class")
REGIMES = ("hl", "kd", "sl", "sl_kd", "hald")
# Regimes that train on a stored soft-label table (and so need a relabel first).
TABLE_REGIMES = ("sl", "hald")
# Regimes with a teacher queried online inside the jitted step.
ONLINE_TEACHER_REGIMES = ("kd", "sl_kd")
LABEL_FORMATS = ("full", "topk", "topk_q8")
# LPLD label pruning at label_keep_fraction < 1 (soft_labels.table): 'lpld_batches' keeps the first
# stored batches and draws each step's batch from them (the official trainer); 'per_image' keeps a
# seeded subset of every image's slots and draws one per image and epoch. 'hald_batches' (at any
# fraction) replays whole stored batches in seeded permutations, one pass after another (HALD's
# soft phase, validate/train_fkd.py). 'fkd_batches' (at any fraction) replays them in their stored
# order, epoch after epoch (SRe²L's validate/train_FKD.py; an imported FKD table's own batches).
LABEL_PRUNING_MODES = ("lpld_batches", "per_image", "hald_batches", "fkd_batches")
# Label pruning modes that replay whole stored batches at any label_keep_fraction.
BATCH_REPLAY_MODES = ("hald_batches", "fkd_batches")
# 'auto': HALD's relabel_slc.py rule, BSSL ('batch_stats') for every set but RDED's (and CA2D's,
# RDED's algorithm), whose crops the teacher labels in eval mode (resolved_teacher_bn_mode).
TEACHER_BN_MODES = ("eval", "batch_stats", "auto")
DISTILLATION_LOSSES = ("kl", "kd", "dkd", "rld", "nkd", "ce")
# Losses whose formula uses the integer label; CutMix would make that label ambiguous.
LABEL_LOSSES = ("kd", "dkd", "rld", "nkd", "ce")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "hald", "constant")
# Training-crop recipes: 'rrc' RandomResizedCrop (crop_scale, crop_ratio), flip, CutMix; 'rded'
# RDED's ShufflePatches(rded_factor) → RandomResizedCrop(scale=(1/factor, 1)) → flip → CutMix;
# 'auto' is 'rded' on RDED/CA2D distilled sets and 'rrc' on any other pool; 'dsa' the whole image,
# augmented on the device by DSA (`dsa_strategy`, data.dsa: the DC/DSA/MTT hard-label evaluation).
TRAIN_CROP_RECIPES = ("auto", "rrc", "rded", "dsa")
# Regimes whose targets may come from a DSA view: hard labels, or a teacher queried on that view
# (a stored table holds the labels of keyed host crops, which DSA would no longer show).
DSA_REGIMES = ("hl", "kd", "sl_kd")
# SRe²L-family synthesis (hardlabel_jax.synthesize): batches mix classes (SRe²L, CDA) or hold one
# class each (LPLD's class-wise recover); per-iteration augmentation of the images optimised.
SYNTH_BATCHINGS = ("mixed", "class")
# 'crop_flip': RandomResizedCrop + flip, then the roll (the ImageNet and Tiny-ImageNet recover
# scripts); 'roll': the roll only (SRe²L's recover_cifar.py); 'auto': 'roll' up to 32 px, else
# 'crop_flip', as the official scripts choose by data set.
SYNTH_AUGMENTS = ("auto", "crop_flip", "roll")
SYNTH_IMAGE_FORMATS = ("jpeg", "png")

# Fields added with a default that differs from what every run did before they existed: a stored
# run config without the field ran with this value (checkpointing.check_same_run).
BEFORE_THE_FIELD = {"crop_resize": "pil_box"}

# Fields that may change between a run and its resumption without invalidating the checkpoint.
RESUMABLE_FIELDS = frozenset({
    "log_every_steps",
    "checkpoint_every_steps",
    "num_workers",
    "read_threads",
    "read_buffer",
    "eval_batch_size",
    "data_dir",
    "tensorboard",
    "cache_dir",
    "label_table_dir",
    "table_positions_per_shard",
    "preemption_signal",
})

# Every field of `default_config()` in exactly one group, by concern. The config stays flat (config
# files and `--config.field=` overrides name fields directly); `fields_read` says which of these
# fields a task, regime and selection read, and `validate` refuses a changed field none of them do.
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "task": ("task", "regime", "seed"),
    "data": ("dataset", "train_split", "test_split", "data_dir", "test_dataset", "class_order",
             "train_images_per_class", "normalization_mean", "normalization_std",
             "tensor_set_pixel_scale", "tensor_set_hard_labels", "tensor_set_learning_rate"),
    "pool": ("images_per_class", "subset_seed", "subset_ids_file"),
    "selection": ("selection", "scores_file", "score_config", "ccs_beta", "ccs_strata", "ccs_scope",
                  "cad_direction", "cad_signal", "window_position"),
    "distilled_set":
        ("rded_factor", "rded_crops_per_image", "rded_candidates_per_class", "ca2d_pool"),
    "synthesis": ("synth_iterations", "synth_lr", "synth_r_bn", "synth_first_bn_multiplier",
                  "synth_batch_size", "synth_jitter", "synth_batching", "synth_augment",
                  "cda_milestone", "synth_image_format"),
    "scoring": ("score_epochs", "cad_subset_images_per_class", "cad_downstream_epochs",
                "cad_epochs_rounding", "cad_window_rule", "cad_window", "cad_num_windows",
                "cad_windows_shrink"),
    "crops": ("image_size", "train_crop_recipe", "crop_scale", "crop_ratio", "crop_resize",
              "random_flip", "cutmix_alpha", "dsa_strategy", "eval_crop_fraction"),
    "model": ("model", "model_kwargs", "compute_dtype"),
    "budget": ("budget_examples", "num_epochs", "global_batch_size", "eval_batch_size"),
    "evaluation": ("eval_every_epochs",),
    "optimizer":
        ("optimizer", "learning_rate", "momentum", "nesterov", "weight_decay", "adam_b1", "adam_b2",
         "schedule", "warmup_epochs", "step_milestones", "step_gamma", "hald_eta", "hald_eta_like"),
    "hard_labels": ("label_smoothing",),
    "teacher": ("teacher_workdir", "teacher_config"),
    "kd": ("distillation_loss", "distillation_kwargs", "logit_standardization", "kd_warmup_epochs"),
    "soft_labels":
        ("label_table_dir", "imported_table_dir", "temperature", "label_format", "topk",
         "crops_per_image", "crop_seed", "soft_loss_weight", "label_keep_fraction", "label_pruning",
         "teacher_bn_mode", "relabel_batch_size", "table_cutmix", "table_positions_per_shard"),
    "hald": ("hald_schedule", "hald_hard_fraction", "hald_label_smoothing", "hald_cutmix_alpha",
             "hald_hard_cutmix"),
    "drift": ("drift_crop_counts",),
    "study": ("study_regimes", "study_methods", "study_images_per_class", "study_seeds",
              "study_score_epochs", "study_budget_rule", "study_epochs_per_subset",
              "study_full_epochs", "study_batch_at_most_pool", "study_first_regimes",
              "study_regime_overrides", "study_label_tables", "study_external_set",
              "study_external_table", "study_external_class_order", "study_window_positions",
              "study_cad_epochs", "study_full_regimes", "study_no_augmentation", "study_protocol"),
    "run_control": ("cache_dir", "log_every_steps", "checkpoint_every_steps", "num_workers",
                    "read_threads", "read_buffer", "tensorboard", "preemption_signal",
                    "crop_backend", "device_pool_budget_mb"),
}
# Tasks that train a network on the config itself (a scoring run is a training run that records
# per-example statistics every epoch) and tasks that only run a teacher over the pool.
TRAINING_TASKS = ("train", "score")
TEACHER_TASKS = ("relabel", "drift", "distill", "synthesize")
# Selections that build a distilled set from teacher-scored crops (hardlabel_jax.distill.METHODS).
DISTILLED_SELECTIONS = ("rded", "ca2d")
# Selections that synthesise images from a BN teacher (hardlabel_jax.synthesize.METHODS).
SYNTHESIZED_SELECTIONS = ("sre2l", "cda")
# Study methods that are pools rather than selections: the whole train split, and an external set
# (`study_external_set`, e.g. a distilled set written by another code base) checked against random.
STUDY_POOLS = ("full", "external")
# Which runs on a tensor set (data.tensor_set) train at its learned lr.pt: those with soft targets
# (every regime but HL: DD-Ranking's compute_metrics passes syn_lr to the set's soft-label runs
# only, and searches the hard-label one's), every regime, or none.
TENSOR_SET_LEARNING_RATES = ("soft_regimes", "every_regime", "ignore")
# Read by runs on a tensor set only (a `tensors:<dir>` data set, or a study's external set).
TENSOR_SET_FIELDS = ("tensor_set_pixel_scale", "tensor_set_hard_labels", "tensor_set_learning_rate")


def default_config() -> ml_collections.ConfigDict:
  """Every field (grouped in `FIELD_GROUPS`) with the defaults of a small HL run."""
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
  # How an image folder's class directories map to label ids (hardlabel_jax.data.class_order):
  # '' their names sorted; 'index' the number in each name (new000, class_00012); 'test_names'
  # the test set's class names (ImageNet synsets); else a text file of folder names in label order.
  c.class_order = ""
  # > 0: the train split is cut to its first n images of every class (in id order) and every
  # artefact sees the cut as the whole split, renumbered, with its own fingerprint (a
  # Fashion-MNIST pool of CIFAR-100's 500 images per class: data.class_cut).
  c.train_images_per_class = 0
  c.normalization_mean = ()  # () -> the training source's; distilled sets use the original's
  c.normalization_std = ()
  # A set saved as tensors, `tensors:<dir>` (images.pt, labels.pt, lr.pt; data.tensor_set), read
  # when the data is one. Float images are 'normalized' (DD-Ranking's: pixels 255 (x·std + mean),
  # normalization_mean/std or else the test set's) or 'unit' (255 x); clipped values are reported.
  c.tensor_set_pixel_scale = "normalized"
  # Hard labels of a soft-labelled set: 'class_major' (DD-Ranking: image i of class i // ipc) or
  # 'argmax' of its soft labels. labels.pt's integers are hard labels as they are.
  c.tensor_set_hard_labels = "class_major"
  c.tensor_set_learning_rate = "soft_regimes"  # TENSOR_SET_LEARNING_RATES: runs that use lr.pt
  c.images_per_class = 0  # 0 -> the full split; else a random class-balanced subset
  c.subset_seed = 0
  c.subset_ids_file = ""  # .npy or .json list of example ids; overrides images_per_class
  # Subset selection by difficulty (DESIGN.md §7): a method and the score file of a
  # task='score' run (EL2N for el2n_*, AUM for ccs, CAD for cad_prune), class-balanced (CCS:
  # ccs_scope).
  c.selection = "random"
  c.scores_file = ""  # '' with score_config set -> <cache_dir>/scores/<identity>/scores.npz
  c.score_config = None  # a full task='score' config, run first when the score file is absent
  # CCS: fraction of hardest (lowest-AUM) examples dropped before stratifying; -1 -> the CCS
  # paper's β at the run's pruning rate 1 − n/N (selection.ccs_paper_beta: 0.3 beyond 90%).
  c.ccs_beta = -1.0
  c.ccs_strata = 50
  c.ccs_scope = "global"  # CCS_SCOPES: over the whole set (the official code) or 'per_class'
  c.cad_direction = "hardest"  # cad_prune keeps the highest CAD (the paper) or the lowest
  c.cad_signal = "true_prob"  # CAD_SIGNALS: the trajectory CAD ranks by (score file has both)
  # el2n_window / cad_window: where in each class's ranking (ascending score) the window of
  # images_per_class consecutive ranks starts: 0 the lowest scores, 1 the highest.
  c.window_position = 1.0
  # RDED / CA2D distilled sets (selection='rded'|'ca2d'), built on first use in cache_dir.
  # factor×factor patches per distilled image; 0 -> run_data.rded_factor: 1 up to 64 px (RDED's
  # CIFAR and Tiny-ImageNet scripts), 2 above (its ImageNet scripts).
  c.rded_factor = 0
  c.rded_crops_per_image = 5
  # mipc, the real images per class crops are drawn from: RDED's random ones, CA2D's top by CAD
  # (ca2d_pool='cad_top_mipc'); 0 -> min(300, smallest class). Unused by 'cad_selection'.
  c.rded_candidates_per_class = 0
  # CA2D_POOLS: CA2D's candidates are the top-mipc images of each class by CAD (the paper) or
  # CAD-Prune's ipc·factor² images ('cad_selection', no class-wide CE filter). Read by CA2D only.
  c.ca2d_pool = "cad_top_mipc"
  # SRe²L / CDA synthesis (selection='sre2l'|'cda', task='synthesize'), built on first use in
  # cache_dir from a BatchNorm teacher; defaults are VILA-Lab/SRe2L recover.sh and CDA's README.
  c.synth_iterations = 1000  # 1K (SRe²L's small-data and CDA-Tiny scripts) or 4K (ImageNet)
  c.synth_lr = 0.25  # Adam(betas 0.5, 0.9), cosine decay to 0 over the iterations
  c.synth_r_bn = 0.01  # weight of the BN-matching term
  c.synth_first_bn_multiplier = 10.0  # extra weight of the first BN layer's term
  c.synth_batch_size = 100  # images optimised together (their BN statistics are matched)
  c.synth_jitter = -1  # max roll in pixels; -1 -> 4 up to 64 px, 32 above (the official scripts)
  c.synth_batching = "mixed"  # SYNTH_BATCHINGS: 'class' is LPLD's one class per batch
  c.synth_augment = "auto"  # SYNTH_AUGMENTS: 'roll' up to 32 px, else crop and flip, then roll
  c.cda_milestone = 1.0  # CDA: min crop scale cosine-annealed 1 -> 0.08 over this share of iters
  c.synth_image_format = "jpeg"  # the official code saves JPEG (PIL quality 75); or 'png'

  # Scoring runs (task='score'): HL training on the pool for K epochs, statistics every epoch.
  c.score_epochs = 0  # K; 0 -> CAD-Prune's K·N = E_down·n from the two fields below
  c.cad_subset_images_per_class = 0  # n / classes of the downstream subset
  c.cad_downstream_epochs = 0.0  # E_down of the downstream run
  c.cad_epochs_rounding = "ceil"  # CAD_EPOCHS_ROUNDINGS: E_down·n/N to whole epochs (>= 1)
  # CAD_WINDOW_RULES: 'span' J = K − cad_num_windows (K − W < 2 is out of CAD's range, refused);
  # 'fixed' J = cad_window.
  c.cad_window_rule = "span"
  c.cad_window = 6  # J under cad_window_rule='fixed': epochs per dynamic-uncertainty window
  c.cad_num_windows = 2  # W: windows averaged into CAD
  # 'fixed' only: K < J + W is an error unless this is set; then the scoring run uses the largest
  # J >= 2, then W >= 1, that fit in K and records them (cad_window_used, cad_num_windows_used).
  c.cad_windows_shrink = False

  # Crops (torchvision RandomResizedCrop semantics) and evaluation view.
  c.image_size = 28
  c.crop_scale = (0.08, 1.0)
  c.crop_ratio = (3 / 4, 4 / 3)
  # 'crop_then_resize': torchvision's F.resized_crop (the box cut out, then resized), as every
  # official pipeline crops; 'pil_box': PIL's resize of the box inside the whole image (its filter
  # also weighs the pixels just outside the box), this library's crops before 2026-12-04.
  c.crop_resize = "crop_then_resize"
  c.random_flip = True
  c.cutmix_alpha = 0.0  # 0 disables CutMix
  # How training crops are drawn (TRAIN_CROP_RECIPES): 'auto' trains RDED/CA2D sets with RDED's
  # own recipe (ShufflePatches, then crop scale 1/rded_factor–1), every other pool with 'rrc'.
  c.train_crop_recipe = "auto"
  # train_crop_recipe='dsa': DC/DSA's strategy string (VICO-UoE/DatasetCondensation utils.py), one
  # op drawn per batch with per-image parameters (ParamDiffAug's defaults, data.dsa.DSAParams).
  c.dsa_strategy = "color_crop_cutout_flip_scale_rotate"
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
  # > 0: the test split is also evaluated after every this many whole epochs and results.json
  # records each evaluation and the best (hardlabel_jax/periodic_eval.py; DD-Ranking's protocol
  # reads the best, a number chosen on the test set). 0: once, after the last step. A run reads
  # it only when set, so the identity of every other run is as before the field.
  c.eval_every_epochs = 0

  # Online distillation (regime='kd'): a teacher HL run and a loss from hardlabel_jax.losses.
  # '' -> <cache_dir>/teachers/<identity of teacher_config>; a given workdir is checked against
  # teacher_config (when set) and the run's data set before anything is written.
  c.teacher_workdir = ""
  c.teacher_config = None  # a full HL config: trains the teacher there first if it is absent
  c.distillation_loss = "kd"
  c.distillation_kwargs = ml_collections.ConfigDict()  # e.g. temperature, alpha, beta
  c.logit_standardization = False
  c.kd_warmup_epochs = 0.0  # DKD/RLD ramp-in, min(epoch / warmup, 1); 0 disables

  # Soft labels (DESIGN.md §3–§5). The table is keyed by (crop_seed, example id, slot).
  c.label_table_dir = ""  # '' -> <cache_dir>/tables/<format>-c<crops>-<identity>
  # A table imported from labels another code base published (python -m hardlabel_jax.fkd_labels:
  # SRe²L's FKD folders): sl/hald runs read it instead of relabelling, with no teacher; it must be
  # of the run's pool, image_size and temperature, and its crops replay from their stored boxes.
  c.imported_table_dir = ""
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
  # How a fraction below 1 prunes (LABEL_PRUNING_MODES): LPLD's own granularity, stored batches
  # (DESIGN.md §9), or 'per_image' (each image keeps round(f·slots) of its slots).
  c.label_pruning = "lpld_batches"
  c.teacher_bn_mode = "eval"  # 'batch_stats': HALD's BSSL relabelling with batch statistics
  # BSSL: images per relabel batch (HALD's demo.sh `-b 16`), drawn per slot from a permutation of
  # the whole pool; each batch's BatchNorm statistics are its own (hardlabel_jax/bssl.py).
  c.relabel_batch_size = 16
  # TABLE_CUTMIX (with cutmix_alpha > 0): a stored crop is CutMixed with a partner from its own
  # relabel batch, one λ and box per batch (HALD's / FKD's relabel, data/relabel_batches.py), or
  # with a partner drawn per crop from the pool ('pool', the library's earlier tables).
  c.table_cutmix = "relabel_batch"
  c.table_positions_per_shard = 0  # images per table shard; 0 -> about 64 MB per shard

  # HALD (regime='hald', DESIGN.md §5): soft and hard phases over the epochs.
  c.hald_schedule = "S6"  # S1, S6, S7, S8, alt:n, hybrid:λ
  c.hald_hard_fraction = 0.5  # share of epochs in the hard phase
  c.hald_label_smoothing = 0.8  # hard phase: one-hot smoothed by 0.8 (true class 0.2 + 0.8/C)
  c.hald_cutmix_alpha = 1.0  # hard phase: CutMix on every batch
  # HALD_HARD_CUTMIX: 'batch_reversed' one λ and box per batch, pasted from the batch reversed, on
  # the device (the official timm Mixup, mode='batch'); 'pool' a λ, box and partner per example
  # drawn from the whole pool by the pipeline (this library's earlier recipe).
  c.hald_hard_cutmix = "batch_reversed"

  # Local semantic drift (task='drift').
  c.drift_crop_counts = (1, 2, 4, 8, 16, 32)  # crops per image to measure

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
  # HALD: lr · 0.5 (1 + cos(π e / (E η))); 0 -> η from HALD's validate/hyper.yaml by data set,
  # student and images per class (hald_hyper; refused where the table has no entry).
  c.hald_eta = 0.0
  c.hald_eta_like = ""  # 'cifar100:resnet18': with hald_eta=0, that row of hyper.yaml at the IPC

  # Label-regime studies (task='study', DESIGN.md §3): every cell of the grid regimes × methods ×
  # images per class × seeds is this config as a task='train' run with `budget_examples`, and
  # shares one teacher, one scoring run per score config and one table per subset (cache_dir).
  c.study_regimes = ("hl", "sl", "sl_kd", "hald")
  c.study_methods = ("random",)  # selection methods, and 'full' (the whole train split)
  c.study_images_per_class = (10,)
  c.study_seeds = (0,)
  c.study_score_epochs = 10  # K of the EL2N/AUM scoring run; CAD-Prune's K comes from the budget
  # STUDY_BUDGET_RULES: 'fixed_examples' every cell trains budget_examples; 'epochs_per_subset'
  # every cell trains study_epochs_per_subset epochs of its own pool, and the full split
  # study_full_epochs (0 -> the same E), so compute and CAD-Prune's K grow with the subset.
  c.study_budget_rule = "fixed_examples"
  c.study_epochs_per_subset = 0.0
  c.study_full_epochs = 0.0
  # A pool smaller than global_batch_size trains in batches of the pool, rounded down to a multiple
  # of 8 (the DC/DSA evaluation's DataLoader: batch 256 on 100 images gives 100-image steps).
  c.study_batch_at_most_pool = False
  c.study_first_regimes = ()  # cells of these regimes train before all others (e.g. ('hl',))
  c.study_regime_overrides = ml_collections.ConfigDict()  # regime -> {field: value}
  # (crops_per_image, label_keep_fraction) pairs: a grid axis of the sl/hald cells; () -> their own.
  c.study_label_tables = ()
  # Method 'external' (the hard-label check, configs/check_set.py): an image folder of another
  # code base's distilled set, trained like a pool of `dataset` and tested on its test split; its
  # class folders mapped by the class-order rule (see class_order); its images per class are the
  # grid's size.
  # a path, 'imagefolder:<path>', or a tensor set (a directory with images.pt, 'tensors:<dir>')
  c.study_external_set = ""
  c.study_external_class_order = ""
  # The external set's own soft labels, imported (hardlabel_jax.fkd_labels): its sl/hald cells read
  # that table (imported_table_dir); '' relabels it with the study's teacher like every pool.
  c.study_external_table = ""
  # The premise sweep (configs/fashion_premise.py): el2n_window / cad_window cells split into one
  # cell per window position, and cad_prune cells into one per scoring length K (() -> the
  # compute-matched K alone).
  c.study_window_positions = ()
  c.study_cad_epochs = ()
  # The regimes the 'full' method trains under; () -> every regime of the study (the hard-label
  # check: ('hl',), the full data of DD-Ranking's hard-label recovery).
  c.study_full_regimes = ()
  # Every cell but 'full' also trains without augmentation (`...-noaug-s0`): the whole image
  # resized, no flip, CutMix or DSA, as DD-Ranking's augmentation-robust score needs.
  c.study_no_augmentation = False
  c.study_protocol = "library"  # STUDY_PROTOCOLS

  # Run control: where shared artefacts live, logging, checkpoints, input loading.
  c.cache_dir = ""  # teachers, scores, distilled sets and tables shared between runs; '' -> workdir
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.num_workers = 0  # Grain worker processes
  # Grain read threads and batches read ahead inside each process (grain.ReadOptions).
  c.read_threads = 1
  c.read_buffer = 4
  # Where crops are made (hardlabel_jax/data/device_pool.py): 'host' (PIL in the input pipeline),
  # 'device' (the pool on every device, crops made in the jitted step; an error if it cannot be),
  # 'auto' (the device on GPU/TPU when the pool fits the budget, else the host; the host on CPU).
  # A table records its resampler and is only replayed on the same one.
  c.crop_backend = "auto"
  c.device_pool_budget_mb = 0  # per device; 0: a quarter of the device's memory
  c.tensorboard = True
  # Caught besides SIGTERM as a preemption notice (save, exit 75; hardlabel_jax.preemption):
  # SLURM's `--signal=USR1@N` before the time limit. '' catches SIGTERM alone.
  c.preemption_signal = "SIGUSR1"
  return c


def _require(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ValueError(f"config.{field}: {message}")


def _require_choice(config: ml_collections.ConfigDict, field: str, choices: tuple) -> None:
  value = config[field]
  _require(value in choices, field, f"{value!r} is not one of {', '.join(choices)}")


# Fields every run reads whatever its task: what it trains or labels on, at what size, how it logs.
_ALWAYS_READ = frozenset(
    FIELD_GROUPS["task"] + FIELD_GROUPS["data"] + FIELD_GROUPS["crops"] + FIELD_GROUPS["model"]
    + FIELD_GROUPS["budget"] + FIELD_GROUPS["run_control"]
    + ("images_per_class", "subset_seed", "selection")) - frozenset(TENSOR_SET_FIELDS)
# The fields whose values decide which other fields a run reads.
_DECIDERS = ("task", "regime", "selection", "optimizer", "schedule", "label_format", "score_epochs",
             "train_crop_recipe", "label_keep_fraction", "cad_window_rule", "label_pruning",
             "eval_every_epochs", "dataset", "study_external_set", "imported_table_dir")
# Read by the trainer's step of each regime (trainer._make_steps, training_examples).
_REGIME_READS = {
    "hl": frozenset({"label_smoothing"}),
    "kd": frozenset(FIELD_GROUPS["kd"]),
    "sl_kd": frozenset({"logit_standardization", "temperature"}),
    "sl": frozenset({"soft_loss_weight", "label_keep_fraction"}),
    "hald": frozenset({"soft_loss_weight", "label_keep_fraction", *FIELD_GROUPS["hald"]}),
}
# What writing (or finding) a soft-label table reads (relabel.table_spec, table_directory).
_TABLE_READS = frozenset({
    "label_table_dir", "temperature", "label_format", "crops_per_image", "crop_seed",
    "teacher_bn_mode", "table_positions_per_shard", "relabel_batch_size", "table_cutmix"
})
_DRIFT_READS = frozenset({
    "crop_seed", "temperature", "teacher_bn_mode", "relabel_batch_size", "table_cutmix",
    "drift_crop_counts"
})
# Fields a study sets in every cell (study.cell_config) or scoring run (study.score_config): the
# study's own values of them are never read there.
_CELL_SETS = frozenset({
    "task", "regime", "seed", "subset_seed", "selection", "images_per_class", "score_config",
    "window_position", "imported_table_dir"
})
_SCORE_SETS = frozenset({
    "task", "regime", "selection", "images_per_class", "subset_ids_file", "scores_file",
    "score_config", "teacher_config", "teacher_workdir", "budget_examples", "score_epochs"
})
# Nested configs validated as runs of their own: field -> (task, regime); both train under HL.
_NESTED_RUNS = {"teacher_config": ("train", "hl"), "score_config": ("score", "hl")}


def resolved_teacher_bn_mode(config: ml_collections.ConfigDict) -> str:
  """`teacher_bn_mode` with 'auto' resolved by the run's selection: 'eval' or 'batch_stats'."""
  if config.teacher_bn_mode != "auto":
    return config.teacher_bn_mode
  return "eval" if config.selection in DISTILLED_SELECTIONS else "batch_stats"


def train_crop_recipe(run: Mapping[str, Any]) -> str:
  """The training-crop recipe a run (config, or its deciding fields) uses: 'rrc' or 'rded'."""
  recipe = run["train_crop_recipe"]
  if recipe == "auto":
    return "rded" if run["selection"] in DISTILLED_SELECTIONS else "rrc"
  return recipe


def _optimizer_reads(run: Mapping[str, Any]) -> set[str]:
  """optim.make_optimizer and optim.learning_rate_schedule."""
  read = {"optimizer", "learning_rate", "weight_decay", "schedule", "warmup_epochs"}
  read |= {
      "sgd": {"momentum", "nesterov"},
      "adamw": {"adam_b1", "adam_b2"}
  }.get(run["optimizer"], set())
  read |= {
      "step": {"step_milestones", "step_gamma"},
      "hald": {"hald_eta", "hald_eta_like"}
  }.get(run["schedule"], set())
  return read


def _run_reads(run: Mapping[str, Any]) -> set[str]:
  """The fields one run of any task but 'study' reads, given its deciding fields."""
  task, regime, selection = run["task"], run["regime"], run["selection"]
  trains = task in TRAINING_TASKS
  read = set(_ALWAYS_READ)
  if selection == "random":
    read.add("subset_ids_file")  # selection.training_pool
  if selection in SCORED_SELECTIONS:
    read |= {"scores_file", "score_config"}
  if selection == "ccs":
    read |= {"ccs_beta", "ccs_strata", "ccs_scope"}
  if selection in CAD_SELECTIONS:
    read.add("cad_signal")
  if selection in ("cad_prune", "ca2d"):
    read.add("cad_direction")
  if selection in WINDOW_SELECTIONS:
    read.add("window_position")
  if selection in DISTILLED_SELECTIONS:  # distill: teacher CE of seeded crops, stitched
    read |= {*FIELD_GROUPS["distilled_set"], *FIELD_GROUPS["teacher"], "crop_seed"}
    if selection != "ca2d":
      read.discard("ca2d_pool")
  if selection in SYNTHESIZED_SELECTIONS:  # synthesize.identity
    read |= {*FIELD_GROUPS["synthesis"], *FIELD_GROUPS["teacher"]}
    if selection != "cda":
      read.discard("cda_milestone")
  if train_crop_recipe(run) == "rded":  # run_data.crop_spec: the factor fixes shuffle and scale
    read = (read - {"crop_scale", "crop_ratio"}) | {"rded_factor"}
  if train_crop_recipe(run) == "dsa":  # the whole image; DSA's own crop, flip and cutout
    read = (read - {"crop_scale", "crop_ratio", "crop_resize", "random_flip", "cutmix_alpha"} |
            {"dsa_strategy"})
  else:
    read.discard("dsa_strategy")
  if tensor_set.names_tensor_set(run["dataset"]):  # data.tensor_set, tensor_sets.training_config
    read |= {"tensor_set_pixel_scale", "tensor_set_hard_labels"}
    if trains:
      read.add("tensor_set_learning_rate")
  # An imported table (plan: table_lib.open_imported) replaces the relabel and its teacher.
  imported = trains and regime in TABLE_REGIMES and bool(run["imported_table_dir"])
  if task in TEACHER_TASKS or (trains and regime != "hl" and not imported):
    read |= set(FIELD_GROUPS["teacher"])
  if trains:
    read |= _optimizer_reads(run) | _REGIME_READS.get(regime, frozenset())
  if trains and run.get("eval_every_epochs"):
    read.add("eval_every_epochs")  # plan._run's periodic evaluation; unset, never read
  if trains and regime in TABLE_REGIMES and (run["label_keep_fraction"] < 1
                                             or run["label_pruning"] in BATCH_REPLAY_MODES):
    # trainer.training_examples: a fraction below 1 prunes; 'hald_batches' and 'fkd_batches'
    # replay stored batches at any fraction.
    read.add("label_pruning")
  if trains and regime in TABLE_REGIMES:
    read.add("imported_table_dir")
  if imported:
    read.add("temperature")  # the student's T, which must be the table's
  elif task == "relabel" or (trains and regime in TABLE_REGIMES):
    read |= _TABLE_READS
    if run["label_format"] != "full":
      read.add("topk")
  if task == "drift":
    read |= _DRIFT_READS
  if task == "score":  # scoring.scoring_epochs, scores_from_statistics
    read |= {"score_epochs", "cad_window_rule", "cad_num_windows"}
    if run["cad_window_rule"] == "fixed":
      read |= {"cad_window", "cad_windows_shrink"}
    if not run["score_epochs"]:
      read |= {"cad_subset_images_per_class", "cad_downstream_epochs", "cad_epochs_rounding"}
  return read


def differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
  """`key: saved X vs now Y` for every (nested) key on which two identities disagree."""
  out = []
  for key in sorted(set(saved) | set(wanted)):
    old, new = saved.get(key), wanted.get(key)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
      out += differences(old, new, f"{prefix}{key}.")
    elif old != new:
      out.append(f"{prefix}{key}: saved {old!r} vs now {new!r}")
  return out


def with_model_defaults(run: Mapping[str, Any]) -> dict[str, Any]:
  """A run's fields (plain values) with `model_kwargs` completed by its model's defaults.

  `{'width': 32}` and `{'width': 32, 'norm': 'instance'}` build the same ConvNet, so identities
  (run_config.json, cache digests) must not tell them apart; nested runs (teacher_config,
  score_config) are completed too.
  """
  out = {}
  for key, value in run.items():
    if isinstance(value, Mapping) and "model" in value:
      value = with_model_defaults(value)
    out[key] = value
  if isinstance(out.get("model"), str) and isinstance(out.get("model_kwargs"), Mapping):
    out["model_kwargs"] = models.canonical_model_kwargs(out["model"], out["model_kwargs"])
  return out


def _plain(value: Any) -> Any:
  """`value` with ConfigDicts as dicts and lists as tuples, to compare with a default."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _regime_overrides(config: ml_collections.ConfigDict, regime: str) -> dict[str, Any]:
  return _plain(config.study_regime_overrides.get(regime) or {})


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def label_tables(config: ml_collections.ConfigDict) -> tuple[tuple[int, float], ...]:
  """`study_label_tables` as (crops_per_image, label_keep_fraction) pairs, or a ValueError."""
  field, tables = "study_label_tables", config.study_label_tables
  _require(isinstance(tables, (tuple, list)), field,
           f"{tables!r} is not a tuple of (crops_per_image, label_keep_fraction) pairs")
  out = []
  for entry in tables:
    _require(
        isinstance(entry, (tuple, list)) and len(entry) == 2, field,
        f"{entry!r} is not a (crops_per_image, label_keep_fraction) pair")
    crops, keep = entry
    _require(
        _is_int(crops) and crops >= 1, field, f"{tuple(entry)}: crops_per_image {crops!r} "
        "must be an int >= 1")
    _require(
        isinstance(keep, numbers.Real) and not isinstance(keep, bool) and 0 < keep <= 1, field,
        f"{tuple(entry)}: label_keep_fraction {keep!r} must be in (0, 1]")
    out.append((int(crops), float(keep)))
  # Two entries with one cell name (study.Cell.name writes the fraction as {:g}) would share a
  # cell directory.
  names = [f"c{crops}k{keep:g}" for crops, keep in out]
  for name in names:
    _require(names.count(name) == 1, field, f"{tuple(out)} repeats an entry ({name})")
  return tuple(out)


def regime_label_tables(config: ml_collections.ConfigDict,
                        regime: str) -> tuple[tuple[int, float], ...]:
  """The label tables a study's `regime` cells split into; () when the axis does not split it."""
  return label_tables(config) if regime in TABLE_REGIMES else ()


def _cell_keep_fractions(config: ml_collections.ConfigDict, run: Mapping[str, Any],
                         regime: str) -> tuple[float, ...]:
  """The label_keep_fraction values a study's cells of `regime` train with (the label tables')."""
  tables = regime_label_tables(config, regime)
  if tables:
    return tuple(dict.fromkeys(keep for _, keep in tables))
  return (run["label_keep_fraction"],)


def _cell_run(config: ml_collections.ConfigDict, run: Mapping[str, Any], regime: str,
              method: str) -> dict[str, Any]:
  """The deciding fields of a study cell (study.cell_config), its regime overrides applied."""
  overrides = _regime_overrides(config, regime)
  return {
      **run,
      **{
          k: v for k, v in overrides.items() if k in _DECIDERS
      },
      "task": "train",
      "regime": regime,
      "selection": "random" if method in STUDY_POOLS else method,
      # An external cell trains on the external set (study.cell_config): a tensor set reads the
      # tensor_set_* fields.
      "dataset": (tensor_set.PREFIX if method == "external"
                  and tensor_set.names_tensor_set(run["study_external_set"]) else run["dataset"]),
      # The external set's sl/hald cells read its imported labels, if the study names them.
      "imported_table_dir":
          (config.study_external_table if method == "external" and regime in TABLE_REGIMES else "")
  }


def _cell_reads(config: ml_collections.ConfigDict, run: Mapping[str, Any], regime: str,
                method: str) -> set[str]:
  """What a study cell reads of the study's fields: its run's fields, less those it sets."""
  return (_run_reads(_cell_run(config, run, regime, method)) - _CELL_SETS
          - set(_regime_overrides(config, regime)))


def _reads(config: ml_collections.ConfigDict, run: Mapping[str, Any]) -> set[str]:
  """`fields_read` of `config` with its deciding fields taken from `run`."""
  if run["task"] != "study":
    return _run_reads(run)
  # A study reads what its cells read (the union over regimes and methods) and what its scoring
  # runs (HL on the whole split) read, of the fields it passes on to them.
  read = {"task", *FIELD_GROUPS["study"]}
  for regime in config.study_regimes:
    for method in config.study_methods:
      # A fraction below 1 (one label table's) makes the cell read label_pruning.
      for keep in _cell_keep_fractions(config, run, regime):
        read |= _cell_reads(config, {**run, "label_keep_fraction": keep}, regime, method)
  if set(config.study_methods) & set(SCORED_SELECTIONS):
    score = {**run, "task": "score", "regime": "hl", "selection": "random", "score_epochs": 1}
    read |= _run_reads(score) - _SCORE_SETS
  if set(config.study_methods) & set(CAD_SELECTIONS):
    read.add("cad_epochs_rounding")  # study.cad_scoring_epochs: K per subset size
  if config.study_budget_rule == "epochs_per_subset":
    read -= {"budget_examples", "num_epochs"}  # study.cell_config sets both in every cell
  return read


def fields_read(config: ml_collections.ConfigDict) -> frozenset[str]:
  """The top-level fields the config's task reads, given its regime, selection and optimizer."""
  return frozenset(_reads(config, {k: config[k] for k in _DECIDERS}))


def reset_unread(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every field its run never reads back at the default."""
  out = config.copy_and_resolve_references()
  read = fields_read(out)
  defaults = default_config()
  for field in defaults.keys():
    if field not in read and _plain(out[field]) != _plain(defaults[field]):
      out[field] = defaults[field]
  return out


def unset(config: ml_collections.ConfigDict, *fields: str) -> None:
  """Puts `fields` back at their defaults: a config built on another removes what it never reads."""
  defaults = default_config()
  for field in fields:
    config[field] = defaults[field]


def _readers_hint(config: ml_collections.ConfigDict, field: str) -> str:
  """Which single change of a deciding field would make `field` read, e.g. 'regime=kd'."""
  choices = {
      "task": TASKS,
      "regime": REGIMES,
      "selection": SELECTIONS,
      "optimizer": OPTIMIZERS,
      "schedule": SCHEDULES,
      "label_format": LABEL_FORMATS,
      "score_epochs": (0,),
      "cad_window_rule": CAD_WINDOW_RULES,
      "train_crop_recipe": TRAIN_CROP_RECIPES,
      "label_keep_fraction": (0.5,)
  }
  run = {k: config[k] for k in _DECIDERS}
  hints = []
  for decider, values in choices.items():
    readers = [
        str(v)
        for v in values
        if v != run[decider] and field in _reads(config, {
            **run, decider: v
        })
    ]
    if readers:
      hints.append(f"{decider}={'|'.join(readers)}")
  return " or ".join(hints)


def _check_fields_read(config: ml_collections.ConfigDict) -> None:
  """A field changed from its default must be read by the config's task, regime and selection."""
  read = fields_read(config)
  defaults = default_config()
  if config.task == "study":
    run = (f"task=study (study_regimes={tuple(config.study_regimes)}, "
           f"study_methods={tuple(config.study_methods)})")
  else:
    run = f"task={config.task}, regime={config.regime} (selection={config.selection})"
  for field in (f for group in FIELD_GROUPS.values() for f in group):
    value, default = _plain(config[field]), _plain(defaults[field])
    if field not in read and value != default:
      hint = _readers_hint(config, field)
      # A nested run (teacher_config, score_config) is named by its task, not printed whole.
      shown = (f"a task={value['task']}, regime={value.get('regime')} config"
               if isinstance(value, dict) and "task" in value else repr(value))
      raise ValueError(f"config.{field}: set to {shown} but {run} never reads it; remove it "
                       f"(default {default!r})"
                       + (f" or choose a run that reads it: {hint}" if hint else ""))
  if config.task == "study":
    run_fields = {k: config[k] for k in _DECIDERS}
    for regime in config.study_regimes:
      regime_reads = set()
      for method in config.study_methods:
        for keep in _cell_keep_fractions(config, run_fields, regime):
          cell_run = _cell_run(config, {**run_fields, "label_keep_fraction": keep}, regime, method)
          regime_reads |= _run_reads(cell_run)
      for field, value in _regime_overrides(config, regime).items():
        # Unknown names and grid fields are study.validate_study's to report.
        if field in defaults and not field.startswith("study_") and field not in ("task", "regime"):
          _require(
              field in regime_reads, f"study_regime_overrides.{regime}.{field}",
              f"set to {value!r} but the {regime} cells of this study never read it; "
              "remove it")
  for field, (task, regime) in _NESTED_RUNS.items():
    if config[field] is not None:
      _validate_nested(config[field], field, task, regime)


def _validate_nested(nested: ml_collections.ConfigDict, field: str, task: str, regime: str) -> None:
  """`validate` of a config that is a run of its own, its errors prefixed with `field`."""
  try:
    _require(nested.task == task, "task", f"{nested.task!r}: {field} is a task={task!r} run")
    _require(nested.regime == regime, "regime",
             f"{nested.regime!r}: {field} is a regime={regime!r} run")
    validate(nested)
  except ValueError as e:
    message = str(e)
    prefixed = (message.replace("config.", f"config.{field}.", 1)
                if message.startswith("config.") else f"config.{field}: {message}")
    raise ValueError(prefixed) from e


def closest_field(name: str, fields: Iterable[str]) -> str | None:
  """The one of `fields` that `name` most likely misspells, or None when none is close."""
  matches = difflib.get_close_matches(name, list(fields), n=1)
  return matches[0] if matches else None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field."""
  known = default_config().keys()
  missing = sorted(set(known) - set(config.keys()))
  _require(not missing, missing[0] if missing else "", "missing field; start from "
           "hardlabel_jax.config_schema.default_config()")
  # A misspelt assignment in a config file adds a field no code reads: the run would silently
  # use the default of the field that was meant.
  unknown = sorted(set(config.keys()) - set(known))
  if unknown:
    close = closest_field(unknown[0], known)
    _require(False, unknown[0], "unknown field" + (f"; did you mean {close!r}?" if close else ""))
  _require_choice(config, "task", TASKS)
  _require_choice(config, "regime", REGIMES)
  _require_choice(config, "optimizer", OPTIMIZERS)
  _require_choice(config, "schedule", SCHEDULES)
  _require(isinstance(config.dataset, str) and config.dataset, "dataset", "must be a name")
  _require(config.images_per_class >= 0, "images_per_class", "must be >= 0 (0 = full split)")
  _require_choice(config, "tensor_set_pixel_scale", tensor_set.PIXEL_SCALES)
  _require_choice(config, "tensor_set_hard_labels", tensor_set.HARD_LABEL_RULES)
  _require_choice(config, "tensor_set_learning_rate", TENSOR_SET_LEARNING_RATES)
  _require_choice(config, "selection", SELECTIONS)
  _require(
      config.selection not in SCORED_SELECTIONS or bool(config.scores_file)
      or config.score_config is not None, "scores_file",
      f"selection {config.selection!r} needs the score file of a task='score' run (or a "
      "score_config to run one)")
  _require(config.selection == "random" or config.images_per_class > 0, "images_per_class",
           f"selection {config.selection!r} needs a positive number of images per class")
  _require(config.rded_factor >= 0, "rded_factor", "must be >= 0 (0: by image size)")
  _require(config.rded_crops_per_image >= 1, "rded_crops_per_image", "must be >= 1")
  _require(config.rded_candidates_per_class >= 0, "rded_candidates_per_class", "must be >= 0")
  _require_choice(config, "ca2d_pool", CA2D_POOLS)
  _require(config.synth_iterations >= 1, "synth_iterations", "must be >= 1 (1000 or 4000 in the "
           "official scripts)")
  _require(config.synth_lr > 0, "synth_lr", "must be positive")
  _require(config.synth_r_bn >= 0, "synth_r_bn", "must be >= 0")
  _require(config.synth_first_bn_multiplier >= 0, "synth_first_bn_multiplier", "must be >= 0")
  _require(config.synth_batch_size >= 1, "synth_batch_size", "must be >= 1")
  _require(config.synth_jitter >= -1, "synth_jitter", "must be >= 0, or -1 for the official "
           "scripts' (4 up to 64 px, 32 above)")
  _require_choice(config, "synth_batching", SYNTH_BATCHINGS)
  _require_choice(config, "synth_augment", SYNTH_AUGMENTS)
  _require(0 <= config.cda_milestone <= 1, "cda_milestone", "must be in [0, 1]")
  _require_choice(config, "synth_image_format", SYNTH_IMAGE_FORMATS)
  _require(config.ccs_beta == -1 or 0 <= config.ccs_beta < 1, "ccs_beta",
           "must be in [0, 1), or -1 for the CCS paper's β at the pruning rate")
  _require_choice(config, "ccs_scope", CCS_SCOPES)
  _require(config.ccs_strata >= 1, "ccs_strata", "must be >= 1")
  _require_choice(config, "cad_direction", CAD_DIRECTIONS)
  _require_choice(config, "cad_signal", CAD_SIGNALS)
  _require(0 <= config.window_position <= 1, "window_position",
           "must lie in [0, 1] (0: the lowest scores of each class, 1: the highest)")
  _require_choice(config, "cad_window_rule", CAD_WINDOW_RULES)
  _require_choice(config, "cad_epochs_rounding", CAD_EPOCHS_ROUNDINGS)
  _require(
      _is_int(config.train_images_per_class) and config.train_images_per_class >= 0,
      "train_images_per_class", "must be an int >= 0 (0 = the whole train split)")
  _require(config.score_epochs >= 0, "score_epochs", "must be >= 0")
  _require(config.cad_window >= 2, "cad_window", "must be >= 2 (a standard deviation)")
  _require(config.cad_num_windows >= 1, "cad_num_windows", "must be >= 1")
  _require(isinstance(config.cad_windows_shrink, bool), "cad_windows_shrink", "must be a bool")
  if config.task == "score":
    # Per-example training dynamics of the HL run (DESIGN.md §7): no teacher, no table.
    _require(config.regime == "hl", "regime", f"{config.regime!r}: a scoring run trains under "
             "hard labels; set regime='hl'")
    _require(
        config.score_epochs > 0
        or (config.cad_subset_images_per_class > 0 and config.cad_downstream_epochs > 0),
        "score_epochs", "set it, or cad_subset_images_per_class and cad_downstream_epochs "
        "so that K·N = E_down·n gives it")
  _require_choice(config, "compute_dtype", models.COMPUTE_DTYPES)
  _require(config.image_size > 0, "image_size", "must be positive")
  _require(config.global_batch_size > 0, "global_batch_size", "must be positive")
  _require(config.eval_batch_size > 0, "eval_batch_size", "must be positive")
  _require(
      _is_int(config.eval_every_epochs) and config.eval_every_epochs >= 0, "eval_every_epochs",
      "must be an int >= 0 (0: evaluate once, after the last step)")
  _require(config.budget_examples >= 0, "budget_examples", "must be >= 0")
  # A scoring run's length is K epochs (scoring.training_config), whatever the budget fields say.
  _require(config.task == "score" or config.budget_examples > 0 or config.num_epochs > 0,
           "num_epochs", "must be positive when budget_examples is 0")
  _require(config.learning_rate > 0, "learning_rate", "must be positive")
  _require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
  _require(config.cutmix_alpha >= 0, "cutmix_alpha", "must be >= 0")
  _require_choice(config, "train_crop_recipe", TRAIN_CROP_RECIPES)
  if config.train_crop_recipe == "dsa":
    try:
      dsa.parse_strategy(config.dsa_strategy)
    except ValueError as e:
      raise ValueError(f"config.dsa_strategy: {e}") from e
    _require(
        config.task != "train" or config.regime in DSA_REGIMES, "train_crop_recipe",
        f"'dsa' augments on the device, so a {config.regime!r} run's stored soft labels would "
        f"belong to other pixels; use it with {', '.join(DSA_REGIMES)}")
  _require(config.weight_decay >= 0, "weight_decay", "must be >= 0")
  _require(0 <= config.adam_b1 < 1 and 0 <= config.adam_b2 < 1, "adam_b2",
           "Adam's b1 and b2 must lie in [0, 1)")
  _require(config.hald_eta >= 0, "hald_eta", "must be >= 0 (0: HALD's hyper.yaml value)")
  if config.schedule == "hald" and config.task in TRAINING_TASKS:
    hald_hyper.resolved_eta(config)  # a missing table entry is an error before anything runs
  _require(config.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
  _require(all(0 < m < 1 for m in config.step_milestones), "step_milestones",
           "must be fractions of training in (0, 1)")
  _require_choice(config, "distillation_loss", DISTILLATION_LOSSES)
  _require(config.kd_warmup_epochs >= 0, "kd_warmup_epochs", "must be >= 0")
  if config.regime == "kd":
    _require(
        not (config.cutmix_alpha > 0 and config.distillation_loss in LABEL_LOSSES), "cutmix_alpha",
        f"CutMix makes the label of the {config.distillation_loss!r} loss "
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
  _require_choice(config, "label_pruning", LABEL_PRUNING_MODES)
  _require_choice(config, "teacher_bn_mode", TEACHER_BN_MODES)
  _require(config.relabel_batch_size >= 1, "relabel_batch_size", "must be >= 1")
  _require_choice(config, "table_cutmix", TABLE_CUTMIX)
  _require(config.table_positions_per_shard >= 0, "table_positions_per_shard", "must be >= 0")
  _require(0 <= config.hald_hard_fraction <= 1, "hald_hard_fraction", "must be in [0, 1]")
  _require(0 <= config.hald_label_smoothing < 1, "hald_label_smoothing", "must be in [0, 1)")
  _require(config.hald_cutmix_alpha >= 0, "hald_cutmix_alpha", "must be >= 0")
  _require_choice(config, "hald_hard_cutmix", HALD_HARD_CUTMIX)
  _require(
      config.regime != "hald" or config.hald_hard_cutmix != "batch_reversed"
      or config.global_batch_size % 2 == 0, "global_batch_size",
      "HALD's batch CutMix pastes from the batch reversed and needs an even batch (timm's Mixup "
      "asserts it; Jiacheng8/HALD train_fkd.py drops the last image of an odd batch)")
  if config.regime == "hald":
    hald.parse_schedule(config.hald_schedule)
  _require(
      len(config.drift_crop_counts) > 0 and all(int(m) >= 1 for m in config.drift_crop_counts),
      "drift_crop_counts", "must be a non-empty list of positive crop counts")
  _require(config.log_every_steps > 0, "log_every_steps", "must be positive")
  _require(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
  if config.preemption_signal:
    preemption.signal_number(config.preemption_signal)
  _require(config.num_workers >= 0, "num_workers", "must be >= 0")
  _require(config.read_threads >= 0, "read_threads", "must be >= 0")
  _require(config.read_buffer >= 1, "read_buffer", "must be >= 1")
  _require_choice(config, "crop_backend", device_pool.CROP_BACKENDS)
  _require_choice(config, "crop_resize", crops.RESIZE_MODES)
  _require(config.device_pool_budget_mb >= 0, "device_pool_budget_mb", "must be >= 0 (0: auto)")
  _require(0 < config.eval_crop_fraction <= 1, "eval_crop_fraction", "must be in (0, 1]")
  if config.task == "study":  # the grid decides what the study reads
    _require_choice(config, "study_budget_rule", STUDY_BUDGET_RULES)
    _require_choice(config, "study_protocol", STUDY_PROTOCOLS)
    _require(isinstance(config.study_no_augmentation, bool), "study_no_augmentation",
             "must be a bool")
    for field, known in (("study_regimes", REGIMES), ("study_methods", SELECTIONS + STUDY_POOLS)):
      for value in config[field]:
        _require(value in known, field, f"{value!r} is not one of {', '.join(known)}")
    label_tables(config)
    _require(
        not config.study_external_table
        or ("external" in config.study_methods and set(config.study_regimes) & set(TABLE_REGIMES)),
        "study_external_table", "the external set's imported labels are read by its "
        f"{'/'.join(TABLE_REGIMES)} cells: the study needs method 'external' and one of those "
        "regimes")
  _check_fields_read(config)


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
