"""Grain pipeline throughput: fresh crops and SL replay, against what the train step consumes.

  python -m hardlabel_jax.benchmarks.pipeline                  # full: all 4,000 train images
  python -m hardlabel_jax.benchmarks.pipeline --image_size 64  # larger crops, same images
  python -m hardlabel_jax.benchmarks.pipeline --quick          # seconds

Two training streams over the embedded MNIST train split, each built by
`trainer.training_examples` (for an HL and an SL run of the benchmark's config) and read through
`pipeline.position_stream`, exactly as training reads them, with 0, 1 and 2 Grain workers:
`fresh` (the HL run's fresh crops: decode, RandomResizedCrop, flip, normalise) and `sl_replay`
(the SL run's replay: rebuild the stored crop, check it against the table, attach its soft label)
on a table written for the benchmark into a temporary directory by `relabel.write_table` with a
tiny random-init teacher. The HL step's examples/s at the same batch (the library's jitted step,
measured in the same run) is the consumption rate: a pipeline slower than it is the bottleneck of
training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import relabel
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax import trainer
from hardlabel_jax.benchmarks import report
from hardlabel_jax.benchmarks import train_step
from hardlabel_jax.data import pipeline
from hardlabel_jax.soft_labels import table as table_lib

DATASET = "embedded_mnist"
KINDS = ("fresh", "sl_replay")
# The regime of the training run whose examples each stream is.
STREAM_REGIMES = {"fresh": "hl", "sl_replay": "sl"}
TEACHER_WIDTH = 8  # the table's labels are not the point, only its reading cost


def benchmark_config(args: argparse.Namespace, table_dir: str,
                     eval_batch: int) -> ml_collections.ConfigDict:
  """A trainer config naming the benchmark's data, crops and table."""
  config = config_schema.default_config()
  config.dataset = DATASET
  config.image_size = args.image_size
  config.images_per_class = args.images_per_class
  config.crops_per_image = args.crops_per_image
  config.cutmix_alpha = args.cutmix_alpha
  config.label_table_dir = table_dir
  config.eval_batch_size = eval_batch
  config.num_workers = 0
  config.global_batch_size = args.batch
  # The run's budget is what one stream reads: the warm-up batches and every timed repeat.
  config.budget_examples = (args.warmup + args.repeats * args.steps) * args.batch
  return config


