"""HALD as Jiacheng8/HALD runs it: the hard phase's batch CutMix, hyper.yaml's η, BSSL relabel.

Official: `validate/train_fkd.py` lines 449–453 build `Mixup(mixup_alpha=0.0, cutmix_alpha=1.0,
label_smoothing=args.label_smoothing, num_classes=args.ncls)` and `hard_train` (line 541) applies it
to every hard batch (line 559; an odd batch loses its last image first, line 554) with
`soft_cross_entropy` (line 536) at T = 1. timm's Mixup in batch mode: one λ ~ Beta(1, 1), one
`rand_bbox` box, `x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]`, λ corrected to the
unpasted area, `mixup_target` = λ·one_hot(y) + (1−λ)·one_hot(y.flip(0)) with off = s/C and
on = 1 − s + s/C. The NumPy port below is that code with its random draws passed in.
"""

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hardlabel_jax import ablation_report
from hardlabel_jax import bssl
from hardlabel_jax import config_schema
from hardlabel_jax import hald
from hardlabel_jax import hald_hyper
from hardlabel_jax import image_sets
from hardlabel_jax import inference
from hardlabel_jax import losses
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import optim
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import study
from hardlabel_jax import study_report
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax import trainer
from hardlabel_jax.data import batch_cutmix
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.data import replay
from helpers import tiny_config
from test_soft_label_regimes import soft_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
# configs/fashion_hald_paper.py's ablations: the changed field, the regimes and tables they train.
ONE_CROP = ((1, 1.0),)
ABLATIONS = {
    "label_smoothing": ({
        "hald_label_smoothing": 1 / 26,
        "eval_every_epochs": 25
    }, ("hald",), ONE_CROP),
    "t2_weight": ({
        "soft_loss_weight": 400.0
    }, ("hald",), ONE_CROP),
    "eval_teacher": ({
        "teacher_bn_mode": "eval"
    }, ("sl", "hald"), ONE_CROP),
    # S6's phase boundaries (epochs 75 and 225 of 300) are multiples of the interval.
    "phase_curve": ({
        "eval_every_epochs": 25
    }, ("sl", "hald"), ((1, 1.0), (10, 1.0))),
    "schedule_s8": ({
        "hald_schedule": "S8",
        "eval_every_epochs": 25
    }, ("hald",), ONE_CROP),
}


