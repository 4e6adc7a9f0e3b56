"""The HL train step: same loss and parameters on 8 simulated devices as on 1."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hardlabel_jax import losses
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps


def _batch(n=16, size=12, classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "image": rng.normal(size=(n, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, classes, n).astype(np.int32),
      "partner_label": rng.integers(0, classes, n).astype(np.int32),
      "mix_lambda": rng.uniform(0.3, 1.0, n).astype(np.float32),
  }


def _run_steps(model_name, devices, num_steps=3):
  mesh = mesh_lib.data_mesh(devices)
  # BatchNorm statistics must be those of the global batch, whatever the device count.
  norm = {"convnet_d3": "instance", "convnet_bn": "batch"}[model_name]
  model = models.create_model("convnet_d3", 5, width=16, norm=norm)
  schedule = optax.constant_schedule(0.05)
  tx = optax.sgd(schedule, momentum=0.9)
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, model, tx, input_shape=(1, 12, 12, 3)),
      out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, model=model, tx=tx,
                                    schedule=schedule, num_classes=5, label_smoothing=0.1,
                                    base_rng=jax.random.key(1))
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, mesh_lib.global_batch(_batch(seed=i), mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.mark.parametrize("model_name", ["convnet_d3", "convnet_bn"])
def test_eight_devices_match_one(model_name):
  assert jax.device_count() == 8, "tests/conftest.py must simulate 8 CPU devices"
  state8, losses8 = _run_steps(model_name, jax.devices())
  state1, losses1 = _run_steps(model_name, jax.devices()[:1])
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  chex.assert_trees_all_close(state8.params, state1.params, atol=2e-5, rtol=2e-4)
  chex.assert_trees_all_close(state8.batch_stats, state1.batch_stats, atol=2e-5, rtol=2e-4)
  assert int(state8.step) == 3


def test_hard_label_targets_mix_smoothed_one_hots():
  batch = {
      "label": jnp.array([0, 1]),
      "partner_label": jnp.array([2, 1]),
      "mix_lambda": jnp.array([0.75, 0.5])
  }
  targets = train_steps.hard_label_targets(batch, num_classes=4, smoothing=0.4)
  # smoothed one-hot: true class 1 - 0.4 + 0.1 = 0.7, others 0.1
  expected = np.array([[0.75 * 0.7 + 0.25 * 0.1, 0.1, 0.75 * 0.1 + 0.25 * 0.7, 0.1],
                       [0.1, 0.7, 0.1, 0.1]])
  np.testing.assert_allclose(targets, expected, rtol=1e-6)


def test_eval_step_counts_only_masked_rows():
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  model = models.create_model("convnet_d3", 5, width=8)
  state = train_state_lib.create_train_state(model, optax.sgd(0.1), jax.random.key(0),
                                             (1, 12, 12, 3))
  batch = _batch(n=8)
  batch["mask"] = np.array([1, 1, 1, 0, 0, 1, 0, 1], np.float32)
  sums = train_steps.jit_eval_step(mesh, model)(state, mesh_lib.global_batch(batch, mesh))
  logits = model.apply(state.variables(), batch["image"], train=False)
  keep = batch["mask"] == 1
  correct = (np.argmax(logits, -1) == batch["label"])[keep].sum()
  nll = -jax.nn.log_softmax(logits)[np.arange(8), batch["label"]][keep].sum()
  assert float(sums["count"]) == 5
  assert float(sums["correct"]) == correct
  np.testing.assert_allclose(float(sums["loss_sum"]), float(nll), rtol=1e-5)


def _kd_setup(devices):
  mesh = mesh_lib.data_mesh(devices)
  student = models.create_model("convnet_d3", 5, width=8)
  teacher = models.create_model("convnet_d3", 5, width=16, norm="batch")
  teacher_vars = teacher.init(jax.random.key(7), jnp.zeros((1, 12, 12, 3)), train=False)
  schedule = optax.constant_schedule(0.05)
  tx = optax.sgd(schedule, momentum=0.9)
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, student, tx,
                        input_shape=(1, 12, 12, 3)),
      out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  step = train_steps.jit_train_step(train_steps.kd_train_step, mesh, num_replicated_args=1,
                                    model=student, teacher_model=teacher, tx=tx, schedule=schedule,
                                    distillation_loss=losses.get_distillation_loss("rld"),
                                    warmup_epochs=2.0, steps_per_epoch=4.0,
                                    base_rng=jax.random.key(1))
  return mesh, student, teacher, teacher_vars, state, step


def test_kd_step_uses_online_teacher_logits_and_warmup():
  mesh, student, teacher, teacher_vars, state, step = _kd_setup(jax.devices()[:1])
  batch = _batch()
  student_logits = student.apply(state.variables(), batch["image"], train=True)
  teacher_logits = teacher.apply(teacher_vars, batch["image"], train=False)
  # step 0 is in epoch 1 (1-based): warmup factor min(1 / 2, 1) = 0.5
  expected = losses.rld_loss(student_logits, teacher_logits, batch["label"], warmup_factor=0.5)
  _, metrics = step(state, mesh_lib.global_batch(batch, mesh), teacher_vars)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  teacher_acc = np.mean(np.argmax(teacher_logits, -1) == batch["label"])
  np.testing.assert_allclose(float(metrics["teacher_accuracy"]), teacher_acc)


def test_kd_step_eight_devices_match_one():
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh, _, _, teacher_vars, state, step = _kd_setup(devices)
    for i in range(2):
      state, metrics = step(state, mesh_lib.global_batch(_batch(seed=i), mesh), teacher_vars)
    results.append((state, float(metrics["loss"])))
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  chex.assert_trees_all_close(results[0][0].params, results[1][0].params, atol=2e-5, rtol=2e-4)


def _soft_batch(seed=0, n=16, classes=5):
  batch = _batch(n=n, classes=classes, seed=seed)
  rng = np.random.default_rng(100 + seed)
  batch["soft_label"] = rng.dirichlet(np.ones(classes), n).astype(np.float32)
  return batch


def _soft_steps(devices, which):
  mesh = mesh_lib.data_mesh(devices)
  model = models.create_model("convnet_d3", 5, width=8, norm="batch")
  schedule = optax.constant_schedule(0.05)
  tx = optax.sgd(schedule, momentum=0.9)
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, model, tx, input_shape=(1, 12, 12, 3)),
      out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
  common = dict(model=model, tx=tx, schedule=schedule, base_rng=jax.random.key(1))
  if which == "sl":
    step = train_steps.jit_train_step(train_steps.sl_train_step, mesh, temperature=4.0, **common)
  elif which == "hald_hard":  # HALD's hard phase: the batch CutMixed with itself reversed
    step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, num_classes=5,
                                      label_smoothing=0.8, batch_cutmix_alpha=1.0, **common)
  elif which == "hybrid":
    step = train_steps.jit_train_step(train_steps.hybrid_train_step, mesh, num_classes=5,
                                      label_smoothing=0.8, temperature=4.0, hard_weight=0.25,
                                      **common)
  else:  # sl_kd: the KL registry loss against an online teacher
    teacher = models.create_model("convnet_d3", 5, width=16, norm="batch")
    teacher_vars = teacher.init(jax.random.key(7), jnp.zeros((1, 12, 12, 3)), train=False)
    kd = train_steps.jit_train_step(
        train_steps.kd_train_step, mesh, num_replicated_args=1, teacher_model=teacher,
        distillation_loss=losses.get_distillation_loss("kl", temperature=4.0), warmup_epochs=0.0,
        steps_per_epoch=4.0, **common)
    step = lambda s, b: kd(s, b, teacher_vars)
  return mesh, model, state, step


@pytest.mark.parametrize("which", ["sl", "sl_kd", "hybrid", "hald_hard"])
def test_soft_label_steps_eight_devices_match_one(which):
  # hald_hard: the reversal crosses devices (image 0's partner lives on the last device).
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh, _, state, step = _soft_steps(devices, which)
    for i in range(2):
      state, metrics = step(state, mesh_lib.global_batch(_soft_batch(seed=i), mesh))
    results.append((state, float(metrics["loss"])))
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
  chex.assert_trees_all_close(results[0][0].params, results[1][0].params, atol=2e-5, rtol=2e-4)
  chex.assert_trees_all_close(results[0][0].batch_stats, results[1][0].batch_stats, atol=2e-5,
                              rtol=2e-4)


def test_sl_and_hybrid_losses_match_their_formulas():
  batch = _soft_batch()
  for which in ("sl", "hybrid"):
    mesh, model, state, step = _soft_steps(jax.devices()[:1], which)
    logits = model.apply(state.variables(), batch["image"], train=True, mutable=["batch_stats"])[0]
    kl = losses.kl_soft_loss(logits, batch["soft_label"], 4.0)
    if which == "sl":
      expected = kl
    else:
      hard = losses.soft_cross_entropy(logits, train_steps.hard_label_targets(batch, 5, 0.8))
      expected = 0.25 * hard + 0.75 * kl
    _, metrics = step(state, mesh_lib.global_batch(batch, mesh))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


def test_soft_loss_weight_scales_only_the_kl_term():
  batch = _soft_batch()
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  model = models.create_model("convnet_d3", 5, width=8)
  tx = optax.adamw(1e-3)
  state = train_state_lib.create_train_state(model, tx, jax.random.key(0), (1, 12, 12, 3))
  common = dict(model=model, tx=tx, schedule=optax.constant_schedule(1e-3),
                base_rng=jax.random.key(1))
  logits = model.apply(state.variables(), batch["image"], train=True)
  kl = float(losses.kl_soft_loss(logits, batch["soft_label"], 20.0))
  hard = float(losses.soft_cross_entropy(logits, train_steps.hard_label_targets(batch, 5, 0.8)))
  sl = train_steps.jit_train_step(train_steps.sl_train_step, mesh, temperature=20.0,
                                  soft_weight=400.0, **common)
  hybrid = train_steps.jit_train_step(train_steps.hybrid_train_step, mesh, num_classes=5,
                                      label_smoothing=0.8, temperature=20.0, hard_weight=0.5,
                                      soft_weight=400.0, **common)
  global_batch = mesh_lib.global_batch(batch, mesh)
  np.testing.assert_allclose(float(sl(state, global_batch)[1]["loss"]), 400 * kl, rtol=1e-5)
  state = train_state_lib.create_train_state(model, tx, jax.random.key(0), (1, 12, 12, 3))
  np.testing.assert_allclose(float(hybrid(state, global_batch)[1]["loss"]),
                             0.5 * hard + 0.5 * 400 * kl, rtol=1e-5)
