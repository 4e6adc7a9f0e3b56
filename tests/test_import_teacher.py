"""Teacher import from PyTorch: layout conversions, PyTorch's outputs, refusals, end to end."""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from hardlabel_jax import checkpointing
from hardlabel_jax import config_schema
from hardlabel_jax import mesh as mesh_lib
from hardlabel_jax import models
from hardlabel_jax import plan
from hardlabel_jax import teacher
from hardlabel_jax.data import sources
from helpers import tiny_config
from torchvision_import import import_torchvision

torch = pytest.importorskip("torch")
torchvision = import_torchvision()

from hardlabel_jax import import_teacher  # noqa: E402  (imports torch: only once torch is here)

DATASET = "embedded_mnist"


class DCConvNet(torch.nn.Module):
  """The DC/MTT code's ConvNet-D3 'instancenorm' layout (its module and parameter names).

  VICO-UoE/DatasetCondensation networks.py `ConvNet._make_layers` (line 99) pads the first conv by
  `3 if channel == 1 and d == 0 else 1`: `first_padding=3` is that 1-channel (MNIST) network,
  `convnet_d3_pad3` here; 1 is every other input's, and this library's `convnet_d3`.
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


class RDEDConvNet(torch.nn.Module):
  """A port of LINs-lab/RDED synthesize/models.py `ConvNet` as synthesize/utils.py `load_model`
  (lines 169-191) builds 'conv3' (CIFAR, 32 px) and 'conv4' (Tiny-ImageNet, 64 px): net_norm
  'batch', ReLU, average pooling, 3 channels, width 128; its layers in a ModuleDict of
  ModuleLists (`_make_layers`, lines 112-147), hence keys `layers.conv.{d}`, `layers.norm.{d}`."""

  def __init__(self, num_classes: int = 10, net_depth: int = 3, net_width: int = 128,
               channel: int = 3, im_size: tuple[int, int] = (32, 32)):
    super().__init__()
    self.net_act = torch.nn.ReLU()
    self.net_pooling = torch.nn.AvgPool2d(kernel_size=2, stride=2)
    self.depth = net_depth
    layers = {"conv": [], "norm": [], "act": [], "pool": []}
    in_channels = channel
    if im_size[0] == 28:
      im_size = (32, 32)
    shape_feat = [in_channels, im_size[0], im_size[1]]
    for d in range(net_depth):
      layers["conv"] += [
          torch.nn.Conv2d(in_channels, net_width, kernel_size=3,
                          padding=3 if channel == 1 and d == 0 else 1)
      ]
      shape_feat[0] = net_width
      layers["norm"] += [torch.nn.BatchNorm2d(shape_feat[0], affine=True)]
      layers["act"] += [self.net_act]
      in_channels = net_width
      layers["pool"] += [self.net_pooling]
      shape_feat[1] //= 2
      shape_feat[2] //= 2
    self.layers = torch.nn.ModuleDict({k: torch.nn.ModuleList(v) for k, v in layers.items()})
    self.classifier = torch.nn.Linear(shape_feat[0] * shape_feat[1] * shape_feat[2], num_classes)

  def forward(self, x):
    for d in range(self.depth):
      x = self.layers["conv"][d](x)
      x = self.layers["norm"][d](x)
      x = self.layers["act"][d](x)
      x = self.layers["pool"][d](x)
    return self.classifier(x.view(x.shape[0], -1))


def _modified_resnet(name: str, num_classes: int = 10):
  """SRe²L's and RDED's CIFAR / Tiny-ImageNet ResNet: torchvision's, with a 3×3 stride-1 conv1 and
  no max-pool (VILA-Lab/SRe2L `SRe2L/*small_dataset/squeeze_cifar.py` lines 65-67,
  CDA/recover_cda_tiny.py lines 194-196; LINs-lab/RDED synthesize/utils.py lines 193-198)."""
  net = torchvision.models.get_model(name, num_classes=num_classes)
  net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
  net.maxpool = torch.nn.Identity()
  return net


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


@pytest.mark.parametrize("kind, first_padding, classifier_inputs",
                         [("convnet_d3", 1, 3 * 3 * 128), ("convnet_d3_pad3", 3, 4 * 4 * 128)])
def test_dc_convnet_outputs_match_pytorch(kind, first_padding, classifier_inputs):
  """The DC code's 1-channel ConvNet pads its first conv by 3 (networks.py line 99): 28 px become
  32 px, so its classifier reads 4×4 maps where the 1-padded network's reads 3×3."""
  torch.manual_seed(0)
  net = _randomise_norms(DCConvNet(first_padding=first_padding))
  assert net.classifier.in_features == classifier_inputs
  images = np.random.default_rng(1).normal(size=(4, 1, 28, 28)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images)).numpy()
  model = import_teacher.create_teacher_model(kind, 10)
  variables = import_teacher.convert_state_dict(_state_dict(net), kind, model, (1, 28, 28, 1))
  assert set(variables) == {"params"}
  assert variables["params"]["classifier"]["kernel"].shape == (classifier_inputs, 10)
  _assert_close(_jax_logits(model, variables, images), want)


