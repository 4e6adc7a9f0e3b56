"""The error every data-source loader raises for a source it cannot serve, and its label check."""

import numpy as np


class DataSourceError(ValueError):
  """A data source is unknown, not prepared, or malformed; the message says how to fix it."""


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """A split must hold examples, each labelled in 0..num_classes-1; `where` names the split."""
  if not labels.size:
    raise DataSourceError(f"{where} is empty: it has no examples")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise DataSourceError(
        f"{where}: {bad.size} labels lie outside 0..{num_classes - 1} (the {num_classes} "
        f"classes), e.g. example {bad[0]} has label {labels[bad[0]]}")
