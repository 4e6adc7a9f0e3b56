"""RDED / CA2D: crop selection, grid stitching order, and distilled sets through the trainer."""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import cache
from hardlabel_jax import config_schema
from hardlabel_jax import distill
from hardlabel_jax import image_sets
from hardlabel_jax import inference
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import selection
from hardlabel_jax import teacher as teacher_lib
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
  config = distill_config(tmp_path, teacher_dir, rded_factor=2)
  results = plan.train(config, str(tmp_path / "run"))
  assert results.results["pool_size"] == 20 and results.results["dataset"].startswith(
      "imagefolder:")
  (name,) = os.listdir(tmp_path / "cache" / "distilled")
  directory = tmp_path / "cache" / "distilled" / name
  provenance = json.loads((directory / image_sets.PROVENANCE_FILE).read_text())
  assert len(provenance["images"]) == 20
  train = sources.load_source("embedded_mnist", "train")
  labels = train.labels()
  for entry in provenance["images"]:
    assert len(entry["patches"]) == 4
    assert all(labels[p["id"]] == entry["label"] for p in entry["patches"])
  # Rebuild one stitched image from its provenance: crops are pure functions of (seed, id, slot),
  # made at size/factor as RDED's MultiRandomCrop (LINs-lab/RDED synthesize/utils.py).
  entry = provenance["images"][3]
  spec = crops.CropSpec(output_size=14, scale=(0.08, 1.0), ratio=(1.0, 1.0), flip=False)
  patches = []
  for p in entry["patches"]:
    example = pipeline.CropExample(train, np.array([p["id"]]), spec, config.crop_seed, None)
    patches.append(example.raw_crop(0, p["slot"])[0])
  expected = np.zeros((28, 28), np.uint8)
  for r, patch in enumerate(patches):
    row, col = divmod(r, 2)
    expected[row * 14:(row + 1) * 14, col * 14:(col + 1) * 14] = patch[..., 0]
  stored = np.asarray(Image.open(directory / entry["file"]))
  np.testing.assert_array_equal(stored, expected)
  # The run was tested on the original test split, normalised like it.
  assert results.results["config"]["test_dataset"] == "embedded_mnist"


def _cad_scores(tmp_path, train):
  """A hand-made score file: a seeded random CAD per train example."""
  cad = np.random.default_rng(0).random(len(train)).astype(np.float32)
  scores_file = str(tmp_path / "scores.npz")
  selection.save_scores(scores_file, {"cad": cad}, np.arange(len(train)), {
      "dataset": "embedded_mnist",
      "fingerprint": train.info.fingerprint
  })
  return scores_file, cad


def _provenance(directory: str) -> dict:
  with open(os.path.join(directory, image_sets.PROVENANCE_FILE)) as f:
    return json.load(f)


def _source_ids(directory: str) -> list[tuple[int, int]]:
  """(real image id, label) of every patch of a distilled set, from its provenance."""
  provenance = _provenance(directory)
  return [(p["id"], e["label"]) for e in provenance["images"] for p in e["patches"]]


@pytest.mark.parametrize("factor,direction", [(1, "easiest"), (2, "hardest")])
def test_ca2d_cad_selection_uses_the_images_cad_prune_selects(tmp_path, teacher_dir, factor,
                                                              direction):
  # ca2d_pool='cad_selection' (the library's former CA2D rule, kept by name): the images CAD-Prune
  # keeps at the compute budget, one best crop per image; ipc·factor² of them per class, one per
  # patch (LINs-lab/RDED synthesize/main.py stitches ipc·factor² crops into ipc images).
  train = sources.load_source("embedded_mnist", "train")
  scores_file, cad = _cad_scores(tmp_path, train)
  config = distill_config(tmp_path, teacher_dir, selection="ca2d", scores_file=scores_file,
                          rded_factor=factor, cad_direction=direction, ca2d_pool="cad_selection")
  directory = plan.distill_set(config, str(tmp_path / "run"))
  used = _source_ids(directory)
  labels = train.labels()
  per_class = 2 * factor**2
  expected = selection.select("cad_prune", labels, per_class, scores=cad, direction=direction)
  assert sorted(i for i, _ in used) == expected.tolist()  # each image once
  pool = _provenance(directory)["candidate_pool"]
  assert pool["rule"] == "cad_selection" and pool["mipc"] == per_class
  assert sorted(i for c in pool["classes"] for i in c["ids"]) == expected.tolist()
  assert all(labels[i] == c for i, c in used)
  # By hand: the per_class highest (hardest) or lowest (easiest) CAD of every class.
  sign = -1 if direction == "hardest" else 1
  by_hand = np.concatenate([
      np.flatnonzero(labels == c)[np.argsort(sign * cad[labels == c], kind="stable")[:per_class]]
      for c in range(10)
  ])
  np.testing.assert_array_equal(np.sort(by_hand), expected)
  if factor == 1:  # exactly the pool a cad_prune run with the same ipc trains on
    cad_prune = tiny_config(selection="cad_prune", images_per_class=2, scores_file=scores_file,
                            cad_direction=direction)
    np.testing.assert_array_equal(run_data.load_run_data(cad_prune).pool_ids, expected)
  # The same config reuses the set.
  assert plan.distill_set(config, str(tmp_path / "run")) == directory


