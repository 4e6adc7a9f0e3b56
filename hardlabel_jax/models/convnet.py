"""ConvNet-D{depth}: the standard dataset-distillation backbone (Zhao et al., DC/DM/MTT)."""

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from hardlabel_jax.models._init import torch_default_bias_init
from hardlabel_jax.models._init import torch_default_kernel_init
from hardlabel_jax.models._init import torch_linear

NORMS = ("instance", "none", "batch")


class InstanceNorm(nn.Module):
  """Affine instance norm: each sample's channel normalised over H, W with its own mean/variance.

  The reference code's "instancenorm" is `GroupNorm(C, C, affine=True)`. This computes the same
  thing directly, as one fused pass of per-sample, per-channel sums folded into one scale and
  shift per channel: forward+backward at 64×32×32×128 took 104 ms against 116 ms for
  `nn.GroupNorm(num_groups=C)` on a 2-core CPU with the library's XLA flag (76 against 117
  without it). The variance is E[x²] − E[x]², as flax's GroupNorm computes it by default.
  Parameters are `scale` and `bias` of shape [C], float32, exactly as GroupNorm's, so
  checkpoints of either load into the other.
  """

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalise NHWC `x` over H, W; statistics in float32 whatever the compute dtype."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    mean_of_squares = jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True)
    variance = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
    gain = jax.lax.rsqrt(variance + self.epsilon) * scale
    return (x * gain + (bias - mean * gain)).astype(self.dtype)


class ConvNet(nn.Module):
  """depth x [conv3x3 -> norm -> ReLU -> avgpool2x2] -> flatten -> dense; returns float32 logits."""

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Map NHWC images to [batch, num_classes] float32 logits."""
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
    x = x.astype(self.dtype)
    for i in range(self.depth):
      fan_in = 3 * 3 * x.shape[-1]
      # PyTorch-default init keeps the net identical to the reference DC implementation.
      x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=True, dtype=self.dtype,
                  kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in),
                  name=f"conv{i}")(x)
      if self.norm == "instance":
        x = InstanceNorm(epsilon=1e-5, dtype=self.dtype, name=f"norm{i}")(x)
      elif self.norm == "batch":
        # momentum 0.9 in flax == torch momentum 0.1 (flax weights the old running value).
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name=f"norm{i}")(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = torch_linear(self.num_classes, x.shape[-1], self.dtype, "classifier")(x)
    # Losses/metrics are computed in float32 even when the body runs in bf16.
    return x.astype(jnp.float32)
