"""Classification and distillation losses: CE, soft-label KL, KD, DKD, RLD, NKD (DESIGN.md §6).

Conventions (DESIGN §6): z are logits `[batch, classes]`, p = softmax,
KL(q‖p) = Σ q (log q − log p), and every loss returns a float32 scalar batch mean. Everything is
computed in log space and masks use a large finite negative (never −inf), so values and gradients
stay finite for logits of magnitude 1e4 and for a confidently wrong teacher. The functions are
pure and work under `jax.jit`, `jax.grad` and with the batch axis sharded over a mesh (the batch
mean becomes an all-reduce; inside `shard_map` it is the per-shard mean and the caller averages
across devices).

Where DESIGN §6 is not explicit, the reference code (mdistiller DKD, zju-SWJ/RLD, NKD, logit
standardisation) decides: with logit standardisation the CE term of KD/DKD/RLD still uses the raw
student logits, and only the distillation terms see z-scored logits.

Each public function validates its inputs in Python (trace time: shapes, dtypes, Python-number
hyper-parameters; `ValueError` on bad input) and then calls a `jax.jit`-compiled kernel, so eager
calls compile once per shape, not once per primitive, and hyper-parameter values (e.g. a per-epoch
warm-up factor) never trigger a recompile.

Out-of-range labels are rejected only when the labels are concrete (eager calls). Inside `jax.jit`
they are tracers and cannot be checked statically, so every label-dependent loss turns an
out-of-range label into NaN rather than a silently wrong finite value.

Teacher logits pass through `jax.lax.stop_gradient`: the teacher is frozen, as under
`torch.no_grad()` in the reference implementations.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hardlabel_jax import array_checks
from hardlabel_jax import class_indexing

__all__ = [
    "DD_SOFT_LABEL_TEMPERATURE",
    "LOGIT_STANDARDIZATION_KD_DEFAULTS",
    "LOSSES",
    "cross_entropy",
    "dkd_loss",
    "get_distillation_loss",
    "kd_loss",
    "kl_soft_loss",
    "label_smoothing_targets",
    "nkd_loss",
    "rld_loss",
    "soft_cross_entropy",
    "standardize_logits",
    "warmup_factor",
]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DistillationLoss = Callable[..., Array]

# Finite stand-in for −inf. Applied *after* dividing by the temperature and via `where` (not by
# subtracting a constant as DKD's reference `− 1000·g` does), so it masks even logits of 1e4.
_MASK_VALUE = -1e9
# Denominator epsilon of logit standardisation, as in the reference code (DESIGN §6).
_STD_EPS = 1e-7

# DD soft-label temperature (SRe²L/RDED/HALD; DESIGN §3): the default of the registry's `kl`.
DD_SOFT_LABEL_TEMPERATURE = 20.0
# Documented KD settings with logit standardisation (DESIGN §6: base T=2, weight 9; the reference
# keeps CE at 0.1). Not applied implicitly: `get_distillation_loss("kd", True, **these)`.
LOGIT_STANDARDIZATION_KD_DEFAULTS = types.MappingProxyType({
    "temperature": 2.0,
    "kd_weight": 9.0,
    "ce_weight": 0.1
})

# ----------------------------------------------------------------------------------------------
# Validation (Python, trace time).


def _check_logits(name: str, logits: ArrayLike) -> Any:
  """Validates a floating `[batch, classes]` array, batch >= 1 and classes >= 2."""
  x = array_checks.as_array(logits)
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape [batch, classes], got ndim={x.ndim} shape={x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating array, got dtype {x.dtype}")
  if x.shape[0] < 1:
    raise ValueError(f"{name} has an empty batch (shape {x.shape}); a batch mean needs batch >= 1")
  if x.shape[1] < 2:
    raise ValueError(f"{name} needs at least 2 classes, got shape {x.shape}")
  return x


def _check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
  """Raises unless two arrays have the same shape."""
  if a.shape != b.shape:
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def _check_labels(labels: ArrayLike, num_classes: int, batch: int | None) -> Any:
  """Validates integer labels `[batch]`; checks the range when the labels are concrete."""
  y = array_checks.as_array(labels)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels must be an integer array, got dtype {y.dtype}")
  if y.ndim != 1:
    raise ValueError(f"labels must have shape [batch], got ndim={y.ndim} shape={y.shape}")
  if batch is not None and y.shape[0] != batch:
    raise ValueError(f"labels have batch {y.shape[0]} but the logits have batch {batch}")
  if array_checks.is_concrete(labels):
    host = np.asarray(y)
    bad = (host < 0) | (host >= num_classes)
    if bad.any():
      raise ValueError(f"labels must lie in [0, {num_classes}); got {host[bad][:5].tolist()} "
                       f"({int(bad.sum())} out of range)")
  return y


def _check_number(name: str, value: Any, *, positive: bool = False, lo: float | None = None,
                  hi: float | None = None) -> None:
  """Checks a scalar hyper-parameter when it is concrete; traced values pass (cannot be read)."""
  real = (int, float, np.number, np.ndarray, jax.Array)  # jax.Array also matches tracers
  if isinstance(value, bool) or not isinstance(value, real):
    raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  if not array_checks.is_concrete(value):
    return
  v = float(value)
  if not math.isfinite(v):
    raise ValueError(f"{name} must be finite, got {v}")
  if positive and not v > 0:
    raise ValueError(f"{name} must be > 0, got {v}")
  if (lo is not None and v < lo) or (hi is not None and v > hi):
    raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v}")


def _check_flag(logit_standardization: Any) -> bool:
  """Validates the static logit-standardisation switch."""
  if not isinstance(logit_standardization, (bool, np.bool_)):
    raise ValueError(f"logit_standardization must be a bool, got {logit_standardization!r}")
  return bool(logit_standardization)


def _check_distillation_inputs(student_logits: ArrayLike, teacher_logits: ArrayLike,
                               labels: ArrayLike | None) -> tuple[Any, Any, Any]:
  """Validates student/teacher logits of one shape and (optional) labels."""
  s = _check_logits("student_logits", student_logits)
  t = _check_logits("teacher_logits", teacher_logits)
  _check_same_shape("student_logits", s, "teacher_logits", t)
  y = None if labels is None else _check_labels(labels, s.shape[1], s.shape[0])
  return s, t, y


# ----------------------------------------------------------------------------------------------
# Numerical building blocks (traced inside the kernels; inputs float32 [B, C] and int [B]).


def _masked_log_softmax(u: Array, mask: Array) -> Array:
  """log_softmax over the entries where `mask` is False; masked entries get ≈ −1e9, not −inf."""
  return jax.nn.log_softmax(jnp.where(mask, _MASK_VALUE, u), axis=-1)


def _kl_from_log_probs(log_q: Array, log_p: Array) -> Array:
  """Per-row KL(q‖p) from finite log-probabilities; q = 0 entries contribute exactly 0."""
  return jnp.sum(jnp.exp(log_q) * (log_q - log_p), axis=-1)


def _kl_at_temperature(s: Array, t: Array, temperature: Array) -> Array:
  """Per-row KL(softmax(t/T) ‖ softmax(s/T))."""
  return _kl_from_log_probs(jax.nn.log_softmax(t / temperature, axis=-1),
                            jax.nn.log_softmax(s / temperature, axis=-1))


def _binary_log_probs(u: Array, index: Array) -> Array:
  """`[B, 2]` log of `[p_i, 1 − p_i]` for p = softmax(u), i = index, computed without log(1 − p)."""
  log_norm = jax.nn.logsumexp(u, axis=-1)
  log_in = class_indexing.gather_class(u, index) - log_norm
  # log(1 − p_i) = logsumexp over the other classes − log Z: exact even when p_i rounds to 1.
  rest = jnp.where(class_indexing.one_hot_mask(index, u.shape[-1]), _MASK_VALUE, u)
  log_out = jax.nn.logsumexp(rest, axis=-1) - log_norm
  return jnp.stack([log_in, log_out], axis=-1)


def _ce(logits: Array, labels: Array) -> Array:
  """Batch-mean integer-label cross-entropy."""
  return -jnp.mean(class_indexing.gather_class(jax.nn.log_softmax(logits, axis=-1), labels))


def _standardize(z: Array) -> Array:
  """Row z-score with unbiased std and 1e-7 in the denominator; finite grads on constant rows."""
  centered = z - jnp.mean(z, axis=-1, keepdims=True)
  var = jnp.sum(centered**2, axis=-1, keepdims=True) / (z.shape[-1] - 1)
  # sqrt has an infinite derivative at 0: route constant rows through a safe branch.
  positive = var > 0
  std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
  return centered / (_STD_EPS + std)


def _prepare(s: Array, t: Array, logit_standardization: bool) -> tuple[Array, Array, Array]:
  """float32 raw student logits, plus the (optionally standardised) logits the distillation sees."""
  # Low-precision logits (bf16/fp16) are upcast: every loss is computed and returned in float32.
  s = s.astype(jnp.float32)
  t = jax.lax.stop_gradient(t.astype(jnp.float32))  # frozen teacher
  if logit_standardization:
    return s, _standardize(s), _standardize(t)
  return s, s, t


def _dkd_terms(s: Array, t: Array, labels: Array, temperature: Array) -> tuple[Array, Array]:
  """Per-example DKD (TCKD, NCKD) without the T² factor."""
  us, ut = s / temperature, t / temperature
  tckd = _kl_from_log_probs(_binary_log_probs(ut, labels), _binary_log_probs(us, labels))
  gt = class_indexing.one_hot_mask(labels, s.shape[-1])
  nckd = _kl_from_log_probs(_masked_log_softmax(ut, gt), _masked_log_softmax(us, gt))
  return tckd, nckd


def _rld_terms(s: Array, t: Array, labels: Array, temperature: Array,
               alpha_temperature: Array) -> tuple[Array, Array]:
  """Per-example RLD (SCD, MCD) without the Ta² / T² factors."""
  top = jnp.argmax(t, axis=-1)
  scd = _kl_from_log_probs(
      _binary_log_probs(t / alpha_temperature, top),
      _binary_log_probs(s / alpha_temperature, labels),
  )
  # Classes the teacher ranks at or above the true class (the true class included) are dropped.
  mask = t >= class_indexing.gather_class(t, labels)[:, None]
  mcd = _kl_from_log_probs(_masked_log_softmax(t / temperature, mask),
                           _masked_log_softmax(s / temperature, mask))
  # Teacher ranks the true class lowest: nothing is left to distil; define MCD = 0 explicitly.
  mcd = jnp.where(jnp.all(mask, axis=-1), 0.0, mcd)
  return scd, mcd


# ----------------------------------------------------------------------------------------------
# Compiled kernels. Hyper-parameters are traced arguments (no recompile per value); only the
# logit-standardisation switch is static.

_kernel = functools.partial(jax.jit, static_argnames=("logit_standardization",))


@jax.jit
def _ce_kernel(logits: Array, labels: Array) -> Array:
  """Compiled `cross_entropy`."""
  return _ce(logits.astype(jnp.float32), labels)


@jax.jit
def _soft_ce_kernel(logits: Array, target_probs: Array) -> Array:
  """Compiled `soft_cross_entropy`."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(target_probs.astype(jnp.float32) * log_p, axis=-1))


