"""The data of a run: both splits, the pool of training ids, the crop spec, the normaliser."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import selection
from hardlabel_jax.data import class_cut
from hardlabel_jax.data import crops
from hardlabel_jax.data import device_pool
from hardlabel_jax.data import errors as data_errors
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import relabel_batches
from hardlabel_jax.data import sources
from hardlabel_jax.data import tensor_set
from hardlabel_jax.data.errors import DataSourceError
from hardlabel_jax.data.source import ImageSource
from hardlabel_jax.data.source import SourceInfo

_SHOWN = 5  # class names quoted in an error message


@dataclasses.dataclass
class RunData:
  """The sources, the training pool and the views a run reads."""

  train: ImageSource
  test: ImageSource
  pool_ids: np.ndarray
  crop_spec: crops.CropSpec
  normalizer: pipeline.Normalizer
  # Where training and table crops are made: device_pool.HOST or DEVICE (`crop_backend` resolved
  # for this pool and these devices).
  crop_backend: str = device_pool.HOST

  @property
  def on_device(self) -> bool:
    return self.crop_backend == device_pool.DEVICE


# The score a selection method ranks by (names in a task='score' run's score file).
SELECTION_SCORES = {
    "el2n_easy": "el2n",
    "el2n_hard": "el2n",
    "el2n_window": "el2n",
    "ccs": "aum",
    "cad_prune": "cad",
    "cad_window": "cad"
}


def scored_pool(config: ml_collections.ConfigDict, train: ImageSource) -> np.ndarray:
  """The pool chosen by `config.selection` among the examples of a score file."""
  if config.images_per_class <= 0:
    raise ValueError(f"config.images_per_class: selection {config.selection!r} needs a "
                     "positive number of images per class")
  scored = selection.load_scores(config.scores_file, expected_fingerprint=train.info.fingerprint)
  name = SELECTION_SCORES[config.selection]
  if name == "cad":
    name = selection.CAD_SCORES[config.cad_signal]
  if name not in scored.scores:
    raise ValueError(f"config.scores_file: {config.scores_file} has no {name!r} scores (it has "
                     f"{', '.join(sorted(scored.scores))}); for CAD the scoring run's K epochs "
                     "must hold its windows (scoring.cad_windows)")
  labels = np.asarray(train.labels())[scored.ids]
  chosen = selection.select(config.selection, labels, config.images_per_class,
                            scores=scored.scores[name], seed=config.subset_seed,
                            beta=config.ccs_beta, num_strata=config.ccs_strata,
                            direction=config.cad_direction, ccs_scope=config.ccs_scope,
                            dataset=config.dataset, position=config.window_position)
  return np.sort(scored.ids[chosen]).astype(np.int64)


def rded_factor(config: ml_collections.ConfigDict) -> int:
  """`config.rded_factor`, 0 ('auto') resolved: 1 at images of at most 64 px, else 2."""
  if config.rded_factor:
    return int(config.rded_factor)
  # RDED's CIFAR-10/100 and Tiny-ImageNet scripts use factor 1, its ImageNet ones factor 2.
  return 1 if config.image_size <= 64 else 2


def crop_spec(config: ml_collections.ConfigDict) -> crops.CropSpec:
  """The training crops of a run, by `config_schema.train_crop_recipe`: 'rrc' or RDED's."""
  recipe = config_schema.train_crop_recipe(config)
  if recipe == "rded":
    return crops.rded_spec(config.image_size, rded_factor(config), flip=config.random_flip,
                           cutmix_alpha=config.cutmix_alpha, resize=config.crop_resize)
  if recipe == "dsa":  # the whole image; the train step applies DSA on the device
    return crops.whole_image_spec(config.image_size)
  return crops.CropSpec(output_size=config.image_size, scale=tuple(config.crop_scale),
                        ratio=tuple(config.crop_ratio), flip=config.random_flip,
                        cutmix_alpha=config.cutmix_alpha, resize=config.crop_resize)


def crop_spec_record(config: ml_collections.ConfigDict, spec: crops.CropSpec) -> dict:
  """The crop fields every soft-label table's header records (`TableSpec.crop_spec`)."""
  return {
      "output_size": spec.output_size,
      "scale": list(spec.scale),
      "ratio": list(spec.ratio),
      "flip": bool(spec.flip),
      "cutmix_alpha": float(spec.cutmix_alpha),
      # A table of one recipe is never served to a run of the other (the shuffle is not in a
      # row's stored box, so only the header can tell them apart).
      "recipe": config_schema.train_crop_recipe(config),
      "shuffle_factor": int(spec.shuffle_factor),
  }


