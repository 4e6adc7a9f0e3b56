"""Teacher import: a PyTorch state dict → a finished teacher workdir a run can name as its teacher.

`python -m hardlabel_jax.import_teacher --torch resnet18.pth --model resnet18 --dataset D
--workdir DIR` converts the state dict of one of the `TEACHER_KINDS` (torchvision's ResNet-18/50;
SRe²L/RDED's CIFAR and Tiny-ImageNet ResNet-18/50, "modified" with a 3×3 stem and no max-pool;
the DC/MTT ConvNet-D3 `instancenorm`, with its 1-channel variant; RDED's BatchNorm `conv3`/`conv4`)
into what the HL trainer leaves behind: the checkpoint, `run_config.json`, and `results.json`
(written last) with the teacher's test top-1 and loss measured here. `config.teacher_workdir=DIR`
then uses it like a teacher trained here.

Every layout change is one small function below (OIHW → HWIO, (out, in) → (in, out), BatchNorm
statistics, the ConvNet classifier's flatten order). A state dict that does not fit the named model
is refused, naming the first key that does not fit, before anything is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from hardlabel_jax import cache
from hardlabel_jax import checkpointing
from hardlabel_jax import cli_errors
from hardlabel_jax import config_schema
from hardlabel_jax import cpu_backend
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import metrics_log
from hardlabel_jax import models
from hardlabel_jax import run_data
from hardlabel_jax import teacher as teacher_lib
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax import trainer
from hardlabel_jax.data import pipeline
from hardlabel_jax.data import sources


@dataclasses.dataclass(frozen=True)
class TeacherKind:
  """A PyTorch network this module imports: the library model it becomes, and whose layout."""

  model: str  # a hardlabel_jax.models name
  layout: str  # the code whose module names the state dict has (a key of _MODULE_NAMES)
  description: str  # what the official code builds, for --help
  model_kwargs: tuple[tuple[str, Any], ...] = ()  # the model's constructor keywords it fixes
  channels: int = 0  # the input channels the official code builds it for; 0: any


# The networks whose PyTorch layout this module knows (the `--model` of the command line).
TEACHER_KINDS = {
    "resnet18": TeacherKind("resnet18", "torchvision", "torchvision resnet18 (ImageNet stem)"),
    "resnet50": TeacherKind("resnet50", "torchvision", "torchvision resnet50 (ImageNet stem)"),
    # SRe²L's small-data sets (VILA-Lab/SRe2L `*small_dataset/squeeze_cifar.py`, README_TINY.md,
    # CDA/recover_cda_tiny.py) and RDED (LINs-lab/RDED synthesize/utils.py `load_model`,
    # 'resnet18_modified') replace torchvision's conv1 by Conv2d(3, 64, 3, stride 1, padding 1,
    # bias False) and its maxpool by Identity: torchvision's key names, the library's cifar stem.
    "resnet18_cifar": TeacherKind(
        "resnet18_cifar", "torchvision",
        "SRe²L/RDED resnet18 'modified' (3×3 stride-1 conv1, no max-pool)"),
    "resnet50_cifar": TeacherKind(
        "resnet50_cifar", "torchvision",
        "SRe²L/CDA resnet50 'modified' (3×3 stride-1 conv1, no max-pool)"),
    "convnet_d3": TeacherKind("convnet_d3", "dc", "DC/MTT ConvNet-D3 'instancenorm', width 128"),
    "convnet_d3_pad3": TeacherKind(
        "convnet_d3_pad3", "dc",
        "the DC/MTT code's 1-channel ConvNet-D3 'instancenorm' (first conv pads 3)", channels=1),
    # RDED's observers (synthesize/models.py ConvNet, built by synthesize/utils.py `load_model`
    # for 'conv3' on CIFAR at 32 px, 'conv4' on Tiny-ImageNet at 64 px): net_norm 'batch',
    # width 128, ReLU, average pooling, 3 channels.
    "rded_conv3": TeacherKind("convnet_d3", "rded",
                              "RDED conv3 (BatchNorm ConvNet-D3, CIFAR 32 px)",
                              (("norm", "batch"),)),
    "rded_conv4": TeacherKind("convnet_d4", "rded",
                              "RDED conv4 (BatchNorm ConvNet-D4, Tiny-ImageNet 64 px)",
                              (("norm", "batch"),)),
}
# The checkpoint's step: no training step was taken here.
IMPORT_STEP = 0
# Keys a checkpoint may wrap its state dict in (training scripts save {'model': ..., 'epoch': ...}).
WRAPPER_KEYS = ("state_dict", "model")
# (collection, flax variable) → PyTorch parameter or buffer name: conv/dense kernels and norm
# scales are `weight`; BatchNorm's running statistics are buffers in PyTorch, `batch_stats` in flax.
_TORCH_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """A PyTorch conv weight [out, in, h, w] (OIHW) as a flax kernel [h, w, in, out] (HWIO)."""
  return np.transpose(weight, (2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
  """A PyTorch linear weight [out, in] as a flax dense kernel [in, out]."""
  return np.transpose(weight)


def chw_linear_kernel(weight: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
  """The weight of a linear layer on NCHW features flattened (c, h, w) → a kernel for (h, w, c).

  PyTorch flattens a [C, H, W] feature map channel-major, flax flattens [H, W, C] channel-minor:
  the same input feature sits in another row of the kernel.
  """
  out = weight.shape[0]
  return np.reshape(np.transpose(np.reshape(weight, (out, channels, height, width)), (2, 3, 1, 0)),
                    (height * width * channels, out))


def torch_name(collection: str, name: str) -> str:
  """PyTorch's name of a flax variable: BN scale/bias ← weight/bias, mean/var ← running_mean/var."""
  return _TORCH_NAMES[(collection, name)]


