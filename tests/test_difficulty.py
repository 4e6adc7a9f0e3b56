"""Difficulty scores on hand-worked numbers, at extreme logits, jitted and sharded on 8 devices."""

import math

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hardlabel_jax import difficulty
from hardlabel_jax import mesh
from hardlabel_jax.models import create_model

LN3 = math.log(3.0)


def _f32(x):
  return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# EL2N, AUM, teacher scores, epoch statistics.


def test_el2n_hand_values():
  # softmax([0, ln 3]) = [1/4, 3/4]: label 0 → ‖[−3/4, 3/4]‖ = 3√2/4;
  # label 1 → ‖[1/4, −1/4]‖ = √2/4.
  logits = _f32([[0.0, LN3], [0.0, LN3], [1e4, -1e4]])
  got = difficulty.el2n(logits, np.array([0, 1, 1]))
  np.testing.assert_allclose(got, [3 * math.sqrt(2) / 4, math.sqrt(2) / 4, math.sqrt(2)], rtol=1e-6)
  assert got.dtype == jnp.float32


def test_el2n_mean_averages_runs():
  # Run 1: 3√2/4 (above); run 2: logits [0, 0] → p = [1/2, 1/2], error √2/2. Mean = 5√2/8.
  logits = _f32([[[0.0, LN3]], [[0.0, 0.0]]])
  np.testing.assert_allclose(difficulty.el2n_mean(logits, np.array([0])), [5 * math.sqrt(2) / 8],
                             rtol=1e-6)


def test_aum_sign_clean_vs_mislabeled():
  # Example 0 (label 0, learned): margins 3−1 = 2 and 2−1 = 1 → 1.5.
  # Example 1 (label 2, but the model fits class 0): margins 1−4 = −3 and 2−5 = −3 → −3.
  logits = _f32([[[3, 1, 0], [4, 0, 1]], [[2, 1, 1], [5, 0, 2]]])
  np.testing.assert_allclose(difficulty.aum(logits, np.array([0, 2])), [1.5, -3.0], rtol=1e-6)


def test_aum_finite_at_extreme_logits():
  logits = _f32([[[1e4, -1e4, 0.0]]])
  np.testing.assert_allclose(difficulty.aum(logits, np.array([1])), [-2e4], rtol=1e-6)


def _official_accumulated_margin(batches, targets):
  """haizhongzheng/Coverage-centric-coreset-selection generate_importance_score.py L91–108."""
  accumulated = np.zeros(len(targets))
  for index, output in batches:  # output: the batch's softmax probabilities, as the code exps
    output = np.array(output, dtype=np.float64)
    label = targets[index]
    rows = np.arange(output.shape[0])
    target_prob = output[rows, label].copy()
    output[rows, label] = 0
    np.add.at(accumulated, index, target_prob - output.max(axis=1))
  return accumulated


def test_training_aum_of_two_epochs_of_training_batches():
  # CCS's AUM: p_y − max_{i≠y} p_i of every example in every training mini-batch (official
  # core/training/Trainer.py L42–49 logs them, generate_importance_score.py L91–108 sums them).
  # Three examples with labels 0, 1, 2; epoch 0 draws batches [2, 0] and [1], epoch 1 [0, 1], [2].
  labels = np.array([0, 1, 2])
  batches = [
      (np.array([2, 0]), _f32([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])),  # 0.5−0.3, 0.6−0.3
      (np.array([1]), _f32([[0.5, 0.25, 0.25]])),  # 0.25−0.5
      (np.array([0, 1]), _f32([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2]])),  # 0.8−0.1, 0.7−0.2
      (np.array([2]), _f32([[0.4, 0.4, 0.2]])),  # 0.2−0.4
  ]
  margins = [difficulty.probability_margin(np.log(p), labels[i]) for i, p in batches]
  for got, want in zip(margins, [[0.2, 0.3], [-0.25], [0.7, 0.5], [-0.2]], strict=True):
    np.testing.assert_allclose(got, want, atol=1e-6)
  positions = np.concatenate([i for i, _ in batches])
  aum = difficulty.training_aum(positions, np.concatenate(margins), 3)
  # Example 0: (0.3 + 0.7)/2; example 1: (−0.25 + 0.5)/2; example 2: (0.2 − 0.2)/2.
  np.testing.assert_allclose(aum, [0.5, 0.125, 0.0], atol=1e-6)
  # The official sum is the mean times the two epochs: the same ranks and CCS strata.
  np.testing.assert_allclose(2 * np.asarray(aum), _official_accumulated_margin(batches, labels),
                             atol=1e-6)


