"""Tests for mirage_jax.geometry.formats: every reader/writer, by hand-written files and round trips."""

import json

import numpy as np
import pytest

from mirage_jax.geometry import cameras as cam
from mirage_jax.geometry import formats as fm
from mirage_jax.geometry.cameras import CameraError
from mirage_jax.geometry.formats import FormatError

GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _rot(q):
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _poses(rng, T):
    P = np.tile(np.eye(4), (T, 1, 1))
    for i in range(T):
        P[i, :3, :3] = _rot(rng.normal(size=4))
        P[i, :3, 3] = rng.normal(size=3) * 2
    return P.astype(np.float32)


def _intrinsics(rng, T, hw=(48, 64)):
    H, W = hw
    K = np.tile(np.eye(3), (T, 1, 1))
    K[:, 0, 0] = rng.uniform(40, 80, T)
    K[:, 1, 1] = rng.uniform(40, 80, T)
    K[:, 0, 2] = rng.uniform(0.4, 0.6, T) * W
    K[:, 1, 2] = rng.uniform(0.4, 0.6, T) * H
    return K.astype(np.float32)


def _assert_same_poses(a, b, atol=2e-6):
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def _raises_at(exc_info, path, line):
    err = exc_info.value
    assert err.line == line and err.path == str(path)
    assert str(err).startswith(f"{path}:{line}: ")


# ------------------------------------------------------------------------------ RealEstate10K

# Written by hand from the format description: URL, then `timestamp fx fy cx cy 0 0` and the
# row-major 3x4 world-to-camera matrix. Frame 2's camera is turned 90 degrees about y (w2c
# rotation R = [[0,0,-1],[0,1,0],[1,0,0]]) and its w2c translation is (1, 2, 3).
RE10K_TEXT = """https://www.youtube.com/watch?v=abcdefghijk
33366667 0.500000000 0.888888889 0.500000000 0.500000000 0.000000000 0.000000000 1 0 0 0 0 1 0 0 0 0 1 0
33400000 0.450000000 0.800000000 0.510000000 0.490000000 0 0 0 0 -1 1 0 1 0 2 1 0 0 3

"""


