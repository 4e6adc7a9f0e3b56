"""SRe²L / CDA / LPLD synthesis against the official recover code (VILA-Lab/SRe2L, he-y LPLD).

Official files: SRe2L/recover/data_synthesis.py and SRe2L/recover/utils.py (BNFeatureHook, clip,
lr_cosine_policy, denormalize), SRe2L/*small_dataset/recover_cifar.py (roll-only augmentation),
CDA/recover_cda_in1k.py (cosine crop curriculum), and
he-y/soft-label-pruning-for-dataset-distillation recover/data_synthesis_class.py (class batches).
"""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hardlabel_jax import config_schema
from hardlabel_jax import image_sets
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import plan
from hardlabel_jax import run_data
from hardlabel_jax import synthesize
from hardlabel_jax import teacher as teacher_lib
from helpers import Killed
from helpers import tiny_config


class _TwoBN(nn.Module):
  """x → BN₁ → 2·y + 1 → BN₂ → mean: BN inputs a NumPy transcription can follow by hand."""

  @nn.compact
  def __call__(self, x, train):
    y = nn.BatchNorm(use_running_average=not train, epsilon=1e-5, name="bn1")(x)
    z = nn.BatchNorm(use_running_average=not train, epsilon=1e-5, name="bn2")(2 * y + 1)
    return jnp.mean(z, axis=(1, 2))


def _two_bn_variables(rng):
  return {
      "params": {
          "bn1": {
              "scale": rng.uniform(0.5, 2, 3).astype(np.float32),
              "bias": rng.normal(size=3).astype(np.float32)
          },
          "bn2": {
              "scale": np.ones(3, np.float32),
              "bias": np.zeros(3, np.float32)
          },
      },
      "batch_stats": {
          "bn1": {
              "mean": rng.normal(size=3).astype(np.float32),
              "var": rng.uniform(0.5, 2, 3).astype(np.float32)
          },
          "bn2": {
              "mean": rng.normal(size=3).astype(np.float32),
              "var": rng.uniform(0.5, 2, 3).astype(np.float32)
          },
      }
  }


def _numpy_bn_term(x, variables, first_multiplier):
  """BNFeatureHook (SRe2L/recover/utils.py) in NumPy: ‖var − rv‖₂ + ‖mean − rm‖₂ per layer."""
  stats, params = variables["batch_stats"], variables["params"]
  y = ((x - stats["bn1"]["mean"]) / np.sqrt(stats["bn1"]["var"] + 1e-5) * params["bn1"]["scale"]
       + params["bn1"]["bias"])
  total = 0.0
  for layer, (name, inputs) in enumerate((("bn1", x), ("bn2", 2 * y + 1))):
    flat = inputs.reshape(-1, inputs.shape[-1]).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)  # var(1, unbiased=False)
    term = (np.linalg.norm(stats[name]["var"] - var) + np.linalg.norm(stats[name]["mean"] - mean))
    total += (first_multiplier if layer == 0 else 1.0) * term
  return total


def test_bn_term_matches_numpy_transcription():
  rng = np.random.default_rng(0)
  variables = _two_bn_variables(rng)
  x = rng.normal(1.0, 2.0, size=(4, 5, 5, 3)).astype(np.float32)
  logits, stats, running = synthesize.forward_with_bn_inputs(_TwoBN(), variables, x, np.ones(4))
  assert logits.shape == (4, 3) and len(stats) == 2
  got = float(synthesize.bn_matching_loss(stats, running, 10.0))
  np.testing.assert_allclose(got, _numpy_bn_term(x, variables, 10.0), rtol=1e-5)
  # Plain norms, not squared; the multiplier weighs the first layer only.
  squared = sum((10.0 if i == 0 else 1.0)
                * (float(jnp.sum((r[1] - s[1])**2)) + float(jnp.sum((r[0] - s[0])**2)))
                for i, (s, r) in enumerate(zip(stats, running, strict=True)))
  assert abs(got - squared) > 1e-2
  np.testing.assert_allclose(float(synthesize.bn_matching_loss(stats, running, 1.0)),
                             _numpy_bn_term(x, variables, 1.0), rtol=1e-5)


