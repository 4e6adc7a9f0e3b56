"""ConvNet-D{depth}: the standard dataset-distillation backbone (Zhao et al., DC/DM/MTT)."""

import functools
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from hardlabel_jax.models._init import torch_default_bias_init
from hardlabel_jax.models._init import torch_default_kernel_init
from hardlabel_jax.models._init import torch_linear

NORMS = ("instance", "none", "batch")


def _moments(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """Per-sample, per-channel mean and 1/sqrt(variance + ε) over H, W; variance E[x²] − E[x]²
  (clipped at 0), as flax's GroupNorm computes it by default, in one pass over x."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  mean_of_squares = jnp.mean(jnp.square(x), axis=(1, 2), keepdims=True)
  variance = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
  return mean, jax.lax.rsqrt(variance + epsilon)


def instance_norm_autodiff(x: jax.Array, scale: jax.Array, bias: jax.Array,
                           epsilon: float = 1e-5) -> jax.Array:
  """The affine instance norm of float32 NHWC `x`, differentiated by autodiff (the reference)."""
  mean, inverse_std = _moments(x, epsilon)
  gain = inverse_std * scale
  return x * gain + (bias - mean * gain)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array,
                  epsilon: float = 1e-5) -> jax.Array:
  """`instance_norm_autodiff` with a hand-written backward of two passes over the activations.

  With g = dL/dy, x̂ = (x − μ)·r and r = 1/sqrt(var + ε), per sample and channel over M = H·W:
  dx = γr·(g − mean(g) − x̂·mean(g·x̂)), written as dx = γr·g + a·x + c with a, c per (n, c)
  from the two means mean(g) and mean(g·x) (one fused reduction pass), then one elementwise
  pass. Autodiff's backward of the forward instead differentiates through the two moments and
  the rsqrt separately. Equal to it to float32 rounding (tests/test_models.py), faster: see
  `python -m hardlabel_jax.benchmarks.step_profile`.
  """
  return _instance_norm_forward(x, scale, bias, epsilon)[0]


def _instance_norm_forward(x, scale, bias, epsilon):
  mean, inverse_std = _moments(x, epsilon)
  gain = inverse_std * scale
  return x * gain + (bias - mean * gain), (x, mean, inverse_std, scale)


def _instance_norm_backward(epsilon, residuals, g):
  del epsilon
  x, mean, inverse_std, scale = residuals
  pixels = x.shape[1] * x.shape[2]
  mean_g = jnp.mean(g, axis=(1, 2), keepdims=True)
  mean_g_xhat = inverse_std * (jnp.mean(g * x, axis=(1, 2), keepdims=True) - mean * mean_g)
  gain = inverse_std * scale
  slope = -gain * inverse_std * mean_g_xhat
  offset = -gain * mean_g - slope * mean
  dx = gain * g + slope * x + offset
  return dx, pixels * jnp.sum(mean_g_xhat, axis=(0, 1, 2)), pixels * jnp.sum(mean_g, axis=(0, 1, 2))


instance_norm.defvjp(_instance_norm_forward, _instance_norm_backward)


class InstanceNorm(nn.Module):
  """Affine instance norm: each sample's channel normalised over H, W with its own mean/variance.

  The reference code's "instancenorm" is `GroupNorm(C, C, affine=True)`. This computes the same
  thing directly, as one fused pass of per-sample, per-channel sums folded into one scale and
  shift per channel, with a hand-written backward (`instance_norm`). Parameters are `scale` and
  `bias` of shape [C], float32, exactly as GroupNorm's, so checkpoints of either load into the
  other.
  """

  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalise NHWC `x` over H, W; statistics in float32 whatever the compute dtype."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return instance_norm(x.astype(jnp.float32), scale, bias, self.epsilon).astype(self.dtype)


class ConvNet(nn.Module):
  """depth x [conv3x3 -> norm -> ReLU -> avgpool2x2] -> flatten -> dense; returns float32 logits.

  Every conv pads by 1 except the first, which pads by `first_padding`: the DC code
  (VICO-UoE/DatasetCondensation networks.py, ConvNet._make_layers: `padding=3 if channel == 1 and
  d == 0 else 1`, copied by MTT and RDED) pads a 1-channel network's first conv by 3, so its 28-px
  MNIST inputs are 32 px after it.
  """

  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  first_padding: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Map NHWC images to [batch, num_classes] float32 logits."""
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
    if self.first_padding < 0:
      raise ValueError(f"first_padding {self.first_padding} must be >= 0")
    x = x.astype(self.dtype)
    for i in range(self.depth):
      fan_in = 3 * 3 * x.shape[-1]
      pad = self.first_padding if i == 0 else 1
      # PyTorch-default init keeps the net identical to the reference DC implementation.
      x = nn.Conv(self.width, (3, 3), padding=((pad, pad), (pad, pad)), use_bias=True,
                  dtype=self.dtype, kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(fan_in), name=f"conv{i}")(x)
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
