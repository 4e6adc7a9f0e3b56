"""Model registry: ConvNet-D3/D4 (first conv padded by 1 or 3) and ResNet-18/50 (imagenet or cifar
stem)."""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

from flax import linen as nn
import jax
import jax.numpy as jnp

from hardlabel_jax.models.convnet import ConvNet
from hardlabel_jax.models.resnet import BasicBlock
from hardlabel_jax.models.resnet import Bottleneck
from hardlabel_jax.models.resnet import ResNet
from hardlabel_jax.models.resnet import ResNet18
from hardlabel_jax.models.resnet import ResNet50

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    # The registry fixes the first conv's padding, so model_kwargs (and every identity recorded
    # before it existed) stay as they were.
    "convnet_d3": functools.partial(ConvNet, depth=3, first_padding=1),
    # The DC/MTT code's 1-channel ConvNet: its first conv pads by 3 (28-px MNIST → 32 px).
    "convnet_d3_pad3": functools.partial(ConvNet, depth=3, first_padding=3),
    # One extra pool stage for 64px inputs.
    "convnet_d4": functools.partial(ConvNet, depth=4, first_padding=1),
    "resnet18": functools.partial(ResNet18, stem="imagenet"),
    "resnet18_cifar": functools.partial(ResNet18, stem="cifar"),
    "resnet50": functools.partial(ResNet50, stem="imagenet"),
    "resnet50_cifar": functools.partial(ResNet50, stem="cifar"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
# Constructor keywords no config sets: the data (num_classes), compute_dtype and flax's own.
_DERIVED_KEYWORDS = ("num_classes", "dtype", "parent", "name")
# The dtype of activations and convolutions; parameters, BN statistics, the logits, losses and the
# optimizer stay float32 whatever it is. 'auto' is bfloat16 on TPU/GPU and float32 on CPU.
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds a registered model; kwargs (width, norm, dtype, ...) go to its constructor."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def model_kwargs_defaults(name: str) -> dict[str, Any]:
  """The keywords a config's `model_kwargs` may set for model `name`, with their defaults.

  Every constructor field the registry entry does not fix (ConvNet's depth and first padding;
  ResNet's stem, stages and block) and a run does not derive: `width`, `norm` for ConvNets; `width`,
  `zero_init_residual` for ResNets.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  entry = _REGISTRY[name]
  return {
      f.name: f.default for f in dataclasses.fields(entry.func) if f.name not in entry.keywords
      and f.name not in _DERIVED_KEYWORDS and f.default is not dataclasses.MISSING
  }


def canonical_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """`kwargs` with every unset keyword at its default: equal models give equal identities."""
  if name not in _REGISTRY:
    return dict(kwargs)
  return {**model_kwargs_defaults(name), **kwargs}


def resolve_compute_dtype(name: str, backend: str | None = None) -> Any:
  """'auto' -> bfloat16 on TPU/GPU, float32 on CPU (bf16 is emulated there); else that dtype."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"unknown compute dtype {name!r}; expected one of {', '.join(COMPUTE_DTYPES)}")
  if name == "auto":
    name = "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
  return jnp.dtype(name)


def model_from_config(config: Mapping[str, Any], num_classes: int) -> nn.Module:
  """The model a run config names: `model`, its `model_kwargs` and `compute_dtype`.

    Run configs written before `compute_dtype` existed trained in float32.
    """
  dtype = resolve_compute_dtype(config.get("compute_dtype", "float32"))
  return create_model(config["model"], num_classes, dtype=dtype, **config.get("model_kwargs", {}))


def has_batch_norm(model: nn.Module) -> bool:
  """Whether the model's variables include 'batch_stats' (training needs it mutable)."""
  if isinstance(model, ResNet):
    return True
  if isinstance(model, ConvNet):
    return model.norm == "batch"
  # Unknown modules: refuse rather than guess, since a wrong answer silently breaks BN updates.
  raise TypeError(
      f"has_batch_norm does not know {type(model).__name__}; check \"'batch_stats' in variables\"")


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays or jax.ShapeDtypeStructs (jax.eval_shape)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "canonical_model_kwargs",
    "ConvNet",
    "MODEL_NAMES",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "count_params",
    "COMPUTE_DTYPES",
    "create_model",
    "has_batch_norm",
    "model_kwargs_defaults",
    "model_from_config",
    "resolve_compute_dtype",
]
