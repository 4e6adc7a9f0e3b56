"""Human-readable metrics: JSON lines, a TensorBoard event log, and progress lines with ETA."""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any, Mapping, Sequence

from hardlabel_jax import disk_space
from hardlabel_jax import faults

# A run's metrics, one JSON row per log point (and the test metrics last).
METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """Appends `{'step': s, **metrics}` to metrics.jsonl and (optionally) TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
    self._enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key != "step":
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
  """Writes readable JSON via a temp file and rename, so a reader never sees half a file."""
  tmp = path + ".tmp"
  with disk_space.removed_on_failure(tmp):
    with open(tmp, "w") as f:
      json.dump(payload, f, indent=1, sort_keys=True)
    faults.point("json_write")
  os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` (a report's Markdown) via a temp file and rename."""
  tmp = path + ".tmp"
  with disk_space.removed_on_failure(tmp), open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_csv_atomic(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
  """Writes `rows` as CSV with exactly `columns`, via a temp file and rename."""
  tmp = path + ".tmp"
  with disk_space.removed_on_failure(tmp), open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


def format_seconds(seconds: float) -> str:
  """12345 -> '3h25m45s'."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
  """Steps/s, examples/s and ETA over the steps done in this process (excludes compile)."""

  def __init__(self, total_steps: int, global_batch: int, first_step: int):
    self._total = total_steps
    self._batch = global_batch
    self._mark_step = first_step
    self._mark_time = None

  def update(self, step: int) -> dict[str, float]:
    """Rates since the last call; the first call only starts the clock (compilation)."""
    now = time.perf_counter()
    if self._mark_time is None:
      self._mark_step, self._mark_time = step, now
      return {}
    steps_per_sec = (step - self._mark_step) / max(now - self._mark_time, 1e-9)
    self._mark_step, self._mark_time = step, now
    eta = (self._total - step) / max(steps_per_sec, 1e-9)
    return {
        "steps_per_sec": steps_per_sec,
        "examples_per_sec": steps_per_sec * self._batch,
        "eta_seconds": eta
    }

  def line(self, step: int, metrics: Mapping[str, float], rates: Mapping[str, float]) -> str:
    parts = [f"step {step}/{self._total}"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
    if rates:
      parts.append(f"{rates['examples_per_sec']:.0f} ex/s")
      parts.append(f"ETA {format_seconds(rates['eta_seconds'])}")
    return " | ".join(parts)


def log_line(message: str) -> None:
  """Progress goes to stdout, where a person watching the run sees it."""
  print(message, flush=True)
