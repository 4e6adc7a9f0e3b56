"""The training crop is torchvision's: `F.resized_crop` (cut out, then resized), then the flip."""

import numpy as np
from PIL import Image

from hardlabel_jax.data import crops
from torchvision_import import import_torchvision

torchvision = import_torchvision()
t_F = torchvision.transforms.functional


def test_keyed_crops_equal_torchvisions_resized_crop_and_pil_box_differs_at_the_border():
  """torchvision/transforms/transforms.py `RandomResizedCrop.forward`: `F.resized_crop(img, i, j,
  h, w, size, BILINEAR)` on the box `get_params` drew, then `RandomHorizontalFlip`. Every keyed crop
  of the default spec equals it pixel for pixel; the earlier PIL box resize (`resize='pil_box'`)
  differs (measured here on noise: on 118 of 120 crops, by up to 76 levels at the border)."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 50, 3), np.uint8)
  spec = crops.CropSpec(output_size=24, scale=(0.08, 1.0))
  old = crops.CropSpec(output_size=24, scale=(0.08, 1.0), resize=crops.PIL_BOX)
  differing, largest = 0, 0
  for slot in range(120):
    pixels, params, _ = crops.crop_image(image, 3, 11, slot, spec)
    expected = t_F.resized_crop(Image.fromarray(image), params.top, params.left, params.height,
                                params.width, [24, 24], t_F.InterpolationMode.BILINEAR)
    if params.flip:
      expected = t_F.hflip(expected)
    np.testing.assert_array_equal(pixels, np.asarray(expected), err_msg=f"slot {slot}")
    before, _, _ = crops.crop_image(image, 3, 11, slot, old)
    gap = np.abs(before.astype(int) - pixels.astype(int)).max()
    differing, largest = differing + int(gap > 0), max(largest, int(gap))
  assert (differing, largest) == (118, 76)