def _top_by_cad(labels: np.ndarray, cad: np.ndarray, count: int,
                direction: str) -> dict[int, np.ndarray]:
  """By hand: each class's `count` highest (hardest) or lowest (easiest) CAD, best first."""
  sign = -1 if direction == "hardest" else 1
  return {
      c: np.flatnonzero(labels == c)[np.argsort(sign * cad[labels == c], kind="stable")[:count]]
      for c in np.unique(labels)
  }


@pytest.mark.parametrize("factor,direction", [(1, "hardest"), (2, "easiest")])
def test_ca2d_crops_selects_and_stitches_rded_style_from_the_top_mipc_by_cad(
    tmp_path, teacher_dir, factor, direction):
  # The paper's CA2D ("crop, select and stitch RDED-style from the CAD-Prune coreset"; Hard Truths,
  # DESIGN.md §7, no official code): RDED's random mipc candidates per class replaced by the
  # top-mipc images of each class by CAD (the ranking and direction selection='cad_prune' uses).
  # Then RDED's own algorithm (LINs-lab/RDED synthesize/main.py, synthesize/utils.py `selector`):
  # each candidate's lowest-CE crop of rded_crops_per_image, the class-wide ipc·factor² lowest of
  # those, stitched.
  train = sources.load_source("embedded_mnist", "train")
  scores_file, cad = _cad_scores(tmp_path, train)
  config = distill_config(tmp_path, teacher_dir, selection="ca2d", scores_file=scores_file,
                          rded_factor=factor, cad_direction=direction)
  assert config.ca2d_pool == "cad_top_mipc"  # the default
  directory = plan.distill_set(config, str(tmp_path / "run"))
  provenance = _provenance(directory)
  labels = np.asarray(train.labels())
  ipc, mipc, per_class = 2, 10, 2 * factor**2
  # (a) The candidates are each class's top-mipc by CAD, recorded in CAD order; every patch is one.
  top = _top_by_cad(labels, cad, mipc, direction)
  pool = provenance["candidate_pool"]
  assert (pool["rule"], pool["mipc"], pool["cad_direction"]) == ("cad_top_mipc", mipc, direction)
  assert {e["label"]: e["ids"] for e in pool["classes"]} == {c: v.tolist() for c, v in top.items()}
  used = _source_ids(directory)
  assert len(set(used)) == len(used) == 10 * per_class
  assert all(i in top[c] for i, c in used)
  # (b) Every candidate's crops scored here by the teacher (RDED's padded view, pinned by
  # test_rded_scores_the_patch_normalised_then_zero_padded): the patches are the class-wide
  # lowest-CE best crops, stitched in ascending CE (patches j, j+ipc, … of image j).
  candidates = np.concatenate([top[c] for c in range(10)])
  normalizer = pipeline.Normalizer(tuple(train.info.mean), tuple(train.info.std))
  example = distill.scoring_example(config, train, candidates, normalizer)
  rows = inference.CropRows(example, slots=5, first_row=0, num_rows=len(candidates) * 5)
  images = np.stack([rows(r)["image"] for r in range(len(candidates) * 5)])
  teacher = teacher_lib.load_teacher(teacher_dir, num_classes=10, input_shape=(1, 28, 28, 1),
                                     mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))
  log_probs = jax.nn.log_softmax(teacher.model.apply(teacher.variables, images, train=False))
  ce = -np.asarray(log_probs)[np.arange(len(images)), np.repeat(labels[candidates], 5)]
  ce = ce.reshape(len(candidates), 5)
  best_slot, best_ce = ce.argmin(1), ce.min(1)
  for c in range(10):
    members = np.flatnonzero(labels[candidates] == c)
    kept = members[np.argsort(best_ce[members], kind="stable")[:per_class]]
    images_of_class = [e for e in provenance["images"] if e["label"] == c]
    assert len(images_of_class) == ipc
    for j, entry in enumerate(images_of_class):
      expected = [kept[j + r * ipc] for r in range(factor**2)]
      chosen = [(int(candidates[k]), int(best_slot[k])) for k in expected]
      assert [(p["id"], p["slot"]) for p in entry["patches"]] == chosen
      np.testing.assert_allclose([p["teacher_ce"] for p in entry["patches"]], best_ce[expected],
                                 rtol=1e-4, atol=1e-5)
  # The class-wide filter chose other images than CAD-Prune's ipc·factor² would.
  cad_prune = _top_by_cad(labels, cad, per_class, direction)
  assert {i for i, _ in used} != {int(i) for v in cad_prune.values() for i in v}


