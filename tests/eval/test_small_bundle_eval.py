"""A small-model bundle (tiny random parts saved with small.save_bundle) as a checkpoint: its
layout check, load_pipeline with the bundle's depth model, the ablations driver
(experiments/ablations.py) on 1 world / 1 trajectory / 1 chunk / 2 steps, and ``mirage-jax
evaluate --depth model`` using the bundle's own depth model."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax.cli import main as mirage_main
from mirage_jax.errors import ConfigError, FileFormatError
from mirage_jax.eval import suite as S
from mirage_jax.generate.pipeline import check_checkpoint, load_pipeline, tiny_pipeline
from mirage_jax.small import bundle_control_source

HW = (32, 32)
ROOT = Path(__file__).resolve().parents[2]
ROW_FIELDS = ("row", "trajectories", "chunks", "frames", "options", "psnr", "ssim", "psnrc_vs_gt", "psnrc_vs_earlier",
              "consistency_mse", "depth_abs_rel", "memory_mib_held", "memory_mib_peak", "seconds")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from mirage_jax.models.depth import DepthConfig, DepthNet
    from mirage_jax.small import save_bundle

    p = tiny_pipeline(0)
    key = jax.random.key(0, impl="rbg")  # jitted rbg init: seconds, not the eager init's tens
    depth = nnx.jit(lambda: DepthNet(DepthConfig(base=4, levels=2, groups=2), rngs=nnx.Rngs(key)))()
    d = tmp_path_factory.mktemp("bundle") / "small"
    save_bundle(d, vae=p.vae, model=p.model, depth=depth, text_encoder=p.text_encoder, text_max_length=8,
                extra=dict(train_config=dict(data=dict(image_hw=list(HW)))))
    return d, p, depth


@pytest.fixture(scope="module")
def ablations():
    spec = importlib.util.spec_from_file_location("ablations_script", ROOT / "experiments" / "ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _params(module):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_bundle_checkpoint_ablations_and_evaluate_with_its_depth_model(bundle, ablations, tmp_path, capsys):
    """One test (the bundle is built once even under pytest-xdist)."""
    d, p, depth = bundle
    assert check_checkpoint(str(d)) == dict(bundle=d / "config.json", depth_model=d / "depth")
    q = load_pipeline(str(d))
    pa, pb = _params(p.model), _params(q.model)
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert q.encode_text(["a red chair"]).shape == (1, 8, p.model.config.dit.text_dim)
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    np.testing.assert_allclose(q.depth_model(images, np.broadcast_to(np.eye(3), (2, 3, 3))), depth(images), rtol=1e-6)
    assert p.depth_model is None  # random:tiny has none
    with pytest.raises(ConfigError, match="own runtime"):
        load_pipeline(str(d), runtime=object())
    broken = tmp_path / "broken"
    shutil.copytree(d, broken, ignore=shutil.ignore_patterns("depth"))
    with pytest.raises(ConfigError, match="without depth/"):
        check_checkpoint(str(broken))
    # a latent-memory bundle is not the RGB-cache variant
    assert ablations.main(["--weights", str(d), "--rows", "rgb_cache", "--rgb-weights", str(d), "--out",
                           str(tmp_path / "x")]) == 2
    assert "control_source 'latent', expected 'rgb'" in capsys.readouterr().err
    # the RGB-cache variant's bundle rolls out the RGB cache: a latent rollout or latent rows are refused
    assert q.control_source == "latent" and bundle_control_source(d) == "latent"  # no key: latent
    rgb_dir = tmp_path / "rgb"
    shutil.copytree(d, rgb_dir)
    raw = json.loads((rgb_dir / "config.json").read_text())
    (rgb_dir / "config.json").write_text(json.dumps({**raw, "control_source": "rgb"}))
    qr = load_pipeline(str(rgb_dir))
    assert qr.control_source == "rgb" and qr.rollout_config(num_chunks=1).memory_kind == "rgb"
    with pytest.raises(ConfigError, match="trained with control_source 'rgb'.*memory_kind 'latent'"):
        S.rollout_generate_fn(qr, memory_kind="latent")
    assert ablations.main(["--weights", str(rgb_dir), "--rows", "memory", "--out", str(tmp_path / "x")]) == 2
    assert "trained with the RGB cache" in capsys.readouterr().err
    (rgb_dir / "config.json").write_text(json.dumps({**raw, "control_source": "pixels"}))
    with pytest.raises(FileFormatError, match="key 'control_source'.*'pixels'"):
        load_pipeline(str(rgb_dir))

    out = tmp_path / "abl"
    rows = "memory,memory_off,depth_model,depth_noisy,append"  # compiles 2 chunk programs (read_memory on, off)
    assert ablations.main(["--weights", str(d), "--worlds", "1", "--trajectories", "orbit", "--chunks", "1",
                           "--policy-chunks", "1", "--capacity-latents", "2", "--steps", "2", "--rows", rows,
                           "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["rows"]) == rows.split(",")
    for name, row in res["rows"].items():
        assert set(ROW_FIELDS) <= set(row), name
        assert row["trajectories"] == 1 and row["frames"] == 33
        assert math.isfinite(row["psnr"]) and row["memory_mib_peak"] >= row["memory_mib_held"] > 0
        assert res["reports"][name]["settings"]["row"] == name
    rows = res["rows"]
    assert rows["depth_model"]["depth_abs_rel"] > 0 and rows["memory"]["depth_abs_rel"] is None
    assert rows["memory_off"]["options"] == dict(read_memory=False)
    # the same model and seed: the readout alone changes the video
    assert rows["memory"]["psnr"] != rows["memory_off"]["psnr"]
    delta = res["deltas"]["memory_minus_memory_off"]
    assert delta["psnr"] == pytest.approx(rows["memory"]["psnr"] - rows["memory_off"]["psnr"])
    assert res["targets"]["psnrc_3db_above_memory_off"] in (True, False) and res["deltas"]["memory_minus_rgb_cache"] is None
    # append at --policy-chunks 1 is the memory row's rollout: the same program, the same video
    assert rows["append"]["options"] == {} and rows["append"]["psnr"] == rows["memory"]["psnr"]
    assert rows["append"]["memory_mib_peak"] == rows["memory"]["memory_mib_peak"]
    md = out.with_suffix(".md").read_text()
    assert all(f"| {r} | 1 |" in md for r in rows) and "memory minus memory off" in md
    # the evaluate CLI: --depth model without --depth-model takes the bundle's; the options are recorded
    ev = tmp_path / "eval"
    assert mirage_main(["evaluate", "--checkpoint", str(d), "--worlds", "1", "--trajectories", "orbit",
                        "--kinds", "indoor", "--image-size", "32x32", "--steps", "2", "--depth", "model",
                        "--memory", "off", "--out", str(ev), "--quiet"]) == 0
    rep = json.loads((ev / "results.json").read_text())
    assert rep["settings"]["depth_model"] == "checkpoint" and rep["settings"]["memory"] == "off"
    assert rep["settings"]["memory_kind"] == "latent"  # the bundle's control_source
    r = rep["trajectories"][0]
    assert r["depth_abs_rel"] == pytest.approx(res["reports"]["depth_model"]["trajectories"][0]["depth_abs_rel"])
    assert len(r["readout_coverage"]) == 1 and r["memory_bytes_held"] > 0


def test_ablation_row_options(ablations):
    opts = ablations.row_options(ablations.ROWS, capacity_latents=8, cells=64)
    assert opts["ring"] == dict(memory_capacity=512, memory_policy="ring")
    assert opts["fuse"] == dict(memory_capacity=512, memory_policy="fuse", memory_voxel=0.05)  # RolloutConfig's
    assert opts["append"] == opts["memory"] == {} and opts["memory_off"] == dict(read_memory=False)
    assert opts["rgb_cache"] == dict(memory_kind="rgb")


@pytest.mark.parametrize("args, match", [
    (["--rows", "memory,warp"], "unknown rows"),
    (["--rows", "rgb_cache"], "needs --rgb-weights"),
    (["--rows", "memory", "--rgb-weights", "x"], "leaves out"),
    (["--capacity-latents", "0"], "--capacity-latents"),
    (["--depth-noise", "-1"], "--depth-noise"),
    (["--rows", "depth_model"], "no depth model"),
    (["--rows", "memory"], "--image-size"),
])
def test_ablations_bad_arguments_exit_2(ablations, tmp_path, capsys, args, match):
    argv = ["--weights", "random:tiny", "--out", str(tmp_path / "x")] + args
    assert ablations.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ablations: error:") and match in err
    assert not (tmp_path / "x.json").exists()