@jax.jit
def _kl_soft_kernel(logits: Array, target_probs: Array, temperature: Array) -> Array:
  """Compiled `kl_soft_loss`."""
  q = target_probs.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  # 0·log 0 = 0, with a zero (not NaN) derivative with respect to q at q = 0.
  positive = q > 0
  q_log_q = jnp.where(positive, q * jnp.log(jnp.where(positive, q, 1.0)), 0.0)
  return jnp.mean(jnp.sum(q_log_q - q * log_p, axis=-1))


@_kernel
def _kl_teacher_kernel(s: Array, t: Array, temperature: Array,
                       logit_standardization: bool) -> Array:
  """Compiled registry `kl`."""
  _, s, t = _prepare(s, t, logit_standardization)
  # Same value as kl_soft_loss(s, softmax(t/T), T), but the target stays in log space.
  return jnp.mean(_kl_at_temperature(s, t, temperature))


@_kernel
def _kd_kernel(s: Array, t: Array, y: Array, temperature: Array, kd_weight: Array, ce_weight: Array,
               logit_standardization: bool) -> Array:
  """Compiled `kd_loss`."""
  s_raw, s, t = _prepare(s, t, logit_standardization)
  kl = jnp.mean(_kl_at_temperature(s, t, temperature))
  # CE always sees the raw student logits: standardised logits have unit variance and could not
  # fit one-hot labels (the reference logit-standardisation code does the same).
  return ce_weight * _ce(s_raw, y) + kd_weight * temperature**2 * kl


