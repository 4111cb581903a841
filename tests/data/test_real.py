"""The packaged Middlebury motorcycle pair: values, calibration, depth, validity and poses."""

import re

import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data")

from mirage_jax.data.real import MOTORCYCLE, StereoCalibration, StereoPair, middlebury_motorcycle  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> StereoPair:
    return middlebury_motorcycle()


@pytest.fixture(scope="module")
def raw():
    return skdata.stereo_motorcycle()


def _docstring_value(label: str) -> float:
    doc = skdata.stereo_motorcycle.__doc__
    m = re.search(rf"{re.escape(label)}:\s*([0-9.]+)\s*(px|mm)", doc)
    assert m is not None, f"{label!r} not found in skimage's stereo_motorcycle docstring"
    return float(m.group(1))


def test_calibration_matches_skimage_docstring():
    assert MOTORCYCLE.focal == pytest.approx(_docstring_value("Focal length"))
    assert MOTORCYCLE.cx == pytest.approx(_docstring_value("Principal point x"))
    assert MOTORCYCLE.cy == pytest.approx(_docstring_value("Principal point y"))
    assert MOTORCYCLE.doffs == pytest.approx(_docstring_value("Principal point dx"))
    assert MOTORCYCLE.baseline_m == pytest.approx(_docstring_value("Baseline") / 1000.0)
    # And the numbers written in the spec, section 9.
    assert (MOTORCYCLE.focal, MOTORCYCLE.cx, MOTORCYCLE.cy, MOTORCYCLE.doffs) == (
        994.978,
        311.193,
        254.877,
        31.086,
    )
    assert MOTORCYCLE.baseline_m == pytest.approx(0.193001)
    assert MOTORCYCLE.fy == MOTORCYCLE.focal


def test_shapes_dtypes_and_photos(pair, raw):
    left, right, _ = raw
    assert pair.image_hw == (500, 741)
    assert pair.left.shape == pair.right.shape == (500, 741, 3)
    assert pair.left.dtype == pair.right.dtype == np.uint8
    np.testing.assert_array_equal(pair.left, left)
    np.testing.assert_array_equal(pair.right, right)
    assert pair.depth.shape == pair.valid.shape == pair.disparity.shape == (500, 741)
    assert pair.depth.dtype == np.float32 and pair.valid.dtype == np.bool_
    assert pair.K_left.shape == pair.K_right.shape == (3, 3) and pair.K_left.dtype == np.float32
    assert pair.cam2world_left.shape == pair.cam2world_right.shape == (4, 4)
    assert pair.cam2world_right.dtype == np.float32
    assert pair.depth_unit == "m"
    # Read-only: the cached pair cannot be corrupted by a caller.
    with pytest.raises(ValueError):
        pair.depth[0, 0] = 1.0
    assert middlebury_motorcycle() is pair


def test_intrinsics_and_poses(pair):
    f, cx, cy, doffs, B = 994.978, 311.193, 254.877, 31.086, 0.193001
    np.testing.assert_allclose(pair.K_left, [[f, 0, cx], [0, f, cy], [0, 0, 1]], rtol=1e-7)
    np.testing.assert_allclose(pair.K_right, [[f, 0, cx + doffs], [0, f, cy], [0, 0, 1]], rtol=1e-7)
    np.testing.assert_array_equal(pair.cam2world_left, np.eye(4, dtype=np.float32))
    expected = np.eye(4)
    expected[0, 3] = B
    np.testing.assert_allclose(pair.cam2world_right, expected, rtol=1e-7)
    from mirage_jax.geometry.cameras import check_intrinsics, check_pose

    check_intrinsics(pair.K_left, "K_left")
    check_intrinsics(pair.K_right, "K_right")
    check_pose(pair.cam2world_right, "cam2world_right")


def test_depth_formula_at_pixels(pair, raw):
    disp = raw[2]
    f, doffs, B = 994.978, 31.086, 0.193001
    finite = np.argwhere(np.isfinite(disp))
    rng = np.random.default_rng(0)
    for v, u in finite[rng.choice(len(finite), size=20, replace=False)]:
        expected = f * B / (float(disp[v, u]) + doffs)
        assert pair.valid[v, u]
        assert pair.depth[v, u] == pytest.approx(expected, rel=1e-6)
    # Metres: the motorcycle is a couple of metres from the rig.
    d = pair.depth[pair.valid]
    assert 1.5 < d.min() < d.max() < 6.0
    assert 2.0 < float(np.median(d)) < 4.0


