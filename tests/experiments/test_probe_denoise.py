"""experiments/probe_denoise.py on a tiny random bundle: every figure is there and finite, and the
clean frame 0 (sigma 0, re-imposed by the samplers) decodes exactly as the VAE reconstruction."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[2]


def test_probe_on_a_tiny_bundle(tmp_path):
    from mirage_jax.generate.pipeline import tiny_pipeline
    from mirage_jax.models.depth import DepthConfig, DepthNet
    from mirage_jax.small import save_bundle

    p = tiny_pipeline(0)
    depth = nnx.jit(lambda: DepthNet(DepthConfig(base=4, levels=2, groups=2), rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))()
    data = dict(image_hw=[32, 32], num_frames=33, kind="indoor", trajectories=["walk"], fov_deg=60.0, fps=16.0)
    save_bundle(tmp_path / "b", vae=p.vae, model=p.model, depth=depth, text_encoder=p.text_encoder, text_max_length=8,
                extra=dict(train_config=dict(data=data)))
    spec = importlib.util.spec_from_file_location("probe_denoise", ROOT / "experiments" / "probe_denoise.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    out = tmp_path / "probe.json"
    assert probe.main(["--weights", str(tmp_path / "b"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert sorted(r["one_step"]) == ["0.3", "0.6", "0.9", "1.0"] and sorted(r["sampled"]) == ["euler_50", "unipc_20"]
    rows = [r["vae_reconstruction"]] + list(r["one_step"].values()) + [s["psnr"] for s in r["sampled"].values()]
    assert all(len(x) == 9 and np.all(np.isfinite(x)) for x in rows)
    assert all(x[0] == r["vae_reconstruction"][0] for x in rows)  # frame 0 is the clean latent everywhere
    assert 0.0 <= r["readout_coverage"] <= 1.0 and r["sampled"]["unipc_20"]["latent_std"] > 0