def test_training_aum_marks_undrawn_examples_and_checks_positions():
  aum = difficulty.training_aum(np.array([0, 0]), _f32([0.5, 0.25]), 2)
  np.testing.assert_allclose(aum[0], 0.375)
  assert np.isnan(aum[1])
  with pytest.raises(ValueError, match=r"positions must lie in \[0, 2\)"):
    difficulty.training_aum(np.array([2]), _f32([0.5]), 2)
  with pytest.raises(ValueError, match="shaped like margins"):
    difficulty.training_aum(np.array([0, 1]), _f32([0.5]), 2)


def test_probability_margin_finite_at_extreme_logits():
  logits = _f32([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(difficulty.probability_margin(logits, np.array([1, 0])), [-1.0, 0.0],
                             atol=1e-6)


def test_teacher_scores_hand_values():
  logits = _f32([[0.0, LN3], [1e4, 0.0]])
  np.testing.assert_allclose(difficulty.teacher_ce(logits, np.array([0, 0])), [math.log(4), 0.0],
                             atol=1e-6)
  np.testing.assert_allclose(difficulty.teacher_confidence(logits), [0.75, 1.0], rtol=1e-6)
  entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
  got = difficulty.teacher_entropy(logits)
  np.testing.assert_allclose(got, [entropy, 0.0], atol=1e-6)
  np.testing.assert_allclose(difficulty.teacher_ce(logits[1:], np.array([1])), [1e4], rtol=1e-6)


def test_epoch_statistics_hand_values():
  logits = _f32([[0.0, LN3], [2.0, 0.0]])
  stats = difficulty.epoch_statistics(logits, np.array([0, 0]))
  e2 = math.exp(2.0)
  np.testing.assert_allclose(stats["true_prob"], [0.25, e2 / (1 + e2)], rtol=1e-6)
  np.testing.assert_allclose(stats["margin"], [-LN3, 2.0], rtol=1e-6)
  np.testing.assert_allclose(stats["prob_margin"], [-0.5, (e2 - 1) / (1 + e2)], rtol=1e-6)
  np.testing.assert_allclose(stats["el2n"],
                             [3 * math.sqrt(2) / 4, math.sqrt(2) / (1 + e2)], rtol=1e-6)
  np.testing.assert_array_equal(stats["correct"], [False, True])
  assert stats["correct"].dtype == jnp.bool_
  np.testing.assert_array_equal(stats["prediction"], [1, 0])


# ----------------------------------------------------------------------------------------------
# Forgetting, dynamic uncertainty, CAD.


def test_forgetting_events_counts():
  correct = np.array([
      [1, 0, 1, 1, 0],  # forgotten twice
      [0, 0, 0, 0, 0],  # never learned
      [0, 1, 1, 1, 1],  # learned, never forgotten
      [1, 1, 0, 0, 1]
  ]).T  # once
  np.testing.assert_array_equal(difficulty.forgetting_events(correct), [2, np.inf, 0, 1])
  np.testing.assert_array_equal(difficulty.forgetting_events(correct.astype(bool)),
                                [2, np.inf, 0, 1])
  with pytest.raises(ValueError, match="only 0 and 1"):
    difficulty.forgetting_events(correct * 2)


def test_dynamic_uncertainty_matches_numpy_sliding_std():
  p = np.random.default_rng(0).uniform(size=(7, 5)).astype(np.float32)
  got = difficulty.dynamic_uncertainty(p, 3)
  want = np.stack([np.std(p[k:k + 3], axis=0, ddof=1) for k in range(5)])
  assert got.shape == (5, 5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Two epochs 0.1 and 0.3: sample std = 0.2/√2.
  np.testing.assert_allclose(difficulty.dynamic_uncertainty(_f32([[0.1], [0.3]]), 2),
                             [[0.2 / math.sqrt(2)]], rtol=1e-5)


@pytest.mark.parametrize("window", [1, 8])
def test_dynamic_uncertainty_window_checked(window):
  with pytest.raises(ValueError, match="window"):
    difficulty.dynamic_uncertainty(np.zeros((7, 3), np.float32), window)


def test_cad_hand_table():
  # K = 5, J = 2, W = 2: U_k = |p_{k+1} − p_k|/√2 for k = 0..3; CAD averages U_1, U_2.
  p = _f32([[0.1, 0.5], [0.5, 0.5], [0.2, 0.5], [0.6, 0.5], [0.9, 0.0]])
  # Example 0: U = [0.4, 0.3, 0.4, 0.3]/√2 → (0.3 + 0.4)/2/√2. Example 1 changes only in the last
  # window (U_3), which CAD leaves out → 0.
  got = difficulty.cad_scores(p, window=2, num_windows=2)
  np.testing.assert_allclose(got, [0.35 / math.sqrt(2), 0.0], atol=1e-6)


def test_cad_needs_j_plus_w_epochs():
  with pytest.raises(ValueError, match=r"K = J \+ W = 4"):
    difficulty.cad_scores(np.zeros((3, 2), np.float32), window=2, num_windows=2)
  assert difficulty.cad_scores(np.zeros((4, 2), np.float32), window=2, num_windows=2).shape == (2,)


def test_input_checks():
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    difficulty.el2n(np.zeros((2, 2), np.float32), np.array([0, 2]))
  with pytest.raises(ValueError, match="shape"):
    difficulty.aum(np.zeros((2, 2), np.float32), np.array([0, 1]))
  with pytest.raises(ValueError, match="labels have 3 examples"):
    difficulty.teacher_ce(np.zeros((2, 2), np.float32), np.array([0, 1, 1]))
  with pytest.raises(ValueError, match="floating"):
    difficulty.el2n(np.zeros((2, 2), np.int32), np.array([0, 1]))


def test_traced_out_of_range_label_is_nan():
  got = jax.jit(difficulty.el2n)(np.zeros((2, 3), np.float32), np.array([0, 5]))
  assert np.isfinite(got[0]) and np.isnan(got[1])


# ----------------------------------------------------------------------------------------------
# GraNd.


class _SoftmaxRegression(nn.Module):
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Dense(self.num_classes, name="fc")(x)


class _MLP(nn.Module):
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train):
    del train
    h = nn.relu(nn.Dense(3, name="hidden")(x))
    return nn.Dense(self.num_classes, name="out")(h)


def _softmax_regression_variables():
  # W = 0, b = [0, ln 3] → p = [1/4, 3/4] for every x.
  return {"params": {"fc": {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([0.0, LN3])}}}


def test_grand_softmax_regression_hand_gradient():
  # ∇_W = x ⊗ (p − y), ∇_b = p − y → ‖∇‖² = (‖x‖² + 1)·‖p − y‖².
  # x = [1, 2], y = 0: (5 + 1)·(9/16 + 9/16) = 6.75.  x = [0, 1], y = 1: (1 + 1)·(1/8) = 0.25.
  x = _f32([[1, 2], [0, 1]])
  got = difficulty.grand(_SoftmaxRegression(), _softmax_regression_variables(), x, np.array([0, 1]))
  np.testing.assert_allclose(got, [math.sqrt(6.75), 0.5], rtol=1e-6)


def test_grand_last_layer_mlp():
  params = {
      "hidden": {
          "kernel": jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
          "bias": jnp.zeros(3)
      },
      "out": {
          "kernel": jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
          "bias": jnp.array([0.0, LN3])
      },
  }
  x, y = _f32([[1, 2]]), np.array([1])
  # h = relu([1, 2, 3]) → last layer: (‖h‖² + 1)·‖p − y‖² = 15·(1/16 + 1/16) = 15/8. The output
  # layer is found as the only Dense with 2 outputs.
  last = difficulty.grand(_MLP(), {"params": params}, x, y, last_layer=True)
  np.testing.assert_allclose(last, [math.sqrt(15 / 8)], rtol=1e-6)
  named = difficulty.grand(_MLP(), {"params": params}, x, y, last_layer=True, layer_name="out")
  np.testing.assert_allclose(named, last, rtol=1e-6)
  # A non-zero output kernel sends gradient into the hidden layer: the full norm is then larger.
  params["out"]["kernel"] = jnp.array([[1.0, -1.0], [0.5, 0.0], [0.0, 1.0]])
  full = difficulty.grand(_MLP(), {"params": params}, x, y)
  last = difficulty.grand(_MLP(), {"params": params}, x, y, last_layer=True)
  assert float(full[0]) > float(last[0]) + 1e-3


def test_find_final_layer():
  for name, path in (("convnet_d3", ("classifier",)), ("resnet18_cifar", ("fc",))):
    model = create_model(name, 10, width=8)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), jnp.zeros(
        (1, 32, 32, 3)), train=False))
    assert difficulty.find_final_layer(variables["params"], 10) == path
  ambiguous = {"a": {"kernel": jnp.zeros((2, 2))}, "b": {"kernel": jnp.zeros((2, 2))}}
  with pytest.raises(ValueError, match="pass layer_name"):
    difficulty.find_final_layer(ambiguous, 2)
  with pytest.raises(ValueError, match="not a Dense layer"):
    difficulty.grand(_MLP(), {"params": {
        "hidden": ambiguous["a"]
    }}, _f32([[1, 2]]), np.array([0]), last_layer=True, layer_name="nope")


