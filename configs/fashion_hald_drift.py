"""Local semantic drift of the HALD study's tables (issue 25 item 4): how far few crops' labels
stray from their image, per set and relabel teacher.

For one set of configs/fashion_hald_paper.py (`set=random|rded|sre2l`, `ipc=10|50`, built on first
use in the shared cache) and one relabel teacher (`teacher=auto`, the study's BSSL-except-RDED
rule, or `eval`): for 1, 2, 4 and 10 crops per image (the study's tables), KL(whole image ‖ crop
average) and how often a crop's (and the crop average's) argmax differs from the label. Crops are
the tables' crops (RandomResizedCrop 0.08–1, CutMix within relabel batches of 16); BSSL labels
them in the tables' relabel batches. T = 1, so the KL reads in the teacher's own confidence (the
tables' T = 20 flattens every distribution; argmax mismatches do not depend on T).

  python -m hardlabel_jax.main --config configs/fashion_hald_drift.py:set=rded,ipc=10 \
      --config.cache_dir=/tmp/fp_cache --workdir /tmp/fhd/rded-ipc10-auto
  python -m hardlabel_jax.main --config configs/fashion_hald_drift.py:set=rded,ipc=10,teacher=eval \
      --config.cache_dir=/tmp/fp_cache --workdir /tmp/fhd/rded-ipc10-eval
Writes drift.csv, drift.json and drift.png to the workdir; `:runlocal` is a smoke test.
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """One set, size, seed and relabel teacher of the HALD study; `runlocal` for a smoke test."""
  args = config_schema.parse_arg(arg, runlocal=False, set="rded", ipc=10, seed=0, teacher="auto")
  config = config_schema.sibling_config(__file__, "fashion_hald_paper.py",
                                        f"runlocal={args.runlocal}")
  config.task = "drift"
  config.selection = args.set
  config.images_per_class = 2 if args.runlocal else args.ipc
  config.seed = config.subset_seed = args.seed
  config.teacher_bn_mode = args.teacher
  config.temperature = 1.0
  config.drift_crop_counts = (1, 2, 4) if args.runlocal else (1, 2, 4, 10)
  return config_schema.reset_unread(config)
