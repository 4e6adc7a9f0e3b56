"""Differentiable Siamese Augmentation (DSA) as a pure, jittable JAX function.

A port of `DiffAugment` and its `rand_*` ops from the official Dataset Condensation code
(VICO-UoE/DatasetCondensation, `utils.py`), which the DC/DSA/DM evaluation protocol applies to the
(already normalised) training images of every step. The formulas are transcribed one by one, so a
model trained on a distilled set here sees the same augmentation distribution as under the official
code; only the random stream differs (JAX keys instead of torch's global generator).

Layout: the official tensors are NCHW, ours are NHWC `[batch, height, width, channels]`. The
official "x" axis of `rand_crop`/`rand_cutout` is dim 2 (height) and "y" is dim 3 (width); `flip(3)`
flips the width; `F.affine_grid` puts width in grid[..., 0] and height in grid[..., 1].

Randomness is a pure function of the key. `augment` splits its key once into `(op_key,
param_key)`: mode 'S' draws the op index from `op_key` and that op's parameters from `param_key`;
mode 'M' gives the op at position `i` of the strategy `fold_in(param_key, i)` (see
`op_param_key`). Inside one op the key is split into one key per official `torch.rand`/`randint`
call, in the official order. Every per-image draw is one `[batch]`-shaped array drawn from the key,
so image `i`'s parameters depend only on `(key, i, batch)`, never on how the batch is sharded.

Official behaviours that are easy to get wrong, pinned here and in tests/test_dsa.py:
  * `evaluate_synset`/`epoch` call `DiffAugment(img, strategy, param=...)` with the default
    `seed=-1`, i.e. `param.Siamese = False`: every image gets its own parameters. With a seed
    (`Siamese = True`, the real/synthetic pair of DSA's gradient matching) all images share the
    first image's draw; `siamese=True` here draws once and broadcasts it.
  * Mode 'S' draws ONE op of the strategy (uniformly over the '_'-split list, duplicates
    included) per call and applies it with per-image parameters; 'color' is brightness,
    saturation, contrast in that order. Mode 'M' applies every op in order.
  * `F.affine_grid`/`F.grid_sample` are called with their defaults: bilinear, zeros padding, and no
    `align_corners`. On torch >= 1.3 that means align_corners=False (the default here); the
    repository's requirements.txt pins torch 1.2.0, whose only behaviour equals align_corners=True
    (`DSAParams.align_corners`). The two settings give identical results on square images (all of
    DC's data sets) because the scale/rotate matrices have no translation; they differ only when
    rotating a non-square image.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
# The keys of the official `AUGMENT_FNS`, in its order.
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
# `DiffAugment` returns its input unchanged for these strategy strings.
_NO_AUGMENTATION = ("", "none", "None")


@dataclasses.dataclass(frozen=True)
class DSAParams:
  """The official `ParamDiffAug` (utils.py), with its defaults.

  `align_corners` is not an official field: it makes explicit which torch version's
  `affine_grid`/`grid_sample` default the scale and rotate ops follow (see the module docstring).
  """

  aug_mode: str = "S"  # 'S': one random op of the strategy per batch; 'M': all ops in order
  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0  # degrees
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5  # the cutout box is 0.5 x 0.5 of the image
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  align_corners: bool = False  # torch >= 1.3 default; True reproduces the pinned torch 1.2.0

  def __post_init__(self):
    # The official `DiffAugment` exits on any other mode.
    if self.aug_mode not in ("S", "M"):
      raise ValueError(f"unknown DSA aug_mode {self.aug_mode!r}: expected 'S' or 'M'")


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """The ops of a strategy string such as 'color_crop_cutout_flip_scale_rotate', in order.

  As `DiffAugment`: '', 'none' and 'None' mean no augmentation (`()`); otherwise the string is
  split on '_' and duplicates are kept (they weight mode 'S''s uniform choice). Unknown names
  raise here, at trace time, instead of the official `KeyError` inside the training loop.
  """
  if strategy in _NO_AUGMENTATION:
    return ()
  ops = tuple(strategy.split("_"))
  for op in ops:
    if op not in OPS:
      raise ValueError(f"unknown DSA op {op!r} in strategy {strategy!r}; valid ops: "
                       f"{', '.join(OPS)}")
  return ops


# ------------------------------------------------------------------------------------------------
# Sizes derived from the image shape (Python ints, as the official code computes them).


def crop_shift(height: int, width: int, ratio: float = 0.125) -> tuple[int, int]:
  """Largest translation of `rand_crop` along height and width: `int(size * ratio + 0.5)`."""
  return int(height * ratio + 0.5), int(width * ratio + 0.5)


def cutout_size(height: int, width: int, ratio: float = 0.5) -> tuple[int, int]:
  """Side lengths of `rand_cutout`'s box: `int(size * ratio + 0.5)`."""
  return int(height * ratio + 0.5), int(width * ratio + 0.5)


# ------------------------------------------------------------------------------------------------
# The ops, each on explicit per-image draws (so tests can feed hand-made ones).


def _per_image(r: jax.typing.ArrayLike, dtype) -> jax.Array:
  """A `[batch]` draw as `[batch, 1, 1, 1]`, like the official `torch.rand(N, 1, 1, 1)`."""
  return jnp.asarray(r, dtype).reshape(-1, 1, 1, 1)


def brightness(x: jax.Array, r: jax.typing.ArrayLike, ratio: float = 1.0) -> jax.Array:
  """`rand_brightness`: `x + (r - 0.5) * ratio`, with `r` in [0, 1) per image."""
  return x + (_per_image(r, x.dtype) - 0.5) * ratio


def saturation(x: jax.Array, r: jax.typing.ArrayLike, ratio: float = 2.0) -> jax.Array:
  """`rand_saturation`: mix with the per-pixel channel mean, `(x - m) * (r * ratio) + m`."""
  x_mean = jnp.mean(x, axis=3, keepdims=True)  # official x.mean(dim=1): over channels
  return (x - x_mean) * (_per_image(r, x.dtype) * ratio) + x_mean


def contrast(x: jax.Array, r: jax.typing.ArrayLike, ratio: float = 0.5) -> jax.Array:
  """`rand_contrast`: scale around the per-image mean, `(x - m) * (r + ratio) + m`."""
  x_mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)  # official dim=[1, 2, 3]
  return (x - x_mean) * (_per_image(r, x.dtype) + ratio) + x_mean


