"""Relabel → table → SL / SL+KD / HALD runs: replay fidelity, label bytes, errors, resumption."""

import os

import jax
import numpy as np
import pytest

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import inference
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import replay
from hardlabel_jax.soft_labels import table as table_lib
from helpers import Killed
from helpers import tiny_config


def soft_config(tmp_path, teacher_dir, **overrides):
  config = tiny_config(regime="sl", teacher_workdir=teacher_dir, cache_dir=str(tmp_path / "cache"),
                       crops_per_image=3, temperature=4.0, random_flip=True, crop_scale=(0.2, 1.0),
                       budget_examples=16 * 6)
  for key, value in overrides.items():
    config[key] = value
  return config


def _table_dir(tmp_path):
  (name,) = os.listdir(tmp_path / "cache" / "tables")
  return str(tmp_path / "cache" / "tables" / name)


def test_replayed_crop_is_pixel_identical_to_what_the_teacher_saw(tmp_path, teacher_dir,
                                                                  monkeypatch):
  seen = {}
  original = inference.log_probs_fn

  def recording(model, mesh, temperature, bn_mode):
    predict = original(model, mesh, temperature, bn_mode)

    def wrapped(variables, batch):
      images, rows = np.asarray(batch["image"]), np.asarray(batch["row"])
      for row, image in zip(rows, images, strict=True):
        seen.setdefault(int(row), image)
      return predict(variables, batch)

    return wrapped

  monkeypatch.setattr(inference, "log_probs_fn", recording)
  config = soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  assert table.num_rows == 100 * 3 and len(seen) == 300
  data = run_data.load_run_data(config)
  stored = pipeline.CropExample(data.train, data.pool_ids, data.crop_spec, config.crop_seed,
                                data.normalizer)
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 0), table.directory, draw_seed=0)
  teacher = teacher_lib.load_teacher(teacher_dir, num_classes=10, input_shape=(1, 28, 28, 1),
                                     mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))
  for row in (0, 1, 2, 5, 151, 299):
    position, slot = divmod(row, 3)
    example = crops.replay(position, slot)
    np.testing.assert_array_equal(example["image"], seen[row])  # bit-identical pixels
    # ... and the stored label is the teacher's softmax(z/T) of exactly those pixels (fp16).
    logits = teacher.model.apply(teacher.variables, example["image"][None], train=False)
    expected = np.asarray(jax.nn.softmax(logits / 4.0))[0].astype(np.float16)
    np.testing.assert_allclose(example["soft_label"], expected.astype(np.float32), atol=2e-3)
  assert table.spec.cutmix and table.metadata(0, 1)["partner_id"] >= 0


@pytest.mark.slow
def test_regimes_report_the_label_bytes_they_used(tmp_path, teacher_dir):
  sl = plan.train(soft_config(tmp_path, teacher_dir), str(tmp_path / "sl"))
  table = table_lib.SoftLabelTable.open(_table_dir(tmp_path))
  assert sl.results["regime"] == "sl" and sl.results["label_bytes"] == 300 * table.bytes_per_row
  assert table.bytes_per_row == 2 * 10 + 9  # full fp16 labels + box/flip metadata
  assert sl.results["phase_steps"] == {"soft": 6}
  # LPLD: keep 1 of 3 crops per image → a third of the bytes, same table.
  pruned = plan.train(soft_config(tmp_path, teacher_dir, label_keep_fraction=1 / 3),
                      str(tmp_path / "pruned"))
  assert pruned.results["label_bytes"] == 100 * table.bytes_per_row
  assert pruned.results["table_dir"] == sl.results["table_dir"]
  hald_run = plan.train(
      soft_config(tmp_path, teacher_dir, regime="hald", hald_schedule="S6",
                  budget_examples=16 * 25), str(tmp_path / "hald"))
  # 25 steps × 16 = 400 examples = 4 epochs of 100: S6 → soft, hard, hard, soft.
  assert set(hald_run.results["phase_steps"]) == {"soft", "hard"}
  assert hald_run.results["label_bytes"] == sl.results["label_bytes"]
  sl_kd_config = soft_config(tmp_path, teacher_dir, regime="sl_kd")
  config_schema.unset(sl_kd_config, "crops_per_image")  # SL+KD labels every crop online
  sl_kd = plan.train(sl_kd_config, str(tmp_path / "sl_kd"))
  assert sl_kd.results["label_bytes"] == 0 and np.isfinite(sl_kd.results["test_loss"])
  assert len(os.listdir(tmp_path / "cache" / "tables")) == 1  # every run shared one table


