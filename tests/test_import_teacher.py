"""Teacher import from PyTorch: layout conversions, PyTorch's outputs, refusals, end to end."""

import argparse
import hashlib
import importlib
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import plan
from hardlabel_jax import teacher
from hardlabel_jax.data import sources
from helpers import tiny_config

torch = pytest.importorskip("torch")
# The op schemas defined by `_import_torchvision`; a Library object drops its definitions when
# garbage-collected, so it is kept here.
_TORCHVISION_OPS = []


def _import_torchvision():
  """torchvision, or None where it is not installed.

  PyPI has only CUDA builds of torchvision; next to a CPU build of torch its C++ ops do not load,
  and its import then fails registering fake kernels for two of them (`torchvision::nms does not
  exist`). The models are pure Python and never call those ops, so defining their two schemas
  lets the import finish.
  """
  try:
    return importlib.import_module("torchvision")
  except ImportError:
    return None
  except RuntimeError as error:
    if "torchvision::" not in str(error):
      raise
  for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
    del sys.modules[name]
  library = torch.library.Library("torchvision", "DEF")
  for op in ("nms", "qnms"):
    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  _TORCHVISION_OPS.append(library)
  return importlib.import_module("torchvision")


torchvision = _import_torchvision()
if torchvision is None:
  pytest.skip("torchvision is not installed (pip install -e '.[torch]')", allow_module_level=True)

from hardlabel_jax import import_teacher  # noqa: E402  (imports torch: only once torch is here)

DATASET = "embedded_mnist"


class DCConvNet(torch.nn.Module):
  """The DC/MTT/RDED code's ConvNet-D3 'instancenorm' layout (its module and parameter names).

  `first_padding=3` is the DC code's own choice for 1-channel 28-px inputs; this library's ConvNet
  pads by 1 everywhere, which is what the DC code does for every other input.
  """

  def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 28,
               width: int = 128, first_padding: int = 1):
    super().__init__()
    layers = []
    for depth in range(3):
      layers += [
          torch.nn.Conv2d(channels if depth == 0 else width, width, 3,
                          padding=first_padding if depth == 0 else 1),
          torch.nn.GroupNorm(width, width, affine=True),
          torch.nn.ReLU(inplace=True),
          torch.nn.AvgPool2d(kernel_size=2, stride=2)
      ]
    self.features = torch.nn.Sequential(*layers)
    side = (image_size + 2 * first_padding - 2) // 8
    self.classifier = torch.nn.Linear(width * side * side, num_classes)

  def forward(self, x):
    out = self.features(x)
    return self.classifier(out.view(out.size(0), -1))


