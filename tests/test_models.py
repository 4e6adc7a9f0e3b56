"""Tests for hardlabel_jax.models: shapes, exact parameter counts, BatchNorm behaviour, registry."""

import functools
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hardlabel_jax.models import BasicBlock
from hardlabel_jax.models import Bottleneck
from hardlabel_jax.models import ConvNet
from hardlabel_jax.models import count_params
from hardlabel_jax.models import create_model
from hardlabel_jax.models import has_batch_norm
from hardlabel_jax.models import model_kwargs_defaults
from hardlabel_jax.models import MODEL_NAMES
from hardlabel_jax.models import ResNet
from hardlabel_jax.models.convnet import instance_norm
from hardlabel_jax.models.convnet import instance_norm_autodiff
from hardlabel_jax.models.convnet import InstanceNorm

# XLA:CPU compile time dominates these tests; optimisation level 0 roughly halves it and
# numerics are unaffected for the properties checked here.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _run(fn: Callable[..., Any], *args: Any) -> Any:
  """jit-compile fn with cheap compiler options and run it once."""
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)(*args)


# linen modules are hashable dataclasses; tracing ResNet-50 costs ~1 s.
@functools.lru_cache(maxsize=None)
def _abstract_init(model: Any, shape: tuple[int, ...], dtype: Any = jnp.float32) -> tuple[Any, Any]:
  """Shape-only init + forward via jax.eval_shape: no FLOPs, no compile."""

  def f() -> tuple[Any, Any]:
    x = jnp.zeros(shape, dtype)
    variables = model.init(jax.random.key(0), x, train=False)
    return variables, model.apply(variables, x, train=False)

  return jax.eval_shape(f)


# ---------------------------------------------------------------- shapes

SHAPE_CASES = [
    ("convnet_d3", (3, 28, 28, 1)),
    ("convnet_d3", (3, 32, 32, 3)),
    ("convnet_d3_pad3", (3, 28, 28, 1)),
    ("convnet_d4", (2, 64, 64, 3)),
    ("resnet18_cifar", (2, 32, 32, 3)),
    ("resnet18", (2, 64, 64, 3)),
    ("resnet50", (2, 64, 64, 3)),
    ("resnet50_cifar", (2, 32, 32, 3)),
]


@pytest.mark.parametrize("name,shape", SHAPE_CASES)
def test_output_shape_abstract(name: str, shape: tuple[int, ...]) -> None:
  """Every registry name yields float32 [batch, num_classes] logits."""
  _, logits = _abstract_init(create_model(name, num_classes=7), shape)
  assert logits.shape == (shape[0], 7)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (3, 32, 32, 3)])