def flip(x: jax.Array, flip_mask: jax.typing.ArrayLike) -> jax.Array:
  """`rand_flip`: mirror the width of the images where `flip_mask` (official `rand < prob`)."""
  mask = jnp.asarray(flip_mask, bool).reshape(-1, 1, 1, 1)
  return jnp.where(mask, x[:, :, ::-1, :], x)  # official x.flip(3) on NCHW: the width


def crop(x: jax.Array, shift_h: jax.typing.ArrayLike, shift_w: jax.typing.ArrayLike) -> jax.Array:
  """`rand_crop`: translate by integer shifts, filling with zeros.

  Official index arithmetic: pad one zero pixel on each side, then output pixel (i, j) reads
  padded pixel `(clamp(i + shift_h + 1, 0, H + 1), clamp(j + shift_w + 1, 0, W + 1))`; every tap
  beyond the image lands on the clamped zero border. `shift_h` is the official `translation_x`
  (dim 2), `shift_w` is `translation_y` (dim 3).
  """
  _, h, w, _ = x.shape
  shift_h = jnp.asarray(shift_h, jnp.int32).reshape(-1, 1)
  shift_w = jnp.asarray(shift_w, jnp.int32).reshape(-1, 1)
  rows = jnp.clip(jnp.arange(h, dtype=jnp.int32)[None, :] + shift_h + 1, 0, h + 1)  # [N, H]
  cols = jnp.clip(jnp.arange(w, dtype=jnp.int32)[None, :] + shift_w + 1, 0, w + 1)  # [N, W]
  x_pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # take_along_axis rather than vmapped indexing: it also works with the batch sharded over an
  # explicit-sharding mesh while the draws are replicated.
  x_rows = jnp.take_along_axis(x_pad, rows[:, :, None, None], axis=1)  # [N, H, W + 2, C]
  return jnp.take_along_axis(x_rows, cols[:, None, :, None], axis=2)


