"""SRe²L's FKD soft-label folders ↔ this library's tables, from the command line.

Import the labels a method published (`epoch_{e}/batch_{b}.tar`, written by SRe²L's
`relabel/generate_soft_label.py`) for the image folder they label, as a table a run reads with
`config.imported_table_dir` (or the hard-label check with `configs/check_set.py:labels=DIR`):

  python -m hardlabel_jax.fkd_labels --import_from /data/FKD_cutmix_fp16 \\
      --set /data/syn_data/my_set --class_order index --dataset tfds:imagenet2012 \\
      --image_size 224 --table_dir /data/tables/my_set_fkd

Export a table as such a folder (`validate/train_FKD.py --fkd-path OUT --batch-size B` reads it):

  python -m hardlabel_jax.fkd_labels --export_to /data/FKD_mine --table_dir /data/tables/t \\
      --set /data/syn_data/my_set --class_order index --dataset tfds:imagenet2012 --batch_size 1024

`--set`, `--class_order` and `--dataset` name the data as the check names it (the folder, how its
class directories map onto `--dataset`'s test classes, the data set it was made from), so the
table is of exactly the split a run on the folder sees. What the format is, what is checked and
what is refused: `hardlabel_jax/soft_labels/fkd.py`.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

from hardlabel_jax import cli_errors
from hardlabel_jax import config_schema
from hardlabel_jax import image_sets
from hardlabel_jax import run_data
from hardlabel_jax.data import errors as data_errors
from hardlabel_jax.data import image_folder
from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.soft_labels import fkd
from hardlabel_jax.soft_labels import formats
from hardlabel_jax.soft_labels import table as table_lib


def set_data(set_path: str, class_order: str, dataset: str,
             data_dir: str = "") -> tuple[ImageSource, list[str], str]:
  """The folder's train split as a run on it reads it (`image_sets.folder_config`), its files in
  example-id order, and the directory torchvision's ImageFolder reads (the relabel's --data)."""
  base = config_schema.default_config()
  base.dataset, base.data_dir = dataset, data_dir
  config = image_sets.folder_config(base, set_path, class_order)
  train = run_data.train_source(config)
  files = image_folder.example_files(set_path, config.train_split, train.info.class_names)
  return train, files, image_folder.split_directory(set_path, config.train_split)


def import_labels(fkd_path: str, table_dir: str, set_path: str, *, class_order: str = "index",
                  dataset: str = "embedded_mnist", data_dir: str = "", image_size: int = 0,
                  temperature: float = fkd.DEFAULT_TEMPERATURE, label_format: str = "full",
                  topk: int = 0, seed: int = fkd.DEFAULT_SEED,
                  batch_size: int = 0) -> table_lib.SoftLabelTable:
  """`--import_from`: the FKD folder `fkd_path` of the image folder `set_path` → a table."""
  train, files, root = set_data(set_path, class_order, dataset, data_dir)
  try:
    formats.LabelFormat(label_format, train.info.num_classes, topk if label_format != "full" else 0)
  except ValueError as e:
    raise fkd.FkdFolderError(f"--label_format / --topk: {e}") from e
  if not temperature > 0:
    raise fkd.FkdFolderError(f"--temperature: must be positive, got {temperature}")
  if not image_size:
    height, width = train.info.image_shape[:2]
    if height is None or height != width:
      raise fkd.FkdFolderError("--image_size: the set's images are not of one square size; give "
                               "the relabel's --input-size (224 in relabel.sh)")
    image_size = height
  return fkd.import_folder(fkd_path, table_dir, train, files, root, image_size=image_size,
                           temperature=temperature, label_format=label_format, topk=topk, seed=seed,
                           batch_size=batch_size)


def export_labels(table_dir: str, fkd_path: str, set_path: str, *, class_order: str = "index",
                  dataset: str = "embedded_mnist", data_dir: str = "", batch_size: int = 0,
                  seed: int = fkd.DEFAULT_SEED, label_dtype: str = "float16") -> fkd.FolderLayout:
  """`--export_to`: the table at `table_dir` (of the image folder `set_path`) → an FKD folder."""
  train, files, root = set_data(set_path, class_order, dataset, data_dir)
  table = table_lib.SoftLabelTable.open(table_dir)
  return fkd.export_table(table, fkd_path, train, files, root, batch_size=batch_size, seed=seed,
                          label_dtype=label_dtype)


def _define_flags() -> None:
  flags.DEFINE_string("import_from", None, "an FKD folder (epoch_{e}/batch_{b}.tar) to import")
  flags.DEFINE_string("export_to", None, "a new directory to export the table to as FKD labels")
  flags.DEFINE_string("table_dir", None, "the table: written by --import_from, read by --export_to")
  flags.DEFINE_string("set", None, "the image folder the labels are of (the relabel's --data)")
  flags.DEFINE_string(
      "class_order", "index", "how its class folders map onto --dataset's "
      "classes: index, test_names, a file of names, or '' (sorted names)")
  flags.DEFINE_string(
      "dataset", "embedded_mnist", "the data set the folder was made from (its "
      "test split names the classes; tfds:imagenet2012 for ImageNet sets)")
  flags.DEFINE_string("data_dir", "", "where local and TFDS data sets are cached")
  flags.DEFINE_integer("image_size", 0, "the relabel's --input-size (0: the set's image size)")
  flags.DEFINE_float("temperature", fkd.DEFAULT_TEMPERATURE,
                     "T of softmax(logits / T) the table stores (train_FKD.sh: -T 20)")
  flags.DEFINE_enum("label_format", "full", formats.FORMATS, "the table's payload")
  flags.DEFINE_integer("topk", 0, "k of the topk formats")
  flags.DEFINE_integer("fkd_seed", fkd.DEFAULT_SEED, "the relabel's --fkd-seed")
  flags.DEFINE_integer(
      "batch_size", 0, "the relabel's -b (import: 0 reads it from "
      "epoch_0/batch_0; export: train_FKD.py's --batch-size, needed for a table "
      "relabelled here)")
  flags.DEFINE_enum("label_dtype", "float16", tuple(fkd.LABEL_DTYPES),
                    "export: the logits' dtype (float16: relabel.sh's --use-fp16)")
  flags.mark_flags_as_required(["table_dir", "set"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if (f.import_from is None) == (f.export_to is None):
    cli_errors.fail("give exactly one of --import_from and --export_to", cli_errors.USAGE_ERROR)
  data = dict(class_order=f.class_order, dataset=f.dataset, data_dir=f.data_dir)
  try:
    if f.import_from is not None:
      import_labels(f.import_from, f.table_dir, f.set, image_size=f.image_size,
                    temperature=f.temperature, label_format=f.label_format, topk=f.topk,
                    seed=f.fkd_seed, batch_size=f.batch_size, **data)
    else:
      export_labels(f.table_dir, f.export_to, f.set, batch_size=f.batch_size, seed=f.fkd_seed,
                    label_dtype=f.label_dtype, **data)
  except (fkd.FkdFolderError, table_lib.TableError, FileExistsError, FileNotFoundError,
          data_errors.DataSourceError) as e:
    cli_errors.fail(str(e), cli_errors.REFUSED)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