@pytest.mark.parametrize("kind, size, saved_by", [("resnet18_cifar", 32, "sre2l"),
                                                  ("resnet50_cifar", 16, "rded")])
def test_modified_resnet_outputs_match_pytorch(tmp_path, kind, size, saved_by):
  """SRe²L/RDED's 'modified' ResNet (`_modified_resnet`), saved as the official code saves it:
  SRe²L's squeeze_cifar.py (lines 72, 136-146) {'state_dict': DataParallel(net).state_dict(),
  'acc', 'epoch'} with 'module.' keys; RDED's load_model reads checkpoint['model'] (line 240)."""
  torch.manual_seed(0)
  net = _randomise_norms(_modified_resnet(kind.removesuffix("_cifar")))
  path = str(tmp_path / "teacher.pth")
  if saved_by == "sre2l":
    torch.save({
        "state_dict": torch.nn.DataParallel(net).state_dict(),
        "acc": 61.5,
        "epoch": 199
    }, path)
  else:
    torch.save({"model": net.state_dict()}, path)
  images = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images)).numpy()
  model = import_teacher.create_teacher_model(kind, 10)
  assert model.stem == "cifar"
  variables = import_teacher.convert_state_dict(import_teacher.load_state_dict(path), kind, model,
                                                (1, size, size, 3))
  assert variables["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 3, 64)
  _assert_close(_jax_logits(model, variables, images), want)


@pytest.mark.parametrize("kind, depth, size", [("rded_conv3", 3, 32), ("rded_conv4", 4, 64)])
def test_rded_batchnorm_convnet_outputs_match_pytorch(tmp_path, kind, depth, size):
  """RDED's observers (`RDEDConvNet`), saved as RDED's load_model reads them ({'model': ...}):
  BatchNorm in eval mode with its running statistics, a 4×4×128 map into the classifier at both
  32 px (3 pools) and 64 px (4 pools)."""
  torch.manual_seed(0)
  net = _randomise_norms(RDEDConvNet(net_depth=depth, im_size=(size, size)))
  path = str(tmp_path / "teacher.pth")
  torch.save({"model": net.state_dict()}, path)
  images = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images)).numpy()
  model = import_teacher.create_teacher_model(kind, 10)
  assert (model.depth, model.norm, model.width) == (depth, "batch", 128)
  variables = import_teacher.convert_state_dict(import_teacher.load_state_dict(path), kind, model,
                                                (1, size, size, 3))
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"]["classifier"]["kernel"].shape == (4 * 4 * 128, 10)
  np.testing.assert_array_equal(variables["batch_stats"][f"norm{depth - 1}"]["var"],
                                net.layers["norm"][depth - 1].running_var.numpy())
  _assert_close(_jax_logits(model, variables, images), want)


def _dc_convnet_32px():
  return DCConvNet(channels=3, image_size=32)


