"""Soft-label payload formats, the on-disk table, its error checks, resume and label pruning."""

import os

import numpy as np
import pytest

from hardlabel_jax.data import relabel_batches
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as tbl


def _log_softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)


def _distributions(num_classes, rows=64, seed=0):
  """Flat to very peaked rows: Dirichlet(1), Dirichlet(0.05) and softmax of N(0, 5) logits."""
  rng = np.random.default_rng(seed)
  cases = {
      "dirichlet1": np.log(np.maximum(rng.dirichlet(np.ones(num_classes), rows), 1e-30)),
      "dirichlet0.05": np.log(np.maximum(rng.dirichlet(np.full(num_classes, 0.05), rows), 1e-30)),
      "normal5": rng.normal(0.0, 5.0, (rows, num_classes)),
  }
  return {name: _log_softmax(z) for name, z in cases.items()}


# ----------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_full_round_trip_reproduces_fp16_probabilities_exactly(num_classes):
  fmt = formats.LabelFormat("full", num_classes)
  for lp in _distributions(num_classes).values():
    decoded = formats.decode(formats.encode(lp, fmt), fmt)
    expected = np.float16(np.exp(lp)).astype(np.float32)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("num_classes,k", [(10, 1), (10, 3), (10, 10), (1000, 5), (1000, 50)])
def test_topk_round_trip_within_bound(num_classes, k):
  fmt = formats.LabelFormat("topk", num_classes, k)
  for name, lp in _distributions(num_classes).items():
    p = np.exp(lp.astype(np.float64))
    payload = formats.encode(lp, fmt)
    decoded = formats.decode(payload, fmt)
    tv = formats.total_variation(p, decoded)
    bound = formats.topk_error_bound(p, k)
    assert np.all(tv <= bound), (name, (tv - bound).max())
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-3)
    # The ids are the k most probable classes, most probable first.
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(payload["ids"], order)
  # The bound is informative, not vacuous: peaked rows at k=5 of 10 lose almost nothing.
  peaked = np.exp(_distributions(10)["dirichlet0.05"].astype(np.float64))
  assert formats.topk_error_bound(peaked, 5).mean() < 0.01


@pytest.mark.parametrize("num_classes,k", [(10, 1), (10, 3), (10, 10), (1000, 5), (1000, 50)])
def test_topk_q8_round_trip_within_bounds(num_classes, k):
  fmt = formats.LabelFormat("topk_q8", num_classes, k)
  for name, lp in _distributions(num_classes).items():
    p = np.exp(lp.astype(np.float64))
    payload = formats.encode(lp, fmt)
    assert payload["q"].min() >= -127 and payload["q"].max() <= 0
    assert np.all(payload["scale"] > 0)
    # Log-domain bound on the top-k entries before any renormalisation.
    top = np.take_along_axis(lp.astype(np.float64), payload["ids"].astype(np.int64), axis=1)
    top = np.clip(top, formats.LOG_PROB_FLOOR, 0.0)
    log_err = np.abs(formats.quantised_log_probs(payload) - top)
    log_bound = formats.topk_q8_log_error_bound(payload)[:, None]
    assert np.all(log_err <= log_bound * (1 + 1e-9)), (name, (log_err - log_bound).max())
    # The scale is the smallest fp16 that keeps q in [-127, 0]: one fp16 step less would not.
    scale = payload["scale"]
    smaller = np.nextafter(scale, np.float16(0)).astype(np.float64)
    assert np.all(-top.min(axis=1) / smaller > 127)
    decoded = formats.decode(payload, fmt)
    tv = formats.total_variation(p, decoded)
    bound = formats.topk_q8_error_bound(p, k, scale)
    assert np.all(tv <= bound), (name, (tv - bound).max())
    np.testing.assert_allclose(decoded.sum(axis=1), 1.0, atol=1e-3)


