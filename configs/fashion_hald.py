"""HALD vs SL at equal soft-label bytes on Fashion-MNIST: does a hard-label phase rescue few crops?

One study: SL and HALD × 6 soft-label tables × 10 and 50 images per class × 3 seeds, plus HL (no
table: the floor) and SL+KD (the teacher online: the ceiling), 84 cells, random real subsets. The
tables (`study_label_tables`) store 1, 2, 4 and 16 crops per image, and 16 crops pruned by LPLD to
1/4 and 1/16 of their stored batches, which use as many label bytes as 4 and 1 unpruned crops. SL
replays the table; HALD (schedule S6: soft → hard → soft, hard phase with CutMix and label
smoothing 0.8) replays the same table in its soft phases and spends half the epochs on one-hot
labels of fresh crops. The report pairs HALD with SL per seed at each table and plots accuracy
against label bytes (`accuracy_vs_label_bytes.png`).

Budget: 30,000 examples per cell, 300 epochs of the 100 images of IPC10 (SRe²L's, RDED's and
HALD's evaluation length) and 60 of the 500 of IPC50; the pool (60,000) is seen 0.5 times. The
student, teacher and cache are configs/fashion_study.py's (one teacher serves both studies), with
DD-style crops (scale 0.08–1, FKD's relabel crops): the setting where few stored crops drift.
HALD's ImageNet recipe otherwise: AdamW 1e-3, wd 0.01, the `hald` cosine with η=2 (its IPC10
value; one recipe for every cell, so IPC50 uses it too), T=20 with the soft loss scaled by T².

Wall time on 2 CPU cores: 53 minutes from an empty cache (measured, with another study and the
tests sharing the cores; 6 of them train the teacher), so about 45 minutes alone; `:runlocal`
runs in about a minute.

  python -m hardlabel_jax.main --config configs/fashion_hald.py \
      --config.cache_dir=/tmp/fashion_cache --workdir /tmp/fashion_hald
  python -m hardlabel_jax.main --config configs/fashion_hald.py:runlocal --workdir /tmp/fh_smoke
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """The grid; `seeds=N` the first N seeds; `runlocal` a seconds-long smoke test."""
  args = config_schema.parse_arg(arg, runlocal=False, seeds=3)
  config = config_schema.sibling_config(__file__, "fashion_study.py",
                                        "runlocal" if args.runlocal else None)
  config.study_regimes = ("hl", "sl", "hald", "sl_kd")
  config.study_methods = ("random",)
  config.study_images_per_class = (10, 50)
  config.study_seeds = tuple(range(args.seeds))
  config.study_label_tables = ((1, 1.0), (2, 1.0), (4, 1.0), (16, 1.0), (16, 1 / 4), (16, 1 / 16))
  config.budget_examples = 30_000  # 300 epochs of 100 images, 60 of 500
  config.global_batch_size = 48  # a multiple of 8 devices; 30,000 = 625 steps × 48
  config.crop_scale = (0.08, 1.0)
  config.crop_ratio = (3 / 4, 4 / 3)
  config.schedule = "hald"
  config.hald_eta = 2.0
  # KL at T=20 has ~T² smaller gradients than CE; HALD switches losses, so both phases are kept
  # on one gradient scale (configs/embedded_hald.py measures the collapse without it).
  config.soft_loss_weight = config.temperature**2
  config.hald_schedule = "S6"
  config.hald_label_smoothing = 0.8
  config.hald_cutmix_alpha = 1.0
  # The recipe the README's HALD tables were measured with: a per-example CutMix partner drawn
  # from the pool (the official batch-reversed CutMix, the default, came after; issue 25).
  config.hald_hard_cutmix = "pool"
  config.label_format = "full"
  if args.runlocal:
    config.study_images_per_class = (2,)
    config.study_seeds = (0,)
    config.study_label_tables = ((1, 1.0), (4, 1 / 4))
    config.budget_examples = 96
    config.global_batch_size = 16
  return config_schema.reset_unread(config)
