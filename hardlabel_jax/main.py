"""Command line: `python -m hardlabel_jax.main --config configs/X.py --workdir DIR`.

Only parses flags and hands the config to the tested library (Flax-examples style):
`config.task` is `train` (any regime), `relabel` (build a soft-label table), `drift`,
`score` (per-example difficulty statistics for subset selection), `distill` (RDED/CA2D sets),
`synthesize` (SRe²L/CDA sets from a BatchNorm teacher) or `study` (a grid of label regimes ×
selection methods × sizes × seeds, with a report). Override any field with
`--config.field=value`; pass a config argument as `--config configs/X.py:runlocal`.
Mistakes end in one `error:` line (hardlabel_jax.cli_errors).
"""

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from hardlabel_jax import cli_errors
from hardlabel_jax import config_schema
from hardlabel_jax import cpu_backend
from hardlabel_jax import log_filters
from hardlabel_jax import plan
from hardlabel_jax import preemption
from hardlabel_jax import study

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (TPU pods, GPU clusters); "
    "on a single host leave it off.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, where the environment (TPU, SLURM) "
    "does not say; with --distributed.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job, where the "
    "environment does not say; with --distributed.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, where the "
    "environment does not say; with --distributed.")
flags.mark_flags_as_required(["config", "workdir"])
# Before any JAX computation: XLA reads its flags when the backend starts.
cpu_backend.configure()


def main(argv: list[str]) -> None:
  """Validates the config and runs its task in the workdir."""
  if len(argv) > 1:
    cli_errors.fail(f"unexpected arguments: {' '.join(argv[1:])}", cli_errors.USAGE_ERROR)
  if not flags.FLAGS["verbosity"].present:
    # Orbax and TFDS log every save at INFO; progress lines go to stdout instead.
    logging.set_verbosity(logging.WARNING)
  log_filters.install()
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    cli_errors.fail(cli_errors.unloadable(flags.FLAGS["config"].config_filename),
                    cli_errors.USAGE_ERROR)
  try:
    # Before anything else (the coordinator, the workdir): a config mistake writes nothing.
    config_schema.validate(config)
  except ValueError as e:
    cli_errors.fail(str(e), cli_errors.USAGE_ERROR)
  if _DISTRIBUTED.value:
    # On TPU pods and SLURM the coordinator comes from the environment; elsewhere (several
    # processes on one machine, a plain cluster) the three flags give it. Every process runs
    # this same main over the same config.
    explicit = {
        "coordinator_address": _COORDINATOR.value,
        "num_processes": _NUM_PROCESSES.value,
        "process_id": _PROCESS_ID.value
    }
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
  elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
    cli_errors.fail("--coordinator_address/--num_processes/--process_id need --distributed",
                    cli_errors.USAGE_ERROR)
  tasks = {
      "train": plan.train,
      "relabel": plan.relabel_table,
      "drift": plan.measure_drift,
      "score": plan.score,
      "distill": plan.distill_set,
      "synthesize": plan.synthesize_set,
      "study": study.run
  }
  # After jax.distributed.initialize: with several processes SIGTERM stays with its sync manager.
  with preemption.handle_signals(config.preemption_signal):
    cli_errors.run_task(tasks[config.task], config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli_errors.parse_flags)
