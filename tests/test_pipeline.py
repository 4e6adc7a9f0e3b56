"""The Grain training stream: deterministic, epoch-reshuffled, and independent of workers/hosts."""

import dataclasses

import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import image_sets
from hardlabel_jax import relabel
from hardlabel_jax import run_data
from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data.array_source import ArraySource


def _source(n=24, size=12, classes=4):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return ArraySource(images, np.arange(n) % classes, classes)


def _example(source, pool_ids, seed=0, cutmix=0.0):
  spec = crops.CropSpec(output_size=8, cutmix_alpha=cutmix)
  return pipeline.CropExample(source, np.asarray(pool_ids), spec, seed,
                              pipeline.Normalizer((0.5,) * 3, (0.25,) * 3))


def _collect(iterator):
  return [dict(b) for b in iterator]


def test_each_epoch_is_a_fresh_permutation_of_the_pool():
  source = _source()
  pool = np.arange(3, 23)  # 20 examples
  batches = _collect(
      pipeline.training_stream(_example(source, pool), global_batch=5, num_steps=12, seed=1))
  ids = np.concatenate([b["id"] for b in batches])
  slots = np.concatenate([b["slot"] for b in batches])
  epoch0, epoch1, epoch2 = ids[:20], ids[20:40], ids[40:]
  assert sorted(epoch0) == sorted(epoch1) == list(pool)
  assert not np.array_equal(epoch0, epoch1)
  assert set(epoch2) <= set(pool)
  np.testing.assert_array_equal(slots, np.arange(60) // 20)  # slot = epoch for fresh crops


def test_epoch_order_is_the_seeded_numpy_permutation():
  """The order is pinned: epoch e of seed s is `default_rng(epoch_shuffle_seed(s, e))
  .permutation(n)`, whatever instance or call order asks (cached arrays are read-only)."""
  n, seed = 37, 5
  order = pipeline.EpochShuffle(n, seed)
  for epoch in (3, 0, 3, 1):
    expected = np.random.default_rng(pipeline.epoch_shuffle_seed(seed, epoch)).permutation(n)
    got = [pipeline.EpochShuffle(n, seed)(epoch * n + k) for k in range(n)]
    assert got == [(int(p), epoch) for p in expected]
    assert order(epoch * n + 7) == (int(expected[7]), epoch)
  with pytest.raises(ValueError):
    pipeline.epoch_permutation(n, seed, 0)[0] = 1
  assert pipeline.EpochShuffle(1, seed)(4) == (0, 4)


def test_same_seed_same_stream_other_seed_other_order():
  source, pool = _source(), np.arange(24)
  a = _collect(pipeline.training_stream(_example(source, pool), global_batch=8, num_steps=3,
                                        seed=7))
  b = _collect(pipeline.training_stream(_example(source, pool), global_batch=8, num_steps=3,
                                        seed=7))
  c = _collect(pipeline.training_stream(_example(source, pool), global_batch=8, num_steps=3,
                                        seed=8))
  for x, y in zip(a, b, strict=True):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]["id"], c[0]["id"])


def test_worker_processes_and_read_threads_give_identical_batches():
  """Batches do not depend on how they are read: worker processes, read threads, buffer size."""
  source, pool = _source(), np.arange(24)
  kwargs = dict(global_batch=6, num_steps=5, seed=3)
  serial = _collect(
      pipeline.training_stream(_example(source, pool, cutmix=1.0),
                               loading=pipeline.LoaderOptions(0, 0, 1), **kwargs))
  for loading in (pipeline.LoaderOptions(num_workers=2), pipeline.LoaderOptions(0, 16, 500),
                  pipeline.LoaderOptions()):
    other = _collect(
        pipeline.training_stream(_example(source, pool, cutmix=1.0), loading=loading, **kwargs))
    assert len(serial) == len(other) == 5
    for x, y in zip(serial, other, strict=True):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def test_loader_options_come_from_the_config():
  config = config_schema.default_config()
  config.num_workers, config.read_threads, config.read_buffer = 2, 0, 8
  assert pipeline.LoaderOptions.from_config(config) == pipeline.LoaderOptions(2, 0, 8)
  config.read_buffer = 0
  with pytest.raises(ValueError, match="config.read_buffer"):
    config_schema.validate(config)


