"""Device crops equal the host's PIL crops pixel for pixel, and their fields are the host's draws.

The reference is the host path itself (`crops.apply_crop`, `CropExample.raw_crop`,
`crops.center_crop`), i.e. PIL's `Image.resize(..., BILINEAR, box=...)`: Pillow
`src/libImaging/Resample.c` (13.0.0: `precompute_coeffs` l. 227, `normalize_coeffs_8bpc` l. 314,
the pass order `horizontal_first` l. 865). Measured over every test below: 0 pixels differ
(max |device − host| = 0 levels), so the tests assert equality, not a tolerance.
"""

import jax
import numpy as np
import PIL
import pytest

from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.data.array_source import ArraySource

_LABEL_FIELDS = ("label", "partner_label", "mix_lambda", "id", "slot")
_METADATA = ("box", "flip", "partner_id", "cut_box")


def _images(count, shape, seed=0):
  """Gradients, checkerboards and noise in turn: smooth, hard-edged and random content."""
  height, width, channels = shape
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:height, :width]
  images = []
  for k in range(count):
    if k % 3 == 0:
      image = (rows * 255 // max(height - 1, 1) + cols * 97 // max(width - 1, 1) + 31 * k) % 256
      image = np.repeat(image[..., None], channels, axis=-1)
    elif k % 3 == 1:
      cell = 1 + k % 4
      image = ((rows // cell + cols // cell) % 2 * 255)[..., None].repeat(channels, axis=-1)
    else:
      image = rng.integers(0, 256, shape)
    images.append(image.astype(np.uint8))
  return np.stack(images)


def _box_fields(boxes, flips, indices):
  """Kernel fields of plain resized crops (no patch shuffle, no CutMix)."""
  count = len(boxes)
  return {
      "pool_index": np.asarray(indices, np.int32),
      "crop_box": np.asarray(boxes, np.int32),
      "crop_flip": np.asarray(flips, np.uint8),
      "column_order": np.zeros((count, 1), np.int32),
      "row_order": np.zeros((count, 1), np.int32),
  }


def _border_boxes(height, width, rng):
  """Boxes touching every border and corner, 1-pixel strips, a single pixel, and random ones."""
  boxes = [(0, 0, height, width), (0, 0, max(height // 2, 1), max(width // 3, 1)),
           (0, width - 5, 4, 5), (height - 3, 0, 3, 7), (height - 6, width - 2, 6, 2),
           (0, width // 2, height, 1), (height // 2, 0, 1, width), (height - 1, width - 1, 1, 1),
           (0, 0, 1, 1), (1, 1, height - 2, width - 2)]
  for _ in range(6):
    h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
    boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
  return boxes


def _stack(elements):
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def test_coefficients_are_pillows_fixed_point_weights_on_hand_worked_rows():
  """Resample.c by hand. 4 → 2 pixels: scale 2, so the triangle spans ±2 pixels around the
  centres 1 and 3: weights (3, 3, 1)/7, fixed point `(int)(0.5 + w·2^22)` = 1797559, 599186; the
  row (0, 100, 200, 255) gives (2^21 + Σ)>>22 = 71 and 209 (exact 71.4, 209.3). 2 → 4 pixels:
  centres 0.25, 0.75, ...: (1, 0), (3/4, 1/4), (1/4, 3/4), (0, 1); the row (0, 200) gives
  (0, 50, 150, 200)."""
  down = np.asarray(device_crops.resample_coefficients(4, 0, 4, 2))
  np.testing.assert_array_equal(down,
                                [[1797559, 1797559, 599186, 0], [0, 599186, 1797559, 1797559]])
  up = np.asarray(device_crops.resample_coefficients(2, 0, 2, 4))
  np.testing.assert_array_equal(up, np.array([[4, 0], [3, 1], [1, 3], [0, 4]]) << 20)
  for row, size, expected in (([0, 100, 200, 255], 2, [71, 209]), ([0, 200], 4, [0, 50, 150, 200])):
    image = np.tile(np.asarray(row, np.uint8), (len(row), 1))[..., None]
    host = crops.resized_crop(image, 0, 0, len(row), len(row), size)
    np.testing.assert_array_equal(host[..., 0], np.tile(expected, (size, 1)))
    whole = _box_fields([(0, 0, len(row), len(row))], [0], [0])
    device = device_crops.crop_batch(image[None], whole, output_size=size, shuffle_factor=1,
                                     cutmix=False)
    np.testing.assert_array_equal(np.asarray(device)[0], host)


@pytest.mark.parametrize("max_denominator", [1 << 11, (1 << 30) - 1])
def test_fixed_point_rounding_is_exact_integer_round_half_up(max_denominator):
  """`_round_ratio` against Python's integers: round-half-up(2^22·a/N) = (2^23·a + N) // (2N).

  Every pair a <= N for N up to 700 (every small crop's weights), then random pairs up to the
  bound (at 2^11 two steps of float32-estimated digits, at 2^30 − 1 one bit a step) and the
  quotients just below an integer, where an estimated digit overshoots.
  """
  small = [(a, n) for n in range(1, 701) for a in range(n + 1)]
  rng = np.random.default_rng(0)
  denominators = rng.integers(1, max_denominator + 1, 20_000)
  large = list(
      zip((rng.random(20_000) * (denominators + 1)).astype(np.int64), denominators, strict=True))
  large += [(n, n) for n in denominators[:100]] + [(n - 1, n) for n in denominators[:100]]
  # 2^22·a/N = k − 1/N: the float32 estimate of the last digit rounds up to k (a remainder of −1
  # to correct), for every odd N up to 2,049 and 2,000 random odd N.
  odd = list(range(1, 2050, 2)) + [int(n) | 1 for n in denominators[:2000]]
  large += [((n - 1) * pow(1 << 22, -1, n) % n, n) for n in odd if n <= max_denominator]
  pairs = np.array(small + large, np.int64)
  got = device_crops._round_ratio(jax.numpy.asarray(pairs[:, 0], np.int32),
                                  jax.numpy.asarray(pairs[:, 1], np.int32), max_denominator)
  expected = [((a << 23) + n) // (2 * n) for a, n in pairs.tolist()]
  np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("resize", crops.RESIZE_MODES)
@pytest.mark.parametrize("shape,sizes", [((28, 28, 1), (16, 40)), ((17, 40, 3), (24,)),
                                         ((64, 9, 1), (8,))])
def test_resized_crops_equal_pillow_at_every_border_up_and_down(shape, sizes, resize):
  """Square and non-square pools, 1 and 3 channels, downscaling (antialiased) and upscaling,
  boxes on every border and 1 pixel wide or tall, both flips: equal to `crops.apply_crop`
  (measured: 0 pixels differ), for torchvision's crop-then-resize (the support stops at the box;
  the pass order is the crop's) and for PIL's box resize (the order is the whole image's). The
  64×9 pool resized to 8 is a case Pillow ≥ 13 resizes vertically first."""
  rng = np.random.default_rng(1)
  pool = _images(3, shape)
  boxes = _border_boxes(shape[0], shape[1], rng)
  flips = [k % 2 for k in range(len(boxes))]
  indices = [k % len(pool) for k in range(len(boxes))]
  for size in sizes:
    device = np.asarray(
        device_crops.crop_batch(pool, _box_fields(boxes, flips, indices), output_size=size,
                                shuffle_factor=1, cutmix=False, resize=resize))
    assert device.dtype == np.float32 and device.shape == (len(boxes), size, size, shape[2])
    for k, (box, flip, index) in enumerate(zip(boxes, flips, indices, strict=True)):
      host = crops.apply_crop(pool[index], crops.CropParams(*box, bool(flip)), size, resize)
      np.testing.assert_array_equal(device[k], host, err_msg=f"box {box} flip {flip} size {size}")


def test_the_pass_order_is_the_installed_pillows():
  """Pillow 13 (PR #9549, Resample.c l. 865) runs the vertical pass first when the height shrinks
  by more than twice as many pixels as the width; the uint8 image between the passes makes the
  order visible. On this 64×9 noise image the two orders differ and the device follows PIL."""
  pool = _images(3, (64, 9, 1))[2:]
  pillow_13 = int(PIL.__version__.split(".")[0]) >= 13
  assert device_crops.vertical_first((64, 9), 8) == pillow_13
  assert not device_crops.vertical_first((9, 64), 8)
  assert not device_crops.vertical_first((64, 9), 64)
  rows = device_crops.resample_coefficients(64, np.zeros(1), np.full(1, 64), 8)
  columns = device_crops.resample_coefficients(9, np.zeros(1), np.full(1, 9), 8)
  resample = device_crops._resample  # pylint: disable=protected-access
  orders = [np.asarray(resample(pool.astype(np.float32), rows, columns, v)) for v in (True, False)]
  assert not np.array_equal(orders[0], orders[1])
  host = crops.resized_crop(pool[0], 0, 0, 64, 9, 8)
  np.testing.assert_array_equal(orders[0 if pillow_13 else 1][0], host)


def _example(shape, spec, count=6, plan=None, seed=3):
  images = _images(count, shape, seed=seed)
  source = ArraySource(images, np.arange(count) % 4, 4)
  pool_ids = np.arange(count)[::-1].copy()  # pool order differs from id order
  normalizer = pipeline.Normalizer((0.5,) * shape[2], (0.5,) * shape[2])
  return pipeline.CropExample(source, pool_ids, spec, seed=7, normalizer=normalizer,
                              cutmix_plan=plan)


def _assert_device_equals_raw_crop(example, keys):
  """Device pixels equal `raw_crop`'s; `crop_fields`' labels and metadata equal its exactly."""
  host = [example.raw_crop(*key) for key in keys]
  elements = [example.crop_fields(*key) for key in keys]
  for (_, fields, metadata), element in zip(host, elements, strict=True):
    for name, value in (*fields.items(), *metadata.items()):
      assert element[name].dtype == np.asarray(value).dtype, name
      np.testing.assert_array_equal(element[name], value, err_msg=name)
    assert set(fields) == set(_LABEL_FIELDS) and set(metadata) == set(_METADATA)
  batch = _stack(elements)
  # The device pool holds the pool's images in pool order: row p is example pool_ids[p].
  pool = np.stack([example.source[int(i)]["image"] for i in example.pool_ids])
  device = np.asarray(
      device_crops.crop_batch(pool, batch, output_size=example.spec.output_size,
                              shuffle_factor=example.spec.shuffle_factor,
                              resize=example.spec.resize))
  for k, (pixels, _, _) in enumerate(host):
    np.testing.assert_array_equal(device[k], pixels, err_msg=f"key {keys[k]}")
  return batch


@pytest.mark.parametrize("shape,factor,size", [((29, 31, 3), 1, 12), ((29, 31, 3), 2, 12),
                                               ((29, 31, 3), 3, 12), ((7, 8, 1), 3, 3)])
def test_training_crops_with_cutmix_and_shuffled_patches_equal_raw_crop(shape, factor, size):
  """CutMix with a partner drawn per crop (the partner's own shuffle, box and flip pasted into
  the cut box) and RDED's ShufflePatches on sizes not divisible by the factor (29×31 at 2 and 3
  drop a remainder; at 7×8 and factor 3 the strip starting at pixel 2 = factor − 1 runs to the
  edge and overlaps the next, `crops.strip_bounds`, so its columns 4 and 5 appear twice; resized
  to 3 pixels, one output pixel weighs both copies): equal to `raw_crop` (measured: 0 pixels
  differ)."""
  spec = crops.rded_spec(size, factor, cutmix_alpha=1.0)
  example = _example(shape, spec)
  keys = [(position, slot) for position in range(6) for slot in range(3)]
  batch = _assert_device_equals_raw_crop(example, keys)
  assert (batch["partner_index"] >= 0).all() and (batch["cut_box"][:, 2:] > 0).any()
  if factor > 1:
    assert (batch["column_order"] != np.arange(factor)).any()


def test_relabel_batch_cutmix_plan_crops_equal_raw_crop():
  """HALD's relabel CutMix (data/relabel_batches.py: one λ, box and partner permutation per
  relabel batch) replayed from the plan: equal to `raw_crop` (measured: 0 pixels differ)."""
  spec = crops.CropSpec(output_size=10, cutmix_alpha=1.0)
  plan = relabel_batches.cutmix_plan(num_positions=6, slots=2, group_size=4, seed=7, alpha=1.0,
                                     size=10)
  example = _example((20, 24, 3), spec, plan=plan)
  keys = [(position, slot) for position in range(6) for slot in range(2)]
  batch = _assert_device_equals_raw_crop(example, keys)
  np.testing.assert_array_equal(batch["partner_index"], [plan.partner_position[k] for k in keys])


def test_crops_without_cutmix_have_no_partner_and_need_no_partner_crops():
  spec = crops.CropSpec(output_size=10)
  example = _example((20, 24, 3), spec)
  keys = [(position, 0) for position in range(6)]
  batch = _assert_device_equals_raw_crop(example, keys)
  np.testing.assert_array_equal(batch["partner_index"], -1)
  np.testing.assert_array_equal(batch["cut_box"], 0)
  pool = np.stack([example.source[int(i)]["image"] for i in example.pool_ids])
  with_partners = device_crops.crop_batch(pool, batch, output_size=10, shuffle_factor=1)
  without = device_crops.crop_batch(pool, batch, output_size=10, shuffle_factor=1, cutmix=False)
  np.testing.assert_array_equal(with_partners, without)


def test_crop_fields_touch_no_pixels(monkeypatch):
  """The fields are the draws alone: with PIL's resize and the patch shuffle made to fail, they
  are still made, and equal to those made before."""
  example = _example((29, 31, 3), crops.rded_spec(12, 2, cutmix_alpha=1.0))
  before = example.crop_fields(2, 1)

  def fail(*args, **kwargs):
    raise AssertionError("crop_fields touched pixels")

  monkeypatch.setattr(crops, "resized_crop", fail)
  monkeypatch.setattr(crops, "permute_patches", fail)
  after = example.crop_fields(2, 1)
  assert set(after) == set(before)
  for name, value in before.items():
    np.testing.assert_array_equal(after[name], value, err_msg=name)


@pytest.mark.parametrize("shape,size,fraction", [((28, 28, 1), 28, 1.0), ((28, 28, 1), 32, 0.875),
                                                 ((17, 40, 3), 12, 0.9), ((64, 9, 1), 8, 1.0)])
def test_center_views_equal_center_crop(shape, size, fraction):
  """The evaluation view: the identity at full size, up- and downscaled central squares of square
  and non-square pools (measured: 0 pixels differ)."""
  pool = _images(4, shape)
  device = np.asarray(
      device_crops.center_batch(pool, np.array([3, 0, 2, 1]), size=size, crop_fraction=fraction))
  for k, index in enumerate([3, 0, 2, 1]):
    np.testing.assert_array_equal(device[k], crops.center_crop(pool[index], size, fraction))


def test_a_batch_sharded_over_8_devices_equals_one_device_and_the_host():
  """The kernel under jit with the pool replicated and the batch split over the 8 simulated
  devices' data axis (as the trainer shards it) gives the single-device crops."""
  assert jax.device_count() == 8
  example = _example((29, 31, 3), crops.rded_spec(12, 2, cutmix_alpha=1.0), count=8)
  keys = [(position, slot) for position in range(8) for slot in range(2)]
  batch = _stack([example.crop_fields(*key) for key in keys])
  kernel_fields = ("pool_index", "crop_box", "crop_flip", "column_order", "row_order",
                   "partner_index", "partner_crop_box", "partner_flip", "partner_column_order",
                   "partner_row_order", "cut_box")
  kernel = {k: batch[k] for k in kernel_fields}
  pool = np.stack([example.source[int(i)]["image"] for i in example.pool_ids])
  mesh = mesh_lib.data_mesh()
  make = jax.jit(lambda p, f: device_crops.crop_batch(p, f, output_size=12, shuffle_factor=2),
                 in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                 out_shardings=mesh_lib.batch_sharded(mesh))
  sharded = make(mesh_lib.replicate_host_arrays(pool, mesh),
                 mesh_lib.shard_host_arrays(kernel, mesh))
  assert len(sharded.sharding.device_set) == 8
  pool_on_one = jax.device_put(pool, jax.devices()[0])
  one = device_crops.crop_batch(pool_on_one, kernel, output_size=12, shuffle_factor=2)
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(one))
  for k, key in enumerate(keys):
    np.testing.assert_array_equal(np.asarray(one)[k], example.raw_crop(*key)[0])


def test_pools_whose_crops_could_not_equal_pils_are_refused():
  fields = _box_fields([(0, 0, 4, 4)], [0], [0])
  with pytest.raises(ValueError, match=r"need a uint8 pool \[N, H, W, C\], got float32"):
    device_crops.crop_batch(np.zeros((1, 8, 8, 1), np.float32), fields, output_size=4,
                            shuffle_factor=1)
  with pytest.raises(ValueError, match="L and RGB resampling .1 or 3 channels.; the pool has 4"):
    device_crops.crop_batch(np.zeros((1, 8, 8, 4), np.uint8), fields, output_size=4,
                            shuffle_factor=1)
  # 2,100 rows to 4 weigh 1,051 rows an output pixel: their sums would leave float32's integers.
  with pytest.raises(ValueError, match="resizing 2100 pixels to 4 weighs 1051 pixels"):
    device_crops.center_batch(np.zeros((1, 2100, 8, 1), np.uint8), np.zeros(1, np.int32), size=4,
                              crop_fraction=1.0)
  with pytest.raises(ValueError, match=r"crop_fraction must be in \(0, 1\]"):
    device_crops.center_batch(np.zeros((1, 8, 8, 1), np.uint8), np.zeros(1, np.int32), size=4,
                              crop_fraction=1.5)