def test_hand_worked_c4_k2():
  # p = [0.5, 0.1, 0.3, 0.1]; top-2 = classes 0 and 2.
  lp = np.log(np.array([[0.5, 0.1, 0.3, 0.1]])).astype(np.float32)
  topk = formats.LabelFormat("topk", 4, 2)
  payload = formats.encode(lp, topk)
  np.testing.assert_array_equal(payload["ids"], [[0, 2]])
  # fp16(0.3) = (1 + 205/1024) / 4 = 0.300048828125; the remaining 1 - 0.800048828125 is split
  # evenly over classes 1 and 3.
  rest = (1 - 0.5 - 0.300048828125) / 2
  np.testing.assert_array_equal(formats.decode(payload, topk),
                                np.float32([[0.5, rest, 0.300048828125, rest]]))
  # Ties go to the lower class id: classes 1 and 3 both have 0.1, k=3 picks 1.
  np.testing.assert_array_equal(
      formats.encode(lp, formats.LabelFormat("topk", 4, 3))["ids"], [[0, 2, 1]])

  q8 = formats.LabelFormat("topk_q8", 4, 2)
  payload = formats.encode(lp, q8)
  # -log 0.3 / 127 = 0.0094801..; the next fp16 up is (1 + 219/1024) * 2^-7 = 1243 / 2^17.
  scale = 1243 / 2**17
  assert float(payload["scale"][0]) == scale
  # round(log 0.5 / scale) = round(-73.09) = -73; round(log 0.3 / scale) = round(-126.96) = -127.
  np.testing.assert_array_equal(payload["q"], [[-73, -127]])
  p0, p2 = np.exp(-73 * scale), np.exp(-127 * scale)  # 0.500432, 0.299877: sum < 1, no renorm.
  rest = (1 - p0 - p2) / 2
  np.testing.assert_allclose(formats.decode(payload, q8)[0], [p0, rest, p2, rest], rtol=1e-6)


def test_q8_renormalises_when_quantised_mass_exceeds_one():
  fmt = formats.LabelFormat("topk_q8", 3, 2)
  # Hand-made payload: exp(0) + exp(-1 * 1.0) = 1.368 > 1, so those two are renormalised.
  payload = np.zeros(1, fmt.payload_dtype)
  payload["ids"], payload["q"], payload["scale"] = [[2, 0]], [[0, -1]], 1.0
  total = 1 + np.exp(-1.0)
  np.testing.assert_allclose(
      formats.decode(payload, fmt)[0], [np.exp(-1.0) / total, 0.0, 1 / total], rtol=1e-6)


def test_q8_degenerate_rows_keep_a_positive_scale():
  fmt = formats.LabelFormat("topk_q8", 3, 1)
  lp = np.array([[0.0, -np.inf, -np.inf]], np.float32)  # all mass on one class
  payload = formats.encode(lp, fmt)
  assert payload["scale"][0] > 0 and payload["q"][0, 0] == 0
  np.testing.assert_array_equal(formats.decode(payload, fmt), [[1.0, 0.0, 0.0]])
  # A zero probability inside the top-k is clamped instead of giving an infinite scale.
  payload = formats.encode(lp, formats.LabelFormat("topk_q8", 3, 2))
  assert np.isfinite(payload["scale"][0])


def test_label_format_validation_names_the_field():
  with pytest.raises(ValueError, match="label_format"):
    formats.LabelFormat("int4", 10, 2)
  with pytest.raises(ValueError, match="topk"):
    formats.LabelFormat("topk", 10, 0)
  with pytest.raises(ValueError, match="topk"):
    formats.LabelFormat("topk_q8", 10, 11)
  with pytest.raises(ValueError, match="topk"):
    formats.LabelFormat("full", 10, 3)
  assert formats.LabelFormat("topk", 70000, 2).payload_dtype["ids"].base == np.dtype("<u4")


def test_payload_sizes_follow_the_formula():
  # full: 2C; topk: k (id + 2); topk_q8: k (id + 1) + 2; id = 2 bytes while C <= 65535, else 4.
  assert formats.LabelFormat("full", 10).payload_bytes_per_row == 2 * 10
  assert formats.LabelFormat("full", 1000).payload_bytes_per_row == 2 * 1000
  assert formats.LabelFormat("topk", 1000, 10).payload_bytes_per_row == 10 * (2 + 2)
  assert formats.LabelFormat("topk_q8", 1000, 10).payload_bytes_per_row == 10 * (2 + 1) + 2
  assert formats.LabelFormat("topk", 70000, 10).payload_bytes_per_row == 10 * (4 + 2)
  assert formats.LabelFormat("topk_q8", 70000, 10).payload_bytes_per_row == 10 * (4 + 1) + 2


