"""Crops as pure functions of `(seed, example id, slot)` (DESIGN.md §2).

The relabel step and every training pipeline call `crop_image` (RDED's patch shuffle when the spec
asks for it, then `crop_params`) with the same key, so a stored soft label can always be matched to
the exact pixels it was computed on. Randomness comes from a counter-style key (NumPy's
`SeedSequence` hashes the key tuple), never from a stateful generator, so results do not depend on
worker count, process count or iteration order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from hardlabel_jax.data import keyed_draws

# Separate streams so that switching CutMix or the patch shuffle on does not move the crop box.
_STREAM_CROP = 0
_STREAM_CUTMIX = 1
_STREAM_SHUFFLE = 2

CROP_THEN_RESIZE = "crop_then_resize"  # torchvision's F.resized_crop
PIL_BOX = "pil_box"  # PIL's Image.resize(..., box=): the library's crops before 2026-12-04
RESIZE_MODES = (CROP_THEN_RESIZE, PIL_BOX)


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """How training crops are drawn: [ShufflePatches,] RandomResizedCrop, flip and CutMix."""

  output_size: int
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  cutmix_alpha: float = 0.0  # 0 disables CutMix
  shuffle_factor: int = 1  # RDED's ShufflePatches(factor) before the box; 1 is the identity
  # How the box becomes the output: torchvision's `F.resized_crop` (the box cut out, then
  # resized: what every official pipeline does) or PIL's resize of the box within the whole image,
  # which also weighs the pixels just outside the box (this library's crops before 2026-12-04).
  resize: str = CROP_THEN_RESIZE

  def __post_init__(self):
    if self.output_size <= 0:
      raise ValueError(f"crop output_size must be positive, got {self.output_size}")
    if self.shuffle_factor < 1:
      raise ValueError(f"crop shuffle_factor must be >= 1, got {self.shuffle_factor}")
    lo, hi = self.scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
    if not 0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
    if self.cutmix_alpha < 0:
      raise ValueError(f"cutmix_alpha must be >= 0, got {self.cutmix_alpha}")
    if self.resize not in RESIZE_MODES:
      raise ValueError(f"crop resize must be one of {RESIZE_MODES}, got {self.resize!r}")


@dataclasses.dataclass(frozen=True)
class CropParams:
  """One crop: a source box in pixels, a flip bit, and optionally a CutMix partner."""

  top: int
  left: int
  height: int
  width: int
  flip: bool
  # CutMix: position of the partner in the training pool (-1: no CutMix), the pasted box in
  # output pixels, and the label weight of the example itself (1 - pasted area fraction).
  partner_position: int = -1
  cut_top: int = 0
  cut_left: int = 0
  cut_height: int = 0
  cut_width: int = 0
  mix_lambda: float = 1.0

  def box_fractions(self, image_hw: tuple[int, int]) -> np.ndarray:
    """Crop box as (top, left, height, width) fractions of the image, for storage."""
    h, w = image_hw
    return np.array([self.top / h, self.left / w, self.height / h, self.width / w], np.float32)


def _rng(seed: int, example_id: int, slot: int, stream: int) -> np.random.Generator:
  if min(seed, example_id, slot) < 0:
    raise ValueError(f"crop key must be non-negative, got seed={seed} id={example_id} slot={slot}")
  return np.random.default_rng(np.random.SeedSequence([seed, example_id, slot, stream]))


def random_resized_box(rng: np.random.Generator, image_hw: tuple[int, int], scale: tuple[float,
                                                                                         float],
                       ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop."""
  height, width = image_hw
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  return _fallback_box(image_hw, ratio)


