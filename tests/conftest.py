"""Test setup: 8 virtual CPU devices before JAX starts, and clean skips for gpu/tpu/tpu_aot tests."""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

from wm_jax.parallel import aot  # noqa: E402


def _has_backend(name):
  try:
    return len(jax.devices(name)) > 0
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  have = {"gpu": _has_backend("gpu"), "tpu": _has_backend("tpu")}
  libtpu = aot.has_libtpu()
  for item in items:
    for kind, present in have.items():
      if kind in item.keywords and not present:
        item.add_marker(pytest.mark.skip(reason=f"needs a {kind.upper()}; none present"))
    if "tpu_aot" in item.keywords and not libtpu:
      item.add_marker(pytest.mark.skip(reason="needs libtpu to compile for TPU: pip install -e "
                                              "'.[tpu]'"))


@pytest.fixture
def cpu_devices():
  devices = jax.devices("cpu")
  assert len(devices) == 8, f"expected 8 virtual CPU devices, got {len(devices)}"
  return devices
