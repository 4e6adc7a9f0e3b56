"""Train-step throughput: the library's jitted HL, SL, SL+KD and HALD steps against PyTorch.

  python -m hardlabel_jax.benchmarks.train_step          # 2 models × 5 steps × 3 batch sizes
  python -m hardlabel_jax.benchmarks.train_step --quick  # seconds: tiny ConvNet, batch 16

For ConvNet-D3 and ResNet-18 (CIFAR stem) on 32×32×3 inputs with 100 classes, each row times one
regime's step at one global batch, on a mesh of all local devices, built exactly as the trainer
builds it (`train_steps.jit_train_step`; SGD momentum 0.9, weight decay 5e-4 on kernels only, from
`optim.make_optimizer`). Next to it, the same step in PyTorch on the same batch: the twin
architecture (`torch_models`), the same loss and the same optimizer. HALD trains in phases, so its
soft step (stored labels, KL at T, weight T²) and hard step (CutMix-mixed one-hot targets with
label smoothing 0.8) are timed as separate rows; `hybrid` (λ·CE + (1−λ)·KL per step) is optional.
Rates are the median over repeats of timed runs of N steps after a warm-up; the JAX compile time
is reported separately. PyTorch runs on CUDA when its build has it, else on the CPU with one
thread per core. PyTorch is optional (`pip install -e .[bench]`); without it only JAX is timed.
On a 2-core CPU the full ResNet-18 grid takes hours: time it on an accelerator, or pass e.g.
`--models resnet18_cifar --batch_sizes 64 --steps 3`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hardlabel_jax import config_schema
from hardlabel_jax import losses
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import optim
from hardlabel_jax import train_state as train_state_lib
from hardlabel_jax import train_steps
from hardlabel_jax.benchmarks import report

MODELS = ("convnet_d3", "resnet18_cifar")
DEFAULT_WIDTHS = {"convnet_d3": 128, "resnet18_cifar": 64}
REGIMES = ("hl", "sl", "sl_kd", "hald_soft", "hald_hard")
OPTIONAL_REGIMES = ("hybrid",)  # HALD's per-step ablation λ·CE + (1−λ)·KL
IMAGE_SIZE, CHANNELS, NUM_CLASSES = 32, 3, 100
TEMPERATURE = losses.DD_SOFT_LABEL_TEMPERATURE
HALD_LABEL_SMOOTHING = 0.8
HALD_SOFT_WEIGHT = TEMPERATURE**2  # configs/embedded_hald.py's soft_loss_weight
HYBRID_HARD_WEIGHT = 0.5
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
QUICK_WIDTHS = {"convnet_d3": 16, "resnet18_cifar": 8}
QUICK_MODELS = ("convnet_d3",)
TORCH_MISSING = "PyTorch not installed: pip install -e .[bench]"


def optimizer_config() -> ml_collections.ConfigDict:
  """The optimizer fields of a trainer config: SGD, momentum 0.9, wd 5e-4, constant lr."""
  config = config_schema.default_config()
  config.optimizer, config.learning_rate = "sgd", LEARNING_RATE
  config.momentum, config.nesterov, config.weight_decay = MOMENTUM, False, WEIGHT_DECAY
  config.schedule = "constant"
  return config


def make_batch(regime: str, batch_size: int, image_shape: tuple[int, int, int], num_classes: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """A host batch with every field the regime's step reads (random, fixed by `seed`)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  batch = {
      "image": rng.standard_normal((batch_size, *image_shape), np.float32),
      "label": labels,
      "partner_label": labels,
      "mix_lambda": np.ones(batch_size, np.float32)
  }
  if regime in ("hald_hard", "hybrid"):
    # HALD's hard phase (and the hybrid) CutMix every batch: partners and λ < 1 mix the targets.
    batch["partner_label"] = rng.integers(0, num_classes, batch_size).astype(np.int32)
    batch["mix_lambda"] = rng.uniform(0.2, 1.0, batch_size).astype(np.float32)
  if regime in ("sl", "hald_soft", "hybrid"):
    logits = rng.standard_normal((batch_size, num_classes)).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    batch["soft_label"] = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
  return batch


@dataclasses.dataclass
class JaxStep:
  """A compiled step and the state it threads through (the state buffer is donated)."""

  compiled: Callable
  state: Any
  batch: dict[str, jax.Array]
  extra: tuple
  compile_seconds: float
  num_params: int

  def __call__(self) -> Any:
    self.state, metrics = self.compiled(self.state, self.batch, *self.extra)
    return self.state, metrics


