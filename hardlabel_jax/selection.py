"""Training pools as lists of example ids: random subsets, id files and score-based selectors.

Every selection method (random, easiest/hardest by a difficulty score, percentile windows, CCS,
CAD-Prune; DESIGN §7) produces the same thing, a sorted int64 array of ids, so the trainer never
needs to know how a pool was chosen. Scores come from `hardlabel_jax.difficulty` and are stored
with `save_scores` / `load_scores`.
"""

from __future__ import annotations

import fractions
import json
import math
import os
import tempfile
from typing import Any, NamedTuple

import numpy as np


def class_balanced_random(labels: np.ndarray, images_per_class: int, seed: int) -> np.ndarray:
  """`images_per_class` random ids from every class, sorted; deterministic for a seed."""
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  if images_per_class <= 0:
    raise ValueError(f"images_per_class must be positive, got {images_per_class}")
  smallest = counts.min()
  if images_per_class > smallest:
    raise ValueError(f"images_per_class={images_per_class} is larger than the smallest class "
                     f"(class {classes[counts.argmin()]} has {smallest} examples)")
  rng = np.random.default_rng(seed)
  chosen = [
      rng.choice(np.flatnonzero(labels == c), images_per_class, replace=False) for c in classes
  ]
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_ids(path: str) -> np.ndarray:
  """Reads example ids from a .npy file or a JSON list (or {'ids': [...]})."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"subset id file {path} does not exist")
  if path.endswith(".npy"):
    ids = np.load(path)
  else:
    with open(path) as f:
      payload = json.load(f)
    ids = payload["ids"] if isinstance(payload, dict) else payload
  return np.asarray(ids, dtype=np.int64)


def training_pool(labels: np.ndarray, *, images_per_class: int, seed: int,
                  ids_file: str = "") -> np.ndarray:
  """The ids a run trains on: an id file, a class-balanced subset, or the whole split."""
  if ids_file:
    ids = load_ids(ids_file)
  elif images_per_class > 0:
    ids = class_balanced_random(labels, images_per_class, seed)
  else:
    ids = np.arange(len(labels), dtype=np.int64)
  if ids.size == 0:
    raise ValueError("the training pool is empty")
  if ids.min() < 0 or ids.max() >= len(labels):
    raise ValueError(f"subset ids must lie in [0, {len(labels)})")
  if np.unique(ids).size != ids.size:
    raise ValueError("subset ids contain duplicates")
  return ids


# ----------------------------------------------------------------------------------------------
# Score-based selectors (DESIGN §7). Scores are one value per example of the split (index = id).
# Unless told otherwise a score means "higher = harder"; AUM (CCS) is the exception.

SELECTORS: tuple[str, ...] = ("random", "el2n_easy", "el2n_hard", "ccs", "cad_prune", "el2n_window",
                              "cad_window")
# CCS prunes and stratifies over the whole data set (the official code) or within each class.
CCS_SCOPES: tuple[str, ...] = ("global", "per_class")
# `beta` meaning "the hard cutoff rate the CCS paper uses at this pruning rate" (`ccs_paper_beta`).
CCS_PAPER_BETA = -1.0
# CCS's hard cutoff rate β (the fraction of lowest-AUM examples pruned before stratifying) at each
# pruning rate, as (pruning rate, β) rows. Sources: CIFAR-10, Zheng et al. (ICLR 2023, arXiv
# 2210.15809) Appendix B: 30% and 50% → 0, 70% and 80% → 0.1, 90% → 0.3 (the official README's
# CIFAR-10 command at 90% passes --mis-ratio 0.3). ImageNet-1K: the official README's commands,
# 80% → --mis-ratio 0.2 and 90% → 0.3; below 80% (no published command) the CIFAR-10 row. Every
# other data set (CIFAR-100 included, whose row could not be checked here) uses the CIFAR-10 row.
_CCS_BETA_ROWS = {
    "cifar10": ((0.3, 0.0), (0.5, 0.0), (0.7, 0.1), (0.8, 0.1), (0.9, 0.3)),
    "imagenet": ((0.3, 0.0), (0.5, 0.0), (0.7, 0.1), (0.8, 0.2), (0.9, 0.3)),
}
# Pools built from real images by the distillation task; `select` names them in its error.
_DISTILLATION_METHODS: tuple[str, ...] = ("rded", "ca2d")
CAD_DIRECTIONS: tuple[str, ...] = ("hardest", "easiest")

# The CAD scores a score file holds, by the per-epoch trajectory they are computed on
# (config_schema.CAD_SIGNALS): `cad` is the paper's p(y|x), `cad_el2n` the replication's EL2N.
CAD_SCORES = {"true_prob": "cad", "el2n": "cad_el2n"}
CAD_EPOCHS_ROUNDINGS = {"ceil": math.ceil, "round": round, "floor": math.floor}


def cad_prune_epochs_exact(num_examples: int, subset_size: int,
                           downstream_epochs: float) -> fractions.Fraction:
  """K·N = E_down·n solved exactly: E_down·n/N as a fraction (DESIGN §7)."""
  for name, value in (("num_examples", num_examples), ("subset_size", subset_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  if (isinstance(downstream_epochs, bool) or not isinstance(downstream_epochs,
                                                            (int, float, np.number))
      or not math.isfinite(downstream_epochs) or downstream_epochs <= 0):
    raise ValueError(
        f"downstream_epochs must be a positive finite number, got {downstream_epochs!r}")
  if subset_size > num_examples:
    raise ValueError(f"subset_size {subset_size} is larger than the data set ({num_examples})")
  # Exact rational arithmetic: 300·5000/50000 must give 30, not 30.000000000000004 → 31.
  return fractions.Fraction(repr(float(downstream_epochs))) * int(subset_size) / int(num_examples)


def cad_prune_epochs(num_examples: int, subset_size: int, downstream_epochs: float,
                     rounding: str = "ceil") -> int:
  """Scoring-run length K with K·N = E_down·n (compute-matched), by `rounding`, at least 1.

  `rounding` (CAD_EPOCHS_ROUNDINGS) applies only when E_down·n/N is not whole: 'ceil' (the
  nearest whole epoch at or above the matched compute), 'round' (half to even) or 'floor'.
  """
  if rounding not in CAD_EPOCHS_ROUNDINGS:
    raise ValueError(f"rounding {rounding!r} is not one of {', '.join(CAD_EPOCHS_ROUNDINGS)}")
  epochs = cad_prune_epochs_exact(num_examples, subset_size, downstream_epochs)
  return max(1, int(CAD_EPOCHS_ROUNDINGS[rounding](epochs)))


def _check_labels_1d(labels: np.ndarray) -> np.ndarray:
  """Integer labels `[N]` as a NumPy array."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if labels.size == 0:
    raise ValueError("labels are empty")
  return labels


