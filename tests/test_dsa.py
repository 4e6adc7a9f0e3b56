"""DSA (hardlabel_jax.data.dsa) against the official code, VICO-UoE/DatasetCondensation utils.py.

Each op is compared with a NumPy transcription of the official torch formula on the NCHW transpose
of a small NHWC batch with distinct pixel values (5 x 6: odd and even sizes), with hand-chosen
draws; scale and rotate are also compared with the real `torch.nn.functional.affine_grid` /
`grid_sample` when torch is installed.
"""

import types
import warnings

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from hardlabel_jax.data import dsa
from hardlabel_jax.mesh import data_mesh

N, H, W, C = 2, 5, 6, 3
# One compilation per static configuration and shape; the whole-pipeline tests share the shape
# of the 8-device sharding test, so that they share its single-device compilation.
augment_jit = jax.jit(dsa.augment, static_argnames=("strategy", "params", "siamese"))
BATCH = 8
# The single ops under jit: one compilation each instead of one per primitive (the eager path is
# exercised by the composition in test_mode_m_applies_every_op_in_order).
jitted = types.SimpleNamespace(
    **{
        name: jax.jit(getattr(dsa, name))
        for name in ("brightness", "saturation", "contrast", "flip", "crop")
    }, cutout=jax.jit(dsa.cutout, static_argnames="ratio"), **{
        name: jax.jit(getattr(dsa, name), static_argnames="align_corners")
        for name in ("scale", "rotate")
    }, affine_grid=jax.jit(dsa.affine_grid, static_argnames=("height", "width", "align_corners")))


def _images(n=N, h=H, w=W, c=C, seed=0):
  """Distinct values (a permutation of a grid), roughly normalised-image scale."""
  vals = np.random.default_rng(seed).permutation(n * h * w * c).astype(np.float32)
  return (vals / (n * h * w * c) * 4 - 2).reshape(n, h, w, c)


def _nchw(x):
  return np.transpose(np.asarray(x, np.float64), (0, 3, 1, 2))


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


# ------------------------------------------------------------------------------------------------
# NumPy transcriptions of the official ops (NCHW, float64).


def ref_brightness(x, randb, ratio):
  # utils.py rand_brightness: x = x + (randb - 0.5)*ratio
  return x + (np.reshape(randb, (-1, 1, 1, 1)) - 0.5) * ratio


def ref_saturation(x, rands, ratio):
  # utils.py rand_saturation: x_mean = x.mean(dim=1, keepdim=True); (x - x_mean) * (rands * ratio)
  x_mean = x.mean(axis=1, keepdims=True)
  return (x - x_mean) * (np.reshape(rands, (-1, 1, 1, 1)) * ratio) + x_mean


def ref_contrast(x, randc, ratio):
  # utils.py rand_contrast: x_mean = x.mean(dim=[1, 2, 3]); (x - x_mean) * (randc + ratio) + x_mean
  x_mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - x_mean) * (np.reshape(randc, (-1, 1, 1, 1)) + ratio) + x_mean


def ref_flip(x, randf, prob):
  # utils.py rand_flip: torch.where(randf < prob, x.flip(3), x)
  return np.where(np.reshape(randf, (-1, 1, 1, 1)) < prob, x[:, :, :, ::-1], x)


def ref_crop(x, translation_x, translation_y):
  # utils.py rand_crop, line by line (meshgrid is 'ij' in the torch of the official code).
  n, _, h, w = x.shape
  grid_batch, grid_x, grid_y = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
  grid_x = np.clip(grid_x + np.reshape(translation_x, (-1, 1, 1)) + 1, 0, h + 1)
  grid_y = np.clip(grid_y + np.reshape(translation_y, (-1, 1, 1)) + 1, 0, w + 1)
  x_pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  return x_pad.transpose(0, 2, 3, 1)[grid_batch, grid_x, grid_y].transpose(0, 3, 1, 2)


