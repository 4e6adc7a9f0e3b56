"""ConvNet-D3 on the embedded MNIST train split (4,000 images) under hard labels (HL).

Target: >= 97% top-1 on the embedded test split in under 5 minutes on 2 CPU cores.

  python -m hardlabel_jax.main --config configs/embedded_hl.py --workdir /tmp/embedded_hl
  python -m hardlabel_jax.main --config configs/embedded_hl.py:runlocal --workdir /tmp/hl_smoke
  # a BatchNorm teacher (what SRe²L/CDA synthesis matches):
  python -m hardlabel_jax.main --config configs/embedded_hl.py:norm=batch --workdir /tmp/hl_bn
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """Full run by default; `runlocal` shrinks it to a seconds-long smoke test; `norm=batch`."""
  args = config_schema.parse_arg(arg, runlocal=False, norm="instance")
  config = config_schema.default_config()
  config.dataset = "embedded_mnist"
  config.image_size = 28
  config.model = "convnet_d3"
  config.model_kwargs.width = 128
  config.model_kwargs.norm = args.norm
  config.crop_scale = (0.75, 1.0)  # digits: keep most of the glyph
  config.crop_ratio = (0.8, 1.25)
  config.random_flip = False  # a flipped digit is a different symbol
  config.num_epochs = 6
  config.global_batch_size = 64
  config.optimizer = "sgd"
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.schedule = "cosine"
  config.log_every_steps = 50
  config.checkpoint_every_steps = 250
  if args.runlocal:
    config.num_epochs = 0.5
    config.log_every_steps = 5
  return config