def test_bn_statistics_ignore_padding_rows():
  rng = np.random.default_rng(1)
  variables = _two_bn_variables(rng)
  x = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
  padded = np.concatenate([x, 100 + np.zeros((5, 4, 4, 3), np.float32)])
  mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
  _, stats, running = synthesize.forward_with_bn_inputs(_TwoBN(), variables, padded, mask)
  np.testing.assert_allclose(float(synthesize.bn_matching_loss(stats, running, 10.0)),
                             _numpy_bn_term(x, variables, 10.0), rtol=1e-5)


def test_resize_matrix_hand_cases():
  # The whole image at its own size is the identity.
  eye = synthesize.resize_matrix(jnp.int32(0), jnp.int32(4), 4, 4)
  np.testing.assert_allclose(np.asarray(eye), np.eye(4), atol=0)
  # Rows 1..2 of 4 upsampled to 4: sources max((i + ½)/2 − ½, 0) = 0, .25, .75, 1.25 → clamped.
  up = np.asarray(synthesize.resize_matrix(jnp.int32(1), jnp.int32(2), 4, 4))
  expected = np.zeros((4, 4))
  expected[0, 1] = 1
  expected[1, 1], expected[1, 2] = 0.75, 0.25
  expected[2, 1], expected[2, 2] = 0.25, 0.75
  expected[3, 2] = 1  # src 1.25 → low 1 (clamped), high clamped to 1: the crop's last row
  np.testing.assert_allclose(up, expected, atol=1e-6)


