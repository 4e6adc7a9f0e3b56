"""Teacher import: a PyTorch state dict → a finished teacher workdir a run can name as its teacher.

`python -m hardlabel_jax.import_teacher --torch resnet18.pth --model resnet18 --dataset D
--workdir DIR` converts a state dict in torchvision's layout (ResNet-18/50, ImageNet stem) or in
the DC/MTT/RDED code's ConvNet-D3 `instancenorm` layout into what the HL trainer leaves behind:
the checkpoint, `run_config.json`, and `results.json` (written last) with the teacher's test top-1
and loss measured here. `config.teacher_workdir=DIR` then uses it like a teacher trained here.

Every layout change is one small function below (OIHW → HWIO, (out, in) → (in, out), BatchNorm
statistics, the ConvNet classifier's flatten order). A state dict that does not fit the named model
is refused, naming the first key that does not fit, before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
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

# The models whose PyTorch layout this module knows, and the code that writes that layout.
LAYOUTS = {"resnet18": "torchvision", "resnet50": "torchvision", "convnet_d3": "dc_instancenorm"}
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


def _convnet_features(model: nn.Module, image_size: int) -> tuple[int, int, int]:
  """(C, H, W) of the ConvNet feature map the classifier reads (each block halves H and W)."""
  side = image_size
  for _ in range(model.depth):
    side //= 2
  return (model.width, side, side)


def expected_variables(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """The shapes and dtypes of `model`'s variables on inputs of `input_shape` (nothing computed)."""
  return dict(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False)))


def model_leaves(model_name: str, model: nn.Module, input_shape: tuple[int, ...]) -> list[Leaf]:
  """Every variable of `model` with its PyTorch key and layout, in flax's order."""
  if model_name not in LAYOUTS:
    raise ValueError(f"--model: {model_name!r} has no known PyTorch layout; expected one of "
                     f"{', '.join(LAYOUTS)}")
  is_resnet = LAYOUTS[model_name] == "torchvision"
  module_name = _resnet_module if is_resnet else _convnet_module
  leaves = []
  flat = flax.traverse_util.flatten_dict(expected_variables(model, input_shape))
  for (collection, *path), value in flat.items():
    key = f"{module_name(path[:-1])}.{torch_name(collection, path[-1])}"
    shape = tuple(value.shape)
    if len(shape) == 4:
      leaves.append(Leaf(collection, tuple(path), key, shape, "conv"))
    elif len(shape) == 2 and not is_resnet:  # the ConvNet classifier reads flattened features
      features = _convnet_features(model, input_shape[1])
      leaves.append(Leaf(collection, tuple(path), key, shape, "chw_linear", features))
    elif len(shape) == 2:
      leaves.append(Leaf(collection, tuple(path), key, shape, "linear"))
    else:
      leaves.append(Leaf(collection, tuple(path), key, shape, "vector"))
  return leaves


def _dc_padding_hint(model_name: str, leaf: Leaf, got: tuple[int, ...],
                     input_shape: tuple[int, ...]) -> str:
  """Why a DC-code MNIST ConvNet's classifier is wider than this library's."""
  if model_name != "convnet_d3" or leaf.layout != "chw_linear" or input_shape[-1] != 1:
    return ""
  channels, _, _ = leaf.feature_shape
  # The DC code pads a 1-channel 28-px input's first conv by 3 (28 → 32 px); this ConvNet pads 1.
  side = input_shape[1] + 4
  for _ in range(3):
    side //= 2
  if len(got) == 2 and got[1] == channels * side * side:
    return (". The DC/MTT code pads the first conv of a 1-channel 28-px network by 3 pixels (its "
            "feature maps are 32 px); this library's ConvNet pads by 1, so that network cannot be "
            "imported as it is")
  return ""


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_name: str, model: nn.Module,
                       input_shape: tuple[int, ...]) -> dict[str, Any]:
  """The flax variables of `model` from a PyTorch state dict; ValueError if it does not fit.

  The error names the first missing key, else the first unexpected one, else the first key of
  another shape (with both shapes), and how many other keys do not fit.
  """
  leaves = model_leaves(model_name, model, input_shape)
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
      got = tuple(value.shape)
      problems.append(f"{key!r} has shape {got} in the state dict, the model expects "
                      f"{leaf.torch_shape}" + _dc_padding_hint(model_name, leaf, got, input_shape))
  if problems:
    more = (f" ({len(problems) - 1} more {'key does' if len(problems) == 2 else 'keys do'} not "
            "fit)" if len(problems) > 1 else "")
    raise ValueError(f"--torch: the state dict does not fit {model_name} with "
                     f"{model.num_classes} classes on {input_shape[1]}-px, {input_shape[-1]}-"
                     f"channel inputs: {problems[0]}{more}")
  flat = {
      (leaf.collection, *leaf.path): np.ascontiguousarray(leaf.convert(state_dict[leaf.torch_key]),
                                                          np.float32) for leaf in leaves
  }
  return flax.traverse_util.unflatten_dict(flat)