def timm_batch_cutmix(x_nchw, target, num_classes, smoothing, lam, cy, cx):
  """timm `Mixup._mix_batch` + `mixup_target` (mode='batch', cutmix only, correct_lam=True)."""
  x = x_nchw.copy()
  ratio = np.sqrt(1 - lam)
  img_h, img_w = x.shape[-2:]
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  yl = np.clip(cy - cut_h // 2, 0, img_h)
  yh = np.clip(cy + cut_h // 2, 0, img_h)
  xl = np.clip(cx - cut_w // 2, 0, img_w)
  xh = np.clip(cx + cut_w // 2, 0, img_w)
  lam = 1. - (yh - yl) * (xh - xl) / float(img_h * img_w)
  x[:, :, yl:yh, xl:xh] = x[::-1][:, :, yl:yh, xl:xh]
  off_value = smoothing / num_classes
  on_value = 1. - smoothing + off_value
  y1 = np.full((len(target), num_classes), off_value)
  y1[np.arange(len(target)), target] = on_value
  y2 = y1[::-1]
  return x, y1 * lam + y2 * (1. - lam), lam


def test_the_box_follows_timm_rand_bbox_on_a_hand_worked_case():
  # λ = 0.36: √0.64 = 0.8, an 8 × 8 cut centred at (5, 2) of a 10 × 10 image: rows 1..8 and
  # columns 0..5 (clipped at the left edge), 48 pixels pasted, so the corrected λ is 0.52.
  yl, yh, xl, xh, lam = batch_cutmix.box_for_lambda(jnp.float32(0.36), 5, 2, 10, 10)
  assert (int(yl), int(yh), int(xl), int(xh)) == (1, 9, 0, 6)
  assert float(lam) == pytest.approx(0.52)
  # λ near 1 cuts nothing (int(10 · 0.03) = 0): the batch is left as it is.
  *_, lam = batch_cutmix.box_for_lambda(jnp.float32(0.9991), 4, 4, 10, 10)
  assert float(lam) == 1.0


def test_batch_cutmix_equals_the_timm_port_with_the_same_draws():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 9, 7, 3)).astype(np.float32)  # NHWC, H ≠ W
  labels = np.array([0, 3, 1, 1, 2, 4])
  key = jax.random.key(5)
  yl, yh, xl, xh, lam = batch_cutmix.cutmix_box(key, 9, 7, 1.0)
  mixed, got_lam = batch_cutmix.mix_batch(jnp.asarray(images), key, 1.0)
  assert float(got_lam) == float(lam)
  # Recover the draw (λ before correction, centre) and run timm's arithmetic on it.
  lam_key, y_key, x_key = jax.random.split(key, 3)
  raw = float(jax.random.beta(lam_key, 1.0, 1.0))
  cy, cx = int(jax.random.randint(y_key, (), 0, 9)), int(jax.random.randint(x_key, (), 0, 7))
  want_x, want_y, want_lam = timm_batch_cutmix(images.transpose(0, 3, 1, 2), labels, 5, 0.8, raw,
                                               cy, cx)
  np.testing.assert_array_equal(np.asarray(mixed), want_x.transpose(0, 2, 3, 1))
  assert float(got_lam) == pytest.approx(want_lam, abs=1e-6)
  assert (int(yh) - int(yl)) * (int(xh) - int(xl)) > 0  # this key pastes a real box
  own = np.full((6, 5), 0.8 / 5, np.float32)
  own[np.arange(6), labels] = 1 - 0.8 + 0.8 / 5
  np.testing.assert_allclose(batch_cutmix.mixed_targets(jnp.asarray(own), got_lam), want_y,
                             rtol=1e-6)


def test_the_pasted_box_comes_from_the_image_at_the_mirrored_position():
  images = jnp.broadcast_to(jnp.arange(4, dtype=jnp.float32)[:, None, None, None], (4, 5, 5, 1))
  out = np.asarray(batch_cutmix.paste_reversed(images, 1, 3, 2, 5))[..., 0]
  for i in range(4):
    inside = np.zeros((5, 5), bool)
    inside[1:3, 2:5] = True
    assert (out[i][inside] == 3 - i).all() and (out[i][~inside] == i).all()


def test_the_batch_cutmix_step_trains_on_timm_targets():
  # One step of the hard phase: its loss is soft CE against λ·smooth(y) + (1−λ)·smooth(y
  # reversed) of the step's own draw, on the batch pasted with its reverse. (8 devices = 1:
  # tests/test_train_steps.py, 'hald_hard'.)
  model = models.create_model("convnet_d3", 5, width=8, norm="instance")
  schedule = optax.constant_schedule(0.0)
  tx = optax.sgd(schedule)
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  state = train_state_lib.create_train_state(model, tx, jax.random.key(0),
                                             input_shape=(1, 12, 12, 3))
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 16).astype(np.int32)
  batch = {
      "image": rng.normal(size=(16, 12, 12, 3)).astype(np.float32),
      "label": labels,
      "partner_label": labels,  # the pipeline's, unused: the step mixes the batch itself
      "mix_lambda": np.ones(16, np.float32),
  }
  step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, model=model, tx=tx,
                                    schedule=schedule, num_classes=5, label_smoothing=0.8,
                                    base_rng=jax.random.key(1), batch_cutmix_alpha=1.0)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 0), 2)  # stream 2, step 0
  mixed, lam = batch_cutmix.mix_batch(jnp.asarray(batch["image"]), key, 1.0)
  own = np.full((16, 5), 0.8 / 5, np.float32)
  own[np.arange(16), labels] = 1 - 0.8 + 0.8 / 5
  targets = float(lam) * own + (1 - float(lam)) * own[::-1]
  log_p = jax.nn.log_softmax(model.apply(state.variables(), mixed, train=True))
  _, metrics = step(state, mesh_lib.global_batch(batch, mesh))  # donates `state`
  assert float(metrics["loss"]) == pytest.approx(float(-(targets * log_p).sum(1).mean()), rel=1e-5)
  assert 0 < float(lam) < 1


