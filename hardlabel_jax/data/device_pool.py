"""Pools on the accelerator: the pool's pixels placed on the devices once, crops made in the step.

The distilled sets this field trains on (10–100 images per class) fit in accelerator memory, so
instead of cropping on the host every epoch (per-example PIL, on the cores XLA also needs) the
pool is put on every device once, and the Grain pipeline sends only what a crop is made of: the
pool position, box, flip, patch orders and CutMix partner (`CropExample.crop_fields`, the same
draws as the host path). `device_crops.crop_batch` then gathers and augments inside one jitted
program, keyed exactly as before, so every crop is still a pure function of (seed, id, slot).

`crop_backend` picks where crops are made: 'host' (PIL), 'device', or 'auto' (the device on GPU
and TPU when the pool fits the budget; the host on the CPU backend, where the kernel shares the
step's cores: faster than PIL for small images, 1.2–1.6× the host cell at 28 px, but its dense
resampling is slower than PIL at 224 px; `benchmarks.cell`). The device
crops equal the host's pixel for pixel; still, a table records the resampler its crops came from,
so its labels are only ever replayed on crops made the same way (`relabel.table_spec`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data.source import ImageSource

HOST = "host"
DEVICE = "device"
AUTO = "auto"
CROP_BACKENDS = (AUTO, HOST, DEVICE)
# The value a table's crop spec records for crops made by `device_crops` (host tables record none,
# as every table did before device crops existed).
DEVICE_RESAMPLER = "device_crops"

# Fields of `CropExample.crop_fields` that only the device kernel reads; `materialize` drops them
# once the crop is made (`cut_box` stays: it is also a stored table row's metadata).
KERNEL_FIELDS = device_crops.OWN_FIELDS + device_crops.PARTNER_FIELDS
# Without a budget set: this share of the smallest device's memory, or on a backend that reports
# none (the CPU backend), this many bytes.
_AUTO_BUDGET_FRACTION = 0.25
_AUTO_BUDGET_BYTES_UNREPORTED = 2 << 30
_ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")


class DevicePoolError(ValueError):
  """A pool that must be on the devices cannot be: too large, or its images differ in shape."""


def planned_backend(crop_backend: str, platform: str | None = None) -> str:
  """Where a config's crops are meant to be made, before the pool is known (for identities).

  'auto' is the device on an accelerator and the host on the CPU backend; a pool over the budget
  still falls back to the host at run time (`choose`).
  """
  if crop_backend not in CROP_BACKENDS:
    raise ValueError(f"crop_backend: must be one of {CROP_BACKENDS}, got {crop_backend!r}")
  if crop_backend != AUTO:
    return crop_backend
  platform = platform or jax.default_backend()
  return DEVICE if platform in _ACCELERATORS else HOST


def pool_shape(source: ImageSource, pool_ids: np.ndarray) -> tuple[int, ...] | None:
  """The one [H, W, C] shape every pool image has, or None when they differ."""
  declared = tuple(source.info.image_shape)
  if declared and all(d is not None and int(d) > 0 for d in declared):
    return tuple(int(d) for d in declared)
  shapes = {tuple(source[int(i)]["image"].shape) for i in pool_ids}
  return shapes.pop() if len(shapes) == 1 else None


def budget_bytes(budget_mb: int, devices: list[jax.Device]) -> int:
  """`device_pool_budget_mb` in bytes; 0: a quarter of the smallest device's memory."""
  if budget_mb > 0:
    return int(budget_mb) << 20
  limits = []
  for device in devices:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
      limits.append(int(stats["bytes_limit"]))
  if not limits:
    return _AUTO_BUDGET_BYTES_UNREPORTED
  return int(min(limits) * _AUTO_BUDGET_FRACTION)


def choose(crop_backend: str, budget_mb: int, source: ImageSource, pool_ids: np.ndarray,
           devices: list[jax.Device]) -> str:
  """The backend a run's crops are made on: `planned_backend`, then the pool's size and shape.

  'device' asked for explicitly and impossible is an error naming the sizes; under 'auto' a pool
  that does not fit, or whose images differ in shape, keeps the host pipeline.
  """
  planned = planned_backend(crop_backend, devices[0].platform if devices else None)
  if planned == HOST:
    return HOST
  shape = pool_shape(source, pool_ids)
  budget = budget_bytes(budget_mb, devices)
  why = None
  if shape is None:
    why = "its images differ in shape (a device pool is one [N, H, W, C] array)"
  else:
    size = len(pool_ids) * int(np.prod(shape))
    if size > budget:
      why = (f"its {len(pool_ids)} images of {shape} take {size / 2**20:.1f} MiB, over the "
             f"device pool budget of {budget / 2**20:.1f} MiB per device "
             "(config.device_pool_budget_mb; 0 = a quarter of the device's memory)")
  if why is None:
    return DEVICE
  if crop_backend == DEVICE:
    raise DevicePoolError(f"config.crop_backend='device': the pool cannot be placed on the "
                          f"devices: {why}. Use crop_backend='host' or 'auto'")
  return HOST