def test_unknown_pixels_flagged_invalid(pair, raw):
    disp = raw[2]
    unknown = ~np.isfinite(disp)
    assert unknown.sum() > 1000  # the GT has holes (occlusions): ~7% of pixels
    np.testing.assert_array_equal(pair.valid, ~unknown)
    assert np.all(pair.depth[unknown] == 0.0)
    assert np.all(pair.depth[~unknown] > 0.0)
    assert np.all(np.isfinite(pair.depth))


def test_nan_and_negative_denominators_are_invalid():
    disp = np.array([[10.0, np.nan, np.inf], [-np.inf, -40.0, 0.0]], np.float32)
    depth, valid = MOTORCYCLE.depth_from_disparity(disp)
    np.testing.assert_array_equal(valid, [[True, False, False], [False, False, True]])
    assert depth[0, 0] == pytest.approx(994.978 * 0.193001 / 41.086, rel=1e-6)
    assert depth[1, 2] == pytest.approx(994.978 * 0.193001 / 31.086, rel=1e-6)
    assert np.all(depth[~valid] == 0.0)
    with pytest.raises(ValueError, match="disparity"):
        MOTORCYCLE.depth_from_disparity(np.zeros((2, 2), np.int32))


def test_right_camera_geometry_is_the_disparity(pair):
    """A left pixel x with disparity d projects to x - d in the right camera (OpenCV axes)."""
    v, u = np.nonzero(pair.valid)
    sel = slice(0, None, 997)
    v, u = v[sel].astype(np.float64), u[sel].astype(np.float64)
    z = pair.depth[v.astype(int), u.astype(int)].astype(np.float64)
    K = pair.K_left.astype(np.float64)
    X = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z, np.ones_like(z)])
    world = pair.cam2world_left.astype(np.float64) @ X
    cam_r = np.linalg.inv(pair.cam2world_right.astype(np.float64)) @ world
    Kr = pair.K_right.astype(np.float64)
    ur = Kr[0, 0] * cam_r[0] / cam_r[2] + Kr[0, 2]
    vr = Kr[1, 1] * cam_r[1] / cam_r[2] + Kr[1, 2]
    d = pair.disparity[v.astype(int), u.astype(int)]
    np.testing.assert_allclose(ur, u - d, atol=1e-3)
    np.testing.assert_allclose(vr, v, atol=1e-6)


def test_resized_pair_is_consistent(pair):
    small = pair.resized(0.25)
    assert small.image_hw == (125, 185)
    assert small.left.shape == (125, 185, 3) and small.left.dtype == np.uint8
    sx, sy = 185 / 741, 125 / 500
    assert small.K_left[0, 0] == pytest.approx(994.978 * sx, rel=1e-6)
    assert small.K_left[1, 1] == pytest.approx(994.978 * sy, rel=1e-6)
    assert small.K_left[0, 2] == pytest.approx((311.193 + 0.5) * sx - 0.5, rel=1e-6)
    assert small.K_right[0, 2] - small.K_left[0, 2] == pytest.approx(31.086 * sx, rel=1e-5)
    np.testing.assert_array_equal(small.cam2world_right, pair.cam2world_right)
    # Depth stays metric: nearest-sampled, so every small depth is one of the full-res depths.
    rows = ((np.arange(125) + 0.5) / sy).astype(int)
    cols = ((np.arange(185) + 0.5) / sx).astype(int)
    np.testing.assert_allclose(small.depth, pair.depth[rows[:, None], cols[None, :]], rtol=1e-5)
    np.testing.assert_array_equal(small.valid, pair.valid[rows[:, None], cols[None, :]])
    # Box-filtered photos: the mean colour is preserved.
    assert abs(small.left.mean() - pair.left.mean()) < 1.0
    assert pair.resized(1.0) is pair
    with pytest.raises(ValueError, match="scale"):
        pair.resized(0.0)


def test_from_arrays_rejects_bad_input():
    img = np.zeros((4, 5, 3), np.uint8)
    disp = np.ones((4, 5), np.float32)
    cal = StereoCalibration(focal=10.0, cx=2.0, cy=2.0, doffs=1.0, baseline_m=0.1)
    StereoPair.from_arrays(img, img, disp, cal, "ok")
    with pytest.raises(ValueError, match="left.*uint8"):
        StereoPair.from_arrays(img.astype(np.float32), img, disp, cal, "x")
    with pytest.raises(ValueError, match="right"):
        StereoPair.from_arrays(img, img[:3], disp, cal, "x")
    with pytest.raises(ValueError, match="disparity"):
        StereoPair.from_arrays(img, img, disp[:, :4], cal, "x")
    with pytest.raises(ValueError, match="view"):
        cal.intrinsics("centre")