def ref_cutout(x, offset_x, offset_y, ratio):
  # utils.py rand_cutout, line by line: a clamped scatter of zeros into a mask.
  n, _, h, w = x.shape
  size = int(h * ratio + 0.5), int(w * ratio + 0.5)
  grid_batch, grid_x, grid_y = np.meshgrid(np.arange(n), np.arange(size[0]), np.arange(size[1]),
                                           indexing="ij")
  grid_x = np.clip(grid_x + np.reshape(offset_x, (-1, 1, 1)) - size[0] // 2, 0, h - 1)
  grid_y = np.clip(grid_y + np.reshape(offset_y, (-1, 1, 1)) - size[1] // 2, 0, w - 1)
  mask = np.ones((n, h, w))
  mask[grid_batch, grid_x, grid_y] = 0
  return x * mask[:, None]


def ref_affine_grid(theta, h, w, align_corners):
  # torch F.affine_grid (ATen linspace_from_neg_one + base_grid @ theta^T).
  def lin(steps):
    if steps <= 1:
      return np.zeros(1)
    r = np.linspace(-1, 1, steps)
    return r if align_corners else r * (steps - 1) / steps

  xs, ys = lin(w), lin(h)
  base = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], 1.0), -1)  # [H, W, 3] (x, y, 1)
  return np.einsum("hwk,njk->nhwj", base, np.asarray(theta, np.float64))


def ref_grid_sample(x, grid, align_corners):
  # torch F.grid_sample(mode='bilinear', padding_mode='zeros'): ATen's CPU reference kernel.
  n, c, h, w = x.shape
  out = np.zeros((n, c) + grid.shape[1:3])
  for b in range(n):
    for i in range(grid.shape[1]):
      for j in range(grid.shape[2]):
        gx, gy = grid[b, i, j]
        if align_corners:
          ix, iy = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
        else:
          ix, iy = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
        x0, y0 = int(np.floor(ix)), int(np.floor(iy))
        x1, y1 = x0 + 1, y0 + 1
        taps = [(y0, x0, (x1 - ix) * (y1 - iy))]  # nw
        taps.append((y0, x1, (ix - x0) * (y1 - iy)))  # ne
        taps.append((y1, x0, (x1 - ix) * (iy - y0)))  # sw
        taps.append((y1, x1, (ix - x0) * (iy - y0)))  # se
        for yy, xx, wt in taps:  # a tap outside the image adds nothing (zeros padding)
          if 0 <= xx < w and 0 <= yy < h:
            out[b, :, i, j] += x[b, :, yy, xx] * wt
  return out


def ref_scale_theta(sx, sy):
  # utils.py rand_scale: theta = [[sx, 0, 0], [0, sy, 0]]
  return np.array([[[a, 0, 0], [0, b, 0]] for a, b in zip(sx, sy, strict=True)], np.float32)


def ref_rotate_theta(t):
  # utils.py rand_rotate: [[cos t, sin(-t), 0], [sin t, cos t, 0]]
  t = np.asarray(t, np.float32)
  return np.array([[[np.cos(a), np.sin(-a), 0], [np.sin(a), np.cos(a), 0]] for a in t], np.float32)


