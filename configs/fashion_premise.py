"""The premise of CAD-Prune on the Fashion-MNIST miniature: does the best difficulty follow compute?

configs/fashion_paper.py's HL protocol (5,000-image pool, 300 epochs per subset, Tab. 4's SGD /
step / DSA recipe, width 16) with two sweeps, IPC 10 and 50, 3 seeds:
- CAD-Prune with scoring runs of K = 4, 6, 12 and 30 epochs at fixed downstream epochs (the
  compute-matched K = E·n/N is 6 at IPC10 and 30 at IPC50). Windows span the run (W = 2,
  J = K − W), so K < 4 has no window of 2 epochs and is outside CAD's range: not swept.
- Windows of consecutive ranks by EL2N (the 6-epoch run EL2N-hard ranks by) and by CAD (the
  compute-matched run), at positions 0 (lowest scores), 0.25, 0.5, 0.75 and 1 (highest: EL2N-hard
  and CAD-Prune themselves): Hard Truths' "EL2N-Best" offset scan.
- Random subsets as the reference line.

Cells: 2 sizes × 3 seeds × (random + 4 K + 2 scores × 5 windows) = 90; HL only, so no teacher.
Scoring runs, shared with configs/fashion_paper.py through the same cache_dir: EL2N's 6 epochs
and CAD's K per seed. premise.md holds the curves and verdicts, picks.md what CAD-Prune picks.

  nice python -m hardlabel_jax.main --config configs/fashion_premise.py \
      --config.cache_dir=/tmp/fp_cache --workdir /tmp/fashion_premise
  python -m hardlabel_jax.main --config configs/fashion_premise.py:runlocal --workdir /tmp/fpr

`seeds=N` runs the first N seeds; a killed run, started again, trains only the missing cells.
`:runlocal` runs both sweeps on the embedded digits (fashion_paper's runlocal pool) in seconds.
"""

import ml_collections

from hardlabel_jax import config_schema


def get_config(arg=None):
  """The premise sweep; `seeds=N` the first N seeds; `runlocal` a smoke test."""
  args = config_schema.parse_arg(arg, runlocal=False, seeds=3)
  config = config_schema.sibling_config(__file__, "fashion_paper.py",
                                        f"runlocal={args.runlocal},seeds={args.seeds}")
  config.study_regimes = ("hl",)
  config.study_first_regimes = ()
  config.study_regime_overrides = ml_collections.ConfigDict()  # the SL recipes: no SL cells here
  config.teacher_config = None  # HL cells and scoring runs only
  config.study_methods = ("random", "cad_prune", "el2n_window", "cad_window")
  config.study_cad_epochs = (4, 6, 12, 30)
  config.study_window_positions = (0.0, 0.25, 0.5, 0.75, 1.0)
  if args.runlocal:
    # fashion_paper's runlocal: 400 digits, IPC2, 80 epochs, so the matched K is 4.
    config.study_cad_epochs = (4, 6)
    config.study_window_positions = (0.0, 1.0)
  return config_schema.reset_unread(config)