# ----------------------------------------------------------------------------------------------
# Sharded over 8 simulated devices == 1 device.


def test_scores_sharded_equal_single_device():
  m = mesh.data_mesh(jax.devices())
  assert m.size == 8
  rng = np.random.default_rng(1)
  n = 16
  logits = rng.normal(size=(n, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=n).astype(np.int32)
  one = jax.devices()[0]
  sharded = lambda a: jax.device_put(a, mesh.batch_sharded(m))
  local = lambda a: jax.device_put(a, one)

  got = jax.jit(difficulty.el2n)(sharded(logits), sharded(labels))
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(got, difficulty.el2n(local(logits), local(labels)), rtol=1e-6)

  got_stats = jax.jit(difficulty.epoch_statistics)(sharded(logits), sharded(labels))
  want_stats = difficulty.epoch_statistics(local(logits), local(labels))
  for key in ("true_prob", "el2n", "margin", "prob_margin", "correct"):
    np.testing.assert_allclose(got_stats[key], want_stats[key], rtol=1e-6, err_msg=key)

  x = rng.normal(size=(n, 4)).astype(np.float32)
  y = rng.integers(0, 2, size=n).astype(np.int32)
  model = _MLP()
  variables = model.init(jax.random.key(0), x[:1], train=False)
  grand = jax.jit(difficulty.grand, static_argnums=(0,), static_argnames=("last_layer",))
  got = grand(model, jax.device_put(variables, mesh.replicated(m)), sharded(x), sharded(y))
  assert len(got.sharding.device_set) == 8
  want = difficulty.grand(model, jax.device_put(variables, one), local(x), local(y))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  got_last = grand(model, jax.device_put(variables, mesh.replicated(m)), sharded(x), sharded(y),
                   last_layer=True)
  want_last = difficulty.grand(model, variables, x, y, last_layer=True)
  np.testing.assert_allclose(got_last, want_last, rtol=1e-5)
