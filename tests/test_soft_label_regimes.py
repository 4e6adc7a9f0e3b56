"""Relabel → table → SL / SL+KD / HALD runs: replay fidelity, label bytes, errors, resumption."""

import dataclasses
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

  def recording(model, mesh, temperature):
    predict = original(model, mesh, temperature)

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
  stored = run_data.table_crop_example(config, data)
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
  # Per-image pruning: keep 1 of 3 crops per image → a third of the bytes, same table.
  pruned = plan.train(
      soft_config(tmp_path, teacher_dir, label_keep_fraction=1 / 3, label_pruning="per_image"),
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


def test_relabel_in_eval_mode_uses_the_running_statistics():
  # (BSSL, the batch-statistics mode: tests/test_hald_official.py.)
  from hardlabel_jax import models
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  model = models.create_model("convnet_d3", 4, width=8, norm="batch")
  images = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 12, 12, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), images[:1], train=False)
  batch = {"image": images, "mask": np.ones(16, np.float32)}
  eval_out = inference.log_probs_fn(model, mesh, 2.0)(variables, batch)
  expected_eval = jax.nn.log_softmax(model.apply(variables, images, train=False) / 2.0)
  np.testing.assert_allclose(eval_out["log_probs"], expected_eval, atol=1e-5)


def test_table_crops_survive_pickling_for_grain_workers(tmp_path, teacher_dir):
  import pickle
  config = soft_config(tmp_path, teacher_dir)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  stored = run_data.table_crop_example(config, data)
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


def test_rded_recipe_table_replays_its_shuffled_crops_and_refuses_the_other_recipe(
    tmp_path, teacher_dir, monkeypatch):
  # RDED's training crops (LINs-lab/RDED validation/main.py: ShufflePatches, then
  # RandomResizedCrop(scale=(1/factor, 1)), flip, CutMix): the teacher labels the shuffled crop.
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
  config = soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0, crop_scale=(0.08, 1.0),
                       train_crop_recipe="rded", rded_factor=2)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  assert table.spec.crop_spec["recipe"] == "rded" and table.spec.crop_spec["shuffle_factor"] == 2
  assert table.spec.crop_spec["scale"] == [0.5, 1.0]
  data = run_data.load_run_data(config)
  assert data.crop_spec.shuffle_factor == 2
  stored = run_data.table_crop_example(config, data)
  unshuffled = dataclasses.replace(stored, spec=dataclasses.replace(data.crop_spec,
                                                                    shuffle_factor=1))
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 0), table.directory, draw_seed=0)
  differs = 0
  for row in (0, 1, 2, 5, 151, 299):
    position, slot = divmod(row, 3)
    example = crops.replay(position, slot)  # checks the stored box, flip and CutMix partner
    np.testing.assert_array_equal(example["image"], seen[row])  # bit-identical pixels
    differs += not np.array_equal(example["image"], unshuffled((position, slot))["image"])
  assert differs > 0  # the stored labels are of shuffled pixels

  # A run asking for the generic crop is refused this table: by its identity record ...
  rrc = soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0, label_table_dir=table.directory)
  with pytest.raises(cache.IdentityMismatchError, match="train_crop_recipe: saved 'rded' vs now "
                     "'rrc'"):
    plan.train(rrc, str(tmp_path / "run_rrc"))
  # ... and, without it, by the table header's crop spec.
  os.remove(os.path.join(table.directory, cache.IDENTITY_FILE))
  with pytest.raises(table_lib.TableMismatchError, match="crop_spec"):
    plan.train(rrc, str(tmp_path / "run_rrc"))
  assert not os.path.exists(tmp_path / "run_rrc")


