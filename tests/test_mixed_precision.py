"""Mixed precision: `compute_dtype` runs activations in bf16, keeps parameters, BN statistics,
logits, losses and the optimizer in float32, and trains as well as float32."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import models
from hardlabel_jax import plan

EMBEDDED_HL = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "embedded_hl.py")


def test_auto_is_bfloat16_on_accelerators_and_float32_on_cpu():
  assert models.resolve_compute_dtype("auto", "cpu") == jnp.float32
  assert models.resolve_compute_dtype("auto", "gpu") == jnp.bfloat16
  assert models.resolve_compute_dtype("auto", "tpu") == jnp.bfloat16
  assert models.resolve_compute_dtype("bfloat16", "cpu") == jnp.bfloat16
  assert models.resolve_compute_dtype("float32", "tpu") == jnp.float32
  with pytest.raises(ValueError, match="float16"):
    models.resolve_compute_dtype("float16")
  config = config_schema.default_config()
  config.compute_dtype = "fp8"
  with pytest.raises(ValueError, match="config.compute_dtype"):
    config_schema.validate(config)


@pytest.mark.parametrize("name,kwargs", [("convnet_d3", {
    "width": 8
}), ("convnet_d3", {
    "width": 8,
    "norm": "batch"
}), ("resnet18_cifar", {
    "width": 4
})])
def test_bf16_body_float32_parameters_statistics_and_logits(name, kwargs):
  config = {"model": name, "model_kwargs": kwargs, "compute_dtype": "bfloat16"}
  model = models.model_from_config(config, 5)
  images = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype(np.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True))(
          variables, images)
  assert logits.dtype == jnp.float32
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree.leaves(state.get("batch_stats", {})):
    assert leaf.dtype == jnp.float32
  convs = [
      v for path, v in jax.tree_util.tree_leaves_with_path(state["intermediates"])
      if "conv" in jax.tree_util.keystr(path).lower()
  ]
  assert convs and all(v.dtype == jnp.bfloat16 for v in convs)
  # Old run configs (no compute_dtype) trained in float32.
  legacy = models.model_from_config({"model": name, "model_kwargs": kwargs}, 5)
  assert legacy.dtype == jnp.float32


@pytest.mark.slow
def test_bf16_trains_embedded_hl_within_one_point_of_float32(tmp_path):
  """configs/embedded_hl.py's recipe (2 epochs, width 32, one device): bf16 vs float32 top-1."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = config_schema.load_config_file(EMBEDDED_HL)
    config.num_epochs, config.model_kwargs.width = 2, 32
    config.compute_dtype, config.tensorboard = dtype, False
    out = plan.train(config, str(tmp_path / dtype), devices=jax.devices()[:1])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out.state.params))
    assert all(leaf.dtype == jnp.float32
               for leaf in jax.tree.leaves(out.state.opt_state)
               if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating))
    results[dtype] = out.results["test_top1"]
  print(f"embedded_hl, 2 epochs, width 32: test top-1 {results}")
  assert results["float32"] > 0.9, results
  assert abs(results["bfloat16"] - results["float32"]) <= 0.01, results
