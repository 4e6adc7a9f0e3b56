"""Hard Truths' label-regime study on ImageNet-1K with ResNet-18 (the paper's main setting).

HL, SL, SL+KD and HALD × random, EL2N-hard, CCS, CAD-Prune, RDED, CA2D and the full train split ×
10, 50 and 100 images per class × 3 seeds, every cell a ResNet-18 trained for the same 15 M
examples (300 epochs of IPC50: 1,500 at IPC10, 150 at IPC100, 11.7 of the full set). CAD-Prune's
scoring run lasts K = ⌈15 M / 1.28 M⌉ = 12 epochs (J=6, W=2). SL and HALD replay 50 stored
crops per image as top-10 8-bit rows (41 bytes: 205 MB at IPC100). The teacher is a finished
configs/imagenet_hl_resnet18.py run (pass --config.teacher_workdir) or is trained first.
Published (ResNet-18, HL, IPC10 / 50 / 100): CA2D 15.25 / 41.72 / 46.32, RDED 14.34 / 38.49 /
44.36, CAD-Prune 12.57 / 40.21; SL+KD random 28.82 / 58.10 / 62.87.

  python -m hardlabel_jax.main --config configs/imagenet_study.py --config.data_dir=$DATA \
      --config.teacher_workdir=$TEACHER --config.cache_dir=$CACHE --workdir $WORKDIR
Launch it on a pod or cluster with launch/ (every process runs the same grid in lockstep).
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """The paper's grid; `runlocal` shrinks model, sizes and budget for a CPU smoke test."""
  args = config_schema.parse_arg(arg, runlocal=False)
  config = config_schema.sibling_config(__file__, "imagenet_hl_resnet18.py", args.runlocal
                                        and "runlocal")
  config.task = "study"
  config.study_regimes = ("hl", "sl", "sl_kd", "hald")
  config.study_methods = ("random", "el2n_hard", "ccs", "cad_prune", "rded", "ca2d", "full")
  config.study_images_per_class = (10, 50, 100)
  config.study_seeds = (0, 1, 2)
  config.study_score_epochs = 10
  config.images_per_class = 0
  config.teacher_config = config_schema.sibling_config(__file__, "imagenet_hl_resnet18.py",
                                                       args.runlocal and "runlocal")
  config.budget_examples = 300 * 50 * 1000
  config.num_epochs = 0
  config.global_batch_size = 1024
  config.optimizer = "adamw"  # the DD evaluation recipe (SRe²L/RDED), the same in every regime
  config_schema.unset(config, "nesterov")  # the HL recipe's SGD setting; AdamW never reads it
  config.learning_rate = 1e-3
  config.weight_decay = 0.01
  config.label_smoothing = 0.0
  config.warmup_epochs = 0
  config.schedule = "cosine"
  config.temperature = 20.0
  config.label_format = "topk_q8"
  config.topk = 10
  config.crops_per_image = 50
  config.hald_schedule = "S6"
  # Fixed budget: K = 15 M / 1.28 M = 12 for every size; the paper's literal J=6, W=2 for ImageNet.
  config.cad_window_rule = "fixed"
  config.cad_window, config.cad_num_windows = 6, 2
  # rded_factor stays 0 (auto): 1 at <= 64 px as RDED's CIFAR scripts, 2 above as its ImageNet ones.
  config.rded_candidates_per_class = 600  # IPC100 stitches 400 crops of distinct images a class
  if args.runlocal:
    config.study_regimes = ("hl", "sl_kd")
    config.study_methods = ("full",)
    config.study_seeds = (0,)
    config.budget_examples = 32
    config.global_batch_size = 16
    # No SL, HALD or RDED/CA2D cells in the smoke grid: nothing reads the table or mipc fields.
    config_schema.unset(config, "label_format", "topk", "crops_per_image",
                        "rded_candidates_per_class", "cad_window_rule")
    config.tensorboard = False
  return config
