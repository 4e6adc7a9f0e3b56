"""The library's XLA:CPU choice: which flags it adds, when it must not, the accuracy it keeps."""

import os

import jax
import numpy as np
import pytest

from hardlabel_jax import cpu_backend

CHECKED = cpu_backend.LAST_JAXLIB_CHECKED


def test_version_parsing():
  assert cpu_backend.parse_version("0.10.2") == (0, 10, 2)
  assert cpu_backend.parse_version("0.9.0.1") == (0, 9, 0, 1)
  assert cpu_backend.parse_version("0.11.0rc1") == (0, 11, 0)
  assert cpu_backend.parse_version("0.8.1.dev20251201") == (0, 8, 1)


def test_flag_added_only_where_jaxlib_has_it():
  assert cpu_backend.library_flags("", CHECKED) == [cpu_backend.CONVOLUTIONS_ON_EIGEN]
  assert cpu_backend.library_flags("", (0, 8, 1)) == [cpu_backend.CONVOLUTIONS_ON_EIGEN]
  # Releases before the flag existed would abort on it: nothing is added.
  assert cpu_backend.library_flags("", (0, 8, 0)) == []
  assert cpu_backend.library_flags("", (0, 7, 2)) == []
  assert cpu_backend.library_flags("", None) == []


def test_user_setting_is_never_overridden():
  for user in ("--xla_cpu_experimental_ynn_fusion_type=",
               "--xla_cpu_experimental_ynn_fusion_type=-reduce "
               "--xla_force_host_platform_device_count=2"):
    assert cpu_backend.library_flags(user, CHECKED) == []
    environ = {"XLA_FLAGS": user}
    assert cpu_backend.configure(environ) == []
    assert environ["XLA_FLAGS"] == user


def test_configure_appends_and_keeps_other_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  added = cpu_backend.configure(environ)
  expected = cpu_backend.library_flags("", cpu_backend.installed_jaxlib_version())
  assert added == expected
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *expected]
  # Idempotent: a second call (a subprocess inheriting the environment) adds nothing.
  assert cpu_backend.configure(environ) == []
  opted_out = {cpu_backend.OPT_OUT_VARIABLE: "0"}
  assert cpu_backend.configure(opted_out) == [] and "XLA_FLAGS" not in opted_out


def test_newer_jaxlib_gets_the_flag_only_if_its_library_names_it(monkeypatch):
  newer = (*CHECKED[:-1], CHECKED[-1] + 1)
  monkeypatch.setattr(cpu_backend, "_xla_library_names_flag", lambda flag: False)
  assert cpu_backend.library_flags("", newer) == []
  monkeypatch.setattr(cpu_backend, "_xla_library_names_flag", lambda flag: True)
  assert cpu_backend.library_flags("", newer) == [cpu_backend.CONVOLUTIONS_ON_EIGEN]


def test_installed_jaxlib_library_names_the_flag():
  """The binary check finds the flag in a jaxlib that has it (the installed one, 0.8.1+)."""
  version = cpu_backend.installed_jaxlib_version()
  if version is None or version < cpu_backend.FIRST_JAXLIB_WITH_FLAG:
    pytest.skip(f"jaxlib {version} predates the flag")
  assert cpu_backend._xla_library_names_flag(cpu_backend.YNN_FUSION_FLAG)  # pylint: disable=protected-access
  assert not cpu_backend._xla_library_names_flag("--xla_no_such_flag_hardlabel")  # pylint: disable=protected-access


def test_tests_run_under_the_library_choice():
  """conftest configured the backend before JAX started, as the entry point does."""
  if cpu_backend.flag_supported(cpu_backend.installed_jaxlib_version()):
    assert cpu_backend.YNN_FUSION_FLAG in os.environ["XLA_FLAGS"]


def test_conv_kernel_gradient_matches_float64():
  """The middle ConvNet-D3 layer (batch 64, 16×16×128, 3×3): the kernel gradient of the conv
  against a float64 NumPy reference, within 1e-4 relative (Frobenius norm)."""
  batch, size, channels = 64, 16, 128
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, channels, channels)) * 0.05).astype(np.float32)
  # A cotangent with a per-channel offset and scale, like a real backward signal.
  cotangent = (rng.standard_normal(
      (batch, size, size, channels)) * np.exp(rng.standard_normal(channels)) + 1.0).astype(
          np.float32)
  conv = lambda h, k: jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=(
      "NHWC", "HWIO", "NHWC"))
  kernel_grad = jax.jit(lambda h, k, g: jax.vjp(lambda k: conv(h, k), k)[1](g)[0])
  got = np.asarray(kernel_grad(hidden, kernel, cotangent), np.float64)
  padded = np.pad(hidden.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  flat_cotangent = cotangent.astype(np.float64).reshape(-1, channels)
  expected = np.empty((3, 3, channels, channels))
  for dy in range(3):
    for dx in range(3):
      window = padded[:, dy:dy + size, dx:dx + size, :].reshape(-1, channels)
      expected[dy, dx] = window.T @ flat_cotangent
  error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
  assert error < 1e-4, error
