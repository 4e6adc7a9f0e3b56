"""The hard-label check of a distilled set: does it beat random real images without soft labels?

Hard Truths' checklist for any distillation paper, as one command: the set (an image folder in
the layout of the PyTorch code that made it) and random real subsets with the same images per
class are trained under HL, SL and SL+KD for the same compute budget, 3 seeds each, and the report
gives the set's gain over random per regime with its standard error (results.csv, report.md,
plots). The set's class folders are mapped onto the test set's classes by `class_order`: 'index'
for SRe²L/CDA/LPLD's `new000/…` (and this library's `class_00000/…`), 'test_names' for folders
named as the test set's classes (ImageNet synsets), or a file of folder names in label order.

On the embedded MNIST (the default data) the recipe is the demo's (ConvNet-D3 width 32, AdamW,
8,400 examples per cell) and the teacher the BN ConvNet-D3 of configs/embedded_sre2l.py (trained
on first use; `teacher=DIR` for a finished or imported one, e.g. hardlabel_jax.import_teacher):

  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/syn_data/my_set \
      --workdir /tmp/check_my_set
  python -m hardlabel_jax.main \
      --config configs/check_set.py:set=/data/rded_set,class_order=/data/classes.txt,seeds=5 \
      --config.train_crop_recipe=rded --workdir /tmp/check_rded   # RDED's own student crops
  python -m hardlabel_jax.main --config configs/check_set.py:set=/data/s,runlocal --workdir /tmp/c

For another data set override `dataset`, `image_size`, the model and the budget on the command
line (`--config.dataset=tfds:imagenet2012 --config.image_size=224 ...`) and pass its teacher.
"""

from hardlabel_jax import config_schema


def get_config(arg=None):
  """`set=PATH` (required), `class_order=index|test_names|FILE`, `seeds=N`, `teacher=DIR`."""
  args = config_schema.parse_arg(arg, runlocal=False, set="", class_order="index", seeds=3,
                                 teacher="")
  config = config_schema.sibling_config(__file__, "embedded_sre2l.py",
                                        "runlocal" if args.runlocal else None)
  config.study_methods = ("random", "external")
  config.study_external_set = args.set  # '' fails validation, naming the field
  config.study_external_class_order = args.class_order
  config.study_images_per_class = ()  # the set's own images per class
  config.study_seeds = tuple(range(args.seeds))
  if args.teacher:
    config.teacher_workdir = args.teacher
    config.teacher_config = None
  config_schema.unset(config, "synth_iterations")  # no cell synthesises
  return config
