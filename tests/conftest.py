"""Test setup: 8 simulated CPU devices and parsed absl flags.

XLA_FLAGS must be set before jax is imported anywhere, so this runs first.
grain worker processes read absl flags; pytest never parses them, so mark them parsed.
"""
import os
import sys

# configs/ is imported as a package by the tests (as `python -m gemb.main` does from the root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running test, excluded from the default suite")


@pytest.fixture(scope="session")
def devices():
  assert len(jax.devices()) == 8, "tests need 8 simulated CPU devices"
  return jax.devices()


@pytest.fixture(scope="session")
def emoji_data_dir(tmp_path_factory):
  """The built-in emoji dataset, built once per test session (~20 s)."""
  from gemb.data import sources
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  sources.prepared_builder("emoji", data_dir)
  return data_dir