def _close(ours, ref_nchw, atol=1e-5):
  np.testing.assert_allclose(np.asarray(ours, np.float64), _nhwc(ref_nchw), rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------
# Each op against its transcription.


def test_color_ops_match_official():
  """VICO-UoE/DatasetCondensation utils.py rand_brightness, rand_saturation, rand_contrast."""
  x = _images()
  r = np.array([0.75, 0.1], np.float32)
  _close(jitted.brightness(x, r, 1.0), ref_brightness(_nchw(x), r, 1.0))
  _close(jitted.saturation(x, r, 2.0), ref_saturation(_nchw(x), r, 2.0))
  _close(jitted.contrast(x, r, 0.5), ref_contrast(_nchw(x), r, 0.5))
  # Hand-worked: brightness r=0.75 adds 0.25; saturation r=0.5 (x2) and contrast r=0.5 (+0.5)
  # are factor 1, the identity; saturation r=0 sets every channel to the pixel's channel mean.
  half = np.full(N, 0.5, np.float32)
  np.testing.assert_allclose(jitted.brightness(x, [0.75, 0.75]), x + 0.25, atol=1e-6)
  np.testing.assert_allclose(jitted.saturation(x, half), x, atol=1e-6)
  np.testing.assert_allclose(jitted.contrast(x, half), x, atol=1e-6)
  grey = np.broadcast_to(x.mean(axis=3, keepdims=True), x.shape)
  np.testing.assert_allclose(jitted.saturation(x, np.zeros(N)), grey, atol=1e-6)


def test_flip_matches_official():
  """VICO-UoE/DatasetCondensation utils.py rand_flip: flips the width (NCHW dim 3)."""
  x = _images()
  out = np.asarray(jitted.flip(x, np.array([True, False])))
  _close(out, ref_flip(_nchw(x), np.array([0.2, 0.7]), 0.5))
  np.testing.assert_array_equal(out[0], x[0, :, ::-1, :])
  np.testing.assert_array_equal(out[1], x[1])


@pytest.mark.parametrize("h,w", [(5, 6), (6, 5)])
def test_crop_matches_official(h, w):
  """VICO-UoE/DatasetCondensation utils.py rand_crop: pad 1, clamp, gather (shifts past 1 too)."""
  x = _images(4, h, w)
  shift_h = np.array([1, -2, 0, 3])
  shift_w = np.array([0, 1, -3, -1])
  _close(jitted.crop(x, shift_h, shift_w), ref_crop(_nchw(x), shift_h, shift_w), atol=0)


def test_crop_hand_worked():
  """VICO-UoE/DatasetCondensation utils.py rand_crop: shift (1, 0) moves rows up by one."""
  x = _images()
  out = np.asarray(jitted.crop(x, [1, -2], [0, 0]))
  np.testing.assert_array_equal(out[0, :H - 1], x[0, 1:])  # output row i is input row i + 1
  np.testing.assert_array_equal(out[0, H - 1], 0)  # the padded zero row
  np.testing.assert_array_equal(out[1, :2], 0)  # shift -2: row 0 is the clamped zero border
  np.testing.assert_array_equal(out[1, 2:], x[1, :H - 2])


@pytest.mark.parametrize("h,w,ratio", [(5, 6, 0.5), (6, 5, 0.5), (7, 8, 0.3)])
def test_cutout_matches_official(h, w, ratio):
  """VICO-UoE/DatasetCondensation utils.py rand_cutout, offsets across the official range and a
  few beyond it (where the official clamp still zeroes the border row/column)."""
  x = _images(6, h, w)
  off_h = np.array([0, h - 1, h, 2, -3, h + 4])
  off_w = np.array([w, 0, 3, w - 1, w + 2, -1])
  _close(jitted.cutout(x, off_h, off_w, ratio), ref_cutout(_nchw(x), off_h, off_w, ratio), atol=0)


def test_cutout_hand_worked():
  """VICO-UoE/DatasetCondensation utils.py rand_cutout: 5x6, ratio 0.5 -> a 3x3 box
  (int(2.5 + 0.5), int(3 + 0.5)) centred at the offset, clamped at the border."""
  assert dsa.cutout_size(5, 6, 0.5) == (3, 3)
  x = _images()
  out = np.asarray(jitted.cutout(x, [0, 2], [5, 2]))
  expected = x.copy()
  expected[0, 0:2, 4:6] = 0  # rows -1..1 -> 0..1, cols 4..6 -> 4..5
  expected[1, 1:4, 1:4] = 0
  np.testing.assert_array_equal(out, expected)


SX = np.array([0.8, 1.2], np.float32)
SY = np.array([1.1, 0.9], np.float32)
ANGLES = np.array([0.2, -0.26], np.float32)


@pytest.mark.parametrize("align_corners", [False, True])
def test_scale_rotate_match_numpy_transcription(align_corners):
  """VICO-UoE/DatasetCondensation utils.py rand_scale, rand_rotate: F.affine_grid + F.grid_sample
  (bilinear, zeros), transcribed in NumPy."""
  x = _images()
  for theta, ours in ((ref_scale_theta(SX, SY), jitted.scale(x, SX, SY, align_corners)),
                      (ref_rotate_theta(ANGLES), jitted.rotate(x, ANGLES, align_corners))):
    grid = ref_affine_grid(theta, H, W, align_corners)
    np.testing.assert_allclose(jitted.affine_grid(theta, H, W, align_corners), grid, atol=1e-6)
    _close(ours, ref_grid_sample(_nchw(x), grid, align_corners))


def test_scale_one_and_rotate_zero_are_identity():
  """VICO-UoE/DatasetCondensation utils.py rand_scale/rand_rotate: sx = sy = 1 and theta = 0
  sample every pixel centre (to float32 rounding), with either align_corners."""
  x = _images()
  for ac in (False, True):
    np.testing.assert_allclose(jitted.scale(x, np.ones(N), np.ones(N), ac), x, atol=1e-6)
    np.testing.assert_allclose(jitted.rotate(x, np.zeros(N), ac), x, atol=1e-6)


def test_scale_rotate_match_torch():
  """VICO-UoE/DatasetCondensation utils.py rand_scale, rand_rotate run with real torch: theta
  built as officially, `F.grid_sample(x, F.affine_grid(theta, x.shape))` with the defaults of the
  installed torch (align_corners=False), and with align_corners=True (the pinned torch 1.2.0);
  values and input gradients."""
  torch = pytest.importorskip("torch")
  functional = torch.nn.functional
  x = _images()
  weights = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)

  def torch_sample(theta, align_corners):
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)), requires_grad=True)
    theta = torch.tensor(theta, dtype=torch.float)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the "default align_corners changed" warning
      if align_corners is None:  # exactly the official call
        out = functional.grid_sample(xt, functional.affine_grid(theta, xt.shape))
      else:
        grid = functional.affine_grid(theta, xt.shape, align_corners=align_corners)
        out = functional.grid_sample(xt, grid, align_corners=align_corners)
    (out * torch.tensor(np.transpose(weights, (0, 3, 1, 2)))).sum().backward()
    return out.detach().numpy(), xt.grad.numpy()

  for torch_ac, ours_ac in ((None, False), (True, True)):
    for theta, fn in ((ref_scale_theta(SX, SY), lambda im, a=ours_ac: jitted.scale(im, SX, SY, a)),
                      (ref_rotate_theta(ANGLES),
                       lambda im, a=ours_ac: jitted.rotate(im, ANGLES, a))):
      out_t, grad_t = torch_sample(theta, torch_ac)
      _close(fn(x), out_t)
      grad = jax.jit(jax.grad(lambda im, f=fn: (f(im) * weights).sum()))(x)
      _close(grad, grad_t)