# (kind, the PyTorch network, input size, the whole refusal after its prefix), 3-channel inputs.
_OTHER_KIND_OR_SIZE = [
    pytest.param(
        "rded_conv3", lambda: RDEDConvNet(num_classes=7), 32,
        "'classifier.weight' has shape (7, 2048) in the state dict, the model expects "
        "(10, 2048) (1 more key does not fit)", id="num_classes"),
    # 18 RDED keys missing (3 convs × 2, 3 BatchNorms × 4), 12 DC keys unexpected.
    pytest.param(
        "rded_conv3", _dc_convnet_32px, 32,
        "missing key 'layers.norm.0.running_mean' (expected shape (128,)) (29 more keys "
        "do not fit). It fits --model convnet_d3, DC/MTT ConvNet-D3 "
        "'instancenorm', width 128", id="dc_as_rded"),
    pytest.param(
        "convnet_d3", RDEDConvNet, 32,
        "missing key 'features.0.bias' (expected shape (128,)) (29 more keys do not "
        "fit). It fits --model rded_conv3, RDED conv3 (BatchNorm ConvNet-D3, CIFAR 32 "
        "px)", id="rded_as_dc"),
    # The fourth block's 6 keys, and a classifier made for 4×4 maps where conv3 at 64 px has 8×8.
    pytest.param(
        "rded_conv3", lambda: RDEDConvNet(net_depth=4, im_size=(64, 64)), 64,
        "unexpected key 'layers.conv.3.weight' (shape (128, 128, 3, 3)) (6 more keys do "
        "not fit). It fits --model rded_conv4, RDED conv4 (BatchNorm ConvNet-D4, "
        "Tiny-ImageNet 64 px)", id="conv4_as_conv3"),
    pytest.param(
        "rded_conv4", lambda: RDEDConvNet(net_depth=4, im_size=(64, 64)), 32,
        "'classifier.weight' has shape (10, 2048) in the state dict, the model expects "
        "(10, 512). The classifier of these weights reads 4×4×128 feature maps (64-px "
        "inputs to this network), this model's on 32-px inputs 2×2×128", id="input_size"),
    pytest.param(
        "resnet18_cifar", lambda: torchvision.models.resnet18(num_classes=10), 32,
        "'conv1.weight' has shape (64, 3, 7, 7) in the state dict, the model expects "
        "(64, 3, 3, 3). It fits --model resnet18, torchvision resnet18 (ImageNet stem)",
        id="imagenet_stem_as_cifar"),
    pytest.param(
        "resnet18", lambda: _modified_resnet("resnet18"), 32,
        "'conv1.weight' has shape (64, 3, 3, 3) in the state dict, the model expects "
        "(64, 3, 7, 7). It fits --model resnet18_cifar, SRe²L/RDED resnet18 'modified' "
        "(3×3 stride-1 conv1, no max-pool)", id="cifar_stem_as_imagenet"),
    pytest.param(
        "resnet50_cifar", lambda: _modified_resnet("resnet18"), 32,
        "missing key 'layer1.0.bn3.running_mean' (expected shape (256,)) (188 more keys "
        "do not fit). It fits --model resnet18_cifar, SRe²L/RDED resnet18 'modified' "
        "(3×3 stride-1 conv1, no max-pool)", id="resnet18_as_resnet50"),
]


@pytest.mark.parametrize("kind, make_net, input_size, message", _OTHER_KIND_OR_SIZE)
def test_state_dict_of_another_kind_or_input_size_is_refused(kind, make_net, input_size, message):
  """One error naming the first key that does not fit, then the kind the weights do fit, or the
  input size their ConvNet classifier reads (RDED's conv4 is a 64-px Tiny-ImageNet network)."""
  model = import_teacher.create_teacher_model(kind, 10)
  with pytest.raises(ValueError) as error:
    import_teacher.convert_state_dict(_state_dict(make_net()), kind, model,
                                      (1, input_size, input_size, 3))
  assert str(error.value) == (f"--torch: the state dict does not fit {kind} with 10 classes on "
                              f"{input_size}-px, 3-channel inputs: {message}")


def test_resnet_with_another_number_of_classes_names_fc_and_both_shapes():
  state_dict = _state_dict(torchvision.models.resnet18())  # 1,000 ImageNet classes
  with pytest.raises(
      ValueError, match=re.escape("'fc.weight' has shape (1000, 512) in the state "
                                  "dict, the model expects (10, 512)")):
    import_teacher.convert_state_dict(state_dict, "resnet18", models.create_model("resnet18", 10),
                                      (1, 64, 64, 3))


def _without(state_dict, key):
  return {k: v for k, v in state_dict.items() if k != key}


# (kind, an edit of a 1-padded DC ConvNet's state dict, the refusal), on embedded_mnist.
_REFUSED_IMPORTS = [
    pytest.param(
        "convnet_d3", lambda sd: DCConvNet(num_classes=7).state_dict(),
        "'classifier.weight' has shape (7, 1152) in the state dict, the model expects "
        "(10, 1152)", id="num_classes"),
    pytest.param("convnet_d3", lambda sd: _without(sd, "features.5.bias"),
                 "missing key 'features.5.bias' (expected shape (128,))", id="missing"),
    pytest.param("convnet_d3", lambda sd: {
        **sd, "features.12.weight": torch.zeros(3)
    }, "unexpected key 'features.12.weight' (shape (3,))", id="unexpected"),
    pytest.param(
        "convnet_d3", lambda sd: DCConvNet(first_padding=3).state_dict(),
        "'classifier.weight' has shape (10, 2048) in the state dict, the model expects "
        "(10, 1152). It fits --model convnet_d3_pad3, the DC/MTT code's 1-channel "
        "ConvNet-D3", id="dc_mnist_padding"),
    pytest.param(
        "convnet_d3_pad3", lambda sd: sd,
        "'classifier.weight' has shape (10, 1152) in the state dict, the model expects "
        "(10, 2048). It fits --model convnet_d3, DC/MTT ConvNet-D3", id="padding_1_as_pad3"),
    pytest.param(
        "rded_conv3", lambda sd: RDEDConvNet().state_dict(),
        "'layers.conv.0.weight' has shape (128, 3, 3, 3) in the state dict, the model "
        "expects (128, 1, 3, 3) (1 more key does not fit). The classifier of these "
        "weights reads 4×4×128 feature maps (32-px inputs to this network), this model's "
        "on 28-px inputs 3×3×128", id="rgb_rded_on_mnist"),
    pytest.param(
        "vgg11", lambda sd: sd,
        "--model: 'vgg11' has no known PyTorch layout; expected one of resnet18, "
        "resnet50, resnet18_cifar, resnet50_cifar, convnet_d3, convnet_d3_pad3, "
        "rded_conv3, rded_conv4", id="unknown_kind"),
]


