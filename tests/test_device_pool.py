"""Pools on the devices: where crops are made, one-transfer batches, and device-cropped runs."""

import dataclasses
import os

import chex
import jax
import numpy as np
import pytest

from hardlabel_jax import batch_feed
from hardlabel_jax import cache
from hardlabel_jax import inference
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax import trainer
from hardlabel_jax.data import array_source
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import replay
from hardlabel_jax.soft_labels import table as table_lib
from helpers import Killed
from helpers import tiny_config


@dataclasses.dataclass
class _Device:
  """A stand-in for a `jax.Device` of another platform, reporting its memory."""
  platform: str
  bytes_limit: int = 0

  def memory_stats(self):
    return {"bytes_limit": self.bytes_limit} if self.bytes_limit else None


def _source(count, shape=(28, 28, 1)):
  images = np.zeros((count, *shape), np.uint8)
  return array_source.ArraySource(images, np.arange(count) % 10, 10)


def test_auto_crops_on_the_host_on_cpu_and_on_an_accelerator_whose_memory_holds_the_pool():
  source, ids = _source(100), np.arange(100)
  assert device_pool.choose("auto", 0, source, ids, jax.devices()) == device_pool.HOST
  assert device_pool.choose("host", 0, source, ids, [_Device("gpu", 1 << 30)]) == device_pool.HOST
  assert device_pool.choose("auto", 0, source, ids, [_Device("gpu", 1 << 30)]) == device_pool.DEVICE
  # 100 images of 784 bytes are 78,400 bytes: over a quarter of a 256 KiB device, under 1 MiB's.
  assert device_pool.choose("auto", 0, source, ids, [_Device("tpu", 256 << 10)]) == device_pool.HOST
  assert device_pool.choose("auto", 0, source, ids, [_Device("tpu", 1 << 20)]) == device_pool.DEVICE
  # The smallest device decides; an explicit budget overrides the device's memory.
  two = [_Device("gpu", 1 << 30), _Device("gpu", 256 << 10)]
  assert device_pool.choose("auto", 0, source, ids, two) == device_pool.HOST
  assert device_pool.choose("auto", 1, source, ids, two) == device_pool.DEVICE
  # Forced onto the CPU backend's "devices" it is placed (the benchmark's device column).
  assert device_pool.choose("device", 0, source, ids, jax.devices()) == device_pool.DEVICE


def test_a_pool_that_must_be_on_the_devices_and_cannot_be_is_an_error_naming_the_sizes():
  big = _source(1400)  # 1,097,600 bytes
  with pytest.raises(
      device_pool.DevicePoolError,
      match=r"1400 images of \(28, 28, 1\) take 1\.0 MiB, over the device pool "
      r"budget of 1\.0 MiB.*crop_backend='host'"):
    device_pool.choose("device", 1, big, np.arange(1400), jax.devices())
  assert device_pool.choose("auto", 1, big, np.arange(1400), [_Device("gpu")]) == device_pool.HOST

  class Mixed:
    info = dataclasses.replace(big.info, image_shape=(None, None, 1))

    def __getitem__(self, i):
      return {"image": np.zeros((28 + int(i) % 2, 28, 1), np.uint8), "label": 0, "id": int(i)}

  with pytest.raises(device_pool.DevicePoolError, match="differ in shape"):
    device_pool.choose("device", 0, Mixed(), np.arange(4), jax.devices())
  assert device_pool.choose("auto", 0, Mixed(), np.arange(4), [_Device("gpu")]) == device_pool.HOST
  with pytest.raises(ValueError, match="crop_backend: must be one of"):
    device_pool.planned_backend("gpu")


def test_a_batch_goes_over_in_one_packed_transfer_and_arrives_whole_on_1_and_8_devices():
  rng = np.random.default_rng(0)
  local = {
      "image": rng.normal(size=(16, 5, 5, 3)).astype(np.float32),
      "soft_label": rng.random((16, 10), np.float32),
      "label": rng.integers(0, 10, 16).astype(np.int32),
      "id": rng.integers(0, 2**31 - 1, 16).astype(np.int64),
      "mix_lambda": np.linspace(0, 1, 16, dtype=np.float32),
      "crop_box": rng.integers(-3, 300, (16, 4)).astype(np.int32),
      "crop_flip": rng.random(16) < 0.5,
      "mask": np.ones(16, np.float32),
  }
  layout = batch_feed.RowLayout.of(local)
  packed = layout.pack(local)
  # One uint8 row per example holding every leaf's bytes (the int64 ids as int32, as JAX keeps
  # them without x64; the booleans as bytes).
  assert packed.dtype == np.uint8 and packed.shape == (16, layout.row_bytes)
  assert layout.row_bytes == 4 * (75 + 10 + 1 + 1 + 1 + 4 + 1) + 1
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh = mesh_lib.data_mesh(devices)
    out = batch_feed.BatchFeed(mesh)(local)
    assert sorted(out) == sorted(local)
    for name, value in local.items():
      got = np.asarray(out[name])
      expected = value.astype(np.int32) if value.dtype == np.int64 else value
      expected = expected.astype(np.uint8) if value.dtype == np.bool_ else expected
      assert got.dtype == expected.dtype and got.shape == value.shape, name
      np.testing.assert_array_equal(got, expected, err_msg=name)  # bit for bit
    assert out["image"].sharding == mesh_lib.batch_sharded(mesh)