def test_align_corners_only_matters_for_non_square_rotation():
  """VICO-UoE/DatasetCondensation utils.py rand_scale/rand_rotate call affine_grid/grid_sample
  without align_corners (True under its pinned torch 1.2.0, False since 1.3): without a
  translation both settings coincide on square images and for scaling."""
  square = _images(2, 6, 6)
  np.testing.assert_allclose(jitted.rotate(square, ANGLES, False),
                             jitted.rotate(square, ANGLES, True), atol=1e-5)
  x = _images()
  np.testing.assert_allclose(jitted.scale(x, SX, SY, False), jitted.scale(x, SX, SY, True),
                             atol=1e-5)
  assert np.abs(np.asarray(jitted.rotate(x, ANGLES, False)
                           - jitted.rotate(x, ANGLES, True))).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Parameter distributions.


def test_draws_lie_in_official_ranges():
  """VICO-UoE/DatasetCondensation utils.py rand_crop/rand_cutout (torch.randint bounds) and
  rand_scale/rand_rotate/rand_flip/colour ops (torch.rand in [0, 1))."""
  key = jax.random.PRNGKey(0)
  n = 4000
  h, w = 32, 20  # crop shifts int(4.5) = 4 and int(3.0) = 3; cutout boxes 16 (even) and 10 (even)
  assert dsa.crop_shift(h, w) == (4, 3)
  shift_h, shift_w = map(np.asarray, dsa.draw_crop(key, n, h, w))
  assert set(shift_h) == set(range(-4, 5)) and set(shift_w) == set(range(-3, 4))
  for hh, ww in ((32, 20), (21, 7)):  # boxes (16, 10) even: [0, size]; (11, 4): [0, 20], [0, 7]
    size_h, size_w = dsa.cutout_size(hh, ww)
    off_h, off_w = map(np.asarray, dsa.draw_cutout(key, n, hh, ww))
    assert set(off_h) == set(range(hh + 1 - size_h % 2))
    assert set(off_w) == set(range(ww + 1 - size_w % 2))
  assert dsa.cutout_size(21, 7) == (11, 4)
  for draw in (dsa.draw_brightness, dsa.draw_saturation, dsa.draw_contrast):
    u = np.asarray(draw(key, n))
    assert u.shape == (n,) and u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.03
  sx, sy = map(np.asarray, dsa.draw_scale(key, n, 1.2))
  for s in (sx, sy):
    assert s.min() >= 1 / 1.2 - 1e-6 and s.max() < 1.2 and s.min() < 0.85 and s.max() > 1.18
  assert not np.array_equal(sx, sy)
  t = np.degrees(np.asarray(dsa.draw_rotate(key, n, 15.0)))
  assert t.min() >= -15 - 1e-4 and t.max() < 15 + 1e-4 and t.min() < -14.5 and t.max() > 14.5
  assert abs(np.asarray(dsa.draw_flip(key, n, 0.5)).mean() - 0.5) < 0.03
  assert np.asarray(dsa.draw_flip(key, n, 0.2)).mean() < 0.25


