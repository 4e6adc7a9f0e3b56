"""ResNet-18 on ImageNet-1K under hard labels: the standard 90-epoch SGD recipe, for TPU/GPU.

Prepare the data once (TFDS ArrayRecord; the tars come from image-net.org):
  mkdir -p $DATA/downloads/manual && cp ILSVRC2012_img_{train,val}.tar $DATA/downloads/manual/
  tfds build imagenet2012 --data_dir=$DATA --file_format=array_record
Run (one host, all local accelerators; see launch/ for pods and clusters):
  python -m hardlabel_jax.main --config configs/imagenet_hl_resnet18.py \
      --config.data_dir=$DATA --workdir $WORKDIR
Use `:ipc=50` to train a class-balanced random subset of 50 images per class at the same
per-image epochs, or `:runlocal` for a CPU smoke test of the pipeline (needs the data).
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """90 epochs, batch 1024, SGD lr 0.4 (0.1 × batch/256), cosine, label smoothing 0.1."""
  args = config_schema.parse_arg(arg, runlocal=False, ipc=0)
  config = config_schema.default_config()
  config.dataset = "tfds:imagenet2012"
  config.test_split = "validation"
  config.image_size = 224
  config.eval_crop_fraction = 0.875
  config.crop_scale = (0.08, 1.0)
  config.random_flip = True
  config.model = "resnet18"
  config.model_kwargs.width = 64
  config.model_kwargs.zero_init_residual = False
  config.images_per_class = args.ipc
  config.num_epochs = 90
  config.global_batch_size = 1024
  config.eval_batch_size = 1024
  config.optimizer = "sgd"
  config.learning_rate = 0.4
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 1e-4  # the torchvision recipe
  config.label_smoothing = 0.1
  config.schedule = "cosine"
  config.warmup_epochs = 5
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.num_workers = 16
  if args.runlocal:
    config.image_size = 64
    config.images_per_class = 2
    config.num_epochs = 1
    config.global_batch_size = 16
    config.eval_batch_size = 16
    config.num_workers = 0
    config.log_every_steps = 1
  return config
