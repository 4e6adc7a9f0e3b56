"""Selectors (random, easiest/hardest, percentile window, CCS, CAD-Prune), compute match, scores."""

import json
import os

import numpy as np
import pytest

from hardlabel_jax import selection


def _labels(per_class=10, classes=3):
  # Interleaved classes: id i has class i % classes, so class membership is not a contiguous block.
  return np.arange(per_class * classes) % classes


# ----------------------------------------------------------------------------------------------
# CAD-Prune compute matching.


@pytest.mark.parametrize(
    "n_full, n_sub, epochs, want",
    [
        (50000, 5000, 300, 30),
        (4000, 100, 150, 4),  # 3.75 rounded up
        (50000, 10, 1, 1),  # 0.0002 → at least one epoch
        (1000, 1000, 2.5, 3),
        (3, 1, 0.9, 1),  # 0.3 → 1
        (10, 3, 10, 3),  # exactly 3: no float round-up to 4
    ])
def test_cad_prune_epochs(n_full, n_sub, epochs, want):
  assert selection.cad_prune_epochs(n_full, n_sub, epochs) == want


@pytest.mark.parametrize("args, match", [
    ((0, 1, 1), "num_examples"),
    ((10, 0, 1), "subset_size"),
    ((10, 1, 0), "downstream_epochs"),
    ((10, 1, -3.0), "downstream_epochs"),
    ((10, 11, 1), "larger than the data set"),
])
def test_cad_prune_epochs_rejects(args, match):
  with pytest.raises(ValueError, match=match):
    selection.cad_prune_epochs(*args)


# ----------------------------------------------------------------------------------------------
# Random, easiest, hardest, percentile window.


def test_select_random_balanced_and_deterministic():
  labels = _labels(per_class=50)
  a = selection.select_random(labels, 7, seed=3)
  np.testing.assert_array_equal(a, selection.select_random(labels, 7, seed=3))
  np.testing.assert_array_equal(a, selection.class_balanced_random(labels, 7, 3))
  assert not np.array_equal(a, selection.select_random(labels, 7, seed=4))
  assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
  np.testing.assert_array_equal(np.bincount(labels[a]), [7, 7, 7])
  flat = selection.select_random(labels, 7, seed=3, class_balanced=False)
  assert flat.size == 21 and np.unique(flat).size == 21


def test_select_easiest_and_hardest_exact_ids():
  labels = _labels()  # class c holds ids c, c+3, ..., c+27
  scores = np.arange(30, dtype=np.float64)
  scores[[4, 7]] = 100.0  # the two hardest of class 1, tied; 4 wins a tie-break over 7
  np.testing.assert_array_equal(selection.select_easiest(scores, labels, 2), [0, 1, 2, 3, 5, 10])
  np.testing.assert_array_equal(selection.select_hardest(scores, labels, 1), [4, 27, 29])
  np.testing.assert_array_equal(selection.select_hardest(scores, labels, 2), [4, 7, 24, 26, 27, 29])
  # Equal scores: the lowest ids of every class.
  np.testing.assert_array_equal(selection.select_hardest(np.zeros(30), labels, 1), [0, 1, 2])
  # Not class-balanced: the 3 hardest overall.
  np.testing.assert_array_equal(selection.select_hardest(scores, labels, 1, class_balanced=False),
                                [4, 7, 29])


def test_infinite_scores_rank_hardest_and_nan_rejected():
  labels = _labels()
  scores = np.zeros(30)
  scores[9] = np.inf  # e.g. a never-learned example under forgetting
  assert 9 in selection.select_hardest(scores, labels, 1)
  assert 9 not in selection.select_easiest(scores, labels, 9)
  scores[3] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    selection.select_hardest(scores, labels, 1)


def test_select_percentile_window():
  labels = np.zeros(10, dtype=np.int64)
  scores = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], dtype=np.float64)  # rank r = id 9 − r
  # [20, 50) of 10 examples: ranks 2, 3, 4 → ids 7, 6, 5.
  np.testing.assert_array_equal(
      selection.select_percentile_window(scores, labels, 3, 20, 50, seed=0), [5, 6, 7])
  two = selection.select_percentile_window(scores, labels, 2, 20, 50, seed=0)
  assert set(two) <= {5, 6, 7} and two.size == 2
  np.testing.assert_array_equal(
      two, selection.select_percentile_window(scores, labels, 2, 20, 50, seed=0))
  with pytest.raises(ValueError, match=r"class 0 has 3 examples in the \[20, 50\) percentile"):
    selection.select_percentile_window(scores, labels, 4, 20, 50, seed=0)
  with pytest.raises(ValueError, match="low < high"):
    selection.select_percentile_window(scores, labels, 1, 50, 50, seed=0)


