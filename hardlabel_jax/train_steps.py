"""Jitted, sharded train and eval steps: hard labels (HL) and online-teacher KD (DESIGN §3, §6)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from hardlabel_jax import difficulty
from hardlabel_jax import losses
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax.data import batch_cutmix
from hardlabel_jax.train_state import TrainState

# The metrics key of a step's per-example outputs (`[batch]` arrays, not scalars to log).
PER_EXAMPLE = "per_example"
# The random stream of on-device augmentation, apart from dropout's: fold_in(step key, stream).
_AUGMENT_STREAM = 1
_CUTMIX_STREAM = 2  # the batch CutMix of HALD's hard phase (data.batch_cutmix)
# An on-device augmentation `(images, key) -> images` (data.dsa.augment with its strategy bound).
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def augmented(batch: dict[str, jax.Array], augment: Augment | None, base_rng: jax.Array,
              step: jax.Array) -> dict[str, jax.Array]:
  """The batch with its images augmented on the device, keyed by (seed, step) only.

  Per-image parameters are `[batch]` draws from that key, so an image's augmentation depends on
  its position in the global batch, never on the mesh; a resumed run replays the same step keys.
  """
  if augment is None:
    return batch
  key = jax.random.fold_in(jax.random.fold_in(base_rng, step), _AUGMENT_STREAM)
  return {**batch, "image": augment(batch["image"], key)}


def hard_label_targets(batch: dict[str, jax.Array], num_classes: int,
                       smoothing: float) -> jax.Array:
  """Smoothed one-hot targets, mixed by CutMix's λ with the partner's: `[batch, classes]`."""
  own = losses.label_smoothing_targets(batch["label"], num_classes, smoothing)
  partner = losses.label_smoothing_targets(batch["partner_label"], num_classes, smoothing)
  lam = batch["mix_lambda"][:, None]
  return lam * own + (1.0 - lam) * partner


def _apply_train(model: nn.Module, state: TrainState, params: Any, images: jax.Array,
                 rng: jax.Array) -> tuple[jax.Array, Any]:
  """Forward in train mode; returns logits and the updated BatchNorm statistics."""
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": rng})
    return logits, updates["batch_stats"]
  return model.apply(variables, images, train=True, rngs={"dropout": rng}), state.batch_stats


def _update(state: TrainState, batch: dict[str, jax.Array],
            loss_of_logits: Callable[[jax.Array], jax.Array], *, model: nn.Module,
            tx: optax.GradientTransformation, schedule: optax.Schedule, base_rng: jax.Array,
            per_example: Callable[[jax.Array], dict] | None = None) -> tuple[TrainState, dict]:
  """Forward, backward and optimizer update shared by every regime's step.

  `per_example(logits)`, when given, adds per-example outputs of the training forward pass to the
  metrics under `PER_EXAMPLE`.
  """
  rng = jax.random.fold_in(base_rng, state.step)

  def loss_fn(params):
    logits, batch_stats = _apply_train(model, state, params, batch["image"], rng)
    return loss_of_logits(logits), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
      "learning_rate": schedule(state.step),
  }
  if per_example is not None:
    metrics[PER_EXAMPLE] = per_example(jax.lax.stop_gradient(logits))
  return new_state, metrics


def batch_cutmixed(batch: dict[str, jax.Array], alpha: float, num_classes: int, smoothing: float,
                   base_rng: jax.Array, step: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
  """The batch CutMixed with itself reversed (one λ, keyed by seed and step) and its targets."""
  key = jax.random.fold_in(jax.random.fold_in(base_rng, step), _CUTMIX_STREAM)
  images, lam = batch_cutmix.mix_batch(batch["image"], key, alpha)
  own = losses.label_smoothing_targets(batch["label"], num_classes, smoothing)
  return {**batch, "image": images}, batch_cutmix.mixed_targets(own, lam)


def hl_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
                  tx: optax.GradientTransformation, schedule: optax.Schedule, num_classes: int,
                  label_smoothing: float, base_rng: jax.Array, record_margins: bool = False,
                  augment: Augment | None = None,
                  batch_cutmix_alpha: float = 0.0) -> tuple[TrainState, dict]:
  """One step on smoothed, CutMix-mixed one-hot targets with soft cross-entropy.

  `record_margins` adds `{id, margin}` per example under `PER_EXAMPLE`: the probability margin
  p_y − max_{i≠y} p_i of the train-mode forward pass the gradient comes from (a scoring run's AUM).
  `augment` (DSA) transforms the images on the device first. `batch_cutmix_alpha` > 0 CutMixes
  the batch with itself reversed on the device (HALD's hard phase, timm `Mixup(mode='batch')`)
  instead of using the pipeline's per-example partners.
  """
  batch = augmented(batch, augment, base_rng, state.step)
  if batch_cutmix_alpha > 0:
    batch, targets = batch_cutmixed(batch, batch_cutmix_alpha, num_classes, label_smoothing,
                                    base_rng, state.step)
  else:
    targets = hard_label_targets(batch, num_classes, label_smoothing)
  per_example = None
  if record_margins:
    per_example = lambda logits: {
        "id": batch["id"],
        "margin": difficulty.probability_margin(logits, batch["label"])
    }
  return _update(state, batch, lambda logits: losses.soft_cross_entropy(logits, targets),
                 model=model, tx=tx, schedule=schedule, base_rng=base_rng, per_example=per_example)


def sl_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
                  tx: optax.GradientTransformation, schedule: optax.Schedule, temperature: float,
                  base_rng: jax.Array, soft_weight: float = 1.0) -> tuple[TrainState, dict]:
  """One step on stored soft labels: `w · KL(q_table ‖ softmax(z/T))`; w = 1: DD convention."""
  return _update(
      state, batch,
      lambda logits: soft_weight * losses.kl_soft_loss(logits, batch["soft_label"], temperature),
      model=model, tx=tx, schedule=schedule, base_rng=base_rng)


def hybrid_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
                      tx: optax.GradientTransformation, schedule: optax.Schedule, num_classes: int,
                      label_smoothing: float, temperature: float, hard_weight: float,
                      base_rng: jax.Array, soft_weight: float = 1.0) -> tuple[TrainState, dict]:
  """HALD's per-step ablation on a stored crop: `λ·CE_hard + (1−λ)·w·KL_soft`."""
  targets = hard_label_targets(batch, num_classes, label_smoothing)

  def loss_of_logits(logits):
    hard = losses.soft_cross_entropy(logits, targets)
    soft = soft_weight * losses.kl_soft_loss(logits, batch["soft_label"], temperature)
    return hard_weight * hard + (1.0 - hard_weight) * soft

  return _update(state, batch, loss_of_logits, model=model, tx=tx, schedule=schedule,
                 base_rng=base_rng)


def kd_train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables: Any, *,
                  model: nn.Module, teacher_model: nn.Module, tx: optax.GradientTransformation,
                  schedule: optax.Schedule, distillation_loss: Callable, warmup_epochs: float,
                  steps_per_epoch: float, base_rng: jax.Array,
                  augment: Augment | None = None) -> tuple[TrainState, dict]:
  """One step against a teacher queried online on the same crops (eval-mode BatchNorm).

  With `augment` (DSA) the teacher labels the augmented view the student trains on.
  """
  batch = augmented(batch, augment, base_rng, state.step)
  teacher_logits = jax.lax.stop_gradient(
      teacher_model.apply(teacher_variables, batch["image"], train=False))
  extra = {}
  if warmup_epochs > 0:
    # DKD/RLD ramp the distillation terms in over 1-based epochs, as mdistiller counts them.
    epoch = jnp.floor(state.step / steps_per_epoch) + 1.0
    extra["warmup_factor"] = losses.warmup_factor(epoch, warmup_epochs)
  new_state, metrics = _update(
      state, batch,
      lambda logits: distillation_loss(logits, teacher_logits, batch["label"], **extra),
      model=model, tx=tx, schedule=schedule, base_rng=base_rng)
  metrics["teacher_accuracy"] = jnp.mean(jnp.argmax(teacher_logits, -1) == batch["label"])
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: nn.Module) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the valid (mask=1) rows of a batch."""
  logits = model.apply(state.variables(), batch["image"], train=False)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  mask = batch["mask"]
  return {
      "loss_sum": jnp.sum(nll * mask),
      "correct": jnp.sum(correct * mask),
      "count": jnp.sum(mask)
  }


def jit_train_step(step_fn: Callable, mesh: Mesh, num_replicated_args: int = 0,
                   **static) -> Callable:
  """Compiles a step: state (and e.g. teacher variables) replicated, batch split over `data`."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(
      functools.partial(step_fn, **static),
      in_shardings=(replicated, mesh_lib.batch_sharded(mesh)) + (replicated,) * num_replicated_args,
      out_shardings=(replicated, replicated), donate_argnums=(0,))


def jit_eval_step(mesh: Mesh, model: nn.Module) -> Callable:
  """Compiles the eval step over the mesh."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(functools.partial(eval_step, model=model),
                 in_shardings=(replicated, mesh_lib.batch_sharded(mesh)), out_shardings=replicated)
