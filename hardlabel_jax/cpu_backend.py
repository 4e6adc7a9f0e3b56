"""The XLA:CPU settings the library chooses before JAX starts: convolutions on Eigen, not YNNPACK.

From jaxlib 0.8.1 on, XLA:CPU hands every convolution to YNNPACK, including the kernel-gradient
convolutions that XLA rewrites into convolutions whose window is the whole feature map; YNNPACK
runs those several times slower than Eigen (and than PyTorch's oneDNN). Keeping YNNPACK for dots
only (`--xla_cpu_experimental_ynn_fusion_type=individual_dot`) measured the train step of
ConvNet-D3 1.6–2.5× and of ResNet-18 3.6× faster on a 2-core CPU (README, "Results"), at
PyTorch's speed. The flag is read when the backend starts, so `configure()` must run before the
first JAX computation; the entry point, the benchmarks and the tests call it first. It only
touches XLA:CPU compilations: on GPU/TPU it changes nothing but host-side CPU programs. This
module imports neither jax nor jaxlib (it must run before them).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import mmap
import os
import re
from typing import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CONVOLUTIONS_ON_EIGEN = f"{YNN_FUSION_FLAG}=individual_dot"
# jaxlib releases checked for the flag (wheels inspected): absent in 0.7.2 and 0.8.0, present in
# 0.8.1 through 0.10.2. An unknown XLA flag aborts the process, so older releases never get it,
# and releases newer than the last checked one get it only if their XLA library names it.
FIRST_JAXLIB_WITH_FLAG = (0, 8, 1)
LAST_JAXLIB_CHECKED = (0, 10, 2)
# Set to 0 to leave XLA_FLAGS exactly as the user gave it.
OPT_OUT_VARIABLE = "HARDLABEL_JAX_CPU_FLAGS"


def parse_version(text: str) -> tuple[int, ...]:
  """'0.10.2' (or '0.9.0.1', '0.11.0rc1') -> (0, 10, 2); the numeric release fields only."""
  fields = []
  for field in text.split("."):
    digits = re.match(r"\d+", field)
    if digits is None:
      break
    fields.append(int(digits.group()))
    if digits.group() != field:
      break
  return tuple(fields)


def installed_jaxlib_version() -> tuple[int, ...] | None:
  """The installed jaxlib's version, from its package metadata (jaxlib is not imported)."""
  try:
    return parse_version(importlib.metadata.version("jaxlib"))
  except importlib.metadata.PackageNotFoundError:
    return None


def _xla_library_names_flag(flag: str) -> bool:
  """Whether jaxlib's XLA shared library contains the flag's name (for unchecked releases)."""
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return False
  name = flag.lstrip("-").encode()
  for directory in spec.submodule_search_locations:
    for entry in os.scandir(directory):
      if entry.name.endswith(".so") and entry.stat().st_size > 0:
        with open(entry.path, "rb") as handle, mmap.mmap(handle.fileno(), 0,
                                                         access=mmap.ACCESS_READ) as data:
          if data.find(name) >= 0:
            return True
  return False


def flag_supported(version: tuple[int, ...] | None) -> bool:
  """Whether a jaxlib of this version accepts the YNNPACK fusion flag."""
  if version is None or version < FIRST_JAXLIB_WITH_FLAG:
    return False
  return version <= LAST_JAXLIB_CHECKED or _xla_library_names_flag(YNN_FUSION_FLAG)


def library_flags(xla_flags: str, version: tuple[int, ...] | None) -> list[str]:
  """The flags the library would add to `xla_flags`: none that the user already set."""
  if YNN_FUSION_FLAG in xla_flags or not flag_supported(version):
    return []
  return [CONVOLUTIONS_ON_EIGEN]


def configure(environ: MutableMapping[str, str] | None = None) -> list[str]:
  """Adds the library's XLA:CPU flags to XLA_FLAGS (before JAX starts); returns what it added."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT_VARIABLE, "1") == "0":
    return []
  current = environ.get("XLA_FLAGS", "")
  added = library_flags(current, installed_jaxlib_version())
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