@jax.jit
def _dkd_parts_kernel(s: Array, t: Array, y: Array, temperature: Array) -> tuple[Array, Array]:
  """Compiled `_dkd_parts`."""
  _, s, t = _prepare(s, t, False)
  return _dkd_terms(s, t, y, temperature)


@_kernel
def _dkd_kernel(s: Array, t: Array, y: Array, alpha: Array, beta: Array, temperature: Array,
                warmup: Array, ce_weight: Array, logit_standardization: bool) -> Array:
  """Compiled `dkd_loss`."""
  s_raw, s, t = _prepare(s, t, logit_standardization)
  tckd, nckd = _dkd_terms(s, t, y, temperature)
  distill = temperature**2 * (alpha * jnp.mean(tckd) + beta * jnp.mean(nckd))
  return ce_weight * _ce(s_raw, y) + warmup * distill


@jax.jit
def _rld_parts_kernel(s: Array, t: Array, y: Array, temperature: Array,
                      alpha_temperature: Array) -> tuple[Array, Array]:
  """Compiled `_rld_parts`."""
  _, s, t = _prepare(s, t, False)
  return _rld_terms(s, t, y, temperature, alpha_temperature)


@_kernel
def _rld_kernel(s: Array, t: Array, y: Array, alpha: Array, beta: Array, temperature: Array,
                alpha_temperature: Array, warmup: Array, ce_weight: Array,
                logit_standardization: bool) -> Array:
  """Compiled `rld_loss`."""
  s_raw, s, t = _prepare(s, t, logit_standardization)
  scd, mcd = _rld_terms(s, t, y, temperature, alpha_temperature)
  distill = alpha * alpha_temperature**2 * jnp.mean(scd) + beta * temperature**2 * jnp.mean(mcd)
  return ce_weight * _ce(s_raw, y) + warmup * distill


