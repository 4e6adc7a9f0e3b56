"""Test setup: 8 simulated CPU devices and a compilation cache shared by all tests."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hardlabel_jax import cpu_backend  # pylint: disable=g-import-not-at-top,wrong-import-position

# The tests run with the library's own XLA:CPU choice, as the entry point does.
cpu_backend.configure()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from hardlabel_jax import plan  # pylint: disable=g-import-not-at-top,wrong-import-position
from helpers import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# Many tests compile the same tiny steps; a persistent cache makes the second compile free.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("HARDLABEL_TEST_JAX_CACHE",
                   os.path.join(tempfile.gettempdir(), "hardlabel_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  # Slow end-to-end tests still run in CI (the README command runs everything); `-m "not slow"`
  # skips them for a quick local loop.
  config.addinivalue_line("markers", "slow: end-to-end runs of tens of seconds on 2 CPU cores")


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  """A tiny finished HL run on 10 images per class (seconds), shared as the teacher of the
  soft-label, KD-style and distillation tests; only its checkpoint format matters."""
  path = str(tmp_path_factory.mktemp("teacher"))
  plan.train(tiny_config(budget_examples=16 * 12), path)
  return path


@pytest.fixture(scope="session")
def tiny_bn_teacher(tmp_path_factory):
  """A tiny BatchNorm teacher run (SRe²L and BSSL need BatchNorm; any other task takes any)."""
  path = str(tmp_path_factory.mktemp("tiny_bn_teacher"))
  config = tiny_config(budget_examples=16 * 20)
  config.model_kwargs.norm = "batch"
  plan.train(config, path)
  return path