def test_lpld_batch_pruning_trains_on_the_kept_stored_batches(tmp_path, teacher_dir):
  # LPLD's official trainer (he-y/soft-label-pruning-for-dataset-distillation,
  # relabel_and_validate/train_FKD_label_pruning_batch.py `main`) keeps the first
  # int((1 - r) * total) stored batches and draws every step's batch from them with replacement.
  config = soft_config(tmp_path, teacher_dir, label_keep_fraction=1 / 3)
  assert config.label_pruning == "lpld_batches"  # the default wherever a fraction is pruned
  run = plan.train(config, str(tmp_path / "lpld"))
  table = table_lib.SoftLabelTable.open(_table_dir(tmp_path))
  # 100 images in batches of 16: 7 stored batches per slot (the 7th holds 4 images), 21 in all;
  # 1/3 keeps 7 (slot 0's) and never draws the short 7th: 6 full batches, 96 rows.
  assert run.results["label_bytes"] == 96 * table.bytes_per_row
  assert (run.results["label_pruning"], run.results["stored_batches"], run.results["kept_batches"],
          run.results["drawable_batches"]) == ("lpld_batches", 21, 7, 6)
  # Each step's 16 examples are one drawn stored batch, in its order, with its stored labels.
  data = run_data.load_run_data(config)
  stored = run_data.table_crop_example(config, data)
  batches = table_lib.lpld_batches(table.spec, "lpld_batches", 1 / 3, 16)
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 0), table.directory, draw_seed=0,
                            keep_fraction=1 / 3, batches=batches)
  drawn = set()
  for step in range(6):
    index = batches.draw(0, step)
    positions, slot = batches.batch(index)
    examples = [crops(step * 16 + i) for i in range(16)]
    assert [int(e["id"]) for e in examples] == data.pool_ids[positions].tolist()
    assert {int(e["slot"]) for e in examples} == {slot} == {0}
    np.testing.assert_array_equal(examples[3]["soft_label"], table.probs(int(positions[3]), 0))
    drawn.add(index)
  assert drawn <= set(range(6))
  # A fraction of 1 keeps every crop: no batches, the per-image replay, all the bytes.
  assert table_lib.lpld_batches(table.spec, "lpld_batches", 1.0, 16) is None


def test_sl_and_hald_replay_cutmixed_stored_crops(tmp_path, teacher_dir):
  # SRe²L/LPLD relabel CutMixed crops (VILA-Lab/SRe2L SRe2L/relabel/relabel.sh, `--mix-type
  # 'cutmix'`): the table stores each row's partner, lambda and box, and a soft phase replays the
  # mixed crop (check_same_crop compares the rebuilt partner and box with the stored ones).
  config = soft_config(tmp_path, teacher_dir, regime="hald", cutmix_alpha=1.0,
                       budget_examples=16 * 25)
  hald_run = plan.train(config, str(tmp_path / "hald"))
  table = table_lib.SoftLabelTable.open(_table_dir(tmp_path))
  assert table.spec.cutmix and table.bytes_per_row == 23 + 2 * 10
  partners = table.gather(np.arange(100), np.zeros(100, np.int64))["partner_id"]
  assert (partners >= 0).all() and len(set(partners.tolist())) > 10
  assert hald_run.results["label_bytes"] == 300 * table.bytes_per_row
  assert set(hald_run.results["phase_steps"]) == {"soft", "hard"}
  sl_run = plan.train(soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0), str(tmp_path / "sl"))
  assert sl_run.results["table_dir"] == hald_run.results["table_dir"]
  assert np.isfinite(sl_run.results["test_loss"]) and np.isfinite(hald_run.results["test_loss"])
  data = run_data.load_run_data(config)
  stored = run_data.table_crop_example(config, data)
  crops = replay.TableCrops(stored, pipeline.EpochShuffle(100, 0), table.directory, draw_seed=0)
  example = crops(5)
  position, epoch = pipeline.EpochShuffle(100, 0)(5)
  slot = crops.slot_for(position, epoch)
  stored_row = table.metadata(position, slot)
  assert int(example["partner_label"]) == int(
      data.train[stored_row["partner_id"]]["label"]) and stored_row["partner_id"] >= 0
  np.testing.assert_array_equal(example["soft_label"], table.probs(position, slot))