def test_the_official_batch_cutmix_is_the_default_and_needs_an_even_batch():
  assert config_schema.default_config().hald_hard_cutmix == "batch_reversed"
  assert config_schema.default_config().hald_cutmix_alpha == 1.0
  assert config_schema.default_config().hald_label_smoothing == 0.8
  config = tiny_config(regime="hald", global_batch_size=15, crops_per_image=2)
  with pytest.raises(ValueError, match="global_batch_size: HALD's batch CutMix .* needs an even"):
    config_schema.validate(config)
  config.hald_hard_cutmix = "pool"  # the pipeline's per-example partner has no such need
  config_schema.validate(config)


@pytest.mark.parametrize("mode", ["batch_reversed", "pool"])
def test_the_pipeline_leaves_hard_crops_unmixed_when_the_step_mixes_the_batch(
    tmp_path, teacher_dir, mode):
  config = soft_config(tmp_path, teacher_dir, regime="hald", hald_schedule="S1",
                       hald_hard_cutmix=mode, budget_examples=16 * 12)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  budget = trainer.budget_from_config(config, len(data.pool_ids))
  phases = trainer.step_phases(config, budget)
  example_at = trainer.training_examples(config, data, table, phases)
  hard = [p for p in range(budget.steps * 16) if phases.of_position(p) == "hard"][:32]
  assert len(hard) == 32
  lambdas = np.array([example_at(p)["mix_lambda"] for p in hard])
  if mode == "batch_reversed":  # the step pastes from the reversed batch (on the device)
    assert (lambdas == 1).all()
  else:  # the pipeline pastes a partner per example
    assert (lambdas < 1).mean() > 0.5


# ----------------------------------------------------------------------------- hyper.yaml


def test_hyper_yaml_rows_and_the_eta_a_run_takes():
  # validate/hyper.yaml, as read: imagenet1k ResNet18 "10": [0.001, 2], "50": [0.001, 1];
  # cifar100 ResNet18 "1": [0.0005, 2]; imagewoof ResNet50 "10": [0.005, 1].
  assert hald_hyper.official_lr_eta("tfds:imagenet2012", "resnet18", 10) == (0.001, 2)
  assert hald_hyper.official_lr_eta("imagenet2012:5.1.0", "resnet18", 50) == (0.001, 1)
  assert hald_hyper.official_lr_eta("cifar100", "resnet18_cifar", 1) == (0.0005, 2)
  assert hald_hyper.official_lr_eta("imagewoof", "resnet50", 10) == (0.005, 1)
  assert hald_hyper.official_lr_eta("fashion_mnist_local", "convnet_d3", 10) is None
  config = tiny_config(schedule="hald", dataset="cifar100", model="resnet18_cifar",
                       images_per_class=50)
  assert hald_hyper.resolved_eta(config) == 1.0
  config.hald_eta = 3.0  # a config's own η wins
  assert hald_hyper.resolved_eta(config) == 3.0


def test_a_run_on_a_built_set_keeps_the_eta_of_the_set_it_was_built_at(tmp_path):
  # A distilled set's run trains on a folder (another data set's name, a whole-folder pool):
  # hyper.yaml's row is the one of the data set and IPC the set was built from (a study's RDED
  # cell at IPC10 stopped here with "no entry for images_per_class=0").
  config = tiny_config(schedule="hald", hald_eta_like="cifar100:resnet18", images_per_class=10)
  folder = image_sets.folder_config(config, str(tmp_path), "index")
  assert (folder.images_per_class, folder.hald_eta, folder.hald_eta_like) == (0, 2.0, "")
  config.images_per_class = 50
  assert image_sets.folder_config(config, str(tmp_path), "index").hald_eta == 1.0
  config.hald_eta = 3.0  # a config's own η is kept as it is
  assert image_sets.folder_config(config, str(tmp_path), "index").hald_eta == 3.0
  config.schedule, config.hald_eta, config.hald_eta_like = "cosine", 0.0, ""
  assert image_sets.folder_config(config, str(tmp_path), "index").hald_eta == 0.0