def test_convnet_real_forward(shape: tuple[int, ...]) -> None:
  """ConvNet actually runs (cheap enough on CPU) and gives finite logits."""
  model = create_model("convnet_d3", num_classes=10, width=32)

  def f(x: jax.Array) -> jax.Array:
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=True)

  logits = _run(f, jax.random.normal(jax.random.key(1), shape))
  chex.assert_shape(logits, (shape[0], 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


def test_bf16_body_returns_float32_logits() -> None:
  """Low-precision compute still returns float32 logits (loss stability)."""
  for name in ("convnet_d3", "resnet18_cifar"):
    _, logits = _abstract_init(create_model(name, 10, dtype=jnp.bfloat16), (2, 32, 32, 3))
    assert logits.dtype == jnp.float32


def test_imagenet_stem_downsamples_32x() -> None:
  """torchvision geometry: 224px -> 7x7 final feature map (stem conv pad 3, max-pool pad 1)."""

  def f() -> Any:
    model = create_model("resnet18", 10)
    x = jnp.zeros((1, 224, 224, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    return state["intermediates"]["layer4_1"]["__call__"][0]

  assert jax.eval_shape(f).shape == (1, 7, 7, 512)


# ---------------------------------------------------------------- parameter counts


def test_resnet18_imagenet_param_count() -> None:
  """Matches torchvision resnet18(num_classes=1000) exactly."""
  variables, _ = _abstract_init(create_model("resnet18", 1000), (1, 224, 224, 3))
  assert count_params(variables["params"]) == 11_689_512


def test_resnet50_imagenet_param_count() -> None:
  """Matches torchvision resnet50(num_classes=1000) exactly."""
  variables, _ = _abstract_init(create_model("resnet50", 1000), (1, 224, 224, 3))
  assert count_params(variables["params"]) == 25_557_032


def test_convnet_d3_param_count() -> None:
  """ConvNet-D3, width 128, 32x32x3, 10 classes: 320,010 params (the DC/DM/MTT figure).

  conv1: 3*3*3*128 + 128     =   3,584   norm1 affine: 2*128 = 256
  conv2: 3*3*128*128 + 128   = 147,584   norm2 affine:           256
  conv3: 3*3*128*128 + 128   = 147,584   norm3 affine:           256
  dense: (4*4*128)*10 + 10   =  20,490   (32 -> 16 -> 8 -> 4 after three pools)
  total: 3,584 + 3*256 + 2*147,584 + 20,490 = 320,010
  """
  variables, _ = _abstract_init(create_model("convnet_d3", 10), (1, 32, 32, 3))
  assert count_params(variables["params"]) == 320_010


def test_convnet_d3_pad3_is_the_dc_codes_one_channel_geometry() -> None:
  """The DC code pads a 1-channel ConvNet's first conv by 3 (VICO-UoE/DatasetCondensation
  networks.py, ConvNet._make_layers line 99): 28 px become 32 px after it, so the classifier reads
  4×4 maps (its `shape_feat` treats 28-px inputs as 32 px, lines 95-96); padded by 1, 3×3 maps.

  Width 128, 28x28x1, 10 classes: conv1 1*3*3*128 + 128 = 1,280; norms 3*256 = 768; conv2, conv3
  2*147,584 = 295,168; dense (4*4*128)*10 + 10 = 20,490 → 317,706; with 3×3 maps the dense layer
  has 3*3*128*10 + 10 = 11,530 → 308,746.
  """

  def first_conv_output(name: str) -> Any:
    model = create_model(name, 10)
    x = jnp.zeros((1, 28, 28, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    return variables, state["intermediates"]["conv0"]["__call__"][0]

  for name, side, params in (("convnet_d3_pad3", 32, 317_706), ("convnet_d3", 28, 308_746)):
    variables, conv0 = jax.eval_shape(lambda name=name: first_conv_output(name))
    assert conv0.shape == (1, side, side, 128), name
    assert count_params(variables["params"]) == params, name
  assert create_model("convnet_d3", 10).first_padding == 1
  assert create_model("convnet_d4", 10).first_padding == 1


def test_first_padding_is_a_registry_choice_and_negative_is_refused() -> None:
  """model_kwargs stay {width, norm}: the registry fixes the padding, so configs and identities
  written before it existed are unchanged; a negative padding fails at the first call."""
  assert set(model_kwargs_defaults("convnet_d3")) == {"width", "norm"}
  assert set(model_kwargs_defaults("convnet_d3_pad3")) == {"width", "norm"}
  with pytest.raises(ValueError, match="first_padding -1 must be >= 0"):
    _abstract_init(ConvNet(num_classes=10, first_padding=-1), (1, 28, 28, 1))


def test_count_params_on_concrete_arrays() -> None:
  """count_params works on real arrays too, not only ShapeDtypeStructs."""
  assert count_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(4), jnp.zeros(())]}) == 11


# ---------------------------------------------------------------- normalisation / batch_stats


def test_convnet_instance_norm_has_no_batch_stats() -> None:
  """Instance/no norm ConvNets carry only 'params', so the trainer needs no mutable state."""
  for norm in ("instance", "none"):
    model = create_model("convnet_d3", 10, norm=norm)
    variables, _ = _abstract_init(model, (2, 32, 32, 3))
    assert set(variables) == {"params"}
    assert not has_batch_norm(model)
  variables, _ = _abstract_init(create_model("convnet_d3", 10, norm="none"), (2, 32, 32, 3))
  assert all("norm" not in k for k in variables["params"])


def test_has_batch_norm_matches_variables() -> None:
  """has_batch_norm(model) agrees with "'batch_stats' in variables" for every model."""
  # Same (model, shape) pairs as the shape tests, so the cached traces are reused.
  cases = [(create_model(n, 7), shape) for n, shape in dict(SHAPE_CASES).items()]
  cases.append((create_model("convnet_d3", 7, norm="batch"), (1, 32, 32, 3)))
  for model, shape in cases:
    variables, _ = _abstract_init(model, shape)
    assert has_batch_norm(model) == ("batch_stats" in variables), model


def test_has_batch_norm_rejects_unknown_module() -> None:
  """Unknown module types raise instead of guessing."""
  with pytest.raises(TypeError):
    has_batch_norm(nn.Dense(3))


def _bn_roundtrip(model: Any, x: jax.Array) -> Any:
  """Init, one train-mode step (mutable batch_stats) and one eval-mode forward in one compile."""

  def f(x: jax.Array) -> Any:
    variables = model.init(jax.random.key(0), x, train=False)
    train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_logits = model.apply(variables, x, train=False)
    return variables, train_logits, updates, eval_logits

  return _run(f, x)


@pytest.mark.parametrize(
    "model,shape",
    [
        (ConvNet(num_classes=10, width=16, norm="batch"), (4, 16, 16, 3)),
        # Narrow one-block-per-stage ResNets exercise the same BN/block code as ResNet-18/50 at a
        # fraction of the CPU init cost (full-width init alone is ~11M RNG draws).
        # zero_init_residual=True here so the same compile also covers that option.
        (ResNet((1, 1, 1, 1), BasicBlock, 10, stem="cifar", width=8, zero_init_residual=True),
         (2, 8, 8, 3)),
        (ResNet((1, 1, 1, 1), Bottleneck, 10, stem="imagenet", width=4, zero_init_residual=True),
         (2, 16, 16, 3)),
    ],
    ids=["convnet_batch", "resnet_basic", "resnet_bottleneck"],
)
def test_batch_norm_train_updates_and_eval_uses_running_stats(model: Any,
                                                              shape: tuple[int, ...]) -> None:
  """Train mode updates batch_stats; eval mode normalises with running stats, so outputs differ."""
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), shape)  # far from init stats (mean 0, var 1)
  # NumPy for the checks: eager jnp ops would compile once per distinct leaf shape (slow on CPU).
  variables, train_logits, updates, eval_logits = jax.device_get(_bn_roundtrip(model, x))
  assert "batch_stats" in variables and set(updates) == {"batch_stats"}
  chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
  old = jax.tree_util.tree_leaves(variables["batch_stats"])
  new = jax.tree_util.tree_leaves(updates["batch_stats"])
  moved = [not np.allclose(a, b) for a, b in zip(old, new, strict=True)]
  assert all(moved), "every running mean/var should move"
  chex.assert_tree_all_finite((train_logits, eval_logits))
  assert not np.allclose(train_logits, eval_logits, atol=1e-3)
  if isinstance(model, ResNet):
    # Zero-initialised last BN scale in each residual block; other BN scales stay at one.
    last = "conv_bn2" if model.block_cls is BasicBlock else "conv_bn3"
    for i in range(1, 5):
      block = variables["params"][f"layer{i}_0"]
      assert np.all(block[last]["bn"]["scale"] == 0.0)
      assert np.all(block["conv_bn1"]["bn"]["scale"] == 1.0)
      if "downsample" in block:
        assert np.all(block["downsample"]["bn"]["scale"] == 1.0)


def test_zero_init_residual_defaults_off() -> None:
  """Default matches torchvision (zero_init_residual=False)."""
  for name in ("resnet18", "resnet50_cifar"):
    assert create_model(name, 10).zero_init_residual is False


# ---------------------------------------------------------------- registry


def test_unknown_model_name_lists_valid_names() -> None:
  """Unknown names raise ValueError that lists every valid name."""
  with pytest.raises(ValueError) as err:
    create_model("vgg11", 10)
  for name in MODEL_NAMES:
    assert name in str(err.value)


def test_registry_names_and_configs() -> None:
  """Registry exposes exactly the documented names with the right depth/stem."""
  assert set(MODEL_NAMES) == {
      "convnet_d3", "convnet_d3_pad3", "convnet_d4", "resnet18", "resnet18_cifar", "resnet50",
      "resnet50_cifar"
  }
  assert create_model("convnet_d3", 10).depth == 3
  assert create_model("convnet_d3_pad3", 10).depth == 3
  assert create_model("convnet_d3_pad3", 10).first_padding == 3
  assert create_model("convnet_d4", 10).depth == 4
  assert create_model("resnet18", 10).stem == "imagenet"
  assert create_model("resnet18_cifar", 10).stem == "cifar"
  assert tuple(create_model("resnet50", 10).stage_sizes) == (3, 4, 6, 3)
  assert create_model("resnet50_cifar", 10).stem == "cifar"


def test_invalid_norm_and_stem_raise() -> None:
  """Typos in norm/stem fail loudly at first call."""
  with pytest.raises(ValueError, match="norm"):
    _abstract_init(create_model("convnet_d3", 10, norm="layer"), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="stem"):
    _abstract_init(create_model("resnet18", 10, stem="tiny"), (1, 32, 32, 3))


# ---------------------------------------------------------------- direct instance norm


def test_instance_norm_equals_groupnorm_per_channel() -> None:
  """ConvNet's direct instance norm computes what GroupNorm(num_groups=C) computed (the DD
  reference's `GroupNorm(C, C, affine=True)`): same outputs and gradients within float32
  tolerance, same parameter names and shapes, so checkpoints of either load into the other."""
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((4, 8, 8, 16)) * 3.0 + 1.5).astype(np.float32)
  direct, grouped = InstanceNorm(epsilon=1e-5), nn.GroupNorm(num_groups=16, epsilon=1e-5)
  variables = grouped.init(jax.random.key(0), x)
  direct_shapes = jax.tree.map(jnp.shape, direct.init(jax.random.key(0), x))
  assert direct_shapes == jax.tree.map(jnp.shape, variables)
  variables = {
      "params": {
          "scale": jnp.asarray(rng.uniform(0.5, 2, 16), jnp.float32),
          "bias": jnp.asarray(rng.standard_normal(16), jnp.float32)
      }
  }
  weights = rng.standard_normal(x.shape).astype(np.float32)
  loss = lambda module: lambda v, x: jnp.sum(jnp.tanh(module.apply(v, x)) * weights)
  np.testing.assert_allclose(direct.apply(variables, x), grouped.apply(variables, x), atol=1e-5,
                             rtol=1e-5)
  for got, want in zip(
      jax.grad(loss(direct), argnums=(0, 1))(variables, x),
      jax.grad(loss(grouped), argnums=(0, 1))(variables, x), strict=True):
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)
  # Each sample's channel is normalised on its own: zero mean, unit variance over H, W.
  unit_affine = {"params": {"scale": jnp.ones(16), "bias": jnp.zeros(16)}}
  normalised = np.asarray(direct.apply(unit_affine, x))
  np.testing.assert_allclose(normalised.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(normalised.var(axis=(1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(4, 8, 8, 16), (3, 5, 7, 4), (2, 1, 1, 3)])
def test_instance_norm_backward_equals_autodiff(shape) -> None:
  """The hand-written VJP against autodiff of the same forward, to float32 tolerance: on random
  activations (non-square H, W; a 1×1 map, whose variance is 0), a constant channel, and at
  large |mean| / std (where E[x²] − E[x]² loses digits)."""
  rng = np.random.default_rng(1)
  x = (rng.standard_normal(shape) * 3.0 + 1.5).astype(np.float32)
  x[0, ..., 0] = 2.0  # a constant channel: variance 0, the clipped branch
  x[-1, ..., -1] = x[-1, ..., -1] * 0.01 + 40.0  # mean 4,000 standard deviations from 0
  scale = rng.uniform(0.5, 2, shape[-1]).astype(np.float32)
  bias = rng.standard_normal(shape[-1]).astype(np.float32)
  weights = rng.standard_normal(shape).astype(np.float32)

  def loss(norm):
    return lambda x, s, b: jnp.sum(jnp.tanh(norm(x, s, b, 1e-5)) * weights)

  np.testing.assert_allclose(instance_norm(x, scale, bias, 1e-5),
                             instance_norm_autodiff(x, scale, bias, 1e-5), rtol=0, atol=0)
  got = jax.jit(jax.grad(loss(instance_norm), argnums=(0, 1, 2)))(x, scale, bias)
  want = jax.jit(jax.grad(loss(instance_norm_autodiff), argnums=(0, 1, 2)))(x, scale, bias)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4 * float(np.max(np.abs(w))))
  # The model's norm uses it, under bf16 compute too (statistics and VJP in float32).
  module = InstanceNorm(epsilon=1e-5, dtype=jnp.bfloat16)
  variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
  out = module.apply(variables, jnp.asarray(x, jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(out, np.float32),
      instance_norm_autodiff(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), scale, bias),
      rtol=1e-2, atol=5e-2)


def test_convnet_params_load_a_groupnorm_convnet_checkpoint() -> None:
  """A ConvNet-D3 whose norms were nn.GroupNorm(C) (the previous implementation) gives the same
  logits as today's with the same parameter tree."""

  class GroupNormConvNet(nn.Module):

    @nn.compact
    def __call__(self, x):
      for i in range(3):
        x = nn.Conv(8, (3, 3), padding="SAME", name=f"conv{i}")(x)
        x = nn.GroupNorm(num_groups=8, epsilon=1e-5, name=f"norm{i}")(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
      return nn.Dense(5, name="classifier")(x.reshape((x.shape[0], -1)))

  x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)
  old = GroupNormConvNet()
  variables = old.init(jax.random.key(3), x)
  variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape),
                           variables)
  new = create_model("convnet_d3", 5, width=8)
  new_variables = new.init(jax.random.key(0), x, train=False)
  assert jax.tree.structure(new_variables) == jax.tree.structure(variables)
  np.testing.assert_allclose(new.apply(variables, x, train=False), old.apply(variables, x),
                             atol=1e-5, rtol=1e-5)