class JaxModel:
  """A model with its optimizer and one initial train state, copied for every step built on it."""

  def __init__(self, model_name: str, width: int, mesh: jax.sharding.Mesh, *,
               image_size: int = IMAGE_SIZE, channels: int = CHANNELS,
               num_classes: int = NUM_CLASSES, seed: int = 0, compute_dtype: str = "float32"):
    self.mesh, self.num_classes = mesh, num_classes
    self.image_shape = (image_size, image_size, channels)
    self.model = models.model_from_config(
        {
            "model": model_name,
            "model_kwargs": {
                "width": width
            },
            "compute_dtype": compute_dtype
        }, num_classes)
    config = optimizer_config()
    self.schedule = optim.learning_rate_schedule(config, total_steps=1000, steps_per_epoch=10.0)
    self.tx = optim.make_optimizer(config, self.schedule)
    init_rng, self.step_rng = jax.random.split(jax.random.key(seed))
    replicated = mesh_lib.replicated(mesh)
    self.initial_state = jax.jit(
        functools.partial(train_state_lib.create_train_state, self.model, self.tx,
                          input_shape=(1, *self.image_shape)), out_shardings=replicated)(init_rng)
    # Steps donate their state, so each gets fresh buffers (one init compile per model, not per
    # step); the SL+KD teacher is another copy (its values do not change the step's cost).
    self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=replicated)
    self.num_params = models.count_params(self.initial_state.params)

  def fresh_state(self) -> train_state_lib.TrainState:
    return self._copy(self.initial_state)

  def step(self, regime: str, batch_size: int, seed: int = 0) -> "JaxStep":
    """The regime's train step, built as the trainer builds it, compiled ahead of time."""
    mesh, num_classes = self.mesh, self.num_classes
    mesh_lib.check_divisible(batch_size, mesh)
    common = dict(model=self.model, tx=self.tx, schedule=self.schedule, base_rng=self.step_rng)
    extra = ()
    if regime == "hl":
      step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, num_classes=num_classes,
                                        label_smoothing=0.0, **common)
    elif regime == "hald_hard":
      step = train_steps.jit_train_step(train_steps.hl_train_step, mesh, num_classes=num_classes,
                                        label_smoothing=HALD_LABEL_SMOOTHING, **common)
    elif regime in ("sl", "hald_soft"):
      weight = HALD_SOFT_WEIGHT if regime == "hald_soft" else 1.0
      step = train_steps.jit_train_step(train_steps.sl_train_step, mesh, temperature=TEMPERATURE,
                                        soft_weight=weight, **common)
    elif regime == "hybrid":
      step = train_steps.jit_train_step(train_steps.hybrid_train_step, mesh,
                                        num_classes=num_classes,
                                        label_smoothing=HALD_LABEL_SMOOTHING,
                                        temperature=TEMPERATURE, hard_weight=HYBRID_HARD_WEIGHT,
                                        soft_weight=HALD_SOFT_WEIGHT, **common)
    elif regime == "sl_kd":
      # The trainer's SL+KD: registry `kl` at T against the teacher (same architecture, eval
      # mode) queried on the same batch inside the step.
      step = train_steps.jit_train_step(
          train_steps.kd_train_step, mesh, num_replicated_args=1, teacher_model=self.model,
          distillation_loss=losses.get_distillation_loss("kl", False, temperature=TEMPERATURE),
          warmup_epochs=0.0, steps_per_epoch=10.0, **common)
      extra = (self.fresh_state().variables(),)
    else:
      raise ValueError(f"unknown regime {regime!r}; have "
                       f"{', '.join(REGIMES + OPTIONAL_REGIMES)}")
    batch = mesh_lib.global_batch(
        make_batch(regime, batch_size, self.image_shape, num_classes, seed), mesh)
    state = self.fresh_state()
    start = time.perf_counter()
    compiled = step.lower(state, batch, *extra).compile()
    compile_seconds = time.perf_counter() - start
    return JaxStep(compiled, state, batch, extra, compile_seconds, self.num_params)


