"""RDED / CA2D: crop selection, grid stitching order, and distilled sets through the trainer."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import distill
from hardlabel_jax import plan
from hardlabel_jax import selection
from hardlabel_jax.data import crops
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import sources
from helpers import tiny_config


def test_stitch_puts_patch_i_plus_k_ipc_in_row_major_order():
  ipc, factor = 3, 2
  patches = np.stack([np.full((2, 2, 1), k, np.uint8) for k in range(ipc * factor**2)])
  grids = distill.stitch(patches, ipc, factor)
  assert grids.shape == (3, 4, 4, 1)
  # image 1 holds patches 1, 4, 7, 10: top-left, top-right, bottom-left, bottom-right.
  np.testing.assert_array_equal(grids[1, ::2, ::2, 0], [[1, 4], [7, 10]])
  np.testing.assert_array_equal(grids[0, ::2, ::2, 0], [[0, 3], [6, 9]])
  with pytest.raises(ValueError, match="expected 12 patches"):
    distill.stitch(patches[:5], ipc, factor)


def test_select_crops_keeps_each_images_best_crop_and_the_lowest_per_class():
  labels = np.array([0, 0, 0, 1, 1, 1])
  ce = np.array([[0.9, 0.2], [0.5, 0.6], [0.1, 3.0], [2.0, 1.0], [0.3, 0.4], [5.0, 4.0]])
  positions, slots = distill.select_crops(labels, ce, images_per_class=2, factor=1)
  # class 0 best CEs: 0.2 (pos 0), 0.5 (pos 1), 0.1 (pos 2) → pos 2, 0; class 1: 0.3, 1.0.
  np.testing.assert_array_equal(positions, [2, 0, 4, 3])
  np.testing.assert_array_equal(slots, [0, 1, 0, 1])
  with pytest.raises(ValueError, match="fewer than"):
    distill.select_crops(labels, ce, images_per_class=4, factor=1)


def distill_config(tmp_path, teacher_dir, **overrides):
  fields = dict(selection="rded", images_per_class=2, rded_candidates_per_class=10,
                teacher_workdir=teacher_dir, cache_dir=str(tmp_path / "cache"),
                budget_examples=16 * 3)
  return tiny_config(**{**fields, **overrides})


@pytest.mark.slow
def test_rded_set_round_trips_through_the_trainer(tmp_path, teacher_dir):
  config = distill_config(tmp_path, teacher_dir)
  results = plan.train(config, str(tmp_path / "run"))
  assert results.results["pool_size"] == 20 and results.results["dataset"].startswith(
      "imagefolder:")
  (name,) = os.listdir(tmp_path / "cache" / "distilled")
  directory = tmp_path / "cache" / "distilled" / name
  provenance = json.loads((directory / distill.PROVENANCE_FILE).read_text())
  assert len(provenance["images"]) == 20
  train = sources.load_source("embedded_mnist", "train")
  labels = train.labels()
  for entry in provenance["images"]:
    assert len(entry["patches"]) == 4
    assert all(labels[p["id"]] == entry["label"] for p in entry["patches"])
  # Rebuild one stitched image from its provenance: crops are pure functions of (seed, id, slot).
  entry = provenance["images"][3]
  spec = crops.CropSpec(output_size=28, scale=(0.08, 1.0), ratio=(1.0, 1.0), flip=False)
  patches = []
  for p in entry["patches"]:
    example = pipeline.CropExample(train, np.array([p["id"]]), spec, config.crop_seed, None)
    pixels = example.raw_crop(0, p["slot"])[0]
    patches.append(crops.resized_crop(pixels, 0, 0, 28, 28, 14))
  expected = np.zeros((28, 28), np.uint8)
  for r, patch in enumerate(patches):
    row, col = divmod(r, 2)
    expected[row * 14:(row + 1) * 14, col * 14:(col + 1) * 14] = patch[..., 0]
  stored = np.asarray(Image.open(directory / entry["file"]))
  np.testing.assert_array_equal(stored, expected)
  # The run was tested on the original test split, normalised like it.
  assert results.results["config"]["test_dataset"] == "embedded_mnist"


def test_ca2d_draws_from_the_cad_ranked_pool(tmp_path, teacher_dir):
  train = sources.load_source("embedded_mnist", "train")
  ids = np.arange(len(train))
  cad = np.random.default_rng(0).random(len(train)).astype(np.float32)
  scores_file = str(tmp_path / "scores.npz")
  selection.save_scores(scores_file, {"cad": cad}, ids, {
      "dataset": "embedded_mnist",
      "fingerprint": train.info.fingerprint
  })
  config = distill_config(tmp_path, teacher_dir, selection="ca2d", scores_file=scores_file)
  directory = plan.distill_set(config, str(tmp_path / "run"))
  provenance = json.loads(open(os.path.join(directory, distill.PROVENANCE_FILE)).read())
  labels = train.labels()
  top = {
      c: set(ids[labels == c][np.argsort(-cad[labels == c], kind="stable")[:10]].tolist())
      for c in range(10)
  }
  used = [(p["id"], e["label"]) for e in provenance["images"] for p in e["patches"]]
  assert len(used) == 80 and all(i in top[c] for i, c in used)
  # The same config reuses the set.
  assert plan.distill_set(config, str(tmp_path / "run")) == directory


def test_distillation_needs_its_inputs(tmp_path, teacher_dir):
  with pytest.raises(ValueError, match="config.scores_file"):
    plan.train(distill_config(tmp_path, teacher_dir, selection="ca2d"), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="fewer than"):
    plan.train(distill_config(tmp_path, teacher_dir, rded_candidates_per_class=5),
               str(tmp_path / "b"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