# ------------------------------------------------------------------------------------ table

CROP_SPEC = {
    "output_size": 32,
    "scale": (0.08, 1.0),
    "ratio": (0.75, 1.33),
    "flip": True,
    "cutmix_alpha": 0.0
}


def _spec(**overrides):
  kwargs = dict(dataset_name="toy", dataset_fingerprint="fp-toy", ids=np.arange(7) * 3 + 1,
                num_classes=10, teacher_fingerprint="teacher-1", crop_seed=5, crop_spec=CROP_SPEC,
                temperature=4.0, label_format="topk_q8", topk=3, slots_per_image=3,
                teacher_bn_mode="eval", teacher={
                    "workdir": "/tmp/t",
                    "model": "resnet18",
                    "step": 10,
                    "test_top1": 0.5
                })
  kwargs.update(overrides)
  return tbl.TableSpec(**kwargs)


def _rows(spec, start, stop, seed=0):
  """Deterministic random rows for pool positions [start, stop)."""
  rng = np.random.default_rng([seed, start])
  n = (stop - start) * spec.slots_per_image
  rows = np.zeros(n, tbl.row_dtype(spec))
  rows["box"] = rng.uniform(0, 1, (n, 4))
  rows["flip"] = rng.integers(0, 2, n)
  if spec.cutmix:
    rows["partner_id"] = rng.integers(-1, 100, n)
    rows["mix_lambda"] = rng.uniform(0, 1, n)
    rows["cut_box"] = rng.integers(0, 32, (n, 4))
  payload = formats.encode(_log_softmax(rng.normal(0, 3, (n, spec.num_classes))), spec.fmt)
  for name in payload.dtype.names:
    rows[name] = payload[name]
  return rows


def _write(directory, spec, positions_per_shard=3, shards=None, seed=0):
  writer = tbl.TableWriter(directory, spec, positions_per_shard)
  for s in range(writer.num_shards) if shards is None else shards:
    writer.write_shard(s, _rows(spec, *writer.shard_positions(s), seed=seed))
  return writer


def _dir_bytes(directory):
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


@pytest.mark.parametrize(
    "label_format,topk,cutmix,expected",
    [
        # metadata = box 4 x fp16 + flip u8 = 9 bytes; + CutMix partner i32 + lambda fp16 +
        # cut_box 4 x u16 = 9 + 4 + 2 + 8 = 23 bytes. C = 10, ids are uint16.
        ("full", 0, False, 9 + 2 * 10),  # 29
        ("full", 0, True, 23 + 2 * 10),  # 43
        ("topk", 3, False, 9 + 3 * (2 + 2)),  # 21
        ("topk", 3, True, 23 + 3 * (2 + 2)),  # 35
        ("topk_q8", 3, False, 9 + 3 * (2 + 1) + 2),  # 20
        ("topk_q8", 3, True, 23 + 3 * (2 + 1) + 2),  # 34
    ])
def test_bytes_per_row_formula(label_format, topk, cutmix, expected):
  spec = _spec(label_format=label_format, topk=topk,
               crop_spec=dict(CROP_SPEC, cutmix_alpha=1.0 if cutmix else 0.0))
  assert spec.cutmix == cutmix
  assert tbl.bytes_per_row(spec) == expected
  assert tbl.row_dtype(spec).itemsize == expected
  assert tbl.metadata_dtype(spec).itemsize == (23 if cutmix else 9)


@pytest.mark.parametrize("label_format,topk,cutmix", [("full", 0, True), ("topk", 2, False),
                                                      ("topk_q8", 3, True)])
