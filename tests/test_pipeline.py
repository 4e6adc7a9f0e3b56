"""The Grain training stream: deterministic, epoch-reshuffled, and independent of workers/hosts."""

import numpy as np
import pytest

from hardlabel_jax import config_schema
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