@_kernel
def _nkd_kernel(s: Array, t: Array, y: Array, temperature: Array, gamma: Array, ce_weight: Array,
                logit_standardization: bool) -> Array:
  """Compiled `nkd_loss`."""
  s_raw, s, t = _prepare(s, t, logit_standardization)
  # Target term at T = 1 whatever `temperature` is (DESIGN §6, as in the NKD reference).
  pt_y = jnp.exp(class_indexing.gather_class(jax.nn.log_softmax(t, axis=-1), y))
  loss_target = -jnp.mean(pt_y * class_indexing.gather_class(jax.nn.log_softmax(s, axis=-1), y))
  # Softmax over the non-target classes only: the target entry is masked out of both.
  gt = class_indexing.one_hot_mask(y, s.shape[-1])
  log_pt = _masked_log_softmax(t / temperature, gt)
  log_ps = _masked_log_softmax(s / temperature, gt)
  cross = jnp.mean(jnp.sum(jnp.exp(log_pt) * log_ps, axis=-1))
  return ce_weight * _ce(s_raw, y) + loss_target - gamma * temperature**2 * cross


# ----------------------------------------------------------------------------------------------
# Public losses.


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
  """Integer-label cross-entropy −log softmax(z)_y, batch mean."""
  z = _check_logits("logits", logits)
  return _ce_kernel(z, _check_labels(labels, z.shape[1], z.shape[0]))


def soft_cross_entropy(logits: ArrayLike, target_probs: ArrayLike) -> Array:
  """Soft-target cross-entropy −Σ q log softmax(z), batch mean (HALD hard phase, DESIGN §5)."""
  z = _check_logits("logits", logits)
  q = _check_logits("target_probs", target_probs)
  _check_same_shape("logits", z, "target_probs", q)
  return _soft_ce_kernel(z, q)


def kl_soft_loss(student_logits: ArrayLike, target_probs: ArrayLike, temperature: float) -> Array:
  """KL(q ‖ softmax(z_s/T)), batch mean, no T² factor (DD soft-label convention, DESIGN §3)."""
  z = _check_logits("student_logits", student_logits)
  q = _check_logits("target_probs", target_probs)
  _check_same_shape("student_logits", z, "target_probs", q)
  _check_number("temperature", temperature, positive=True)
  return _kl_soft_kernel(z, q, temperature)


