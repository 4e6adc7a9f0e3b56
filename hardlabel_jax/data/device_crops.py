"""Training and evaluation crops made on the accelerator, pixel for pixel the host's PIL crops.

The host path (`data/crops.py`) cuts every crop with PIL: RDED's ShufflePatches, then
`Image.resize((size, size), BILINEAR, box=...)`, the flip, and the CutMix paste of the partner's
own crop. Here a whole batch of those crops is made inside one jitted program, from a pool of
uint8 images already on the devices and the crop parameters `CropExample.crop_fields` draws on the
host (the same draws as `raw_crop`, so every crop is still a pure function of (seed, id, slot)).

PIL's resampler (Pillow `src/libImaging/Resample.c`, 13.0.0: `precompute_coeffs` l. 227,
`normalize_coeffs_8bpc` l. 314, `ImagingResampleInner` l. 842) is reproduced exactly:
- output pixel i of an axis resized from the box [b0, b0 + n) to `size` is centred at
  `b0 + (i + 0.5)·n/size` (l. 277) and weighs every pixel of the whole image (not only the box)
  inside the triangle filter's support, which scales with the downscale factor max(1, n/size)
  (antialiasing, `support = filterp->support * filterscale`); weights are normalised per pixel;
- weights become fixed point, `(int)(0.5 + w·2^22)` (l. 325), and a pass sums `pixel·coefficient`
  from 2^21 and keeps `sum >> 22` clipped to 0..255 (`clip8`, l. 222): the image between the two
  separable passes is uint8;
- the horizontal pass runs first, unless the height shrinks by more than twice as many pixels as
  the width (`horizontal_first`, l. 865, Pillow PR #9549, since Pillow 13): older Pillows always
  run it first, so the order follows the installed Pillow, as the host crops do.

Why exact. With integer boxes the filter weights are integers over a common denominator: for
pixel j and output i, with D = 2·size·(j − b0) + size − (2i + 1)·n and R = 2·max(n, size), the
weight is max(0, R − |D|)/R, so a normalised weight is a ratio a/N of integers and PIL's rounding of
2^22·a/N (in doubles, error below 1e-9) is the exact round-half-up: a tie would need N ≥ 2^23, and
otherwise 2^22·a/N + 1/2 lies at least 1/(2N) from an integer. The device computes that rounding by
int32 long division. The pass sums are exact too: each coefficient is split into its high bits and
its low 7 bits, and each part is summed by a float32 matmul at HIGHEST precision in which every
partial sum is an integer below 2^24; the two sums recombine in int32 (no TF32, no rounding).

ShufflePatches moves whole rows and columns, so the resize of the shuffled image is the resize of
the pool image with each coefficient moved to its source row or column (`_fold`; the remainder
rule's overlapping strip gives a column two coefficients, whose integer sum is exact); the flip
reverses the output columns' coefficients. The result is float32 on the uint8 grid (0..255).
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import PIL

from hardlabel_jax.data import crops

_PRECISION_BITS = 22  # Pillow's PRECISION_BITS (32 - 8 - 2)
_LOW_BITS = 7  # a coefficient's bits summed by the second matmul
# Per output pixel, the taps whose low parts (< 2^7) times 255 still sum below 2^24 in float32.
_MAX_TAPS = ((1 << 24) - 1) // (255 * ((1 << _LOW_BITS) - 1))
# Pillow's PR #9549 (vertical pass first when the height shrinks much more) shipped in 13.0.
_VERTICAL_FIRST_SINCE = 13
_HORIZONTAL = "bhwc,bsw->bhsc"
_VERTICAL = "bhwc,bth->btwc"
# Fields of `CropExample.crop_fields` that the kernel reads.
OWN_FIELDS = ("pool_index", "crop_box", "crop_flip", "column_order", "row_order")
PARTNER_FIELDS = ("partner_index", "partner_crop_box", "partner_flip", "partner_column_order",
                  "partner_row_order")


def vertical_first(image_hw: tuple[int, int], size: int) -> bool:
  """Whether the installed Pillow resizes an image of `image_hw` to `size`² vertically first."""
  if int(PIL.__version__.split(".")[0]) < _VERTICAL_FIRST_SINCE:
    return False
  height, width = image_hw
  return height - size > 0 and height - size > (width - size) * 2


def _round_ratio(numerator: jax.Array, denominator: jax.Array, max_denominator: int) -> jax.Array:
  """round-half-up(2^22 · numerator / denominator) for 0 <= numerator <= denominator.

  Long division in int32, as many quotient bits a step as keep `remainder · 2^bits` below 2^31
  for denominators up to `max_denominator` (a static bound): 2 steps for the small images of most
  studies. Each step's digit is estimated by a float32 division (XLA's CPU backend does not
  vectorise int32 division) and then corrected: a digit is below 2^22 and the estimate's relative
  error below 2^-22, so it is within one of the true digit. (With IEEE division the estimate only
  ever overshoots, and an uncorrected overshoot happens not to change the rounded result; the
  corrections keep every step's remainder in [0, denominator) on any backend's division.)
  """
  chunk = min(31 - int(max_denominator).bit_length(), _PRECISION_BITS)
  if chunk < 1:
    raise ValueError(f"device crops: a coefficient denominator of {max_denominator} leaves int32")
  quotient = (numerator >= denominator).astype(jnp.int32)  # 0 or 1
  remainder = numerator - quotient * denominator
  divisor = denominator.astype(jnp.float32)
  done = 0
  while done < _PRECISION_BITS:
    bits = min(chunk, _PRECISION_BITS - done)
    remainder = remainder << bits
    digit = jnp.floor(remainder.astype(jnp.float32) / divisor).astype(jnp.int32)
    remainder = remainder - digit * denominator
    under = remainder < 0
    digit, remainder = digit - under, jnp.where(under, remainder + denominator, remainder)
    over = remainder >= denominator
    digit, remainder = digit + over, jnp.where(over, remainder - denominator, remainder)
    quotient = (quotient << bits) + digit
    done += bits
  return quotient + (2 * remainder >= denominator).astype(jnp.int32)


def resample_coefficients(in_size: int, start: jax.Array, length: jax.Array, out_size: int,
                          within_box: bool = False) -> jax.Array:
  """Pillow's fixed-point BILINEAR coefficients, int32 [..., out_size, in_size].

  For the boxes [start, start + length) of an axis of `in_size` pixels (`start` and `length` of
  any batch shape `...`) resized to `out_size`: row i holds `(int)(0.5 + 2^22·w)` of every pixel
  of the axis, zero outside the filter's support. `within_box`: the box is cut out first and then
  resized (torchvision's `F.resized_crop`), so the support stops at the box's edges, as Pillow's
  `precompute_coeffs` clamps `xmin`/`xmax` to the (cropped) image, and the weights left are
  normalised over the box alone.
  """
  start = jnp.asarray(start, jnp.int32)[..., None, None]
  length = jnp.asarray(length, jnp.int32)[..., None, None]
  pixels = jnp.arange(in_size, dtype=jnp.int32)
  outputs = jnp.arange(out_size, dtype=jnp.int32)[:, None]
  # D = 2·out_size·(pixel centre − output centre), an integer; the weight is (R − |D|)/R > 0.
  offset = 2 * out_size * (pixels - start) + out_size - (2 * outputs + 1) * length
  reach = 2 * jnp.maximum(length, out_size)
  weight = jnp.maximum(reach - jnp.abs(offset), 0)
  if within_box:
    weight = jnp.where((pixels >= start) & (pixels < start + length), weight, 0)
  # At least 1: an all-zero row (an unused partner slot's zero box) must not divide by zero.
  total = jnp.maximum(weight.sum(axis=-1, keepdims=True), 1)
  # Every weight is at most the reach 2·max(length, out_size) <= 2·max(in_size, out_size).
  return _round_ratio(weight, total, in_size * 2 * max(in_size, out_size))


def _resample_pass(pixels: jax.Array, coefficients: jax.Array, subscripts: str) -> jax.Array:
  """One of Pillow's 8-bit passes: `clip8((2^21 + Σ pixel·coefficient) >> 22)`, exactly."""
  high = (coefficients >> _LOW_BITS).astype(jnp.float32)
  low = (coefficients & ((1 << _LOW_BITS) - 1)).astype(jnp.float32)
  dot = functools.partial(jnp.einsum, subscripts, precision=jax.lax.Precision.HIGHEST)
  high_sum = dot(pixels, high).astype(jnp.int32)
  low_sum = dot(pixels, low).astype(jnp.int32)
  total = (high_sum << _LOW_BITS) + low_sum + (1 << (_PRECISION_BITS - 1))
  return jnp.clip(total >> _PRECISION_BITS, 0, 255).astype(jnp.float32)


def _resample(images: jax.Array, rows: jax.Array, columns: jax.Array,
              first_vertical: bool) -> jax.Array:
  """[B, H, W, C] → [B, S, S, C] with row coefficients [B, S, H] and column ones [B, S, W]."""
  if first_vertical:
    return _resample_pass(_resample_pass(images, rows, _VERTICAL), columns, _HORIZONTAL)
  return _resample_pass(_resample_pass(images, columns, _HORIZONTAL), rows, _VERTICAL)


def _strip_sources(length: int, factor: int, order: jax.Array) -> jax.Array:
  """[B, shuffled length]: the source index of each position of an axis after ShufflePatches.

  `crops.permute_patches` concatenates the strips of `crops.strip_bounds` in `order` [B, factor].
  """
  bounds = np.asarray(crops.strip_bounds(length, factor), np.int32)
  sizes = jnp.asarray(bounds[:, 1] - bounds[:, 0])[order]
  starts = jnp.asarray(bounds[:, 0])[order]
  ends = jnp.cumsum(sizes, axis=-1)
  positions = jnp.arange(int((bounds[:, 1] - bounds[:, 0]).sum()), dtype=jnp.int32)
  strip = jnp.sum(positions[None, :, None] >= ends[:, None, :], axis=-1)
  offset = positions[None, :] - jnp.take_along_axis(ends - sizes, strip, axis=-1)
  return jnp.take_along_axis(starts, strip, axis=-1) + offset


def _fold(coefficients: jax.Array, sources: jax.Array, length: int) -> jax.Array:
  """Coefficients over shuffled positions [B, S, A] → over source pixels [B, S, length]."""

  def one(coefficient, source):
    # Added, not set: a pixel that the remainder rule repeats keeps both of its coefficients.
    folded = jnp.zeros((coefficient.shape[0], length), coefficient.dtype)
    return folded.at[:, source].add(coefficient)

  return jax.vmap(one)(coefficients, sources)


def _check_pool(pool: jax.Array, boxed_hw: tuple[int, int], size: int) -> None:
  """Refuses (at trace time) pools and sizes whose crops could not equal PIL's."""
  if pool.ndim != 4 or pool.dtype != jnp.uint8:
    raise ValueError(f"device crops need a uint8 pool [N, H, W, C], got {pool.dtype} "
                     f"{tuple(pool.shape)}")
  if pool.shape[-1] not in (1, 3):
    raise ValueError(f"device crops reproduce PIL's L and RGB resampling (1 or 3 channels); the "
                     f"pool has {pool.shape[-1]}")
  if size <= 0 or min(boxed_hw) <= 0:
    raise ValueError(f"device crops need a positive output size and image, got output size {size}"
                     f" from images of {boxed_hw}")
  for length in boxed_hw:
    taps = 2 * -(-length // size) + 1  # Pillow's ksize for the whole axis
    if taps > _MAX_TAPS:
      raise ValueError(f"device crops: resizing {length} pixels to {size} weighs {taps} pixels an "
                       f"output pixel, over the {_MAX_TAPS} whose sums stay exact; use the host "
                       "crops (crop_backend='host')")
    if length * 2 * max(length, size) >= 1 << 30:  # the coefficients' denominators stay in int32
      raise ValueError(f"device crops: an axis of {length} pixels resized to {size} is too large "
                       "for the int32 coefficients; use the host crops (crop_backend='host')")


def _crop_coefficients(box: jax.Array, flip: jax.Array, column_order: jax.Array,
                       row_order: jax.Array, image_hw: tuple[int, int], size: int, factor: int,
                       within_box: bool) -> tuple[jax.Array, jax.Array]:
  """Row [B, S, H] and column [B, S, W] coefficients of crops of the pool's images."""
  boxed_h, boxed_w = crops.shuffled_hw(image_hw, factor)
  box = box.astype(jnp.int32)
  rows = resample_coefficients(boxed_h, box[:, 0], box[:, 2], size, within_box)
  columns = resample_coefficients(boxed_w, box[:, 1], box[:, 3], size, within_box)
  columns = jnp.where(flip.astype(bool)[:, None, None], columns[:, ::-1], columns)
  if factor > 1:
    rows = _fold(rows, _strip_sources(image_hw[0], factor, row_order.astype(jnp.int32)),
                 image_hw[0])
    columns = _fold(columns, _strip_sources(image_hw[1], factor, column_order.astype(jnp.int32)),
                    image_hw[1])
  return rows, columns


def _crops(pool: jax.Array, index: jax.Array, box: jax.Array, flip: jax.Array,
           column_order: jax.Array, row_order: jax.Array, size: int, factor: int,
           resize: str) -> jax.Array:
  """ShufflePatches, resized box and flip of pool rows `index` [B]: float32 [B, S, S, C]."""
  image_hw = tuple(pool.shape[1:3])
  within_box = resize == crops.CROP_THEN_RESIZE
  rows, columns = _crop_coefficients(box, flip, column_order, row_order, image_hw, size, factor,
                                     within_box)
  images = pool[index.astype(jnp.int32)].astype(jnp.float32)
  if not within_box:  # Pillow picks the pass order from the whole (shuffled) image
    return _resample(images, rows, columns, vertical_first(crops.shuffled_hw(image_hw, factor),
                                                           size))
  if int(PIL.__version__.split(".")[0]) < _VERTICAL_FIRST_SINCE:
    return _resample(images, rows, columns, False)
  if crops.shuffled_hw(image_hw, factor)[0] <= size:  # no box is taller than the output
    return _resample(images, rows, columns, False)
  # The image resized is the crop itself, so the order is the crop's: both made, one kept.
  height, width = box[:, 2].astype(jnp.int32), box[:, 3].astype(jnp.int32)
  first_vertical = (height - size > 0) & (height - size > (width - size) * 2)
  return jnp.where(first_vertical[:, None, None, None], _resample(images, rows, columns, True),
                   _resample(images, rows, columns, False))


def _box_mask(box: jax.Array, size: int) -> jax.Array:
  """[B, S, S]: inside the (top, left, height, width) boxes [B, 4]."""
  box = box.astype(jnp.int32)
  pixels = jnp.arange(size, dtype=jnp.int32)
  rows = (pixels >= box[:, 0:1]) & (pixels < box[:, 0:1] + box[:, 2:3])
  columns = (pixels >= box[:, 1:2]) & (pixels < box[:, 1:2] + box[:, 3:4])
  return rows[:, :, None] & columns[:, None, :]


@functools.partial(jax.jit, static_argnames=("output_size", "shuffle_factor", "cutmix", "resize"))
def crop_batch(pool: jax.Array, fields: Mapping[str, jax.Array], *, output_size: int,
               shuffle_factor: int, cutmix: bool = True,
               resize: str = crops.CROP_THEN_RESIZE) -> jax.Array:
  """The training crops of a batch, float32 [B, S, S, C] on the uint8 grid, as the host makes them.

  `pool`: uint8 [N, H, W, C], the pool's images in pool order. `fields` (batched
  `CropExample.crop_fields`): `pool_index` [B] (pool rows), `crop_box` [B, 4] (top, left,
  height, width in pixels of the patch-shuffled image), `crop_flip` [B], `column_order` and
  `row_order` [B, factor]; the same five for the CutMix partner (`partner_index` -1: none), and
  `cut_box` [B, 4] (output pixels taken from the partner's own crop; zeros: none).
  `cutmix=False` makes no partner crops (every `partner_index` must then be -1): half the work
  for specs without CutMix.
  """
  factor = int(shuffle_factor)
  _check_pool(pool, crops.shuffled_hw(tuple(pool.shape[1:3]), factor), output_size)
  if resize not in crops.RESIZE_MODES:
    raise ValueError(f"device crops: resize must be one of {crops.RESIZE_MODES}, got {resize!r}")
  make = functools.partial(_crops, pool, size=output_size, factor=factor, resize=resize)
  if not cutmix:
    return make(*(fields[k] for k in OWN_FIELDS))
  partner = dict(zip(OWN_FIELDS, (fields[k] for k in PARTNER_FIELDS), strict=True))
  partner["pool_index"] = jnp.maximum(partner["pool_index"], 0)  # unused rows: any valid row
  # One program for both: the pair axis is vmapped, so the batch axis stays where it is sharded.
  both = {k: jnp.stack([jnp.asarray(fields[k]), jnp.asarray(partner[k])]) for k in OWN_FIELDS}
  own_pixels, partner_pixels = jax.vmap(make)(*(both[k] for k in OWN_FIELDS))
  inside = _box_mask(fields["cut_box"], output_size)
  return jnp.where(inside[..., None], partner_pixels, own_pixels)


@functools.partial(jax.jit, static_argnames=("size", "crop_fraction"))
def center_batch(pool: jax.Array, pool_index: jax.Array, *, size: int,
                 crop_fraction: float) -> jax.Array:
  """`crops.center_crop` of pool rows `pool_index` [B]: float32 [B, size, size, C], uint8 grid."""
  image_hw = tuple(pool.shape[1:3])
  _check_pool(pool, image_hw, size)
  top, left, side = crops.center_box(image_hw, crop_fraction)
  images = pool[pool_index.astype(jnp.int32)].astype(jnp.float32)
  if side == image_hw[0] == image_hw[1] == size:
    return images
  batch = (images.shape[0],)
  rows = jnp.broadcast_to(resample_coefficients(image_hw[0], top, side, size), batch +
                          (size, image_hw[0]))
  columns = jnp.broadcast_to(resample_coefficients(image_hw[1], left, side, size), batch +
                             (size, image_hw[1]))
  return _resample(images, rows, columns, vertical_first(image_hw, size))
