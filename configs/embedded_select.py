"""Which images? Subset selection and distillation on the embedded MNIST under HL, same budget.

`method` picks the subset of `ipc` images per class: random, el2n_easy, el2n_hard, ccs,
cad_prune (scored by the library first, cached in `cache_dir`), or rded / ca2d (teacher-selected
crops, one per distilled image at 28 px as RDED's CIFAR scripts; RDED's come from 300 random
images per class, CA2D's from CAD-Prune's; the teacher is configs/embedded_hl.py). Every method
trains the same student (ConvNet-D3, width 64) for the same budget (10,000 examples at ipc=10,
20,000 at ipc=50) with the DD evaluation crops (RandomResizedCrop scale 0.08–1).

  python -m hardlabel_jax.main --config configs/embedded_select.py:method=cad_prune,ipc=10,seed=0 \
      --config.cache_dir=/tmp/select/cache --workdir /tmp/select/cad_prune_ipc10_s0
  # the distilled set alone (with its teacher and, for CA2D, its scoring run):
  python -m hardlabel_jax.main --config configs/embedded_select.py:method=ca2d,ipc=10,task=distill \
      --config.cache_dir=/tmp/select/cache --workdir /tmp/select/ca2d_set

Scoring: EL2N and AUM (CCS) come from a 10-epoch run on the whole train split; CAD-Prune's run
lasts K epochs with K·N = E_down·n (the downstream budget), i.e. 3 epochs at ipc=10 and 5 at
ipc=50 here, fewer than the paper's J=6, W=2 need (8), so it sets `cad_windows_shrink`: J=2, W=1
at ipc=10 and J=4, W=1 at ipc=50, recorded in the score file and in results.json.
"""

from hardlabel_jax import config_schema

METHODS = ("random", "el2n_easy", "el2n_hard", "ccs", "cad_prune", "rded", "ca2d")
BUDGET = {10: 10_000, 50: 20_000}


def score_config(cad: bool, ipc: int, runlocal: bool):
  """The scoring run: HL on the whole split, per-example statistics every epoch."""
  config = config_schema.sibling_config(__file__, "embedded_hl.py", runlocal and "runlocal")
  config.task = "score"
  config.model_kwargs.width = 64
  if cad:
    config.score_epochs = 0  # K from K·N = E_down·n
    # K = 3 or 5 < J + W = 8, outside CAD-Prune's range: the literal windows, shrunk to the
    # largest that fit (recorded); configs/fashion_paper.py runs CAD-Prune in range.
    config.cad_window_rule = "fixed"
    config.cad_windows_shrink = True
    config.cad_subset_images_per_class = ipc
    config.cad_downstream_epochs = BUDGET[ipc] / (10 * ipc)
  else:
    config.score_epochs = 2 if runlocal else 10
  return config


def get_config(arg=None):
  """`method=…`, `ipc=10|50`, `seed=N` (training, subset), `task=train|distill`, `runlocal`."""
  args = config_schema.parse_arg(arg, runlocal=False, method="random", ipc=10, seed=0, task="train")
  if args.method not in METHODS:
    raise ValueError(f"method={args.method!r}: choose one of {', '.join(METHODS)}")
  if args.ipc not in BUDGET:
    raise ValueError(f"ipc={args.ipc}: choose 10 or 50")
  config = config_schema.sibling_config(__file__, "embedded_hl.py")
  config.task = args.task
  config.seed = args.seed
  config.subset_seed = args.seed
  config.selection = args.method
  config.images_per_class = args.ipc
  config.model_kwargs.width = 64
  config.budget_examples = BUDGET[args.ipc]
  config.global_batch_size = 32
  config.learning_rate = 0.02
  config.crop_scale = (0.08, 1.0)  # the DD evaluation protocol; RDED grids need patch-sized crops
  config.log_every_steps = 100
  if args.method in ("el2n_easy", "el2n_hard", "ccs", "cad_prune", "ca2d"):
    config.score_config = score_config(args.method in ("cad_prune", "ca2d"), args.ipc,
                                       args.runlocal)
  if args.method in ("rded", "ca2d"):
    config.teacher_config = config_schema.sibling_config(__file__, "embedded_hl.py", args.runlocal
                                                         and "runlocal")
    config.rded_factor = 1  # 28 px: one crop per image, as RDED's 32-px CIFAR scripts
    config.rded_crops_per_image = 5
    config.rded_candidates_per_class = 300
  config.ccs_strata = 50
  if args.runlocal:
    config.budget_examples = 640
    if args.method in ("rded", "ca2d"):
      config.rded_candidates_per_class = 4 * args.ipc
  # task=distill trains nothing: drop the training fields it would refuse as unread.
  return config_schema.reset_unread(config)