def _flip_a_byte(path, offset=5):
  data = bytearray(open(path, "rb").read())
  data[offset] ^= 0xFF
  open(path, "wb").write(bytes(data))


def test_bad_tables_fail_before_training_and_overwrite_nothing(tmp_path, teacher_dir):
  config = soft_config(tmp_path, teacher_dir, table_positions_per_shard=40)
  plan.relabel_table(config, str(tmp_path / "relabel"))
  directory = _table_dir(tmp_path)
  shard = os.path.join(directory, "shard-00001.bin")
  original = open(shard, "rb").read()

  _flip_a_byte(shard)
  with pytest.raises(table_lib.TableError, match="shard-00001"):
    plan.train(config, str(tmp_path / "run_corrupt"))
  assert not os.path.exists(tmp_path / "run_corrupt")
  assert open(shard, "rb").read() != original  # the evidence is left for the user

  open(shard, "wb").write(original)
  os.remove(os.path.join(directory, "shard-00002.bin"))
  with pytest.raises(table_lib.TableError, match="shard-00002"):
    plan.train(config, str(tmp_path / "run_missing"))
  assert not os.path.exists(tmp_path / "run_missing")

  # A table made for another subset, handed to a run explicitly.
  other = soft_config(tmp_path, teacher_dir, subset_seed=1, cache_dir=str(tmp_path / "other"))
  other_table = plan.relabel_table(other, str(tmp_path / "relabel_other"))
  explicit = soft_config(tmp_path, teacher_dir, label_table_dir=other_table.directory)
  # Its recorded identity names the difference before anything is built ...
  with pytest.raises(cache.IdentityMismatchError, match="subset_seed: saved 1 vs now 0"):
    plan.train(explicit, str(tmp_path / "run_other"))
  assert not os.path.exists(tmp_path / "run_other")
  # ... and one made at another temperature.
  warm = soft_config(tmp_path, teacher_dir, temperature=8.0, label_table_dir=other_table.directory,
                     subset_seed=1)
  with pytest.raises(cache.IdentityMismatchError, match="temperature: saved 4.0 vs now 8.0"):
    plan.train(warm, str(tmp_path / "run_warm"))
  # Without its identity record (a table written by hand), the header's content check catches it.
  os.remove(os.path.join(other_table.directory, cache.IDENTITY_FILE))
  with pytest.raises(table_lib.TableError, match="ids"):
    plan.train(explicit, str(tmp_path / "run_other"))
  with pytest.raises(table_lib.TableError, match="temperature"):
    plan.train(warm, str(tmp_path / "run_warm"))
  assert not os.path.exists(tmp_path / "run_other") and not os.path.exists(tmp_path / "run_warm")


