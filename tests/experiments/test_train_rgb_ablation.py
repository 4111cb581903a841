"""experiments/train_rgb_ablation.py: the latent run it needs is checked first (fast); end to end on a
tiny finished "latent run" (random VAE, backbone and depth checkpoints + its report): rgb_control
records, stage 1 and 2 with control_source "rgb" at the latent run's recorded steps x --scale, a
bundle that small.load_bundle reads (its pipeline rolls out with the RGB cache), resume. The
end-to-end tests take ~70 s on 2 idle cores (two Trainer compiles, two held-out compiles, world
rendering and preprocessing)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("train_rgb_ablation", ROOT / "experiments" / "train_rgb_ablation.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)
small_cfg = driver.small_cfg

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def test_the_latent_run_is_required_and_named(tmp_path):
    with pytest.raises(SystemExit, match="no small-model run"):
        driver.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b")])
    (tmp_path / "report.json").write_text(json.dumps({"parts": {"vae": {"done": True}}}))
    with pytest.raises(SystemExit, match=r"not finished \['backbone'\]"):
        driver.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b")])
    done = {p: {"done": True} for p in ("vae", "backbone")}  # the depth model is needed for the bundle only
    (tmp_path / "report.json").write_text(json.dumps({"parts": done}))
    with pytest.raises(SystemExit, match="backbone_dit: missing"):
        driver.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b")])


@pytest.fixture(scope="module")
def tiny_latent_run(tmp_path_factory):
    from mirage_jax.checkpoint import save_model
    from mirage_jax.models.depth import DepthConfig, DepthNet
    from mirage_jax.models.wan import WanDiT
    from mirage_jax.models.wan.dit import WanDiTConfig
    from mirage_jax.models.wan.vae import WanVAE

    mp = pytest.MonkeyPatch()
    vae_cfg = dataclasses.replace(small_cfg.vae_config(), base_dim=4, decoder_base_dim=4, z_dim=4,
                                  latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    dit_cfg = dataclasses.replace(WanDiTConfig.tiny(), text_dim=32)
    depth_cfg = DepthConfig(base=4, levels=2, groups=2)
    mp.setattr(small_cfg, "vae_config", lambda: vae_cfg)
    mp.setattr(small_cfg, "dit_config", lambda: dit_cfg)
    mp.setattr(small_cfg, "depth_config", lambda: depth_cfg)
    base = small_cfg.get_config

    def tiny_config(arg=None):
        c = base(arg)
        c.data.update(num_clips=1, image_hw=(32, 32), num_frames=17)
        c.dit.update(num_target=3, max_reference=1, max_preceding=1, batch_size=8, control_layers=(0,), lora_rank=2,
                     checkpoint_every=1)
        return c

    mp.setattr(small_cfg, "get_config", tiny_config)
    work = tmp_path_factory.mktemp("small")
    save_model(work / "vae_final", WanVAE(vae_cfg, rngs=nnx.Rngs(0)))
    save_model(work / "backbone_dit", WanDiT(dit_cfg, rngs=nnx.Rngs(1)))
    save_model(work / "depth_final", DepthNet(depth_cfg, rngs=nnx.Rngs(2)))
    report = {"settings": {"num_clips": 1, "scale": 0.5}, "parts": {
        "vae": {"done": True, "config": json.loads(json.dumps(dataclasses.asdict(vae_cfg)))},
        "backbone": {"done": True}, "depth": {"done": True},
        "stage1": {"done": True, "steps": 4, "learning_rate": 1e-3},
        "stage2": {"done": True, "steps": 2, "learning_rate": 5e-4}}}
    (work / "report.json").write_text(json.dumps(report))
    out = tmp_path_factory.mktemp("bundle")
    assert driver.main(["--workdir", str(work), "--out", str(out), "--scale", "0.5"]) == 0
    yield work, out
    mp.undo()


def test_rgb_variant_trains_at_the_latent_runs_steps_and_bundles(tiny_latent_run):
    from mirage_jax.data.latents import open_latent_clips
    from mirage_jax.small import load_bundle

    work, out = tiny_latent_run
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["control_source"] == "rgb" and report["settings"]["scale"] == 0.5
    assert report["parts"]["stage1"]["steps"] == 2 and report["parts"]["stage2"]["steps"] == 1  # 4, 2 x 0.5
    assert report["parts"]["stage1"]["learning_rate"] == 1e-3
    for part in ("latents", "stage1", "stage2"):
        assert report["parts"][part]["done"], part
    assert np.isfinite(report["parts"]["stage2"]["heldout_flow_loss"])
    rec = open_latent_clips(work / "rgb" / "latents")[0]
    assert rec["rgb_control"].shape == (2, 3 + 1, 4, 4, 4)  # F = 5, T = 3, P_max = 1: starts 1, 2
    assert open_latent_clips(work / "rgb" / "latents", "test")[0]["rgb_control"].shape == (2, 4, 4, 4, 4)
    meta = json.loads((work / "rgb" / "stage1" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(meta["loss"])
    bundle = load_bundle(out)
    assert bundle.config["control_source"] == "rgb"
    assert bundle.config["train_config"]["dit"]["control_source"] == "rgb"
    assert bundle.pipeline.control_source == "rgb"


def test_rerun_resumes(tiny_latent_run):
    work, out = tiny_latent_run
    before = json.loads((work / "rgb" / "report.json").read_text())["parts"]
    assert driver.main(["--workdir", str(work), "--out", str(out), "--scale", "0.5"]) == 0
    after = json.loads((work / "rgb" / "report.json").read_text())["parts"]
    for part in ("latents", "stage1"):
        assert after[part]["seconds"] == before[part]["seconds"], part  # skipped, not redone
