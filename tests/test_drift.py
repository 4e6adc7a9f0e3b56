"""Drift meter: hand-worked KL and mismatch rates, and the CSV/PNG writers."""

import csv

import numpy as np
import pytest

from hardlabel_jax import drift


def test_hand_worked_two_class_image():
  # One image of class 0. Whole image: p = (0.8, 0.2). Crops: (0.5, 0.5), then (0.1, 0.9).
  image = np.log([[0.8, 0.2]])
  crops = np.log([[[0.5, 0.5], [0.1, 0.9]]])
  stats = drift.image_drift_stats(crops, image, np.array([0]), [1, 2])
  # m=1: KL(p‖(0.5,0.5)) = 0.8 ln(1.6) + 0.2 ln(0.4); m=2: mean (0.3, 0.7).
  kl1 = 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5)
  kl2 = 0.8 * np.log(0.8 / 0.3) + 0.2 * np.log(0.2 / 0.7)
  np.testing.assert_allclose(stats["kl"][0], [kl1, kl2], rtol=1e-12)
  # argmax of crop 1 is class 0 (ties go to the first class), of crop 2 class 1.
  np.testing.assert_allclose(stats["crop_mismatch"][0], [0.0, 0.5])
  np.testing.assert_allclose(stats["mean_label_mismatch"][0], [0.0, 1.0])


def test_crops_equal_to_the_image_have_no_drift():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  crops = np.repeat(log_p[:, None], 4, axis=1)
  labels = log_p.argmax(-1)
  stats = drift.image_drift_stats(crops, logits, labels, [1, 2, 4])
  np.testing.assert_allclose(stats["kl"], 0.0, atol=1e-12)
  assert not stats["crop_mismatch"].any() and not stats["mean_label_mismatch"].any()


def test_more_crops_average_out_drift():
  # Each crop is the image label mixed with a random wrong class: the average approaches the
  # image prediction as crops accumulate, so KL must fall with m.
  rng = np.random.default_rng(1)
  n, slots, classes = 200, 16, 10
  image = np.full((n, classes), 0.05 / (classes - 1))
  image[:, 0] = 0.95
  crops = np.full((n, slots, classes), 0.02 / (classes - 2))
  crops[..., 0] = 0.5
  wrong = rng.integers(1, classes, size=(n, slots))
  np.put_along_axis(crops, wrong[..., None], 0.48 + 0.02 / (classes - 2), axis=-1)
  crops /= crops.sum(-1, keepdims=True)
  stats = drift.image_drift_stats(np.log(crops), np.log(image), np.zeros(n, int), [1, 4, 16])
  rows = drift.drift_curve(stats, [1, 4, 16])
  kl = [r["kl"] for r in rows]
  assert kl[0] > kl[1] > kl[2] > 0
  assert rows[0]["images"] == n


def test_writers(tmp_path):
  rows = drift.drift_curve(
      {
          "kl": np.array([[0.5, 0.1]]),
          "crop_mismatch": np.array([[1., .5]]),
          "mean_label_mismatch": np.array([[1., 0.]])
      }, [1, 2])
  drift.write_csv(rows, str(tmp_path / "d.csv"))
  with open(tmp_path / "d.csv") as f:
    read = list(csv.DictReader(f))
  assert [int(r["crops_per_image"]) for r in read] == [1, 2]
  assert float(read[1]["kl"]) == pytest.approx(0.1)
  drift.plot(rows, str(tmp_path / "d.png"), "test")
  assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_shapes_and_counts():
  with pytest.raises(ValueError, match="crop counts"):
    drift.image_drift_stats(np.zeros((2, 3, 4)), np.zeros((2, 4)), np.zeros(2, int), [4])
  with pytest.raises(ValueError, match="shapes disagree"):
    drift.image_drift_stats(np.zeros((2, 3, 4)), np.zeros((2, 5)), np.zeros(2, int), [1])