def measure(step: Callable[[], Any], sync: Callable[[Any], Any], batch_size: int, *, steps: int,
            repeats: int, warmup: int) -> dict[str, Any]:
  """Median examples/s over `repeats` timed runs of `steps` steps, after `warmup` steps."""
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = step()
    sync(out)  # JAX dispatches asynchronously: the clock stops when the last step is done
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return {"examples_per_sec": report.median(rates), "repeat_rates": rates}


def measure_jax(step: JaxStep, batch_size: int, *, steps: int, repeats: int,
                warmup: int) -> dict[str, Any]:
  """`measure` for a compiled JAX step, plus its compile time and parameter count."""
  result = measure(step, jax.block_until_ready, batch_size, steps=steps, repeats=repeats,
                   warmup=warmup)
  return {**result, "compile_seconds": step.compile_seconds, "num_params": step.num_params}


def torch_available() -> bool:
  """Whether PyTorch can be imported (it is the optional `bench` extra)."""
  try:
    importlib.import_module("torch")
  except ImportError:
    return False
  return True


class TorchStep:
  """The same step in PyTorch: twin model, same batch, same loss, same SGD (eager, NCHW)."""

  def __init__(self, model_name: str, width: int, regime: str, batch: dict[str, np.ndarray],
               num_classes: int, seed: int = 0):
    import torch  # pylint: disable=g-import-not-at-top

    from hardlabel_jax.benchmarks import torch_models  # pylint: disable=g-import-not-at-top

    self._torch, self._regime, self._num_classes = torch, regime, num_classes
    torch.manual_seed(seed)
    # The accelerator JAX would use, when this torch build has it (the `bench` pin is CPU-only).
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, size, _, channels = batch["image"].shape
    self.model = torch_models.create_model(model_name, num_classes, width, channels, size)
    self.model.to(self.device).train()
    self.num_params = torch_models.count_params(self.model)
    self.teacher = None
    if regime == "sl_kd":
      self.teacher = torch_models.create_model(model_name, num_classes, width, channels, size)
      self.teacher.to(self.device).eval().requires_grad_(False)
    params = list(self.model.parameters())
    # optim.decay_mask: coupled L2 on kernels (ndim > 1) only, none on biases and norm affines.
    self.optimizer = torch.optim.SGD([{
        "params": [p for p in params if p.ndim > 1],
        "weight_decay": WEIGHT_DECAY
    }, {
        "params": [p for p in params if p.ndim <= 1],
        "weight_decay": 0.0
    }], lr=LEARNING_RATE, momentum=MOMENTUM)

    def tensor(array):
      return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    self.images = tensor(batch["image"].transpose(0, 3, 1, 2))  # NHWC → PyTorch's NCHW
    self.labels = tensor(batch["label"].astype(np.int64))
    self.partner_labels = tensor(batch["partner_label"].astype(np.int64))
    self.mix_lambda = tensor(batch["mix_lambda"])[:, None]
    self.soft_label = tensor(batch["soft_label"]) if "soft_label" in batch else None

  def sync(self, _: Any) -> None:
    """Waits for queued GPU work; on the CPU every op has finished when it returns."""
    if self.device.type == "cuda":
      self._torch.cuda.synchronize()

  def _hard_targets(self, smoothing: float) -> Any:
    """`train_steps.hard_label_targets`: smoothed one-hot, CutMix-mixed with the partner's."""
    functional = self._torch.nn.functional

    def smoothed(labels):
      one_hot = functional.one_hot(labels, self._num_classes).float()
      return one_hot * (1.0 - smoothing) + smoothing / self._num_classes

    lam = self.mix_lambda
    return lam * smoothed(self.labels) + (1.0 - lam) * smoothed(self.partner_labels)

  def _loss(self, logits: Any) -> Any:
    torch = self._torch
    functional = torch.nn.functional

    def soft_ce(targets):
      return -(targets * functional.log_softmax(logits, -1)).sum(-1).mean()

    def kl_at_t(log_q):  # KL(q ‖ softmax(z/T)), batch mean, no T² (losses.kl_soft_loss)
      return functional.kl_div(functional.log_softmax(logits / TEMPERATURE, -1), log_q,
                               reduction="batchmean", log_target=True)

    regime = self._regime
    if regime == "hl":
      return soft_ce(self._hard_targets(0.0))
    if regime == "hald_hard":
      return soft_ce(self._hard_targets(HALD_LABEL_SMOOTHING))
    if regime in ("sl", "hald_soft", "hybrid"):
      weight = 1.0 if regime == "sl" else HALD_SOFT_WEIGHT
      soft = weight * kl_at_t(torch.log(self.soft_label))
      if regime != "hybrid":
        return soft
      hard = soft_ce(self._hard_targets(HALD_LABEL_SMOOTHING))
      return HYBRID_HARD_WEIGHT * hard + (1.0 - HYBRID_HARD_WEIGHT) * soft
    if regime == "sl_kd":
      with torch.no_grad():  # the teacher forward is part of the step, as in the JAX step
        teacher_logits = self.teacher(self.images)
      return kl_at_t(functional.log_softmax(teacher_logits / TEMPERATURE, -1))
    raise ValueError(f"unknown regime {regime!r}")

  def __call__(self) -> Any:
    torch = self._torch
    self.optimizer.zero_grad(set_to_none=True)
    logits = self.model(self.images)
    loss = self._loss(logits)
    loss.backward()
    with torch.no_grad():  # the JAX step also returns accuracy and the gradient norm
      accuracy = (logits.argmax(-1) == self.labels).float().mean()
      grad_norm = torch.linalg.vector_norm(
          torch.stack([torch.linalg.vector_norm(p.grad) for p in self.model.parameters()]))
    self.optimizer.step()
    return loss, accuracy, grad_norm