def pool_pixels(source: ImageSource, pool_ids: np.ndarray) -> np.ndarray:
  """The pool's uint8 images in pool order, one [N, H, W, C] array (the device pool's rows)."""
  images = [np.asarray(source[int(i)]["image"]) for i in pool_ids]
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise DevicePoolError(f"a device pool needs images of one shape, got {sorted(shapes)[:3]}")
  pixels = np.stack(images)
  if pixels.dtype != np.uint8:
    raise DevicePoolError(f"a device pool holds uint8 pixels, got {pixels.dtype}")
  return pixels


@dataclasses.dataclass(frozen=True)
class DeviceCrops:
  """A pool on the devices and the jitted program that turns crop fields into a batch's images.

  `batch → batch`: the `KERNEL_FIELDS` are replaced by `image`, the normalised float32 crops,
  sharded over the mesh's data axis as the batch is.
  """

  pixels: jax.Array
  materialize: Callable[[jax.Array, Mapping[str, jax.Array]], dict[str, jax.Array]]
  crop_pixels: Callable[[jax.Array, Mapping[str, jax.Array]], jax.Array]

  def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return self.materialize(self.pixels, batch)

  def uint8_crops(self, batch: Mapping[str, jax.Array]) -> np.ndarray:
    """The batch's crops as host uint8 `[B, S, S, C]` (before normalisation)."""
    return np.asarray(self.crop_pixels(self.pixels, batch))


def _kernel_crops(pixels: jax.Array, batch: Mapping[str, jax.Array],
                  spec: crops.CropSpec) -> jax.Array:
  fields = {k: batch[k] for k in (*KERNEL_FIELDS, "cut_box") if k in batch}
  # Without CutMix in the spec no crop has a partner: the kernel skips the partner crops.
  return device_crops.crop_batch(pixels, fields, output_size=spec.output_size,
                                 shuffle_factor=spec.shuffle_factor, cutmix=spec.cutmix_alpha > 0,
                                 resize=spec.resize)


def materialize_fn(mesh: jax.sharding.Mesh, spec: crops.CropSpec, mean: tuple[float, ...],
                   std: tuple[float, ...], pad_to: int = 0) -> Callable:
  """Jitted `(pixels, batch) -> batch` with the crops of `spec` made and normalised on device.

  `pad_to` > 0 centres each normalised crop in zeros of that size, the odd pixel below and right
  (RDED's scoring view, `distill.PaddedNormalizer`).
  """
  # The normalised value of every uint8 level per channel, computed by the host's own Normalizer:
  # a lookup keeps the device's values bit-identical to the host path's (XLA's division by a
  # constant rounds differently from NumPy's in the last bit on most levels).
  levels = np.arange(256, dtype=np.uint8)[:, None].repeat(len(mean), axis=1)
  lookup = pipeline.Normalizer(tuple(mean), tuple(std))(levels)  # [256, C]

  def fn(pixels: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    crops_ = _kernel_crops(pixels, batch, spec).astype(jnp.int32)  # integers 0..255
    image = jnp.asarray(lookup)[crops_, jnp.arange(len(mean))]
    if pad_to:
      before = (pad_to - spec.output_size) // 2
      after = pad_to - spec.output_size - before
      image = jnp.pad(image, ((0, 0), (before, after), (before, after), (0, 0)))
    out = {k: v for k, v in batch.items() if k not in KERNEL_FIELDS}
    out["image"] = image.astype(jnp.float32)
    return out

  return jax.jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                 out_shardings=mesh_lib.batch_sharded(mesh))


def pixels_fn(mesh: jax.sharding.Mesh, spec: crops.CropSpec) -> Callable:
  """Jitted `(pixels, batch) -> uint8 crops [B, S, S, C]`: the crops themselves (RDED stitches
  the patches it scored)."""
  return jax.jit(lambda pixels, batch: _kernel_crops(pixels, batch, spec).astype(jnp.uint8),
                 in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))


def place(source: ImageSource, pool_ids: np.ndarray, spec: crops.CropSpec, mean: tuple[float, ...],
          std: tuple[float, ...], mesh: jax.sharding.Mesh, pad_to: int = 0) -> DeviceCrops:
  """The pool replicated on every device of `mesh` (every device gathers any example)."""
  pixels = mesh_lib.replicate_host_arrays(pool_pixels(source, pool_ids), mesh)
  return DeviceCrops(pixels, materialize_fn(mesh, spec, mean, std, pad_to), pixels_fn(mesh, spec))
