"""torchvision-compatible ResNet-18/50 (v1.5: strided 3x3 conv), 'imagenet' or 'cifar' stem."""

import functools
from typing import Any, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from hardlabel_jax.models._init import kaiming_normal_fan_out
from hardlabel_jax.models._init import torch_linear

STEMS = ("imagenet", "cifar")


class _ConvBN(nn.Module):
  """Bias-free conv followed by BatchNorm, the building unit shared by all blocks."""

  features: int
  kernel: int
  stride: int = 1
  zero_scale: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Apply conv (torch-style symmetric padding k//2) then BN."""
    pad = self.kernel // 2
    x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        strides=(self.stride, self.stride),
        # Explicit symmetric padding matches torch; "SAME" pads asymmetrically for stride 2.
        padding=((pad, pad), (pad, pad)),
        use_bias=False,  # BN follows, so a bias would be redundant (as in torchvision).
        dtype=self.dtype,
        kernel_init=kaiming_normal_fan_out,
        name="conv",
    )(x)
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,  # == torch momentum 0.1
        epsilon=1e-5,
        dtype=self.dtype,
        scale_init=nn.initializers.zeros if self.zero_scale else nn.initializers.ones,
        name="bn",
    )(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs with identity/projection shortcut (ResNet-18/34)."""

  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Residual block forward pass."""
    out = nn.relu(
        _ConvBN(self.features, 3, self.stride, dtype=self.dtype, name="conv_bn1")(x, train))
    conv_bn2 = _ConvBN(self.features, 3, 1, self.zero_init_residual, self.dtype, name="conv_bn2")
    out = conv_bn2(out, train)
    shortcut = _shortcut(x, self.features * self.expansion, self.stride, self.dtype, train)
    return nn.relu(out + shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand x4, with shortcut (ResNet-50/101/152)."""

  features: int
  stride: int = 1
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Residual block forward pass."""
    out = nn.relu(_ConvBN(self.features, 1, dtype=self.dtype, name="conv_bn1")(x, train))
    out = nn.relu(
        _ConvBN(self.features, 3, self.stride, dtype=self.dtype, name="conv_bn2")(out, train))
    out = _ConvBN(self.features * 4, 1, 1, self.zero_init_residual, self.dtype,
                  name="conv_bn3")(out, train)
    shortcut = _shortcut(x, self.features * self.expansion, self.stride, self.dtype, train)
    return nn.relu(out + shortcut)


def _shortcut(x: jax.Array, features: int, stride: int, dtype: Any, train: bool) -> jax.Array:
  """Identity, or 1x1 conv+BN projection when shape changes (torchvision 'downsample')."""
  if stride == 1 and x.shape[-1] == features:
    return x
  # Called inside the parent's compact scope, so this submodule is owned by the calling block.
  return _ConvBN(features, 1, stride, dtype=dtype, name="downsample")(x, train)


class ResNet(nn.Module):
  """Generic ResNet; see ResNet18 / ResNet50 for the standard configurations."""

  stage_sizes: Sequence[int]
  block_cls: type[nn.Module]
  num_classes: int
  stem: str = "imagenet"
  zero_init_residual: bool = False
  # Base channel width (64 in the paper / torchvision); smaller values give cheap test or ablation
  # models.
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Map NHWC images to [batch, num_classes] float32 logits."""
    if self.stem not in STEMS:
      raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.relu(_ConvBN(self.width, 7, 2, dtype=self.dtype, name="stem")(x, train))
      # torchvision MaxPool2d(3, 2, padding=1); flax pads max_pool with -inf, same as torch.
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      # Small (32px) inputs: keep full resolution, no max-pool (standard CIFAR ResNet variant).
      x = nn.relu(_ConvBN(self.width, 3, 1, dtype=self.dtype, name="stem")(x, train))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(
            features=self.width * 2**i,
            stride=2 if (i > 0 and j == 0) else 1,
            zero_init_residual=self.zero_init_residual,
            dtype=self.dtype,
            name=f"layer{i + 1}_{j}",
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    # torchvision leaves fc at nn.Linear's default init.
    x = torch_linear(self.num_classes, x.shape[-1], self.dtype, "fc")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
