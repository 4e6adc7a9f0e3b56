"""hardlabel_jax.losses against independent NumPy references of DESIGN.md §3, §5, §6."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from hardlabel_jax import losses

# ----------------------------------------------------------------------------------------------
# NumPy references, float64, written from the DESIGN formulas (no calls into the library).


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_kl(log_q, log_p):
  """KL(q‖p) of 1-D distributions given by log-probabilities, with 0·log 0 = 0."""
  log_q, log_p = np.asarray(log_q, np.float64), np.asarray(log_p, np.float64)
  q = np.exp(log_q)
  nz = q > 0
  return float(np.sum(q[nz] * (log_q[nz] - log_p[nz])))


def np_log_binary(z, i):
  """log [p_i, 1 − p_i] for p = softmax(z); 1 − p_i = Σ_{j≠i} p_j, summed in log space."""
  lp = np_log_softmax(z)
  return np.array([lp[i], np.logaddexp.reduce(np.delete(lp, i))])


def np_ce(z, y):
  return float(-np_log_softmax(z)[y])


def np_standardize(z):
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=-1, keepdims=True)
  std = z.std(axis=-1, ddof=1, keepdims=True)
  return (z - mean) / (1e-7 + std)


def np_kd(s, t, y, T, w, ce_w=None):
  ce_w = 1.0 - w if ce_w is None else ce_w
  per = [
      ce_w * np_ce(s[i], y[i])
      + w * T**2 * np_kl(np_log_softmax(t[i] / T), np_log_softmax(s[i] / T)) for i in range(len(y))
  ]
  return float(np.mean(per))


def np_dkd_parts(s, t, y, T):
  """Per-example (TCKD, NCKD) with T², literally `p(z/T − 1000·g)` for NCKD (DESIGN §6)."""
  tckd, nckd = [], []
  for i in range(len(y)):
    tckd.append(T**2 * np_kl(np_log_binary(t[i] / T, y[i]), np_log_binary(s[i] / T, y[i])))
    g = np.eye(len(s[i]))[y[i]]
    nckd.append(T**2
                * np_kl(np_log_softmax(t[i] / T - 1000 * g), np_log_softmax(s[i] / T - 1000 * g)))
  return np.array(tckd), np.array(nckd)


def np_dkd(s, t, y, alpha, beta, T, wf):
  tckd, nckd = np_dkd_parts(s, t, y, T)
  ce = np.mean([np_ce(s[i], y[i]) for i in range(len(y))])
  return float(ce + wf * (alpha * tckd.mean() + beta * nckd.mean()))


def np_rld_parts(s, t, y, T, Ta):
  """Per-example (SCD, MCD) with Ta², T²; MCD keeps the classes with z_t < z_t[y] explicitly."""
  scd, mcd = [], []
  for i in range(len(y)):
    m = int(np.argmax(t[i]))
    scd.append(Ta**2 * np_kl(np_log_binary(t[i] / Ta, m), np_log_binary(s[i] / Ta, y[i])))
    keep = [c for c in range(len(t[i])) if t[i][c] < t[i][y[i]]]
    if keep:
      mcd.append(T**2 * np_kl(np_log_softmax(t[i][keep] / T), np_log_softmax(s[i][keep] / T)))
    else:
      mcd.append(0.0)
  return np.array(scd), np.array(mcd)


def np_rld(s, t, y, alpha, beta, T, Ta, wf):
  scd, mcd = np_rld_parts(s, t, y, T, Ta)
  ce = np.mean([np_ce(s[i], y[i]) for i in range(len(y))])
  return float(ce + wf * (alpha * scd.mean() + beta * mcd.mean()))


def np_nkd(s, t, y, T, gamma, ce_weight=1.0):
  """The student's CE (weight 1 in the reference trainer) plus the NKD loss."""
  l_t, l_non = [], []
  for i in range(len(y)):
    l_t.append(-np_softmax(t[i])[y[i]] * np_log_softmax(s[i])[y[i]])
    rest = [c for c in range(len(s[i])) if c != y[i]]
    qt, log_ps = np_softmax(t[i][rest] / T), np_log_softmax(s[i][rest] / T)
    l_non.append(np.sum(qt * log_ps))
  ce = np.mean([np_ce(s[i], y[i]) for i in range(len(y))])
  return float(ce_weight * ce + np.mean(l_t) - gamma * T**2 * np.mean(l_non))


