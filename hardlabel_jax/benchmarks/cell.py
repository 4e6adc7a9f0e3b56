"""Whole cells against their own train step: what the input pipeline and the loop cost.

  python -m hardlabel_jax.benchmarks.cell           # HL, SL, SL+KD, HALD; width 16, batch 120
  python -m hardlabel_jax.benchmarks.cell --quick   # seconds: a few steps of each

Each regime's cell is a real training run (`plan.train`: the Grain pipeline, the stored-table
replay, checkpoints, logging) of the Fashion study's student (ConvNet-D3, instance norm, width
16, 28 px) on `--dataset`, once with its crops made on the host (`crop_backend='host'`: PIL in the
pipeline, what every cell did before issue 26) and once on the devices (`'device'`: the pool on
the devices, the pipeline sending crop fields, `data/device_crops.py` making the pixels in the
jitted program before the step). A cell's rate is the loop's steady rate: the examples of the
logged intervals over their time, the first (compiling) step excluded. Next to them, the run's
compiled step alone on one of its batches already on the devices
(`trainer.standalone_step_rate`), and each cell's rate as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any, Sequence

import ml_collections

from hardlabel_jax import config_schema
from hardlabel_jax import log_filters
from hardlabel_jax import metrics_log
from hardlabel_jax import plan
from hardlabel_jax import trainer
from hardlabel_jax.benchmarks import report

REGIMES = ("hl", "sl", "sl_kd", "hald")
BACKENDS = ("host", "device")
COLUMNS = (("regime", "regime", report.fmt_text), ("host_examples_per_sec", "cell ex/s, host crops",
                                                   report.fmt_number),
           ("device_examples_per_sec", "cell ex/s, device crops",
            report.fmt_number), ("device_over_host", "device / host", report.fmt_ratio),
           ("step_examples_per_sec", "step alone ex/s",
            report.fmt_number), ("host_over_step", "host cell / step", report.fmt_ratio),
           ("device_over_step", "device cell / step", report.fmt_ratio))


def cell_config(args: argparse.Namespace, regime: str, teacher_dir: str,
                crop_backend: str = "host") -> ml_collections.ConfigDict:
  """The student run of one regime: the study's width, batch and crops; a table of 4 crops."""
  config = config_schema.default_config()
  config.crop_backend = crop_backend
  config.dataset = args.dataset
  config.images_per_class = args.images_per_class
  config.model_kwargs.width = args.width
  config.global_batch_size = args.batch
  config.eval_batch_size = 500
  config.budget_examples = args.steps * args.batch
  config.log_every_steps = max(args.steps // 10, 1)
  config.checkpoint_every_steps = args.steps  # one save, at the end
  config.tensorboard = False
  config.regime = regime
  if regime != "hl":
    config.teacher_workdir = teacher_dir
  if regime in config_schema.TABLE_REGIMES:
    config.crops_per_image = 4
  if regime == "hald":
    config.hald_eta = 2.0
  return config_schema.reset_unread(config)


def steady_rate(workdir: str, batch: int, compiling_steps: Sequence[int] = ()) -> float:
  """Examples/s of the loop over its logged intervals (metrics.jsonl), compilation excluded.

  The first logged step only starts the clock (`metrics_log.Progress`); every later training row
  carries the rate of the steps since the row before it. An interval holding one of
  `compiling_steps` (the first step of a later phase, whose step compiles then) is left out.
  """
  with open(os.path.join(workdir, metrics_log.METRICS_FILE)) as f:
    rows = [row for row in map(json.loads, f) if "loss" in row]
  steps, seconds, previous = 0, 0.0, rows[0]["step"] if rows else 0
  for row in rows[1:]:
    interval = row["step"] - previous
    if not any(previous < s <= row["step"] for s in compiling_steps):
      steps += interval
      seconds += interval * batch / row["examples_per_sec"]
    previous = row["step"]
  if not seconds:
    raise ValueError(f"{workdir}: fewer than two logged steps (raise --steps)")
  return steps * batch / seconds


def phase_starts(config: ml_collections.ConfigDict, pool_size: int) -> list[int]:
  """The (1-based) first step of each phase after the first: where a phase's step compiles."""
  budget = trainer.budget_from_config(config, pool_size)
  phases = trainer.step_phases(config, budget)
  seen, starts = {phases.of_step(0)}, []
  for index in range(1, budget.steps):
    phase = phases.of_step(index)
    if phase not in seen:
      seen.add(phase)
      starts.append(index + 1)
  return starts


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Trains the teacher once, then every regime's cell and its step alone."""
  root = args.workdir or tempfile.mkdtemp(prefix="benchmark_cell_")
  teacher_dir = os.path.join(root, "teacher")
  teacher = cell_config(args, "hl", "")
  teacher.budget_examples = args.batch * 20
  plan.train(teacher, teacher_dir)
  rows = []
  for regime in args.regimes:
    row = {"regime": regime}
    for backend in args.backends:
      config = cell_config(args, regime, teacher_dir, backend)
      workdir = os.path.join(root, f"{regime}-{backend}")
      if "step_examples_per_sec" not in row:  # the step alone is the same for either input
        with plan.prepared(config, workdir, "train") as (_, artefacts):
          frozen = None
          if artefacts.teacher is not None and regime != "hl":
            frozen = trainer.FrozenModel(artefacts.teacher.model, artefacts.teacher.variables)
          step = trainer.standalone_step_rate(config, artefacts.data, artefacts.mesh,
                                              teacher=frozen, table=artefacts.table,
                                              steps=args.timed_steps, repeats=args.repeats)
          pool_size = len(artefacts.data.pool_ids)
        row["step_examples_per_sec"] = step["examples_per_sec"]
        row["step_phases"] = {k: v for k, v in step.items() if k != "examples_per_sec"}
      out = plan.train(config, workdir)
      if out.results["crop_backend"] != backend:
        raise RuntimeError(f"{regime}: asked for crops on the {backend}, the run made them on "
                           f"the {out.results['crop_backend']}")
      cell = steady_rate(workdir, args.batch, phase_starts(config, pool_size))
      row[f"{backend}_examples_per_sec"] = cell
      row[f"{backend}_over_step"] = cell / row["step_examples_per_sec"]
      row[f"{backend}_test_top1"] = out.results["test_top1"]
    if {"host", "device"} <= set(args.backends):
      row["device_over_host"] = row["device_examples_per_sec"] / row["host_examples_per_sec"]
    rows.append(row)
  return {
      "benchmark": "cell",
      "environment": report.environment(),
      "settings": {
          k: getattr(args, k) for k in ("dataset", "images_per_class", "width", "batch", "steps",
                                       "timed_steps", "repeats", "backends")
      },
      "rows": rows
  }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="embedded_mnist")
  parser.add_argument("--images_per_class", type=int, default=400)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--batch", type=int, default=120)
  # 1,500 steps: at 500 a cell's rate moved by up to 20 % between runs on an idle 2-core machine
  # (HALD's phase starts, excluded with their compiles, leave few intervals in a short cell).
  parser.add_argument("--steps", type=int, default=1500, help="steps of each cell")
  parser.add_argument("--timed_steps", type=int, default=50, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
  parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                      help="where each cell's crops are made (config.crop_backend)")
  parser.add_argument("--workdir", default="", help="where the runs go ('' a temp dir)")
  parser.add_argument("--quick", action="store_true", help="batch 16, 20 steps, 2 × 2 timed")
  parser.add_argument("--out", default="benchmark_cell.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.images_per_class, args.batch, args.steps, args.timed_steps, args.repeats = 10, 16, 20, 2, 2
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the cells, prints the table, writes `--out`."""
  args = parse_args(argv)
  log_filters.install()  # as main.py: orbax's expected notices off the table's way
  report.warn_if_busy()
  payload = run(args)
  report.print_table(
      f"Cells of ConvNet-D3 (width {args.width}, batch {args.batch}) against their step alone",
      payload["rows"], COLUMNS)
  report.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