@pytest.mark.parametrize("kind, edit, message", _REFUSED_IMPORTS)
def test_state_dict_that_does_not_fit_is_refused_before_writing(tmp_path, kind, edit, message):
  path = str(tmp_path / "weights.pth")
  torch.save(edit(DCConvNet().state_dict()), path)
  workdir = str(tmp_path / "teacher")
  with pytest.raises(ValueError, match=re.escape(message)):
    import_teacher.import_teacher(path, kind, DATASET, workdir)
  assert not os.path.exists(workdir)


def test_command_line_refusal_is_one_error_line_and_writes_nothing(tmp_path):
  path = str(tmp_path / "weights.pth")
  torch.save(DCConvNet(first_padding=3).state_dict(), path)
  workdir = str(tmp_path / "teacher")
  result = subprocess.run([
      sys.executable, "-m", "hardlabel_jax.import_teacher", "--torch", path, "--model",
      "convnet_d3", "--dataset", DATASET, "--workdir", workdir
  ], env={
      **os.environ, "JAX_PLATFORMS": "cpu"
  }, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: --torch: the state dict does not fit convnet_d3 with 10 classes on 28-px, 1-channel "
      "inputs: 'classifier.weight' has shape (10, 2048) in the state dict, the model expects (10, "
      "1152). It fits --model convnet_d3_pad3, the DC/MTT code's 1-channel ConvNet-D3 "
      "'instancenorm' (first conv pads 3)"
  ]
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


def _torch_test_metrics(net, dataset=DATASET, data_dir=None):
  """Top-1, mean NLL, inputs and logits of `net` on the test split, normalised as runs do."""
  test = sources.load_source(dataset, "test", data_dir)
  info = sources.load_source(dataset, "train", data_dir).info  # runs normalise with the train's
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


def _write_rgb_folder(root, classes=3, per_class=4, size=32):
  """`imagefolder:` data of random 32-px RGB PNGs: `classes` classes, train and test splits."""
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for c in range(classes):
      os.makedirs(root / split / f"class{c}")
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(root / split / f"class{c}" / f"{i}.png")
  return f"imagefolder:{root}"


def test_import_of_an_rded_batchnorm_teacher_records_its_model_kwargs(tmp_path):
  """An RDED conv3 checkpoint ({'model': state_dict}, as synthesize/utils.py line 240 reads it)
  becomes a BatchNorm convnet_d3 teacher: its run config says norm 'batch', the loaded teacher
  has running statistics and gives RDED's logits, and its results are PyTorch's on the test set."""
  dataset = _write_rgb_folder(tmp_path / "data")
  data_dir = str(tmp_path / "cache")
  torch.manual_seed(0)
  net = _randomise_norms(RDEDConvNet(num_classes=3))
  path = str(tmp_path / "conv3.pth")
  torch.save({"model": net.state_dict()}, path)
  workdir = str(tmp_path / "teacher")
  results = import_teacher.import_teacher(path, "rded_conv3", dataset, workdir, data_dir=data_dir)

  top1, loss, images, logits = _torch_test_metrics(net, dataset, data_dir)
  assert results["test_examples"] == 12
  assert abs(results["test_top1"] - top1) <= 1 / 12
  assert results["test_loss"] == pytest.approx(loss, rel=1e-4)
  assert results["imported_from"]["kind"] == "rded_conv3"
  assert results["imported_from"]["layout"] == "rded"
  identity = teacher.stored_identity(workdir)
  assert identity["run"]["model"] == "convnet_d3"
  assert identity["run"]["model_kwargs"] == {"norm": "batch", "width": 128}
  loaded = teacher.load_teacher(workdir, num_classes=3, input_shape=(1, 32, 32, 3),
                                mesh=mesh_lib.data_mesh())
  assert models.has_batch_norm(loaded.model)
  _assert_close(np.asarray(loaded.model.apply(loaded.variables, jnp.asarray(images), train=False)),
                logits)