# ----------------------------------------------------------------------------------------------
# Fixtures: small hand-made batches.

# 3 classes. Row 0: teacher right. Row 1: teacher confidently wrong. Row 2: teacher ranks the
# true class lowest (RLD masks every class). Row 3: teacher tie with the true class.
S3 = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.0, 0.0, -1.0], [0.5, 0.5, 1.5]], np.float32)
T3 = np.array([[3.0, 1.0, -2.0], [-1.0, 6.0, -4.0], [1.0, 2.0, 3.0], [2.0, 2.0, -1.0]], np.float32)
Y3 = np.array([0, 0, 0, 1], np.int32)
# 2 classes: DKD's NCKD and RLD's MCD have at most one class left, so they are 0.
S2 = np.array([[0.0, 1.0], [2.0, -1.0]], np.float32)
T2 = np.array([[1.5, -0.5], [0.0, 3.0]], np.float32)
Y2 = np.array([1, 0], np.int32)


def random_batch(batch=16, classes=10, scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  s = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
  t = (scale * rng.normal(size=(batch, classes))).astype(np.float32)
  y = rng.integers(0, classes, size=batch).astype(np.int32)
  return s, t, y


# Plus a 16×10 batch, the shape the jit/sharding tests use (its kernels compile once).
CASES = [(S3, T3, Y3), (S2, T2, Y2), random_batch(seed=9)]


def close(actual, expected, rtol=1e-5, atol=1e-6):
  chex.assert_shape(actual, ())
  assert actual.dtype == jnp.float32
  np.testing.assert_allclose(float(actual), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# Values against the references.


def test_cross_entropy_closed_form_and_reference():
  close(losses.cross_entropy(np.zeros((1, 2), np.float32), np.array([1])), np.log(2.0))
  for s, _, y in CASES:
    close(losses.cross_entropy(s, y), np.mean([np_ce(s[i], y[i]) for i in range(len(y))]))


def test_soft_cross_entropy_reference():
  q = np.array([[0.2, 0.8, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0], [0.5, 0.25, 0.25]],
               np.float32)
  expected = np.mean([-np.sum(q[i] * np_log_softmax(S3[i])) for i in range(4)])
  close(losses.soft_cross_entropy(S3, q), expected)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kl_soft_loss_reference_with_zero_targets(T):
  q = np.array([[0.0, 1.0, 0.0], [0.7, 0.0, 0.3], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], np.float32)
  with np.errstate(divide="ignore"):
    expected = np.mean([np_kl(np.log(q[i]), np_log_softmax(S3[i] / T)) for i in range(4)])
  close(losses.kl_soft_loss(S3, q, T), expected)
  # Zero target entries: finite gradients with respect to both arguments.
  gs, gq = jax.grad(losses.kl_soft_loss, argnums=(0, 1))(S3, q, T)
  chex.assert_tree_all_finite((gs, gq))


@pytest.mark.parametrize("T,w", [(4.0, 0.9), (1.0, 0.5), (2.0, 1.0)])
def test_kd_reference(T, w):
  for s, t, y in CASES:
    close(losses.kd_loss(s, t, y, temperature=T, kd_weight=w), np_kd(s, t, y, T, w))


def test_kd_explicit_ce_weight():
  close(losses.kd_loss(S3, T3, Y3, 2.0, 9.0, ce_weight=0.1), np_kd(S3, T3, Y3, 2.0, 9.0, 0.1))


@pytest.mark.parametrize("alpha,beta,T,wf", [(1.0, 8.0, 4.0, 1.0), (0.5, 2.0, 1.0, 0.25)])
def test_dkd_reference(alpha, beta, T, wf):
  for s, t, y in CASES:
    got = losses.dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=T, warmup_factor=wf)
    close(got, np_dkd(s, t, y, alpha, beta, T, wf))


@pytest.mark.parametrize("alpha,beta,T,Ta,wf", [(1.0, 8.0, 4.0, 4.0, 1.0),
                                                (2.0, 0.5, 1.0, 3.0, 0.5)])
def test_rld_reference(alpha, beta, T, Ta, wf):
  for s, t, y in CASES:
    got = losses.rld_loss(s, t, y, alpha=alpha, beta=beta, temperature=T, alpha_temperature=Ta,
                          warmup_factor=wf)
    close(got, np_rld(s, t, y, alpha, beta, T, Ta, wf))


def test_rld_parts_reference_and_edge_cases():
  scd, mcd = losses._rld_parts(S3, T3, Y3, 4.0, 4.0)
  ref_scd, ref_mcd = np_rld_parts(S3, T3, Y3, 4.0, 4.0)
  np.testing.assert_allclose(np.asarray(scd) * 16, ref_scd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(mcd) * 16, ref_mcd, rtol=1e-5, atol=1e-6)
  # Row 2 ranks the true class lowest (every class is masked) and row 3 has a tie with the true
  # class plus one class below: MCD is exactly 0 in both (one unmasked class has KL 0). Finite
  # gradients with every class masked: see test_finite_at_large_logits_... (`t_wrong`).
  assert float(mcd[2]) == 0.0 and float(mcd[3]) == 0.0


@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (4.0, 0.5)])
def test_nkd_reference(T, gamma):
  for s, t, y in CASES:
    close(losses.nkd_loss(s, t, y, temperature=T, gamma=gamma), np_nkd(s, t, y, T, gamma))
    close(losses.nkd_loss(s, t, y, temperature=T, gamma=gamma, ce_weight=0.0),
          np_nkd(s, t, y, T, gamma, ce_weight=0.0))


