"""Tests for mirage_jax.geometry.cameras: intrinsics scaling, poses, conventions, validators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirage_jax.geometry import cameras as cam
from mirage_jax.geometry.cameras import CameraError


def _rotation_from_quat(q):
    q = np.asarray(q, np.float64)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _random_pose(rng):
    P = np.eye(4)
    P[:3, :3] = _rotation_from_quat(rng.normal(size=4))
    P[:3, 3] = rng.normal(size=3) * 3
    return P.astype(np.float32)


_project = jax.jit(cam.project_points)

quats = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2)
vec3 = st.lists(st.floats(-50, 50), min_size=3, max_size=3)


def _K(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


# ------------------------------------------------------------------------------ intrinsics


def test_scale_intrinsics_reference_values():
    K = _K(500.0, 480.0, 320.0, 176.0)
    Ks = np.asarray(cam.scale_intrinsics(K, (352, 640), (22, 40), "reference"))
    np.testing.assert_allclose(Ks, _K(500 / 16, 480 / 16, 320 / 16, 176 / 16), rtol=1e-6)


def test_scale_intrinsics_reference_maps_block_corner_to_cell():
    # Reference semantics: grid cell u corresponds to image x = 16 u (no half-pixel correction).
    rng = np.random.default_rng(0)
    H, W, h, w = 64, 96, 4, 6
    K = _K(70.0, 75.0, 47.3, 30.1)
    Ks = np.asarray(cam.scale_intrinsics(K, (H, W), (h, w), "reference"), np.float64)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    x, y = 16.0 * u, 16.0 * v
    z = rng.uniform(1, 5, size=u.shape)
    X = (x - K[0, 2]) * z / K[0, 0]
    Y = (y - K[1, 2]) * z / K[1, 1]
    np.testing.assert_allclose(Ks[0, 0] * X / z + Ks[0, 2], u, atol=1e-4)
    np.testing.assert_allclose(Ks[1, 1] * Y / z + Ks[1, 2], v, atol=1e-4)


def test_scale_intrinsics_centred_maps_block_centres_to_cell_centres():
    # A point seen at the centre of 16x16 block (u, v), pixel (16u + 7.5, 16v + 7.5), must land
    # exactly on grid cell (u, v) with the centred convention.
    rng = np.random.default_rng(1)
    H, W, h, w = 64, 96, 4, 6
    K = _K(70.0, 75.0, 47.3, 30.1)
    Ks = np.asarray(cam.scale_intrinsics(K, (H, W), (h, w), "centred"), np.float64)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    x, y = 16.0 * u + 7.5, 16.0 * v + 7.5
    z = rng.uniform(1, 5, size=u.shape)
    pts = np.stack([(x - K[0, 2]) * z / K[0, 0], (y - K[1, 2]) * z / K[1, 1], z], -1).reshape(-1, 3)
    uv, depth = _project(pts, Ks, np.eye(4, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(uv), np.stack([u, v], -1).reshape(-1, 2), atol=1e-4)
    np.testing.assert_allclose(np.asarray(depth), z.reshape(-1), rtol=1e-6)
    # The reference convention is off by exactly 7.5 / 16 of a cell there.
    Kr = np.asarray(cam.scale_intrinsics(K, (H, W), (h, w), "reference"), np.float64)
    uv_r, _ = _project(pts, Kr, np.eye(4, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(uv_r) - np.asarray(uv), 7.5 / 16, atol=1e-4)


def test_scale_intrinsics_batched_jit_and_bad_convention():
    K = np.stack([_K(50, 60, 31, 17), _K(80, 80, 40, 20)])
    f = jax.jit(cam.scale_intrinsics, static_argnums=(1, 2, 3))
    out = f(K, (32, 64), (2, 4), "centred")
    assert out.shape == (2, 3, 3)
    single = cam.scale_intrinsics(K[1], (32, 64), (2, 4), "centred")
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(single))
    with pytest.raises(ValueError, match="convention"):
        cam.scale_intrinsics(K, (32, 64), (2, 4), "center")


# ------------------------------------------------------------------------------ poses


@given(quats, vec3)
def test_invert_pose_property(q, t):
    P = np.eye(4)
    P[:3, :3] = _rotation_from_quat(q)
    P[:3, 3] = t
    P = P.astype(np.float32)
    Pi = np.asarray(cam.invert_pose(P), np.float64)
    np.testing.assert_allclose(Pi @ P, np.eye(4), atol=5e-5)
    np.testing.assert_allclose(P.astype(np.float64) @ Pi, np.eye(4), atol=5e-5)
    np.testing.assert_allclose(np.asarray(cam.invert_pose(Pi.astype(np.float32))), P, atol=5e-5)
    assert np.array_equal(Pi[3], [0, 0, 0, 1])


def test_invert_pose_batched_matches_linalg_inv():
    rng = np.random.default_rng(2)
    P = np.stack([_random_pose(rng) for _ in range(5)])
    np.testing.assert_allclose(np.asarray(cam.invert_pose(P)), np.linalg.inv(P), atol=1e-5)


def test_opengl_opencv_conversion():
    rng = np.random.default_rng(3)
    P = _random_pose(rng)
    gl = np.asarray(cam.opencv_to_opengl(P))
    np.testing.assert_allclose(np.asarray(cam.opengl_to_opencv(gl)), P, atol=1e-7)  # involution
    assert np.linalg.det(gl[:3, :3]) == pytest.approx(1.0, abs=1e-5)  # still a rotation
    np.testing.assert_array_equal(gl[:3, 3], P[:3, 3])  # same camera centre
    # OpenGL camera looks down its -z, with +y up; OpenCV looks down +z with +y down.
    np.testing.assert_allclose(gl[:3, 0], P[:3, 0])
    np.testing.assert_allclose(gl[:3, 1], -P[:3, 1])
    np.testing.assert_allclose(gl[:3, 2], -P[:3, 2])
    # A point 2 m in front of the camera: z_gl = -2 in GL camera coordinates, z_cv = +2.
    p = P[:3, 3] + 2 * P[:3, 2]
    x_gl = np.linalg.inv(gl) @ np.append(p, 1)
    x_cv = np.linalg.inv(P) @ np.append(p, 1)
    assert x_gl[2] == pytest.approx(-2, abs=1e-4) and x_cv[2] == pytest.approx(2, abs=1e-4)


@given(vec3, vec3)
def test_look_at_is_a_rotation_pointing_at_target_with_given_up(eye, target):
    eye, target = np.asarray(eye), np.asarray(target)
    up = np.array([0.0, -1.0, 0.0])
    d = target - eye
    if np.linalg.norm(d) < 1e-2 or np.linalg.norm(np.cross(d / np.linalg.norm(d), up)) < 1e-2:
        return  # degenerate: target on top of the eye or straight up/down
    P = np.asarray(cam.look_at(eye, target, up), np.float64)
    R = P[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-5)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(P[:3, 3], eye, atol=1e-4)
    np.testing.assert_allclose(R[:, 2], d / np.linalg.norm(d), atol=1e-5)
    # Image up (-y) is the world up made perpendicular to the view direction.
    up_perp = up - np.dot(up, R[:, 2]) * R[:, 2]
    np.testing.assert_allclose(-R[:, 1], up_perp / np.linalg.norm(up_perp), atol=1e-4)


def test_look_at_target_projects_to_centre_and_up_is_up():
    K = _K(100, 100, 64, 48)
    P = cam.look_at(np.array([1.0, -2.0, -3.0]), np.array([0.5, 0.0, 4.0]), up=(0.0, -1.0, 0.0))
    pts = np.array([[0.5, 0.0, 4.0], [0.5, -0.5, 4.0]], np.float32)  # target and a point above it
    uv, z = _project(pts, K, P)
    uv = np.asarray(uv)
    np.testing.assert_allclose(uv[0], [64, 48], atol=1e-3)
    assert np.all(np.asarray(z) > 0)
    assert uv[1, 1] < 48 - 1  # world up (-y) appears higher in the image (smaller v)
    assert abs(uv[1, 0] - 64) < 1.0
    # A z-up world works too when told so.
    P2 = np.asarray(cam.look_at(np.array([0.0, -5.0, 0.0]), np.zeros(3), up=(0.0, 0.0, 1.0)))
    np.testing.assert_allclose(-P2[:3, 1], [0, 0, 1], atol=1e-6)


def test_unproject_project_round_trip():
    rng = np.random.default_rng(4)
    h, w = 5, 7
    K = _K(6.0, 6.5, 3.2, 2.1)
    P = _random_pose(rng)
    depth = rng.uniform(0.5, 4.0, size=(h, w)).astype(np.float32)
    pts = np.asarray(jax.jit(cam.unproject_grid)(depth, K, P))
    assert pts.shape == (h, w, 3)
    uv, z = jax.jit(cam.project_points)(pts.reshape(-1, 3), K, P)
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    np.testing.assert_allclose(np.asarray(uv), np.stack([u, v], -1).reshape(-1, 2), atol=2e-3)
    np.testing.assert_allclose(np.asarray(z), depth.reshape(-1), rtol=1e-4)
    # vmap over a batch of cameras gives the same as one at a time.
    Pb = np.stack([P, _random_pose(rng)])
    batched = jax.jit(jax.vmap(cam.unproject_grid, in_axes=(None, None, 0)))(jnp.asarray(depth), K, Pb)
    np.testing.assert_allclose(np.asarray(batched[0]), pts, atol=1e-5)


# ------------------------------------------------------------------------------ validators


def test_check_intrinsics_errors_name_the_argument():
    good = _K(10, 10, 5, 5)
    assert cam.check_intrinsics(good, "K").dtype == np.float32
    with pytest.raises(CameraError, match=r"myK: expected shape"):
        cam.check_intrinsics(np.eye(4), "myK")
    with pytest.raises(CameraError, match=r"myK: contains non-finite"):
        cam.check_intrinsics(_K(np.nan, 10, 5, 5), "myK")
    with pytest.raises(CameraError, match=r"myK: focal lengths must be positive"):
        cam.check_intrinsics(_K(0.0, 10, 5, 5), "myK")
    bad = good.copy()
    bad[2, 0] = 1
    with pytest.raises(CameraError, match=r"myK: not a pinhole"):
        cam.check_intrinsics(bad, "myK")


def test_check_pose_errors_name_the_argument():
    rng = np.random.default_rng(5)
    P = _random_pose(rng)
    assert cam.check_pose(P[:3], "pose").shape == (4, 4)  # 3x4 is completed
    with pytest.raises(CameraError, match=r"pose: expected shape"):
        cam.check_pose(np.eye(3), "pose")
    bad = P.copy()
    bad[0, 3] = np.inf
    with pytest.raises(CameraError, match=r"pose: contains non-finite"):
        cam.check_pose(bad, "pose")
    bad = P.copy()
    bad[:3, :3] *= 1.1
    with pytest.raises(CameraError, match=r"pose: rotation is not orthonormal"):
        cam.check_pose(bad, "pose")
    with pytest.raises(CameraError, match=r"pose: rotation has determinant"):
        cam.check_pose(P @ cam.OPENGL_TO_OPENCV @ np.diag([1, 1, -1, 1]).astype(np.float32), "pose")
    bad = P.copy()
    bad[3, 0] = 0.5
    with pytest.raises(CameraError, match=r"pose: bottom row"):
        cam.check_pose(bad, "pose")
    assert issubclass(CameraError, ValueError)


@given(seed=st.integers(0, 2**31 - 1))
def test_transforms_match_float64_and_are_batch_invariant(seed):
    """unproject_grid / project_points equal a float64 NumPy computation, batched or not."""
    rng = np.random.default_rng(seed)
    K = np.array([[rng.uniform(5, 20), rng.uniform(-0.5, 0.5), rng.uniform(0, 10)],
                  [0, rng.uniform(5, 20), rng.uniform(0, 8)], [0, 0, 1]], np.float32)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    P = np.eye(4, dtype=np.float32)
    P[:3, :3], P[:3, 3] = R, rng.normal(size=3)
    depth = rng.uniform(0.5, 5.0, (6, 7)).astype(np.float32)
    pts = jax.jit(cam.unproject_grid)(depth, K, P)
    # float64 reference of the same formula
    Kd, Pd = K.astype(np.float64), P.astype(np.float64)
    v, u = np.mgrid[0:6, 0:7].astype(np.float64)
    yy = (v - Kd[1, 2]) * depth / Kd[1, 1]
    xx = ((u - Kd[0, 2]) * depth - Kd[0, 1] * yy) / Kd[0, 0]
    ref = np.stack([xx, yy, depth], -1) @ Pd[:3, :3].T + Pd[:3, 3]
    np.testing.assert_allclose(np.asarray(pts), ref, rtol=1e-5, atol=1e-5)
    uv, zz = _project(np.asarray(pts).reshape(-1, 3), K, P)
    np.testing.assert_allclose(np.asarray(zz), depth.ravel(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(uv), np.stack([u.ravel(), v.ravel()], -1), atol=1e-3)
    Pb = np.stack([P, P, P])
    batched = jax.jit(jax.vmap(cam.project_points, in_axes=(None, None, 0)))(np.asarray(pts).reshape(-1, 3), K, Pb)
    np.testing.assert_allclose(np.asarray(batched[0][1]), np.asarray(uv), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(np.asarray(batched[1][2]), np.asarray(zz), rtol=1e-6, atol=1e-6)


def test_one_look_at_and_one_rigid_inverse_for_numpy_and_jax():
    eye = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, -3.0]])
    target = np.array([[0.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    P64 = cam.look_at(eye, target)  # NumPy in: NumPy out, float64 kept
    assert isinstance(P64, np.ndarray) and P64.dtype == np.float64
    Pj = cam.look_at(jnp.asarray(eye, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(np.asarray(Pj), P64, atol=1e-6)
    inv = cam.invert_pose(P64)
    assert isinstance(inv, np.ndarray) and inv.dtype == np.float64
    np.testing.assert_allclose(inv @ P64, np.broadcast_to(np.eye(4), P64.shape), atol=1e-12)
    np.testing.assert_allclose(np.asarray(cam.invert_pose(jnp.asarray(P64, jnp.float32))), inv, atol=1e-5)
    with pytest.raises(CameraError, match="eye and target coincide"):
        cam.look_at(np.zeros(3), np.zeros(3))
    with pytest.raises(CameraError, match="up is parallel"):
        cam.look_at(np.zeros(3), np.array([0.0, 2.0, 0.0]))
    # Under jit the values are unknown: a degenerate camera comes out as NaN (documented).
    out = jax.jit(cam.look_at)(jnp.zeros(3), jnp.zeros(3))
    assert np.isnan(np.asarray(out)).any()


def test_check_pose_refuses_float32_overflow():
    P = np.eye(4)
    P[1, 3] = 1e300  # finite in float64, inf in the float32 returned
    with pytest.raises(CameraError, match="non-finite values"):
        cam.check_pose(P)
