"""Test-wide setup: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The shared tiny workdir of the stage tests (imported after the flags above; see the module).
from stage_fixtures import tiny_workdir  # noqa: E402,F401  pylint: disable=wrong-import-position