def _as_array(key: str, value: Any) -> np.ndarray:
  if not isinstance(value, torch.Tensor):
    raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
  value = value.detach().cpu()
  # numpy has no bfloat16; every floating entry becomes float32, the library's parameter dtype.
  return value.float().numpy() if value.is_floating_point() else value.numpy()


def unwrap_state_dict(loaded: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The state dict in `loaded` (raw, or under 'state_dict'/'model') as float32 numpy arrays.

  A DataParallel 'module.' prefix is stripped and BatchNorm's `num_batches_tracked` dropped (flax
  keeps no step counter in BatchNorm).
  """
  for key in WRAPPER_KEYS:
    if isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
      break
  out = {}
  for key, value in loaded.items():
    name = key.removeprefix("module.")
    if name.split(".")[-1] != "num_batches_tracked":
      out[name] = _as_array(key, value)
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.pth` file's state dict (see `unwrap_state_dict`), read without running pickled code."""
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # weights_only refuses pickled objects other than tensors and containers (e.g. the argparse
    # Namespace some training scripts store next to the weights): loading those runs their code.
    raise ValueError(f"--torch: {path} holds more than tensors ({e}); save only the state dict, "
                     "e.g. torch.save(checkpoint['model'], 'weights.pth')") from e
  if not isinstance(loaded, Mapping):
    raise ValueError(f"--torch: {path} holds a {type(loaded).__name__}, not a state dict; save "
                     "model.state_dict()")
  return unwrap_state_dict(loaded)


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One flax variable and the PyTorch entry it comes from."""

  collection: str  # 'params' or 'batch_stats'
  path: tuple[str, ...]  # module names, then the variable name
  torch_key: str
  shape: tuple[int, ...]  # the flax shape
  # 'conv', 'linear', 'chw_linear' (with `feature_shape` (C, H, W)) or 'vector'.
  layout: str
  feature_shape: tuple[int, int, int] = (0, 0, 0)

  @property
  def torch_shape(self) -> tuple[int, ...]:
    """The shape PyTorch stores this variable in."""
    if self.layout == "conv":
      height, width, fan_in, out = self.shape
      return (out, fan_in, height, width)
    if self.layout in ("linear", "chw_linear"):
      return tuple(reversed(self.shape))
    return self.shape

  def convert(self, value: np.ndarray) -> np.ndarray:
    """The PyTorch array in flax's layout."""
    if self.layout == "conv":
      return conv_kernel(value)
    if self.layout == "linear":
      return linear_kernel(value)
    if self.layout == "chw_linear":
      return chw_linear_kernel(value, *self.feature_shape)
    return value