def _fallback_box(image_hw: tuple[int, int], ratio: tuple[float,
                                                          float]) -> tuple[int, int, int, int]:
  """RandomResizedCrop's box after ten failed tries: the centre crop clamped to `ratio`."""
  height, width = image_hw
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_boxes(keys: np.ndarray, image_hw: tuple[int, int], scale: tuple[float, float],
                  ratio: tuple[float,
                               float], flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`random_resized_box` and the flip of `crop_params` for each key [N, 4], at once.

  The draws come from the keys' NumPy streams computed together (`keyed_draws.Streams`).
  Returns boxes int64 [N, 4] (top, left, height, width), flips bool [N], and `exact` bool [N]:
  False where the row must be redone with the scalar code (Lemire's rejection, or a rounding
  within 1e-9 of a half-integer, where `np.exp` and `math.exp` could differ in the last bit).
  """
  height, width = image_hw
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  count = len(keys)
  streams = keyed_draws.Streams(keys)
  boxes = np.zeros((count, 4), np.int64)
  exact = np.ones(count, bool)
  found = np.zeros(count, bool)
  for _ in range(10):
    # Only the rows still searching draw a try; the others' streams stay where they stopped.
    searching = ~found
    target_area = area * (scale[0] + (scale[1] - scale[0]) * streams.next_double(searching))
    aspect = np.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * streams.next_double(searching))
    w_real, h_real = np.sqrt(target_area * aspect), np.sqrt(target_area / aspect)
    w, h = np.rint(w_real).astype(np.int64), np.rint(h_real).astype(np.int64)
    near_half = ((np.abs(w_real - np.floor(w_real) - 0.5) < 1e-9 * np.maximum(w_real, 1)) |
                 (np.abs(h_real - np.floor(h_real) - 0.5) < 1e-9 * np.maximum(h_real, 1)))
    fits = searching & (w > 0) & (w <= width) & (h > 0) & (h <= height)
    exact &= ~(searching & near_half)
    boxes[fits, 2], boxes[fits, 3] = h[fits], w[fits]
    found |= fits
    if found.all():
      break
  boxes[~found] = _fallback_box(image_hw, ratio)  # no draws, as the scalar code
  top_range, left_range = height - boxes[:, 2] + 1, width - boxes[:, 3] + 1
  draws_top, draws_left = found & (top_range > 1), found & (left_range > 1)
  top, rejected_top = streams.bounded(draws_top, np.maximum(top_range, 1))
  left, rejected_left = streams.bounded(draws_left, np.maximum(left_range, 1))
  # A box as tall (wide) as the image draws no offset: Generator.integers(0, 1) returns 0.
  boxes[:, 0] = np.where(draws_top, top.astype(np.int64), boxes[:, 0])
  boxes[:, 1] = np.where(draws_left, left.astype(np.int64), boxes[:, 1])
  exact &= ~(rejected_top | rejected_left)
  flips = streams.next_double() < 0.5 if flip else np.zeros(count, bool)
  return boxes, flips, exact


def cutmix_box(rng: np.random.Generator, size: int,
               alpha: float) -> tuple[int, int, int, int, float]:
  """CutMix box on a `size`×`size` crop; returns the box and the area-corrected λ."""
  lam = rng.beta(alpha, alpha)
  cut = int(size * math.sqrt(1.0 - lam))
  cy, cx = int(rng.integers(0, size)), int(rng.integers(0, size))
  y0, y1 = np.clip([cy - cut // 2, cy + cut // 2], 0, size)
  x0, x1 = np.clip([cx - cut // 2, cx + cut // 2], 0, size)
  mix_lambda = 1.0 - (y1 - y0) * (x1 - x0) / (size * size)
  return int(y0), int(x0), int(y1 - y0), int(x1 - x0), float(mix_lambda)


def rded_spec(output_size: int, factor: int, flip: bool = True, cutmix_alpha: float = 0.0,
              resize: str = CROP_THEN_RESIZE) -> CropSpec:
  """RDED's training crops: ShufflePatches(f), RandomResizedCrop scale (1/f, 1), flip, CutMix.

  As LINs-lab/RDED validation/main.py builds them (torchvision's default ratio 3/4–4/3; the
  upper scale is its `--max-scale-crops`, default 1). At factor 1 the shuffle is the identity and
  the box of a square image is the whole image, as in the official CIFAR/Tiny-ImageNet runs.
  """
  return CropSpec(output_size=output_size, scale=(1.0 / factor, 1.0), flip=flip,
                  cutmix_alpha=cutmix_alpha, shuffle_factor=factor, resize=resize)


def whole_image_spec(output_size: int) -> CropSpec:
  """The whole image resized to `output_size`, unflipped: the host view DSA's device ops start from.

  At scale 1 and ratio 1 torchvision's RandomResizedCrop box of a square image is the image
  itself, so a square image already at `output_size` passes through unchanged.
  """
  return CropSpec(output_size=output_size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)


def patch_orders(seed: int, example_id: int, slot: int,
                 factor: int) -> tuple[np.ndarray, np.ndarray]:
  """The column-strip order, then the row-strip order, of ShufflePatches for a crop key."""
  rng = _rng(seed, example_id, slot, _STREAM_SHUFFLE)
  return rng.permutation(factor), rng.permutation(factor)


def strip_bounds(length: int, factor: int) -> tuple[tuple[int, int], ...]:
  """The (start, stop) of each of ShufflePatches' `factor` strips along an axis of `length`.

  As the official code, which compares the pixel offset (not the strip index) with factor - 1:
  strips are `length // factor` wide and a remainder of the axis is dropped (unless an offset
  equals factor - 1, which only tiny images reach: that strip runs to the edge).
  """
  width = length // factor
  return tuple(
      (k * width, length if k * width == factor - 1 else k * width + width) for k in range(factor))


def shuffled_hw(image_hw: tuple[int, int], factor: int) -> tuple[int, int]:
  """The size of an `image_hw` image after ShufflePatches(factor): the size its box is cut from."""
  if factor == 1:
    return tuple(image_hw)
  return tuple(
      sum(stop - start for start, stop in strip_bounds(length, factor)) for length in image_hw)


def _shuffle_columns(image: np.ndarray, factor: int, order: np.ndarray) -> np.ndarray:
  """Cuts the width into `factor` strips and concatenates them in `order` (one pass of RDED's)."""
  strips = [image[:, start:stop] for start, stop in strip_bounds(image.shape[1], factor)]
  return np.concatenate([strips[i] for i in order], axis=1)


def permute_patches(image: np.ndarray, factor: int, column_order: np.ndarray,
                    row_order: np.ndarray) -> np.ndarray:
  """RDED's ShufflePatches with given orders: column strips permuted, then row strips.

  LINs-lab/RDED validation/utils.py `ShufflePatches.forward` shuffles the width strips of a
  [C, H, W] tensor, transposes H and W, shuffles again and transposes back: the patch at grid
  (r, c) of the output is the input's patch (row_order[r], column_order[c]).
  """
  out = _shuffle_columns(image, factor, column_order)
  out = _shuffle_columns(out.transpose(1, 0, 2), factor, row_order).transpose(1, 0, 2)
  return np.ascontiguousarray(out)


def shuffle_patches(image: np.ndarray, seed: int, example_id: int, slot: int,
                    factor: int) -> np.ndarray:
  """ShufflePatches(factor) of an [H, W, C] image for a crop key; the image itself at factor 1."""
  if factor == 1:
    return image
  return permute_patches(image, factor, *patch_orders(seed, example_id, slot, factor))


def crop_params(seed: int, example_id: int, slot: int, image_hw: tuple[int, int], spec: CropSpec,
                pool_size: int = 0) -> CropParams:
  """The crop of `example_id` at `slot`: a pure function of its arguments.

  `image_hw` is the size of the image the box is cut from: after ShufflePatches, when the spec
  shuffles (`crop_image` does both).
  """
  rng = _rng(seed, example_id, slot, _STREAM_CROP)
  top, left, height, width = random_resized_box(rng, image_hw, spec.scale, spec.ratio)
  flip = bool(spec.flip and rng.random() < 0.5)
  if spec.cutmix_alpha <= 0 or pool_size <= 0:
    return CropParams(top, left, height, width, flip)
  mix_rng = _rng(seed, example_id, slot, _STREAM_CUTMIX)
  partner = int(mix_rng.integers(0, pool_size))
  cut_top, cut_left, cut_h, cut_w, lam = cutmix_box(mix_rng, spec.output_size, spec.cutmix_alpha)
  return CropParams(top, left, height, width, flip, partner, cut_top, cut_left, cut_h, cut_w, lam)


def crop_boxes(seed: int, example_ids: np.ndarray, slots: np.ndarray, image_hw: tuple[int, int],
               spec: CropSpec) -> tuple[np.ndarray, np.ndarray]:
  """`crop_params`' boxes (top, left, height, width) int64 [N, 4] and flips bool [N] of many keys.

  The same values as `crop_params` of each key, from NumPy's streams computed for all keys at
  once (`keyed_draws`); the rare rows those cannot settle exactly are drawn one at a time.
  """
  example_ids = np.asarray(example_ids, np.int64)
  slots = np.broadcast_to(np.asarray(slots, np.int64), example_ids.shape)
  if example_ids.size and min(seed, example_ids.min(), slots.min()) < 0:
    raise ValueError(f"crop keys must be non-negative, got seed={seed}, ids from "
                     f"{example_ids.min()}, slots from {slots.min()}")
  keys = np.stack([
      np.full_like(example_ids, seed), example_ids, slots,
      np.full_like(example_ids, _STREAM_CROP)
  ], axis=1)
  boxes, flips, exact = resized_boxes(keys, tuple(image_hw), spec.scale, spec.ratio, spec.flip)
  for i in np.flatnonzero(~exact):
    params = crop_params(seed, int(example_ids[i]), int(slots[i]), tuple(image_hw), spec)
    boxes[i] = (params.top, params.left, params.height, params.width)
    flips[i] = params.flip
  return boxes, flips


def _to_pil(image: np.ndarray) -> Image.Image:
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f"expected a uint8 [H, W, C] image, got {image.dtype} {image.shape}")
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
  out = np.asarray(pil, dtype=np.uint8)
  return out[..., None] if channels == 1 else out


def resized_crop(image: np.ndarray, top: int, left: int, height: int, width: int,
                 size: int) -> np.ndarray:
  """Bilinear resize of a pixel box to `size`×`size`, uint8 in and out (as torchvision)."""
  pil = _to_pil(image).resize((size, size), Image.BILINEAR,
                              box=(left, top, left + width, top + height))
  return _from_pil(pil, image.shape[-1])


def crop_then_resize(image: np.ndarray, top: int, left: int, height: int, width: int,
                     size: int) -> np.ndarray:
  """torchvision's `F.resized_crop` of a PIL image: the pixel box cut out, then resized.

  torchvision/transforms/functional.py `resized_crop` is `crop` (`img.crop((left, top, left +
  width, top + height))`) then `resize` (`img.resize((size, size), BILINEAR)`, skipped when the
  crop already has that size). It differs from `resized_crop` at the box's border, where PIL's
  resample of the whole image (`box=`) also weighs pixels outside the box.
  """
  if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= image.shape[0]
          and left + width <= image.shape[1]):
    raise ValueError(f"crop box (top {top}, left {left}, height {height}, width {width}) is not "
                     f"inside the {image.shape[0]}x{image.shape[1]} image")
  pil = _to_pil(image).crop((left, top, left + width, top + height))
  if pil.size != (size, size):
    pil = pil.resize((size, size), Image.BILINEAR)
  return _from_pil(pil, image.shape[-1])


