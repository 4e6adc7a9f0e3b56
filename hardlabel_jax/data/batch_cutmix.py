"""CutMix of a whole batch with itself reversed, on the device: timm `Mixup(mode='batch')`.

HALD's hard phase (`Jiacheng8/HALD` `validate/train_fkd.py`: `Mixup(mixup_alpha=0.0,
cutmix_alpha=1.0, label_smoothing=args.label_smoothing, num_classes=args.ncls)`, applied to every
hard batch) draws one λ ~ Beta(α, α) and one box per batch and pastes the box from the batch in
reverse order (`x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]`). timm's `rand_bbox`: a
square-ratio box of `int(H·√(1−λ))` × `int(W·√(1−λ))` centred at a uniform pixel, clipped to the
image; `correct_lam` (timm's default) sets λ to the share of the image left unpasted. The targets
are `λ·smooth(y) + (1−λ)·smooth(y reversed)` (`mixup_target`).

Here the draw is keyed by `(seed, step)`, so the step is a pure function of the run's key and the
global batch: the same on 1 and 8 devices, and the same after a resume. Images are NHWC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cutmix_box(key: jax.Array, height: int, width: int,
               alpha: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm `cutmix_bbox_and_lam` with `rand_bbox`: (yl, yh, xl, xh, corrected λ) as int32/float32."""
  lam_key, y_key, x_key = jax.random.split(key, 3)
  lam = jax.random.beta(lam_key, alpha, alpha).astype(jnp.float32)
  return box_for_lambda(lam, jax.random.randint(y_key, (), 0, height),
                        jax.random.randint(x_key, (), 0, width), height, width)


def box_for_lambda(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
                   width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The box of λ centred at (cy, cx) and the area-corrected λ (timm `rand_bbox` arithmetic)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int(img_h * ratio), ratio >= 0
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  yl = jnp.clip(cy - cut_h // 2, 0, height)
  yh = jnp.clip(cy + cut_h // 2, 0, height)
  xl = jnp.clip(cx - cut_w // 2, 0, width)
  xh = jnp.clip(cx + cut_w // 2, 0, width)
  corrected = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / float(height * width)
  return yl, yh, xl, xh, corrected


def paste_reversed(images: jax.Array, yl: jax.Array, yh: jax.Array, xl: jax.Array,
                   xh: jax.Array) -> jax.Array:
  """`images` with the box [yl, yh) × [xl, xh) of every image taken from the reversed batch."""
  rows = jnp.arange(images.shape[1])[:, None]
  cols = jnp.arange(images.shape[2])[None, :]
  inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  return jnp.where(inside[None, :, :, None], jnp.flip(images, axis=0), images)


def mix_batch(images: jax.Array, key: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """One CutMix draw for the whole batch: (mixed images, corrected λ)."""
  yl, yh, xl, xh, lam = cutmix_box(key, images.shape[1], images.shape[2], alpha)
  return paste_reversed(images, yl, yh, xl, xh), lam


def mixed_targets(own: jax.Array, lam: jax.Array) -> jax.Array:
  """timm `mixup_target` on (smoothed) targets `[batch, C]`: λ·own + (1−λ)·own reversed."""
  return lam * own + (1.0 - lam) * jnp.flip(own, axis=0)
