"""Do SRe²L's synthetic images beat random real ones once the soft labels are gone? (embedded MNIST)

Hard Truths' claim on the SRe²L family, as a study: HL, SL and SL+KD × random real images and
SRe²L-synthesised images × 10 images per class × 5 seeds (30 cells), every cell the demo's student
(ConvNet-D3, width 32, AdamW) trained for the same 8,400 examples. The teacher is a BatchNorm
ConvNet-D3 (configs/embedded_hl.py:norm=batch, width 64, 2 epochs): SRe²L matches its BN
statistics, SL stores its soft labels and SL+KD distils from it online. Each seed synthesises its
own set (SRe²L's recover: 1,000 Adam iterations, r_bn 0.01, batches of one image per class, the
roll-only augmentation of its 32-px script), cached in `cache_dir` with the teacher and tables.

  python -m hardlabel_jax.main --config configs/embedded_sre2l.py --workdir /tmp/sre2l_study
  # one set alone (task=synthesize), e.g. CDA or LPLD's class-wise batches:
  python -m hardlabel_jax.main \
      --config configs/embedded_sre2l.py:task=synthesize,method=cda,seed=0 \
      --config.cache_dir=/tmp/sre2l_study/cache --workdir /tmp/cda_set
  python -m hardlabel_jax.main --config configs/embedded_sre2l.py:task=synthesize,batching=class \
      --config.cache_dir=/tmp/sre2l_study/cache --workdir /tmp/lpld_set
  python -m hardlabel_jax.main --config configs/embedded_sre2l.py:runlocal \
      --workdir /tmp/sre2l_smoke
  # the same study for RDED's sets (one lowest-CE crop per image at 28 px), same teacher:
  python -m hardlabel_jax.main --config configs/embedded_sre2l.py:method=rded \
      --config.cache_dir=/tmp/sre2l_study/cache --workdir /tmp/rded_study
"""

from hardlabel_jax import config_schema


def teacher_config(runlocal: bool):
  """The BN teacher: configs/embedded_hl.py with BatchNorm, width 64, at most 2 epochs."""
  teacher = config_schema.sibling_config(__file__, "embedded_hl.py", "norm=batch" +
                                         (",runlocal" if runlocal else ""))
  teacher.model_kwargs.width = 64
  teacher.num_epochs = min(teacher.num_epochs, 2)
  return teacher


def get_config(arg=None):
  """`task=study|synthesize`, `method=sre2l|cda|rded`, `batching=mixed|class`, `seed=N`, `runlocal`.

  (rded: the study only; its sets come from the same teacher.)
  """
  args = config_schema.parse_arg(arg, runlocal=False, task="study", method="sre2l",
                                 batching="mixed", seed=0, ipc=10)
  if args.task not in ("study", "synthesize"):
    raise ValueError(f"task={args.task!r}: choose study or synthesize")
  if args.method not in ("sre2l", "cda", "rded") or (args.method == "rded"
                                                     and args.task != "study"):
    raise ValueError(f"method={args.method!r}: choose sre2l or cda (or rded for the study)")
  config = config_schema.default_config()
  config.task = args.task
  config.dataset = "embedded_mnist"
  config.image_size = 28
  config.crop_scale = (0.08, 1.0)  # the demo's DD-style student crops
  config.crop_ratio = (3 / 4, 4 / 3)
  config.random_flip = False
  config.model = "convnet_d3"
  config.model_kwargs.width = 32
  config.model_kwargs.norm = "instance"
  config.budget_examples = 8_400
  config.global_batch_size = 48  # a multiple of 8 devices; 8,400 = 175 steps × 48
  config.optimizer = "adamw"  # one recipe for every regime: only the labels differ
  config.learning_rate = 2e-3
  config.weight_decay = 0.01
  config.teacher_config = teacher_config(args.runlocal)
  config.temperature = 20.0
  config.crops_per_image = 4
  config.synth_iterations = 1000
  config.synth_batching = args.batching
  config.log_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.tensorboard = False
  if args.task == "study":
    config.study_regimes = ("hl", "sl", "sl_kd")
    config.study_methods = ("random", args.method)
    config.study_images_per_class = (args.ipc,)
    config.study_seeds = (0, 1, 2, 3, 4)
  else:
    config.selection = args.method
    config.images_per_class = args.ipc
    config.subset_seed = args.seed
  if args.runlocal:
    config.synth_iterations = 20
    config.budget_examples = 192
    if args.task == "study":
      config.study_regimes = ("hl", "sl")
      config.study_images_per_class = (2,)
      config.study_seeds = (0,)
  # task=synthesize trains nothing: drop the training fields it would refuse as unread.
  return config_schema.reset_unread(config)