def teacher_config(
    model_name: str, dataset: str, image_size: int, *, train_split: str = "train",
    test_split: str = "test", data_dir: str = "", eval_batch_size: int = 500,
    eval_crop_fraction: float = 1.0, normalization_mean: Sequence[float] = (),
    normalization_std: Sequence[float] = ()
) -> ml_collections.ConfigDict:
  """The run config an imported teacher records: an HL run of `model_name` on `dataset`, float32."""
  config = config_schema.default_config()
  config.task = "train"
  config.regime = "hl"
  config.model = model_name
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


def import_teacher(torch_path: str, model_name: str, dataset: str, workdir: str, *,
                   image_size: int | None = None, num_classes: int | None = None,
                   train_split: str = "train", test_split: str = "test", data_dir: str = "",
                   eval_batch_size: int = 500, eval_crop_fraction: float = 1.0,
                   normalization_mean: Sequence[float] = (),
                   normalization_std: Sequence[float] = (),
                   devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Converts a PyTorch state dict into a finished teacher workdir; returns its results.

  Everything is checked (the data set, the config, the state dict against the model, the
  workdir) before anything is written; results.json, written last, marks the teacher finished.
  `image_size` defaults to the data set's and `num_classes`, when given, must equal its number of
  classes. Re-running the same import on a finished workdir returns its results.
  """
  start = time.perf_counter()
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
  config = teacher_config(model_name, dataset, image_size, train_split=train_split,
                          test_split=test_split, data_dir=data_dir, eval_batch_size=eval_batch_size,
                          eval_crop_fraction=eval_crop_fraction,
                          normalization_mean=normalization_mean,
                          normalization_std=normalization_std)
  model = models.model_from_config(config, info.num_classes)
  input_shape = (1, image_size, image_size, channels)
  variables = convert_state_dict(load_state_dict(torch_path), model_name, model, input_shape)
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
          "layout": LAYOUTS[model_name]
      },
      "wall_seconds": time.perf_counter() - start,
      "device_count": mesh.size,
      "config": json.loads(config.to_json_best_effort()),
  }
  path = os.path.join(workdir, trainer.RESULTS_FILE)
  metrics_log.write_json_atomic(path, results)  # last: it marks the teacher finished
  metrics_log.log_line(f"imported {model_name} from {torch_path}: test top-1 "
                       f"{results['test_top1']:.4f}, test loss {results['test_loss']:.4f} on "
                       f"{results['test_examples']} examples of {dataset}; teacher in {workdir}")
  return results


def _define_flags() -> None:
  """The command line (defined only when run as a program: importing leaves absl's flags alone)."""
  flags.DEFINE_string("torch", None, "PyTorch state dict (.pth): raw, or under 'state_dict' or "
                      "'model'.")
  flags.DEFINE_enum("model", None, list(LAYOUTS), "The library model the weights are for.")
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
  import_teacher(f.torch, f.model, f.dataset, f.workdir, image_size=f.image_size,
                 num_classes=f.num_classes, train_split=f.train_split, test_split=f.test_split,
                 data_dir=f.data_dir, eval_batch_size=f.eval_batch_size,
                 eval_crop_fraction=f.eval_crop_fraction, normalization_mean=mean,
                 normalization_std=std)


if __name__ == "__main__":
  _define_flags()
  cpu_backend.configure()  # before any JAX computation: XLA reads its flags when it starts
  app.run(main)
