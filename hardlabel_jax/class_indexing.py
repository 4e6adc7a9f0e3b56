"""Per-label indexing along the class axis, shared by the losses and the difficulty scores.

Both work on traced labels that cannot be range-checked, so an out-of-range label selects no class
(`one_hot_mask`) or gives NaN (`gather_class`) instead of a silently wrong finite value. Both are
elementwise masked operations rather than gathers: they stay local on arrays whose batch (example)
axis is sharded over a mesh, and their gradient is a select instead of a scatter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["gather_class", "one_hot_mask"]


def one_hot_mask(labels: jax.Array, num_classes: int) -> jax.Array:
  """Boolean `[..., C]`, True at each label (all False for an out-of-range label)."""
  return labels[..., None] == jnp.arange(num_classes)


def gather_class(x: jax.Array, labels: jax.Array) -> jax.Array:
  """`x[..., labels]` along the class (last) axis, NaN where a label is out of range."""
  num_classes = x.shape[-1]
  picked = jnp.sum(jnp.where(one_hot_mask(labels, num_classes), x, 0.0), axis=-1)
  return jnp.where((labels >= 0) & (labels < num_classes), picked, jnp.nan)