def _check_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Float scores `[N]` aligned with the labels; ±inf allowed (forgetting), NaN refused."""
  scores = np.asarray(scores, dtype=np.float64)
  if scores.shape != labels.shape:
    raise ValueError(f"scores must have one value per example, shape {labels.shape}, "
                     f"got {scores.shape}")
  if np.isnan(scores).any():
    # A NaN is a missing or broken score (e.g. an out-of-range label), not a difficulty.
    raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN values, e.g. at ids "
                     f"{np.flatnonzero(np.isnan(scores))[:5].tolist()}")
  return scores


def _groups(labels: np.ndarray, images_per_class: int,
            class_balanced: bool) -> list[tuple[np.ndarray, int, str]]:
  """(candidate ids, budget, description) per class, or one group of the whole split."""
  if isinstance(images_per_class, bool) or not isinstance(images_per_class, (int, np.integer)):
    raise ValueError(f"images_per_class must be an int, got {images_per_class!r}")
  if images_per_class <= 0:
    raise ValueError(f"images_per_class must be positive, got {images_per_class}")
  classes = np.unique(labels)
  if class_balanced:
    groups = [(np.flatnonzero(labels == c), int(images_per_class), f"class {c}") for c in classes]
  else:
    groups = [(np.arange(labels.size), int(images_per_class) * classes.size, "the data set")]
  for ids, budget, what in groups:
    if ids.size < budget:
      raise ValueError(f"{what} has {ids.size} candidates, fewer than the {budget} requested "
                       f"(images_per_class={images_per_class})")
  return groups


def _ranked(ids: np.ndarray, scores: np.ndarray, descending: bool) -> np.ndarray:
  """`ids` ordered by score, ascending or descending, ties broken by the lower id."""
  key = -scores[ids] if descending else scores[ids]
  return ids[np.lexsort((ids, key))]


def _finish(chosen: list[np.ndarray]) -> np.ndarray:
  """Sorted int64 ids."""
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def select_random(labels: np.ndarray, images_per_class: int, seed: int, *,
                  class_balanced: bool = True) -> np.ndarray:
  """Random ids, `images_per_class` per class (or that many × classes overall); sorted."""
  labels = _check_labels_1d(labels)
  if class_balanced:
    _groups(labels, images_per_class, True)  # uniform error messages
    return class_balanced_random(labels, images_per_class, seed)
  rng = np.random.default_rng(seed)
  return _finish([
      rng.choice(ids, budget, replace=False)
      for ids, budget, _ in _groups(labels, images_per_class, False)
  ])


def _select_ranked(scores: np.ndarray, labels: np.ndarray, images_per_class: int, descending: bool,
                   class_balanced: bool) -> np.ndarray:
  """Top of each group by score."""
  labels = _check_labels_1d(labels)
  scores = _check_scores(scores, labels)
  return _finish([
      _ranked(ids, scores, descending)[:budget]
      for ids, budget, _ in _groups(labels, images_per_class, class_balanced)
  ])


def select_easiest(scores: np.ndarray, labels: np.ndarray, images_per_class: int, *,
                   class_balanced: bool = True) -> np.ndarray:
  """The lowest-score ids of each class (ties → lower id); sorted."""
  return _select_ranked(scores, labels, images_per_class, False, class_balanced)


def select_hardest(scores: np.ndarray, labels: np.ndarray, images_per_class: int, *,
                   class_balanced: bool = True) -> np.ndarray:
  """The highest-score ids of each class (ties → lower id); sorted."""
  return _select_ranked(scores, labels, images_per_class, True, class_balanced)


def select_percentile_window(scores: np.ndarray, labels: np.ndarray, images_per_class: int,
                             low: float, high: float, seed: int, *,
                             class_balanced: bool = True) -> np.ndarray:
  """Random ids from each class's [low, high) percentile band of scores (0–100); sorted.

  Percentiles are taken on ranks (ascending score, ties → lower id), so a class of n examples
  contributes those of rank r with low ≤ 100·r/n < high, however many scores tie.
  """
  if not (0 <= low < high <= 100):
    raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low} high={high}")
  labels = _check_labels_1d(labels)
  scores = _check_scores(scores, labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for ids, budget, what in _groups(labels, images_per_class, class_balanced):
    ranked = _ranked(ids, scores, False)
    # Integer rank bounds: r >= low·n/100 ⇔ r >= ceil(low·n/100), same for high.
    lo = math.ceil(fractions.Fraction(repr(float(low))) * ranked.size / 100)
    hi = math.ceil(fractions.Fraction(repr(float(high))) * ranked.size / 100)
    band = ranked[lo:hi]
    if band.size < budget:
      raise ValueError(f"{what} has {band.size} examples in the [{low}, {high}) percentile band, "
                       f"fewer than the {budget} requested")
    chosen.append(rng.choice(band, budget, replace=False))
  return _finish(chosen)


def select_rank_window(scores: np.ndarray, labels: np.ndarray, images_per_class: int,
                       position: float, *, class_balanced: bool = True) -> np.ndarray:
  """A window of consecutive ranks per class: the offset scan of "EL2N-Best"; sorted ids.

  Each group's examples ranked by ascending score (ties → lower id); the window holds its
  `images_per_class` (per group) examples starting at rank ⌊position · (n − k) + ½⌋, so
  `position` 0 is the lowest scores, 1 the highest (`select_hardest` when no scores tie) and the
  same position is the same relative place in the ranking at every subset size.
  """
  if not 0 <= position <= 1:
    raise ValueError(f"a window position must lie in [0, 1] (0: lowest scores), got {position}")
  labels = _check_labels_1d(labels)
  scores = _check_scores(scores, labels)
  chosen = []
  for ids, budget, _ in _groups(labels, images_per_class, class_balanced):
    ranked = _ranked(ids, scores, False)
    start = math.floor(position * (ranked.size - budget) + 0.5)  # half up, not to even
    chosen.append(ranked[start:start + budget])
  return _finish(chosen)


def ccs_strata(scores: np.ndarray, num_strata: int) -> np.ndarray:
  """Equal-width stratum index in [0, num_strata) of each finite score; the max goes to the last."""
  lo, hi = scores.min(), scores.max()
  if hi == lo:
    return np.zeros(scores.shape, dtype=np.int64)
  index = np.floor((scores - lo) / ((hi - lo) / num_strata)).astype(np.int64)
  return np.clip(index, 0, num_strata - 1)


def ccs_budgets(strata_sizes: np.ndarray, budget: int) -> np.ndarray:
  """CCS Algorithm 1's allocation: smallest stratum first, each min(size, ⌊left / strata left⌋)."""
  sizes = np.asarray(strata_sizes, dtype=np.int64)
  taken = np.zeros_like(sizes)
  nonempty = np.flatnonzero(sizes > 0)
  # Stable sort: equal-size strata are served in stratum order, so the result is deterministic.
  order = nonempty[np.argsort(sizes[nonempty], kind="stable")]
  left = int(budget)
  for i, stratum in enumerate(order):
    taken[stratum] = min(int(sizes[stratum]), left // (order.size - i))
    left -= int(taken[stratum])
  return taken


def ccs_paper_beta(pruning_rate: float, dataset: str = "") -> float:
  """The CCS paper's hard cutoff rate β at a pruning rate 1 − n/N (`_CCS_BETA_ROWS`).

  A rate between two tabulated ones takes the lower one's β; a rate above 90% (every images-per-
  class setting of dataset distillation) the 90% β, one below 30% none. `dataset` names the row:
  ImageNet-1K's for a name containing 'imagenet' (not Tiny-ImageNet), else CIFAR-10's.
  """
  if not 0 <= pruning_rate < 1:
    raise ValueError(f"pruning_rate must lie in [0, 1), got {pruning_rate}")
  name = dataset.lower()
  rows = _CCS_BETA_ROWS["imagenet" if "imagenet" in name and "tiny" not in name else "cifar10"]
  beta = 0.0
  for rate, value in rows:
    if pruning_rate >= rate - 1e-9:  # 1 − 5000/50000 must count as 90%
      beta = value
  return beta


def select_ccs(aum_scores: np.ndarray, labels: np.ndarray, images_per_class: int,
               beta: float = CCS_PAPER_BETA, num_strata: int = 50, seed: int = 0, *,
               higher_is_harder: bool = False, class_balanced: bool = False,
               dataset: str = "") -> np.ndarray:
  """Coverage-centric coreset selection (Zheng et al. 2023, Alg. 1); sorted ids.

  As the official code (haizhongzheng/Coverage-centric-coreset-selection, train.py L135–141,
  core/data/Coreset.py `mislabel_mask` and `stratified_sampling`), over the whole data set:
  drops the ⌊β·N⌋ hardest examples — by AUM the LOWEST scores (set `higher_is_harder=True` for
  scores such as forgetting or EL2N) — splits the remaining score range into `num_strata`
  equal-width strata and fills the budget of `images_per_class` × classes smallest stratum first
  (`ccs_budgets`), sampling at random inside each stratum. `class_balanced=True` does all of it
  within each class instead, `images_per_class` from each. `beta=CCS_PAPER_BETA` takes the
  paper's β at the pruning rate 1 − n/N (`ccs_paper_beta` for `dataset`). Infinite scores sort as
  the extreme they are, so the pruning step removes them first; any that survive it are clipped
  to the most extreme finite survivor and land in the outermost stratum.
  """
  if beta != CCS_PAPER_BETA and not 0 <= beta < 1:
    raise ValueError(f"beta must lie in [0, 1) (or be CCS_PAPER_BETA={CCS_PAPER_BETA}), got {beta}")
  num_strata = int(num_strata)
  if num_strata < 1:
    raise ValueError(f"num_strata must be >= 1, got {num_strata}")
  labels = _check_labels_1d(labels)
  scores = _check_scores(aum_scores, labels)
  if beta == CCS_PAPER_BETA:
    subset = int(images_per_class) * np.unique(labels).size
    beta = ccs_paper_beta(max(0.0, 1.0 - subset / labels.size), dataset)
  rng = np.random.default_rng(seed)
  chosen = []
  for ids, budget, what in _groups(labels, images_per_class, class_balanced):
    kept = _ranked(ids, scores, descending=higher_is_harder)[int(beta * ids.size):]
    if kept.size < budget:
      raise ValueError(f"{what} keeps {kept.size} examples after dropping the beta={beta} "
                       f"hardest, fewer than the {budget} requested")
    kept_scores = scores[kept]
    finite = np.isfinite(kept_scores)
    if finite.any():
      kept_scores = np.clip(kept_scores, kept_scores[finite].min(), kept_scores[finite].max())
    else:
      kept_scores = np.zeros_like(kept_scores)
    strata = ccs_strata(kept_scores, num_strata)
    taken = ccs_budgets(np.bincount(strata, minlength=num_strata), budget)
    for stratum in np.flatnonzero(taken):
      chosen.append(rng.choice(kept[strata == stratum], taken[stratum], replace=False))
  return _finish(chosen)


def select(method: str, labels: np.ndarray, images_per_class: int, *,
           scores: np.ndarray | None = None, seed: int = 0, beta: float = CCS_PAPER_BETA,
           num_strata: int = 50, direction: str = "hardest", class_balanced: bool = True,
           ccs_scope: str = "global", dataset: str = "", position: float = 1.0) -> np.ndarray:
  """Config name → sorted ids. `scores`: EL2N for el2n_*, AUM for ccs, CAD for cad_*.

  `position` places the rank window of el2n_window / cad_window (`select_rank_window`).

  `class_balanced` applies to every method but CCS, whose `ccs_scope` says whether it selects over
  the whole set ('global', the official code) or within each class ('per_class').
  """
  if method in _DISTILLATION_METHODS:
    raise ValueError(f"{method!r} is built by the distillation task (crops of real images), "
                     f"not a selector; valid selectors: {', '.join(SELECTORS)}")
  if method not in SELECTORS:
    raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(SELECTORS)}")
  if method == "random":
    return select_random(labels, images_per_class, seed, class_balanced=class_balanced)
  if scores is None:
    raise ValueError(f"selection method {method!r} needs scores")
  if method == "el2n_easy":
    return select_easiest(scores, labels, images_per_class, class_balanced=class_balanced)
  if method == "el2n_hard":
    return select_hardest(scores, labels, images_per_class, class_balanced=class_balanced)
  if method in ("el2n_window", "cad_window"):
    return select_rank_window(scores, labels, images_per_class, position,
                              class_balanced=class_balanced)
  if method == "ccs":
    if ccs_scope not in CCS_SCOPES:
      raise ValueError(f"unknown ccs_scope {ccs_scope!r}; valid: {', '.join(CCS_SCOPES)}")
    return select_ccs(scores, labels, images_per_class, beta, num_strata, seed,
                      class_balanced=ccs_scope == "per_class", dataset=dataset)
  if direction not in CAD_DIRECTIONS:
    raise ValueError(f"unknown cad_prune direction {direction!r}; valid: {CAD_DIRECTIONS}")
  # The paper keeps the highest-CAD (most uncertain in the scoring run's last windows) examples.
  pick = select_hardest if direction == "hardest" else select_easiest
  return pick(scores, labels, images_per_class, class_balanced=class_balanced)


