"""torchvision for the tests that compare with it, importable next to a CPU build of torch."""

import importlib
import sys

import pytest

# The op schemas defined by `import_torchvision`; a Library object drops its definitions when
# garbage-collected, so they are kept here.
_TORCHVISION_OPS = []


def import_torchvision():
  """torchvision, or a skip of the calling test module where torch or torchvision is missing.

  PyPI has only CUDA builds of torchvision; next to a CPU build of torch its C++ ops do not load,
  and its import then fails registering fake kernels for two of them (`torchvision::nms does not
  exist`). The models and transforms are pure Python and never call those ops, so defining their
  two schemas lets the import finish.
  """
  torch = pytest.importorskip("torch")
  try:
    return importlib.import_module("torchvision")
  except ImportError:
    pytest.skip("torchvision is not installed (pip install -e '.[torch]')", allow_module_level=True)
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
