"""Per-example difficulty: EL2N, GraNd, forgetting, AUM, dynamic uncertainty, CAD (DESIGN §7).

Every score returns one float32 value per example, `[n]` (dynamic uncertainty: one row per
window). Conventions follow losses.py: each public function validates shapes, dtypes and window
sizes in Python (trace time, `ValueError`) and then calls a `jax.jit`-compiled kernel, so the
functions can be called eagerly, inside `jax.jit`, and on arrays whose example axis is sharded over
the mesh (every score is elementwise over examples, so sharding needs no communication).

Labels are range-checked only when concrete; inside `jax.jit` an out-of-range label gives NaN
rather than a silently wrong finite score. Everything is computed from log-softmax and masks use
the dtype's most negative finite value, never −inf, so scores stay finite for logits of 1e4.

Score directions (what "hard" means) differ: EL2N, GraNd, forgetting, dynamic uncertainty/CAD and
teacher CE/entropy are higher for harder examples; AUM (logit or probability margins), margin,
true-class probability and teacher confidence are lower for harder examples.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
from typing import Any

import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hardlabel_jax import array_checks
from hardlabel_jax import class_indexing

__all__ = [
    "FINAL_LAYER_NAMES",
    "aum",
    "cad_scores",
    "dynamic_uncertainty",
    "el2n",
    "el2n_mean",
    "epoch_statistics",
    "find_final_layer",
    "forgetting_events",
    "grand",
    "probability_margin",
    "teacher_ce",
    "teacher_confidence",
    "teacher_entropy",
    "training_aum",
]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Names the models of this package give their classifier (ConvNet: `classifier`, ResNet: `fc`);
# `head` covers the usual name elsewhere. Tried in this order before any structural guess.
FINAL_LAYER_NAMES: tuple[str, ...] = ("classifier", "fc", "head")

# ----------------------------------------------------------------------------------------------
# Validation (Python, trace time).


def _check_float(name: str, x: ArrayLike, axes: str) -> Any:
  """Validates a floating array whose axes are named by the comma-separated `axes`."""
  a = array_checks.as_array(x)
  names = axes.split(", ")
  if a.ndim != len(names):
    raise ValueError(f"{name} must have shape [{axes}], got ndim={a.ndim} shape={a.shape}")
  if not jnp.issubdtype(a.dtype, jnp.floating):
    raise ValueError(f"{name} must be a floating array, got dtype {a.dtype}")
  if "classes" in names and a.shape[names.index("classes")] < 2:
    raise ValueError(f"{name} needs at least 2 classes, got shape {a.shape}")
  if "epochs" in names and a.shape[0] < 1:
    raise ValueError(f"{name} needs at least one epoch, got shape {a.shape}")
  return a


def _check_labels(labels: ArrayLike, num_classes: int, n: int) -> Any:
  """Validates integer labels `[n]`; checks the range when the labels are concrete."""
  y = array_checks.as_array(labels)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels must be an integer array, got dtype {y.dtype}")
  if y.ndim != 1:
    raise ValueError(f"labels must have shape [n], got ndim={y.ndim} shape={y.shape}")
  if y.shape[0] != n:
    raise ValueError(f"labels have {y.shape[0]} examples but the scores' input has {n}")
  if array_checks.is_concrete(labels):
    host = np.asarray(y)
    bad = (host < 0) | (host >= num_classes)
    if bad.any():
      raise ValueError(f"labels must lie in [0, {num_classes}); got {host[bad][:5].tolist()} "
                       f"({int(bad.sum())} out of range)")
  return y


def _check_int(name: str, value: Any, lo: int) -> int:
  """A static (Python) integer hyper-parameter >= lo; window sizes fix output shapes."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a Python int, got {type(value).__name__}")
  if value < lo:
    raise ValueError(f"{name} must be >= {lo}, got {value}")
  return int(value)


# ----------------------------------------------------------------------------------------------
# Numerical building blocks (traced inside the kernels).


def _el2n(z: Array, y: Array) -> Array:
  """‖softmax(z) − onehot(y)‖₂ over the last axis."""
  p = jax.nn.softmax(z, axis=-1)
  err = p - class_indexing.one_hot_mask(y, z.shape[-1]).astype(p.dtype)
  value = jnp.sqrt(jnp.sum(err * err, axis=-1))
  return jnp.where((y >= 0) & (y < z.shape[-1]), value, jnp.nan)