def test_mode_s_chooses_every_op_uniformly():
  """VICO-UoE/DatasetCondensation utils.py DiffAugment, aug_mode 'S':
  `p = pbties[torch.randint(0, len(pbties))]`, one op per batch."""
  keys = jax.random.split(jax.random.PRNGKey(1), 6000)
  idx = np.asarray(jax.jit(jax.vmap(lambda k: dsa.draw_op_index(k, 6)))(keys))
  counts = np.bincount(idx, minlength=6)
  assert counts.sum() == 6000 and np.all(np.abs(counts - 1000) < 150), counts


def test_mode_m_applies_every_op_in_order():
  """VICO-UoE/DatasetCondensation utils.py DiffAugment aug_mode 'M': AUGMENT_FNS of each op in
  strategy order ('color' = brightness, saturation, contrast). The composition runs without jit,
  so this is also the jit == no-jit check."""
  x = _images(BATCH)
  n = x.shape[0]
  params = dsa.DSAParams(aug_mode="M")
  key = jax.random.PRNGKey(3)
  k = lambda i: dsa.op_param_key(key, i, "M")
  kb, ks, kc = jax.random.split(k(0), 3)
  y = dsa.brightness(x, dsa.draw_brightness(kb, n), 1.0)
  y = dsa.saturation(y, dsa.draw_saturation(ks, n), 2.0)
  y = dsa.contrast(y, dsa.draw_contrast(kc, n), 0.5)
  y = dsa.crop(y, *dsa.draw_crop(k(1), n, H, W, 0.125))
  y = dsa.cutout(y, *dsa.draw_cutout(k(2), n, H, W, 0.5), 0.5)
  y = dsa.flip(y, dsa.draw_flip(k(3), n, 0.5))
  y = dsa.scale(y, *dsa.draw_scale(k(4), n, 1.2))
  y = dsa.rotate(y, dsa.draw_rotate(k(5), n, 15.0))
  out = augment_jit(x, key, params=params)
  # Op-by-op XLA rounds differently from the fused program: a few float32 ulps through the chain.
  np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out) - x).max() > 0.1


def test_mode_s_applies_the_drawn_op_with_per_image_draws():
  """VICO-UoE/DatasetCondensation utils.py DiffAugment 'S': the drawn op is applied (with the
  per-image parameters of seed=-1, as evaluate_synset calls it)."""
  x = _images(BATCH)
  ops = dsa.parse_strategy(dsa.DEFAULT_STRATEGY)
  seen = set()
  base = jax.random.PRNGKey(7)
  for step in range(60):
    key = jax.random.fold_in(base, step)
    index = int(dsa.draw_op_index(key, len(ops)))
    if ops[index] in seen:
      continue
    seen.add(ops[index])
    # Eager: the same primitives and shapes as the composition in the mode 'M' test (cached).
    expected = dsa.apply_op(ops[index], x, dsa.op_param_key(key, 0, "S"))
    np.testing.assert_allclose(augment_jit(x, key), expected, atol=1e-5)
  assert seen == set(ops)