def test_write_reopen_round_trip_and_sizes(tmp_path, label_format, topk, cutmix):
  spec = _spec(label_format=label_format, topk=topk,
               crop_spec=dict(CROP_SPEC, cutmix_alpha=1.0 if cutmix else 0.0))
  directory = str(tmp_path / "table")
  writer = _write(directory, spec)
  assert writer.num_shards == 3  # 7 positions, 3 per shard: 3 + 3 + 1
  assert not os.path.exists(directory)  # nothing readable before finalize
  written = _rows(spec, 0, 3), _rows(spec, 3, 6), _rows(spec, 6, 7)
  table = writer.finalize()
  assert not os.path.exists(directory + ".partial")
  reopened = tbl.SoftLabelTable.open(directory, expected=spec)
  assert reopened.spec == spec and np.array_equal(reopened.spec.ids, spec.ids)
  assert reopened.spec.teacher == spec.teacher
  bpr = tbl.bytes_per_row(spec)
  for t in (table, reopened):
    assert t.bytes_per_row == bpr
    assert t.payload_bytes_per_row + t.metadata_bytes_per_row == bpr
    assert t.num_rows == 7 * 3
    assert t.label_bytes == t.num_rows * bpr
    assert t.table_bytes == _dir_bytes(directory)
  for s, rows in enumerate(written):
    path = os.path.join(directory, f"shard-{s:05d}.bin")
    assert os.path.getsize(path) == len(rows) * bpr
    assert open(path, "rb").read() == rows.tobytes()
  all_rows = np.concatenate(written)
  for position in range(7):
    np.testing.assert_array_equal(reopened.rows(position),
                                  all_rows[position * 3:(position + 1) * 3])
  row = all_rows[4 * 3 + 2]
  assert reopened.row(4, 2) == row
  np.testing.assert_array_equal(reopened.probs(4, 2), formats.decode(row[None], spec.fmt)[0])
  meta = reopened.metadata(4, 2)
  assert meta["box"] == tuple(float(v) for v in row["box"]) and meta["flip"] == bool(row["flip"])
  assert ("partner_id" in meta) == cutmix
  if cutmix:
    assert meta["cut_box"] == tuple(int(v) for v in row["cut_box"])
  np.testing.assert_array_equal(reopened.gather([6, 0, 4], [1, 0, 2]),
                                all_rows[[6 * 3 + 1, 0, 4 * 3 + 2]])


def test_finished_table_is_not_overwritten(tmp_path):
  directory = str(tmp_path / "table")
  _write(directory, _spec()).finalize()
  with pytest.raises(FileExistsError, match="already holds"):
    tbl.TableWriter(directory, _spec(), 3)


def test_write_shard_checks_dtype_and_row_count(tmp_path):
  spec = _spec()
  writer = tbl.TableWriter(str(tmp_path / "table"), spec, 3)
  with pytest.raises(ValueError, match="holds 9 rows"):
    writer.write_shard(0, _rows(spec, 0, 2))
  with pytest.raises(ValueError, match="dtype"):
    writer.write_shard(0, _rows(_spec(label_format="full", topk=0), 0, 3))
  with pytest.raises(ValueError, match=r"shards \[0, 1, 2\] are not written"):
    writer.finalize()


def test_corrupted_shard_is_detected(tmp_path):
  directory = str(tmp_path / "table")
  _write(directory, _spec()).finalize()
  path = os.path.join(directory, "shard-00001.bin")
  data = bytearray(open(path, "rb").read())
  data[5] ^= 0x01
  open(path, "wb").write(bytes(data))
  with pytest.raises(tbl.TableCorruptedError, match=r"shard-00001\.bin.*corrupted.*checksum"):
    tbl.SoftLabelTable.open(directory)
  tbl.SoftLabelTable.open(directory, verify_checksums=False)  # size is fine, only the sha differs


def test_missing_and_truncated_shards_are_detected(tmp_path):
  directory = str(tmp_path / "table")
  _write(directory, _spec()).finalize()
  path = os.path.join(directory, "shard-00002.bin")
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-1])
  with pytest.raises(tbl.TableCorruptedError, match=r"shard-00002\.bin has 59 bytes, expected 3"):
    tbl.SoftLabelTable.open(directory)
  os.remove(path)
  with pytest.raises(tbl.TableCorruptedError, match=r"shard-00002\.bin .*missing.*relabel"):
    tbl.SoftLabelTable.open(directory)


