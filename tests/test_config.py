"""configs/: every config loads, builds typed configs, and the full model sizes are exact."""

import numpy as np
import pytest

from mirage_jax.config import dit_config, dit_runtime, load_config, vae_config


@pytest.mark.parametrize("name", ["tiny", "wan22_ti2v_5b", "wan22_ti2v_5b:tp4"])
def test_configs_build(name):
    cfg = load_config(name)
    dit, vae, runtime = dit_config(cfg), vae_config(cfg), dit_runtime(cfg)
    assert dit.in_channels == vae.z_dim  # the DiT denoises the VAE's latents
    assert len(cfg.mesh.shape) == len(cfg.mesh.axes)
    assert runtime.param_dtype == np.float32


def test_full_config_is_the_verified_wan22_ti2v_5b():
    """The 5B config builds exactly the presets whose sizes (4,999,787,712 DiT and 704,688,668
    VAE parameters, via nnx.eval_shape) and diffusers parity the model tests check."""
    from mirage_jax.models.wan import WanDiTConfig, WanVAEConfig

    cfg = load_config("wan22_ti2v_5b")
    assert dit_config(cfg) == WanDiTConfig.wan22_ti2v_5b()
    assert vae_config(cfg) == WanVAEConfig.wan22()
    assert dit_config(cfg).num_params() == 4_999_787_712


def test_unknown_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_config(str(tmp_path / "missing.py"))
