"""SRe²L, CDA and LPLD's class-wise recover: images synthesised by matching a BN teacher.

As the official code runs it (VILA-Lab/SRe2L SRe2L/recover/data_synthesis.py and utils.py,
CDA/recover_cda_in1k.py; he-y/soft-label-pruning-for-dataset-distillation
recover/data_synthesis_class.py for one class per batch):
- images start from a standard normal in normalised space and are the only thing optimised:
  Adam(lr, betas (0.5, 0.9), eps 1e-8), the learning rate cosine-decayed to 0 over the iterations;
- every iteration draws one RandomResizedCrop (scale 0.08–1; CDA anneals the minimum scale from 1
  to 0.08 by a cosine over `cda_milestone` of the iterations) and one horizontal flip shared by the
  whole batch, then rolls it by (0..jitter, 0..jitter) pixels, jitter 32 at ImageNet size and 4
  up to 64 px; SRe²L's 32-px script (SRe2L/*small_dataset/recover_cifar.py) rolls only, which
  `synth_augment='auto'` follows up to 32 px;
- the loss is the teacher's cross-entropy of the target class plus
  `r_bn · Σ_l s_l (‖σ²_l − σ̂²_l‖₂ + ‖μ_l − μ̂_l‖₂)` over every BatchNorm layer's input (mean over
  N, H, W and biased variance of the batch, against the running statistics; plain L2 norms), with
  `s_1 = first_bn_multiplier` and 1 elsewhere; the teacher runs in eval mode;
- after each step the pixels are clipped to the valid range; the last iterate is saved
  (denormalised, clamped to [0, 1], `uint8(x · 255)`), as JPEG by default like the official code.
Batches mix classes (SRe²L: image j of every class together) or hold one class each (LPLD).

The batch is split over the mesh (padded to a multiple of the device count, the padding masked out
of the loss and the BN statistics), so the statistics are the whole batch's on any device count.
Each batch's randomness is a pure function of (seed, batch, iteration) and each image's start of
(seed, class, index), so a killed build resumes at the first unfinished batch and ends with the
same files as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import faults
from hardlabel_jax import image_sets
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import preemption
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import crops

METHODS = config_schema.SYNTHESIZED_SELECTIONS  # ("sre2l", "cda")
BATCHES_DIR = "batches"  # per-batch completion records of a build in progress
_CHUNK_ITERATIONS = 100  # iterations per jitted scan: the unit of progress reports
_STREAM_AUGMENT = 0
_STREAM_INIT = 1
_MIN_SCALE = 0.08  # torchvision RandomResizedCrop's default lower scale
_RATIO = (3 / 4, 4 / 3)


class NoBatchNormError(ValueError):
  """The teacher has no BatchNorm layer whose statistics the synthesis could match."""


def jitter(config: ml_collections.ConfigDict) -> int:
  """The maximum roll: `synth_jitter`, or -1 → 4 up to 64 px (CIFAR, Tiny), 32 above (ImageNet)."""
  if config.synth_jitter >= 0:
    return int(config.synth_jitter)
  return 4 if config.image_size <= 64 else 32


def augment_mode(config: ml_collections.ConfigDict) -> str:
  """`synth_augment`; 'auto' → SRe²L's 'roll' up to 32 px (recover_cifar.py), else 'crop_flip'.

  CDA is its crop curriculum, so 'auto' always crops for it (its scripts: Tiny-ImageNet and up).
  """
  if config.synth_augment != "auto":
    return config.synth_augment
  return "roll" if config.image_size <= 32 and config.selection != "cda" else "crop_flip"


def check_teacher_config(run_config: Mapping[str, Any], where: str) -> None:
  """Raises NoBatchNormError unless the teacher run's model has BatchNorm layers."""
  kwargs = dict(run_config.get("model_kwargs") or {})
  model = models.create_model(run_config["model"], 1, **kwargs)
  if not models.has_batch_norm(model):
    raise NoBatchNormError(
        f"{where}: SRe²L/CDA synthesis matches the teacher's BatchNorm statistics, but its model "
        f"{run_config['model']} {kwargs or ''} has none; use a teacher with "
        "model_kwargs.norm='batch' (ConvNet) or a ResNet")


# ----------------------------------------------------------------------------- the loss


