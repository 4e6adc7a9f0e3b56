"""data/pool_memory.py: a pool kept in memory gives the source's examples and the same crops."""

import pickle

import numpy as np

from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import pool_memory
from hardlabel_jax.data.source import SourceInfo


class _CountingSource:
  """An ImageSource that counts its reads."""

  def __init__(self, n=12, shape=(6, 5, 1)):
    self.info = SourceInfo("counting", "train", 3, shape, "f" * 16)
    rng = np.random.default_rng(0)
    self._images = rng.integers(0, 256, (n, 6, 5, 1), dtype=np.uint8)
    self.reads = 0

  def __len__(self):
    return len(self._images)

  def __getitem__(self, index):
    self.reads += 1
    return {"image": self._images[index], "label": index % 3, "id": index}

  def labels(self):
    return np.arange(len(self._images)) % 3


def test_the_pool_is_read_once_and_other_ids_still_reach_the_source():
  source = _CountingSource()
  pool = np.array([3, 7, 7, 1])
  cached = pool_memory.in_memory(source, pool)
  assert isinstance(cached, pool_memory.PoolInMemory)
  for _ in range(5):
    for i in pool:
      assert cached[int(i)]["id"] == i
      np.testing.assert_array_equal(cached[int(i)]["image"], source._images[i])
  assert source.reads == 3  # ids 1, 3, 7 once each
  assert cached[0]["id"] == 0 and source.reads == 4  # not in the pool: read through
  assert len(cached) == 12 and cached.info == source.info
  np.testing.assert_array_equal(cached.labels(), source.labels())


def test_crops_from_the_copy_equal_crops_from_the_source():
  source = _CountingSource()
  pool = np.array([2, 5, 9, 11])
  spec = crops.CropSpec(output_size=4, scale=(0.3, 1.0), ratio=(0.75, 1.33), flip=True,
                        cutmix_alpha=1.0)
  normalizer = pipeline.Normalizer((0.5,), (0.5,))
  plain = pipeline.CropExample(source, pool, spec, 3, normalizer)
  cached = pipeline.CropExample(pool_memory.in_memory(source, pool), pool, spec, 3, normalizer)
  for position in range(4):
    for slot in range(3):
      a, b = plain((position, slot)), cached((position, slot))
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_the_pickle_carries_no_copy_and_the_receiver_reads_its_own():
  source = _CountingSource()
  cached = pool_memory.in_memory(source, np.array([0, 1]))
  cached[0]
  clone = pickle.loads(pickle.dumps(cached))
  assert clone._examples is None
  assert clone[1]["id"] == 1


def test_pools_too_large_or_of_varying_sizes_stay_on_the_source(monkeypatch):
  source = _CountingSource()
  monkeypatch.setattr(pool_memory, "MAX_BYTES", 2 * 6 * 5)
  assert pool_memory.in_memory(source, np.arange(3)) is source
  assert isinstance(pool_memory.in_memory(source, np.arange(2)), pool_memory.PoolInMemory)
  source.info = SourceInfo("counting", "train", 3, (None, None, 1), "f" * 16)
  assert pool_memory.in_memory(source, np.arange(2)) is source
