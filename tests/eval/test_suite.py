"""The held-out suite (fixed, seeded, disjoint from training), evaluate() against hand values,
the WorldScore instance layout and ``mirage-jax evaluate`` on a random tiny model."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from mirage_jax.cli import main as mirage_main
from mirage_jax.data.builders import SYNTHETIC_WORLDS_CONFIGS, derive_seed
from mirage_jax.data.worlds import random_trajectory, sample_scene
from mirage_jax.errors import InputError
from mirage_jax.eval import metrics as M
from mirage_jax.eval import suite as S
from mirage_jax.eval.worldscore import INSTANCE_FILES, write_instance
from mirage_jax.geometry.formats import read_worldscore_cameras

HW = (32, 32)


def test_suite_is_fixed_seeded_and_held_out():
    a, b = S.heldout_suite(), S.heldout_suite()
    assert a == b and len(a) == 24 >= 20
    assert len({e.name for e in a}) == 24
    assert S.heldout_suite(3) == a[:9]  # fewer worlds: a prefix of the same list
    assert {e.path for e in a} == set(S.PATH_TYPES) and {e.scene_kind for e in a} == {"indoor", "outdoor"}
    assert all(S.is_held_out(e.scene_seed) for e in a) and len({e.scene_seed for e in a}) == 8
    # every world seed any synthetic_worlds config trains (or tests) on lies outside the held-out range
    for cfg in SYNTHETIC_WORLDS_CONFIGS:
        for split, n in cfg.split_sizes.items():
            seeds = [derive_seed("synthetic_worlds", cfg.name, split, i) for i in range(n)]
            assert not any(S.is_held_out(s) for s in seeds), (cfg.name, split)
    rooms = S.heldout_suite(kinds=("indoor",))
    assert [e.scene_kind for e in rooms] == ["indoor"] * 24 and rooms[:3] == a[:3]
    assert [(e.scene_seed, e.preset, e.path_seed) for e in rooms] == [(e.scene_seed, e.preset, e.path_seed) for e in a]
    # every trajectory exists (collision free), is deterministic and comes back
    for e in a + rooms[3::6] + rooms[4::6] + rooms[5::6]:
        scene = sample_scene(e.scene_seed, e.scene_kind)
        p = random_trajectory(scene, e.path_seed, 33, kind=e.preset, **e.preset_kwargs())
        q = random_trajectory(scene, e.path_seed, 33, kind=e.preset, **e.preset_kwargs())
        np.testing.assert_array_equal(p, q)
        assert len(M.revisit_pairs(p)) >= 1, e.name
    with pytest.raises(InputError, match="not a held-out world seed"):
        S.check_held_out(derive_seed("synthetic_worlds", "tiny", "train", 0))
    with pytest.raises(InputError, match="unknown trajectories"):
        S.select(a, ["zigzag"])
    assert [e.path for e in S.select(a[:3], ["pan", "w0-indoor-orbit"])] == ["orbit", "pan"]


def test_evaluate_against_hand_values(tmp_path):
    entries = S.select(S.heldout_suite(1), ["orbit", "pan"])
    seen = {}

    def off_by_8(inst):  # every pixel exactly 8 levels off the truth
        seen[inst.entry.name] = inst
        gt = inst.frames.astype(np.int16)
        return np.where(gt < 128, gt + 8, gt - 8).astype(np.uint8)

    def const_depth(images, K):
        return 2.0 + 0.0 * images[..., 0]

    rep = S.evaluate(off_by_8, entries, image_hw=HW, out=tmp_path, depth_fn=const_depth, worldscore=True,
                     progress=False)
    psnr8 = 20 * math.log10(255 / 8)
    assert [r["name"] for r in rep["trajectories"]] == ["w0-indoor-orbit", "w0-indoor-pan"]
    for r in rep["trajectories"]:
        inst = seen[r["name"]]
        assert r["frames"] == 33 and len(r["psnr_per_frame"]) == 32
        np.testing.assert_allclose(r["psnr_per_frame"], psnr8, rtol=1e-5)
        assert r["closed_loop_psnr_vs_gt"] == pytest.approx(psnr8, rel=1e-5)
        # the same views were rendered alike and shifted alike: the loop closes exactly
        assert r["closed_loop_psnr_vs_earlier"] > 40
        assert r["closed_loop_pairs"] == M.revisit_pairs(inst.cam2world).tolist() != []
        d, keep = inst.depth[::4], ~inst.dynamic[::4]
        valid = (d > 0) & keep
        by_hand = np.mean([np.mean(np.abs(2.0 - x[v]) / x[v]) for x, v in zip(d, valid)])
        assert r["depth_abs_rel"] == pytest.approx(by_hand, rel=1e-5)
        assert 0 < r["consistency_mse_gt"] and 0 < r["consistency_mse"] and 0 < r["consistency_coverage"] <= 1
    assert rep["aggregate"]["psnr"] == pytest.approx(psnr8, rel=1e-5) and rep["aggregate"]["trajectories"] == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["aggregate"]["psnr"] == pytest.approx(psnr8, rel=1e-5)
    assert saved["settings"]["held_out_seeds"] == [S.HELD_OUT_SEED_START, 2**31]
    assert saved["settings"]["revisit_criteria"] == dict(max_rotation_deg=5.0, max_translation=0.1, leave_factor=2.0)
    md = (tmp_path / "results.md").read_text()
    assert "| w0-indoor-pan | 33 |" in md and "**all**" in md
    for name in ("w0-indoor-orbit", "w0-indoor-pan"):
        for f in INSTANCE_FILES:
            assert (tmp_path / "worldscore" / name / f).exists(), f

    # the truth itself: infinite PSNR, written as the string "inf" (JSON has no Infinity)
    rep = S.evaluate(lambda inst: inst.frames, entries[:1], image_hw=HW, out=tmp_path / "gt", progress=False)
    r = rep["trajectories"][0]
    assert r["psnr"] == math.inf and r["consistency_mse"] == r["consistency_mse_gt"]
    assert json.loads((tmp_path / "gt" / "results.json").read_text())["trajectories"][0]["psnr"] == "inf"
    with pytest.raises(InputError, match="unknown revisit criteria"):
        S.evaluate(lambda inst: inst.frames, entries[:1], image_hw=HW, progress=False, max_angle=3)
    with pytest.raises(InputError, match="generate_fn returned"):
        S.evaluate(lambda inst: inst.frames[:-1], entries[:1], image_hw=HW, progress=False)


def test_worldscore_instance(tmp_path):
    rng = np.random.default_rng(0)
    T, H, W = 3, 16, 24
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    K = np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]], np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.1, 0.2]
    paths = write_instance(tmp_path, frames, K, c2w, input_image=image, prompt="a room")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths.values()) == sorted(INSTANCE_FILES)
    cams = read_worldscore_cameras(paths["camera_data.json"])
    np.testing.assert_allclose(cams["cam2world"], c2w, atol=1e-6)
    assert cams["focal_length"] == pytest.approx(20.0) and cams["image_hw"] == (H, W)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["input_image.png"])), image)  # the input, not frame 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "frames" / "00002.png")), frames[2])
    meta = json.loads(paths["image_data.json"].read_text())
    assert meta["prompt"] == "a room" and meta["num_frames"] == T
    assert paths["videos/output.mp4"].stat().st_size > 0
    with pytest.raises(InputError, match="input_image"):
        write_instance(tmp_path, frames, K, c2w, input_image=image[:8], prompt="")


def test_cli_random_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = mirage_main(["evaluate", "--checkpoint", "random:tiny", "--worlds", "1", "--trajectories", "orbit,pan",
                      "--image-size", "32x32", "--steps", "1", "--sampler", "euler", "--out", str(out), "--quiet",
                      "--memory-capacity", "6", "--memory-policy", "fuse", "--memory-voxel", "0.2",
                      "--max-reference", "1", "--depth", "noisy-gt", "--depth-noise", "0.2"])
    assert rc == 0
    rep = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rep["trajectories"]] == ["w0-indoor-orbit", "w0-indoor-pan"]
    per_point = 12 + 4 * 4 + 9  # xyz f32, 4 latent channels f32, valid + step + weight
    for r in rep["trajectories"]:
        assert math.isfinite(r["psnr"]) and 0 < r["psnr"] < 40  # random weights: noise, not the truth
        assert r["closed_loop_pairs"] and math.isfinite(r["closed_loop_psnr_vs_gt"])
        assert r["consistency_mse"] > r["consistency_mse_gt"]
        # the bounded memory: at most 6 points, whatever the rollout wrote
        assert 0 < r["memory_bytes_held"] <= r["memory_bytes_peak"] <= 6 * per_point
        assert r["memory_points"] <= 6 and len(r["readout_coverage"]) == 1
    s = rep["settings"]
    assert (s["memory"], s["memory_capacity"], s["memory_policy"], s["memory_voxel"], s["max_reference"]) == \
        ("on", 6, "fuse", 0.2, 1)
    assert (s["depth"], s["depth_noise"], s["depth_model"], s["chunks"]) == ("noisy-gt", 0.2, None, 1)
    printed = capsys.readouterr().out
    assert "random:tiny" in rep["label"] and "| **all** | 2 |" in printed and "memory MiB" in printed


@pytest.mark.parametrize("args, match", [
    (["--worlds", "9"], "num_worlds"),
    (["--kinds", "cave"], "kinds"),
    (["--trajectories", "zigzag"], "unknown trajectories"),
    (["--image-size", "30x32"], "multiples of 16"),
    (["--checkpoint", "nowhere/ckpt"], "random:tiny"),
    (["--depth", "model"], "no depth model of its own"),
    (["--depth-model", "x:y"], "--depth-model needs --depth model"),
    (["--depth-noise", "0.1"], "--depth-noise needs --depth noisy-gt"),
    (["--depth", "noisy-gt", "--depth-noise", "-0.1"], "--depth-noise must be"),
    (["--memory-voxel", "0.1"], "--memory-voxel needs --memory-policy fuse"),
    (["--memory-capacity", "0"], "--memory-capacity must be >= 1"),
    (["--memory-policy", "fuse", "--memory-voxel", "-1"], "voxel"),
    (["--max-reference", "-1"], "max_reference"),
    (["--memory", "maybe"], None),
])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, match):
    argv = ["evaluate", "--checkpoint", "random:tiny", "--out", str(tmp_path)]
    if match is None:  # argparse's own choices check
        with pytest.raises(SystemExit, match="2"):
            mirage_main(argv + args)
        assert "invalid choice" in capsys.readouterr().err
        return
    rc = mirage_main(argv + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("mirage-jax evaluate: error:") and match in err
    assert not (tmp_path / "results.json").exists()