def test_a_hald_schedule_without_a_table_row_is_refused_and_the_schedule_uses_the_row():
  config = tiny_config(schedule="hald")  # embedded digits: not in hyper.yaml
  with pytest.raises(ValueError, match="config.hald_eta: hald_eta=0 takes η from Jiacheng8/HALD"):
    config_schema.validate(config)
  # A data set the table does not list borrows a listed row's η at its own IPC (10: η = 2).
  config.hald_eta_like = "cifar100:resnet18"
  assert hald_hyper.resolved_eta(config) == 2.0
  config.images_per_class = 50
  assert hald_hyper.resolved_eta(config) == 1.0
  config.hald_eta_like = "cifar100:convnet_d3"
  with pytest.raises(ValueError, match="config.hald_eta_like: .* no entry"):
    config_schema.validate(config)
  config.hald_eta_like, config.images_per_class = "", 10
  config.hald_eta = 2.0
  config_schema.validate(config)
  # η = 2 over E = 4 epochs of 10 steps: epoch e at lr · ½(1 + cos(π e / 8)), stepped per epoch.
  schedule = optim.learning_rate_schedule(config, 40, 10.0)
  for step, epoch in ((0, 0), (9, 0), (10, 1), (35, 3)):
    want = config.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / 8))
    assert float(schedule(step)) == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------- BSSL relabel


def _bn_teacher(width=8):
  model = models.create_model("convnet_d3", 4, width=width, norm="batch")
  images = np.random.default_rng(0).normal(2.0, 3.0, size=(24, 12, 12, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), images[:1], train=False)
  return model, variables, images


def _train_mode_logits(model, variables, images):
  """PyTorch's model.train() forward: each BatchNorm normalised by the batch it is given."""
  return np.asarray(model.apply(variables, images, train=True, mutable=["batch_stats"])[0])


def test_each_bssl_batch_is_normalised_by_its_own_real_rows():
  model, variables, images = _bn_teacher()
  # Three relabel batches of 8: the second holds 3 real rows and 5 padding rows of garbage.
  padded = images.copy()
  padded[11:16] = 1e3
  mask = np.ones(24, np.float32)
  mask[11:16] = 0
  got = np.asarray(bssl.grouped_logits(model, variables, padded, mask, 8))
  np.testing.assert_allclose(got[:8], _train_mode_logits(model, variables, images[:8]), atol=1e-4)
  np.testing.assert_allclose(got[8:11], _train_mode_logits(model, variables, images[8:11]),
                             atol=1e-4)
  np.testing.assert_allclose(got[16:], _train_mode_logits(model, variables, images[16:]), atol=1e-4)
  # One batch of all 24 is the plain train-mode forward; batches of 8 are not.
  whole = np.asarray(bssl.grouped_logits(model, variables, images, np.ones(24, np.float32), 24))
  np.testing.assert_allclose(whole, _train_mode_logits(model, variables, images), atol=1e-4)
  assert np.abs(whole[:8] - got[:8]).max() > 1e-3


def test_bssl_labels_are_the_same_on_eight_devices_and_one():
  model, variables, images = _bn_teacher()
  batch = {"image": images[:16], "mask": np.ones(16, np.float32)}
  outs = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = mesh_lib.data_mesh(devices)
    predict = inference.bssl_log_probs_fn(model, mesh, 2.0, 4)  # 4 batches of 4 rows
    outs.append(np.asarray(predict(variables, mesh_lib.global_batch(batch, mesh))["log_probs"]))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
  assert inference.bssl_groups_per_call(3, 100, mesh_lib.data_mesh()) % 8 == 0  # 3·8k rows
  assert inference.bssl_groups_per_call(16, 100, mesh_lib.data_mesh()) == 6  # 96 rows


def test_bssl_batches_are_drawn_slot_by_slot_from_a_permutation_of_the_pool():
  table = relabel_batches.group_rows(5, 2, 2, seed=7)
  assert table.shape == (6, 2)  # per slot ⌈5 / 2⌉ = 3 batches, the last one short
  real = table[table >= 0]
  assert sorted(real.tolist()) == list(range(10))  # every (position, slot) row exactly once
  assert (table[[2, 5], 1] == -1).all() and (table[table >= 0] % 2 == np.repeat([0, 1], 5)).all()
  for slot in (0, 1):
    order = relabel_batches.relabel_order(5, slot, 7)
    np.testing.assert_array_equal(table[3 * slot:3 * slot + 3].reshape(-1)[:5], order * 2 + slot)
  assert not np.array_equal(relabel_batches.relabel_order(50, 0, 7),
                            relabel_batches.relabel_order(50, 1, 7))