def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
            temperature: float = 4.0, kd_weight: float = 0.9, *, ce_weight: float | None = None,
            logit_standardization: bool = False) -> Array:
  """Hinton KD: ce_weight·CE + kd_weight·T²·KL(p(z_t/T) ‖ p(z_s/T)), ce_weight = 1 − kd_weight."""
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  if ce_weight is None:
    # 1 − kd_weight only makes sense for kd_weight in [0, 1]; LS-KD's weight 9 needs ce_weight.
    _check_number("kd_weight", kd_weight, lo=0.0, hi=1.0)
    ce_weight = 1.0 - kd_weight
  else:
    _check_number("kd_weight", kd_weight)
    _check_number("ce_weight", ce_weight)
  return _kd_kernel(s, t, y, temperature, kd_weight, ce_weight,
                    logit_standardization=_check_flag(logit_standardization))


def _dkd_parts(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
               temperature: float = 4.0) -> tuple[Array, Array]:
  """Per-example DKD (TCKD, NCKD) `[batch]` without T², for tests of the decomposition."""
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  return _dkd_parts_kernel(s, t, y, temperature)


def dkd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
             warmup_factor: float = 1.0, *, ce_weight: float = 1.0,
             logit_standardization: bool = False) -> Array:
  """Decoupled KD: ce_weight·CE + warmup_factor·T²·(α·TCKD + β·NCKD) (DESIGN §6)."""
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  for name, v in (("alpha", alpha), ("beta", beta), ("warmup_factor", warmup_factor), ("ce_weight",
                                                                                       ce_weight)):
    _check_number(name, v)
  return _dkd_kernel(s, t, y, alpha, beta, temperature, warmup_factor, ce_weight,
                     logit_standardization=_check_flag(logit_standardization))


def _rld_parts(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
               temperature: float = 4.0, alpha_temperature: float = 4.0) -> tuple[Array, Array]:
  """Per-example RLD (SCD, MCD) `[batch]` without Ta² / T², for tests of the masking."""
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  _check_number("alpha_temperature", alpha_temperature, positive=True)
  return _rld_parts_kernel(s, t, y, temperature, alpha_temperature)


def rld_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
             alpha_temperature: float = 4.0, warmup_factor: float = 1.0, *, ce_weight: float = 1.0,
             logit_standardization: bool = False) -> Array:
  """Refined logit distillation: ce_weight·CE + warmup_factor·(α·Ta²·SCD + β·T²·MCD) (DESIGN §6)."""
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  _check_number("alpha_temperature", alpha_temperature, positive=True)
  for name, v in (("alpha", alpha), ("beta", beta), ("warmup_factor", warmup_factor), ("ce_weight",
                                                                                       ce_weight)):
    _check_number(name, v)
  return _rld_kernel(s, t, y, alpha, beta, temperature, alpha_temperature, warmup_factor, ce_weight,
                     logit_standardization=_check_flag(logit_standardization))


def nkd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
             temperature: float = 1.0, gamma: float = 1.5, *, ce_weight: float = 1.0,
             logit_standardization: bool = False) -> Array:
  """ce_weight·CE + NKD: −mean(pt_y log ps_y) − γT² mean Σ_{i≠y} p̂t_i log p̂s_i (DESIGN §6, §9)."""
  # CE has weight 1 by default because the reference trainer trains on both: yzd-v/cls_KD
  # mmcls/models/classifiers/distiller.py `ClassificationDistiller.loss` returns the student
  # head's CE as `ori_loss` (CrossEntropyLoss, loss_weight=1.0, configs/_base_/models/resnet18.py)
  # next to `loss_nkd` (mmcls/models/dis_losses/nkd.py), and mmengine sums every returned loss.
  # `ce_weight=0` is the pure NKD term.
  s, t, y = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  _check_number("gamma", gamma)
  _check_number("ce_weight", ce_weight)
  return _nkd_kernel(s, t, y, temperature, gamma, ce_weight,
                     logit_standardization=_check_flag(logit_standardization))


# ----------------------------------------------------------------------------------------------
# Helpers.


@jax.jit
def _standardize_kernel(logits: Array) -> Array:
  """Compiled `standardize_logits`."""
  return _standardize(logits.astype(jnp.float32))


