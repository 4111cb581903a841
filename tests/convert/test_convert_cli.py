"""`mirage-jax convert` on a VAE: diffusers dir -> orbax -> load_vae gives the same parameters."""

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from mirage_jax.convert import cli, load_diffusers_vae, load_vae
from mirage_jax.convert.table import flat_state_arrays
from mirage_jax.models.wan import WanVAEConfig


def test_convert_vae_to_orbax_and_back(tmp_path):
    cfg = WanVAEConfig.tiny("wan2.2")
    torch.manual_seed(0)
    AutoencoderKLWan.from_config(cfg.to_diffusers()).save_pretrained(tmp_path / "vae_src")
    out = tmp_path / "ckpt"
    assert cli.main(["--vae", str(tmp_path / "vae_src"), "--out", str(out)]) == 0
    ref_cfg, ref = load_diffusers_vae(tmp_path / "vae_src")
    got_cfg, got = load_vae(out / "vae")
    assert got_cfg == ref_cfg == cfg
    a, b = flat_state_arrays(ref), flat_state_arrays(got)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # A missing VAE source is a reported failure (exit status 1), not a crash.
    assert cli.main(["--vae", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 1
