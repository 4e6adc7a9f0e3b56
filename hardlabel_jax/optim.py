"""Optimizers and learning-rate schedules, all per step, all configurable by name."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from hardlabel_jax import hald_hyper


def hald_schedule(base_lr: float, steps_per_epoch: float, total_epochs: float,
                  eta: float) -> optax.Schedule:
  """HALD's `lr · 0.5 (1 + cos(π e / (E η)))`, e the integer epoch (stepped per epoch)."""

  def schedule(step):
    epoch = jnp.floor(step / steps_per_epoch)
    return base_lr * 0.5 * (1.0 + jnp.cos(math.pi * epoch / (total_epochs * eta)))

  return schedule


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: float) -> optax.Schedule:
  """The schedule named by `config.schedule`, with optional linear warmup."""
  lr = config.learning_rate
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  main_steps = max(total_steps - warmup, 1)
  if config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, main_steps)
  elif config.schedule == "step":
    boundaries = {int(m * main_steps): config.step_gamma for m in config.step_milestones}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif config.schedule == "hald":
    main = hald_schedule(lr, steps_per_epoch, total_steps / steps_per_epoch,
                         hald_hyper.resolved_eta(config))
  elif config.schedule == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"config.schedule: unknown schedule {config.schedule!r}")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params):
  """Weight decay on kernels only: no decay on biases or norm scales/offsets (ndim <= 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum (coupled L2 decay, as PyTorch) or AdamW (decoupled decay)."""
  if config.optimizer == "sgd":
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  if config.optimizer == "adamw":
    return optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                       weight_decay=config.weight_decay, mask=decay_mask)
  raise ValueError(f"config.optimizer: unknown optimizer {config.optimizer!r}")