def test_ca2d_candidates_are_mipc_capped_at_the_smallest_scored_class(tmp_path):
  train = sources.load_source("embedded_mnist", "train")
  labels = np.asarray(train.labels())
  ids = np.concatenate([np.flatnonzero(labels == c)[:3 + c] for c in range(10)])  # 3..12 a class
  scores_file = str(tmp_path / "scores.npz")
  header = {"dataset": "embedded_mnist", "fingerprint": train.info.fingerprint}
  cad = np.linspace(0, 1, len(ids), dtype=np.float32)
  selection.save_scores(scores_file, {"cad": cad}, ids, header)
  ca2d = dict(selection="ca2d", scores_file=scores_file, images_per_class=1)
  for mipc, expected in ((0, 3), (2, 2), (10, 3)):
    config = tiny_config(**ca2d, rded_factor=1, rded_candidates_per_class=mipc)
    assert distill.ca2d_candidates_per_class(config, train) == expected
    pool = distill.candidate_pool(config, train)
    assert np.bincount(labels[pool]).tolist() == [expected] * 10 and set(pool) <= set(ids)
  config = tiny_config(**ca2d, rded_factor=2, ca2d_pool="cad_selection",
                       rded_candidates_per_class=2)
  assert distill.ca2d_candidates_per_class(config, train) == 4  # ipc·factor², whatever mipc says


def test_ca2d_identity_names_its_candidate_pool():
  ident = lambda **kw: distill.identity(tiny_config(**kw), "fp", "teacher", "scores")
  paper = ident(selection="ca2d")
  assert paper["ca2d_pool"] == "cad_top_mipc"
  old = ident(selection="ca2d", ca2d_pool="cad_selection")
  assert old != paper
  assert distill.set_directory("/c", old) != distill.set_directory("/c", paper)
  assert ident(selection="ca2d", rded_candidates_per_class=50) != paper  # mipc counts for CA2D
  assert ident(selection="rded")["ca2d_pool"] == ""