# ----------------------------------------------------------------------------------------------
# Score files: one .npz with `ids`, `score__<name>` arrays and a JSON `header`.

_SCORE_PREFIX = "score__"
REQUIRED_HEADER_KEYS: tuple[str, ...] = ("dataset", "fingerprint")


class ScoreFile(NamedTuple):
  """A loaded score file: name → `[n]` scores, the `[n]` ids they belong to, the header."""

  scores: dict[str, np.ndarray]
  ids: np.ndarray
  header: dict[str, Any]


def save_scores(path: str, scores: dict[str, np.ndarray], ids: np.ndarray,
                header: dict[str, Any]) -> None:
  """Atomically writes scores (one value per id) and a JSON header to an .npz file.

  The header must name the data set and its fingerprint; the scoring run's model, epochs and
  seed belong there too.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
  if np.unique(ids).size != ids.size:
    raise ValueError("ids contain duplicates")
  if not scores:
    raise ValueError("no scores to save")
  arrays = {"ids": ids.astype(np.int64)}
  for name, values in scores.items():
    if not isinstance(name, str) or not name.isidentifier():
      raise ValueError(f"score names must be identifiers, got {name!r}")
    values = np.asarray(values)
    if values.shape != ids.shape:
      raise ValueError(
          f"score {name!r} has shape {values.shape}, expected {ids.shape} (one per id)")
    arrays[_SCORE_PREFIX + name] = values
  missing = [k for k in REQUIRED_HEADER_KEYS if k not in header]
  if missing:
    raise ValueError(f"score file header lacks {missing}")
  try:
    arrays["header"] = np.asarray(json.dumps(header, sort_keys=True))
  except TypeError as e:
    raise ValueError(f"score file header must be JSON-serialisable: {e}") from e
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Write beside the target and rename: a reader never sees a half-written file.
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".scores-", suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_scores(path: str, expected_fingerprint: str | None = None) -> ScoreFile:
  """Reads a `save_scores` file; refuses one made on another data set fingerprint."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"score file {path} does not exist")
  with np.load(path, allow_pickle=False) as data:
    if "header" not in data or "ids" not in data:
      raise ValueError(f"{path} is not a score file (no header/ids)")
    header = json.loads(str(data["header"]))
    ids = data["ids"].astype(np.int64)
    scores = {k[len(_SCORE_PREFIX):]: data[k] for k in data.files if k.startswith(_SCORE_PREFIX)}
  if expected_fingerprint is not None and header.get("fingerprint") != expected_fingerprint:
    raise ValueError(
        f"score file {path} was computed on data set {header.get('dataset')!r} with fingerprint "
        f"{header.get('fingerprint')!r}, but this run's data set fingerprint is "
        f"{expected_fingerprint!r}")
  return ScoreFile(scores, ids, header)
