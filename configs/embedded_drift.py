"""Local semantic drift of the embedded_hl teacher's crop labels on 10 images per class.

For 1, 2, 4, …, 32 crops per image: KL between the whole-image prediction and the average of the
crop labels, and how often crops (and their average) are argmax-wrong. T=1 so the KL reads in
the teacher's own confidence (the table's T=20 flattens every distribution).

  python -m hardlabel_jax.main --config configs/embedded_drift.py \
      --config.cache_dir=/tmp/hald/cache --workdir /tmp/hald/drift
Writes drift.csv, drift.json and drift.png to the workdir.
"""

import os

from hardlabel_jax import config_schema


def _hald_config(arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded_hald.py")
  return config_schema.load_config_file(path, arg)


def get_config(arg=None):
  """The subset, crops and teacher of configs/embedded_hald.py; `runlocal` for a smoke test."""
  config = _hald_config(arg)
  config.task = "drift"
  config.temperature = 1.0
  config.drift_crop_counts = (1, 2, 4, 8, 16, 32)
  if arg and "runlocal" in arg:
    config.drift_crop_counts = (1, 2, 4)
  return config