def measure_torch(step: TorchStep, batch_size: int, *, steps: int, repeats: int,
                  warmup: int) -> dict[str, Any]:
  """`measure` for a PyTorch step."""
  result = measure(step, step.sync, batch_size, steps=steps, repeats=repeats, warmup=warmup)
  return {**result, "num_params": step.num_params}


def parameter_counts(model_name: str, width: int, *, image_size: int = IMAGE_SIZE,
                     channels: int = CHANNELS, num_classes: int = NUM_CLASSES) -> dict[str, int]:
  """Parameters of the JAX model and (if torch is installed) its PyTorch twin; no compute."""
  model = models.create_model(model_name, num_classes, width=width)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, image_size, image_size, channels), np.float32), train=False))
  counts = {"jax_params": models.count_params(shapes["params"])}
  if torch_available():
    from hardlabel_jax.benchmarks import torch_models  # pylint: disable=g-import-not-at-top
    counts["torch_params"] = torch_models.count_params(
        torch_models.create_model(model_name, num_classes, width, channels, image_size))
  return counts


COLUMNS: Sequence[report.Column] = (
    ("model", "model", report.fmt_text),
    ("regime", "regime", report.fmt_text),
    ("batch", "batch", report.fmt_text),
    ("jax_examples_per_sec", "JAX ex/s", report.fmt_number),
    ("torch_examples_per_sec", "PyTorch ex/s", report.fmt_number),
    ("jax_over_torch", "JAX/PyTorch", report.fmt_ratio),
    ("jax_compile_seconds", "JAX compile", report.fmt_seconds),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m hardlabel_jax.benchmarks.train_step",
      description="Examples/s of the HL, SL, SL+KD and HALD train steps, JAX vs PyTorch.")
  parser.add_argument("--models", nargs="+", default=None, choices=MODELS,
                      help=f"models to time (default: all; with --quick: {QUICK_MODELS[0]})")
  parser.add_argument("--regimes", nargs="+", default=list(REGIMES),
                      choices=REGIMES + OPTIONAL_REGIMES)
  parser.add_argument("--batch_sizes", nargs="+", type=int, default=[64, 128, 256],
                      help="global batch sizes (multiples of the device count)")
  parser.add_argument("--convnet_width", type=int, default=DEFAULT_WIDTHS["convnet_d3"])
  parser.add_argument("--resnet_width", type=int, default=DEFAULT_WIDTHS["resnet18_cifar"])
  parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is kept")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument(
      "--compute_dtype", default="float32", choices=models.COMPUTE_DTYPES,
      help="the JAX models' compute dtype (config.compute_dtype); the PyTorch "
      "twins run in float32")
  parser.add_argument("--no_torch", action="store_true", help="time the JAX steps only")
  parser.add_argument(
      "--quick", action="store_true",
      help="seconds-long smoke run: tiny widths, ConvNet only, batch 16, "
      "2 steps × 2 repeats")
  parser.add_argument("--out", default="./benchmark_train_step.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.convnet_width = QUICK_WIDTHS["convnet_d3"]
    args.resnet_width = QUICK_WIDTHS["resnet18_cifar"]
    args.batch_sizes, args.steps, args.repeats, args.warmup = [16], 2, 2, 1
  if args.models is None:
    # Each timed cell compiles a step (seconds on a CPU); a quick run times the small model only.
    args.models = list(QUICK_MODELS if args.quick else MODELS)
  return args


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Times every (model, regime, batch) cell; returns the JSON payload."""
  widths = {"convnet_d3": args.convnet_width, "resnet18_cifar": args.resnet_width}
  use_torch = not args.no_torch and torch_available()
  if not args.no_torch and not use_torch:
    print(TORCH_MISSING, flush=True)
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    # As many intra-op threads as cores; XLA's CPU client uses all of them too.
    torch.set_num_threads(report.cpu_cores())
  mesh = mesh_lib.data_mesh(jax.local_devices())
  timing = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
  rows, model_info = [], {}
  for name in MODELS:
    # Every model's count (no compute), so a quick run still checks the twins against each other.
    model_info[name] = {
        "width": widths[name],
        "timed": name in args.models,
        **parameter_counts(name, widths[name])
    }
    print(
        f"{name} (width {widths[name]}): {model_info[name]['jax_params']:,} parameters in JAX" +
        (f", {model_info[name]['torch_params']:,} in PyTorch" if use_torch else ""), flush=True)
  for name in args.models:
    jax_model = JaxModel(name, widths[name], mesh, compute_dtype=args.compute_dtype)
    for regime in args.regimes:
      for batch_size in args.batch_sizes:
        step = jax_model.step(regime, batch_size)
        jax_result = measure_jax(step, batch_size, **timing)
        del step  # frees the state before PyTorch allocates its own
        row = {
            "model": name,
            "regime": regime,
            "batch": batch_size,
            "jax_examples_per_sec": jax_result["examples_per_sec"],
            "jax_compile_seconds": jax_result["compile_seconds"],
            "jax_repeat_rates": jax_result["repeat_rates"],
            "torch_examples_per_sec": None,
            "jax_over_torch": None
        }
        if use_torch:
          batch = make_batch(regime, batch_size, (IMAGE_SIZE, IMAGE_SIZE, CHANNELS), NUM_CLASSES)
          torch_result = measure_torch(TorchStep(name, widths[name], regime, batch, NUM_CLASSES),
                                       batch_size, **timing)
          row["torch_examples_per_sec"] = torch_result["examples_per_sec"]
          row["torch_repeat_rates"] = torch_result["repeat_rates"]
          row["jax_over_torch"] = row["jax_examples_per_sec"] / row["torch_examples_per_sec"]
        rows.append(row)
        print(
            f"{name} {regime} batch {batch_size}: JAX "
            f"{report.fmt_number(row['jax_examples_per_sec'])} ex/s (compiled in "
            f"{row['jax_compile_seconds']:.1f} s), PyTorch "
            f"{report.fmt_number(row['torch_examples_per_sec'])} ex/s", flush=True)
  payload = {
      "benchmark": "train_step",
      "environment": report.environment(),
      "torch": _torch_version() if use_torch else None,
      "settings": {
          "image_shape": [IMAGE_SIZE, IMAGE_SIZE, CHANNELS],
          "num_classes": NUM_CLASSES,
          "temperature": TEMPERATURE,
          "hald_label_smoothing": HALD_LABEL_SMOOTHING,
          "hald_soft_weight": HALD_SOFT_WEIGHT,
          "learning_rate": LEARNING_RATE,
          "momentum": MOMENTUM,
          "weight_decay": WEIGHT_DECAY,
          "mesh_devices": mesh.size,
          "quick": args.quick,
          "compute_dtype": args.compute_dtype,
          **timing
      },
      "models": model_info,
      "rows": rows
  }
  return payload


def _torch_version() -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  return {
      "version": torch.__version__,
      "threads": torch.get_num_threads(),
      "device": "cuda" if torch.cuda.is_available() else "cpu"
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the table, writes `--out`; returns the payload."""
  args = parse_args(argv)
  report.warn_if_busy()
  payload = run(args)
  report.print_table(
      f"Train-step throughput (examples/s, median of {args.repeats} × {args.steps} steps; "
      f"{payload['settings']['mesh_devices']} JAX device(s))", payload["rows"], COLUMNS)
  report.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