def bn_matching_loss(batch_stats: Sequence[tuple[jax.Array, jax.Array]],
                     running_stats: Sequence[tuple[jax.Array, jax.Array]],
                     first_multiplier: float) -> jax.Array:
  """`Σ_l s_l (‖var_l − running_var_l‖₂ + ‖mean_l − running_mean_l‖₂)`, s_1 = first_multiplier.

  `batch_stats` and `running_stats` are (mean, var) per BN layer in call order (BNFeatureHook in
  SRe2L/recover/utils.py; the norms are not squared).
  """
  total = jnp.zeros((), jnp.float32)
  for layer, ((mean, var), (running_mean,
                            running_var)) in enumerate(zip(batch_stats, running_stats,
                                                           strict=True)):
    scale = first_multiplier if layer == 0 else 1.0
    total += scale * (jnp.linalg.norm(running_var - var) + jnp.linalg.norm(running_mean - mean))
  return total


def forward_with_bn_inputs(
    model: nn.Module, variables: Mapping[str, Any], images: jax.Array, mask: jax.Array
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]], list[tuple[jax.Array, jax.Array]]]:
  """Eval-mode logits, each BN layer's input (mean, biased var) over the real rows, its running.

  The statistics are over N, H, W of the rows with `mask` 1 (padding rows excluded), in float32.
  """
  batch_stats, running = [], []
  weights = mask.astype(jnp.float32)

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      x = args[0].astype(jnp.float32)
      w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
      count = jnp.sum(weights) * math.prod(x.shape[1:-1])
      axes = tuple(range(x.ndim - 1))
      mean = jnp.sum(x * w, axis=axes) / count
      var = jnp.sum(jnp.square(x - mean) * w, axis=axes) / count
      batch_stats.append((mean, var))
      stored = context.module.variables["batch_stats"]
      running.append((stored["mean"], stored["var"]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    logits = model.apply(variables, images, train=False)
  return logits.astype(jnp.float32), batch_stats, running


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-row cross-entropy of the target class, zero on padding rows."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0] * mask


# ----------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Per-iteration augmentation of a batch, `[iterations, ...]`: crop box, flip, roll."""

  box: np.ndarray  # int32 [T, 4]: top, left, height, width
  flip: np.ndarray  # bool [T]
  shift: np.ndarray  # int32 [T, 2]: roll along H, W

  def chunk(self, start: int, stop: int) -> dict[str, np.ndarray]:
    return {
        "box": self.box[start:stop],
        "flip": self.flip[start:stop],
        "shift": self.shift[start:stop]
    }


def min_crop_scale(method: str, iteration: int, iterations: int, milestone: float) -> float:
  """CDA's curriculum (cosine, recover_cda_in1k.py): 1 → 0.08 over `milestone`; SRe²L: 0.08."""
  if method != "cda" or iteration >= milestone * iterations:
    return _MIN_SCALE
  progress = iteration / (milestone * iterations)
  return _MIN_SCALE + (1.0 - _MIN_SCALE) * (1 + math.cos(math.pi * progress)) / 2


def augmentation(config: ml_collections.ConfigDict, batch_index: int) -> Augmentation:
  """The crops, flips and rolls of every iteration of batch `batch_index` (pure in its key)."""
  size, iterations, max_roll = config.image_size, config.synth_iterations, jitter(config)
  box = np.zeros((iterations, 4), np.int32)
  box[:] = (0, 0, size, size)
  flip = np.zeros(iterations, bool)
  shift = np.zeros((iterations, 2), np.int32)
  for it in range(iterations):
    rng = np.random.default_rng(
        np.random.SeedSequence([config.subset_seed, batch_index, it, _STREAM_AUGMENT]))
    if augment_mode(config) == "crop_flip":
      scale = (min_crop_scale(config.selection, it, iterations, config.cda_milestone), 1.0)
      box[it] = crops.random_resized_box(rng, (size, size), scale, _RATIO)
      flip[it] = rng.random() < 0.5
    shift[it] = rng.integers(0, max_roll + 1, size=2)  # random.randint(0, jitter): inclusive
  return Augmentation(box, flip, shift)


def resize_matrix(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
  """`[out, in]` weights of torch's bilinear resize (align_corners=False) of `[start, start+len)`.

  As `F.interpolate(x[start:start+length], out_size, mode='bilinear')` (torchvision's tensor
  resized_crop without antialiasing): source `max((i + ½)·length/out − ½, 0)`, neighbours clamped
  to the crop.
  """
  dst = jnp.arange(out_size, dtype=jnp.float32)
  src = jnp.maximum((dst + 0.5) * (length.astype(jnp.float32) / out_size) - 0.5, 0.0)
  low = jnp.minimum(jnp.floor(src).astype(jnp.int32), length - 1)
  high = jnp.minimum(low + 1, length - 1)
  frac = (src - low)[:, None]
  return (jax.nn.one_hot(start + low, in_size) *
          (1 - frac) + jax.nn.one_hot(start + high, in_size) * frac)


def augment(images: jax.Array, box: jax.Array, flip: jax.Array, shift: jax.Array) -> jax.Array:
  """One crop-resize to the full size and one flip for the whole batch, then the roll."""
  size = images.shape[1]
  rows = resize_matrix(box[0], box[2], size, size)
  cols = resize_matrix(box[1], box[3], size, size)
  out = jnp.einsum("oh,bhwc,pw->bopc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)
  out = jnp.where(flip, out[:, :, ::-1], out)
  return jnp.roll(out, (shift[0], shift[1]), axis=(1, 2))


# ----------------------------------------------------------------------------- optimisation


@dataclasses.dataclass(frozen=True)
class Batch:
  """One optimisation batch: the (class, index-within-class) of each image it makes."""

  index: int
  members: tuple[tuple[int, int], ...]


def plan_batches(num_classes: int, images_per_class: int, batch_size: int,
                 batching: str) -> list[Batch]:
  """SRe²L: for each index j, classes in chunks of `batch_size`; LPLD: per class, index chunks."""
  groups = []
  if batching == "mixed":
    for j in range(images_per_class):
      for first in range(0, num_classes, batch_size):
        groups.append([(c, j) for c in range(first, min(first + batch_size, num_classes))])
  elif batching == "class":
    for c in range(num_classes):
      for first in range(0, images_per_class, batch_size):
        groups.append([(c, j) for j in range(first, min(first + batch_size, images_per_class))])
  else:
    raise ValueError(f"config.synth_batching: {batching!r} is not one of mixed, class")
  return [Batch(i, tuple(g)) for i, g in enumerate(groups)]


def initial_images(seed: int, members: Sequence[tuple[int, int]], rows: int,
                   shape: tuple[int, int, int]) -> np.ndarray:
  """Standard-normal starts, one per (class, index) key; padding rows are zero."""
  out = np.zeros((rows, *shape), np.float32)
  for row, (label, index) in enumerate(members):
    rng = np.random.default_rng(np.random.SeedSequence([seed, label, index, _STREAM_INIT]))
    out[row] = rng.standard_normal(shape, dtype=np.float32)
  return out


@dataclasses.dataclass(frozen=True)
class Bounds:
  """The normalisation of the teacher's data: pixel range in normalised space and back."""

  mean: np.ndarray
  std: np.ndarray

  @property
  def low(self) -> np.ndarray:
    return (0.0 - self.mean) / self.std

  @property
  def high(self) -> np.ndarray:
    return (1.0 - self.mean) / self.std

  def to_uint8(self, images: jax.Array) -> jax.Array:
    """`denormalize` then `(x · 255).astype(uint8)` (truncation), as the official save."""
    pixels = jnp.clip(images * self.std + self.mean, 0.0, 1.0)
    return jnp.floor(pixels * 255.0).astype(jnp.uint8)

  def from_uint8(self, pixels: jax.Array) -> jax.Array:
    return (pixels.astype(jnp.float32) / 255.0 - self.mean) / self.std


class Synthesizer:
  """The jitted optimisation of one batch of images against a frozen BN teacher."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, bounds: Bounds,
               mesh: jax.sharding.Mesh):
    self._config = config
    self._model = model
    self._bounds = bounds
    self._mesh = mesh
    schedule = optax.cosine_decay_schedule(config.synth_lr, config.synth_iterations, alpha=0.0)
    self._optimizer = optax.adam(schedule, b1=0.5, b2=0.9, eps=1e-8)
    sharded, replicated = mesh_lib.batch_sharded(mesh), mesh_lib.replicated(mesh)
    self._init = jax.jit(self._optimizer.init, in_shardings=sharded)
    self._chunk = jax.jit(self._run_chunk, donate_argnums=(0, 1))
    self._final = jax.jit(self._evaluate, in_shardings=(sharded, replicated, sharded, sharded),
                          out_shardings=replicated)
    self._start_bn = jax.jit(
        lambda images, variables, mask: self._logits_and_bn(images, variables, mask)[1])

  def _logits_and_bn(self, images: jax.Array, variables: Any,
                     mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The teacher's eval-mode logits and the batch's BN-matching term."""
    logits, stats, running = forward_with_bn_inputs(self._model, variables, images, mask)
    return logits, bn_matching_loss(stats, running, self._config.synth_first_bn_multiplier)

  def loss(self, images: jax.Array, variables: Any, targets: jax.Array,
           mask: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """CE of the targets + r_bn · BN matching on the (augmented) batch; returns (loss, (ce, bn))."""
    logits, bn = self._logits_and_bn(images, variables, mask)
    ce = jnp.sum(masked_cross_entropy(logits, targets, mask)) / jnp.sum(mask)
    return ce + self._config.synth_r_bn * bn, (ce, bn)

  def _run_chunk(self, images, opt_state, variables, targets, mask, augs):
    """`len(augs)` iterations: augment, step on the images only, clip to the pixel range."""
    low = jnp.asarray(self._bounds.low, jnp.float32)
    high = jnp.asarray(self._bounds.high, jnp.float32)

    def one(carry, aug):
      images, opt_state = carry
      if augment_mode(self._config) == "crop_flip":
        augmented = lambda x: augment(x, aug["box"], aug["flip"], aug["shift"])
      else:  # recover_cifar.py: the roll alone
        augmented = lambda x: jnp.roll(x, (aug["shift"][0], aug["shift"][1]), axis=(1, 2))
      grad_fn = jax.grad(lambda x: self.loss(augmented(x), variables, targets, mask), has_aux=True)
      grads, (ce, bn) = grad_fn(images)
      updates, opt_state = self._optimizer.update(grads, opt_state, images)
      images = jnp.clip(optax.apply_updates(images, updates), low, high)
      return (images, opt_state), (ce, bn)

    (images, opt_state), (ce, bn) = jax.lax.scan(one, (images, opt_state), augs)
    return images, opt_state, ce, bn

  def _evaluate(self, images, variables, targets, mask):
    """The saved pixels, each image's CE and the batch's BN term on them (no augmentation)."""
    pixels = self._bounds.to_uint8(images)
    logits, bn = self._logits_and_bn(self._bounds.from_uint8(pixels), variables, mask)
    correct = jnp.argmax(logits, axis=1) == targets
    return pixels, masked_cross_entropy(logits, targets, mask), correct, bn

  def run(self, batch: Batch, variables: Any, progress: Callable[[int, int, float, float], None]):
    """Optimises one batch; returns uint8 images, per-image CE and correctness, BN before/after."""
    config, shape = self._config, self._image_shape()
    rows = mesh_lib.padded_batch(len(batch.members), self._mesh)
    host = {
        "images": initial_images(config.subset_seed, batch.members, rows, shape),
        "targets": np.array([c for c, _ in batch.members] + [0] * (rows - len(batch.members)),
                            np.int32),
        "mask": np.array([1.0] * len(batch.members) + [0.0] * (rows - len(batch.members)),
                         np.float32),
    }
    arrays = mesh_lib.shard_host_arrays(host, self._mesh)
    images, targets, mask = arrays["images"], arrays["targets"], arrays["mask"]
    bn_start = float(self._start_bn(images, variables, mask))
    opt_state = self._init(images)
    augs = augmentation(config, batch.index)
    for start in range(0, config.synth_iterations, _CHUNK_ITERATIONS):
      stop = min(start + _CHUNK_ITERATIONS, config.synth_iterations)
      chunk = mesh_lib.replicate_host_arrays(augs.chunk(start, stop), self._mesh)
      images, opt_state, ce, bn = self._chunk(images, opt_state, variables, targets, mask, chunk)
      progress(stop - start, stop, float(ce[-1]), float(bn[-1]))
      faults.point("synth_iterations")
    pixels, ce, correct, bn_end = jax.device_get(self._final(images, variables, targets, mask))
    real = len(batch.members)
    return pixels[:real], ce[:real], correct[:real], bn_start, float(bn_end)

  def _image_shape(self) -> tuple[int, int, int]:
    size = self._config.image_size
    return (size, size, len(self._bounds.mean))


# ----------------------------------------------------------------------------- the set


def identity(config: ml_collections.ConfigDict, fingerprint: str,
             teacher_digest: str) -> dict[str, Any]:
  """Everything that defines a synthesised set's content."""
  return {
      "method": config.selection,
      "fingerprint": fingerprint,
      "teacher": teacher_digest,
      "ipc": config.images_per_class,
      "seed": config.subset_seed,
      "image_size": config.image_size,
      "iterations": config.synth_iterations,
      "lr": config.synth_lr,
      "r_bn": config.synth_r_bn,
      "first_bn_multiplier": config.synth_first_bn_multiplier,
      "batch_size": config.synth_batch_size,
      "jitter": jitter(config),
      "batching": config.synth_batching,
      "augment": augment_mode(config),
      "cda_milestone": config.cda_milestone if config.selection == "cda" else None,
      "image_format": config.synth_image_format,
      "normalization": [list(config.normalization_mean),
                        list(config.normalization_std)]
  }


def set_directory(cache_root: str, ident: Mapping[str, Any]) -> str:
  """`<cache>/synthesized/<method>-ipc<n>-<identity digest>`."""
  name = f"{ident['method']}-ipc{ident['ipc']}-{cache.digest(ident)}"
  return os.path.join(cache_root, "synthesized", name)


def _batch_record_path(partial: str, index: int) -> str:
  return os.path.join(partial, BATCHES_DIR, f"{index:06d}.json")


def _write_batch(config: ml_collections.ConfigDict, partial: str, batch: Batch,
                 result: tuple) -> None:
  """A finished batch's images, then its record (written last: the batch counts as done)."""
  pixels, ce, correct, bn_start, bn_end, seconds = result
  extension = image_sets.IMAGE_FORMATS[config.synth_image_format]
  images = []
  for row, (label, index) in enumerate(batch.members):
    name = os.path.join(image_sets.class_directory(label), f"{index:05d}{extension}")
    os.makedirs(os.path.join(partial, os.path.dirname(name)), exist_ok=True)
    image_sets.save_image(np.asarray(pixels[row]), os.path.join(partial, name))
    faults.point("set_image_write")
    images.append({
        "file": name,
        "label": label,
        "index": index,
        "final_ce": float(ce[row]),
        "teacher_correct": bool(correct[row])
    })
  record = {
      "batch": batch.index,
      "bn_loss_start": bn_start,
      "bn_loss_final": bn_end,
      "seconds": seconds,
      "images": images
  }
  os.makedirs(os.path.join(partial, BATCHES_DIR), exist_ok=True)
  metrics_log.write_json_atomic(_batch_record_path(partial, batch.index), record)


def _finished_batches(partial: str) -> set[int]:
  directory = os.path.join(partial, BATCHES_DIR)
  if not os.path.isdir(directory):
    return set()
  return {int(name[:-5]) for name in os.listdir(directory) if name.endswith(".json")}


class _Progress:
  """Iterations/s and ETA over every iteration still to run (the first chunk compiles)."""

  def __init__(self, method: str, num_batches: int, iterations: int, todo_batches: int):
    self._method, self._batches, self._iterations = method, num_batches, iterations
    self._left = todo_batches * iterations
    self._mark = None
    self._measured_iterations, self._measured_seconds = 0, 0.0
    self.batch = 0

  def __call__(self, iterations_done: int, iteration: int, ce: float, bn: float) -> None:
    now = time.perf_counter()
    self._left -= iterations_done
    if self._mark is not None:
      self._measured_iterations += iterations_done
      self._measured_seconds += now - self._mark
    self._mark = now
    if iteration % (5 * _CHUNK_ITERATIONS) and iteration != self._iterations:
      return
    line = (f"{self._method}: batch {self.batch + 1}/{self._batches} iteration "
            f"{iteration}/{self._iterations} | ce {ce:.4g} | bn {bn:.4g}")
    if self._measured_seconds > 0:
      rate = self._measured_iterations / self._measured_seconds
      line += f" | {rate:.1f} it/s | ETA {metrics_log.format_seconds(self._left / rate)}"
    metrics_log.log_line(line)


def build(config: ml_collections.ConfigDict, directory: str, ident: Mapping[str, Any],
          data: run_data.RunData, teacher: teacher_lib.Teacher, mesh: jax.sharding.Mesh, *,
          batch_hook: Callable[[int], None] | None = None) -> str:
  """Synthesises the set `ident` describes into `directory`, resuming a killed build.

  `data` is the teacher's train split (its classes and normalisation); `batch_hook(index)` runs
  after each batch is recorded (tests simulate preemption there).
  """
  if "batch_stats" not in teacher.variables:
    raise NoBatchNormError(f"config.teacher_workdir: the teacher in {teacher.workdir} has no "
                           "BatchNorm statistics; SRe²L/CDA synthesis needs a BN teacher")
  partial = directory + ".partial"
  writer = jax.process_index() == 0
  if os.path.isdir(partial):
    cache.check_identity(partial, ident, "the partly synthesised set")
  elif writer:
    cache.write_identity(partial, ident)
  mesh_lib.sync_processes("synthesis started")
  num_classes = data.train.info.num_classes
  batches = plan_batches(num_classes, config.images_per_class, config.synth_batch_size,
                         config.synth_batching)
  done = _finished_batches(partial)
  todo = [b for b in batches if b.index not in done]
  metrics_log.log_line(
      f"{config.selection}: {config.images_per_class} images per class in {len(batches)} "
      f"batches of up to {config.synth_batch_size} ({config.synth_batching}), "
      f"{config.synth_iterations} iterations each; {len(batches) - len(todo)} already done")
  bounds = Bounds(np.asarray(data.normalizer.mean, np.float32),
                  np.asarray(data.normalizer.std, np.float32))
  synthesizer = Synthesizer(config, teacher.model, bounds, mesh)
  progress = _Progress(config.selection, len(batches), config.synth_iterations, len(todo))
  for batch in todo:
    progress.batch = batch.index
    started = time.perf_counter()
    result = (*synthesizer.run(batch, teacher.variables, progress), time.perf_counter() - started)
    if writer:
      _write_batch(config, partial, batch, result)
    mesh_lib.sync_processes(f"synthesis batch {batch.index}")
    if batch_hook is not None:
      batch_hook(batch.index)
    if batch is not todo[-1] and preemption.stop_requested():
      raise preemption.stop(f"synthesis stopped after batch {batch.index + 1} of {len(batches)} "
                            f"of {partial} (every finished batch is kept)")
  if writer:
    _finish(partial, directory, ident, teacher, len(batches))
  mesh_lib.sync_processes("synthesised set written")
  metrics_log.log_line(f"{config.selection} set ({config.images_per_class} images per class) in "
                       f"{directory}")
  return directory


def _finish(partial: str, directory: str, ident: Mapping, teacher: teacher_lib.Teacher,
            num_batches: int) -> None:
  """provenance.json from the batch records, then the directory renamed into place."""
  records = []
  for index in range(num_batches):
    with open(_batch_record_path(partial, index)) as f:
      records.append(json.load(f))
  images = [image for record in records for image in record["images"]]
  provenance = {
      "identity": dict(ident),
      "teacher": teacher.describe(),
      "batches": [{
          k: r[k] for k in ("batch", "bn_loss_start", "bn_loss_final", "seconds")
      } for r in records],
      "images": sorted(images, key=lambda i: (i["label"], i["index"])),
      "teacher_top1_on_set": float(np.mean([i["teacher_correct"] for i in images])),
      # Wall time of the optimisation, summed over batches (and over sessions when resumed).
      "synthesis_seconds": float(sum(r["seconds"] for r in records)),
  }
  shutil.rmtree(os.path.join(partial, BATCHES_DIR))
  with open(os.path.join(partial, image_sets.PROVENANCE_FILE), "w") as f:
    json.dump(provenance, f, indent=1)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(partial, directory)
