"""Weight initialisers reproducing PyTorch's defaults, so results compare with torch baselines."""

from typing import Any, Callable

from flax import linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# torch's default Conv/Linear weight init is kaiming_uniform_(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in));
# variance_scaling(1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in).
torch_default_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")

# torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu") -> N(0, 2 / fan_out),
# not truncated.
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """torch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (flax bias inits lack fan_in)."""
  bound = 1.0 / float(fan_in)**0.5

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """A dense layer with torch.nn.Linear's default init (weight and bias U(±1/sqrt(fan_in)))."""
  return nn.Dense(features, dtype=dtype, kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(fan_in), name=name)