def _margin(z: Array, y: Array) -> Array:
  """z_y − max_{i≠y} z_i over the last axis."""
  # The most negative finite value, not −inf: with C >= 2 some other class always wins the max.
  others = jnp.where(class_indexing.one_hot_mask(y, z.shape[-1]), jnp.finfo(z.dtype).min, z)
  return class_indexing.gather_class(z, y) - jnp.max(others, axis=-1)


def _probability_margin(z: Array, y: Array) -> Array:
  """p_y − max_{i≠y} p_i of softmax(z) over the last axis."""
  p = jnp.exp(jax.nn.log_softmax(z, axis=-1))
  # Probabilities are >= 0, so −1 masks the true class out of the max without −inf.
  others = jnp.where(class_indexing.one_hot_mask(y, z.shape[-1]), -1.0, p)
  return class_indexing.gather_class(p, y) - jnp.max(others, axis=-1)


def _float32(x: Array) -> Array:
  """Scores are float32 whatever the logits' dtype (bf16 logits would lose small margins)."""
  return x.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Compiled kernels.


@jax.jit
def _el2n_kernel(z: Array, y: Array) -> Array:
  """Compiled `el2n` / `el2n_mean` (a leading runs axis is averaged)."""
  value = _el2n(_float32(z), y)
  return value if value.ndim == 1 else jnp.mean(value, axis=0)


@jax.jit
def _aum_kernel(z: Array, y: Array) -> Array:
  """Compiled `aum`."""
  return jnp.mean(_margin(_float32(z), y), axis=0)


@jax.jit
def _probability_margin_kernel(z: Array, y: Array) -> Array:
  """Compiled `probability_margin`."""
  return _probability_margin(_float32(z), y)


@functools.partial(jax.jit, static_argnames=("num_examples",))
def _training_aum_kernel(positions: Array, margins: Array, num_examples: int) -> Array:
  """Compiled `training_aum`."""
  sums = jax.ops.segment_sum(_float32(margins), positions, num_segments=num_examples)
  counts = jax.ops.segment_sum(jnp.ones_like(positions, jnp.float32), positions,
                               num_segments=num_examples)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), jnp.nan)


@jax.jit
def _forgetting_kernel(correct: Array) -> Array:
  """Compiled `forgetting_events`."""
  c = correct.astype(bool)
  events = jnp.sum(c[:-1] & ~c[1:], axis=0).astype(jnp.float32)
  # Toneva et al.: an example never classified correctly counts as forgotten infinitely often.
  return jnp.where(jnp.any(c, axis=0), events, jnp.inf)


@functools.partial(jax.jit, static_argnames=("window",))
def _dynamic_uncertainty_kernel(p: Array, window: int) -> Array:
  """Compiled `dynamic_uncertainty`."""
  p = _float32(p)
  num_windows = p.shape[0] - window + 1
  # [J, K−J+1, n]: row j holds p_{k+j} for every window start k.
  stacked = jnp.stack([p[j:j + num_windows] for j in range(window)])
  return jnp.std(stacked, axis=0, ddof=1)


@functools.partial(jax.jit, static_argnames=("window", "num_windows"))
def _cad_kernel(p: Array, window: int, num_windows: int) -> Array:
  """Compiled `cad_scores`."""
  u = _dynamic_uncertainty_kernel(p, window)
  k = p.shape[0]
  # DESIGN §7: k runs over K−J−W … K−J−1, i.e. the W windows before the last one (index K−J).
  return jnp.mean(u[k - window - num_windows:k - window], axis=0)


@jax.jit
def _epoch_statistics_kernel(z: Array, y: Array) -> dict[str, Array]:
  """Compiled `epoch_statistics`."""
  z = _float32(z)
  log_p = jax.nn.log_softmax(z, axis=-1)
  return {
      "true_prob": jnp.exp(class_indexing.gather_class(log_p, y)),
      "el2n": _el2n(z, y),
      "margin": _margin(z, y),
      "prob_margin": _probability_margin(z, y),
      "correct": jnp.argmax(z, axis=-1) == y,
      "prediction": jnp.argmax(z, axis=-1).astype(jnp.int32),
  }


