"""PyTorch twins of `hardlabel_jax.models` for the side-by-side train-step benchmark.

Layer for layer the same networks as `models/convnet.py` and `models/resnet.py` (same parameter
count, same initialisers), in PyTorch's NCHW layout. Only this benchmark imports torch, and only
when it is installed (`pip install -e .[bench]`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class ConvNet(nn.Module):
  """depth × [conv3x3 → GroupNorm(width, width) → ReLU → avgpool 2] → linear (DC's ConvNet)."""

  def __init__(self, num_classes: int, width: int = 128, depth: int = 3, in_channels: int = 3,
               image_size: int = 32):
    super().__init__()
    layers, channels, size = [], in_channels, image_size
    for _ in range(depth):
      # One group per channel is affine instance norm, as in the JAX model and the DC code.
      layers += [
          nn.Conv2d(channels, width, 3, padding=1),
          nn.GroupNorm(width, width, eps=1e-5),
          nn.ReLU(inplace=True),
          nn.AvgPool2d(2)
      ]
      channels, size = width, size // 2
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(width * size * size, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3×3 conv+BN, identity or 1×1 conv+BN shortcut."""

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != features:
      self.downsample = nn.Sequential(nn.Conv2d(in_channels, features, 1, stride, bias=False),
                                      nn.BatchNorm2d(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class ResNet18Cifar(nn.Module):
  """ResNet-18 with the CIFAR stem: conv3×3 stride 1, no max-pool, BasicBlocks [2, 2, 2, 2]."""

  def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                              nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    blocks, channels = [], width
    for stage in range(4):
      features = width * 2**stage
      for index in range(2):
        blocks.append(BasicBlock(channels, features, 2 if stage > 0 and index == 0 else 1))
        channels = features
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(channels, num_classes)
    for module in self.modules():
      if isinstance(module, nn.Conv2d):
        # torchvision's init, which the JAX model reproduces (kaiming_normal_fan_out).
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem(x))
    return self.fc(torch.flatten(torch.mean(x, dim=(2, 3)), 1))


def create_model(name: str, num_classes: int, width: int, in_channels: int,
                 image_size: int) -> nn.Module:
  """The twin of `hardlabel_jax.models.create_model(name, num_classes, width=width)`."""
  if name == "convnet_d3":
    return ConvNet(num_classes, width, 3, in_channels, image_size)
  if name == "resnet18_cifar":
    return ResNet18Cifar(num_classes, width, in_channels)
  raise ValueError(f"no PyTorch twin of model {name!r}; have convnet_d3, resnet18_cifar")


def count_params(model: nn.Module) -> int:
  """Trainable scalars (BatchNorm running statistics are buffers, as `batch_stats` in JAX)."""
  return sum(p.numel() for p in model.parameters())


def _tensor(array: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(array, np.float32))


def _conv(module: nn.Conv2d, params: dict) -> None:
  module.weight.copy_(_tensor(params["kernel"]).permute(3, 2, 0, 1))  # HWIO → OIHW
  if module.bias is not None:
    module.bias.copy_(_tensor(params["bias"]))


def _norm(module: nn.Module, params: dict) -> None:
  module.weight.copy_(_tensor(params["scale"]))
  module.bias.copy_(_tensor(params["bias"]))


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, params: dict) -> None:
  _conv(conv, params["conv"])
  _norm(bn, params["bn"])


@torch.no_grad()
def copy_jax_params(model: nn.Module, params: dict) -> None:
  """Loads the JAX model's `params` into its twin (a check that the two are the same network)."""
  if isinstance(model, ConvNet):
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.GroupNorm)]
    for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
      _conv(conv, params[f"conv{i}"])
      _norm(norm, params[f"norm{i}"])
    # JAX flattens NHWC features as (h, w, c), PyTorch NCHW as (c, h, w): reorder the rows.
    kernel = np.asarray(params["classifier"]["kernel"])
    width = convs[-1].out_channels
    size = int(round((kernel.shape[0] / width)**0.5))
    kernel = kernel.reshape(size, size, width, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
    model.classifier.weight.copy_(_tensor(kernel).T)
    model.classifier.bias.copy_(_tensor(params["classifier"]["bias"]))
  elif isinstance(model, ResNet18Cifar):
    _conv_bn(model.stem[0], model.stem[1], params["stem"])
    names = [f"layer{stage + 1}_{index}" for stage in range(4) for index in range(2)]
    for block, name in zip(model.blocks, names, strict=True):
      _conv_bn(block.conv1, block.bn1, params[name]["conv_bn1"])
      _conv_bn(block.conv2, block.bn2, params[name]["conv_bn2"])
      if block.downsample is not None:
        _conv_bn(block.downsample[0], block.downsample[1], params[name]["downsample"])
    model.fc.weight.copy_(_tensor(params["fc"]["kernel"]).T)
    model.fc.bias.copy_(_tensor(params["fc"]["bias"]))
  else:
    raise TypeError(f"no JAX twin for {type(model).__name__}")