def random_teacher(data: run_data.RunData, image_size: int, mesh: jax.sharding.Mesh,
                   workdir: str) -> teacher_lib.Teacher:
  """A random-init narrow ConvNet as a `Teacher` (no training run needed to write a table)."""
  info = data.train.info
  model = models.create_model("convnet_d3", info.num_classes, width=TEACHER_WIDTH)
  shape = (1, image_size, image_size, info.image_shape[-1])
  variables = jax.jit(lambda rng: model.init(rng, np.zeros(shape, np.float32), train=False),
                      out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  return teacher_lib.Teacher(model, variables, workdir, results={},
                             fingerprint=f"random-init-convnet_d3-w{TEACHER_WIDTH}")


def streams(config: ml_collections.ConfigDict, data: run_data.RunData,
            table: table_lib.SoftLabelTable) -> dict[str, Callable[[int], dict]]:
  """Global stream position → training example, as the trainer builds it for each kind's run."""
  examples = {}
  for kind in KINDS:
    run_config = config.copy_and_resolve_references()
    run_config.regime = STREAM_REGIMES[kind]
    budget = trainer.budget_from_config(run_config, len(data.pool_ids))
    examples[kind] = trainer.training_examples(run_config, data,
                                               table if run_config.regime == "sl" else None,
                                               trainer.step_phases(run_config, budget))
  return examples


def measure_stream(example_at: Callable[[int], dict], *, batch: int, num_workers: int, steps: int,
                   repeats: int, warmup: int) -> dict[str, Any]:
  """Median crops/s over `repeats` runs of `steps` batches, after `warmup` batches.

  Grain reads ahead (the library's default read threads and buffer, also with 0 workers), so
  the first repeat may start on a stock made during the warm-up; the median of several long
  repeats is not affected.
  """
  iterator = pipeline.position_stream(example_at, global_batch=batch,
                                      num_steps=warmup + repeats * steps,
                                      loading=pipeline.LoaderOptions(num_workers=num_workers))
  try:
    start = time.perf_counter()
    for _ in range(warmup):  # worker start-up and the first prefetch are not throughput
      next(iterator)
    startup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(steps):
        next(iterator)
      rates.append(steps * batch / (time.perf_counter() - start))
  finally:
    iterator.close()  # stops the worker processes before the next configuration starts
  return {"crops_per_sec": report.median(rates), "repeat_rates": rates, "startup_seconds": startup}


COLUMNS: Sequence[report.Column] = (
    ("stream", "stream", report.fmt_text),
    ("num_workers", "workers", report.fmt_text),
    ("crops_per_sec", "crops/s", report.fmt_number),
    ("step_examples_per_sec", "HL step ex/s", report.fmt_number),
    ("pipeline_over_step", "pipeline/step", report.fmt_ratio),
    ("bottleneck", "bottleneck", report.fmt_text),
    ("startup_seconds", "start-up", report.fmt_seconds),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m hardlabel_jax.benchmarks.pipeline",
      description="Crops/s of the Grain training pipeline vs the HL step's examples/s.")
  parser.add_argument("--image_size", type=int, default=28, help="crop output size in pixels")
  parser.add_argument("--batch", type=int, default=128, help="global batch size")
  parser.add_argument("--num_workers", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--images_per_class", type=int, default=0,
                      help="pool size per class (0: the whole train split, 400 per class)")
  parser.add_argument("--crops_per_image", type=int, default=4, help="stored slots per image")
  parser.add_argument("--cutmix_alpha", type=float, default=0.0)
  parser.add_argument("--model", default="convnet_d3", choices=models.MODEL_NAMES,
                      help="the model whose HL step is the consumption rate")
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--steps", type=int, default=50, help="batches per timed repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train_steps", type=int, default=10,
                      help="HL train steps per timed repeat (the consumption rate)")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed batches first (worker start-up, reported separately)")
  parser.add_argument("--quick", action="store_true",
                      help="seconds-long smoke run: 100 images, batch 16, workers 0 and 1")
  parser.add_argument("--out", default="./benchmark_pipeline.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.images_per_class, args.crops_per_image, args.width = 16, 10, 2, 16
    # Enough batches that Grain's read-ahead buffer (500 crops) cannot hide the production rate.
    args.steps, args.repeats, args.warmup, args.num_workers = 20, 3, 1, [0, 1]
    args.train_steps = 2
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Writes the table, times every (stream, workers) pair and the HL step; the JSON payload."""
  mesh = mesh_lib.data_mesh(jax.local_devices())
  mesh_lib.check_divisible(args.batch, mesh)
  with tempfile.TemporaryDirectory(prefix="hardlabel_bench_pipeline_") as tmp:
    config = benchmark_config(args, f"{tmp}/table", eval_batch=args.batch)
    data = run_data.load_run_data(config)
    info = data.train.info
    start = time.perf_counter()
    table = relabel.write_table(config, config.label_table_dir, data,
                                random_teacher(data, args.image_size, mesh, tmp), mesh)
    relabel_seconds = time.perf_counter() - start

    jax_model = train_step.JaxModel(args.model, args.width, mesh, image_size=args.image_size,
                                    channels=info.image_shape[-1], num_classes=info.num_classes)
    step = train_step.measure_jax(jax_model.step("hl", args.batch), args.batch,
                                  steps=args.train_steps, repeats=args.repeats, warmup=1)
    step_rate = step["examples_per_sec"]
    print(
        f"HL step of {args.model} (width {args.width}) at batch {args.batch}: "
        f"{report.fmt_number(step_rate)} ex/s", flush=True)

    rows = []
    for kind, example_at in streams(config, data, table).items():
      for workers in args.num_workers:
        result = measure_stream(example_at, batch=args.batch, num_workers=workers, steps=args.steps,
                                repeats=args.repeats, warmup=args.warmup)
        rate = result["crops_per_sec"]
        rows.append({
            "stream": kind,
            "num_workers": workers,
            "crops_per_sec": rate,
            "repeat_rates": result["repeat_rates"],
            "startup_seconds": result["startup_seconds"],
            "step_examples_per_sec": step_rate,
            "pipeline_over_step": rate / step_rate,
            "bottleneck": "yes" if rate < step_rate else "no"
        })
        print(f"{kind} with {workers} worker(s): {report.fmt_number(rate)} crops/s", flush=True)
  return {
      "benchmark": "pipeline",
      "environment": report.environment(),
      "settings": {
          "dataset": DATASET,
          "pool_size": int(len(data.pool_ids)),
          "image_size": args.image_size,
          "batch": args.batch,
          "crops_per_image": args.crops_per_image,
          "cutmix_alpha": args.cutmix_alpha,
          "model": args.model,
          "width": args.width,
          "steps": args.steps,
          "train_steps": args.train_steps,
          "repeats": args.repeats,
          "warmup": args.warmup,
          "quick": args.quick,
          "mesh_devices": mesh.size
      },
      "table": {
          "rows": table.num_rows,
          "bytes": table.table_bytes,
          "relabel_seconds": relabel_seconds
      },
      "hl_step": {
          "examples_per_sec": step_rate,
          "compile_seconds": step["compile_seconds"],
          "repeat_rates": step["repeat_rates"]
      },
      "rows": rows
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the table, writes `--out`; returns the payload."""
  args = parse_args(argv)
  report.warn_if_busy()
  payload = run(args)
  settings = payload["settings"]
  report.print_table(
      f"Grain pipeline on {DATASET} ({settings['pool_size']} images, {args.image_size}px crops, "
      f"batch {args.batch}) vs the HL step of {args.model}", payload["rows"], COLUMNS)
  bottlenecks = [r for r in payload["rows"] if r["bottleneck"] == "yes"]
  if bottlenecks:
    names = ", ".join(f"{r['stream']}/{r['num_workers']}w" for r in bottlenecks)
    print(f"the pipeline is the bottleneck for: {names} (the step would wait for data)")
  else:
    print("the pipeline is not the bottleneck: every configuration outpaces the step")
  print("(0 workers: Grain's read threads make the crops inside the training process, sharing "
        "its cores and GIL with the step; N workers: N separate processes)")
  report.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