def test_siamese_shares_one_draw():
  """VICO-UoE/DatasetCondensation utils.py `if param.Siamese: theta[:] = theta[0]` (seed != -1)
  versus per-image draws (seed=-1)."""
  x = np.broadcast_to(_images(1), (BATCH, H, W, C))
  params = dsa.DSAParams(aug_mode="M")
  key = jax.random.PRNGKey(5)
  same = np.asarray(augment_jit(x, key, params=params, siamese=True))
  np.testing.assert_allclose(same, np.broadcast_to(same[:1], same.shape), atol=1e-6)
  per_image = np.asarray(augment_jit(x, key, params=params))
  assert np.abs(per_image - per_image[:1]).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Purity, jit and sharding.


def test_same_key_same_output_and_steps_differ():
  """A pure function of (key, images): a resumed run replays the augmentation
  (VICO-UoE/DatasetCondensation utils.py DiffAugment, keyed instead of torch's global seed)."""
  x = _images(BATCH)
  params = dsa.DSAParams(aug_mode="M")
  base = jax.random.fold_in(jax.random.PRNGKey(0), 11)
  k0, k1 = jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)
  jitted = np.asarray(augment_jit(x, k0, params=params))
  np.testing.assert_array_equal(jitted, np.asarray(augment_jit(x, k0, params=params)))
  assert np.abs(np.asarray(augment_jit(x, k1, params=params)) - jitted).max() > 1e-3
  # jit == no-jit: see test_mode_m_applies_every_op_in_order (an eager composition).


def test_sharded_batch_equals_single_device():
  """8 fake devices = 1 (VICO-UoE/DatasetCondensation utils.py DiffAugment, seed=-1): per-image
  draws are [batch] arrays from the key, so sharding the batch changes no image's augmentation."""
  x = _images(BATCH)
  key = jax.random.PRNGKey(9)
  # jax.make_mesh gives an explicit-sharding mesh; the library's mesh.data_mesh an auto one.
  for mesh in (jax.make_mesh((8,), ("data",)), data_mesh(jax.devices()[:8])):
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    # Mode 'M' runs every op (mode 'S' is a switch over the same functions).
    params = dsa.DSAParams(aug_mode="M")
    np.testing.assert_allclose(
        np.asarray(augment_jit(sharded, key, params=params)),
        np.asarray(augment_jit(x, key, params=params)),  # 1 device
        rtol=1e-6,
        atol=1e-6)


def test_dtype_shape_and_no_augmentation():
  """Output dtype/shape are the input's; '' and 'none' return the input
  (VICO-UoE/DatasetCondensation utils.py DiffAugment)."""
  x = _images().astype(jax.numpy.bfloat16)
  for params in (dsa.DSAParams(aug_mode="M"), dsa.DSAParams()):  # traced, not compiled
    out = jax.eval_shape(lambda im, k, p=params: dsa.augment(im, k, params=p), x,
                         jax.random.key(0))  # a typed key works too
    assert out.dtype == x.dtype and out.shape == x.shape
  for strategy in ("", "none", "None"):
    assert dsa.augment(x, jax.random.PRNGKey(0), strategy) is x
  with pytest.raises(TypeError, match="floating"):
    dsa.augment(np.zeros((1, 4, 4, 1), np.int32), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="NHWC"):
    dsa.augment(np.zeros((4, 4, 1), np.float32), jax.random.PRNGKey(0))


def test_parse_strategy():
  """VICO-UoE/DatasetCondensation utils.py DiffAugment/AUGMENT_FNS: '_'-split op names."""
  assert dsa.parse_strategy(dsa.DEFAULT_STRATEGY) == dsa.OPS
  assert dsa.parse_strategy("crop_crop_flip") == ("crop", "crop", "flip")
  assert dsa.parse_strategy("") == () and dsa.parse_strategy("none") == ()
  with pytest.raises(ValueError, match=r"'blur'.*valid ops: color, crop, cutout"):
    dsa.parse_strategy("color_blur")
  with pytest.raises(ValueError, match="''"):
    dsa.parse_strategy("crop__flip")
  with pytest.raises(ValueError, match="aug_mode"):
    dsa.DSAParams(aug_mode="X")