def _resnet_module(names: Sequence[str]) -> str:
  """torchvision's name of a flax ResNet module path, e.g. layer1_0/conv_bn2/bn → layer1.0.bn2."""
  if names[0] == "stem":
    return {"conv": "conv1", "bn": "bn1"}[names[1]]
  if names[0] == "fc":
    return "fc"
  stage, block = names[0].removeprefix("layer").split("_")
  unit, layer = names[1], names[2]
  if unit == "downsample":  # torchvision's Sequential(conv, bn)
    return f"layer{stage}.{block}.downsample.{0 if layer == 'conv' else 1}"
  return f"layer{stage}.{block}.{layer}{unit.removeprefix('conv_bn')}"  # conv_bn2/bn → bn2


def _convnet_module(names: Sequence[str]) -> str:
  """The DC code's module name of a flax ConvNet module: conv{i}/norm{i} → features.{4i}/{4i+1}."""
  name = names[0]
  if name == "classifier":
    return "classifier"
  # Each of the DC code's blocks is Sequential entries [conv, norm, relu, pool].
  for prefix, offset in (("conv", 0), ("norm", 1)):
    if name.startswith(prefix):
      return f"features.{4 * int(name[len(prefix):]) + offset}"
  raise ValueError(f"no DC-layout name for the ConvNet module {name!r}")


def _rded_convnet_module(names: Sequence[str]) -> str:
  """RDED's module name of a flax ConvNet module: conv{i}/norm{i} → layers.conv.{i}/layers.norm.{i}.

  RDED's ConvNet keeps its layers in `ModuleDict({'conv': ModuleList, 'norm': ModuleList, ...})`
  (LINs-lab/RDED synthesize/models.py `_make_layers`); activation and pooling hold no weights.
  """
  name = names[0]
  if name == "classifier":
    return "classifier"
  for prefix in ("conv", "norm"):
    if name.startswith(prefix):
      return f"layers.{prefix}.{int(name[len(prefix):])}"
  raise ValueError(f"no RDED-layout name for the ConvNet module {name!r}")


# A layout's PyTorch module name of each flax module path.
_MODULE_NAMES = {"torchvision": _resnet_module, "dc": _convnet_module, "rded": _rded_convnet_module}


def teacher_kind(name: str) -> TeacherKind:
  """The `TEACHER_KINDS` entry `name`, or a ValueError listing them."""
  if name not in TEACHER_KINDS:
    raise ValueError(f"--model: {name!r} has no known PyTorch layout; expected one of "
                     f"{', '.join(TEACHER_KINDS)}")
  return TEACHER_KINDS[name]


def create_teacher_model(kind_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """The float32 library model a teacher of `kind_name` becomes; kwargs (e.g. width) go to it."""
  kind = teacher_kind(kind_name)
  return models.create_model(kind.model, num_classes, **dict(kind.model_kwargs), **kwargs)


def _convnet_side(model: nn.Module, image_size: int) -> int:
  """The side of the ConvNet feature map the classifier reads on `image_size`-px inputs.

  The first conv adds 2·first_padding − 2 pixels (3×3 kernel); each block then halves the side.
  """
  side = image_size + 2 * model.first_padding - 2
  for _ in range(model.depth):
    side //= 2
  return side


def _convnet_features(model: nn.Module, image_size: int) -> tuple[int, int, int]:
  """(C, H, W) of the ConvNet feature map the classifier reads."""
  side = _convnet_side(model, image_size)
  return (model.width, side, side)


# A refused state dict is compared with the other kinds' models; a ResNet-50 trace costs a second.
@functools.lru_cache(maxsize=16)
def expected_variables(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """The shapes and dtypes of `model`'s variables on inputs of `input_shape` (nothing computed)."""
  return dict(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)))