def _randomise_norms(net):
  """Non-trivial affine parameters and BatchNorm running statistics (defaults are 1, 0, 0, 1)."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return net.eval()


def _state_dict(net):
  return import_teacher.unwrap_state_dict(net.state_dict())


def _jax_logits(model, variables, images_nchw):
  return np.asarray(
      jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                           images_nchw.transpose(0, 2, 3, 1)))


def _assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_conv_kernel_oihw_to_hwio():
  weight = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)  # [out, in, h, w]
  kernel = import_teacher.conv_kernel(weight)
  assert kernel.shape == (3, 3, 3, 2)
  assert kernel[0, 1, 2, 1] == weight[1, 2, 0, 1] == 46.0
  for o, i, h, w in np.ndindex(weight.shape):
    assert kernel[h, w, i, o] == weight[o, i, h, w]
  # And it convolves as PyTorch does.
  x = np.random.default_rng(0).normal(size=(1, 3, 5, 5)).astype(np.float32)
  want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=1)
  got = jax.lax.conv_general_dilated(x.transpose(0, 2, 3, 1), kernel, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _assert_close(np.asarray(got).transpose(0, 3, 1, 2), want.numpy())


def test_linear_kernel_out_in_to_in_out():
  weight = np.arange(6, dtype=np.float32).reshape(2, 3)  # [out, in]
  np.testing.assert_array_equal(import_teacher.linear_kernel(weight), [[0, 3], [1, 4], [2, 5]])


def test_batch_norm_weight_bias_and_running_statistics():
  assert import_teacher.torch_name("params", "scale") == "weight"
  assert import_teacher.torch_name("params", "bias") == "bias"
  assert import_teacher.torch_name("batch_stats", "mean") == "running_mean"
  assert import_teacher.torch_name("batch_stats", "var") == "running_var"
  # Four distinct vectors land in the four places of torchvision's stem BatchNorm.
  torch.manual_seed(0)
  state_dict = _state_dict(_randomise_norms(torchvision.models.resnet18(num_classes=10)))
  variables = import_teacher.convert_state_dict(state_dict, "resnet18",
                                                models.create_model("resnet18", 10), (1, 32, 32, 3))
  stem = {**variables["params"]["stem"]["bn"], **variables["batch_stats"]["stem"]["bn"]}
  for flax_name, torch_key in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                               ("var", "running_var")):
    np.testing.assert_array_equal(stem[flax_name], state_dict[f"bn1.{torch_key}"])
  np.testing.assert_array_equal(variables["params"]["stem"]["conv"]["kernel"],
                                import_teacher.conv_kernel(state_dict["conv1.weight"]))
  np.testing.assert_array_equal(
      variables["params"]["layer2_0"]["downsample"]["conv"]["kernel"],
      import_teacher.conv_kernel(state_dict["layer2.0.downsample.0.weight"]))
  np.testing.assert_array_equal(variables["batch_stats"]["layer4_1"]["conv_bn2"]["bn"]["var"],
                                state_dict["layer4.1.bn2.running_var"])


def test_chw_linear_kernel_reads_hwc_flattened_features():
  channels, height, width, out = 2, 2, 3, 4
  weight = np.arange(out * channels * height * width, dtype=np.float32).reshape(out, -1)
  kernel = import_teacher.chw_linear_kernel(weight, channels, height, width)
  assert kernel.shape == (height * width * channels, out)
  for o, c, h, w in np.ndindex(out, channels, height, width):
    assert kernel[(h * width + w) * channels + c, o] == weight[o, (c * height + h) * width + w]
  features = np.random.default_rng(0).normal(size=(1, channels, height, width))
  np.testing.assert_allclose(
      features.transpose(0, 2, 3, 1).reshape(1, -1) @ kernel,
      features.reshape(1, -1) @ weight.T, rtol=1e-6)


def test_unwrap_state_dict_strips_wrappers_prefixes_and_counters():
  tensors = {
      "module.conv.weight": torch.ones(2, 1, 3, 3, dtype=torch.bfloat16),
      "module.bn.num_batches_tracked": torch.tensor(7)
  }
  for wrapped in ({"model": tensors, "epoch": 3}, {"state_dict": tensors}, tensors):
    out = import_teacher.unwrap_state_dict(wrapped)
    assert list(out) == ["conv.weight"]
    assert out["conv.weight"].dtype == np.float32 and out["conv.weight"].shape == (2, 1, 3, 3)
  with pytest.raises(ValueError, match="'epoch' is a int, not a tensor"):
    import_teacher.unwrap_state_dict({"conv.weight": torch.ones(1), "epoch": 3})


def test_pickled_objects_are_refused_unexecuted(tmp_path):
  path = str(tmp_path / "checkpoint.pth")
  torch.save({"model": {"fc.bias": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
  with pytest.raises(ValueError, match="holds more than tensors"):
    import_teacher.load_state_dict(path)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_outputs_match_pytorch(name):
  torch.manual_seed(0)
  net = _randomise_norms(getattr(torchvision.models, name)(num_classes=10))
  images = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images)).numpy()
  model = models.create_model(name, 10)
  variables = import_teacher.convert_state_dict(_state_dict(net), name, model, (1, 64, 64, 3))
  _assert_close(_jax_logits(model, variables, images), want)


def test_dc_convnet_outputs_match_pytorch():
  torch.manual_seed(0)
  net = _randomise_norms(DCConvNet())
  images = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images)).numpy()
  model = models.create_model("convnet_d3", 10)
  variables = import_teacher.convert_state_dict(_state_dict(net), "convnet_d3", model,
                                                (1, 28, 28, 1))
  assert set(variables) == {"params"}
  _assert_close(_jax_logits(model, variables, images), want)


def test_resnet_with_another_number_of_classes_names_fc_and_both_shapes():
  state_dict = _state_dict(torchvision.models.resnet18())  # 1,000 ImageNet classes
  with pytest.raises(
      ValueError, match=re.escape("'fc.weight' has shape (1000, 512) in the state "
                                  "dict, the model expects (10, 512)")):
    import_teacher.convert_state_dict(state_dict, "resnet18", models.create_model("resnet18", 10),
                                      (1, 64, 64, 3))


def _without(state_dict, key):
  return {k: v for k, v in state_dict.items() if k != key}


@pytest.mark.parametrize("edit, message", [
    (lambda sd: DCConvNet(num_classes=7).state_dict(),
     "'classifier.weight' has shape (7, 1152) in the state dict, the model expects (10, 1152)"),
    (lambda sd: _without(sd, "features.5.bias"), "missing key 'features.5.bias' (expected shape "
     "(128,))"),
    (lambda sd: {
        **sd, "features.12.weight": torch.zeros(3)
    }, "unexpected key 'features.12.weight' (shape (3,))"),
    (lambda sd: DCConvNet(first_padding=3).state_dict(), "(10, 2048) in the state dict, the model "
     "expects (10, 1152). The DC/MTT code pads the first conv"),
], ids=["num_classes", "missing", "unexpected", "dc_mnist_padding"])
def test_state_dict_that_does_not_fit_is_refused_before_writing(tmp_path, edit, message):
  path = str(tmp_path / "weights.pth")
  torch.save(edit(DCConvNet().state_dict()), path)
  workdir = str(tmp_path / "teacher")
  with pytest.raises(ValueError, match=re.escape(message)):
    import_teacher.import_teacher(path, "convnet_d3", DATASET, workdir)
  assert not os.path.exists(workdir)


def test_workdir_holding_anything_else_is_refused(tmp_path):
  path = str(tmp_path / "weights.pth")
  torch.save(DCConvNet().state_dict(), path)
  os.makedirs(tmp_path / "teacher")
  (tmp_path / "teacher" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="is not empty and holds no run"):
    import_teacher.import_teacher(path, "convnet_d3", DATASET, str(tmp_path / "teacher"))
  assert os.listdir(tmp_path / "teacher") == ["notes.txt"]
  # A workdir of another run (here: its run config) is refused by that run's own check.
  os.makedirs(tmp_path / "run")
  checkpointing.write_run_identity(str(tmp_path / "run"), tiny_config())
  with pytest.raises(ValueError, match="holds a run with a different config"):
    import_teacher.import_teacher(path, "convnet_d3", DATASET, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run") == ["run_config.json"]


def _torch_test_metrics(net):
  """Top-1, mean NLL, inputs and logits of `net` on the test split, normalised as runs do."""
  test = sources.load_source(DATASET, "test")
  info = sources.load_source(DATASET, "train").info  # the run normalises with the train split's
  images = np.stack([test[i]["image"] for i in range(len(test))]).astype(np.float32) / 255.0
  images = (images - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
  labels = torch.from_numpy(np.array(test.labels()))  # a writable copy
  with torch.no_grad():
    logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  top1 = (logits.argmax(-1) == labels).float().mean().item()
  return top1, torch.nn.functional.cross_entropy(logits, labels).item(), images, logits.numpy()


def test_import_writes_a_teacher_that_runs_load_and_check(tmp_path):
  torch.manual_seed(0)
  net = _randomise_norms(DCConvNet())
  path = str(tmp_path / "convnet.pth")
  # Wrapped as a training script saves it, with DataParallel's prefix.
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
  workdir = str(tmp_path / "teacher")
  results = import_teacher.import_teacher(path, "convnet_d3", DATASET, workdir, eval_batch_size=250)

  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  top1, loss, images, logits = _torch_test_metrics(net)
  assert results["test_examples"] == 1000
  assert abs(results["test_top1"] - top1) <= 1 / 1000  # an argmax tie may flip one example
  assert results["test_loss"] == pytest.approx(loss, rel=1e-4)
  with open(path, "rb") as f:
    assert results["imported_from"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
  train_info = sources.load_source(DATASET, "train").info
  assert results["dataset_fingerprint"] == train_info.fingerprint

  identity = teacher.stored_identity(workdir)
  assert identity["dataset_fingerprint"] == train_info.fingerprint
  assert identity["run"]["model"] == "convnet_d3"
  assert identity["run"]["compute_dtype"] == "float32"
  loaded = teacher.load_teacher(workdir, num_classes=10, input_shape=(1, 28, 28, 1),
                                mesh=mesh_lib.data_mesh())
  assert loaded.describe()["test_top1"] == results["test_top1"]
  _assert_close(
      np.asarray(loaded.model.apply(loaded.variables, jnp.asarray(images[:16]), train=False)),
      logits[:16])

  # A student run takes it as its teacher (the plan's checks pass).
  student = tiny_config(regime="kd", teacher_workdir=workdir)
  config_schema.validate(student)
  plan.check(plan.make_plan(student, str(tmp_path / "student")))

  # An import interrupted before results.json resumes with the same weights, not with others.
  os.remove(os.path.join(workdir, "results.json"))
  other = str(tmp_path / "other.pth")
  torch.save(DCConvNet().state_dict(), other)
  with pytest.raises(ValueError, match="holds an unfinished import of other weights"):
    import_teacher.import_teacher(other, "convnet_d3", DATASET, workdir)
  resumed = import_teacher.import_teacher(path, "convnet_d3", DATASET, workdir)
  assert resumed["test_top1"] == results["test_top1"]
  assert resumed["test_loss"] == pytest.approx(results["test_loss"], rel=1e-6)
  # Once finished, the same import returns its results; other weights are refused.
  assert import_teacher.import_teacher(path, "convnet_d3", DATASET, workdir) == resumed
  with pytest.raises(ValueError, match="already holds a teacher imported from"):
    import_teacher.import_teacher(other, "convnet_d3", DATASET, workdir)