def test_read_re10k_hand_written(tmp_path):
    p = tmp_path / "clip.txt"
    p.write_text(RE10K_TEXT)
    cams = fm.read_re10k(p)
    assert cams.url == "https://www.youtube.com/watch?v=abcdefghijk"
    assert cams.timestamps.dtype == np.int64
    np.testing.assert_array_equal(cams.timestamps, [33366667, 33400000])
    np.testing.assert_allclose(cams.intrinsics_norm[1], [0.45, 0.8, 0.51, 0.49], rtol=1e-7)
    np.testing.assert_allclose(cams.cam2world[0], np.eye(4), atol=0)
    # c2w = inverse(w2c): R^T and -R^T t.
    R = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], np.float64)
    t = np.array([1.0, 2.0, 3.0])
    expected = np.eye(4)
    expected[:3, :3] = R.T
    expected[:3, 3] = -R.T @ t  # = (-3, -2, 1)
    np.testing.assert_allclose(cams.cam2world[1], expected, atol=1e-7)
    np.testing.assert_allclose(expected[:3, 3], [-3, -2, 1])
    # Pixel intrinsics: fx, cx times the width, fy, cy times the height.
    K = cams.intrinsics((360, 640))
    assert K.shape == (2, 3, 3) and K.dtype == np.float32
    np.testing.assert_allclose(K[0], [[320, 0, 320], [0, 320, 180], [0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(K[1], [[288, 0, 326.4], [0, 288, 176.4], [0, 0, 1]], rtol=1e-6)
    assert len(cams) == 2


@pytest.mark.parametrize(
    "bad_row, line, match",
    [
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 0 0 0 1", 3, "expected 19 columns.*got 18"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 0 0 0 1 0 7", 3, "got 20"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 zero 0 1 0 0 0 0 1 0", 3, "column 11: not a number: 'zero'"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 nan 0 0 1 0", 3, "column 15: non-finite value 'nan'"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 inf 0 1 0 0 0 0 1 0", 3, "non-finite"),
        ("33400000.5 0.45 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 0 0 0 1 0", 3, "timestamp is not an integer"),
        ("33400000 0.0 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 0 0 0 1 0", 3, "focal lengths must be positive"),
        ("33400000 0.45 0.8 0.51 0.49 0.1 0 1 0 0 0 0 1 0 0 0 0 1 0", 3, "columns 6 and 7 must be 0"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 2 0 0 0 0 1 0 0 0 0 1 0", 3, "not orthonormal"),
        ("33400000 0.45 0.8 0.51 0.49 0 0 1 0 0 0 0 1 0 0 0 0 -1 0", 3, "reflection"),
    ],
)
def test_read_re10k_malformed_rows_name_file_and_line(tmp_path, bad_row, line, match):
    good = "33366667 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    p = tmp_path / "bad.txt"
    p.write_text(f"https://example.com/v\n{good}\n{bad_row}\n{good}\n")
    with pytest.raises(FormatError, match=match) as e:
        fm.read_re10k(p)
    _raises_at(e, p, line)
    assert isinstance(e.value, ValueError)


def test_read_re10k_rejects_missing_url_and_empty(tmp_path):
    row = "33366667 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    p = tmp_path / "nourl.txt"
    p.write_text(f"{row}\n{row}\n")
    with pytest.raises(FormatError, match="first line must be the video URL") as e:
        fm.read_re10k(p)
    _raises_at(e, p, 1)
    p.write_text("https://example.com/v\n\n")
    with pytest.raises(FormatError, match="no camera rows"):
        fm.read_re10k(p)
    p.write_text("")
    with pytest.raises(FormatError, match="empty file"):
        fm.read_re10k(p)


def test_re10k_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    T = 7
    cams = fm.Re10kCameras(
        url="https://www.youtube.com/watch?v=xyz",
        timestamps=np.arange(T, dtype=np.int64) * 33366 + 10**9,
        intrinsics_norm=rng.uniform(0.3, 1.2, (T, 4)).astype(np.float32),
        cam2world=_poses(rng, T),
    )
    p = tmp_path / "sub" / "cams.txt"
    fm.write_re10k(p, cams)
    lines = p.read_text().splitlines()
    assert lines[0] == cams.url and len(lines) == T + 1 and len(lines[1].split()) == 19
    # The file holds world-to-camera.
    w2c = np.array(lines[3].split()[7:], np.float64).reshape(3, 4)
    np.testing.assert_allclose(w2c, np.linalg.inv(cams.cam2world[2].astype(np.float64))[:3], atol=1e-6)
    back = fm.read_re10k(p)
    assert back.url == cams.url
    np.testing.assert_array_equal(back.timestamps, cams.timestamps)
    np.testing.assert_array_equal(back.intrinsics_norm, cams.intrinsics_norm)
    _assert_same_poses(back.cam2world, cams.cam2world)


def test_re10k_pixels_round_trip_and_validation():
    rng = np.random.default_rng(1)
    K = _intrinsics(rng, 3, (720, 1280))
    c = fm.Re10kCameras.from_pixels("u", [1, 2, 3], K, (720, 1280), _poses(rng, 3))
    np.testing.assert_allclose(c.intrinsics((720, 1280)), K, rtol=1e-6)
    np.testing.assert_allclose(c.intrinsics_norm[:, 0], K[:, 0, 0] / 1280, rtol=1e-6)
    np.testing.assert_allclose(c.intrinsics_norm[:, 3], K[:, 1, 2] / 720, rtol=1e-6)
    with pytest.raises(CameraError, match="cam2world"):
        fm.Re10kCameras("u", [1, 2], c.intrinsics_norm[:2], c.cam2world)
    with pytest.raises(CameraError, match="intrinsics_norm"):
        fm.Re10kCameras("u", [1, 2, 3], c.intrinsics_norm[:, :3], c.cam2world)
    with pytest.raises(CameraError, match="url"):
        fm.Re10kCameras("a\nb", [1, 2, 3], c.intrinsics_norm, c.cam2world)
    skewed = K.copy()
    skewed[:, 0, 1] = 1.0
    with pytest.raises(CameraError, match="skew"):
        fm.normalize_intrinsics(skewed, (720, 1280))


# ------------------------------------------------------------------------------ Spatia


def test_read_spatia_native_files(tmp_path):
    # As Spatia writes them: one JSON nested list per line, intrinsics as "[fx fy cx cy]".
    w2c = [np.eye(4), np.eye(4)]
    w2c[1][:3, :3] = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]])
    w2c[1][:3, 3] = [1, 2, 3]
    (tmp_path / "w2c.txt").write_text("".join(f"{m.tolist()}\n" for m in w2c))
    (tmp_path / "intrinsics.txt").write_text("[0.5 0.8888 0.5 0.5]")
    intr, c2w = fm.read_spatia(tmp_path)
    assert intr.shape == (2, 4) and c2w.shape == (2, 4, 4)
    np.testing.assert_allclose(intr, [[0.5, 0.8888, 0.5, 0.5]] * 2, rtol=1e-7)  # one line, shared
    np.testing.assert_allclose(c2w[1, :3, 3], [-3, -2, 1], atol=1e-7)
    np.testing.assert_allclose(c2w[1] @ w2c[1], np.eye(4), atol=1e-7)
    # 3x4 rows, plain whitespace numbers and an explicit (w2c, intrinsics) pair also work.
    (tmp_path / "a.txt").write_text("\n".join(" ".join(map(str, m[:3].ravel())) for m in w2c) + "\n")
    (tmp_path / "b.txt").write_text("0.5 0.8 0.5 0.5\n0.6 0.9 0.5 0.5\n")
    intr2, c2w2 = fm.read_spatia((tmp_path / "a.txt", tmp_path / "b.txt"))
    np.testing.assert_allclose(c2w2, c2w, atol=1e-7)
    np.testing.assert_allclose(intr2[1], [0.6, 0.9, 0.5, 0.5], rtol=1e-7)


@pytest.mark.parametrize("rows", [3, 4])
@pytest.mark.parametrize("shared", [True, False])
def test_spatia_round_trip(tmp_path, rows, shared):
    rng = np.random.default_rng(2)
    T = 5
    c2w = _poses(rng, T)
    intr = rng.uniform(0.3, 1.0, (1 if shared else T, 4)).astype(np.float32)
    intr = np.broadcast_to(intr, (T, 4))
    w2c_path, intr_path = fm.write_spatia(tmp_path / "cams", intr, c2w, w2c_rows=rows)
    lines = w2c_path.read_text().splitlines()
    assert len(lines) == T
    m = np.asarray(json.loads(lines[0]))  # Spatia reads each line with json.loads
    assert m.shape == (rows, 4)
    np.testing.assert_allclose(m, np.linalg.inv(c2w[0].astype(np.float64))[:rows], atol=1e-6)
    assert len(intr_path.read_text().splitlines()) == (1 if shared else T)
    intr_b, c2w_b = fm.read_spatia(tmp_path / "cams")
    np.testing.assert_array_equal(intr_b, intr)
    _assert_same_poses(c2w_b, c2w)


def test_spatia_errors(tmp_path):
    eye = "[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]"
    w, k = tmp_path / "w2c.txt", tmp_path / "intrinsics.txt"
    w.write_text(f"{eye}\n{eye}\n{eye}\n")
    k.write_text("0.5 0.8 0.5 0.5\n0.5 0.8 0.5 0.5\n")
    with pytest.raises(FormatError, match="2 intrinsics lines but w2c.txt has 3 matrices"):
        fm.read_spatia(tmp_path)
    k.write_text("0.5 0.8 0.5\n")
    with pytest.raises(FormatError, match="expected 4 numbers") as e:
        fm.read_spatia(tmp_path)
    _raises_at(e, k, 1)
    k.write_text("0.5 0.8 0.5 0.5\n")
    w.write_text(f"{eye}\n[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0]]\n")
    with pytest.raises(FormatError, match=r"12 or 16 numbers\), got 15 numbers") as e:
        fm.read_spatia(tmp_path)
    _raises_at(e, w, 2)
    w.write_text(f"{eye}\n\n[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]\n")
    with pytest.raises(FormatError, match="bottom row") as e:
        fm.read_spatia(tmp_path)
    _raises_at(e, w, 3)
    w.write_text("[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, NaN]]\n")
    with pytest.raises(FormatError, match="non-finite") as e:
        fm.read_spatia(tmp_path)
    _raises_at(e, w, 1)
    w.write_text("[[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0]]\n")
    with pytest.raises(FormatError, match="not orthonormal") as e:
        fm.read_spatia(tmp_path)
    _raises_at(e, w, 1)
    with pytest.raises(CameraError, match="w2c_rows"):
        fm.write_spatia(tmp_path, np.ones(4), np.eye(4)[None], w2c_rows=2)
    with pytest.raises(CameraError, match="intrinsics_norm: has 2 frames"):
        fm.write_spatia(tmp_path, np.ones((2, 4)), np.tile(np.eye(4), (3, 1, 1)))


# ------------------------------------------------------------------------------ transforms.json


@pytest.mark.parametrize("per_frame", [False, True])
def test_transforms_json_round_trip(tmp_path, per_frame):
    rng = np.random.default_rng(3)
    T, hw = 4, (48, 64)
    c2w = _poses(rng, T)
    K = _intrinsics(rng, T, hw) if per_frame else np.broadcast_to(_intrinsics(rng, 1, hw), (T, 3, 3))
    p = tmp_path / "transforms.json"
    fm.write_transforms_json(p, c2w, K, hw)
    meta = json.loads(p.read_text())
    assert (meta["w"], meta["h"]) == (64, 48)
    assert ("fl_x" in meta) != per_frame and ("fl_x" in meta["frames"][0]) == per_frame
    # The file holds OpenGL camera-to-world: OpenCV c2w times diag(1, -1, -1, 1).
    np.testing.assert_allclose(np.asarray(meta["frames"][2]["transform_matrix"]), c2w[2] @ GL, atol=1e-7)
    assert meta["frames"][0]["file_path"] == "images/frame_00001.png"
    out = fm.read_transforms_json(p)
    np.testing.assert_array_equal(out["cam2world"], c2w)
    np.testing.assert_array_equal(out["intrinsics"], K)
    assert out["image_hw"] == hw and out["file_paths"][3] == "images/frame_00004.png"
    np.testing.assert_array_equal(out["image_hw_per_frame"], [hw] * T)


def test_read_transforms_json_hand_written_nerfstudio_and_ngp(tmp_path):
    # An OpenGL camera at the origin with identity rotation looks down world -z.
    meta = {
        "camera_model": "OPENCV",
        "fl_x": 100.0, "fl_y": 110.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48,
        "k1": 0.01, "p1": -0.002,
        "frames": [
            {"file_path": "images/frame_00001.png", "transform_matrix": np.eye(4).tolist()},
            {"file_path": "images/frame_00002.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 90.0},
        ],
        "applied_transform": np.eye(4)[:3].tolist(),
    }
    p = tmp_path / "transforms.json"
    p.write_text(json.dumps(meta))
    out = fm.read_transforms_json(p)
    np.testing.assert_array_equal(out["cam2world"][0], np.diag([1, -1, -1, 1]))
    pts = np.array([[0.0, 0.0, -5.0], [0.0, 1.0, -5.0]])
    uv, z = cam.project_points(pts, out["intrinsics"][0], out["cam2world"][0])
    np.testing.assert_allclose(np.asarray(uv)[0], [32, 24], atol=1e-5)
    assert np.all(np.asarray(z) > 0) and np.asarray(uv)[1, 1] < 24  # world +y is up in an OpenGL scene
    np.testing.assert_allclose(out["intrinsics"][:, 0, 0], [100, 90])  # per-frame override
    np.testing.assert_allclose(out["intrinsics"][:, 1, 1], [110, 110])
    np.testing.assert_allclose(out["distortion"]["k1"], [0.01, 0.01])
    assert set(out["distortion"]) == {"k1", "p1"} and out["applied_transform"].shape == (4, 4)

    # instant-ngp / NeRF-synthetic style: camera_angle_x, no w/h in the file.
    ngp = {
        "camera_angle_x": 2 * np.arctan(0.5),
        "frames": [{"file_path": "./r_0", "transform_matrix": np.eye(4).tolist()}],
    }
    p.write_text(json.dumps(ngp))
    with pytest.raises(FormatError, match=r"frames\[0\]: no image size"):
        fm.read_transforms_json(p)
    out = fm.read_transforms_json(p, image_hw=(80, 100))
    np.testing.assert_allclose(out["intrinsics"][0], [[100, 0, 50], [0, 100, 40], [0, 0, 1]], rtol=1e-6)


def test_read_transforms_json_errors_name_the_field(tmp_path):
    p = tmp_path / "transforms.json"

    def write(meta):
        p.write_text(json.dumps(meta))

    base = {"fl_x": 50.0, "fl_y": 50.0, "cx": 8.0, "cy": 8.0, "w": 16, "h": 16}
    write({**base, "frames": [{"transform_matrix": np.eye(4).tolist()}, {"file_path": "x"}]})
    with pytest.raises(FormatError, match=r"frames\[1\]\.transform_matrix: missing"):
        fm.read_transforms_json(p)
    bad = np.eye(4)
    bad[0, 0] = 3
    write({**base, "frames": [{"transform_matrix": bad.tolist()}]})
    with pytest.raises(FormatError, match=r"frames\[0\]\.transform_matrix: rotation block is not orthonormal"):
        fm.read_transforms_json(p)
    write({**base, "frames": [{"transform_matrix": np.eye(3).tolist()}]})
    with pytest.raises(FormatError, match="expected a matrix of shape"):
        fm.read_transforms_json(p)
    write({**base, "fl_x": 0.0, "frames": [{"transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(FormatError, match="focal lengths must be positive"):
        fm.read_transforms_json(p)
    write({**base, "camera_model": "OPENCV_FISHEYE", "frames": [{"transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(FormatError, match="camera_model: unsupported"):
        fm.read_transforms_json(p)
    write({**base, "frames": []})
    with pytest.raises(FormatError, match="frames: expected a non-empty list"):
        fm.read_transforms_json(p)
    p.write_text('{"frames": [\n  {"transform_matrix": [[1, 0]]\n')
    with pytest.raises(FormatError, match="invalid JSON") as e:
        fm.read_transforms_json(p)
    assert e.value.line is not None and str(p) in str(e.value)
    eye = "[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]"
    p.write_text('{"fl_x": NaN, "w": 4, "h": 4, "frames": [{"transform_matrix": %s}]}' % eye)
    with pytest.raises(FormatError, match="fl_x: non-finite"):
        fm.read_transforms_json(p)
    with pytest.raises(CameraError, match="cam2world"):
        fm.write_transforms_json(p, np.eye(4), np.eye(3), (4, 4))
    with pytest.raises(CameraError, match="file_paths"):
        fm.write_transforms_json(p, np.eye(4)[None], np.eye(3), (4, 4), file_paths=["a", "b"])


# ------------------------------------------------------------------------------ WorldScore


def test_read_worldscore_hand_written(tmp_path):
    # What WorldScore's CameraGen.save_cameras writes: Blender c2w = inverse(diag(-1,1,-1,1) @ w2c_pt3d).
    # The first camera (PyTorch3D w2c = identity) and one pushed in by 1 (w2c T_z = -1).
    w2c_pt3d = [np.eye(4), np.eye(4)]
    w2c_pt3d[1][2, 3] = -1.0
    blender = [np.linalg.inv(np.diag([-1.0, 1, -1, 1]) @ m) for m in w2c_pt3d]
    mats = [b.tolist() for b in blender]
    data = {"focal_length": 500, "scale": 1, "cameras": mats, "cameras_interp": mats}
    p = tmp_path / "camera_data.json"
    p.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="pass image_hw"):
        fm.read_worldscore_cameras(p)
    out = fm.read_worldscore_cameras(p, image_hw=(704, 1280))
    np.testing.assert_allclose(out["intrinsics"][1], [[500, 0, 640], [0, 500, 352], [0, 0, 1]])
    c2w = out["cam2world"]
    assert c2w.shape == (2, 4, 4) and out["keyframes_cam2world"].shape == (2, 4, 4)
    assert np.linalg.det(c2w[0, :3, :3]) == pytest.approx(1.0)  # a proper OpenCV rotation
    # "push_in": the second camera sits one unit along the first camera's viewing direction.
    np.testing.assert_allclose(c2w[1, :3, 3] - c2w[0, :3, 3], c2w[0, :3, 2], atol=1e-6)
    np.testing.assert_allclose(c2w[1, :3, :3], c2w[0, :3, :3], atol=1e-7)
    assert out["scale"] == 1.0 and out["focal_length"] == 500.0


def test_worldscore_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    T, hw = 6, (704, 1280)
    c2w = _poses(rng, T)
    K = np.array([[512.5, 0, 640], [0, 512.5, 352], [0, 0, 1]], np.float32)
    p = tmp_path / "camera_data.json"
    fm.write_worldscore_cameras(p, c2w, K, hw, keyframe_indices=[0, 3, 5], scale=2.0)
    data = json.loads(p.read_text())
    assert set(data) >= {"focal_length", "scale", "cameras", "cameras_interp"} and len(data["cameras"]) == 3
    np.testing.assert_allclose(np.asarray(data["cameras_interp"][1]), c2w[1] @ GL, atol=1e-7)
    out = fm.read_worldscore_cameras(p)  # image size from our extra "image_hw" key
    np.testing.assert_array_equal(out["cam2world"], c2w)
    np.testing.assert_array_equal(out["keyframes_cam2world"], c2w[[0, 3, 5]])
    np.testing.assert_array_equal(out["intrinsics"], np.broadcast_to(K, (T, 3, 3)))
    assert out["scale"] == 2.0 and out["image_hw"] == hw
    with pytest.raises(FormatError, match="image_hw"):
        fm.read_worldscore_cameras(p, image_hw=(720, 1280))
    off = K.copy()
    off[0, 2] = 600
    with pytest.raises(CameraError, match="image centre"):
        fm.write_worldscore_cameras(p, c2w, off, hw)
    aniso = K.copy()
    aniso[1, 1] = 500
    with pytest.raises(CameraError, match="one focal length"):
        fm.write_worldscore_cameras(p, c2w, aniso, hw)
    p.write_text(json.dumps({"focal_length": 500, "cameras_interp": [np.eye(4).tolist(), np.eye(3).tolist()]}))
    with pytest.raises(FormatError, match=r"cameras_interp\[1\]"):
        fm.read_worldscore_cameras(p, image_hw=hw)
    p.write_text(json.dumps({"cameras_interp": [np.eye(4).tolist()]}))
    with pytest.raises(FormatError, match="focal_length: missing"):
        fm.read_worldscore_cameras(p, image_hw=hw)


# ------------------------------------------------------------------------------ geometry.npz


def _geometry(rng, T=3, hw=(8, 12)):
    H, W = hw
    return dict(
        depths=rng.uniform(0.5, 5, (T, H, W)).astype(np.float32),
        intrinsics=_intrinsics(rng, T, hw),
        poses_c2w=_poses(rng, T),
        frames=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        masks=rng.random((T, H, W)) > 0.3,
        frame_indices=np.arange(T, dtype=np.int64) * 4,
    )


def test_geometry_npz_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    g = _geometry(rng)
    p = tmp_path / "geometry.npz"
    fm.write_geometry_npz(p, g["depths"], g["intrinsics"], g["poses_c2w"], frames=g["frames"], masks=g["masks"],
                          frame_indices=g["frame_indices"], original_size=(16, 24), extras={"note_ids": np.arange(3)})
    raw = np.load(p, allow_pickle=False)
    np.testing.assert_array_equal(raw["processed_size"], [8, 12])
    out = fm.read_geometry_npz(p)
    for k, v in g.items():
        got = getattr(out, k)
        assert got.dtype == v.dtype, k
        np.testing.assert_array_equal(got, v, err_msg=k)
    assert out.original_size == (16, 24) and out.processed_size == (8, 12)
    assert out.num_frames == 3 and out.image_hw == (8, 12) and out.sidecar is None
    np.testing.assert_array_equal(out.extras["note_ids"], np.arange(3))
    out.save(tmp_path / "again.npz")
    again = fm.read_geometry_npz(tmp_path / "again.npz")
    np.testing.assert_array_equal(again.depths, g["depths"])


def test_geometry_npz_minimal_reference_file(tmp_path):
    # A file as the reference pipeline might write it: no frames (first_frame.png next to it),
    # integer masks, sizes stored (W, H).
    rng = np.random.default_rng(6)
    g = _geometry(rng, T=2, hw=(8, 12))
    p = tmp_path / "geometry.npz"
    np.savez(p, depths=g["depths"].astype(np.float64), intrinsics=g["intrinsics"], poses_c2w=g["poses_c2w"],
             masks=g["masks"].astype(np.uint8), original_size=np.array([24, 16]), processed_size=np.array([12, 8]))
    (tmp_path / "first_frame.png").write_bytes(b"")
    out = fm.read_geometry_npz(p)
    assert out.frames is None and out.sidecar == str(tmp_path / "first_frame.png")
    assert out.depths.dtype == np.float32 and out.masks.dtype == np.bool_
    np.testing.assert_array_equal(out.masks, g["masks"])
    assert out.processed_size == (8, 12) and out.original_size == (16, 24)  # returned as (H, W)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("depths", np.zeros((3, 8)), r"depths: expected shape \(T, H, W\)"),
        ("depths", np.full((3, 8, 12), np.nan, np.float32), "depths: .*non-finite"),
        ("depths", np.zeros((3, 8, 12), np.int32), "depths: expected a float dtype"),
        ("intrinsics", np.tile(np.eye(3), (2, 1, 1)), r"intrinsics: expected shape \(3, 3, 3\)"),
        ("intrinsics", np.zeros((3, 3, 3)), "intrinsics: .*not a pinhole|intrinsics: .*focal"),
        ("poses_c2w", np.tile(np.diag([1.0, 2, 1, 1]), (3, 1, 1)), "poses_c2w: rotation is not orthonormal"),
        ("poses_c2w", np.tile(np.eye(4), (4, 1, 1)), r"poses_c2w: expected shape \(3, 4, 4\)"),
        ("frames", np.zeros((3, 8, 12, 3), np.float32), "frames: expected uint8"),
        ("frames", np.zeros((3, 12, 8, 3), np.uint8), "frames: expected shape"),
        ("masks", np.full((3, 8, 12), 7, np.uint8), "masks: integer masks must hold only 0/1"),
        ("masks", np.ones((3, 8, 12), np.float32), "masks: expected bool"),
        ("frame_indices", np.arange(4), "frame_indices: expected integers"),
        ("processed_size", np.array([9, 12]), "processed_size: .* does not match"),
        ("original_size", np.array([1.5, 2.0]), "original_size: expected two positive integers"),
        ("masks", np.array([None] * 3, dtype=object), "masks: cannot be loaded without pickle"),
    ],
)
def test_geometry_npz_errors_name_file_and_key(tmp_path, key, value, match):
    rng = np.random.default_rng(7)
    g = _geometry(rng)
    g[key] = value
    p = tmp_path / "geometry.npz"
    np.savez(p, **g)
    with pytest.raises(FormatError, match=match) as e:
        fm.read_geometry_npz(p)
    assert e.value.key == key and str(e.value).startswith(f"{p}: {key}: ")


def test_geometry_npz_missing_key_and_not_npz(tmp_path):
    rng = np.random.default_rng(8)
    g = _geometry(rng)
    del g["poses_c2w"]
    p = tmp_path / "geometry.npz"
    np.savez(p, **g)
    with pytest.raises(FormatError, match="poses_c2w: required but missing"):
        fm.read_geometry_npz(p)
    p.write_text("not a zip")
    with pytest.raises(FormatError, match="not a readable .npz"):
        fm.read_geometry_npz(p)
    with pytest.raises(CameraError, match="depths"):
        fm.write_geometry_npz(p, np.zeros((2, 3)), np.eye(3)[None], np.eye(4)[None])


@pytest.mark.parametrize(
    "change,match",
    [
        ({"fl_x": 1e300}, r"frames\[0\]: intrinsics .* not finite in float32"),
        ({"cx": -1e39}, r"frames\[0\]: intrinsics .* not finite in float32"),
        ({"fl_x": 1e-14}, r"frames\[0\]: focal lengths fx/W=.* field of view under 179 degrees"),
        ({"fl_x": None, "camera_angle_x": 0.0}, r"camera_angle_x must be a field of view in \(0, pi\)"),
        ({"fl_x": None, "camera_angle_x": 3.141592653589793}, r"camera_angle_x must be a field of view in \(0, pi\)"),
        ({"fl_x": None, "camera_angle_x": 3.14159265}, r"field of view under 179 degrees"),
        ({"w": 1e300}, r"image size must be positive integers below 2\*\*31"),
        ({"k1": 1e39}, r"distortion k1: values not finite in float32"),
    ],
)
def test_read_transforms_json_values_checked_in_float32(tmp_path, change, match):
    meta = {"fl_x": 50.0, "cx": 8.0, "cy": 8.0, "w": 16, "h": 16, "frames": [{"transform_matrix": np.eye(4).tolist()}]}
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None}
    p = tmp_path / "transforms.json"
    p.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=match):
        fm.read_transforms_json(p)
    # A translation finite in float64 but not in float32 is refused too (it used to come back inf).
    m = np.eye(4)
    m[0, 3] = 1e300
    p.write_text(json.dumps({"fl_x": 50.0, "w": 16, "h": 16, "frames": [{"transform_matrix": m.tolist()}]}))
    with pytest.raises(FormatError, match=r"frames\[0\]\.transform_matrix: matrix: values not finite in float32"):
        fm.read_transforms_json(p)


def test_text_readers_refuse_float32_overflow_with_file_and_line(tmp_path):
    good = "u\n0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0\n"
    for row, col in ((1, 1), (1, 10)):
        tokens = good.splitlines()[row].split()
        tokens[col] = "1e300"
        p = tmp_path / "cams.txt"
        p.write_text("u\n" + " ".join(tokens) + "\n")
        with pytest.raises(FormatError, match=rf"cams.txt:2: .*not finite in float32"):
            fm.read_re10k(p)
    (tmp_path / "w2c.txt").write_text("[[1, 0, 0, 1e39], [0, 1, 0, 0], [0, 0, 1, 0]]\n")
    (tmp_path / "intrinsics.txt").write_text("0.5 0.8 0.5 0.5\n")
    with pytest.raises(FormatError, match=r"w2c.txt:1: .*not finite in float32"):
        fm.read_spatia(tmp_path)
    (tmp_path / "w2c.txt").write_text("[\n")
    with pytest.raises(FormatError, match=r"w2c.txt:1: expected a 3x4 or 4x4 matrix .* got 0"):
        fm.read_spatia(tmp_path)


def test_geometry_npz_depth_overflow_and_huge_headers(tmp_path):
    import zipfile

    rng = np.random.default_rng(7)
    g = _geometry(rng)
    g["depths"] = g["depths"].astype(np.float64)
    g["depths"][0, 0, 0] = 1e300
    np.savez(tmp_path / "geometry.npz", **g)
    with pytest.raises(FormatError, match="depths: 1 non-finite values in float32"):
        fm.read_geometry_npz(tmp_path / "geometry.npz")
    # An npy header claiming 1e12 elements fails before anything is allocated.
    g = _geometry(rng)
    np.savez(tmp_path / "good.npz", **g)
    with zipfile.ZipFile(tmp_path / "good.npz") as zin, zipfile.ZipFile(tmp_path / "huge.npz", "w") as zout:
        for info in zin.infolist():
            d = zin.read(info)
            if info.filename == "depths.npy":
                end, old, new = d.index(b"\n"), b"(3, 8, 12)", b"(3, 8, 1000000000000)"
                i, grow = d.index(old), len(new) - len(old)
                d = d[:i] + new + d[i + len(old) : end - grow] + d[end:]
            zout.writestr(info, d)
    with pytest.raises(FormatError, match=r"huge.npz: depths: header claims .* but the member holds"):
        fm.read_geometry_npz(tmp_path / "huge.npz")


def test_format_errors_are_project_errors():
    from mirage_jax.errors import FileFormatError, InputError

    assert issubclass(FormatError, FileFormatError) and issubclass(CameraError, InputError)