@jax.jit
def _teacher_ce_kernel(z: Array, y: Array) -> Array:
  """Compiled `teacher_ce`."""
  return -class_indexing.gather_class(jax.nn.log_softmax(_float32(z), axis=-1), y)


@jax.jit
def _teacher_confidence_kernel(z: Array) -> Array:
  """Compiled `teacher_confidence`."""
  return jnp.exp(jnp.max(jax.nn.log_softmax(_float32(z), axis=-1), axis=-1))


@jax.jit
def _teacher_entropy_kernel(z: Array) -> Array:
  """Compiled `teacher_entropy`."""
  log_p = jax.nn.log_softmax(_float32(z), axis=-1)
  # log_p is finite for finite logits, so classes with p = 0 contribute exactly 0 (no 0·−inf).
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


# ----------------------------------------------------------------------------------------------
# Public logit-based scores.


def el2n(logits: ArrayLike, labels: ArrayLike) -> Array:
  """EL2N ‖softmax(z) − onehot(y)‖₂ per example, `[n]` (higher = harder)."""
  z = _check_float("logits", logits, "n, classes")
  return _el2n_kernel(z, _check_labels(labels, z.shape[1], z.shape[0]))


def el2n_mean(logits_per_run: ArrayLike, labels: ArrayLike) -> Array:
  """EL2N averaged over runs (seeds or early checkpoints): `[runs, n, C]` → `[n]`."""
  z = _check_float("logits_per_run", logits_per_run, "runs, n, classes")
  if z.shape[0] < 1:
    raise ValueError(f"logits_per_run needs at least one run, got shape {z.shape}")
  return _el2n_kernel(z, _check_labels(labels, z.shape[2], z.shape[1]))


def aum(logits_per_epoch: ArrayLike, labels: ArrayLike) -> Array:
  """Mean over epochs of the logit margin z_y − max_{i≠y} z_i, `[n]` (lower = harder).

  Pleiss et al.'s margin on logits; a scoring run stores it, on eval-mode centre views, as
  `aum_eval_logit`. CCS ranks by `training_aum` (probabilities of the training batches) instead.
  """
  z = _check_float("logits_per_epoch", logits_per_epoch, "epochs, n, classes")
  return _aum_kernel(z, _check_labels(labels, z.shape[2], z.shape[1]))


def probability_margin(logits: ArrayLike, labels: ArrayLike) -> Array:
  """p_y − max_{i≠y} p_i of softmax(z) per example, `[n]` in [−1, 1] (lower = harder).

  What the official CCS code records for every example of every training mini-batch of its
  scoring run (see `training_aum`).
  """
  z = _check_float("logits", logits, "n, classes")
  return _probability_margin_kernel(z, _check_labels(labels, z.shape[1], z.shape[0]))


def training_aum(positions: ArrayLike, margins: ArrayLike, num_examples: int) -> Array:
  """CCS's AUM: the mean of each example's recorded training-batch margins, `[num_examples]`.

  `positions[r]` (in [0, num_examples)) is the example of record r and `margins[r]` its
  `probability_margin` in the training mini-batch it was drawn in, for every batch of the scoring
  run. The official code (haizhongzheng/Coverage-centric-coreset-selection,
  generate_importance_score.py L91–108 over the batches Trainer.py L42–49 logs) sums these; with
  every example drawn once an epoch the mean is that sum over the epoch count, the same ranks and
  the same CCS strata. An example never recorded gets NaN.
  """
  p = array_checks.as_array(positions)
  m = _check_float("margins", margins, "records")
  n = _check_int("num_examples", num_examples, 1)
  if p.shape != m.shape or not jnp.issubdtype(p.dtype, jnp.integer):
    raise ValueError(f"positions must be integers shaped like margins {m.shape}, got "
                     f"{p.dtype} {p.shape}")
  if array_checks.is_concrete(positions):
    host = np.asarray(p)
    if host.size and (host.min() < 0 or host.max() >= n):
      raise ValueError(f"positions must lie in [0, {n}), got [{host.min()}, {host.max()}]")
  return _training_aum_kernel(p, m, n)