def test_nkd_adds_the_students_cross_entropy_as_the_reference_trainer_does():
  # yzd-v/cls_KD mmcls/models/classifiers/distiller.py `ClassificationDistiller.loss` returns
  # `ori_loss` (the student head's CE, loss_weight=1.0) and `loss_nkd` (dis_losses/nkd.py:
  # `loss_t + loss_non`); mmengine sums both. Hand-made: 2 classes, one example, label 0, T = 1,
  # student logits (0, 0), teacher (log 3, 0) so pt = (3/4, 1/4).
  s = np.array([[0.0, 0.0]], np.float32)
  t = np.array([[np.log(3.0), 0.0]], np.float32)
  y = np.array([0], np.int32)
  ce = np.log(2.0)  # −log ps_0 with ps = (1/2, 1/2)
  loss_t = 0.75 * np.log(2.0)  # −pt_0 · log ps_0
  loss_non = 0.0  # one non-target class: log softmax over it is log 1 = 0
  pure = losses.nkd_loss(s, t, y, ce_weight=0.0)
  close(pure, loss_t - 1.5 * loss_non)
  close(losses.nkd_loss(s, t, y), ce + loss_t)  # ≈ 1.21301
  close(losses.nkd_loss(s, t, y), 1.75 * np.log(2.0))
  close(losses.get_distillation_loss("nkd", ce_weight=0.0)(s, t, y), float(pure))
  # 3 classes: the non-target term is γ·(−Σ p̂t_i log p̂s_i) over classes 1, 2.
  s = np.array([[0.0, 0.0, np.log(3.0)]], np.float32)  # ps = (1/5, 1/5, 3/5)
  t = np.array([[0.0, np.log(2.0), np.log(2.0)]], np.float32)  # pt = (1/5, 2/5, 2/5)
  # p̂t over {1, 2} = (1/2, 1/2); p̂s = (1/4, 3/4).
  non = -(0.5 * np.log(0.25) + 0.5 * np.log(0.75))
  expected_pure = -0.2 * np.log(0.2) + 1.5 * non
  close(losses.nkd_loss(s, t, y, ce_weight=0.0), expected_pure)
  close(losses.nkd_loss(s, t, y), -np.log(0.2) + expected_pure)
  close(losses.nkd_loss(s, t, y, ce_weight=0.5), -0.5 * np.log(0.2) + expected_pure)


def test_standardize_logits_reference_and_constant_rows():
  z = np.array([[1.0, 2.0, 4.0], [-3.0, 0.0, 3.0], [5.0, 5.0, 5.0]], np.float32)
  out = losses.standardize_logits(z)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np_standardize(z), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out[2]), 0.0)
  # sqrt'(0) is infinite: a constant row must still give finite gradients.
  g = jax.grad(lambda x: jnp.sum(losses.standardize_logits(x) * jnp.arange(3.0)))(z)
  chex.assert_tree_all_finite(g)