def test_ca2d_pool_is_refused_outside_ca2d_and_outside_its_choices(tmp_path):
  rded = tiny_config(selection="rded", teacher_workdir="/teacher", ca2d_pool="cad_selection")
  unread = r"^config\.ca2d_pool: set to 'cad_selection' but .*rded\) never reads it.*selection=ca2d"
  with pytest.raises(ValueError, match=unread):
    config_schema.validate(rded)
  with pytest.raises(ValueError, match=r"^config\.ca2d_pool: set to"):
    plan.distill_set(rded, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  unknown = tiny_config(selection="ca2d", scores_file="scores.npz", ca2d_pool="cad_top")
  choices = r"^config\.ca2d_pool: 'cad_top' is not one of cad_top_mipc, cad_selection"
  with pytest.raises(ValueError, match=choices):
    config_schema.validate(unknown)
  config_schema.validate(
      tiny_config(selection="ca2d", scores_file="s.npz", ca2d_pool="cad_selection"))


def test_rded_factor_follows_the_image_size_as_the_official_scripts():
  # LINs-lab/RDED scripts/cifar10_*.sh, cifar100_*.sh (32 px) and tinyimagenet_*.sh (64 px) pass
  # --factor 1; scripts/imagenet-*.sh (128 and 224 px) pass --factor 2.
  for size, factor in ((28, 1), (32, 1), (64, 1), (128, 2), (224, 2)):
    assert run_data.rded_factor(tiny_config(image_size=size, rded_factor=0)) == factor
  assert run_data.rded_factor(tiny_config(image_size=28, rded_factor=3)) == 3  # explicit wins
  assert run_data.rded_factor(tiny_config(image_size=224, rded_factor=1)) == 1
  # A set's identity (and directory) holds the resolved factor.
  ident = distill.identity(tiny_config(selection="rded", rded_factor=0), "fp", "teacher", "")
  assert ident["factor"] == 1 and "-f1-" in distill.set_directory("/c", ident)


class _OneImage:
  """A source of one hand-made image."""

  def __init__(self, image):
    self.image = image

  def __getitem__(self, index):
    return {"image": self.image, "label": 0, "id": index}


@pytest.mark.parametrize("size,factor,offset", [(9, 2, 2), (8, 2, 2), (12, 3, 4), (9, 1, 0)])
def test_rded_scores_the_patch_normalised_then_zero_padded(size, factor, offset):
  # LINs-lab/RDED synthesize/utils.py: MultiRandomCrop is RandomResizedCrop(size // factor,
  # ratio (1, 1)) on the image, `normalize` runs on that patch (synthesize/main.py), and `selector`
  # scores pad(patch, size): zeros, top = (size - size // factor) // 2 (the odd pixel below and
  # right). At factor 1 the input is the full-size crop itself.
  image = (np.arange(size * size * 3) * 7 % 256).astype(np.uint8).reshape(size, size, 3)
  config = tiny_config(image_size=size, rded_factor=factor, crop_seed=3)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  example = distill.scoring_example(config, _OneImage(image), np.array([7]),
                                    pipeline.Normalizer(mean, std))
  patch = size // factor
  rows = inference.CropRows(example, slots=5, first_row=0, num_rows=5)
  for slot in range(5):
    scored = rows(slot)["image"]
    assert scored.shape == (size, size, 3)
    # The box of RandomResizedCrop (scale 0.08–1, ratio 1) keyed by (seed, id, slot), cut out
    # and resized bilinearly to size // factor (torchvision's F.resized_crop: crop, then resize).
    spec = crops.CropSpec(output_size=patch, scale=(0.08, 1.0), ratio=(1.0, 1.0), flip=False)
    box = crops.crop_params(3, 7, slot, (size, size), spec)
    top, left, height, width = box.top, box.left, box.height, box.width
    assert height == width and not box.flip
    cut = Image.fromarray(image).crop((left, top, left + width, top + height))
    pixels = np.asarray(cut if cut.size == (patch,
                                            patch) else cut.resize((patch, patch), Image.BILINEAR))
    expected = np.zeros((size, size, 3), np.float32)
    expected[offset:offset + patch, offset:offset
             + patch] = ((pixels.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std))
    np.testing.assert_allclose(scored, expected, rtol=0, atol=1e-6)
    # The stitched patch is the scored one, unpadded.
    np.testing.assert_array_equal(example.raw_crop(0, slot)[0], pixels)


def test_distillation_needs_its_inputs(tmp_path, teacher_dir):
  with pytest.raises(ValueError, match="config.scores_file"):
    plan.train(distill_config(tmp_path, teacher_dir, selection="ca2d"), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="fewer than"):  # 2·2² patches per class from 5 images
    plan.train(distill_config(tmp_path, teacher_dir, rded_candidates_per_class=5, rded_factor=2),
               str(tmp_path / "b"))
  scores_file, _ = _cad_scores(tmp_path, sources.load_source("embedded_mnist", "train"))
  with pytest.raises(ValueError, match="fewer than"):  # CA2D's top 5 by CAD, as RDED's 5
    plan.train(
        distill_config(tmp_path, teacher_dir, selection="ca2d", scores_file=scores_file,
                       rded_candidates_per_class=5, rded_factor=2), str(tmp_path / "c"))
  assert not any((tmp_path / d).exists() for d in "abc")


def test_rded_sets_scored_on_device_crops_equal_the_host_scored_ones(tmp_path, teacher_dir):
  # The candidates on the devices: RDED's scoring crops are made there, normalised and padded as
  # `PaddedNormalizer` does, and the stitched patches read back from the devices. The crops equal
  # PIL's and the normalisation is the host's, so the same crops win and the same PNGs are written
  # (in a directory of their own: the identity records the resampler).
  directories = {}
  for backend in ("host", "device"):
    config = distill_config(tmp_path, teacher_dir, rded_factor=2, crop_backend=backend)
    directories[backend] = plan.distill_set(config, str(tmp_path / backend))
  assert directories["host"] != directories["device"]
  host, device = (_provenance(directories[b]) for b in ("host", "device"))
  assert device["images"] == host["images"]  # every patch's id, slot and teacher CE
  for entry in host["images"]:
    a = np.asarray(Image.open(os.path.join(directories["host"], entry["file"])))
    b = np.asarray(Image.open(os.path.join(directories["device"], entry["file"])))
    np.testing.assert_array_equal(b, a, err_msg=entry["file"])
  assert cache.read_identity(directories["device"])["crop_resampler"] == "device_crops"
