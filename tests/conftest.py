"""Test set-up: simulate 8 CPU devices *before* jax is imported anywhere; skip ``parity`` tests
(comparisons against PyTorch / diffusers) where torch or diffusers is not installed."""

import importlib.util
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Never reach for a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "outputs", "tfds"))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from hypothesis import settings  # noqa: E402

# CI has 2 cores; keep property tests bounded and deterministic.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


# torch / diffusers are test-only (the package never imports them; tests/test_imports.py checks).
PARITY_MISSING = [name for name in ("torch", "diffusers") if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config, items):
    if not PARITY_MISSING:
        return
    import pytest

    skip = pytest.mark.skip(reason=f"parity test: {', '.join(PARITY_MISSING)} not installed")
    for item in items:
        if item.get_closest_marker("parity") is not None:
            item.add_marker(skip)