def cutmix_in_relabel_batches(config: ml_collections.ConfigDict) -> bool:
  """Whether a table's crops are CutMixed within their relabel batches (else: per-crop partner,
  or no CutMix at all)."""
  return crop_spec(config).cutmix_alpha > 0 and config.table_cutmix == "relabel_batch"


def table_cutmix_plan(config: ml_collections.ConfigDict, data: RunData,
                      slots: int | None = None) -> relabel_batches.CutmixPlan | None:
  """The CutMix of a table's crops within their relabel batches over `slots` relabel epochs
  (default `crops_per_image`); None for a per-crop partner."""
  if not cutmix_in_relabel_batches(config):
    return None
  return relabel_batches.cutmix_plan(len(data.pool_ids), slots or config.crops_per_image,
                                     config.relabel_batch_size, config.crop_seed,
                                     data.crop_spec.cutmix_alpha, data.crop_spec.output_size)


def table_crop_example(config: ml_collections.ConfigDict, data: RunData,
                       source: ImageSource | None = None,
                       slots: int | None = None) -> pipeline.CropExample:
  """The crops a soft-label table stores and every replay of it reads (`crop_seed`, the run's
  crop spec and the table's CutMix over `slots` relabel epochs, default `crops_per_image`), from
  `source` (default the train split)."""
  return pipeline.CropExample(source or data.train, data.pool_ids, data.crop_spec,
                              config.crop_seed, data.normalizer,
                              table_cutmix_plan(config, data, slots), on_device=data.on_device)


def device_crops(data: RunData, mesh: jax.sharding.Mesh) -> device_pool.DeviceCrops | None:
  """The run's pool placed on `mesh` with its crop program, or None when crops are made on the
  host."""
  if not data.on_device:
    return None
  return device_pool.place(data.train, data.pool_ids, data.crop_spec, data.normalizer.mean,
                           data.normalizer.std, mesh)


def _test_source(config: ml_collections.ConfigDict) -> ImageSource:
  """The test split; an image folder (or Tiny-ImageNet) tested on its own test split maps it by
  class_order too."""
  name = config.test_dataset or config.dataset
  own_folder = name == config.dataset and sources.takes_class_order(name)
  return sources.load_source(name, config.test_split, config.data_dir or None,
                             class_order=config.class_order if own_folder else "")


def tensor_reading(config: ml_collections.ConfigDict, test: SourceInfo) -> tensor_set.Reading:
  """How a run reads its tensor set: against the test split's classes and channels, undoing
  `normalization_mean/std` (else the test split's statistics), by the `tensor_set_*` rules."""
  return tensor_set.Reading(num_classes=test.num_classes, channels=test.image_shape[-1],
                            mean=tuple(config.normalization_mean) or test.mean,
                            std=tuple(config.normalization_std) or test.std,
                            pixel_scale=config.tensor_set_pixel_scale,
                            hard_labels=config.tensor_set_hard_labels)


def train_source(config: ml_collections.ConfigDict, test: ImageSource | None = None) -> ImageSource:
  """The train split, an image folder's classes mapped by `config.class_order` onto the test's,
  cut to `train_images_per_class` per class when that is set.

  With class_order '' this is the plain train split (folder names sorted) and the test split is
  not opened; otherwise `test` (opened here when None) supplies the classes to map onto, so a
  folder that does not match them fails here, before anything is built or trained.
  A tensor set (`tensors:<dir>`) is read against the test split (`tensor_reading`).
  """
  if config.dataset.startswith(tensor_set.PREFIX):
    test = _test_source(config) if test is None else test
    split = sources.load_source(config.dataset, config.train_split, config.data_dir or None,
                                class_order=config.class_order,
                                tensor_reading=tensor_reading(config, test.info))
  elif not config.class_order:
    split = sources.load_source(config.dataset, config.train_split, config.data_dir or None)
  else:
    test = _test_source(config) if test is None else test
    info = test.info
    # A TFDS ClassLabel made from a class count names its classes '0'..'n-1'; so do we.
    reference = info.class_names or tuple(str(c) for c in range(info.num_classes))
    split = sources.load_source(config.dataset, config.train_split, config.data_dir or None,
                                class_order=config.class_order, reference_classes=reference)
  # `train_images_per_class`: every artefact sees the cut as the whole split (class_cut).
  return class_cut.cut(split, config.train_images_per_class)