def test_too_few_candidates_names_the_class():
  labels = np.array([0] * 5 + [1] * 3 + [2] * 5)
  for call in (lambda: selection.select_random(labels, 4, 0),
               lambda: selection.select_hardest(np.zeros(13), labels, 4),
               lambda: selection.select_ccs(np.zeros(13), labels, 4, class_balanced=True),
               lambda: selection.select("cad_prune", labels, 4, scores=np.zeros(13))):
    with pytest.raises(ValueError, match="class 1 has 3 candidates"):
      call()


def test_scores_must_align_with_labels():
  with pytest.raises(ValueError, match="one value per example"):
    selection.select_hardest(np.zeros(5), _labels(), 1)


# ----------------------------------------------------------------------------------------------
# CCS.


def test_ccs_budgets_smallest_stratum_first():
  # Sizes [2, 1, 4, 4], budget 6. Order by size: s1 gets min(1, 6//4) = 1 (5 left), s0 min(2, 5//3)
  # = 1 (4 left), s2 min(4, 4//2) = 2 (2 left), s3 min(4, 2//1) = 2.
  np.testing.assert_array_equal(selection.ccs_budgets(np.array([2, 1, 4, 4]), 6), [1, 1, 2, 2])
  # Empty strata get nothing and do not dilute the share: [5, 1, 2] → 1, then 2, then 7−3 = 4.
  np.testing.assert_array_equal(selection.ccs_budgets(np.array([0, 5, 1, 2]), 7), [0, 4, 1, 2])
  # A budget no stratum can absorb alone spills into the bigger ones.
  np.testing.assert_array_equal(selection.ccs_budgets(np.array([1, 1, 10]), 9), [1, 1, 7])


def test_ccs_strata_equal_width_max_in_last():
  np.testing.assert_array_equal(
      selection.ccs_strata(np.array([0.0, 0.1, 1.0, 2.0, 2.3, 3.0, 3.9, 4.0]), 4),
      [0, 0, 1, 2, 2, 3, 3, 3])


# AUM of one class, ids 0..11. β = 0.1 drops ⌊1.2⌋ = 1 example, the LOWEST AUM (id 0). The rest
# span [0, 4]; 4 strata of width 1: {1, 2} | {3} | {4, 5, 6, 7} | {8, 9, 10, 11}.
_CCS_AUM = np.array([-5.0, 0.0, 0.1, 1.0, 2.0, 2.1, 2.2, 2.3, 3.0, 3.5, 3.9, 4.0])
_CCS_STRATA = [{1, 2}, {3}, {4, 5, 6, 7}, {8, 9, 10, 11}]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_select_ccs_fills_strata_as_specified(seed):
  labels = np.zeros(12, dtype=np.int64)
  got = selection.select_ccs(_CCS_AUM, labels, 6, beta=0.1, num_strata=4, seed=seed)
  counts = [len(set(got) & s) for s in _CCS_STRATA]
  assert counts == [1, 1, 2, 2]
  assert 0 not in got
  np.testing.assert_array_equal(
      got, selection.select_ccs(_CCS_AUM, labels, 6, beta=0.1, num_strata=4, seed=seed))


def test_select_ccs_drops_lowest_aum():
  labels = np.zeros(12, dtype=np.int64)
  np.testing.assert_array_equal(selection.select_ccs(_CCS_AUM, labels, 11, beta=0.1, num_strata=4),
                                np.arange(1, 12))
  with pytest.raises(ValueError, match="keeps 11 examples after dropping"):
    selection.select_ccs(_CCS_AUM, labels, 12, beta=0.1, num_strata=4)
  # Higher-is-harder scores (negated AUM) drop the same example.
  np.testing.assert_array_equal(
      selection.select_ccs(-_CCS_AUM, labels, 11, beta=0.1, num_strata=4, higher_is_harder=True),
      np.arange(1, 12))


def test_select_ccs_class_balanced_with_infinite_scores():
  labels = _labels(per_class=20)
  scores = np.random.default_rng(0).normal(size=60)
  scores[[0, 3]] = np.inf  # forgetting-style never-learned examples of class 0
  got = selection.select_ccs(scores, labels, 5, beta=0.05, num_strata=5, seed=0,
                             higher_is_harder=True, class_balanced=True)
  np.testing.assert_array_equal(np.bincount(labels[got]), [5, 5, 5])
  assert 0 not in got  # ⌊0.05·20⌋ = 1: the first infinite one (lower id on the tie) is dropped


