"""NumPy's keyed streams for many keys equal NumPy's own; batched elements equal stacked ones.

The reference is NumPy itself (2.x): `np.random.SeedSequence`, `np.random.default_rng` (PCG64),
its `random_raw`, its ctypes `next_uint32` (`pcg64_next32`), `Generator.integers` and the
library's scalar draws (`crops.crop_params`, `table.draw_slot`) that the batch must reproduce.
"""

import dataclasses

import numpy as np
import pytest

from hardlabel_jax.data import array_source
from hardlabel_jax.data import crops
from hardlabel_jax.data import keyed_draws
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.soft_labels import table as table_lib

_RNG = np.random.default_rng(7)
# Small keys, keys at the top of the uint32 range, and zeros (a 0 is one word, as any key < 2^32).
_KEYS = np.concatenate([
    _RNG.integers(0, 1000, (40, 4)),
    _RNG.integers((1 << 32) - 5, 1 << 32, (8, 4)),
    np.zeros((1, 4), np.int64),
])


def _generator(key):
  return np.random.default_rng(np.random.SeedSequence([int(v) for v in key]))


@pytest.mark.parametrize("columns", [1, 3, 4, 6])
def test_seeding_equals_seed_sequence_and_pcg64_for_any_key_length(columns):
  keys = np.concatenate([_KEYS[:, :columns], _KEYS[:, :columns] % 1000 + 1])
  pools = keyed_draws.seed_sequence_pools(keys)
  states = keyed_draws.generate_state_uint64(pools, 4)
  streams = keyed_draws.Streams(keys)
  for k, key in enumerate(keys):
    sequence = np.random.SeedSequence([int(v) for v in key])
    np.testing.assert_array_equal(pools[k], sequence.pool)
    np.testing.assert_array_equal(states[k], sequence.generate_state(4, np.uint64))
    pcg = np.random.PCG64(sequence).state["state"]
    assert (int(streams._hi[k]) << 64 | int(streams._lo[k])) == pcg["state"]
    assert (int(streams._inc_hi[k]) << 64 | int(streams._inc_lo[k])) == pcg["inc"]
  # A key word of 2^32 or more is two words to SeedSequence: refused, not silently truncated.
  with pytest.raises(ValueError, match="0..2\\^32"):
    keyed_draws.Streams(np.array([[1, 1 << 32]]))


def test_outputs_doubles_and_buffered_32_bit_draws_follow_each_generator():
  """An interleaving of 64-bit outputs, doubles and 32-bit halves, with rows skipping 32-bit
  draws, against each key's generator stepped the same way."""
  streams = keyed_draws.Streams(_KEYS)
  generators = [_generator(key) for key in _KEYS]
  odd = np.arange(len(_KEYS)) % 2 == 1
  for turn in range(6):
    np.testing.assert_array_equal(streams.next64(),
                                  [g.bit_generator.random_raw() for g in generators])
    np.testing.assert_array_equal(streams.next_double(), [g.random() for g in generators])
    rows = odd if turn % 2 else np.ones(len(_KEYS), bool)
    for _ in range(3):  # an odd count: the high half stays buffered across the next turn
      got = streams.next32(rows)
      for k, g in enumerate(generators):
        if rows[k]:
          assert got[k] == g.bit_generator.ctypes.next_uint32(g.bit_generator.ctypes.state)


@pytest.mark.parametrize("n", [2, 3, 28, 1000, (1 << 31) + 1])
def test_bounded_draws_equal_integers_and_flag_every_lemire_rejection(n):
  """At n = 2^31 + 1 about half the draws fall below Lemire's threshold: those rows are flagged
  (NumPy redraws them), and every other row is exactly `Generator.integers(0, n)`."""
  keys = np.stack([np.arange(400), np.full(400, 5)], axis=1)
  rows = np.arange(400) % 5 != 0
  values, rejected = keyed_draws.Streams(keys).bounded(rows, np.full(400, n))
  expected = np.array([_generator(key).integers(0, n) for key in keys])
  kept = rows & ~rejected
  np.testing.assert_array_equal(values[kept], expected[kept])
  assert not rejected[~rows].any()
  if n > 1 << 31:
    assert 100 < rejected.sum() < 300 and (values[rejected] != expected[rejected]).any()
  else:
    assert not rejected.any()


@pytest.mark.parametrize(
    "image_hw,spec",
    [
        ((28, 28), crops.CropSpec(28, scale=(0.35, 1.0))),
        ((28, 28), crops.CropSpec(28, scale=(1.0, 1.0))),  # box as tall as the image: no top draw
        ((4, 40), crops.CropSpec(8)),  # most tries fail: the centre crop
        ((40, 4), crops.CropSpec(8, flip=False)),
        ((17, 40), crops.CropSpec(24, ratio=(0.5, 2.0))),
        ((1, 1), crops.CropSpec(3)),
    ])