def test_missing_table(tmp_path):
  with pytest.raises(tbl.TableMissingError, match="no soft-label table.*relabel"):
    tbl.SoftLabelTable.open(str(tmp_path / "nothing"))


@pytest.mark.parametrize("override,pattern", [
    ({
        "dataset_fingerprint": "fp-other"
    }, "dataset_fingerprint: table has 'fp-toy', "
     "expected 'fp-other'.*another data set"),
    ({
        "ids": np.arange(5)
    }, "ids: the table was made for another subset: 7 ids vs 5"),
    ({
        "ids": np.arange(7)
    }, "ids: the table was made for another subset: same count 7"),
    ({
        "temperature": 1.0
    }, "temperature: table has 4.0, expected 1.0"),
    ({
        "crop_seed": 6
    }, "crop_seed: table has 5, expected 6"),
    ({
        "topk": 5
    }, "topk: table has 3, expected 5"),
    ({
        "teacher_bn_mode": "batch_stats"
    }, "teacher_bn_mode"),
    ({
        "teacher_fingerprint": "teacher-2"
    }, "teacher_fingerprint.*another teacher"),
    ({
        "crop_spec": dict(CROP_SPEC, output_size=64)
    }, "crop_spec"),
])
def test_mismatched_expectation_names_the_field(tmp_path, override, pattern):
  directory = str(tmp_path / "table")
  _write(directory, _spec()).finalize()
  with pytest.raises(tbl.TableMismatchError, match=pattern) as info:
    tbl.SoftLabelTable.open(directory, expected=_spec(**override))
  assert "relabel" in str(info.value)
  # Only the changed field is reported.
  assert str(info.value).count(": table has") + str(info.value).count("ids: ") == 1


def test_an_image_folder_moved_with_its_content_keeps_its_table(tmp_path):
  # An image folder's name is its path; a cache copied elsewhere holds the same set (the same
  # fingerprint) under another name, and its tables must still open.
  directory = str(tmp_path / "table")
  spec = _spec(dataset_name="imagefolder:/old/cache/distilled/rded-ipc10")
  _write(directory, spec).finalize()
  moved = _spec(dataset_name="imagefolder:/new/cache/distilled/rded-ipc10")
  assert tbl.SoftLabelTable.open(directory, expected=moved).spec == spec
  # Another folder's content, or a name that is not a folder, is still another data set.
  with pytest.raises(tbl.TableMismatchError, match="dataset_fingerprint.*dataset_name"):
    tbl.SoftLabelTable.open(
        directory, expected=_spec(dataset_name=moved.dataset_name, dataset_fingerprint="fp-other"))
  with pytest.raises(tbl.TableMismatchError, match="dataset_name: table has 'imagefolder:"):
    tbl.SoftLabelTable.open(directory, expected=_spec(dataset_name="toy"))


def test_interrupted_write_is_unreadable_and_resumes_to_identical_bytes(tmp_path):
  spec = _spec()
  reference = str(tmp_path / "reference")
  _write(reference, spec).finalize()

  directory = str(tmp_path / "table")
  writer = _write(directory, spec, shards=[0, 2])
  del writer  # the relabel job dies here
  for path in (directory, directory + ".partial"):
    with pytest.raises(tbl.TableInterruptedError, match="interrupted.*resume"):
      tbl.SoftLabelTable.open(path)

  resumed = tbl.TableWriter(directory, spec, 3)
  assert resumed.completed_shards() == {0, 2}
  resumed.write_shard(1, _rows(spec, 3, 6))
  resumed.finalize()
  names = sorted(os.listdir(reference))
  assert names == sorted(os.listdir(directory))
  assert names == [
      "header.json", "ids.npy", "shard-00000.bin", "shard-00001.bin", "shard-00002.bin"
  ]
  for name in names:
    assert (open(os.path.join(reference, name), "rb").read() == open(os.path.join(directory, name),
                                                                     "rb").read()), name