def cutout(x: jax.Array, off_h: jax.typing.ArrayLike, off_w: jax.typing.ArrayLike,
           ratio: float = 0.5) -> jax.Array:
  """`rand_cutout`: zero a `cutout_size` box whose centre is the per-image offset.

  Official: the box indices `k + offset - size // 2` for `k < size` are clamped to the image and
  the mask is zeroed there. The clamp is monotone, so the zeroed rows are exactly
  `[clamp(lo), clamp(lo + size - 1)]` (likewise columns), which is what the comparisons below
  compute without a scatter. The mask multiplies the image, as officially.
  """
  _, h, w, _ = x.shape
  size_h, size_w = cutout_size(h, w, ratio)

  def in_box(offset, size, length):
    pos = jnp.arange(length, dtype=jnp.int32)[None, :]
    if size == 0:  # official arange(0): nothing is zeroed
      return jnp.zeros((1, length), bool)
    lo = jnp.asarray(offset, jnp.int32).reshape(-1, 1) - size // 2
    return ((pos >= jnp.clip(lo, 0, length - 1)) & (pos <= jnp.clip(lo + size - 1, 0, length - 1)))

  box = in_box(off_h, size_h, h)[:, :, None] & in_box(off_w, size_w, w)[:, None, :]  # [N, H, W]
  mask = jnp.where(box, 0, 1).astype(x.dtype)
  return x * mask[..., None]


def _linspace_from_neg_one(num_steps: int, align_corners: bool) -> jax.Array:
  """ATen's `linspace_from_neg_one` (the base grid of `affine_grid`), in float32."""
  if num_steps <= 1:
    return jnp.zeros((1,), jnp.float32)
  steps = jnp.linspace(-1.0, 1.0, num_steps, dtype=jnp.float32)
  if not align_corners:
    steps = steps * (num_steps - 1) / num_steps
  return steps


def affine_grid(theta: jax.Array, height: int, width: int,
                align_corners: bool = False) -> jax.Array:
  """`F.affine_grid(theta, [N, C, H, W])`: `[N, H, W, 2]` sampling positions (x = width, y = height)
  in [-1, 1] coordinates, `grid[n, i, j] = theta[n] @ (x_j, y_i, 1)`."""
  theta = jnp.asarray(theta, jnp.float32)
  xs = _linspace_from_neg_one(width, align_corners)[None, None, :]
  ys = _linspace_from_neg_one(height, align_corners)[None, :, None]
  t = theta[:, :, :, None, None]  # [N, 2, 3, 1, 1]
  gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
  gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
  return jnp.stack([gx, gy], axis=-1)


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  """ATen's `grid_sampler_unnormalize`: [-1, 1] to pixel index space."""
  if align_corners:
    return (coord + 1) / 2 * (size - 1)
  return ((coord + 1) * size - 1) / 2


def grid_sample(x: jax.Array, grid: jax.Array, align_corners: bool = False) -> jax.Array:
  """`F.grid_sample(x, grid)` with mode='bilinear', padding_mode='zeros', on NHWC images.

  ATen's bilinear kernel: the four taps around the sampling point, weighted by the opposite
  rectangle's area; a tap outside the image contributes nothing (zeros padding is per tap, not a
  clamp of the point). Computed in float32 and returned in `x.dtype`.
  """
  n, h, w, c = x.shape
  ix = _unnormalize(grid[..., 0], w, align_corners).reshape(n, -1)  # [N, Ho * Wo]
  iy = _unnormalize(grid[..., 1], h, align_corners).reshape(n, -1)
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  x1 = x0 + 1
  y1 = y0 + 1
  flat = x.astype(jnp.float32).reshape(n, h * w, c)

  def tap(yy, xx, weight):
    valid = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
    index = (jnp.clip(yy, 0, h - 1).astype(jnp.int32) * w
             + jnp.clip(xx, 0, w - 1).astype(jnp.int32))
    # take_along_axis (not vmapped indexing): works with the batch sharded on any mesh.
    value = jnp.take_along_axis(flat, index[:, :, None], axis=1)  # [N, Ho * Wo, C]
    return jnp.where(valid[..., None], value * weight[..., None], 0.0)

  nw = tap(y0, x0, (x1 - ix) * (y1 - iy))
  ne = tap(y0, x1, (ix - x0) * (y1 - iy))
  sw = tap(y1, x0, (x1 - ix) * (iy - y0))
  se = tap(y1, x1, (ix - x0) * (iy - y0))
  out = nw + ne + sw + se  # ATen's order of summation
  return out.reshape((n,) + grid.shape[1:3] + (c,)).astype(x.dtype)


def scale(x: jax.Array, sx: jax.typing.ArrayLike, sy: jax.typing.ArrayLike,
          align_corners: bool = False) -> jax.Array:
  """`rand_scale`: resample with `theta = [[sx, 0, 0], [0, sy, 0]]` (sx scales the width).

  `sx`, `sy` > 1 shrink the content (the grid reaches past the image, zeros come in); < 1 enlarge.
  """
  _, h, w, _ = x.shape
  sx = jnp.asarray(sx, jnp.float32).reshape(-1)
  sy = jnp.asarray(sy, jnp.float32).reshape(-1)
  zero = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], axis=1)
  return grid_sample(x, affine_grid(theta, h, w, align_corners), align_corners)