def test_process_shards_concatenate_to_the_single_process_batch():
  source, pool = _source(), np.arange(24)
  kwargs = dict(global_batch=8, num_steps=4, seed=5)
  whole = _collect(pipeline.training_stream(_example(source, pool), **kwargs))
  parts = [
      _collect(
          pipeline.training_stream(_example(source, pool), process_index=p, process_count=2,
                                   **kwargs)) for p in range(2)
  ]
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])


def test_cutmix_labels_and_lambda():
  source, pool = _source(), np.arange(24)
  batch = next(
      pipeline.training_stream(_example(source, pool, cutmix=1.0), global_batch=24, num_steps=1,
                               seed=0))
  assert batch["image"].shape == (24, 8, 8, 3) and batch["image"].dtype == np.float32
  assert ((batch["mix_lambda"] > 0) & (batch["mix_lambda"] <= 1)).all()
  assert (batch["mix_lambda"] < 1).any()
  np.testing.assert_array_equal(batch["label"], batch["id"] % 4)


def test_iterator_state_resumes_mid_stream():
  source, pool = _source(), np.arange(24)
  iterator = pipeline.training_stream(_example(source, pool), global_batch=4, num_steps=6, seed=2)
  for _ in range(2):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["id"] for _ in range(4)]
  fresh = pipeline.training_stream(_example(source, pool), global_batch=4, num_steps=6, seed=2)
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack([next(fresh)["id"] for _ in range(4)]), np.stack(expected))


def test_evaluation_batches_cover_split_once_with_padding_masked():
  source = _source(n=10)
  batches = list(
      pipeline.evaluation_batches(source, size=12, crop_fraction=1.0,
                                  normalizer=pipeline.Normalizer((0.,) * 3,
                                                                 (1.,) * 3), global_batch=4))
  masks = np.concatenate([b["mask"] for b in batches])
  ids = np.concatenate([b["id"] for b in batches])
  assert masks.sum() == 10 and len(masks) == 12
  np.testing.assert_array_equal(ids[masks == 1], np.arange(10))
  np.testing.assert_allclose(batches[0]["image"][1] * 255, source[1]["image"], atol=1e-4)


def test_batch_must_split_over_processes():
  with pytest.raises(ValueError, match="not divisible by the process count"):
    pipeline.check_batch_split(10, 4)


# RDED's training recipe (LINs-lab/RDED validation/main.py lines 115-126): ShufflePatches(factor),
# RandomResizedCrop(scale=(1/factor, 1)), flip; CutMix over the batch of augmented images.


def test_rded_recipe_crop_is_the_shuffled_box_with_a_shuffled_partner():
  source, pool = _source(), np.arange(24)
  spec = crops.rded_spec(8, 2, cutmix_alpha=1.0)
  example = pipeline.CropExample(source, pool, spec, 3, pipeline.Normalizer((0.5,) * 3,
                                                                            (0.25,) * 3))
  plain = pipeline.CropExample(source, pool, dataclasses.replace(spec, shuffle_factor=1), 3,
                               example.normalizer)
  differs = 0
  for position, slot in ((0, 0), (5, 1), (17, 2), (23, 7)):
    pixels, fields, metadata = example.raw_crop(position, slot)
    own, params, boxed_hw = crops.crop_image(source[position]["image"], 3, position, slot, spec, 24)
    partner_id = int(metadata["partner_id"])
    assert partner_id == params.partner_position >= 0  # pool ids are positions here
    partner, _, _ = crops.crop_image(source[partner_id]["image"], 3, partner_id, slot,
                                     dataclasses.replace(spec, cutmix_alpha=0.0))
    np.testing.assert_array_equal(pixels, crops.paste_cutmix(own, partner, params))
    np.testing.assert_array_equal(metadata["box"], params.box_fractions(boxed_hw))
    assert fields["mix_lambda"] == np.float32(params.mix_lambda)
    # Same box and flip as without the shuffle (separate random streams), other pixels.
    _, _, plain_metadata = plain.raw_crop(position, slot)
    np.testing.assert_array_equal(metadata["box"], plain_metadata["box"])
    differs += not np.array_equal(pixels, plain.raw_crop(position, slot)[0])
  assert differs > 0