# The official code prunes and stratifies over the whole data set (haizhongzheng/
# Coverage-centric-coreset-selection train.py L135–141: `mislabel_mask` drops int(mis_ratio ·
# total) lowest-AUM examples of the whole set, `stratified_sampling` in core/data/Coreset.py
# L53–109 fills int(coreset_ratio · total) from 50 strata of the survivors). An unbalanced toy set:
# class 0 holds ids 0–5, class 1 ids 6–7; the scores are spaced so that 50 strata put every
# survivor in a stratum of its own, where the allocation (smallest first, ⌊left / strata left⌋)
# takes the highest-AUM strata: the result does not depend on the sampling seed.
_UNBALANCED_LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1])
_UNBALANCED_AUM = np.array([-3.0, 1.0, 2.0, 3.0, 4.0, 5.0, -2.0, 0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_select_ccs_global_and_per_class_scopes(seed):
  # Global (the official default): n = 2 × 2 classes = 4 over the set; β = 0.25 drops ⌊0.25·8⌋ = 2,
  # ids 0 and 6; the survivors 7, 1, 2, 3, 4, 5 are singleton strata and the four highest fill it,
  # all from class 0.
  global_ids = selection.select_ccs(_UNBALANCED_AUM, _UNBALANCED_LABELS, 2, beta=0.25, seed=seed)
  np.testing.assert_array_equal(global_ids, [2, 3, 4, 5])
  # Per class: class 0 drops ⌊0.25·6⌋ = 1 (id 0) and takes its two highest, 4 and 5; class 1
  # drops ⌊0.25·2⌋ = 0 and takes both of its examples, 6 included, which the global cut removed.
  per_class = selection.select_ccs(_UNBALANCED_AUM, _UNBALANCED_LABELS, 2, beta=0.25, seed=seed,
                                   class_balanced=True)
  np.testing.assert_array_equal(per_class, [4, 5, 6, 7])
  # The dispatcher: `ccs_scope` 'global' by default, 'per_class' on request.
  np.testing.assert_array_equal(
      selection.select("ccs", _UNBALANCED_LABELS, 2, scores=_UNBALANCED_AUM, beta=0.25, seed=seed),
      global_ids)
  np.testing.assert_array_equal(
      selection.select("ccs", _UNBALANCED_LABELS, 2, scores=_UNBALANCED_AUM, beta=0.25, seed=seed,
                       ccs_scope="per_class"), per_class)
  with pytest.raises(ValueError, match="unknown ccs_scope"):
    selection.select("ccs", _UNBALANCED_LABELS, 2, scores=_UNBALANCED_AUM, ccs_scope="class")


@pytest.mark.parametrize(
    "rate, dataset, beta",
    [
        # CIFAR-10, CCS paper Appendix B (the official README's 90% command: --mis-ratio 0.3).
        (0.3, "tfds:cifar10", 0.0),
        (0.5, "tfds:cifar10", 0.0),
        (0.7, "tfds:cifar10", 0.1),
        (0.8, "tfds:cifar10", 0.1),
        (0.9, "tfds:cifar10", 0.3),
        (1 - 5000 / 50000, "tfds:cifar10", 0.3),  # 90% in floating point
        (0.85, "tfds:cifar10", 0.1),  # between rates: the lower one's β
        (0.998, "tfds:cifar10", 0.3),  # IPC 10 of CIFAR-10: beyond the table, its 90% β
        (0.2, "tfds:cifar10", 0.0),
        # ImageNet-1K, the official README's commands: 80% → 0.2, 90% → 0.3.
        (0.8, "tfds:imagenet2012", 0.2),
        (0.992, "tfds:imagenet2012", 0.3),
        (0.7, "tfds:imagenet2012", 0.1),
        (0.8, "tfds:tiny_imagenet", 0.1),  # not ImageNet-1K: the CIFAR-10 row
        (0.8, "embedded_mnist", 0.1),
    ])
def test_ccs_paper_beta_table(rate, dataset, beta):
  assert selection.ccs_paper_beta(rate, dataset) == beta


def test_select_ccs_paper_beta_follows_the_pruning_rate():
  # 20 examples of one class, 2 kept: a 90% pruning rate, β = 0.3 drops the 6 lowest.
  labels = np.zeros(20, dtype=np.int64)
  scores = np.arange(20, dtype=np.float64)
  for seed in range(3):
    got = selection.select_ccs(scores, labels, 2, seed=seed)
    np.testing.assert_array_equal(got, selection.select_ccs(scores, labels, 2, beta=0.3, seed=seed))
  with pytest.raises(ValueError, match="keeps 14 examples after dropping the beta=0.3"):
    selection.select_ccs(scores, labels, 15, beta=0.3)
  # No pruning: β = 0, nothing dropped before stratifying.
  np.testing.assert_array_equal(selection.select_ccs(scores, labels, 20), np.arange(20))
  with pytest.raises(ValueError, match="pruning_rate must lie"):
    selection.ccs_paper_beta(1.0)
  with pytest.raises(ValueError, match="beta must lie"):
    selection.select_ccs(scores, labels, 2, beta=-0.5)


# ----------------------------------------------------------------------------------------------
# Dispatcher.


def test_select_dispatch():
  labels = _labels()
  scores = np.arange(30, dtype=np.float64)
  np.testing.assert_array_equal(selection.select("el2n_easy", labels, 2, scores=scores),
                                selection.select_easiest(scores, labels, 2))
  np.testing.assert_array_equal(selection.select("el2n_hard", labels, 2, scores=scores),
                                [24, 25, 26, 27, 28, 29])
  np.testing.assert_array_equal(selection.select("cad_prune", labels, 1, scores=scores),
                                [27, 28, 29])
  np.testing.assert_array_equal(
      selection.select("cad_prune", labels, 1, scores=scores, direction="easiest"), [0, 1, 2])
  np.testing.assert_array_equal(selection.select("random", labels, 2, seed=5),
                                selection.select_random(labels, 2, 5))
  np.testing.assert_array_equal(selection.select("ccs", labels, 2, scores=scores, seed=1),
                                selection.select_ccs(scores, labels, 2, seed=1))


def test_select_errors():
  labels = _labels()
  with pytest.raises(ValueError, match="unknown selection method 'bogus'.*el2n_hard.*cad_prune"):
    selection.select("bogus", labels, 1)
  for name in ("rded", "ca2d"):
    with pytest.raises(ValueError, match="built by the distillation task"):
      selection.select(name, labels, 1)
  with pytest.raises(ValueError, match="needs scores"):
    selection.select("ccs", labels, 1)
  with pytest.raises(ValueError, match="direction"):
    selection.select("cad_prune", labels, 1, scores=np.zeros(30), direction="middle")


# ----------------------------------------------------------------------------------------------
# Score files.


def _header(fingerprint="abc123"):
  return {
      "dataset": "cifar10",
      "fingerprint": fingerprint,
      "model": "resnet18_cifar",
      "epochs": 4,
      "seed": 0
  }


def test_score_file_round_trip(tmp_path):
  path = str(tmp_path / "sub" / "scores.npz")
  ids = np.arange(5)
  scores = {
      "el2n": np.linspace(0, 1, 5).astype(np.float32),
      "forgetting": np.array([0, 1, np.inf, 2, 0], np.float32)
  }
  selection.save_scores(path, scores, ids, _header())
  loaded = selection.load_scores(path, expected_fingerprint="abc123")
  assert loaded.header == _header()
  np.testing.assert_array_equal(loaded.ids, ids)
  assert loaded.ids.dtype == np.int64
  assert set(loaded.scores) == {"el2n", "forgetting"}
  for name, values in scores.items():
    np.testing.assert_array_equal(loaded.scores[name], values)
  assert os.listdir(tmp_path / "sub") == ["scores.npz"]  # no temporary file left behind
  with np.load(path) as data:  # the header is JSON inside the npz
    assert json.loads(str(data["header"]))["model"] == "resnet18_cifar"


def test_score_file_of_another_dataset_rejected(tmp_path):
  path = str(tmp_path / "scores.npz")
  selection.save_scores(path, {"aum": np.zeros(3)}, np.arange(3), _header("abc123"))
  with pytest.raises(ValueError, match="fingerprint 'abc123'.*fingerprint is 'zzz999'"):
    selection.load_scores(path, expected_fingerprint="zzz999")


def test_save_scores_validates(tmp_path):
  path = str(tmp_path / "scores.npz")
  with pytest.raises(ValueError, match="one per id"):
    selection.save_scores(path, {"aum": np.zeros(4)}, np.arange(3), _header())
  with pytest.raises(ValueError, match="lacks"):
    selection.save_scores(path, {"aum": np.zeros(3)}, np.arange(3), {"dataset": "cifar10"})
  with pytest.raises(ValueError, match="duplicates"):
    selection.save_scores(path, {"aum": np.zeros(3)}, np.array([0, 0, 1]), _header())
  assert not os.path.exists(path)