def test_label_smoothing_targets_hand_values():
  out = losses.label_smoothing_targets(np.array([0, 2]), 4, 0.8)
  expected = np.array([[0.4, 0.2, 0.2, 0.2], [0.2, 0.2, 0.4, 0.2]])
  chex.assert_shape(out, (2, 4))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(losses.label_smoothing_targets(np.array([1]), 3, 0.0)),
                                [[0.0, 1.0, 0.0]])


def test_warmup_factor():
  assert losses.warmup_factor(5, 20) == 0.25
  assert losses.warmup_factor(40, 20) == 1.0
  assert losses.warmup_factor(0, 20) == 0.0
  assert losses.warmup_factor(3, 0) == 1.0
  traced = jax.jit(lambda e: losses.warmup_factor(e, 20))(jnp.array(10))
  np.testing.assert_allclose(float(traced), 0.5)


# ----------------------------------------------------------------------------------------------
# Invariances.


def test_kd_and_kl_vanish_when_student_equals_teacher():
  s, _, y = random_batch(seed=1)
  close(losses.kd_loss(s, s, y, temperature=4.0, kd_weight=1.0), 0.0, atol=1e-5)
  close(losses.get_distillation_loss("kl")(s, s, y), 0.0, atol=1e-6)
  close(losses.kl_soft_loss(s, np_softmax(s / 3.0).astype(np.float32), 3.0), 0.0, atol=1e-6)
  # ...and are positive otherwise (the tests above could not pass with an identically-zero loss).
  other = s + 1.5 * np.eye(10, dtype=np.float32)[y]
  assert float(losses.kd_loss(s, other, y, kd_weight=1.0)) > 1e-3


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposition_identity(T):
  """KL(p_t‖p_s) = TCKD + (1 − pt_y)·NCKD per example, at one temperature, without T²."""
  s, t, y = random_batch(batch=4, classes=3, seed=2)
  tckd, nckd = losses._dkd_parts(s, t, y, T)
  for i in range(len(y)):
    kl = losses.kd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], temperature=T, kd_weight=1.0) / T**2
    pt_y = np_softmax(t[i] / T)[y[i]]
    np.testing.assert_allclose(float(kl), float(tckd[i] + (1 - pt_y) * nckd[i]), rtol=1e-4,
                               atol=1e-6)


def test_rld_mcd_ignores_classes_ranked_at_or_above_true_class():
  t = np.array([[5.0, 3.0, 1.0, 1.0, -1.0, -2.0]], np.float32)
  y = np.array([2], np.int32)  # class 3 ties with the true class, classes 4 and 5 are below it
  s = np.array([[0.1, -0.4, 0.7, 1.2, 0.3, -0.6]], np.float32)
  _, base = losses._rld_parts(s, t, y)
  assert float(base[0]) > 0
  for c in (0, 1, 2, 3):  # teacher ranks these at or above the true class (true class included)
    bumped = s.copy()
    bumped[0, c] += 7.0
    np.testing.assert_allclose(float(losses._rld_parts(bumped, t, y)[1][0]), float(base[0]),
                               rtol=1e-6)
  for c in (4, 5):
    bumped = s.copy()
    bumped[0, c] += 1.0
    assert abs(float(losses._rld_parts(bumped, t, y)[1][0]) - float(base[0])) > 1e-3