def _config_with(**overrides):
  config = config_schema.default_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _rded_config(**overrides):
  return _config_with(**{"selection": "rded", "images_per_class": 2, "rded_factor": 2, **overrides})


def test_crop_recipe_follows_the_config_and_survives_the_distilled_set_rewrite():
  generic = crops.CropSpec(output_size=28, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip=True)
  assert run_data.crop_spec(config_schema.default_config()) == generic  # 'auto' on real images
  rded = _rded_config()
  assert run_data.crop_spec(rded) == crops.rded_spec(28, 2)  # 'auto' on a distilled set
  # The run on the set keeps selection='random' but the resolved recipe and factor.
  trained = image_sets.training_config(rded, "/a/distilled/set")
  assert trained.selection == "random" and trained.train_crop_recipe == "rded"
  assert trained.rded_factor == 2 and run_data.crop_spec(trained) == crops.rded_spec(28, 2)
  rrc = image_sets.training_config(_rded_config(train_crop_recipe="rrc"), "/a/distilled/set")
  assert rrc.train_crop_recipe == "rrc" and run_data.crop_spec(rrc) == generic
  # Asked for by name on any pool; rded_factor 0 ('auto') is 1 up to 64 px, else 2.
  named = config_schema.default_config()
  named.train_crop_recipe, named.rded_factor = "rded", 3
  assert run_data.crop_spec(named) == crops.rded_spec(28, 3)
  named.rded_factor = 0
  assert run_data.crop_spec(named).shuffle_factor == 1
  named.image_size = 96
  assert run_data.crop_spec(named) == crops.rded_spec(96, 2)


def test_rded_recipe_reads_the_factor_and_refuses_a_crop_scale_it_ignores():
  assert "rded_factor" in config_schema.fields_read(
      _rded_config(selection="random", images_per_class=0, train_crop_recipe="rded"))
  assert "crop_scale" not in config_schema.fields_read(_rded_config())
  with pytest.raises(ValueError, match=r"config\.crop_scale: .*train_crop_recipe=rrc"):
    config_schema.validate(_rded_config(crop_scale=(0.2, 1.0)))
  with pytest.raises(ValueError, match=r"config\.rded_factor: .*train_crop_recipe=rded"):
    config_schema.validate(_config_with(rded_factor=3))
  config_schema.validate(_config_with(rded_factor=3, train_crop_recipe="rded"))
  with pytest.raises(ValueError, match=r"config\.train_crop_recipe: 'fancy' is not one of"):
    config_schema.validate(_config_with(train_crop_recipe="fancy"))


def test_table_identity_names_the_resolved_recipe_and_factor():

  def recipe(config):
    return relabel.table_identity(config, {"data": 1}, "teacher")["recipe"]

  generic = recipe(config_schema.default_config())
  assert generic["train_crop_recipe"] == "rrc" and generic["crop_scale"] == [0.08, 1.0]
  on_set = recipe(image_sets.training_config(_rded_config(), "/a/distilled/set"))
  assert on_set["train_crop_recipe"] == "rded" and on_set["rded_factor"] == 2
  assert "crop_scale" not in on_set
  three = recipe(image_sets.training_config(_rded_config(rded_factor=3), "/a/distilled/set"))
  assert len({str(generic), str(on_set), str(three)}) == 3