def test_resume_drops_a_damaged_partial_shard(tmp_path):
  spec = _spec()
  directory = str(tmp_path / "table")
  _write(directory, spec, shards=[0, 1])
  open(os.path.join(directory + ".partial", "shard-00001.bin"), "ab").write(b"x")
  assert tbl.TableWriter(directory, spec, 3).completed_shards() == {0}


@pytest.mark.parametrize("override", [{"temperature": 2.0}, {"ids": np.arange(7)}])
def test_writer_with_another_spec_wipes_the_partial_dir(tmp_path, override):
  directory = str(tmp_path / "table")
  _write(directory, _spec(), shards=[0, 1])
  partial = directory + ".partial"
  assert os.path.exists(os.path.join(partial, "shard-00000.bin"))
  writer = tbl.TableWriter(directory, _spec(**override), 3)
  assert writer.completed_shards() == set()
  assert not any(name.startswith("shard-") for name in os.listdir(partial))
  # Another shard size is another layout, so it starts afresh as well.
  _write(directory, _spec(), shards=[0])
  assert tbl.TableWriter(directory, _spec(), 2).completed_shards() == set()


def test_spec_json_round_trip():
  spec = _spec(crop_spec=dict(CROP_SPEC, cutmix_alpha=1.0))
  data = spec.to_json()
  assert "ids" not in data and data["num_ids"] == 7
  again = tbl.TableSpec.from_json(data, spec.ids)
  assert again == spec and not again.mismatches(spec)
  with pytest.raises(tbl.TableError, match="ids.npy"):
    tbl.TableSpec.from_json(data, spec.ids[::-1])
  with pytest.raises(ValueError, match="teacher_bn_mode"):
    _spec(teacher_bn_mode="train")


# ---------------------------------------------------------------------------- label pruning


def test_kept_slots_and_draws():
  kept = tbl.kept_slots(seed=1, example_id=17, slots=40, keep_fraction=0.1)
  assert kept.size == 4 and np.all(np.diff(kept) > 0)
  assert kept.min() >= 0 and kept.max() < 40
  np.testing.assert_array_equal(kept, tbl.kept_slots(1, 17, 40, 0.1))  # deterministic
  others = [tuple(tbl.kept_slots(1, i, 40, 0.1)) for i in range(20)]
  assert len(set(others)) > 10  # differs between images
  assert tuple(tbl.kept_slots(2, 17, 40, 0.1)) != tuple(kept)  # and between seeds
  np.testing.assert_array_equal(tbl.kept_slots(1, 17, 40, 1.0), np.arange(40))
  assert tbl.kept_slots(1, 17, 40, 0.001).size == 1  # at least one slot
  assert tbl.kept_slots(1, 17, 10, 0.25).size == 3  # round(2.5) rounds the half up
  for bad in (0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match="keep_fraction"):
      tbl.kept_slots(1, 17, 40, bad)

  draws = [tbl.draw_slot(1, 17, epoch, kept) for epoch in range(200)]
  assert draws == [tbl.draw_slot(1, 17, epoch, kept) for epoch in range(200)]
  assert set(draws) == set(kept.tolist())  # every kept slot is used, nothing else


def test_kept_label_bytes(tmp_path):
  spec = _spec(slots_per_image=10)
  table = _write(str(tmp_path / "table"), spec, positions_per_shard=4).finalize()
  # 7 images x round(0.3 x 10) = 3 kept slots x 20 bytes per row (topk_q8 k=3, no CutMix).
  assert tbl.kept_label_bytes(table, seed=0, keep_fraction=0.3) == 7 * 3 * 20
  assert tbl.kept_label_bytes(table, seed=0, keep_fraction=1.0) == table.label_bytes
  expected = sum(tbl.kept_slots(0, int(i), 10, 0.3).size for i in spec.ids) * table.bytes_per_row
  assert tbl.kept_label_bytes(spec, 0, 0.3) == expected