def rotate(x: jax.Array, theta: jax.typing.ArrayLike, align_corners: bool = False) -> jax.Array:
  """`rand_rotate`: resample with `[[cos t, sin(-t), 0], [sin t, cos t, 0]]`, `t` in radians."""
  _, h, w, _ = x.shape
  t = jnp.asarray(theta, jnp.float32).reshape(-1)
  zero = jnp.zeros_like(t)
  mat = jnp.stack([
      jnp.stack([jnp.cos(t), jnp.sin(-t), zero], -1),
      jnp.stack([jnp.sin(t), jnp.cos(t), zero], -1)
  ], axis=1)
  return grid_sample(x, affine_grid(mat, h, w, align_corners), align_corners)


# ------------------------------------------------------------------------------------------------
# Parameter draws, with the official distributions. `torch.rand` is uniform on [0, 1) like
# `jax.random.uniform`; `torch.randint(low, high)` and `jax.random.randint(low, high)` both exclude
# `high`. `siamese=True` draws once and broadcasts (the official `param.Siamese` branch).


def _uniform(key: jax.Array, batch: int, siamese: bool) -> jax.Array:
  u = jax.random.uniform(key, (1 if siamese else batch,), jnp.float32)
  return jnp.broadcast_to(u, (batch,))


def _randint(key: jax.Array, batch: int, low: int, high: int, siamese: bool) -> jax.Array:
  r = jax.random.randint(key, (1 if siamese else batch,), low, high, jnp.int32)
  return jnp.broadcast_to(r, (batch,))


def draw_brightness(key: jax.Array, batch: int, *, siamese: bool = False) -> jax.Array:
  """`rand_brightness`'s `randb = torch.rand(N, 1, 1, 1)`: `[batch]` uniform [0, 1)."""
  return _uniform(key, batch, siamese)


def draw_saturation(key: jax.Array, batch: int, *, siamese: bool = False) -> jax.Array:
  """`rand_saturation`'s `rands = torch.rand(N, 1, 1, 1)`: `[batch]` uniform [0, 1)."""
  return _uniform(key, batch, siamese)


def draw_contrast(key: jax.Array, batch: int, *, siamese: bool = False) -> jax.Array:
  """`rand_contrast`'s `randc = torch.rand(N, 1, 1, 1)`: `[batch]` uniform [0, 1)."""
  return _uniform(key, batch, siamese)


def draw_flip(key: jax.Array, batch: int, prob: float = 0.5, *, siamese: bool = False) -> jax.Array:
  """`rand_flip`'s `torch.rand(N, 1, 1, 1) < prob`: a `[batch]` bool mask."""
  return _uniform(key, batch, siamese) < prob


def draw_scale(key: jax.Array, batch: int, ratio: float = 1.2, *,
               siamese: bool = False) -> tuple[jax.Array, jax.Array]:
  """`rand_scale`'s `sx`, `sy = rand * (ratio - 1 / ratio) + 1 / ratio`, in [1/ratio, ratio)."""
  key_x, key_y = jax.random.split(key)
  sx = _uniform(key_x, batch, siamese) * (ratio - 1.0 / ratio) + 1.0 / ratio
  sy = _uniform(key_y, batch, siamese) * (ratio - 1.0 / ratio) + 1.0 / ratio
  return sx, sy


def draw_rotate(key: jax.Array, batch: int, ratio: float = 15.0, *,
                siamese: bool = False) -> jax.Array:
  """`rand_rotate`'s angle `(rand - 0.5) * 2 * ratio / 180 * pi` radians: within +-ratio degrees."""
  return (_uniform(key, batch, siamese) - 0.5) * 2 * ratio / 180 * float(np.pi)


def draw_crop(key: jax.Array, batch: int, height: int, width: int, ratio: float = 0.125, *,
              siamese: bool = False) -> tuple[jax.Array, jax.Array]:
  """`rand_crop`'s translations: `randint(-s, s + 1)` per axis, `s = crop_shift(...)`."""
  s_h, s_w = crop_shift(height, width, ratio)
  key_h, key_w = jax.random.split(key)
  return (_randint(key_h, batch, -s_h, s_h + 1,
                   siamese), _randint(key_w, batch, -s_w, s_w + 1, siamese))


