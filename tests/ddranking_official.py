"""DD-Ranking 0.2.0's score lines, ported verbatim, for the tests to check the library against.

From the `ddranking` 0.2.0 wheel (NUS-HPC-AI-Lab/DD-Ranking): one evaluation run's scores, and
its report over the `num_eval` runs. Variable names are the official ones.
"""

import numpy as np


def official_lrs(full_data_hard_label_acc, syn_data_hard_label_acc, syn_data_soft_label_acc,
                 random_data_soft_label_acc, lrs_lambda=0.5):
  """ddranking/metrics/soft_label.py L561–564 (`LabelRobustScoreSoft.compute_metrics`)."""
  hlr = 1.00 * (full_data_hard_label_acc - syn_data_hard_label_acc)
  ior = 1.00 * (syn_data_soft_label_acc - random_data_soft_label_acc)
  alpha = lrs_lambda * ior - (1 - lrs_lambda) * hlr
  lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
  return hlr, ior, lrs


def official_ars(syn_data_with_aug_acc, random_data_with_aug_acc, syn_data_without_aug_acc,
                 random_data_without_aug_acc, ars_lambda=0.5):
  """ddranking/metrics/aug_robust.py L577–580 (`AugmentationRobustScore.compute_metrics`)."""
  with_aug_score = 1.00 * (syn_data_with_aug_acc - random_data_with_aug_acc)
  without_aug_score = 1.00 * (syn_data_without_aug_acc - random_data_without_aug_acc)
  beta = ars_lambda * with_aug_score + (1 - ars_lambda) * without_aug_score
  ars = (np.exp(beta) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
  return with_aug_score, without_aug_score, ars


def official_aggregate(values):
  """The report over runs (soft_label.py L591–596, aug_robust.py L607–612): np.mean, np.std."""
  return {"mean": np.mean(values), "std": np.std(values)}