def _soft_config(tmp_path, teacher_dir, **overrides):
  config = tiny_config(regime="sl", teacher_workdir=teacher_dir, cache_dir=str(tmp_path / "cache"),
                       crops_per_image=3, temperature=4.0, random_flip=True, crop_scale=(0.2, 1.0),
                       cutmix_alpha=1.0, budget_examples=16 * 6, crop_backend="device")
  for key, value in overrides.items():
    config[key] = value
  return config


def test_a_device_table_replays_exactly_the_pixels_its_labels_were_computed_on(
    tmp_path, teacher_dir, monkeypatch):
  seen = {}
  original = inference.log_probs_fn

  def recording(model, mesh, temperature):
    predict = original(model, mesh, temperature)

    def wrapped(variables, batch):
      for row, image in zip(np.asarray(batch["row"]), np.asarray(batch["image"]), strict=True):
        seen.setdefault(int(row), image)
      return predict(variables, batch)

    return wrapped

  monkeypatch.setattr(inference, "log_probs_fn", recording)
  config = _soft_config(tmp_path, teacher_dir)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  assert len(seen) == 300 and table.spec.crop_spec["resampler"] == device_pool.DEVICE_RESAMPLER
  data = run_data.load_run_data(config)
  assert data.crop_backend == device_pool.DEVICE
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  device = run_data.device_crops(data, mesh)
  stored = run_data.table_crop_example(config, data)
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 0), table.directory, draw_seed=0)
  rows = (0, 1, 2, 5, 151, 299)
  # The replay's elements hold no pixels: the devices make them from the pool.
  elements = [crops.replay(*divmod(row, 3)) for row in rows]
  assert "image" not in elements[0]
  local = {k: np.stack([e[k] for e in elements]) for k in elements[0]}
  local["row"] = np.asarray(rows, np.int32)
  images = np.asarray(batch_feed.BatchFeed(mesh, device)(local)["image"])
  teacher = teacher_lib.load_teacher(teacher_dir, num_classes=10, input_shape=(1, 28, 28, 1),
                                     mesh=mesh)
  for k, row in enumerate(rows):
    np.testing.assert_array_equal(images[k], seen[row])  # bit-identical pixels
    logits = teacher.model.apply(teacher.variables, images[k][None], train=False)
    expected = np.asarray(jax.nn.softmax(logits / 4.0))[0].astype(np.float16)
    np.testing.assert_allclose(local["soft_label"][k], expected.astype(np.float32), atol=2e-3)


