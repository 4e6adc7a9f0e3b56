"""Relabel throughput and peak memory at three data-set sizes (a fresh process per size).

  python -m hardlabel_jax.benchmarks.relabel          # 1/4, 1/2, all of the embedded train split
  python -m hardlabel_jax.benchmarks.relabel --quick  # seconds: 40, 80 and 160 images

Each size is a `task='relabel'` run (`plan.relabel_table`, as `main.py` calls it) in its own
subprocess, writing a table of `crops_per_image` crops per image with a ConvNet-D3 teacher. The
teacher is a one-step HL run trained once up front (its labels are not the point, its forward
cost is). Tables are written shard by shard with a fixed number of images per shard, so peak
memory should not grow with the data set: the benchmark prints the peak per size and the ratio
largest / smallest. `steady images/s` is measured between the first and the last shard, without
start-up and compilation.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Sequence

import ml_collections

from hardlabel_jax import config_schema
from hardlabel_jax import plan
from hardlabel_jax.benchmarks import report
from hardlabel_jax.benchmarks import scaling

MODULE = "hardlabel_jax.benchmarks.relabel"
DATASET = "embedded_mnist"


def teacher_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """A one-step HL run of ConvNet-D3 on the embedded data: a teacher with real checkpoints."""
  config = config_schema.default_config()
  config.dataset, config.image_size = DATASET, args.image_size
  config.model, config.model_kwargs.width = "convnet_d3", args.teacher_width
  config.images_per_class, config.global_batch_size = 10, 32
  config.budget_examples, config.eval_batch_size = 32, 256
  config.tensorboard, config.checkpoint_every_steps = False, 1
  return config


def train_teacher(args: argparse.Namespace, workdir: str) -> str:
  """Trains the teacher into `workdir` (seconds) and returns it."""
  plan.train(teacher_config(args), workdir)
  return workdir


def relabel_config(args: argparse.Namespace, workdir: str) -> ml_collections.ConfigDict:
  """The `task='relabel'` config of one size."""
  config = config_schema.default_config()
  config.task, config.dataset, config.image_size = "relabel", DATASET, args.image_size
  config.images_per_class = args.images_per_class
  config.teacher_workdir, config.cache_dir = args.teacher_workdir, workdir
  config.crops_per_image, config.label_format = args.crops_per_image, args.label_format
  config.table_positions_per_shard = args.positions_per_shard
  config.eval_batch_size, config.num_workers = args.batch, 0
  return config


def child(args: argparse.Namespace) -> dict[str, Any]:
  """One size, in this (fresh) process: the relabel run and its own peak memory."""
  if args.compilation_cache_dir:
    scaling.share_compilations(args.compilation_cache_dir)
  config = relabel_config(args, args.workdir)
  baseline = scaling.baseline_rss_mb()
  shard_done = []
  start = time.perf_counter()
  table = plan.relabel_table(config, args.workdir,
                             shard_hook=lambda shard: shard_done.append(time.perf_counter()))
  wall = time.perf_counter() - start
  images = len(table.spec.ids)
  steady = None
  if len(shard_done) >= 2:
    # Images relabelled after the first shard (the last shard may be partial).
    images_after_first = images - args.positions_per_shard
    steady = images_after_first / (shard_done[-1] - shard_done[0])
  return {
      "images_per_class": args.images_per_class,
      "images": images,
      "items": table.num_rows,
      "wall_seconds": wall,
      "images_per_sec": images / wall,
      "steady_images_per_sec": steady,
      "crops_per_sec": table.num_rows / wall,
      "shards": len(shard_done),
      "table_bytes": table.table_bytes,
      "baseline_rss_mb": baseline,
      "peak_rss_mb": scaling.peak_rss_mb()
  }


def child_args(args: argparse.Namespace, images_per_class: int, workdir: str) -> list[str]:
  """The command line of one size's subprocess."""
  return [
      "--images_per_class",
      str(images_per_class), "--workdir", workdir, "--teacher_workdir", args.teacher_workdir,
      "--image_size",
      str(args.image_size), "--crops_per_image",
      str(args.crops_per_image), "--label_format", args.label_format, "--positions_per_shard",
      str(args.positions_per_shard), "--batch",
      str(args.batch)
  ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog=f"python -m {MODULE}",
      description="Images/s and peak memory of task='relabel' at three data-set sizes.")
  scaling.add_size_flags(parser, "seconds-long smoke run: 4, 8, 16 images per class, 1 crop",
                         "./benchmark_relabel.json")
  parser.add_argument("--crops_per_image", type=int, default=4)
  parser.add_argument("--label_format", default="full", choices=config_schema.LABEL_FORMATS)
  parser.add_argument("--positions_per_shard", type=int, default=100,
                      help="images per table shard: the unit that bounds relabel's memory")
  parser.add_argument("--batch", type=int, default=256, help="relabel batch (eval_batch_size)")
  parser.add_argument("--teacher_width", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=28)
  parser.add_argument("--teacher_workdir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick and not args.child:
    args.crops_per_image, args.positions_per_shard, args.batch = 1, 16, 16
    args.teacher_width = 8
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  """The teacher, then one subprocess per size; the JSON payload."""
  with tempfile.TemporaryDirectory(prefix="hardlabel_bench_relabel_") as tmp:
    args.teacher_workdir = train_teacher(args, os.path.join(tmp, "teacher"))
    rows = scaling.run_sizes("relabel", MODULE, args, tmp, child_args)
  return {
      "benchmark": "relabel",
      "environment": report.environment(),
      "settings": {
          "dataset": DATASET,
          "crops_per_image": args.crops_per_image,
          "label_format": args.label_format,
          "positions_per_shard": args.positions_per_shard,
          "batch": args.batch,
          "teacher": f"convnet_d3 width {args.teacher_width}",
          "image_size": args.image_size,
          "quick": args.quick,
          # Quick runs share compiled steps between sizes: not comparable walls.
          "shared_compilation_cache": args.quick
      },
      "rows": rows,
      "summary": scaling.summarize(rows)
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark (or, with --child, one size), prints the table, writes `--out`."""
  args = parse_args(argv)
  return scaling.main(
      args, child, run, f"task='relabel' on {DATASET}: {args.crops_per_image} crop(s) per image, "
      f"{args.positions_per_shard} images per shard (items = crops)")


if __name__ == "__main__":
  main()
