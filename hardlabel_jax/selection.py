"""Training pools as lists of example ids: class-balanced random subsets and id files.

Later selection methods (difficulty scores, CAD-Prune, coresets) produce the same thing, a sorted
int64 array of ids, so the trainer never needs to know how a pool was chosen.
"""

from __future__ import annotations

import json
import os

import numpy as np


def class_balanced_random(labels: np.ndarray, images_per_class: int, seed: int) -> np.ndarray:
  """`images_per_class` random ids from every class, sorted; deterministic for a seed."""
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  if images_per_class <= 0:
    raise ValueError(f"images_per_class must be positive, got {images_per_class}")
  smallest = counts.min()
  if images_per_class > smallest:
    raise ValueError(
        f"images_per_class={images_per_class} is larger than the smallest class "
        f"(class {classes[counts.argmin()]} has {smallest} examples)")
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == c), images_per_class, replace=False)
            for c in classes]
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
