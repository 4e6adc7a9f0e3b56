"""The hard-label check of a distilled set: does it beat random real images without soft labels?

Hard Truths' checklist for any distillation paper, as one command: the set (an image folder in
the layout of the PyTorch code that made it) and random real subsets with the same images per
class are trained under HL, SL and SL+KD for the same compute budget, 3 seeds each, and the report
gives the set's gain over random per regime with its standard error (results.csv, report.md,
plots). Every cell also trains without augmentation (the whole image: no crop, flip or CutMix),
and the full train split once per seed under HL, so the report and `scores.json` give
DD-Ranking's scores (ddranking 0.2.0, hardlabel_jax/ddranking.py): HLR, IOR and LRS under each
soft-label regime, ARS under every regime, per seed then mean ± std. `protocol=ddranking` trains
as DD-Ranking evaluates: each subset cell at its 5 learning rates, 300 epochs, the best test
accuracy of evaluations every 20 epochs (selected on the test set, as the report says), 5 seeds.
The set's class folders are mapped onto the test set's classes by `class_order`: 'index' for
SRe²L/CDA/LPLD's `new000/…` (and this library's `class_00000/…`), 'test_names' for folders named
as the test set's classes (ImageNet synsets), or a file of folder names in label order.

On the embedded MNIST (the default data) the recipe is the demo's (ConvNet-D3 width 32, AdamW,
8,400 examples per cell) and the teacher the BN ConvNet-D3 of configs/embedded_sre2l.py (trained
on first use; `teacher=DIR` for a finished or imported one, e.g. hardlabel_jax.import_teacher):

  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/syn_data/my_set \
      --workdir /tmp/check_my_set
  python -m hardlabel_jax.main \
      --config configs/check_set.py:set=/data/rded_set,class_order=/data/classes.txt,seeds=5 \
      --config.train_crop_recipe=rded --workdir /tmp/check_rded   # RDED's own student crops
  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/s,runlocal --workdir /tmp/c
  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/s,protocol=ddranking \
      --workdir /tmp/check_ddranking   # DD-Ranking's protocol (25 runs per set and regime)
  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/s,labels=/data/s_fkd \
      --workdir /tmp/check_fkd   # SL on the set's own FKD labels (hardlabel_jax.fkd_labels)

For another data set override `dataset`, `image_size`, the model and the budget on the command
line (`--config.dataset=tfds:imagenet2012 --config.image_size=224 ...`) and pass its teacher.
"""

from hardlabel_jax import config_schema
from hardlabel_jax import ddranking
from hardlabel_jax import tensor_sets
from hardlabel_jax.data import tensor_set

SEEDS = 3  # the library's protocol; DD-Ranking's is its num_eval, 5


def get_config(arg=None):
  """`set=PATH` (required; a directory with images.pt is a tensor set), `class_order=index|
  test_names|FILE` (a folder's; default index), `seeds=N`, `teacher=DIR`,
  `protocol=library|ddranking`, `labels=TABLE` (the set's published soft labels, imported by
  hardlabel_jax.fkd_labels: its SL cells train on them), `runlocal`."""
  args = config_schema.parse_arg(arg, runlocal=False, set="", class_order="", seeds=0, teacher="",
                                 protocol="library", labels="")
  if args.protocol not in config_schema.STUDY_PROTOCOLS:
    raise ValueError(f"protocol={args.protocol!r}: choose "
                     f"{' or '.join(config_schema.STUDY_PROTOCOLS)}")
  config = config_schema.sibling_config(__file__, "embedded_sre2l.py",
                                        "runlocal" if args.runlocal else None)
  # The full split trains under HL alone: DD-Ranking's hard-label recovery needs nothing more.
  config.study_methods = ("random", "external", "full")
  config.study_full_regimes = ("hl",)
  config.study_no_augmentation = True  # its augmentation-robust score's second arm
  config.study_external_set = args.set  # '' fails validation, naming the field
  config.study_external_table = args.labels  # '' relabels the set with the teacher
  tensors = tensor_set.names_tensor_set(args.set)
  # A tensor set (images.pt, labels.pt, lr.pt) has no class folders: its labels are its own.
  config.study_external_class_order = args.class_order or ("" if tensors else "index")
  if tensors and "sl" in config.study_regimes:
    # Its stored soft labels belong to whole images (hardlabel_jax/tensor_sets.py): the SL cells,
    # random's too, train on one whole-image slot per image (DD-Ranking's soft_label_mode 'S').
    config.study_regime_overrides.sl = tensor_sets.whole_image_fields((1, 1))
  config.study_images_per_class = ()  # the set's own images per class
  ddranking_protocol = args.protocol == "ddranking"
  config.study_seeds = tuple(
      range(args.seeds or (ddranking.NUM_EVAL if ddranking_protocol else SEEDS)))
  if ddranking_protocol:
    # Its evaluators' num_epochs (300, the full data's loop too), every cell on its own pool;
    # runlocal: one evaluation interval.
    config.study_protocol = "ddranking"
    config.study_budget_rule = "epochs_per_subset"
    epochs = float(ddranking.TEST_INTERVAL_EPOCHS if args.runlocal else 300)
    config.study_epochs_per_subset = config.study_full_epochs = epochs
    config_schema.unset(config, "budget_examples")
  if args.teacher:
    config.teacher_workdir = args.teacher
    config.teacher_config = None
  config_schema.unset(config, "synth_iterations")  # no cell synthesises
  return config
