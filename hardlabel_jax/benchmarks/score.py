"""Scoring-run throughput and peak memory at three data-set sizes (a fresh process per size).

  python -m hardlabel_jax.benchmarks.score          # 1/4, 1/2, all of the embedded train split
  python -m hardlabel_jax.benchmarks.score --quick  # seconds: 40, 80 and 160 images

Each size is a `task='score'` run (`plan.score`, as `main.py` calls it) in its own subprocess:
HL training of ConvNet-D3 on the pool for `score_epochs` epochs, the per-example statistics of
every pool image after each epoch, then `scores.npz`. Items are image-epochs (epochs × pool).
`images/s` is items over the whole run (start-up, compilation and the test evaluation included);
`steady images/s` is the trainer's own rate after its first step (training plus the per-epoch
statistics passes), from the run's metrics.jsonl. The statistics of each epoch go to disk, so
peak memory should not grow with the pool: the benchmark prints the peak per size and the ratio
largest / smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Sequence

import ml_collections

from hardlabel_jax import config_schema
from hardlabel_jax import plan
from hardlabel_jax.benchmarks import report
from hardlabel_jax.benchmarks import scaling

MODULE = "hardlabel_jax.benchmarks.score"
DATASET = "embedded_mnist"


def score_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The `task='score'` config of one size (crops and optimizer of configs/embedded_hl.py)."""
  config = config_schema.default_config()
  config.task, config.dataset, config.image_size = "score", DATASET, args.image_size
  config.images_per_class, config.score_epochs = args.images_per_class, args.score_epochs
  config.model, config.model_kwargs.width = "convnet_d3", args.width
  config.crop_scale, config.crop_ratio, config.random_flip = (0.75, 1.0), (0.8, 1.25), False
  config.global_batch_size, config.eval_batch_size = args.batch, args.eval_batch
  config.learning_rate = 0.05
  config.log_every_steps = args.log_every_steps
  # Only the final checkpoint: the benchmark is about scoring, not checkpoint I/O.
  config.checkpoint_every_steps, config.tensorboard = 10**9, False
  return config


def steady_rate(metrics_path: str, batch: int) -> float | None:
  """Examples/s after the first step, from the trainer's logged per-interval rates."""
  if not os.path.exists(metrics_path):
    return None
  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f]
  logged = [r for r in rows if "steps_per_sec" in r]
  if not logged:
    return None
  steps = [r for r in rows if "loss" in r]
  previous = {b["step"]: a["step"] for a, b in zip(steps, steps[1:], strict=False)}
  # Each logged rate covers the steps since the previous log line; weight by that span.
  spans = [(r["step"] - previous[r["step"]], r["steps_per_sec"]) for r in logged]
  seconds = sum(span / rate for span, rate in spans)
  return sum(span for span, _ in spans) * batch / seconds


def child(args: argparse.Namespace) -> dict[str, Any]:
  """One size, in this (fresh) process: the scoring run and its own peak memory."""
  if args.compilation_cache_dir:
    scaling.share_compilations(args.compilation_cache_dir)
  config = score_config(args)
  baseline = scaling.baseline_rss_mb()
  start = time.perf_counter()
  scores = plan.score(config, args.workdir)
  wall = time.perf_counter() - start
  images = len(next(iter(scores.values())))
  items = images * args.score_epochs
  return {
      "images_per_class": args.images_per_class,
      "images": images,
      "items": items,
      "epochs": args.score_epochs,
      "wall_seconds": wall,
      "images_per_sec": items / wall,
      "steady_images_per_sec": steady_rate(os.path.join(args.workdir, "metrics.jsonl"), args.batch),
      "scores": sorted(scores),
      "baseline_rss_mb": baseline,
      "peak_rss_mb": scaling.peak_rss_mb()
  }


def child_args(args: argparse.Namespace, images_per_class: int, workdir: str) -> list[str]:
  """The command line of one size's subprocess."""
  return [
      "--images_per_class",
      str(images_per_class), "--workdir", workdir, "--score_epochs",
      str(args.score_epochs), "--width",
      str(args.width), "--batch",
      str(args.batch), "--eval_batch",
      str(args.eval_batch), "--image_size",
      str(args.image_size), "--log_every_steps",
      str(args.log_every_steps)
  ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog=f"python -m {MODULE}",
      description="Images/s and peak memory of task='score' at three data-set sizes.")
  scaling.add_size_flags(parser, "seconds-long smoke run: 4, 8, 16 images per class, 1 epoch",
                         "./benchmark_score.json")
  parser.add_argument("--score_epochs", type=int, default=2, help="K, epochs of the scoring run")
  parser.add_argument("--width", type=int, default=128, help="ConvNet-D3 width")
  parser.add_argument("--batch", type=int, default=64, help="global training batch")
  parser.add_argument("--eval_batch", type=int, default=256,
                      help="batch of the per-epoch statistics and the test evaluation")
  parser.add_argument("--image_size", type=int, default=28)
  parser.add_argument("--log_every_steps", type=int, default=10)
  args = parser.parse_args(argv)
  if args.quick and not args.child:
    args.score_epochs, args.width, args.batch, args.eval_batch = 1, 8, 16, 200
    args.log_every_steps = 2
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  """One subprocess per size; the JSON payload."""
  with tempfile.TemporaryDirectory(prefix="hardlabel_bench_score_") as tmp:
    rows = scaling.run_sizes("score", MODULE, args, tmp, child_args)
  return {
      "benchmark": "score",
      "environment": report.environment(),
      "settings": {
          "dataset": DATASET,
          "score_epochs": args.score_epochs,
          "model": f"convnet_d3 width {args.width}",
          "batch": args.batch,
          "eval_batch": args.eval_batch,
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
      args, child, run, f"task='score' on {DATASET}: {args.score_epochs} epoch(s) of ConvNet-D3 "
      "(items = image-epochs)")


if __name__ == "__main__":
  main()
