"""``make middlebury`` (experiments/middlebury_check.py, the real-data geometry check of the
memory; ``make demo`` is now the small model's generation, tests/test_demo.py): end to end on a
downscaled pair, its files, figures and helpers."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from mirage_jax.data.real import middlebury_motorcycle  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "middlebury_check.py"
_spec = importlib.util.spec_from_file_location("middlebury_check", SCRIPT)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

SCALE = 0.25  # 185 x 125: the same geometry, a 16x smaller memory
FRAMES = 5


@pytest.fixture(scope="module")
def small_pair():
    return middlebury_motorcycle().resized(SCALE)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = demo.main(["--out", str(out), "--scale", str(SCALE), "--frames", str(FRAMES), "--quiet"])
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_writes_every_promised_file(demo_run, small_pair):
    from PIL import Image

    out, report = demo_run
    H, W = small_pair.image_hw
    files = report["files"]
    for key in ("right_view", "right_comparison", "gif", "ply", "report"):
        assert (out / files[key]).is_file(), key
    assert len(files["frames"]) == FRAMES
    for name in files["frames"]:
        assert np.asarray(Image.open(out / name)).shape == (H, W, 3)
    assert np.asarray(Image.open(out / files["right_view"])).shape == (H, W, 3)
    assert np.asarray(Image.open(out / files["right_comparison"])).shape == (H, 3 * W, 3)
    with Image.open(out / files["gif"]) as gif:
        assert gif.n_frames == FRAMES
        assert gif.size == (W, H)


def test_report_says_stride_one_and_shapes(demo_run, small_pair):
    _, report = demo_run
    H, W = small_pair.image_hw
    assert report["image_hw"] == [H, W]
    assert report["latent_hw"] == report["image_hw"]
    assert report["stride"] == 1
    assert "stride-1" in report["features"] and "latent_hw == image_hw" in report["features"]
    assert report["depth_unit"] == "m"
    assert report["memory"]["points"] == int(small_pair.valid.sum())
    assert report["memory"]["channels"] == 3
    assert set(report["timing_s"]) >= {"write_s", "read_right_s", "read_trajectory_s", "total_s"}
    assert all(v >= 0 for v in report["timing_s"].values())


def test_splat_beats_no_warp(demo_run):
    rv = demo_run[1]["right_view"]
    # Measured at this scale: ~26.3 dB splat vs ~13.8 dB no warp (full resolution: 26.9 / 12.9).
    assert 24.0 < rv["psnr_splat_hit_db"] < 30.0
    assert 11.0 < rv["psnr_no_warp_hit_db"] < 16.0
    assert rv["psnr_splat_hit_db"] - rv["psnr_no_warp_hit_db"] > 8.0
    assert 0.75 < rv["hit_fraction"] < 0.9
    ref = rv["numpy_reference"]
    assert ref["hit_agreement"] > 0.999
    assert abs(ref["psnr_hit_db"] - rv["psnr_splat_hit_db"]) < 0.1
    assert ref["pixels_equal_on_common_hits"] > 0.999


def test_left_roundtrip_in_report(demo_run):
    lv = demo_run[1]["left_view_roundtrip"]
    assert lv["features_exact_on_hits"] is True
    assert lv["hit_equals_valid"] is True
    assert lv["max_pixel_error_on_hits"] == 0


def test_first_frame_is_the_left_photo(demo_run, small_pair):
    """The swing starts at the left camera: frame 0 is the photo on valid pixels, grey elsewhere."""
    from PIL import Image

    out, report = demo_run
    np.testing.assert_array_equal(np.asarray(report["trajectory"]["cam2world"][0]), np.eye(4))
    frame0 = np.asarray(Image.open(out / "frames" / "frame_000.png"))
    expected = np.where(small_pair.valid[..., None], small_pair.left, np.asarray(demo.EMPTY_RGB, np.uint8))
    np.testing.assert_array_equal(frame0, expected)
    # 5 frames = start, far left, start, far right, start: the far ends differ from the start
    # and from each other; the middle frame is the start again.
    frames = [np.asarray(Image.open(out / "frames" / f"frame_{i:03d}.png")).astype(int) for i in range(FRAMES)]
    assert np.abs(frames[1] - frames[0]).mean() > 5.0
    assert np.abs(frames[3] - frames[0]).mean() > 5.0
    assert np.abs(frames[3] - frames[1]).mean() > 5.0
    np.testing.assert_array_equal(frames[2], frames[0])
    hits = report["trajectory"]["hit_fraction_per_frame"]
    assert len(hits) == FRAMES and hits[0] == pytest.approx(float(small_pair.valid.mean()), abs=1e-4)


def test_ply_header_vertex_count(demo_run, small_pair):
    out, report = demo_run
    data = (out / "memory.ply").read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply"
    count = int(next(line.split()[-1] for line in header if line.startswith("element vertex")))
    assert count == int(small_pair.valid.sum()) == report["memory"]["points"]
    if "format binary_little_endian 1.0" in header:
        assert len(data) - end == count * (3 * 4 + 3)
        rec = np.frombuffer(
            data[end:], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")]
        )
        # Depth of the points = the ground-truth depth (left camera = world), in metres.
        np.testing.assert_allclose(np.sort(rec["z"]), np.sort(small_pair.depth[small_pair.valid]), rtol=1e-6)


def test_write_then_read_at_left_camera_is_exact(small_pair):
    from mirage_jax import memory

    H, W = small_pair.image_hw
    mem = demo.build_memory(small_pair)
    out = memory.read(mem, small_pair.K_left, small_pair.cam2world_left, (H, W), (H, W))
    hit = np.asarray(out.hit)
    feats = np.asarray(out.features)
    np.testing.assert_array_equal(hit, small_pair.valid)
    np.testing.assert_array_equal(feats[hit], demo.photo_features(small_pair.left)[hit])
    assert np.all(feats[~hit] == 0.0)
    np.testing.assert_allclose(np.asarray(out.depth)[hit], small_pair.depth[hit], rtol=1e-6)


def test_reference_splat_identity_returns_the_image(small_pair):
    p = small_pair
    rgb, hit = demo.reference_splat(p.left, p.depth, p.valid, p.K_left, p.cam2world_left, p.K_left, p.cam2world_left, p.image_hw)
    np.testing.assert_array_equal(hit, p.valid)
    np.testing.assert_array_equal(rgb[hit], p.left[hit])
    assert np.all(rgb[~hit] == np.asarray(demo.EMPTY_RGB))


def test_psnr_and_feature_helpers():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    # MSE over 2 pixels x 3 channels: (3 * 100) / 6 = 50.
    assert demo.psnr_u8(a, b, mask) == pytest.approx(10 * math.log10(255**2 / 50.0), rel=1e-6)
    assert demo.psnr_u8(a, a) == math.inf
    with pytest.raises(ValueError, match="no pixel"):
        demo.psnr_u8(a, b, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="shapes"):
        demo.psnr_u8(a, b[:2])
    photo = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    f = demo.photo_features(photo)
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    rgb = demo.features_to_rgb(f, np.ones((4, 4), bool))
    np.testing.assert_array_equal(rgb, photo)
    rgb = demo.features_to_rgb(f, mask)
    assert np.all(rgb[~mask] == np.asarray(demo.EMPTY_RGB))
    with pytest.raises(ValueError, match="uint8"):
        demo.photo_features(photo.astype(np.float32))


def test_swing_trajectory_shape_and_ends():
    path = demo.swing_trajectory(7, pivot_depth=3.0, angle_deg=10.0)
    assert path.shape == (7, 4, 4) and path.dtype == np.float32
    np.testing.assert_array_equal(path[0], np.eye(4))
    np.testing.assert_allclose(path[-1], np.eye(4), atol=1e-6)
    # Out and back to the left (camera moves to -x), then to the right (+x); the pivot stays centred.
    assert path[1, 0, 3] < 0 and path[4, 0, 3] > 0
    pivot = np.array([0.0, 0.0, 3.0, 1.0])
    for P in path:
        cam = np.linalg.inv(P.astype(np.float64)) @ pivot
        assert abs(cam[0]) < 1e-4 and abs(cam[1]) < 1e-4 and cam[2] > 0
    with pytest.raises(ValueError, match="num_frames"):
        demo.swing_trajectory(2, 3.0, 10.0)


def test_script_rejects_bad_arguments(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--scale", "0"]) == 2
    assert "--scale" in capsys.readouterr().err
    assert demo.main(["--out", str(tmp_path), "--frames", "2"]) == 2
    assert "--frames" in capsys.readouterr().err
    assert demo.main(["--out", str(tmp_path), "--angle", "95"]) == 2
    assert not (tmp_path / "report.json").exists()
