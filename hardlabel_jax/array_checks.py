"""Trace-time helpers shared by the pure array libraries (losses, difficulty scores)."""

from __future__ import annotations

from typing import Any

import jax
from jax.typing import ArrayLike
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds host-readable values (not a tracer, not a non-addressable global array)."""
  if isinstance(x, jax.core.Tracer):
    return False
  # Multi-host global arrays cannot be read back on one host; skip the check rather than fail.
  return bool(getattr(x, "is_fully_addressable", True))


def as_array(x: ArrayLike) -> Any:
  """`x` itself when it already has a shape and dtype, else a NumPy array (no device work)."""
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
