"""Command line: `python -m hardlabel_jax.main --config configs/X.py --workdir DIR`.

Only parses flags and hands the config to the tested library (Flax-examples style). Override any
field with `--config.field=value`; pass a config argument as `--config configs/X.py:runlocal`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from hardlabel_jax import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.task == "train":
    trainer.train_and_evaluate(config, _WORKDIR.value)
  else:
    raise app.UsageError(f"config.task {config.task!r} is not supported")


if __name__ == "__main__":
  app.run(main)
