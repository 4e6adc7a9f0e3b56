"""A task at several data-set sizes, each in a fresh subprocess: images/s and peak memory.

A process's peak memory never goes down, so one process per size is the only way a size's peak
cannot include an earlier, larger one. The parent runs `python -m <benchmark> --child ...` once
per size; the child runs the task, measures itself and prints one JSON line for the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any, Callable, Sequence

from hardlabel_jax.benchmarks import report

# The embedded train split: 400 images of each of 10 classes.
EMBEDDED_IMAGES_PER_CLASS = 400
DEFAULT_FRACTIONS = (0.25, 0.5, 1.0)
QUICK_IMAGES_PER_CLASS = (4, 8, 16)
_RESULT_PREFIX = "BENCHMARK_RESULT "


def peak_rss_mb() -> float:
  """This process's peak resident memory so far, in MiB.

  Linux: VmHWM, the high-water mark of this process image. Not `ru_maxrss`: exec keeps the
  maximum of the memory it replaces, so a child's `ru_maxrss` starts at its parent's RSS.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # macOS: bytes


def share_compilations(cache_dir: str) -> None:
  """Quick runs only: later sizes reuse the first size's compiled steps from a disk cache.

  Not for full runs: a size that loads its steps skips the compiler's time and memory, so its
  wall time and peak would not be comparable with the first size's.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def quick_cache_dir(tmp: str) -> str:
  """The caller's persistent compilation cache (e.g. the test suite's), else one under `tmp`."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.config.jax_compilation_cache_dir or os.path.join(tmp, "jax_cache")


def baseline_rss_mb() -> float:
  """Peak memory before a task: imports done and the JAX runtime started (its devices exist)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  return peak_rss_mb()


def sizes(fractions: Sequence[float]) -> list[int]:
  """Images per class for fractions of the embedded train split (e.g. 1/4, 1/2, all)."""
  return [max(1, int(round(f * EMBEDDED_IMAGES_PER_CLASS))) for f in fractions]


def emit(result: dict[str, Any]) -> None:
  """A child's result, as the last line of its stdout."""
  print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(module: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
  """Runs `python -m module --child args` and returns the result it emitted."""
  command = [sys.executable, "-m", module, "--child", *args]
  done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ), check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
  if done.returncode != 0 or not lines:
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
    raise RuntimeError(f"benchmark child failed (exit {done.returncode}): {' '.join(command)}\n"
                       f"{tail}")
  return json.loads(lines[-1][len(_RESULT_PREFIX):])


def add_size_flags(parser: argparse.ArgumentParser, quick_help: str, out: str) -> None:
  """The flags every scaling benchmark has: sizes, timeout, quick, out, and the child's own."""
  parser.add_argument("--fractions", nargs="+", type=float, default=list(DEFAULT_FRACTIONS),
                      help="fractions of the embedded train split (400 images per class)")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per size")
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--out", default=out)
  # The subprocess of one size.
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--images_per_class", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  parser.add_argument("--compilation_cache_dir", default="", help=argparse.SUPPRESS)


def run_sizes(name: str, module: str, args: Any, tmp: str,
              child_args: Callable[[Any, int, str], list[str]]) -> list[dict[str, Any]]:
  """The task at every size (`--fractions`, or the quick sizes), each in a fresh child process."""
  per_class = list(QUICK_IMAGES_PER_CLASS) if args.quick else sizes(args.fractions)
  rows = []
  for images_per_class in per_class:
    print(f"{name}: {images_per_class} images per class in a fresh process …", flush=True)
    command = child_args(args, images_per_class, os.path.join(tmp, f"{name}_{images_per_class}"))
    if args.quick:
      command += ["--compilation_cache_dir", quick_cache_dir(tmp)]
    rows.append(run_child(module, command, args.timeout))
  return rows


def main(args: Any, child: Callable[[Any], dict[str, Any]], run: Callable[[Any], dict[str, Any]],
         title: str) -> dict[str, Any]:
  """A scaling benchmark's entry point: one size (`--child`), or all sizes, a table and `--out`."""
  if args.child:
    result = child(args)
    emit(result)
    return result
  report.warn_if_busy()
  payload = run(args)
  print_summary(title, payload["rows"], payload["summary"])
  report.write_json(args.out, payload)
  return payload


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """How much larger the largest size is than the smallest, in images and in peak memory."""
  smallest, largest = rows[0], rows[-1]
  return {
      "images_ratio": largest["images"] / smallest["images"],
      "peak_rss_ratio": largest["peak_rss_mb"] / smallest["peak_rss_mb"],
      "task_rss_growth_mb": [r["peak_rss_mb"] - r["baseline_rss_mb"] for r in rows]
  }


COLUMNS: Sequence[report.Column] = (
    ("images_per_class", "images/class", report.fmt_text),
    ("images", "images", report.fmt_number),
    ("items", "items", report.fmt_number),
    ("wall_seconds", "wall", report.fmt_seconds),
    ("images_per_sec", "images/s", report.fmt_number),
    ("steady_images_per_sec", "steady images/s", report.fmt_number),
    ("baseline_rss_mb", "RSS before (MB)", report.fmt_number),
    ("peak_rss_mb", "peak RSS (MB)", report.fmt_number),
)


def print_summary(title: str, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
  """The per-size table and the one line that says whether memory stayed flat."""
  report.print_table(title, rows, COLUMNS)
  print(
      f"largest / smallest: {summary['images_ratio']:.1f}× the images, "
      f"{summary['peak_rss_ratio']:.2f}× the peak memory", flush=True)