def draw_cutout(key: jax.Array, batch: int, height: int, width: int, ratio: float = 0.5, *,
                siamese: bool = False) -> tuple[jax.Array, jax.Array]:
  """`rand_cutout`'s centres: `randint(0, size + (1 - box % 2))` per axis.

  So the centre ranges over [0, size - 1] for an odd box and [0, size] for an even one (official
  bounds, kept as they are).
  """
  size_h, size_w = cutout_size(height, width, ratio)
  key_h, key_w = jax.random.split(key)
  return (_randint(key_h, batch, 0, height + (1 - size_h % 2),
                   siamese), _randint(key_w, batch, 0, width + (1 - size_w % 2), siamese))


# ------------------------------------------------------------------------------------------------
# DiffAugment.


def apply_op(op: str, x: jax.Array, key: jax.Array, params: DSAParams = DSAParams(), *,
             siamese: bool = False) -> jax.Array:
  """One entry of the official `AUGMENT_FNS`: draw its parameters from `key` and apply it.

  The key is split into one key per official random call, in the official order (brightness,
  saturation, contrast for 'color'; x then y for crop, cutout and scale). Returns `x.dtype`.
  """
  n, h, w, _ = x.shape
  if op == "color":
    key_b, key_s, key_c = jax.random.split(key, 3)
    y = brightness(x, draw_brightness(key_b, n, siamese=siamese), params.brightness)
    y = saturation(y, draw_saturation(key_s, n, siamese=siamese), params.saturation)
    y = contrast(y, draw_contrast(key_c, n, siamese=siamese), params.contrast)
  elif op == "crop":
    y = crop(x, *draw_crop(key, n, h, w, params.ratio_crop_pad, siamese=siamese))
  elif op == "cutout":
    off_h, off_w = draw_cutout(key, n, h, w, params.ratio_cutout, siamese=siamese)
    y = cutout(x, off_h, off_w, params.ratio_cutout)
  elif op == "flip":
    y = flip(x, draw_flip(key, n, params.prob_flip, siamese=siamese))
  elif op == "scale":
    sx, sy = draw_scale(key, n, params.ratio_scale, siamese=siamese)
    y = scale(x, sx, sy, params.align_corners)
  elif op == "rotate":
    y = rotate(x, draw_rotate(key, n, params.ratio_rotate, siamese=siamese), params.align_corners)
  else:
    raise ValueError(f"unknown DSA op {op!r}; valid ops: {', '.join(OPS)}")
  return y.astype(x.dtype)


def draw_op_index(key: jax.Array, num_ops: int) -> jax.Array:
  """Mode 'S''s choice `torch.randint(0, len(ops))`, from the op half of `augment`'s key."""
  op_key, _ = jax.random.split(key)
  return jax.random.randint(op_key, (), 0, num_ops)


def op_param_key(key: jax.Array, position: int, aug_mode: str = "S") -> jax.Array:
  """The key from which `augment(images, key, ...)` draws the parameters of the op at
  `position` of the strategy: the parameter half of the key, folded with the position in mode
  'M' (so that two occurrences of an op draw independently)."""
  _, param_key = jax.random.split(key)
  return jax.random.fold_in(param_key, position) if aug_mode == "M" else param_key


def augment(images: jax.Array, key: jax.Array, strategy: str = DEFAULT_STRATEGY,
            params: DSAParams = DSAParams(), *, siamese: bool = False) -> jax.Array:
  """The official `DiffAugment(x, strategy, seed=-1, param=ParamDiffAug())` on NHWC images.

  Pure in `(images, key)` and jittable with `strategy`, `params` and `siamese` static: pass a key
  such as `fold_in(fold_in(PRNGKey(seed), step), ...)` and a resumed run replays the same
  augmentation. Differentiable in `images` (DSA backpropagates through it). Output has the
  input's shape and dtype.
  """
  ops = parse_strategy(strategy)
  if not ops:
    return images
  if images.ndim != 4:
    raise ValueError(f"DSA expects NHWC images [batch, height, width, channels], got shape "
                     f"{images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"DSA expects floating (normalised) images, got dtype {images.dtype}")
  if params.aug_mode == "M":
    x = images
    for position, op in enumerate(ops):
      x = apply_op(op, x, op_param_key(key, position, "M"), params, siamese=siamese)
    return x
  param_key = op_param_key(key, 0, "S")
  branches = [functools.partial(apply_op, op, params=params, siamese=siamese) for op in ops]
  if len(branches) == 1:
    return branches[0](images, param_key)
  return jax.lax.switch(draw_op_index(key, len(ops)), branches, images, param_key)
