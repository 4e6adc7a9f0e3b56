"""HALD's batch-specific soft labelling (BSSL): the teacher normalises with each relabel batch's
own BatchNorm statistics, and a relabel batch is what the official relabel loader makes of it.

Official (`Jiacheng8/HALD` `relabel/relabel_slc.py`): the teacher is put in `model.train()` for
every image mode but RDED's (`args.eval_mode = 'F'`), and labels are computed under
`torch.no_grad()` on batches of `-b 16` (`relabel/scripts/imagenet1k/demo.sh`) from a loader whose
sampler replays, for relabel epoch e, `torch.randperm(dataset_len)` seeded with `fkd_seed + e`
(`drop_last=False`: the last batch of an epoch is short). A BSSL label thus depends on the 15
other crops of its batch, and those are drawn from the whole set.

Here relabel epoch e is table slot e; its batches are `data.relabel_batches.group_rows`: the pool
positions in a permutation keyed by (crop_seed, slot), cut into groups of `relabel_batch_size`
(the last one short), the same batches a 'relabel_batch' table CutMixes within. Many groups run in
one jitted call: every BatchNorm layer is replaced, through `nn.intercept_methods`, by one that
normalises each group with the mean and biased variance of that group's real rows (padding rows
carry mask 0 and never enter a statistic), then applies the layer's own scale and bias, as
PyTorch's and flax's train-mode BatchNorm do. Running statistics are neither used nor updated.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _grouped_batch_norm(module: nn.BatchNorm, x: jax.Array, mask: jax.Array,
                        group_size: int) -> jax.Array:
  """`module` applied in train mode to every group of `group_size` rows of `x` on its own."""
  dtype = x.dtype
  grouped = x.astype(jnp.float32).reshape((-1, group_size) + x.shape[1:])
  weights = mask.astype(jnp.float32).reshape((-1, group_size) + (1,) * (x.ndim - 1))
  axes = tuple(range(1, grouped.ndim - 1))  # within a group: rows and spatial positions
  count = jnp.sum(weights, axis=axes, keepdims=True) * np.prod(x.shape[1:-1])
  count = jnp.maximum(count, 1.0)  # an all-padding group (never read) stays finite
  mean = jnp.sum(grouped * weights, axis=axes, keepdims=True) / count
  var = jnp.sum(jnp.square(grouped - mean) * weights, axis=axes, keepdims=True) / count
  y = (grouped - mean) * jax.lax.rsqrt(var + module.epsilon)
  params = module.variables.get("params", {})
  if module.use_scale:
    y = y * params["scale"]
  if module.use_bias:
    y = y + params["bias"]
  return y.reshape(x.shape).astype(dtype)


def grouped_logits(model: nn.Module, variables: Any, images: jax.Array, mask: jax.Array,
                   group_size: int) -> jax.Array:
  """The teacher's logits with every BatchNorm normalising each relabel batch by its own rows."""

  def per_group(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      return _grouped_batch_norm(context.module, args[0], mask, group_size)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(per_group):
    return model.apply(variables, images, train=False)