def apply_crop(image: np.ndarray, params: CropParams, size: int,
               resize: str = CROP_THEN_RESIZE) -> np.ndarray:
  """Applies the box (as `resize` says) and the flip of `params`; CutMix is pasted separately."""
  cut = crop_then_resize if resize == CROP_THEN_RESIZE else resized_crop
  out = cut(image, params.top, params.left, params.height, params.width, size)
  return out[:, ::-1] if params.flip else out


def crop_image(image: np.ndarray, seed: int, example_id: int, slot: int, spec: CropSpec,
               pool_size: int = 0) -> tuple[np.ndarray, CropParams, tuple[int, int]]:
  """A keyed training crop before CutMix: uint8 pixels, parameters, size of the image boxed.

  The box is a part of the patch-shuffled image when the spec shuffles, so its fractions are of
  that image's size (a multiple of the factor).
  """
  shuffled = shuffle_patches(image, seed, example_id, slot, spec.shuffle_factor)
  params = crop_params(seed, example_id, slot, shuffled.shape[:2], spec, pool_size)
  return apply_crop(shuffled, params, spec.output_size, spec.resize), params, shuffled.shape[:2]


def paste_cutmix(crop: np.ndarray, partner_crop: np.ndarray, params: CropParams) -> np.ndarray:
  """Pastes the partner's pixels into the CutMix box of `crop`."""
  out = crop.copy()
  y0, x0 = params.cut_top, params.cut_left
  y1, x1 = y0 + params.cut_height, x0 + params.cut_width
  out[y0:y1, x0:x1] = partner_crop[y0:y1, x0:x1]
  return out


def center_box(image_hw: tuple[int, int], crop_fraction: float) -> tuple[int, int, int]:
  """(top, left, side) of the central square of `crop_fraction` × the short side."""
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
  height, width = image_hw
  side = max(1, int(round(min(height, width) * crop_fraction)))
  return (height - side) // 2, (width - side) // 2, side


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
  """Evaluation view: the central square of `crop_fraction` × the short side, resized."""
  height, width = image.shape[:2]
  top, left, side = center_box((height, width), crop_fraction)
  if side == height == width == size:
    return image
  return resized_crop(image, top, left, side, side, size)