def test_crop_matches_torch_resized_crop():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
  box = np.array([1, 2, 5, 7], np.int32)  # top, left, height, width
  got = synthesize.augment(jnp.asarray(x), jnp.asarray(box), jnp.bool_(True),
                           jnp.asarray([2, 3], np.int32))
  # torchvision's tensor resized_crop (antialias off, as torch 1.13 in the official code), flip,
  # then torch.roll(shifts=(off1, off2), dims=(2, 3)).
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  crop = t[:, :, 1:6, 2:9]
  want = torch.nn.functional.interpolate(crop, size=(9, 9), mode="bilinear", align_corners=False)
  want = torch.roll(torch.flip(want, dims=(3,)), shifts=(2, 3), dims=(2, 3))
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_adam_and_cosine_schedule_match_torch():
  torch = pytest.importorskip("torch")
  iterations, lr = 7, 0.25
  schedule = optax.cosine_decay_schedule(lr, iterations, alpha=0.0)
  optimizer = optax.adam(schedule, b1=0.5, b2=0.9, eps=1e-8)
  rng = np.random.default_rng(3)
  x0 = rng.normal(size=(5,)).astype(np.float32)
  grads = rng.normal(size=(iterations, 5)).astype(np.float32)
  x, state = jnp.asarray(x0), optimizer.init(jnp.asarray(x0))
  tx = torch.tensor(x0, requires_grad=True)
  torch_opt = torch.optim.Adam([tx], lr=lr, betas=[0.5, 0.9], eps=1e-8)
  for it in range(iterations):
    # lr_cosine_policy(lr, 0, iterations) of SRe2L/recover/utils.py, set before each step.
    for group in torch_opt.param_groups:
      group["lr"] = 0.5 * (1 + np.cos(np.pi * it / iterations)) * lr
    tx.grad = torch.from_numpy(grads[it])
    torch_opt.step()
    updates, state = optimizer.update(jnp.asarray(grads[it]), state, x)
    x = optax.apply_updates(x, updates)
  np.testing.assert_allclose(np.asarray(x), tx.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_cda_curriculum_and_batch_layouts():
  # recover_cda_in1k.py, easy2hard_mode='cosine': 0.08 + 0.92 (1 + cos(π it / (m T))) / 2.
  assert synthesize.min_crop_scale("cda", 0, 100, 1.0) == pytest.approx(1.0)
  assert synthesize.min_crop_scale("cda", 50, 100, 1.0) == pytest.approx(0.08 + 0.92 / 2)
  assert synthesize.min_crop_scale("cda", 25, 100, 0.5) == pytest.approx(0.08 + 0.92 / 2)
  assert synthesize.min_crop_scale("cda", 60, 100, 0.5) == pytest.approx(0.08)
  assert synthesize.min_crop_scale("sre2l", 0, 100, 1.0) == pytest.approx(0.08)
  # SRe²L: image j of every class together, classes in chunks of the batch size.
  mixed = synthesize.plan_batches(3, 2, 2, "mixed")
  assert [b.members for b in mixed] == [((0, 0), (1, 0)), ((2, 0),), ((0, 1), (1, 1)), ((2, 1),)]
  # LPLD: one class per batch, its images in chunks of the batch size.
  by_class = synthesize.plan_batches(2, 3, 2, "class")
  assert [b.members for b in by_class] == [((0, 0), (0, 1)), ((0, 2),), ((1, 0), (1, 1)), ((1, 2),)]
  with pytest.raises(ValueError, match="synth_batching"):
    synthesize.plan_batches(2, 3, 2, "interleaved")


def test_augmentation_is_pure_in_its_key_and_follows_the_mode():
  config = tiny_config(selection="cda", synth_iterations=30, synth_augment="crop_flip")
  a, b = synthesize.augmentation(config, 3), synthesize.augmentation(config, 3)
  np.testing.assert_array_equal(a.box, b.box)
  assert not np.array_equal(a.box, synthesize.augmentation(config, 4).box)
  assert (a.shift >= 0).all() and (a.shift <= 4).all()  # randint(0, jitter), jitter 4 at 28 px
  # CDA's first iteration crops the whole image (minimum scale 1).
  np.testing.assert_array_equal(a.box[0], [0, 0, 28, 28])
  roll = synthesize.augmentation(tiny_config(selection="sre2l", synth_iterations=5), 0)
  assert synthesize.augment_mode(tiny_config(selection="sre2l")) == "roll"
  assert (roll.box == [0, 0, 28, 28]).all() and not roll.flip.any()


@pytest.fixture(scope="module")
def bn_teacher(tmp_path_factory):
  """A BatchNorm ConvNet-D3 (width 16) trained for one epoch of the embedded data (~94%)."""
  path = str(tmp_path_factory.mktemp("bn_teacher"))
  config = tiny_config(images_per_class=0, budget_examples=4000, global_batch_size=32)
  config.model_kwargs.norm = "batch"
  config.model_kwargs.width = 16
  config.crop_scale, config.random_flip = (0.75, 1.0), False
  config.checkpoint_every_steps = 1000
  plan.train(config, path)
  return path


def _synth_config(teacher_dir: str, cache: str, **overrides):
  config = config_schema.default_config()
  config.task = "synthesize"
  config.selection = "sre2l"
  config.images_per_class = 2
  config.teacher_workdir = teacher_dir
  config.cache_dir = cache
  config.synth_iterations = 50
  config.synth_r_bn = 1.0
  config.eval_batch_size = 200
  for key, value in overrides.items():
    config[key] = value
  return config


def _files(directory: str) -> dict[str, bytes]:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      if name.endswith((".jpg", ".png")):
        with open(os.path.join(root, name), "rb") as f:
          out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


@pytest.mark.slow
def test_synthesis_matches_bn_statistics_and_the_target_class(bn_teacher, tmp_path):
  config = _synth_config(bn_teacher, str(tmp_path / "cache"))
  directory = plan.synthesize_set(config, str(tmp_path / "work"))
  assert image_sets.is_built(directory) and "/synthesized/sre2l-ipc2-" in directory
  provenance = json.loads(open(os.path.join(directory, image_sets.PROVENANCE_FILE)).read())
  for batch in provenance["batches"]:  # 50 iterations: the BN term falls at least 10×
    assert batch["bn_loss_final"] * 10 <= batch["bn_loss_start"], batch
  images = provenance["images"]
  assert len(images) == 20 and all(i["teacher_correct"] for i in images)
  assert provenance["teacher_top1_on_set"] == 1.0 and provenance["synthesis_seconds"] > 0
  # The teacher classifies the stored JPEGs, read back as a data set, as their target class.
  data = run_data.load_run_data(image_sets.training_config(config, directory))
  assert sorted(np.bincount(data.train.labels()).tolist()) == [2] * 10
  mesh = mesh_lib.data_mesh()
  teacher = teacher_lib.load_teacher(bn_teacher, num_classes=10, input_shape=(1, 28, 28, 1),
                                     mesh=mesh)
  pixels = np.stack([data.train[i]["image"] for i in range(len(data.train))])
  logits = teacher.model.apply(teacher.variables, data.normalizer(pixels), train=False)
  assert (np.argmax(logits, 1) == data.train.labels()).all()
  # Reused, not rebuilt, on a second call.
  mtime = os.path.getmtime(os.path.join(directory, image_sets.PROVENANCE_FILE))
  assert plan.synthesize_set(config, str(tmp_path / "work")) == directory
  assert os.path.getmtime(os.path.join(directory, image_sets.PROVENANCE_FILE)) == mtime


@pytest.mark.slow
def test_only_images_change_and_devices_agree(bn_teacher):
  config = _synth_config(bn_teacher, "", images_per_class=1, synth_iterations=30)
  data = run_data.load_run_data(image_sets.source_config(tiny_config(images_per_class=0)))
  bounds = synthesize.Bounds(np.asarray(data.normalizer.mean, np.float32),
                             np.asarray(data.normalizer.std, np.float32))
  batch = synthesize.plan_batches(10, 1, 100, "mixed")[0]  # 10 images: padded to 16 on 8 devices
  results = {}
  for count in (1, 8):
    mesh = mesh_lib.data_mesh(jax.devices()[:count])
    teacher = teacher_lib.load_teacher(bn_teacher, num_classes=10, input_shape=(1, 28, 28, 1),
                                       mesh=mesh)
    before = jax.tree.map(np.array, teacher.variables)
    results[count] = synthesize.Synthesizer(config, teacher.model, bounds,
                                            mesh).run(batch, teacher.variables, lambda *a: None)
    # The teacher (parameters and BN running statistics) is untouched, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, teacher.variables))
  one, eight = results[1], results[8]
  assert one[0].shape == (10, 28, 28, 1)
  # Before any step the BN term is a plain masked reduction: padding rows would shift every
  # layer's mean and variance, so 1 and 8 devices must agree to float rounding.
  np.testing.assert_allclose(one[3], eight[3], rtol=1e-5)
  # Thirty Adam steps amplify the reduction-order rounding of 8 shards, and how much depends on
  # the CPU's vector width (bit-identical on one machine, up to 4 grey levels on a few pixels on
  # CI's): nearly every pixel within one level, none far off, and the same losses at the end.
  diff = np.abs(one[0].astype(int) - eight[0].astype(int))
  assert diff.max() <= 16 and (diff <= 1).mean() > 0.95 and diff.mean() < 0.25, (diff.max(),
                                                                                 (diff <= 1).mean(),
                                                                                 diff.mean())
  np.testing.assert_allclose(one[1], eight[1], rtol=1e-2, atol=1e-3)  # per-image CE
  np.testing.assert_allclose(one[4], eight[4], rtol=1e-2)  # final BN term


@pytest.mark.slow
def test_killed_synthesis_resumes_to_identical_files(bn_teacher, tmp_path):
  config = _synth_config(bn_teacher, str(tmp_path / "cache"), synth_iterations=20,
                         synth_batching="class", synth_batch_size=1)
  whole = plan.synthesize_set(config, str(tmp_path / "a"))
  reference = _files(whole)
  assert len(reference) == 20

  def kill_after_third(index):
    if index == 2:
      raise Killed()

  other = _synth_config(bn_teacher, str(tmp_path / "cache2"), synth_iterations=20,
                        synth_batching="class", synth_batch_size=1)
  with pytest.raises(Killed):
    plan.synthesize_set(other, str(tmp_path / "b"), batch_hook=kill_after_third)
  partial = [p for p in os.listdir(tmp_path / "cache2" / "synthesized") if p.endswith(".partial")]
  assert len(partial) == 1
  assert len(os.listdir(tmp_path / "cache2" / "synthesized" / partial[0] / "batches")) == 3
  resumed_batches = []
  resumed = plan.synthesize_set(other, str(tmp_path / "b"), batch_hook=resumed_batches.append)
  assert resumed_batches == list(range(3, 20))  # continues at the first unfinished batch
  assert os.path.basename(resumed) == os.path.basename(whole)
  assert _files(resumed) == reference
  a = json.loads(open(os.path.join(whole, image_sets.PROVENANCE_FILE)).read())
  b = json.loads(open(os.path.join(resumed, image_sets.PROVENANCE_FILE)).read())
  assert a["images"] == b["images"]


def _nothing_written(tmp_path) -> bool:
  return not (tmp_path / "cache").exists() and not (tmp_path / "work").exists()


def test_clear_errors_before_anything_is_written(teacher_dir, tmp_path):
  # teacher_dir (conftest) is an instance-norm ConvNet: nothing to match.
  with pytest.raises(synthesize.NoBatchNormError, match="norm='batch'"):
    plan.synthesize_set(_synth_config(teacher_dir, str(tmp_path / "cache")), str(tmp_path / "work"))
  assert _nothing_written(tmp_path)
  # A teacher_config without BN is refused before it is trained.
  no_bn = _synth_config("", str(tmp_path / "cache"), teacher_workdir="")
  no_bn.teacher_config = tiny_config()
  with pytest.raises(synthesize.NoBatchNormError):
    plan.synthesize_set(no_bn, str(tmp_path / "work"))
  assert _nothing_written(tmp_path)
  for field, value, message in (("synth_batching", "interleaved",
                                 "synth_batching"), ("synth_iterations", 0, "synth_iterations"),
                                ("synth_augment", "mixup", "synth_augment")):
    with pytest.raises(ValueError, match=message):
      plan.synthesize_set(_synth_config(teacher_dir, str(tmp_path / "cache"), **{field: value}),
                          str(tmp_path / "work"))
    assert _nothing_written(tmp_path)
  with pytest.raises(ValueError, match="not a synthesis method"):
    plan.synthesize_set(_synth_config(teacher_dir, str(tmp_path / "cache"), selection="rded"),
                        str(tmp_path / "work"))


def test_runs_on_a_synthesized_set_read_the_synthesis_fields():
  config = tiny_config(selection="sre2l", teacher_workdir="/t", synth_iterations=7)
  assert {"synth_iterations", "synth_r_bn", "teacher_workdir"} <= config_schema.fields_read(config)
  assert "cda_milestone" not in config_schema.fields_read(config)
  assert "cda_milestone" in config_schema.fields_read(tiny_config(selection="cda"))
  assert "synth_iterations" not in config_schema.fields_read(tiny_config())
  # The student on a synthesised set uses the generic crop, not RDED's patch recipe.
  assert config_schema.train_crop_recipe(config) == "rrc"
  ident = synthesize.identity(config, "fp", "teacher")
  assert ident["iterations"] == 7 and ident["augment"] == "roll" and ident["jitter"] == 4
  assert math.isclose(ident["lr"], 0.25)