def test_logit_standardization_ce_on_raw_logits_kd_on_standardized():
  s, t, y = S3 * 3.0 + 1.0, T3, Y3
  fn = losses.get_distillation_loss("kd", True, **losses.LOGIT_STANDARDIZATION_KD_DEFAULTS)
  zs, zt = np_standardize(s), np_standardize(t)
  expected = np.mean([
      0.1 * np_ce(s[i], y[i])
      + 9.0 * 4.0 * np_kl(np_log_softmax(zt[i] / 2.0), np_log_softmax(zs[i] / 2.0))
      for i in range(len(y))
  ])
  close(fn(s, t, y), expected, rtol=1e-4)
  # Standardised losses see only the z-scores: shifting/scaling the teacher changes nothing.
  for name in ("kl", "dkd", "rld", "nkd"):
    f = losses.get_distillation_loss(name, logit_standardization=True)
    np.testing.assert_allclose(float(f(s, 5.0 * t - 2.0, y)), float(f(s, t, y)), rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Numerical robustness, jit and sharding.

ALL_NAMES = sorted(losses.LOSSES)


@functools.lru_cache(maxsize=None)
def jitted_value_and_grad(name, standardize):
  """One compiled value-and-grad (w.r.t. student and teacher) per registry loss, shared by tests."""
  fn = losses.get_distillation_loss(name, logit_standardization=standardize)
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_jit_and_8_device_sharding_match_eager(name):
  """Eager and jitted values agree; batch-sharded over 8 simulated CPU devices = 1 device."""
  assert jax.device_count() >= 8, "tests/conftest.py must force 8 host platform devices"
  s, t, y = random_batch(batch=16, seed=8)
  jitted = jitted_value_and_grad(name, False)
  value, (grad_s, grad_t) = jitted(s, t, y)  # on the default (single) device
  chex.assert_trees_all_close(value,
                              losses.get_distillation_loss(name)(s, t, y), rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(grad_s).max()) > 0
  np.testing.assert_array_equal(np.asarray(grad_t), 0.0)  # the teacher is frozen

  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.device_put((s, t, y), NamedSharding(mesh, P("data")))
  assert len(sharded[0].sharding.device_set) == 8
  sharded_value, (sharded_grad_s, _) = jitted(*sharded)
  assert sharded_grad_s.sharding.spec[0] == "data"  # the gradient stays batch-sharded
  chex.assert_trees_all_close((sharded_value, sharded_grad_s), (value, grad_s), rtol=1e-6,
                              atol=1e-6)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("standardize", [False, True])
def test_finite_at_large_logits_and_confidently_wrong_teacher(name, standardize):
  s, t, y = random_batch(batch=16, scale=1e4, seed=4)
  # Confidently wrong teacher: 1e4 on a wrong class; a student 1e4-confident on the right one.
  # With t_wrong the true class ties the teacher's lowest logit, so RLD masks every class.
  t_wrong = (1e4 * np.eye(10)[(y + 1) % 10]).astype(np.float32)
  s_right = (1e4 * np.eye(10)[y]).astype(np.float32)
  value_and_grad = jitted_value_and_grad(name, standardize)
  for student, teacher in ((s, t), (s, t_wrong), (s_right, t_wrong), (t_wrong, t_wrong)):
    chex.assert_tree_all_finite(value_and_grad(student, teacher, y))


def test_large_logits_match_reference():
  s, t, y = random_batch(batch=4, classes=3, scale=1e4, seed=5)
  close(losses.kd_loss(s, t, y), np_kd(s, t, y, 4.0, 0.9), rtol=1e-4)
  close(losses.rld_loss(s, t, y), np_rld(s, t, y, 1.0, 8.0, 4.0, 4.0, 1.0), rtol=1e-4)
  close(losses.nkd_loss(s, t, y), np_nkd(s, t, y, 1.0, 1.5), rtol=1e-4)
  # NCKD must drop the true class even where the reference's "− 1000·g" is too small to.
  _, nckd = losses._dkd_parts(s, t, y, 4.0)
  for i in range(len(y)):
    rest = [c for c in range(3) if c != y[i]]
    ref = np_kl(np_log_softmax(t[i][rest] / 4.0), np_log_softmax(s[i][rest] / 4.0))
    np.testing.assert_allclose(float(nckd[i]), ref, rtol=1e-4, atol=1e-6)


def test_low_precision_inputs_return_float32():
  s, t, y = random_batch(seed=6)
  out = losses.kd_loss(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.float16), y)
  assert out.dtype == jnp.float32 and np.isfinite(float(out))


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_errors_on_bad_shapes_and_dtypes():
  s, t, y = S3, T3, Y3
  with pytest.raises(ValueError, match="same shape"):
    losses.kd_loss(s, t[:, :2], y)
  with pytest.raises(ValueError, match="integer"):
    losses.dkd_loss(s, t, y.astype(np.float32))
  with pytest.raises(ValueError, match=r"shape \[batch\]"):
    losses.rld_loss(s, t, y[:, None])
  with pytest.raises(ValueError, match="ndim=1"):
    losses.cross_entropy(s[0], y[:1])
  with pytest.raises(ValueError, match="batch 3 but the logits have batch 4"):
    losses.nkd_loss(s, t, y[:3])
  with pytest.raises(ValueError, match="floating"):
    losses.cross_entropy(s.astype(np.int32), y)
  with pytest.raises(ValueError, match="at least 2 classes"):
    losses.cross_entropy(s[:, :1], np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="same shape"):
    losses.soft_cross_entropy(s, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_errors_on_non_positive_temperature(bad):
  with pytest.raises(ValueError, match="temperature"):
    losses.kd_loss(S3, T3, Y3, temperature=bad)
  with pytest.raises(ValueError, match="temperature"):
    losses.kl_soft_loss(S3, np_softmax(T3).astype(np.float32), bad)
  with pytest.raises(ValueError, match="alpha_temperature"):
    losses.rld_loss(S3, T3, Y3, alpha_temperature=bad)
  with pytest.raises(ValueError, match="temperature"):
    losses.get_distillation_loss("dkd", temperature=bad)


def test_errors_raised_at_trace_time_under_jit():
  with pytest.raises(ValueError, match="same shape"):
    jax.jit(lambda s, t, y: losses.kd_loss(s, t, y))(S3, T3[:, :2], Y3)
  with pytest.raises(ValueError, match="> 0"):
    jax.jit(lambda s, t, y: losses.nkd_loss(s, t, y, temperature=0.0))(S3, T3, Y3)


def test_out_of_range_labels():
  for bad in (np.array([0, 3, 1, 0]), np.array([0, -1, 1, 0])):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
      losses.dkd_loss(S3, T3, bad)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
      losses.label_smoothing_targets(bad, 3, 0.1)
  # Traced labels cannot be checked: the documented outcome is NaN, never a wrong finite value.
  fns = [losses.get_distillation_loss(name) for name in ALL_NAMES if name != "kl"]  # kl: no labels
  all_losses = jax.jit(lambda s, t, y: jnp.stack([fn(s, t, y) for fn in fns]))
  for bad in (np.array([0, 3, 1, 0]), np.array([0, -1, 1, 0])):
    assert np.isnan(np.asarray(all_losses(S3, T3, bad))).all()
  assert np.isfinite(np.asarray(all_losses(S3, T3, Y3))).all()


def test_registry_errors_and_contents():
  assert set(losses.LOSSES) == {"ce", "kl", "kd", "dkd", "rld", "nkd"}
  with pytest.raises(ValueError, match="valid names: ce, dkd, kd, kl, nkd, rld"):
    losses.get_distillation_loss("hinton")
  with pytest.raises(ValueError, match="unknown argument.*'temprature'"):
    losses.get_distillation_loss("kd", temprature=4.0)
  with pytest.raises(ValueError, match="kd_weight must lie in"):
    losses.get_distillation_loss("kd", kd_weight=9.0)
  with pytest.raises(ValueError, match="logit_standardization must be a bool"):
    losses.get_distillation_loss("kd", "yes")
  # Call-time keywords override, e.g. the per-epoch warm-up factor, which may be traced.
  fn = losses.get_distillation_loss("dkd", beta=2.0)
  close(fn(S3, T3, Y3, warmup_factor=0.5), np_dkd(S3, T3, Y3, 1.0, 2.0, 4.0, 0.5))
  traced = jax.jit(lambda wf: fn(S3, T3, Y3, warmup_factor=wf))(jnp.float32(0.5))
  close(traced, np_dkd(S3, T3, Y3, 1.0, 2.0, 4.0, 0.5))
  close(losses.get_distillation_loss("ce")(S3, None, Y3), losses.cross_entropy(S3, Y3).item())
  close(
      losses.get_distillation_loss("kl", temperature=3.0)(S3, T3, Y3),
      np.mean([np_kl(np_log_softmax(T3[i] / 3.0), np_log_softmax(S3[i] / 3.0)) for i in range(4)]))
  close(losses.get_distillation_loss("kd")(S3, T3, Y3), np_kd(S3, T3, Y3, 4.0, 0.9))
  close(losses.get_distillation_loss("rld")(S3, T3, Y3), np_rld(S3, T3, Y3, 1, 8, 4, 4, 1))
  close(losses.get_distillation_loss("nkd")(S3, T3, Y3), np_nkd(S3, T3, Y3, 1.0, 1.5))