@pytest.mark.slow
def test_a_bssl_table_stores_each_crop_labelled_within_its_own_relabel_batch(
    tmp_path, tiny_bn_teacher):
  config = soft_config(tmp_path, tiny_bn_teacher, teacher_bn_mode="batch_stats",
                       relabel_batch_size=16, crops_per_image=2, temperature=2.0, cutmix_alpha=1.0)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  example = run_data.table_crop_example(config, data)
  teacher = teacher_lib.load_teacher(tiny_bn_teacher, num_classes=10, input_shape=(1, 28, 28, 1),
                                     mesh=mesh_lib.data_mesh(jax.devices()[:1]))
  groups = relabel_batches.group_rows(len(data.pool_ids), 2, 16, config.crop_seed)
  for group in groups[[0, 6, 12]]:  # a full batch of slot 0, slot 0's short one, one of slot 1
    rows = group[group >= 0]
    crops = np.stack([example.normalizer(example.raw_crop(*divmod(int(r), 2))[0]) for r in rows])
    want = jax.nn.softmax(_train_mode_logits(teacher.model, teacher.variables, crops) / 2.0)
    for row, expected in zip(rows, np.asarray(want), strict=True):
      position, slot = divmod(int(row), 2)
      stored = replay.TableCrops(example, pipeline.EpochShuffle(100, 0), table.directory,
                                 draw_seed=0).replay(position, slot)["soft_label"]
      np.testing.assert_allclose(stored, expected, atol=2e-3)
  assert len(groups[6][groups[6] >= 0]) == 100 % 16
  with pytest.raises(ValueError, match="a BSSL table is one shard"):
    plan.relabel_table(
        soft_config(tmp_path, tiny_bn_teacher, teacher_bn_mode="batch_stats", relabel_batch_size=8,
                    table_positions_per_shard=40), str(tmp_path / "sharded"))


def test_weight_decay_falls_on_the_parameters_hald_get_parameters_decays():
  # validate/utils_validate.py get_parameters (lines 280-294): decay a parameter whose name holds
  # 'weight' and whose tensor has more than one dimension (conv and linear weights), none on
  # biases and BatchNorm weights/biases; flax names those kernels 'kernel'.
  model = models.create_model("resnet18_cifar", 10)
  params = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                      train=False)["params"]
  decayed = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
  for path, decay in decayed:
    name = jax.tree_util.keystr(path)
    assert decay == ("kernel" in name), name
  assert any(d for _, d in decayed) and not all(d for _, d in decayed)


# ----------------------------------------------------------------------------- table CutMix