def forgetting_events(correct_per_epoch: ArrayLike) -> Array:
  """Number of correct→wrong transitions per example, `[n]`; +inf if never correct."""
  c = array_checks.as_array(correct_per_epoch)
  if c.ndim != 2:
    raise ValueError(f"correct_per_epoch must have shape [epochs, n], got shape {c.shape}")
  if c.shape[0] < 1:
    raise ValueError(f"correct_per_epoch needs at least one epoch, got shape {c.shape}")
  if not (c.dtype == bool or jnp.issubdtype(c.dtype, jnp.integer)):
    raise ValueError(f"correct_per_epoch must be bool or 0/1 integers, got dtype {c.dtype}")
  if array_checks.is_concrete(correct_per_epoch) and c.dtype != bool:
    host = np.asarray(c)
    if not np.isin(host, (0, 1)).all():
      raise ValueError(f"correct_per_epoch must hold only 0 and 1, got {np.unique(host)[:5]}")
  return _forgetting_kernel(c)


def dynamic_uncertainty(true_prob_per_epoch: ArrayLike, window: int) -> Array:
  """U_k = std_{j<J} p_{k+j}(y|x) (ddof=1) for every window start k: `[epochs−J+1, n]`."""
  p = _check_float("true_prob_per_epoch", true_prob_per_epoch, "epochs, n")
  window = _check_int("window", window, 2)
  if window > p.shape[0]:
    raise ValueError(f"window={window} is longer than the {p.shape[0]} recorded epochs")
  return _dynamic_uncertainty_kernel(p, window)


def cad_scores(true_prob_per_epoch: ArrayLike, window: int = 6, num_windows: int = 2) -> Array:
  """CAD(x) = (1/W) Σ_{k=K−J−W}^{K−J−1} U_k(x) over K recorded epochs, `[n]` (DESIGN §7)."""
  p = _check_float("true_prob_per_epoch", true_prob_per_epoch, "epochs, n")
  window = _check_int("window", window, 2)
  num_windows = _check_int("num_windows", num_windows, 1)
  if p.shape[0] < window + num_windows:
    raise ValueError(
        f"CAD with window J={window} and W={num_windows} windows needs at least K = J + W = "
        f"{window + num_windows} recorded epochs, got K={p.shape[0]}")
  return _cad_kernel(p, window, num_windows)


def epoch_statistics(logits: ArrayLike, labels: ArrayLike) -> dict[str, Array]:
  """What a scoring run records per epoch: true_prob, el2n, margins, correct (bool), prediction."""
  z = _check_float("logits", logits, "n, classes")
  return _epoch_statistics_kernel(z, _check_labels(labels, z.shape[1], z.shape[0]))


def teacher_ce(logits: ArrayLike, labels: ArrayLike) -> Array:
  """Per-example cross-entropy −log softmax(z)_y of a (teacher's) logits, `[n]`."""
  z = _check_float("logits", logits, "n, classes")
  return _teacher_ce_kernel(z, _check_labels(labels, z.shape[1], z.shape[0]))


def teacher_confidence(logits: ArrayLike) -> Array:
  """Max softmax probability per example, `[n]`."""
  return _teacher_confidence_kernel(_check_float("logits", logits, "n, classes"))


def teacher_entropy(logits: ArrayLike) -> Array:
  """Entropy −Σ p log p of the softmax per example (nats), `[n]`."""
  return _teacher_entropy_kernel(_check_float("logits", logits, "n, classes"))


# ----------------------------------------------------------------------------------------------
# GraNd.


def _is_dense_params(tree: Any) -> bool:
  """A Dense layer's param dict: a 2-D `kernel` (and optionally `bias`) and nothing else."""
  return (isinstance(tree, dict) and "kernel" in tree and getattr(tree["kernel"], "ndim", 0) == 2
          and set(tree) <= {"kernel", "bias"})


def _dense_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """Paths of every Dense-like subtree of a param tree."""
  if _is_dense_params(tree):
    return [prefix]
  if not isinstance(tree, dict):
    return []
  return [p for key in tree for p in _dense_paths(tree[key], prefix + (key,))]


