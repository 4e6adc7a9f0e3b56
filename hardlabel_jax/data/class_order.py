"""How an image folder's class directories map to label ids (`config.class_order`).

Rules:
  ''            the directory names sorted, label = position (no check against the test set)
  'index'       the last run of digits in each name is its label (new000 -> 0, class_00012 -> 12)
  'test_names'  the names are the test set's class names (ImageNet synsets, '0'..'9' for MNIST)
  anything else a text file of directory names in label order, one a line (blank lines and
                lines starting with '#' ignored; surrounding whitespace stripped)

Every rule but '' must map the directories one-to-one onto the test set's classes: a directory
that maps nowhere or to a taken label, or a class no directory maps to, is a DataSourceError
naming them, raised before any image is read. A mismatched class order silently mislabels every
image, so it must fail loudly instead.
"""

from __future__ import annotations

import collections
import re
from typing import Sequence

from hardlabel_jax.data.errors import DataSourceError

SORTED = ""
INDEX = "index"
TEST_NAMES = "test_names"
_SHOWN = 5  # names quoted in an error message before "and N more"
_DIGITS = re.compile(r"\d+")


def _names(items: Sequence[object]) -> str:
  """The first few items for an error message."""
  items = list(items)
  shown = ", ".join(repr(i) for i in items[:_SHOWN])
  return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def describe(rule: str) -> str:
  """The rule as named in messages: `class_order='index'` or `class_order file <path>`."""
  if rule in (SORTED, INDEX, TEST_NAMES):
    return f"class_order={rule!r}"
  return f"class_order file {rule}"


def folder_index(name: str) -> int | None:
  """The last run of digits in `name` as an int (`new000` -> 0, `c7_v12` -> 12), None if none."""
  runs = _DIGITS.findall(name)
  return int(runs[-1]) if runs else None


def read_order_file(path: str) -> tuple[str, ...]:
  """Directory names in label order from a class-order file; duplicates are an error."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise DataSourceError(
        f"class_order={path!r} is neither '', 'index', 'test_names' nor a readable file of "
        f"folder names in label order: {e}") from e
  names = tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
  if not names:
    raise DataSourceError(f"{describe(path)} lists no folder names")
  repeated = [n for n, count in collections.Counter(names).items() if count > 1]
  if repeated:
    raise DataSourceError(f"{describe(path)} lists folders {_names(repeated)} more than once")
  return names


def _check(rule: str, label_of: dict[str, int], unmapped: Sequence[str], num_classes: int,
           reference_classes: Sequence[str] | None) -> None:
  """Raises unless `label_of` is a bijection from all folders onto range(num_classes)."""
  problems = []
  if unmapped:
    problems.append(f"folders {_names(sorted(unmapped))} map to no class")
  outside = sorted((n for n, label in label_of.items() if not 0 <= label < num_classes),
                   key=label_of.__getitem__)
  if outside:
    labels = sorted({label_of[n] for n in outside})
    problems.append(f"folders {_names(outside)} map to labels {_names(labels)}, outside "
                    f"0..{num_classes - 1}")
  by_label = collections.defaultdict(list)
  for name, label in label_of.items():
    by_label[label].append(name)
  shared = [sorted(names) for _, names in sorted(by_label.items()) if len(names) > 1]
  if shared:
    problems.append("folders share a label: "
                    + "; ".join(" and ".join(map(repr, group)) for group in shared[:_SHOWN]))
  missing = [c for c in range(num_classes) if c not in by_label]
  if missing:
    named = [reference_classes[c] for c in missing] if reference_classes else missing
    problems.append(f"classes {_names(named)} have no folder with images")
  if problems:
    folders = len(label_of) + len(unmapped)
    raise DataSourceError(
        f"{describe(rule)}: {folders} class folders do not map one-to-one onto the test set's "
        f"{num_classes} classes: " + "; ".join(problems))


def folder_labels(rule: str, folders: Sequence[str],
                  reference_classes: Sequence[str] | None) -> dict[str, int]:
  """Label id of every folder under `rule`, checked to cover `reference_classes` exactly.

  `reference_classes` are the test set's class names in label order. None means the folders are
  their own test set (an image folder's own test split): 'index' then needs labels 0..n-1 for n
  folders, a file needs exactly the folders it lists, and 'test_names' is an error.
  """
  folders = list(folders)
  if rule == SORTED:
    return {name: i for i, name in enumerate(sorted(folders))}
  reference = tuple(reference_classes) if reference_classes is not None else None
  unmapped: list[str] = []
  label_of: dict[str, int] = {}
  if rule == INDEX:
    for name in folders:
      index = folder_index(name)
      if index is None:
        unmapped.append(name)
      else:
        label_of[name] = index
    num_classes = len(reference) if reference is not None else len(folders)
  elif rule == TEST_NAMES:
    if reference is None:
      raise DataSourceError(f"{describe(rule)} needs a test set of other data whose class names "
                            "the folders are named by; this folder is its own test set")
    index_of = {name: i for i, name in enumerate(reference)}
    for name in folders:
      if name in index_of:
        label_of[name] = index_of[name]
      else:
        unmapped.append(name)
    num_classes = len(reference)
  else:
    order = read_order_file(rule)
    problems = []
    if reference is not None and len(order) != len(reference):
      problems.append(f"it lists {len(order)} folders for the test set's {len(reference)} classes")
    present = set(folders)
    absent = [name for name in order if name not in present]
    if absent:
      problems.append(f"it names folders {_names(absent)} that do not exist or hold no images")
    unlisted = sorted(present - set(order))
    if unlisted:
      problems.append(f"folders {_names(unlisted)} are not listed")
    if problems:
      raise DataSourceError(f"{describe(rule)}: " + "; ".join(problems))
    label_of = {name: i for i, name in enumerate(order)}
    num_classes = len(order)
  _check(rule, label_of, unmapped, num_classes, reference)
  return label_of


def label_order(rule: str, folders: Sequence[str],
                reference_classes: Sequence[str] | None) -> tuple[str, ...]:
  """The folder names in label order (position = label id) under `rule` (see folder_labels)."""
  label_of = folder_labels(rule, folders, reference_classes)
  return tuple(sorted(label_of, key=label_of.__getitem__))