def official_rand_bbox(size_nchw, lam, cx, cy):
  """relabel/utils_fkd.py rand_bbox with its two np.random.randint draws passed in."""
  W = size_nchw[2]  # noqa: N806  (the official names)
  H = size_nchw[3]  # noqa: N806
  cut_rat = np.sqrt(1. - lam)
  cut_w = int(W * cut_rat)
  cut_h = int(H * cut_rat)
  bbx1 = np.clip(cx - cut_w // 2, 0, W)
  bby1 = np.clip(cy - cut_h // 2, 0, H)
  bbx2 = np.clip(cx + cut_w // 2, 0, W)
  bby2 = np.clip(cy + cut_h // 2, 0, H)
  return bbx1, bby1, bbx2, bby2


def test_a_batch_box_is_the_official_rand_bbox():
  for seed in range(20):
    rng = np.random.default_rng(seed)
    top, left, height, width, lam = relabel_batches.batch_box(rng, 28, 1.0)
    again = np.random.default_rng(seed)
    raw = again.beta(1.0, 1.0)
    cx, cy = int(again.integers(0, 28)), int(again.integers(0, 28))
    bbx1, bby1, bbx2, bby2 = official_rand_bbox((16, 1, 28, 28), raw, cx, cy)
    # images[:, :, bbx1:bbx2, bby1:bby2]: rows from bbx, columns from bby.
    assert (top, left, height, width) == (bbx1, bby1, bbx2 - bbx1, bby2 - bby1)
    assert lam == pytest.approx(1 - height * width / 28**2)


def test_table_cutmix_pairs_every_crop_within_its_relabel_batch():
  plan_ = relabel_batches.cutmix_plan(37, 3, 8, seed=5, alpha=1.0, size=16)
  groups = relabel_batches.group_rows(37, 3, 8, seed=5)
  for group in groups:
    rows = group[group >= 0]
    positions, slots = rows // 3, rows % 3
    assert len(set(slots)) == 1  # one relabel epoch per batch
    slot = int(slots[0])
    partners = plan_.partner_position[positions, slot]
    # rand_index = torch.randperm(batch): every member is some member's partner exactly once.
    assert sorted(partners.tolist()) == sorted(positions.tolist())
    boxes = plan_.cut_box[positions, slot]
    assert (boxes == boxes[0]).all() and (plan_.mix_lambda[positions, slot]
                                          == plan_.mix_lambda[positions[0], slot]).all()
  # Batches of a slot draw their own λ: not all alike.
  assert len(set(plan_.mix_lambda[:, 0].tolist())) > 1


def test_the_table_cutmix_rule_is_in_the_table_identity(tmp_path, teacher_dir):
  batch = soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0)
  pool = soft_config(tmp_path, teacher_dir, cutmix_alpha=1.0, table_cutmix="pool")
  ids = [plan.make_plan(c, str(tmp_path / "run")).table.identity for c in (batch, pool)]
  assert ids[0] != ids[1]
  assert ids[0]["recipe"]["table_cutmix"] == "relabel_batch" and "table_cutmix" not in ids[1][
      "recipe"]
  # Without CutMix the rule changes nothing: an old table stays the same table.
  plain = [
      plan.make_plan(soft_config(tmp_path, teacher_dir, table_cutmix=rule),
                     str(tmp_path / "run")).table.identity for rule in ("relabel_batch", "pool")
  ]
  assert plain[0] == plain[1]


def test_the_soft_phase_loss_is_kldivloss_batchmean_at_t20_with_weight_one():
  # validate/train_fkd.py line 618 `nn.KLDivLoss(reduction='batchmean')`, line 675
  # `F.log_softmax(output / 20, dim=1)` against the stored softmax(teacher / 20): weight 1, no T².
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 10)).astype(np.float32) * 5
  soft = rng.dirichlet(np.ones(10), 16).astype(np.float32)
  log_p = logits / 20 - np.log(np.exp(logits / 20).sum(1, keepdims=True))
  kldiv_batchmean = float((soft * (np.log(soft) - log_p)).sum() / 16)
  assert float(losses.kl_soft_loss(logits, soft, 20.0)) == pytest.approx(kldiv_batchmean, rel=1e-5)
  assert config_schema.default_config().soft_loss_weight == 1.0


def test_auto_relabels_rded_sets_in_eval_mode_and_every_other_set_with_bssl(tmp_path, teacher_dir):
  # relabel/relabel_slc.py main(): `if args.img_mode == 'rded': args.eval_mode = 'T'` (eval),
  # else 'F' (model.train(), BSSL).
  for selection, mode in (("random", "batch_stats"), ("rded", "eval"), ("ca2d", "eval"),
                          ("sre2l", "batch_stats")):
    config = tiny_config(teacher_bn_mode="auto", selection=selection)
    assert config_schema.resolved_teacher_bn_mode(config) == mode, selection
  auto = soft_config(tmp_path, teacher_dir, teacher_bn_mode="auto")
  explicit = soft_config(tmp_path, teacher_dir, teacher_bn_mode="batch_stats")
  tables = [plan.make_plan(c, str(tmp_path / "run")).table for c in (auto, explicit)]
  assert tables[0].directory == tables[1].directory  # one table, however the mode was named


@pytest.mark.slow
def test_fashion_hald_paper_runlocal_runs_hald_in_its_regime(tmp_path):
  config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_hald_paper.py"),
                                          "runlocal")
  config.cache_dir = str(tmp_path / "cache")
  rows = study.run(config, str(tmp_path / "study"))
  # HL and SL+KD × 2 sets, SL and HALD × 2 sets × 2 tables.
  assert len(rows) == 4 + 8
  assert {r["steps"] for r in rows} == {20 * 20 // 16}  # 20 epochs of 20 images at batch 16
  headers = [
      json.load(open(path))["spec"]
      for path in glob.glob(str(tmp_path / "cache" / "tables" / "*" / "header.json"))
  ]
  # relabel_slc.py: BSSL for the real subset, eval mode for the RDED set; CutMix per relabel batch.
  modes = {("imagefolder" in h["dataset_name"], h["teacher_bn_mode"]) for h in headers}
  assert modes == {(False, "batch_stats"), (True, "eval")}
  assert {h["crop_spec"]["cutmix_partner"] for h in headers} == {"relabel_batch"}
  assert "## HALD vs SL at equal soft-label bytes" in (tmp_path / "study" / "report.md").read_text()
  for name, (fields, regimes, tables) in ABLATIONS.items():
    ablation = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_hald_paper.py"),
                                              f"ablation={name}")
    assert tuple(ablation.study_regimes) == regimes and ablation.study_label_tables == tables
    assert all(ablation[k] == v for k, v in fields.items())
  # The C-aware smoothing keeps ImageNet's true-to-other ratio at s = 0.8: 0.2008 / 0.0008 = 251.
  s = ABLATIONS["label_smoothing"][0]["hald_label_smoothing"]
  assert (1 - s + s / 10) / (s / 10) == pytest.approx((1 - 0.8 + 0.8 / 1000) / (0.8 / 1000))
  # phase_curve changes nothing but the evaluations along training: every cell ends where the
  # grid's twin ended, to the bit, and its curve ends at that accuracy.
  curve_config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_hald_paper.py"),
                                                "ablation=phase_curve,runlocal")
  curve_config.cache_dir = config.cache_dir
  study.run(curve_config, str(tmp_path / "curve"))
  report = ablation_report.write_report(str(tmp_path / "study"),
                                        {"phase_curve": str(tmp_path / "curve")},
                                        str(tmp_path / "ablations"))
  entries = ablation_report.compare(
      rows, study_report.read_csv(str(tmp_path / "curve" / study.RESULTS_CSV)))
  assert len(entries) == 8 and all(e["vs_base"].mean == 0.0 for e in entries)
  curves = ablation_report.phase_curves(str(tmp_path / "curve"))
  assert len(curves) == 8 and all(c["epochs"] == [5, 10, 15, 20] for c in curves)
  final = {
      (r["regime"], r["method"], r["crops_per_image"], r["label_keep_fraction"]):
          100 * r["test_top1"] for r in rows if r["regime"] in ("sl", "hald")
  }
  assert all(c["test_top1"][-1] == pytest.approx(final[c["regime"], c["method"], c["crops"],
                                                       c["keep"]]) for c in curves)
  assert {c["regime"]: c["hard_epochs"] for c in curves}["hald"] == list(range(5, 15))
  assert (tmp_path / "ablations" / "phase_curves.png").stat().st_size > 0
  assert "## phase_curve" in report.markdown