def _subtree(tree: Any, path: tuple[str, ...]) -> Any:
  """The subtree at `path`, or None."""
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def find_final_layer(params: dict[str, Any], num_classes: int) -> tuple[str, ...]:
  """Path of the classifier Dense in a Flax param tree (see `grand` for the rule)."""
  for name in FINAL_LAYER_NAMES:
    if _is_dense_params(params.get(name)):
      return (name,)
  # Param dicts come back key-sorted from jit/tree ops, so "the last Dense" cannot be read from
  # the order; the classifier is instead the only Dense whose output width is num_classes.
  paths = [p for p in _dense_paths(params) if _subtree(params, p)["kernel"].shape[1] == num_classes]
  if len(paths) != 1:
    found = ["/".join(p) for p in paths]
    raise ValueError(
        f"cannot identify the final Dense layer: no top-level {FINAL_LAYER_NAMES} and "
        f"{len(paths)} Dense layers with {num_classes} outputs {found}; pass layer_name")
  return paths[0]


def _replace_subtree(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
  """A shallow copy of `tree` with the subtree at `path` replaced (no mutation of the input)."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace_subtree(tree[path[0]], path[1:], value)
  return out


def _squared_norm(tree: Any) -> Array:
  """Σ of squares over every leaf of a pytree, float32."""
  return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnames=("model", "layer_path"))
def _grand_kernel(model: nn.Module, variables: dict[str, Any], images: Array, labels: Array,
                  layer_path: tuple[str, ...] | None) -> Array:
  """Compiled `grand`; layer_path None = gradient w.r.t. all params."""
  params = variables["params"]

  def example_loss(wrt: Any, x: Array, y: Array) -> Array:
    full = wrt if layer_path is None else _replace_subtree(params, layer_path, wrt)
    logits = model.apply({**variables, "params": full}, x[None], train=False)
    return -class_indexing.gather_class(jax.nn.log_softmax(_float32(logits), axis=-1), y[None])[0]

  wrt = params if layer_path is None else _subtree(params, layer_path)

  def example_norm(x: Array, y: Array) -> Array:
    # Differentiating only w.r.t. the chosen subtree lets XLA drop the rest of the backward pass.
    return jnp.sqrt(_squared_norm(jax.grad(example_loss)(wrt, x, y)))

  return jax.vmap(example_norm)(images, labels)


def grand(model: nn.Module, variables: dict[str, Any], images: ArrayLike, labels: ArrayLike,
          last_layer: bool = False, layer_name: str | None = None) -> Array:
  """GraNd ‖∇θ CE(model(x), y)‖₂ per example (eval-mode apply), `[n]` (higher = harder).

  `last_layer=True` takes only the gradient w.r.t. the final Dense layer. That layer is
  `layer_name` when given ("/"-separated path for a nested module, e.g. "head/Dense_0"); else the
  first top-level Dense named one of FINAL_LAYER_NAMES (ConvNet `classifier`, ResNet `fc`); else
  the only Dense layer anywhere whose output width equals the number of classes.
  """
  if not isinstance(model, nn.Module):
    raise ValueError(f"model must be a flax.linen Module, got {type(model).__name__}")
  if not isinstance(variables, Mapping) or not isinstance(variables.get("params"), Mapping):
    raise ValueError("variables must be a dict with a 'params' collection")
  # Plain dicts throughout, so the layer lookup and the param substitution see one container type.
  variables = flax.core.unfreeze(variables)
  if layer_name is not None and not last_layer:
    raise ValueError("layer_name only applies with last_layer=True")
  params = variables["params"]
  layer_path = None
  if layer_name is not None:
    layer_path = tuple(layer_name.split("/"))
    if not _is_dense_params(_subtree(params, layer_path)):
      raise ValueError(f"layer_name {layer_name!r} is not a Dense layer of the params; Dense "
                       f"layers: {['/'.join(p) for p in _dense_paths(params)]}")
  x = array_checks.as_array(images)
  if x.ndim < 2 or x.shape[0] < 1:
    raise ValueError(f"images must have shape [n, ...] with n >= 1, got shape {x.shape}")
  # Abstract evaluation only: the class count for the label check costs no compute.
  one = jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)
  out = jax.eval_shape(lambda v, xs: model.apply(v, xs, train=False), variables, one)
  if len(out.shape) != 2 or out.shape[1] < 2:
    raise ValueError(f"model must return [batch, classes>=2] logits, got shape {out.shape}")
  num_classes = out.shape[1]
  y = _check_labels(labels, num_classes, x.shape[0])
  if last_layer and layer_path is None:
    layer_path = find_final_layer(params, num_classes)
  return _grand_kernel(model, variables, x, y, layer_path)
