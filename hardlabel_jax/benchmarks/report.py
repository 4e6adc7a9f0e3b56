"""Benchmark output: a readable table on stdout, and the same numbers as JSON with the machine."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from typing import Any, Callable, Sequence

import jax

from hardlabel_jax import metrics_log

# A column: (row key, header, formatter of the value).
Column = tuple[str, str, Callable[[Any], str]]


def fmt_number(value: Any) -> str:
  """Rates and sizes: thousands separators, one decimal below 100, '-' when absent."""
  if value is None:
    return "-"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return f"{value:,}"
  return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def fmt_ratio(value: Any) -> str:
  """Ratios such as JAX/PyTorch: two decimals and an ×."""
  return "-" if value is None else f"{value:.2f}×"


def fmt_seconds(value: Any) -> str:
  """Compile and wall times in seconds."""
  return "-" if value is None else f"{value:.2f} s"


def fmt_text(value: Any) -> str:
  return "-" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[Column]) -> str:
  """Right-aligned columns with a header rule (first column left-aligned)."""
  cells = [[header for _, header, _ in columns]]
  cells += [[fmt(row.get(key)) for key, _, fmt in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

  def render(line):
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(line, widths, strict=True)))

  rule = "  ".join("-" * w for w in widths)
  return "\n".join([render(cells[0]), rule] + [render(line) for line in cells[1:]])


def print_table(title: str, rows: Sequence[dict], columns: Sequence[Column]) -> None:
  """A titled table on stdout."""
  print(f"\n{title}\n{format_table(rows, columns)}", flush=True)


def median(values: Sequence[float]) -> float:
  """The median of repeats, robust to one slow repeat (another process, a GC pause)."""
  return float(statistics.median(values))


def cpu_cores() -> int:
  """CPU cores this process may run on (the affinity mask, not the machine's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity API
    return os.cpu_count() or 1


def environment() -> dict[str, Any]:
  """What the numbers were measured on, so JSON files from different machines can be compared."""
  devices = jax.local_devices()
  return {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "host": platform.node(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": len(devices),
      "device_kind": devices[0].device_kind,
      "cpu_cores": cpu_cores(),
      "load_average_1min": os.getloadavg()[0],
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def warn_if_busy() -> None:
  """Says so when other processes compete for the cores: every rate is then too low."""
  load, cores = os.getloadavg()[0], cpu_cores()
  if load > 0.5 * cores:
    print(
        f"warning: load average {load:.1f} on {cores} cores; other processes are running and "
        "the rates will be low and noisy (PyTorch's spinning OpenMP threads suffer most)",
        flush=True)


def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes the benchmark's numbers (atomically) and says where."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  metrics_log.write_json_atomic(path, payload)
  print(f"\nwrote {path}", flush=True)