def test_drift_with_bssl_labels_crops_in_the_tables_relabel_batches(tmp_path, tiny_bn_teacher):
  config = soft_config(tmp_path, tiny_bn_teacher, task="drift", drift_crop_counts=(1, 2),
                       temperature=1.0, teacher_bn_mode="batch_stats", relabel_batch_size=16)
  config_schema.unset(config, "learning_rate", "crops_per_image")
  bssl_rows = plan.measure_drift(config, str(tmp_path / "bssl"))
  config.teacher_bn_mode = "eval"
  eval_rows = plan.measure_drift(config, str(tmp_path / "eval"))
  assert [r["crops_per_image"] for r in bssl_rows] == [1, 2]
  assert all(np.isfinite(r["kl"]) for r in bssl_rows)
  # Batch statistics of 16 mixed crops are not the running ones: the drift differs.
  assert abs(bssl_rows[0]["kl"] - eval_rows[0]["kl"]) > 1e-4


def test_one_adamw_runs_through_every_phase_never_reset(tmp_path, teacher_dir):
  # train_fkd.py builds one optimizer (line 432) and both soft_train and hard_train step it.
  config = soft_config(tmp_path, teacher_dir, regime="hald", hald_schedule="S6", optimizer="adamw",
                       learning_rate=1e-3, weight_decay=0.01, budget_examples=16 * 25)
  run = plan.train(config, str(tmp_path / "hald"))
  assert set(run.results["phase_steps"]) == {"soft", "hard"}
  counts = [
      int(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(run.state.opt_state)[0]
      if "count" in jax.tree_util.keystr(path)
  ]
  assert counts and set(counts) == {25}  # Adam's step count spans both phases


def test_hald_batches_soft_steps_replay_whole_relabel_batches(tmp_path, teacher_dir):
  config = soft_config(tmp_path, teacher_dir, regime="hald", hald_schedule="S6",
                       label_pruning="hald_batches", cutmix_alpha=1.0, relabel_batch_size=16,
                       budget_examples=16 * 24)
  table = plan.relabel_table(config, str(tmp_path / "relabel"))
  data = run_data.load_run_data(config)
  budget = trainer.budget_from_config(config, len(data.pool_ids))
  phases = trainer.step_phases(config, budget)
  example_at = trainer.training_examples(config, data, table, phases)
  groups = relabel_batches.group_rows(100, 3, 16, config.crop_seed)
  relabel_sets = [set(g[g >= 0].tolist()) for g in groups]
  soft_steps = [s for s in range(budget.steps) if phases.of_step(s) == "soft"]
  assert soft_steps
  for step in soft_steps[:4]:
    rows = set()
    for p in range(step * 16, step * 16 + 16):
      example = example_at(p)
      position = int(np.searchsorted(data.pool_ids, int(example["id"])))
      rows.add(position * 3 + int(example["slot"]))
    # The step's 16 crops are one relabel batch: the crops BSSL and CutMix saw together.
    assert rows in relabel_sets, step


@pytest.mark.slow
def test_fashion_hald_drift_runlocal_applies_the_relabel_rule_per_set(tmp_path):
  rows = {}
  for chosen in ("rded", "random"):
    for teacher in ("auto", "eval"):
      config = config_schema.load_config_file(os.path.join(CONFIG_DIR, "fashion_hald_drift.py"),
                                              f"runlocal,set={chosen},teacher={teacher}")
      config.cache_dir = str(tmp_path / "cache")  # one teacher and one RDED set for all four
      rows[chosen, teacher] = plan.measure_drift(config, str(tmp_path / f"{chosen}-{teacher}"))
  assert [r["crops_per_image"] for r in rows["rded", "auto"]] == [1, 2, 4]
  # relabel_slc.py: RDED images are labelled in eval mode, so 'auto' is 'eval' there ...
  assert rows["rded", "auto"] == rows["rded", "eval"]
  # ... and every other set with BSSL, whose batch statistics move the labels.
  assert rows["random", "auto"][0]["kl"] != rows["random", "eval"][0]["kl"]


def test_s6_is_train_fkd_epochs_weight():
  # validate/train_fkd.py: S6 `epochs_weight = [soft_epochs // 2, hard_epochs,
  # soft_epochs - soft_epochs // 2]`, `training_type = ['soft', 'hard', 'soft']`; train.sh:
  # soft_epochs=150, hard_epochs=300-150.
  s6 = hald.parse_schedule("S6")
  phases = [hald.phase_of_epoch(e, 300, s6, 0.5) for e in range(300)]
  assert phases == ["soft"] * 75 + ["hard"] * 150 + ["soft"] * 75
  # An odd soft count: its smaller half comes first (151 soft of 301 = 75, 150 hard, 76).
  odd = [hald.phase_of_epoch(e, 301, s6, 150 / 301) for e in range(301)]
  assert odd == ["soft"] * 75 + ["hard"] * 150 + ["soft"] * 76


def test_drift_measures_the_crops_a_table_of_that_many_crops_stores(tmp_path, tiny_bn_teacher,
                                                                    monkeypatch):
  seen = []
  original = run_data.table_crop_example

  def recording(*args, **kwargs):
    example = original(*args, **kwargs)
    seen.append(example)
    return example

  monkeypatch.setattr(run_data, "table_crop_example", recording)
  config = soft_config(tmp_path, tiny_bn_teacher, task="drift", drift_crop_counts=(1, 3),
                       temperature=1.0, cutmix_alpha=1.0)
  config_schema.unset(config, "learning_rate", "crops_per_image")
  plan.measure_drift(config, str(tmp_path / "drift"))
  (example,) = seen
  # A table of 3 crops per image, CutMixed within its relabel batches: the same crops, partners.
  table_config = soft_config(tmp_path, tiny_bn_teacher, crops_per_image=3, temperature=1.0,
                             cutmix_alpha=1.0)
  table = plan.relabel_table(table_config, str(tmp_path / "relabel"))
  assert example.cutmix_plan is not None and example.cutmix_plan.partner_position.shape[1] == 3
  for position, slot in ((0, 0), (7, 2), (99, 1)):
    stored = table.metadata(position, slot)
    _, _, metadata = example.raw_crop(position, slot)
    assert int(stored["partner_id"]) == int(metadata["partner_id"])
    np.testing.assert_array_equal(np.asarray(stored["cut_box"]), metadata["cut_box"])