def _split_name(source: ImageSource) -> str:
  """A source as messages name it: "split 'train' of imagefolder:/data/set"."""
  return f"split {source.info.split!r} of {source.info.name}"


def _class_difference(train: tuple[str, ...], test: tuple[str, ...]) -> str:
  """How two class lists differ: names missing from either, else the first out of order."""
  in_train, in_test = set(train), set(test)
  missing = [n for n in test if n not in in_train]
  extra = [n for n in train if n not in in_test]
  parts = []
  if missing:
    parts.append(f"test classes missing from train: {missing[:_SHOWN]}"
                 + (f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""))
  if extra:
    parts.append(f"train classes missing from test: {extra[:_SHOWN]}"
                 + (f" and {len(extra) - _SHOWN} more" if len(extra) > _SHOWN else ""))
  if not parts:
    # Same sets, so lists that agree up to the shorter one's end differ by a repeated name.
    pairs = enumerate(zip(train, test, strict=False))
    first = next((i for i, (a, b) in pairs if a != b), min(len(train), len(test)))
    parts.append(f"same names in another order, first at label {first}: train "
                 f"{list(train[first:first + _SHOWN])}, test {list(test[first:first + _SHOWN])}")
  return "; ".join(parts)


def check_splits_agree(config: ml_collections.ConfigDict, train: ImageSource,
                       test: ImageSource) -> None:
  """Raises a DataSourceError unless both splits hold examples and share their classes.

  A test label the model has no output for makes the test loss NaN, and a class order that differs
  mislabels every test image, so both stop the run here. With `config.class_order` set the train
  folders are already mapped onto the test classes (by number for 'index', so their names differ
  by design) and only the counts are compared; a source without class names compares counts too.
  """
  for source in (train, test):
    if not len(source):
      raise DataSourceError(f"{_split_name(source)} is empty: it has no examples")
  names = (tuple(train.info.class_names), tuple(test.info.class_names))
  if not config.class_order and all(names) and names[0] != names[1]:
    raise DataSourceError(
        f"the train and test splits do not have the same classes in the same order "
        f"({_split_name(train)}: {len(names[0])} classes, {_split_name(test)}: {len(names[1])}): "
        f"{_class_difference(*names)}. Make the class folders match, or set config.class_order "
        "to map the train folders onto the test classes")
  if train.info.num_classes != test.info.num_classes:
    raise DataSourceError(
        f"{_split_name(train)} has {train.info.num_classes} classes but {_split_name(test)} has "
        f"{test.info.num_classes}; the model would have no output for some test labels")


def load_run_data(config: ml_collections.ConfigDict) -> RunData:
  """Opens both splits and chooses the pool; fails before any training on bad data config."""
  # The test split first: config.class_order maps the train folders onto its classes.
  test = _test_source(config)
  train = train_source(config, test)
  check_splits_agree(config, train, test)
  # Train labels are read for the pool anyway; a TFDS test split's could take minutes to read,
  # and its ClassLabel feature already keeps them in range.
  data_errors.check_labels(np.asarray(train.labels()), train.info.num_classes, _split_name(train))
  if config.selection == "random":
    pool_ids = selection.training_pool(train.labels(), images_per_class=config.images_per_class,
                                       seed=config.subset_seed, ids_file=config.subset_ids_file)
  else:
    pool_ids = scored_pool(config, train)
  spec = crop_spec(config)
  mean = tuple(config.normalization_mean) or tuple(train.info.mean)
  std = tuple(config.normalization_std) or tuple(train.info.std)
  crop_backend = config.crop_backend
  if (crop_backend == device_pool.AUTO and config.imported_table_dir
      and config.regime in config_schema.TABLE_REGIMES):
    # An imported table's crops are torchvision's of arbitrary stored boxes, cut on the host.
    crop_backend = device_pool.HOST
  backend = device_pool.choose(crop_backend, config.device_pool_budget_mb, train, pool_ids,
                               jax.local_devices())
  return RunData(train, test, pool_ids, spec, pipeline.Normalizer(mean, std), backend)


def input_shape(config: ml_collections.ConfigDict, data: RunData) -> tuple[int, int, int, int]:
  """The model input shape `(1, size, size, channels)` of a run."""
  return (1, config.image_size, config.image_size, data.train.info.image_shape[-1])