def model_leaves(kind_name: str, model: nn.Module, input_shape: tuple[int, ...]) -> list[Leaf]:
  """Every variable of `model` with its PyTorch key (in `kind_name`'s layout), in flax's order."""
  module_name = _MODULE_NAMES[teacher_kind(kind_name).layout]
  is_convnet = isinstance(model, models.ConvNet)
  leaves = []
  flat = flax.traverse_util.flatten_dict(expected_variables(model, input_shape))
  for (collection, *path), value in flat.items():
    key = f"{module_name(path[:-1])}.{torch_name(collection, path[-1])}"
    shape = tuple(value.shape)
    if len(shape) == 4:
      leaves.append(Leaf(collection, tuple(path), key, shape, "conv"))
    elif len(shape) == 2 and is_convnet:  # the ConvNet classifier reads flattened features
      features = _convnet_features(model, input_shape[1])
      leaves.append(Leaf(collection, tuple(path), key, shape, "chw_linear", features))
    elif len(shape) == 2:
      leaves.append(Leaf(collection, tuple(path), key, shape, "linear"))
    else:
      leaves.append(Leaf(collection, tuple(path), key, shape, "vector"))
  return leaves


def _fit_problems(state_dict: Mapping[str, np.ndarray], leaves: Sequence[Leaf]) -> list[str]:
  """Every missing key, then every unexpected one, then every key of another shape."""
  wanted = {leaf.torch_key: leaf for leaf in leaves}
  problems = []
  for key, leaf in wanted.items():
    if key not in state_dict:
      problems.append(f"missing key {key!r} (expected shape {leaf.torch_shape})")
  for key, value in state_dict.items():
    if key not in wanted:
      problems.append(f"unexpected key {key!r} (shape {tuple(value.shape)})")
  for key, value in state_dict.items():  # in the state dict's order: weight before bias
    leaf = wanted.get(key)
    if leaf is not None and tuple(value.shape) != leaf.torch_shape:
      problems.append(f"{key!r} has shape {tuple(value.shape)} in the state dict, the model "
                      f"expects {leaf.torch_shape}")
  return problems


# A key every state dict of a layout has: kinds of other layouts need not be built to rule them out.
_LAYOUT_FIRST_KEY = {
    "torchvision": "conv1.weight",
    "dc": "features.0.weight",
    "rded": "layers.conv.0.weight"
}


def _kinds_that_fit(state_dict: Mapping[str, np.ndarray], kind_name: str, model: nn.Module,
                    input_shape: tuple[int, ...]) -> list[str]:
  """The other teacher kinds the state dict fits, with `model`'s classes (and width, in kind)."""
  fits = []
  for name, kind in TEACHER_KINDS.items():
    if (name == kind_name or _LAYOUT_FIRST_KEY[kind.layout] not in state_dict
        or kind.channels not in (0, input_shape[-1])):
      # (A 3-channel 32-px map padded by 3 pools to the same 4×4 as one padded by 1.)
      continue
    # Built the way `model` was: the same number of classes, and its width where it is a network
    # of the same family (a narrow ConvNet's weights fit only a narrow ConvNet).
    other = create_teacher_model(name, model.num_classes)
    if isinstance(other, type(model)):
      other = other.clone(width=model.width)
    if not _fit_problems(state_dict, model_leaves(name, other, input_shape)):
      fits.append(name)
  return fits


