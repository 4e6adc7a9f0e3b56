"""Where a ConvNet-D3 train step spends its time, JAX vs PyTorch: forward, backward, norm, conv.

  python -m hardlabel_jax.benchmarks.step_profile            # width 128, batch 64, 32×32×3
  python -m hardlabel_jax.benchmarks.step_profile --quick    # seconds: width 16, batch 8

`train_step` reports whole steps; this splits one into parts, each timed as a jitted JAX program
and as the same PyTorch computation: the forward pass and forward+backward of the model with its
instance norm and without it (so the norm's share shows), the first layer's instance norm alone
(by autodiff of its forward and by the model's hand-written VJP, against PyTorch's
GroupNorm(C, C)), and one 3×3 convolution of the middle layer alone (forward, and the gradients
of input and kernel). PyTorch is required.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hardlabel_jax import losses
from hardlabel_jax import models
from hardlabel_jax.benchmarks import report
from hardlabel_jax.models import convnet

NUM_CLASSES = 100
COLUMNS = (("part", "part", report.fmt_text), ("jax_ms", "JAX ms", report.fmt_number),
           ("torch_ms", "PyTorch ms", report.fmt_number),
           ("jax_over_torch_time", "JAX time / PyTorch time", report.fmt_ratio))


def _milliseconds(fn: Callable[[], Any], calls: int, repeats: int) -> float:
  """Median over repeats of the mean time of `calls` calls, after two warm-up calls."""
  import time  # pylint: disable=g-import-not-at-top
  fn()
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - start) / calls * 1000)
  return report.median(times)


def jax_parts(width: int, batch: int, calls: int, repeats: int) -> dict[str, float]:
  """Milliseconds of each part in JAX (jitted, one device)."""
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
  targets = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]
  parts = {}
  for norm in ("instance", "none"):
    model = models.create_model("convnet_d3", NUM_CLASSES, width=width, norm=norm)
    params = model.init(jax.random.key(0), images, train=False)["params"]
    forward = jax.jit(lambda p: model.apply({"params": p}, images, train=True))
    gradient = jax.jit(
        jax.grad(lambda p: losses.soft_cross_entropy(model.apply({"params": p}, images, train=True),
                                                     targets)))
    parts[f"forward, norm={norm}"] = _milliseconds(lambda: jax.block_until_ready(forward(params)),
                                                   calls, repeats)
    parts[f"forward+backward, norm={norm}"] = _milliseconds(
        lambda: jax.block_until_ready(gradient(params)), calls, repeats)
  # The first layer's norm alone (the largest activations), by autodiff of its forward and by
  # the model's hand-written VJP, followed as in the model by a ReLU (then a fixed projection).
  activations = rng.standard_normal((batch, 32, 32, width)).astype(np.float32)
  projection = rng.standard_normal(activations.shape).astype(np.float32)
  scale, bias = np.ones(width, np.float32), np.zeros(width, np.float32)
  for label, norm_fn in (("autodiff", convnet.instance_norm_autodiff), ("custom VJP",
                                                                        convnet.instance_norm)):
    norm_grads = jax.jit(
        jax.grad(lambda a, s, b, f=norm_fn: jnp.sum(jax.nn.relu(f(a, s, b)) * projection),
                 argnums=(0, 1, 2)))
    parts[f"instance norm 32×32, forward+backward ({label})"] = _milliseconds(
        lambda g=norm_grads: jax.block_until_ready(g(activations, scale, bias)), calls, repeats)
  hidden = rng.standard_normal((batch, 16, 16, width)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, width, width)) * 0.05).astype(np.float32)
  conv = lambda h, k: jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=(
      "NHWC", "HWIO", "NHWC"))
  conv_forward = jax.jit(conv)
  conv_grads = jax.jit(jax.grad(lambda h, k: conv(h, k).sum(), argnums=(0, 1)))
  parts["one conv 16×16, forward"] = _milliseconds(
      lambda: jax.block_until_ready(conv_forward(hidden, kernel)), calls, repeats)
  parts["one conv 16×16, input+kernel grads"] = _milliseconds(
      lambda: jax.block_until_ready(conv_grads(hidden, kernel)), calls, repeats)
  return parts


def torch_parts(width: int, batch: int, calls: int, repeats: int) -> dict[str, float]:
  """Milliseconds of the same parts in PyTorch (CPU threads = cores)."""
  import torch  # pylint: disable=g-import-not-at-top

  from hardlabel_jax.benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(report.cpu_cores())
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
  targets = torch.from_numpy(
      np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)])
  parts = {}
  for norm in ("instance", "none"):
    model = torch_models.create_model("convnet_d3", NUM_CLASSES, width, 3, 32)
    if norm == "none":
      model.features = torch.nn.Sequential(
          *[layer for layer in model.features if not isinstance(layer, torch.nn.GroupNorm)])

    def forward():
      with torch.no_grad():
        model(images)

    def gradient():
      model.zero_grad()
      logits = model(images)
      torch.sum(-targets * torch.log_softmax(logits, -1), -1).mean().backward()

    parts[f"forward, norm={norm}"] = _milliseconds(forward, calls, repeats)
    parts[f"forward+backward, norm={norm}"] = _milliseconds(gradient, calls, repeats)
  group_norm = torch.nn.GroupNorm(width, width, affine=True)
  activations = torch.from_numpy(rng.standard_normal(
      (batch, width, 32, 32)).astype(np.float32)).requires_grad_()
  projection = torch.from_numpy(rng.standard_normal(tuple(activations.shape)).astype(np.float32))

  def norm_grads():
    group_norm.zero_grad()
    activations.grad = None
    (torch.relu(group_norm(activations)) * projection).sum().backward()

  # One PyTorch reference (GroupNorm(C, C), the DD code's) for both JAX rows.
  norm_ms = _milliseconds(norm_grads, calls, repeats)
  for label in ("autodiff", "custom VJP"):
    parts[f"instance norm 32×32, forward+backward ({label})"] = norm_ms
  conv = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
  hidden = torch.from_numpy(rng.standard_normal(
      (batch, width, 16, 16)).astype(np.float32)).requires_grad_()

  def conv_forward():
    with torch.no_grad():
      conv(hidden)

  def conv_grads():
    conv.zero_grad()
    hidden.grad = None
    conv(hidden).sum().backward()

  parts["one conv 16×16, forward"] = _milliseconds(conv_forward, calls, repeats)
  parts["one conv 16×16, input+kernel grads"] = _milliseconds(conv_grads, calls, repeats)
  return parts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="width 16, batch 8, 2 calls × 2")
  parser.add_argument("--out", default="benchmark_step_profile.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.width, args.batch, args.calls, args.repeats = 16, 8, 2, 2
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Times every part in both frameworks, prints the table, writes `--out`."""
  args = parse_args(argv)
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool
  report.warn_if_busy()
  timing = dict(width=args.width, batch=args.batch, calls=args.calls, repeats=args.repeats)
  in_jax, in_torch = jax_parts(**timing), torch_parts(**timing)
  rows = [{
      "part": part,
      "jax_ms": in_jax[part],
      "torch_ms": in_torch[part],
      "jax_over_torch_time": in_jax[part] / in_torch[part]
  } for part in in_jax]
  payload = {
      "benchmark": "step_profile",
      "environment": report.environment(),
      "settings": {
          **timing, "model": "convnet_d3",
          "image_shape": [32, 32, 3]
      },
      "rows": rows
  }
  report.print_table(
      f"ConvNet-D3 (width {args.width}, batch {args.batch}): where a step's time "
      "goes", rows, COLUMNS)
  report.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