# LPLD's official trainer (he-y/soft-label-pruning-for-dataset-distillation,
# relabel_and_validate/train_FKD_label_pruning_batch.py, `main`): `pool = list(range(total_steps))
# [:int((1 - prune_ratio) * total_steps)]`, then per epoch `torch.randint(0, len(pool))` for each
# of `batch_num_per_epoch` batches, a drawn last batch of an epoch replaced by `batch_idx - 1`.


def test_lpld_stored_batches_kept_pool_and_draws_on_a_hand_made_grid():
  # 5 images x 3 slots in batches of 2: 3 batches per slot (the last holds 1 image), 9 in all.
  batches = tbl.StoredBatches(num_positions=5, slots=3, batch_size=2, seed=7, keep_fraction=0.5)
  assert (batches.batches_per_slot, batches.num_batches) == (3, 9)
  assert batches.num_kept == 4  # floor(0.5 x 9): batches 0-3, i.e. slot 0 and slot 1's first
  # Stored batches are the relabel batches (data/relabel_batches.py): slot s's relabel order cut
  # into batches of 2, so a kept batch holds its crops' CutMix partners and BSSL batch-mates.
  expected = [([2, 3], 0), ([0, 1], 0), ([4], 0), ([3, 4], 1), ([0, 2], 1), ([1], 1), ([2, 4], 2),
              ([0, 3], 2), ([1], 2)]
  groups = relabel_batches.group_rows(5, 3, 2, seed=7)
  for index, (positions, slot) in enumerate(expected):
    got_positions, got_slot = batches.batch(index)
    assert (got_positions.tolist(), got_slot) == (positions, slot)
    rows = groups[index][groups[index] >= 0]
    assert (rows // 3).tolist() == positions and set(rows % 3) == {slot}
  for slot in range(3):  # each slot's batches partition the pool: every stored crop once
    rows = np.concatenate([batches.batch(3 * slot + k)[0] for k in range(3)])
    assert sorted(rows.tolist()) == [0, 1, 2, 3, 4]
  # Batch 2 (slot 0's last) is never drawn: the official code draws batch 1 in its place.
  np.testing.assert_array_equal(batches.drawable(), [0, 1, 3])
  draws = [batches.draw(3, step) for step in range(12)]
  assert draws == [3, 1, 3, 1, 1, 1, 3, 0, 1, 1, 1, 0]
  assert draws == [batches.draw(3, step) for step in range(12)]  # pure: a resumed run redraws
  counts = np.bincount([batches.draw(3, step) for step in range(3000)], minlength=9)
  assert set(np.flatnonzero(counts)) == {0, 1, 3}
  assert 1.8 < counts[1] / counts[0] < 2.2 and 0.85 < counts[3] / counts[0] < 1.15
  # Stream positions 2 s, 2 s + 1 are step s's two rows of its drawn batch: (position, slot).
  assert [batches.row(3, p) for p in range(6)] == [(3, 1), (4, 1), (0, 0), (1, 0), (3, 1), (4, 1)]
  assert batches.kept_rows == 3 * 2
  assert tbl.StoredBatches(5, 3, 2, 8, 0.5).batch(0)[0].tolist() != [2, 3]  # seeded grouping


def test_lpld_kept_batches_match_the_official_int_of_the_ratio():
  # ImageNet-1K IPC10 as LPLD ran it: 10,000 images, batch 128, 300 stored epochs, 79 batches each.
  for ratio in (0.95, 0.97, 0.975):  # main_table_in1k.sh: 20x, 30x, 40x
    batches = tbl.StoredBatches(10_000, 300, 128, 0, round(1 - ratio, 6))
    assert batches.num_kept == int((1 - ratio) * 300 * 79)
  # (1 - 0.9) * 23700 is 2369.99... in floating point; a kept fraction of 0.1 keeps 2370.
  assert tbl.StoredBatches(10_000, 300, 128, 0, 0.1).num_kept == 2370
  assert tbl.StoredBatches(1000, 1, 10, 0, 0.29).num_kept == 29  # 100 batches, not 28.999...
  # One full batch per slot (N = B): no batch before it, every kept batch is drawn.
  whole = tbl.StoredBatches(4, 6, 4, 0, 0.5)
  np.testing.assert_array_equal(whole.drawable(), [0, 1, 2])
  assert {whole.draw(0, s) for s in range(100)} == {0, 1, 2}
  with pytest.raises(ValueError, match="smaller than one global batch"):
    tbl.StoredBatches(3, 6, 4, 0, 0.5)
  with pytest.raises(ValueError, match=r"label_keep_fraction.*keeps floor"):
    tbl.StoredBatches(5, 3, 2, 0, 0.1)  # floor(0.9) = 0 batches


def test_lpld_label_bytes_are_the_drawable_batches_rows(tmp_path):
  spec = _spec(slots_per_image=10)  # 7 images, 20 bytes a row
  table = _write(str(tmp_path / "table"), spec, positions_per_shard=4).finalize()
  # Batches of 2: 4 per slot (the last holds 1 image), 40 stored; 0.3 keeps 12, of which slots
  # 0-2 end in a last batch (3, 7, 11): 9 drawable full batches = 18 rows.
  assert tbl.kept_label_bytes(table, 0, 0.3, tbl.LPLD_BATCHES, global_batch=2) == 18 * 20
  batches = tbl.lpld_batches(spec, tbl.LPLD_BATCHES, 0.3, 2)
  assert (batches.num_kept, batches.drawable().size, batches.seed) == (12, 9, spec.crop_seed)
  rows = set()
  for index in batches.drawable():
    positions, slot = batches.batch(int(index))
    rows |= {(int(p), slot) for p in positions}
  assert len(rows) * table.bytes_per_row == 18 * 20  # distinct stored crops
  # Batches of 7 (the whole pool): one full batch per slot, 3 kept = 21 rows.
  assert tbl.kept_label_bytes(table, 0, 0.3, tbl.LPLD_BATCHES, global_batch=7) == 21 * 20
  # A fraction of 1 keeps every crop whatever the mode; per image keeps round(0.3 x 10) slots.
  assert tbl.kept_label_bytes(table, 0, 1.0, tbl.LPLD_BATCHES, 2) == table.label_bytes
  assert tbl.lpld_batches(spec, tbl.LPLD_BATCHES, 1.0, 2) is None
  assert tbl.kept_label_bytes(table, 0, 0.3, tbl.PER_IMAGE, 2) == 7 * 3 * 20
  with pytest.raises(ValueError, match="pruning"):
    tbl.kept_label_bytes(table, 0, 0.3, "per_batch", 2)


def test_hald_batches_replay_every_stored_batch_once_per_pass():
  # validate/train_fkd.py main(): `pool = torch.randperm(args.n * batch_num_per_epoch)`, each
  # epoch takes the next batch_num_per_epoch entries, a fresh permutation when the pool is empty.
  batches = tbl.StoredBatches(num_positions=6, slots=4, batch_size=2, seed=3, keep_fraction=1.0,
                              draw_rule="permutation")
  assert batches.num_batches == 12 and batches.drawable().size == 12  # 6 = 3 full batches a slot
  passes = [[batches.draw(5, step) for step in range(12 * p, 12 * (p + 1))] for p in range(3)]
  for drawn in passes:
    assert sorted(drawn) == list(range(12))  # without replacement within a pass
  assert passes[0] != passes[1]  # a fresh permutation each pass
  assert [batches.draw(5, s) for s in range(24)] == passes[0] + passes[1]  # pure: resumes exactly
  # 7 images in batches of 2: each slot's last batch holds one image and is never replayed.
  short = tbl.StoredBatches(7, 2, 2, 3, 1.0, draw_rule="permutation")
  np.testing.assert_array_equal(short.drawable(), [0, 1, 2, 4, 5, 6])
  assert sorted(short.draw(5, s) for s in range(6)) == [0, 1, 2, 4, 5, 6]
  # At a fraction of 1 the mode still replays stored batches (LPLD's replays per image there).
  assert tbl.uses_lpld_batches("hald_batches",
                               1.0) and not tbl.uses_lpld_batches("lpld_batches", 1.0)
  with pytest.raises(ValueError, match="draw_rule"):
    tbl.StoredBatches(6, 4, 2, 3, 1.0, draw_rule="shuffle")
