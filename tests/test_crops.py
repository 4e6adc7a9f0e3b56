"""Crops are pure functions of (seed, id, slot): same key, same pixels, everywhere."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from hardlabel_jax.data import crops

SPEC = crops.CropSpec(output_size=16, cutmix_alpha=1.0)


def _as_tuple(p: crops.CropParams):
  return dataclasses.astuple(p)


def test_same_key_same_params_and_slots_differ():
  a = [crops.crop_params(3, 17, slot, (28, 28), SPEC, pool_size=50) for slot in range(20)]
  b = [crops.crop_params(3, 17, slot, (28, 28), SPEC, pool_size=50) for slot in range(20)]
  assert [_as_tuple(p) for p in a] == [_as_tuple(p) for p in b]
  assert len({(p.top, p.left, p.height, p.width) for p in a}) > 15
  other_id = crops.crop_params(3, 18, 0, (28, 28), SPEC, pool_size=50)
  other_seed = crops.crop_params(4, 17, 0, (28, 28), SPEC, pool_size=50)
  assert _as_tuple(other_id) != _as_tuple(a[0])
  assert _as_tuple(other_seed) != _as_tuple(a[0])


def test_same_params_in_another_process():
  keys = [(0, i, s) for i in range(5) for s in range(3)]
  code = ("import json, dataclasses\n"
          "from hardlabel_jax.data import crops\n"
          "spec = crops.CropSpec(output_size=16, cutmix_alpha=1.0)\n"
          f"keys = {keys!r}\n"
          "print(json.dumps([dataclasses.astuple(crops.crop_params(s, i, k, (28, 28), spec, 50))"
          " for s, i, k in keys]))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  theirs = [tuple(x) for x in json.loads(out.stdout)]
  ours = [_as_tuple(crops.crop_params(s, i, k, (28, 28), SPEC, 50)) for s, i, k in keys]
  assert theirs == ours


def test_enabling_cutmix_does_not_move_the_crop_box():
  plain = crops.crop_params(1, 2, 3, (40, 30), dataclasses.replace(SPEC, cutmix_alpha=0.0))
  mixed = crops.crop_params(1, 2, 3, (40, 30), SPEC, pool_size=10)
  assert _as_tuple(plain)[:5] == _as_tuple(mixed)[:5]
  assert plain.partner_position == -1 and plain.mix_lambda == 1.0
  assert 0 <= mixed.partner_position < 10


def test_box_within_image_and_scale_respected():
  spec = crops.CropSpec(output_size=8, scale=(0.25, 0.5), ratio=(1.0, 1.0))
  for slot in range(200):
    p = crops.crop_params(0, 1, slot, (40, 40), spec)
    assert p.top >= 0 and p.left >= 0 and p.top + p.height <= 40 and p.left + p.width <= 40
    area = p.height * p.width / 1600
    assert 0.2 <= area <= 0.55  # rounding of the side length widens the range slightly
    assert p.height == p.width


def test_cutmix_lambda_is_the_unpasted_area():
  for slot in range(50):
    p = crops.crop_params(0, 1, slot, (32, 32), SPEC, pool_size=4)
    assert p.mix_lambda == pytest.approx(1 - p.cut_height * p.cut_width / 256)
    assert p.cut_top + p.cut_height <= 16 and p.cut_left + p.cut_width <= 16


def test_apply_crop_flips_and_resizes_exactly():
  image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6, 1)
  params = crops.CropParams(top=1, left=2, height=2, width=2, flip=False)
  out = crops.apply_crop(image, params, size=2)  # same size: bilinear is the identity
  np.testing.assert_array_equal(out[..., 0], image[1:3, 2:4, 0])
  flipped = crops.apply_crop(image, dataclasses.replace(params, flip=True), size=2)
  np.testing.assert_array_equal(flipped[..., 0], image[1:3, 2:4, 0][:, ::-1])


def test_paste_cutmix_takes_partner_pixels_in_box_only():
  a = np.zeros((8, 8, 3), np.uint8)
  b = np.full((8, 8, 3), 255, np.uint8)
  p = crops.CropParams(0, 0, 8, 8, False, partner_position=0, cut_top=2, cut_left=3, cut_height=4,
                       cut_width=2, mix_lambda=1 - 8 / 64)
  out = crops.paste_cutmix(a, b, p)
  assert out.sum() == 255 * 3 * 8
  assert (out[2:6, 3:5] == 255).all()


def test_center_crop_identity_and_fraction():
  image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
  np.testing.assert_array_equal(crops.center_crop(image, 28), image)
  assert crops.center_crop(image, 16, 0.875).shape == (16, 16, 1)


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="scale"):
    crops.CropSpec(output_size=8, scale=(0.5, 0.2))
  with pytest.raises(ValueError, match="output_size"):
    crops.CropSpec(output_size=0)
  with pytest.raises(ValueError, match="non-negative"):
    crops.crop_params(-1, 0, 0, (8, 8), SPEC)
  with pytest.raises(ValueError, match="uint8"):
    crops.apply_crop(np.zeros((8, 8, 1), np.float32), crops.CropParams(0, 0, 8, 8, False), 8)


# RDED's training recipe, as LINs-lab/RDED validation/main.py builds it (lines 115-126):
# ShufflePatches(factor) (validation/utils.py, class ShufflePatches), then
# RandomResizedCrop(size, scale=(1/factor, max_scale_crops=1)), flip; CutMix on the batch.


def _patch_image(factor=2, patch=3):
  """A [f·p, f·p, 1] image whose patch (r, c) holds the value 10·(r·f + c) + 1 everywhere."""
  values = 10 * np.arange(factor * factor).reshape(factor, factor) + 1
  return np.kron(values, np.ones((patch, patch), int)).astype(np.uint8)[..., None]


def _patches(image, factor):
  """The f×f grid of patch values of an image made by `_patch_image`."""
  size = image.shape[0] // factor
  return image[::size, ::size, 0][:factor, :factor]


def test_permute_patches_moves_whole_column_then_row_strips_as_the_official_code():
  image = _patch_image()
  # Columns swapped, rows kept: [[1, 11], [21, 31]] → [[11, 1], [31, 21]], every pixel exact.
  out = crops.permute_patches(image, 2, np.array([1, 0]), np.array([0, 1]))
  np.testing.assert_array_equal(out, np.concatenate([image[:, 3:], image[:, :3]], axis=1))
  out = crops.permute_patches(image, 2, np.array([1, 0]), np.array([1, 0]))
  np.testing.assert_array_equal(_patches(out, 2), [[31, 21], [11, 1]])
  # Over many keys: the multiset of patches is kept, each patch stays whole, and the orders are
  # the official ones (a column permutation times a row permutation): 4 of the 24 arrangements.
  seen = set()
  for slot in range(64):
    out = crops.shuffle_patches(image, 0, 7, slot, 2)
    grid = _patches(out, 2)
    np.testing.assert_array_equal(out, np.kron(grid, np.ones((3, 3), int))[..., None])
    assert sorted(grid.ravel()) == [1, 11, 21, 31]
    columns, rows = crops.patch_orders(0, 7, slot, 2)
    np.testing.assert_array_equal(grid, _patches(image, 2)[rows][:, columns])
    seen.add(tuple(grid.ravel()))
  assert seen == {(1, 11, 21, 31), (11, 1, 31, 21), (21, 31, 1, 11), (31, 21, 11, 1)}


def test_permute_patches_drops_a_remainder_as_the_official_code():
  # validation/utils.py cuts strips of width // factor, the last one as wide as the others.
  image = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)
  out = crops.permute_patches(image, 2, np.array([0, 1]), np.array([0, 1]))
  np.testing.assert_array_equal(out, image[:4, :4])


def test_shuffle_patches_is_a_pure_function_of_the_key_and_the_identity_at_factor_1():
  image = _patch_image(factor=3)
  a = [crops.shuffle_patches(image, 1, 5, slot, 3) for slot in range(10)]
  b = [crops.shuffle_patches(image, 1, 5, slot, 3) for slot in range(10)]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert len({x.tobytes() for x in a}) > 5  # slots draw different orders
  for seed, example_id in ((1, 6), (2, 5)):  # another id or seed: other orders
    other = [
        crops.shuffle_patches(image, seed, example_id, slot, 3).tobytes() for slot in range(10)
    ]
    assert other != [x.tobytes() for x in a]
  assert crops.shuffle_patches(image, 1, 5, 0, 1) is image


def test_the_shuffle_does_not_move_the_crop_box():
  plain = crops.CropSpec(output_size=8, scale=(0.5, 1.0), cutmix_alpha=1.0)
  shuffled = crops.rded_spec(8, 2, cutmix_alpha=1.0)
  assert dataclasses.replace(shuffled, shuffle_factor=1) == plain
  for slot in range(20):
    assert _as_tuple(crops.crop_params(0, 3, slot, (24, 24), plain, 5)) == _as_tuple(
        crops.crop_params(0, 3, slot, (24, 24), shuffled, 5))


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_rded_recipe_box_lies_within_scale_one_over_factor_to_one(factor):
  spec = crops.rded_spec(12, factor, cutmix_alpha=1.0)
  assert spec.scale == (1 / factor, 1.0) and spec.ratio == (3 / 4, 4 / 3)
  image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  areas = []
  for slot in range(100):
    pixels, params, boxed_hw = crops.crop_image(image, 0, 9, slot, spec, pool_size=4)
    assert boxed_hw == (24, 24) and pixels.shape == (12, 12, 3)
    assert params.top + params.height <= 24 and params.left + params.width <= 24
    areas.append(params.height * params.width / 576)
    # The crop is the box of the key's patch-shuffled image, flipped as the key says.
    shuffled = crops.shuffle_patches(image, 0, 9, slot, factor)
    np.testing.assert_array_equal(pixels, crops.apply_crop(shuffled, params, 12))
  # Side lengths are rounded to pixels, which widens the range slightly.
  assert min(areas) >= 0.9 / factor and max(areas) <= 1.0
  if factor == 1:  # scale (1, 1): the whole image, as the official CIFAR runs (factor 1)
    assert set(areas) == {1.0}
  else:
    assert min(areas) < (1 / factor + 1) / 2  # the range is used, not only whole images
