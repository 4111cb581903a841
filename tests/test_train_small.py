"""``make train-small`` at a tiny size: every part (worlds, VAE, latents, backbone, stage 1,
stage 2, depth, bundle) runs a few steps through experiments/train_small.py, the bundle loads
with the recorded parameter counts, a rerun resumes (nothing retrained) and the demo driver
generates one chunk from it with every report field."""

import importlib.util
import json
from pathlib import Path

import dataclasses
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_small", ROOT / "experiments" / "train_small.py")
train_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_small)
small_cfg = train_small.small_cfg

REPORT_FIELDS = ("psnr_memory", "psnr_memory_off", "closed_loop_psnr_memory", "closed_loop_psnr_memory_off",
                 "frames", "seconds", "scene_seed")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mirage_jax.models.depth import DepthConfig
    from mirage_jax.models.wan.dit import WanDiTConfig

    mp = pytest.MonkeyPatch()
    vae = dataclasses.replace(small_cfg.vae_config(), base_dim=4, decoder_base_dim=4, z_dim=4,
                              latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    mp.setattr(small_cfg, "vae_config", lambda: vae)
    mp.setattr(small_cfg, "dit_config", lambda: dataclasses.replace(WanDiTConfig.tiny(), text_dim=32))
    mp.setattr(small_cfg, "depth_config", lambda: DepthConfig(base=4, levels=2, groups=2))
    base = small_cfg.get_config

    def tiny_config(arg=None):
        c = base(arg)
        c.data.update(num_clips=2, image_hw=(32, 32), num_frames=17)
        c.vae.update(image_steps=2, image_batch_size=2, steps=2, batch_size=1, frames=5, crop=16, checkpoint_every=1)
        c.dit.update(num_target=3, max_reference=1, max_preceding=1, batch_size=8, backbone_steps=2,
                     stage1_steps=2, stage2_steps=2, control_layers=(0,), lora_rank=2, checkpoint_every=1)
        c.depth.update(steps=2, batch_size=2, checkpoint_every=1)
        return c

    mp.setattr(small_cfg, "get_config", tiny_config)
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("out")
    assert train_small.main(["--workdir", str(work), "--out", str(out)]) == 0
    yield work, out, mp
    mp.undo()


def test_every_part_trained_and_reported(tiny_run):
    work, out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    for part in ("worlds", "vae", "latents", "backbone", "stage1", "stage2", "depth"):
        assert report["parts"][part]["done"], part
        assert report["parts"][part]["seconds"] > 0
    for part in ("vae", "backbone", "stage1", "stage2", "depth"):
        assert np.isfinite(report["parts"][part]["final_loss"]), part
    assert np.isfinite(report["parts"]["stage2"]["heldout_flow_loss"])
    assert report["parts"]["depth"]["heldout_abs_rel"] > 0
    cfg = json.loads((out / "config.json").read_text())
    lo, hi = cfg["train_seeds"]
    assert hi - lo == 2 and not any(lo <= s < hi for s in cfg["held_out_seeds"])
    # the VAE's normalisation is the measured latent statistics, not the initial placeholder
    assert cfg["vae"]["latents_std"] != [1.0] * 4


def test_bundle_loads_with_recorded_counts_and_rerun_resumes(tiny_run):
    from mirage_jax.small import load_bundle, param_count

    work, out, _ = tiny_run
    bundle = load_bundle(out)
    assert param_count(bundle.pipeline.model) == bundle.config["params"]["mirage"]
    assert bundle.pipeline.model.config.lora_rank == 2
    before = json.loads((work / "report.json").read_text())["parts"]
    assert train_small.main(["--workdir", str(work), "--out", str(out)]) == 0
    after = json.loads((work / "report.json").read_text())["parts"]
    for part in ("vae", "latents", "backbone", "stage1", "depth"):
        assert after[part]["seconds"] == before[part]["seconds"], part  # skipped, not retrained
    with pytest.raises(SystemExit, match="clips"):
        train_small.main(["--workdir", str(work), "--out", str(out), "--clips", "3"])


def test_demo_one_chunk_from_the_tiny_bundle(tiny_run, tmp_path):
    from mirage_jax.demo import run_demo

    _, out, _ = tiny_run
    report = run_demo(out, tmp_path, num_chunks=1, sampler_steps=2, quiet=True)
    for key in REPORT_FIELDS:
        assert key in report, key
    assert report["frames"] == 33 and len(report["per_frame_psnr_memory"]) == 33
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["closed_loop_psnr_memory"] == report["closed_loop_psnr_memory"]
    for name in ("video.mp4", "video.gif", "memory.ply", "psnr.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(list((tmp_path / "frames").iterdir())) == 33
    # the two runs differ only in the readout: memory off must change the video
    assert report["per_frame_psnr_memory"][5:] != report["per_frame_psnr_memory_off"][5:]
    from mirage_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="used in training"):
        run_demo(out, tmp_path / "x", seed=0, num_chunks=1, quiet=True)