def _classifier_hint(state_dict: Mapping[str, np.ndarray], model: nn.Module, leaves: Sequence[Leaf],
                     input_shape: tuple[int, ...]) -> str:
  """The input size a ConvNet's classifier weights were made for, where it is not this one.

  The ConvNet classifier reads the flattened last feature map, whose side follows from the input
  size; weights trained on another size (or with another first padding) have another width.
  """
  for leaf in leaves:
    got = state_dict.get(leaf.torch_key)
    if leaf.layout != "chw_linear" or got is None or got.ndim != 2:
      continue
    channels, side, _ = leaf.feature_shape
    their_side = math.isqrt(got.shape[1] // channels)
    if got.shape[0] != leaf.shape[1] or their_side == side or (their_side**2 * channels
                                                               != got.shape[1]):
      return ""
    # The smallest input size whose feature map has their side: s·2^depth − (2p − 2).
    their_input = their_side * 2**model.depth - 2 * model.first_padding + 2
    return (f". The classifier of these weights reads {their_side}×{their_side}×{channels} "
            f"feature maps ({their_input}-px inputs to this network), this model's on "
            f"{input_shape[1]}-px inputs {side}×{side}×{channels}")
  return ""


def convert_state_dict(state_dict: Mapping[str, np.ndarray], kind_name: str, model: nn.Module,
                       input_shape: tuple[int, ...]) -> dict[str, Any]:
  """The flax variables of `model` from a PyTorch state dict; ValueError if it does not fit.

  The error names the first missing key, else the first unexpected one, else the first key of
  another shape (with both shapes), and how many other keys do not fit; then the other teacher
  kinds the state dict fits, or the input size its ConvNet classifier was made for.
  """
  leaves = model_leaves(kind_name, model, input_shape)
  problems = _fit_problems(state_dict, leaves)
  if problems:
    more = (f" ({len(problems) - 1} more {'key does' if len(problems) == 2 else 'keys do'} not "
            "fit)" if len(problems) > 1 else "")
    fits = _kinds_that_fit(state_dict, kind_name, model, input_shape)
    if fits:
      hint = ". It fits " + "; or ".join(
          f"--model {name}, {TEACHER_KINDS[name].description}" for name in fits)
    else:
      hint = _classifier_hint(state_dict, model, leaves, input_shape)
    raise ValueError(f"--torch: the state dict does not fit {kind_name} with "
                     f"{model.num_classes} classes on {input_shape[1]}-px, {input_shape[-1]}-"
                     f"channel inputs: {problems[0]}{more}{hint}")
  flat = {
      (leaf.collection, *leaf.path): np.ascontiguousarray(leaf.convert(state_dict[leaf.torch_key]),
                                                          np.float32) for leaf in leaves
  }
  return flax.traverse_util.unflatten_dict(flat)


def teacher_config(
    model_name: str, dataset: str, image_size: int, *,
    model_kwargs: Mapping[str, Any] | None = None, train_split: str = "train",
    test_split: str = "test", data_dir: str = "", eval_batch_size: int = 500,
    eval_crop_fraction: float = 1.0, normalization_mean: Sequence[float] = (),
    normalization_std: Sequence[float] = ()
) -> ml_collections.ConfigDict:
  """The run config an imported teacher records: an HL run of `model_name` on `dataset`, float32.

  `model_kwargs` are the constructor keywords the teacher kind fixes (RDED's ConvNets: norm
  'batch'); the others stay at their defaults.
  """
  config = config_schema.default_config()
  config.task = "train"
  config.regime = "hl"
  config.model = model_name
  config.model_kwargs = ml_collections.ConfigDict(dict(model_kwargs or {}))
  config.compute_dtype = "float32"  # the PyTorch model's precision, on every backend
  config.dataset = dataset
  config.train_split = train_split
  config.test_split = test_split
  config.data_dir = data_dir
  config.image_size = image_size
  config.eval_batch_size = eval_batch_size
  config.eval_crop_fraction = eval_crop_fraction
  config.normalization_mean = tuple(normalization_mean)
  config.normalization_std = tuple(normalization_std)
  config_schema.validate(config)
  return config


def _existing_import(workdir: str, config: ml_collections.ConfigDict,
                     sha256: str) -> dict[str, Any] | None:
  """The results of this same import, finished in `workdir`; None if it is empty or unfinished.

  Raises ValueError if `workdir` holds anything else: another run, another import or other files.
  """
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return None
  if not os.path.exists(os.path.join(workdir, checkpointing.RUN_CONFIG_FILE)):
    raise ValueError(f"--workdir: {workdir} is not empty and holds no run; use a new directory")
  checkpointing.check_same_run(workdir, config)
  if not teacher_lib.is_finished(workdir):
    return None  # an interrupted import of the same config (its checkpoint is compared later)
  with open(os.path.join(workdir, trainer.RESULTS_FILE)) as f:
    results = json.load(f)
  source = results.get("imported_from") or {}
  if source.get("sha256") != sha256:
    made_by = (f"imported from {source.get('path')!r}" if source else "trained by this library")
    raise ValueError(f"--workdir: {workdir} already holds a teacher {made_by} with this config, "
                     "not these weights; use a new directory")
  return results


def _train_state(variables: Mapping[str, Any]) -> train_state_lib.TrainState:
  """The train state of a model with `variables` at the import step; no optimizer ran here."""
  return train_state_lib.TrainState(step=jnp.asarray(IMPORT_STEP,
                                                     jnp.int32), params=variables["params"],
                                    batch_stats=variables.get("batch_stats", {}), opt_state={})


def _write_checkpoint(workdir: str, variables: dict[str, Any]) -> dict[str, Any]:
  """Saves `variables` as the library's checkpoint and returns what a teacher load reads back."""
  state = _train_state(jax.tree.map(jnp.asarray, variables))
  checkpointer = checkpointing.Checkpointer(workdir, save_every_steps=1)
  try:
    if checkpointer.latest_step() is None:
      # The checkpoint format stores an input position next to the state; an imported teacher has
      # none, so an empty iterator stands in for it.
      checkpointer.save(IMPORT_STEP, state, iter(grain.MapDataset.range(0).to_iter_dataset()),
                        force=True)
      checkpointer.wait()
    stored = checkpointer.restore_variables()
  finally:
    checkpointer.close()
  same = jax.tree.structure(stored) == jax.tree.structure(variables) and all(
      np.array_equal(np.asarray(a), b)
      for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(variables), strict=True))
  if not same:
    raise ValueError(f"--workdir: {workdir} holds an unfinished import of other weights; remove "
                     "it or use a new directory")
  return stored