def test_interrupted_relabel_resumes_to_the_same_table(tmp_path, teacher_dir):
  config = soft_config(tmp_path, teacher_dir, table_positions_per_shard=30)

  def die_after_first(shard):
    if shard == 1:
      raise Killed("simulated preemption")

  with pytest.raises(Killed):
    plan.relabel_table(config, str(tmp_path / "relabel"), shard_hook=die_after_first)
  (name,) = [n for n in os.listdir(tmp_path / "cache" / "tables")]
  assert name.endswith(".partial")  # nothing readable under the table's own name
  with pytest.raises(table_lib.TableError, match="interrupted"):
    table_lib.SoftLabelTable.open(str(tmp_path / "cache" / "tables" / name[:-len(".partial")]))

  resumed_shards = []
  table = plan.relabel_table(config, str(tmp_path / "relabel"), shard_hook=resumed_shards.append)
  assert resumed_shards == [2, 3]  # shards 0 and 1 were kept
  fresh = plan.relabel_table(
      soft_config(tmp_path, teacher_dir, table_positions_per_shard=30,
                  cache_dir=str(tmp_path / "fresh")), str(tmp_path / "relabel_fresh"))
  for shard in range(4):
    name = f"shard-{shard:05d}.bin"
    assert (open(os.path.join(table.directory, name),
                 "rb").read() == open(os.path.join(fresh.directory, name), "rb").read())


def test_drift_task_writes_csv_json_and_png(tmp_path, teacher_dir):
  config = soft_config(tmp_path, teacher_dir, task="drift", drift_crop_counts=(1, 2, 4),
                       temperature=1.0)
  config_schema.unset(config, "learning_rate", "crops_per_image")  # drift neither trains nor stores
  rows = plan.measure_drift(config, str(tmp_path / "drift"))
  assert [r["crops_per_image"] for r in rows] == [1, 2, 4]
  assert all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in rows)
  for name in ("drift.csv", "drift.json", "drift.png"):
    assert (tmp_path / "drift" / name).stat().st_size > 0


def test_bssl_relabel_uses_batch_statistics_and_eval_mode_the_running_ones():
  from hardlabel_jax import models
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  model = models.create_model("convnet_d3", 4, width=8, norm="batch")
  images = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 12, 12, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), images[:1], train=False)
  teacher = teacher_lib.Teacher(model, variables, "mem", {}, "fp")
  batch = {"image": images, "mask": np.ones(16, np.float32)}
  eval_out = inference.log_probs_fn(teacher.model, mesh, 2.0, "eval")(variables, batch)
  bssl_out = inference.log_probs_fn(teacher.model, mesh, 2.0, "batch_stats")(variables, batch)
  expected_eval = jax.nn.log_softmax(model.apply(variables, images, train=False) / 2.0)
  expected_bssl = jax.nn.log_softmax(
      model.apply(variables, images, train=True, mutable=["batch_stats"])[0] / 2.0)
  np.testing.assert_allclose(eval_out["log_probs"], expected_eval, atol=1e-5)
  # Statistics of the whole global batch (8 shards), not of each device's 2 rows.
  np.testing.assert_allclose(bssl_out["log_probs"], expected_bssl, atol=1e-4)
  assert np.abs(np.asarray(eval_out["log_probs"]) - np.asarray(bssl_out["log_probs"])).max() > 1e-3


def test_table_crops_survive_pickling_for_grain_workers(tmp_path, teacher_dir):
  import pickle
  config = soft_config(tmp_path, teacher_dir)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  stored = pipeline.CropExample(data.train, data.pool_ids, data.crop_spec, config.crop_seed,
                                data.normalizer)
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 3), table.directory, draw_seed=3,
                            keep_fraction=2 / 3)
  before = [crops(p) for p in range(0, 400, 37)]  # opens the table's memory maps
  clone = pickle.loads(pickle.dumps(crops))
  assert "table" not in clone.__dict__  # re-opened lazily in the worker, not shipped
  for position, expected in zip(range(0, 400, 37), before, strict=True):
    got = clone(position)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  # Pruned to 2 of 3 slots: over many epochs an image replays exactly its kept slots.
  slots = {crops.slot_for(7, epoch) for epoch in range(60)}
  kept = table_lib.kept_slots(3, int(data.pool_ids[7]), 3, 2 / 3)
  assert slots == set(kept.tolist()) and len(kept) == 2