def test_batched_crop_boxes_equal_crop_params_key_by_key(image_hw, spec):
  ids = np.arange(250).repeat(4)
  slots = np.tile(np.arange(4), 250) * 7
  boxes, flips = crops.crop_boxes(3, ids, slots, image_hw, spec)
  raw_boxes, raw_flips, exact = crops.resized_boxes(
      np.stack(
          [np.full_like(ids, 3), ids, slots, np.zeros_like(ids)], axis=1), image_hw, spec.scale,
      spec.ratio, spec.flip)
  for k, (i, s) in enumerate(zip(ids, slots, strict=True)):
    params = crops.crop_params(3, int(i), int(s), image_hw, spec)
    assert tuple(boxes[k]) == (params.top, params.left, params.height, params.width)
    assert bool(flips[k]) == params.flip
  # The vectorised draws settle these rows themselves (none needed the scalar redo).
  assert exact.all()
  np.testing.assert_array_equal(raw_boxes, boxes)
  np.testing.assert_array_equal(raw_flips, flips)
  with pytest.raises(ValueError, match="non-negative"):
    crops.crop_boxes(3, np.array([-1]), np.array([0]), image_hw, spec)


@pytest.mark.parametrize("kept", [1, 2, 5, 300])
def test_batched_slot_draws_equal_draw_slot(kept):
  ids, epochs = np.arange(200).repeat(3), np.tile(np.arange(3), 200)
  slots = np.arange(kept) * 2 + 1  # any kept slots: the draw is an index into them
  index = table_lib.draw_slots(11, ids, epochs, np.full(len(ids), kept))
  expected = [
      table_lib.draw_slot(11, int(i), int(e), slots) for i, e in zip(ids, epochs, strict=True)
  ]
  np.testing.assert_array_equal(slots[index], expected)


def _example(spec, plan=None, on_device=True, count=30):
  rng = np.random.default_rng(0)
  source = array_source.ArraySource(rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8),
                                    np.arange(count) % 10, 10)
  pool_ids = np.arange(count)[::-1].copy()  # pool positions are not ids
  normalizer = pipeline.Normalizer((0.5,), (0.5,))
  return pipeline.CropExample(source, pool_ids, spec, 4, normalizer, cutmix_plan=plan,
                              on_device=on_device)


def _assert_same_batch(batch, elements):
  stacked = pipeline.stack_elements(elements)
  assert batch.keys() == stacked.keys()
  for name, value in stacked.items():
    assert batch[name].dtype == value.dtype and batch[name].shape == value.shape, name
    np.testing.assert_array_equal(batch[name], value, err_msg=name)


@pytest.mark.parametrize("case", ["plain", "planned_cutmix", "cutmix_drawn", "shuffled"])
def test_a_device_and_a_host_batch_equal_their_elements_stacked(case):
  spec = crops.CropSpec(28, scale=(0.2, 1.0))
  plan = None
  if case == "planned_cutmix":
    plan = relabel_batches.cutmix_plan(30, 3, 8, 2, 1.0, 28)
  elif case == "cutmix_drawn":  # drawn per crop: made element by element, still equal
    spec = dataclasses.replace(spec, cutmix_alpha=1.0)
  elif case == "shuffled":
    spec = crops.rded_spec(28, 2)
  positions, slots = np.arange(30) % 30, np.arange(30) % 3
  example = _example(spec, plan)
  fields, metadata = example.device_batch(positions, slots)
  elements = [example.device_element(int(p), int(s)) for p, s in zip(positions, slots, strict=True)]
  _assert_same_batch(fields, [e[0] for e in elements])
  _assert_same_batch(metadata, [e[1] for e in elements])
  if case == "planned_cutmix":
    assert (fields["partner_index"] >= 0).sum() > 10
  # The host's batch: the same draws, each crop cut (and pasted) by PIL, normalised at once.
  host = _example(spec, plan, on_device=False)
  images, metadata = host.host_batch(positions, slots)
  made = [host.raw_crop(int(p), int(s)) for p, s in zip(positions, slots, strict=True)]
  _assert_same_batch(images,
                     [host((int(p), int(s))) for p, s in zip(positions, slots, strict=True)])
  _assert_same_batch(metadata, [m for _, _, m in made])


def test_fresh_crops_batches_equal_grains_stacked_elements_across_epochs():
  """The batched stream (one `batch` call per step) equals the element stream Grain batches, in
  a batch that straddles two epochs, for a device pool and for host crops."""
  for on_device in (True, False):
    fresh = pipeline.FreshCrops(_example(crops.CropSpec(28), on_device=on_device),
                                pipeline.EpochShuffle(30, 5), slot_offset=2)
    positions = np.arange(24, 36)
    _assert_same_batch(fresh.batch(positions), [fresh(int(p)) for p in positions])
    batched = pipeline.process_batches(fresh, num_batches=4, global_batch=12)
    element_wise = pipeline.process_batches(fresh.__call__, num_batches=4, global_batch=12)
    for got, expected in zip(batched, element_wise, strict=True):
      assert got.keys() == expected.keys()
      for name in got:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