def import_teacher(torch_path: str, kind_name: str, dataset: str, workdir: str, *,
                   image_size: int | None = None, num_classes: int | None = None,
                   train_split: str = "train", test_split: str = "test", data_dir: str = "",
                   eval_batch_size: int = 500, eval_crop_fraction: float = 1.0,
                   normalization_mean: Sequence[float] = (),
                   normalization_std: Sequence[float] = (),
                   devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Converts the state dict of a `TEACHER_KINDS` network into a finished teacher workdir.

  Returns the teacher's results. Everything is checked (the data set, the config, the state dict
  against the model, the workdir) before anything is written; results.json, written last, marks the
  teacher finished.
  `image_size` defaults to the data set's and `num_classes`, when given, must equal its number of
  classes. Re-running the same import on a finished workdir returns its results.
  """
  start = time.perf_counter()
  kind = teacher_kind(kind_name)
  train = sources.load_source(dataset, train_split, data_dir or None)
  test = sources.load_source(dataset, test_split, data_dir or None)
  info = train.info
  if num_classes is not None and num_classes != info.num_classes:
    raise ValueError(f"--num_classes: {num_classes}, but {dataset} has {info.num_classes} classes")
  if image_size is None:
    image_size = info.image_shape[0]
    if image_size is None:
      raise ValueError(f"--image_size: the images of {dataset} differ in size; set it (224 for "
                       "ImageNet)")
  channels = info.image_shape[-1]
  statistics = {"normalization_mean": normalization_mean, "normalization_std": normalization_std}
  for name, values in statistics.items():
    if len(values) not in (0, channels):
      raise ValueError(f"--{name}: {len(values)} values for {channels}-channel images")
  config = teacher_config(kind.model, dataset, image_size, model_kwargs=dict(kind.model_kwargs),
                          train_split=train_split, test_split=test_split, data_dir=data_dir,
                          eval_batch_size=eval_batch_size, eval_crop_fraction=eval_crop_fraction,
                          normalization_mean=normalization_mean,
                          normalization_std=normalization_std)
  model = models.model_from_config(config, info.num_classes)
  input_shape = (1, image_size, image_size, channels)
  variables = convert_state_dict(load_state_dict(torch_path), kind_name, model, input_shape)
  sha256 = cache.file_sha256(torch_path)
  existing = _existing_import(workdir, config, sha256)
  if existing is not None:
    metrics_log.log_line(f"{workdir} already holds this import (test top-1 "
                         f"{existing['test_top1']:.4f})")
    return existing

  os.makedirs(workdir, exist_ok=True)
  checkpointing.write_run_identity(workdir, config)
  stored = _write_checkpoint(workdir, variables)
  # Evaluated as a run's teacher is: the checkpoint read back, replicated over the mesh, through
  # the trainer's own evaluation of the test split.
  mesh = mesh_lib.data_mesh(devices)
  stored = mesh_lib.replicate_host_arrays(stored, mesh)
  # As run_data.load_run_data normalises, without its pool (it reads every train label: minutes on
  # ImageNet).
  normalizer = pipeline.Normalizer(
      tuple(config.normalization_mean) or tuple(info.mean),
      tuple(config.normalization_std) or tuple(info.std))
  # The whole train split is the pool of the HL run the teacher stands for.
  data = run_data.RunData(train, test, np.arange(len(train), dtype=np.int64),
                          run_data.crop_spec(config), normalizer)
  test_metrics = trainer.evaluate(_train_state(stored), train_steps.jit_eval_step(mesh, model),
                                  data, config, mesh)
  results = {
      **test_metrics,
      "steps": 0,
      "examples_seen": 0,
      "regime": "hl",
      "dataset": info.name,
      "dataset_fingerprint": info.fingerprint,
      "test_dataset_fingerprint": test.info.fingerprint,
      "num_params": models.count_params(stored["params"]),
      "imported_from": {
          "path": os.path.abspath(torch_path),
          "sha256": sha256,
          "kind": kind_name,
          "layout": kind.layout
      },
      "wall_seconds": time.perf_counter() - start,
      "device_count": mesh.size,
      "config": json.loads(config.to_json_best_effort()),
  }
  path = os.path.join(workdir, trainer.RESULTS_FILE)
  metrics_log.write_json_atomic(path, results)  # last: it marks the teacher finished
  metrics_log.log_line(f"imported {kind_name} from {torch_path}: test top-1 "
                       f"{results['test_top1']:.4f}, test loss {results['test_loss']:.4f} on "
                       f"{results['test_examples']} examples of {dataset}; teacher in {workdir}")
  return results


def _define_flags() -> None:
  """The command line (defined only when run as a program: importing leaves absl's flags alone)."""
  flags.DEFINE_string("torch", None, "PyTorch state dict (.pth): raw, or under 'state_dict' or "
                      "'model'.")
  flags.DEFINE_enum(
      "model", None, list(TEACHER_KINDS), "The network the weights are for: "
      + "; ".join(f"{name}: {kind.description}" for name, kind in TEACHER_KINDS.items()) + ".")
  flags.DEFINE_string(
      "dataset", None, "Source name of the teacher's data set, e.g. "
      "tfds:imagenet2012 (hardlabel_jax.data.sources).")
  flags.DEFINE_string("workdir", None, "Empty (or new) directory for the teacher.")
  flags.DEFINE_integer("image_size", None, "Input size; default: the data set's.")
  flags.DEFINE_integer(
      "num_classes", None, "Checked against the data set's number of classes "
      "(which the model gets).")
  flags.DEFINE_string(
      "train_split", "train", "The split whose fingerprint the teacher records "
      "(runs training on it may use the teacher).")
  flags.DEFINE_string("test_split", "test", "The split the teacher is evaluated on.")
  flags.DEFINE_string("data_dir", "", "Data directory (config.data_dir).")
  flags.DEFINE_integer("eval_batch_size", 500, "Evaluation batch size.")
  flags.DEFINE_float(
      "eval_crop_fraction", 1.0, "Centre crop of the short side before resizing; "
      "0.875 for ImageNet (256 → 224).")
  flags.DEFINE_list("normalization_mean", [], "Per-channel mean; default: the data set's.")
  flags.DEFINE_list("normalization_std", [], "Per-channel std; default: the data set's.")
  flags.mark_flags_as_required(["torch", "model", "dataset", "workdir"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  f = flags.FLAGS
  mean, std = ([float(v) for v in values] for values in (f.normalization_mean, f.normalization_std))
  try:
    import_teacher(f.torch, f.model, f.dataset, f.workdir, image_size=f.image_size,
                   num_classes=f.num_classes, train_split=f.train_split, test_split=f.test_split,
                   data_dir=f.data_dir, eval_batch_size=f.eval_batch_size,
                   eval_crop_fraction=f.eval_crop_fraction, normalization_mean=mean,
                   normalization_std=std)
  except sources.DataSourceError as e:
    cli_errors.fail(str(e), cli_errors.REFUSED)
  except ValueError as e:
    # This module's refusals start with the flag they are about ('--torch: ...'); any other
    # ValueError may be a bug and keeps its traceback.
    if not str(e).startswith("--"):
      raise
    cli_errors.fail(str(e), cli_errors.USAGE_ERROR)


if __name__ == "__main__":
  _define_flags()
  cpu_backend.configure()  # before any JAX computation: XLA reads its flags when it starts
  app.run(main)
