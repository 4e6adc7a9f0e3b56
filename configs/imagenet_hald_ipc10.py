"""HALD on ImageNet-1K at 10 images per class: the paper's recipe, for TPU/GPU.

ResNet-18 teacher and student; 300 epochs over the 10,000 images at batch 16; AdamW lr 1e-3,
weight decay 0.01 (none on BN/bias); cosine 0.5(1 + cos(π e / (E η))) with η = 2; T = 20;
schedule S6 = 75 soft / 150 hard / 75 soft epochs; hard phase: CutMix α = 1 on every batch and
label smoothing 0.8, the batch CutMixed with itself reversed on the device (timm's Mixup). lr and
η come from validate/hyper.yaml (hald_hyper). The stored crops are CutMixed (α = 1) before the
teacher labels them, as in HALD's relabel (`--mix-type cutmix`), and the soft phase replays them
mixed. 10 stored crops per image (SLC 100 at IPC10, demo.sh / train.sh) in `full` fp16 with CutMix
metadata is 10,000 × 10 × 2,023 bytes ≈ 202 MB, labelled by BSSL (the teacher's BatchNorm
normalising each relabel batch of 16 by its own statistics, as relabel_slc.py for every set but
RDED's), each crop CutMixed with a partner from its own relabel batch, one λ and box per batch
(relabel/utils_fkd.py `cutmix`; table_cutmix='relabel_batch'), and the soft phase replays whole
stored relabel batches, each once per pass (label_pruning='hald_batches'). Not yet as the official
run: the images are a random real subset (official: SRe²L / RDED / LPLD / FADRM distilled images;
`selection='sre2l'` or `'rded'` builds one).

Train the teacher with configs/imagenet_hl_resnet18.py first (or point at any finished HL run):
  python -m hardlabel_jax.main --config configs/imagenet_hald_ipc10.py:task=relabel \
      --config.data_dir=$DATA --config.teacher_workdir=$TEACHER --workdir $WORKDIR
  python -m hardlabel_jax.main --config configs/imagenet_hald_ipc10.py \
      --config.data_dir=$DATA --config.teacher_workdir=$TEACHER --workdir $WORKDIR
`:regime=sl` gives the SL baseline on the same table; `:runlocal` a CPU smoke test.
The soft loss keeps the DD convention (KL without T²). On the embedded data that made HALD's
soft→hard switch collapse the network (see configs/embedded_hald.py); if the hard phase's loss
sits at ln(1000) after the switch, add `--config.soft_loss_weight=400` (T²).
"""

from hardlabel_jax import config_schema
from hardlabel_jax import hald_hyper


def get_config(arg=None):
  """The HALD IPC10 recipe; `ipc=50` switches to η = 1 as in the paper."""
  # crops: SLC 100 soft labels per class (relabel/scripts/imagenet1k/demo.sh, train.sh `slc=100`)
  # over IPC10's 10 images is 10 stored crops per image (train.sh: n = slc / ipc).
  args = config_schema.parse_arg(arg, runlocal=False, ipc=10, crops=10, seed=0, regime="hald",
                                 task="train")
  config = config_schema.default_config()
  config.task = args.task
  config.regime = args.regime
  config.seed = args.seed
  config.dataset = "tfds:imagenet2012"
  config.test_split = "validation"
  config.image_size = 224
  config.eval_crop_fraction = 0.875
  config.images_per_class = args.ipc
  config.crop_scale = (0.08, 1.0)
  config.random_flip = True
  # Relabel CutMixed crops: VILA-Lab/SRe2L SRe2L/relabel/relabel.sh (`--mix-type 'cutmix'`,
  # generate_soft_label.py `--cutmix` default 1.0) and LPLD's relabel_and_validate/cfg/reproduce/
  # LPLD_in1k_[4k].yaml (`mix_type: cutmix`) store each crop's partner, λ and box with its label.
  config.cutmix_alpha = 1.0
  config.model = "resnet18"
  config.model_kwargs.width = 64
  config.model_kwargs.zero_init_residual = False
  config.temperature = 20.0
  config.label_format = "full"
  config.crops_per_image = args.crops
  # BSSL (relabel_slc.py: model.train() for every set but RDED's) on relabel batches of 16 (-b 16).
  config.teacher_bn_mode = "batch_stats"
  config.relabel_batch_size = 16
  # The soft phase replays whole stored relabel batches, each once per pass (train_fkd.py).
  config.label_pruning = "hald_batches"
  config.hald_schedule = "S6"
  config.hald_hard_fraction = 0.5
  config.hald_label_smoothing = 0.8
  config.hald_cutmix_alpha = 1.0
  config.num_epochs = 300
  config.global_batch_size = 16
  config.eval_batch_size = 1024
  config.optimizer = "adamw"
  # lr and η from validate/hyper.yaml (imagenet1k, ResNet18: IPC10 (1e-3, 2), IPC50 (1e-3, 1)).
  config.learning_rate = hald_hyper.official_lr_eta(config.dataset, config.model, args.ipc)[0]
  config.weight_decay = 0.01
  config.schedule = "hald"
  config.hald_eta = 0.0  # η from the same table (hald_hyper.resolved_eta)
  config.log_every_steps = 500
  config.checkpoint_every_steps = 10000
  config.num_workers = 16
  if args.runlocal:
    config.image_size = 64
    config.images_per_class = 2
    config.hald_eta = 2.0  # hyper.yaml has no IPC2 row; IPC10's η
    config.crops_per_image = 2
    config.num_epochs = 4
    config.global_batch_size = 16
    config.eval_batch_size = 16
    config.num_workers = 0
    config.log_every_steps = 1
  return config_schema.reset_unread(config)
