"""Test set-up: simulate 8 CPU devices *before* jax is imported anywhere."""

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