def standardize_logits(logits: ArrayLike) -> Array:
  """Per-row z-score (z − mean)/(1e-7 + std), unbiased std, over the last axis (DESIGN §6)."""
  z = array_checks.as_array(logits)
  if z.ndim < 1 or not jnp.issubdtype(z.dtype, jnp.floating):
    raise ValueError(f"logits must be a floating array with a class axis, got {z.dtype} {z.shape}")
  if z.shape[-1] < 2:
    raise ValueError(f"the unbiased std needs at least 2 classes, got shape {z.shape}")
  return _standardize_kernel(z)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _smoothing_kernel(labels: Array, num_classes: int, smoothing: Array) -> Array:
  """Compiled `label_smoothing_targets`."""
  one_hot = class_indexing.one_hot_mask(labels, num_classes).astype(jnp.float32)
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def label_smoothing_targets(labels: ArrayLike, num_classes: int, smoothing: float) -> Array:
  """Smoothed one-hot float32 `[batch, C]`: 1 − s + s/C at the label, s/C elsewhere (DESIGN §5)."""
  if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
      or num_classes < 1):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  _check_number("smoothing", smoothing, lo=0.0, hi=1.0)
  y = _check_labels(labels, num_classes, None)
  return _smoothing_kernel(y, int(num_classes), smoothing)


def warmup_factor(epoch: float | Array, warmup_epochs: float) -> float | Array:
  """min(epoch / warmup_epochs, 1) (DKD/RLD warm-up); 1 when warmup_epochs is 0."""
  # A config value, needed as a Python number to branch on.
  if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float, np.number)):
    raise ValueError(f"warmup_epochs must be a Python number, got {type(warmup_epochs).__name__}")
  _check_number("warmup_epochs", warmup_epochs, lo=0.0)
  if warmup_epochs == 0:
    return 1.0
  if isinstance(epoch, (int, float, np.number)) and not isinstance(epoch, bool):
    return min(float(epoch) / float(warmup_epochs), 1.0)
  return jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0)


# ----------------------------------------------------------------------------------------------
# Registry: every entry is called as fn(student_logits, teacher_logits, labels, **hyper).


def _ce_registry_loss(student_logits: ArrayLike, teacher_logits: ArrayLike | None,
                      labels: ArrayLike, *, logit_standardization: bool = False) -> Array:
  """Plain CE on the raw student logits; the teacher (and standardisation) is ignored."""
  del teacher_logits, logit_standardization  # HL regime: no teacher (DESIGN §3).
  return cross_entropy(student_logits, labels)


def _kl_registry_loss(student_logits: ArrayLike, teacher_logits: ArrayLike,
                      labels: ArrayLike | None = None,
                      temperature: float = DD_SOFT_LABEL_TEMPERATURE, *,
                      logit_standardization: bool = False) -> Array:
  """SL+KD soft-label loss KL(softmax(z_t/T) ‖ softmax(z_s/T)), no T²; labels only validated."""
  s, t, _ = _check_distillation_inputs(student_logits, teacher_logits, labels)
  _check_number("temperature", temperature, positive=True)
  return _kl_teacher_kernel(s, t, temperature,
                            logit_standardization=_check_flag(logit_standardization))


LOSSES: dict[str, DistillationLoss] = {
    "ce": _ce_registry_loss,
    "kl": _kl_registry_loss,
    "kd": kd_loss,
    "dkd": dkd_loss,
    "rld": rld_loss,
    "nkd": nkd_loss,
}


def _hyper_parameters(fn: DistillationLoss) -> set[str]:
  """Names of the configurable parameters of a registry loss (all but the three arrays)."""
  params = list(inspect.signature(fn).parameters)[3:]
  return {p for p in params if p != "logit_standardization"}


def get_distillation_loss(name: str, logit_standardization: bool = False,
                          **kwargs: Any) -> Callable[..., Array]:
  """Config name → `loss(student_logits, teacher_logits, labels, **overrides) -> scalar`."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
  flag = _check_flag(logit_standardization)
  fn = LOSSES[name]
  accepted = _hyper_parameters(fn)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(
        f"loss {name!r} got unknown argument(s) {unknown}; accepted: {sorted(accepted) or 'none'}")
  # Call-time keywords still override (e.g. a per-epoch `warmup_factor`).
  loss = functools.partial(fn, logit_standardization=flag, **kwargs)
  # Dry trace on a tiny abstract batch: bad hyper-parameters fail at configuration time, not at
  # the first train step. Nothing is computed.
  logits = jax.ShapeDtypeStruct((1, 2), jnp.float32)
  jax.eval_shape(loss, logits, logits, jax.ShapeDtypeStruct((1,), jnp.int32))
  return loss
