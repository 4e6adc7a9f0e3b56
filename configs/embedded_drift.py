"""Local semantic drift of the embedded_hl teacher's crop labels on 10 images per class.

For 1, 2, 4, …, 32 crops per image: KL between the whole-image prediction and the average of the
crop labels, and how often crops (and their average) are argmax-wrong. T=1 so the KL reads in
the teacher's own confidence (the table's T=20 flattens every distribution).

  python -m hardlabel_jax.main --config configs/embedded_drift.py \
      --config.cache_dir=/tmp/hald/cache --workdir /tmp/hald/drift
Writes drift.csv, drift.json and drift.png to the workdir.
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """The subset, crops and teacher of configs/embedded_hald.py; `runlocal` for a smoke test."""
  config = config_schema.sibling_config(__file__, "embedded_hald.py", arg)
  config.task = "drift"
  # Drift labels crops with the teacher and trains nothing: embedded_hald.py's optimizer, soft-loss
  # weight and stored crops per image (drift_crop_counts says how many crops) are never read.
  config_schema.unset(config, "optimizer", "learning_rate", "weight_decay", "schedule", "hald_eta",
                      "soft_loss_weight", "crops_per_image", "hald_hard_cutmix")
  config.temperature = 1.0
  config.drift_crop_counts = (1, 2, 4, 8, 16, 32)
  if arg and "runlocal" in arg:
    config.drift_crop_counts = (1, 2, 4)
  return config