def test_a_host_table_is_never_replayed_on_device_crops(tmp_path, teacher_dir):
  host = _soft_config(tmp_path, teacher_dir, crop_backend="host")
  table = plan.relabel_table(host, str(tmp_path / "relabel"))
  assert "resampler" not in table.spec.crop_spec
  # Pinned to the host table, a device run is refused by the table's identity ...
  device = _soft_config(tmp_path, teacher_dir, label_table_dir=table.directory)
  with pytest.raises(cache.IdentityMismatchError,
                     match="crop_resampler: saved None vs now 'device_crops'"):
    plan.train(device, str(tmp_path / "sl"))
  assert not os.path.exists(tmp_path / "sl")
  # ... and, behind it, by the header, which records the resampler its rows were cropped with.
  expected = dataclasses.replace(
      table.spec, crop_spec={
          **table.spec.crop_spec, "resampler": device_pool.DEVICE_RESAMPLER
      })
  with pytest.raises(table_lib.TableMismatchError, match="crop_spec: table has"):
    table_lib.SoftLabelTable.open(table.directory, expected=expected)
  # Without a pinned directory the device run gets a table of its own.
  run = plan.train(_soft_config(tmp_path, teacher_dir), str(tmp_path / "sl_device"))
  assert run.results["crop_backend"] == "device" and run.results["table_dir"] != table.directory


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["hl", "hald"])
def test_device_cropped_runs_agree_on_1_and_8_devices_and_after_a_kill(
    tmp_path, teacher_dir, regime):
  # HALD: soft phases replay the CutMixed table, the hard phase pastes per-example partners
  # drawn from the pool ('pool'), both made on the devices.
  if regime == "hl":
    config = tiny_config(cutmix_alpha=1.0, crop_backend="device", budget_examples=16 * 12)
  else:
    config = _soft_config(tmp_path, teacher_dir, regime=regime, hald_hard_cutmix="pool",
                          budget_examples=16 * 12)
  one = plan.train(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  assert one.results["crop_backend"] == "device"
  eight = plan.train(config, str(tmp_path / "eight"), devices=jax.devices()[:8])
  chex.assert_trees_all_close(eight.state.params, one.state.params, atol=2e-5)

  def kill_at_6(step):
    if step == 6:
      raise Killed("simulated preemption after step 6")

  with pytest.raises(Killed):
    plan.train(config, str(tmp_path / "resumed"), devices=jax.devices()[:1], step_hook=kill_at_6)
  resumed = plan.train(config, str(tmp_path / "resumed"), devices=jax.devices()[:1])
  assert resumed.results["resumed_from_step"] == 4
  chex.assert_trees_all_close(resumed.state.params, one.state.params, atol=0)  # bit-exact
  assert resumed.results["test_top1"] == one.results["test_top1"]


@pytest.mark.parametrize("regime", ["hl", "sl"])
def test_host_and_device_crops_train_the_same_run_bit_for_bit(tmp_path, teacher_dir, regime):
  # The device's crops equal PIL's pixel for pixel and are normalised through the host
  # Normalizer's own values, so the two inputs give the same batches: the same weights, and under
  # SL the same stored labels (each backend relabels into its own table).
  runs = {}
  for backend in ("host", "device"):
    if regime == "hl":
      config = tiny_config(cutmix_alpha=1.0, crop_backend=backend)
    else:
      config = _soft_config(tmp_path, teacher_dir, crop_backend=backend)
    runs[backend] = plan.train(config, str(tmp_path / backend))
    assert runs[backend].results["crop_backend"] == backend
  chex.assert_trees_all_equal(runs["device"].state.params, runs["host"].state.params)
  assert runs["device"].results["test_loss"] == runs["host"].results["test_loss"]
  if regime == "sl":
    tables = [table_lib.SoftLabelTable.open(runs[b].results["table_dir"]) for b in runs]
    assert tables[0].directory != tables[1].directory
    positions, slots = np.arange(100).repeat(3), np.tile(np.arange(3), 100)
    host_rows, device_rows = (t.gather(positions, slots) for t in tables)
    for name in host_rows.dtype.names:
      np.testing.assert_array_equal(device_rows[name], host_rows[name], err_msg=name)


@pytest.mark.parametrize("regime,keep,backend", [("sl", 1.0, "device"), ("sl", 0.5, "device"),
                                                 ("hald", 1.0, "device"), ("sl", 0.5, "host"),
                                                 ("hald", 1.0, "host")])
def test_a_batch_of_the_replay_stream_equals_its_elements_stacked(tmp_path, teacher_dir, regime,
                                                                  keep, backend):
  """The training stream's `batch` (slots, crop fields and table rows of a whole batch drawn at
  once) against the element path Grain stacks: SL at every kept slot and at half of them (LPLD's
  per-image pruning), and HALD's soft and hard phases; crops made on the devices and by PIL on the
  host. Without CutMix, so every draw is batched."""
  config = _soft_config(tmp_path, teacher_dir, regime=regime, cutmix_alpha=0.0,
                        label_keep_fraction=keep, crops_per_image=4, budget_examples=16 * 25,
                        crop_backend=backend)
  if keep < 1:
    config.label_pruning = "per_image"
  if regime == "hald":
    config.hald_cutmix_alpha = 0.0
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  phases = trainer.step_phases(config, trainer.budget_from_config(config, len(data.pool_ids)))
  stream = trainer.training_examples(config, data, table, phases)
  seen = set()
  for step in range(phases.num_steps):
    positions = np.arange(step * 16, (step + 1) * 16)
    seen.add(phases.of_step(step))
    batch, elements = stream.batch(positions), [stream(int(p)) for p in positions]
    assert batch.keys() == elements[0].keys() and ("image" in batch) == (backend == "host")
    for name in batch:
      expected = np.stack([e[name] for e in elements])
      assert batch[name].dtype == expected.dtype, name
      np.testing.assert_array_equal(batch[name], expected, err_msg=name)
  assert seen == ({"soft", "hard"} if regime == "hald" else {"soft"})
