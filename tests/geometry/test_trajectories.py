"""Tests for mirage_jax.geometry.trajectories: presets, loops, orbits, splines, quaternions."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirage_jax.geometry import cameras as cam
from mirage_jax.geometry import trajectories as tr
from mirage_jax.geometry.cameras import CameraError

_project = jax.jit(cam.project_points)

quats = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2)


def _random_start(seed):
    rng = np.random.default_rng(seed)
    P = np.eye(4)
    P[:3, :3] = tr.quaternion_to_matrix(rng.normal(size=4))
    P[:3, 3] = rng.normal(size=3) * 3
    return P.astype(np.float32)


def _local(path, start):
    """Poses relative to the start camera (float64)."""
    return np.linalg.inv(start.astype(np.float64)) @ path.astype(np.float64)


def _is_valid_path(path):
    assert path.dtype == np.float32 and path.ndim == 3 and path.shape[1:] == (4, 4)
    cam.check_pose(path, "path")  # orthonormal, det +1, finite, bottom row


# ------------------------------------------------------------------------------ frame counts


def test_frame_counts_for_chunks():
    assert [tr.num_frames_for_chunks(k) for k in (1, 2, 5)] == [33, 65, 161]
    assert [tr.chunks_for_num_frames(n) for n in (33, 65, 161)] == [1, 2, 5]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(CameraError, match="num_chunks"):
            tr.num_frames_for_chunks(bad)
    for bad in (32, 34, 64):
        with pytest.raises(CameraError, match="33 \\+ 32 k"):
            tr.chunks_for_num_frames(bad)
    assert tr.preset("push_in", chunks=3).shape == (97, 4, 4)
    assert tr.orbit((0, 0, 1), 1.0, chunks=2).shape == (65, 4, 4)
    with pytest.raises(CameraError, match="exactly one of num_frames and chunks"):
        tr.preset("push_in", 33, chunks=1)
    with pytest.raises(CameraError, match="exactly one"):
        tr.preset("push_in")


# ------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "name, displacement",
    [
        ("push_in", (0, 0, 1.0)),
        ("pull_out", (0, 0, -1.0)),
        ("move_left", (-0.5, 0, 0)),
        ("move_right", (0.5, 0, 0)),
        ("move_up", (0, -0.5, 0)),
        ("move_down", (0, 0.5, 0)),
        ("fixed", (0, 0, 0)),
    ],
)
def test_translating_presets_move_along_start_camera_axes(seed, name, displacement):
    start = _random_start(seed)
    path = tr.preset(name, 33, start=start)
    _is_valid_path(path)
    np.testing.assert_array_equal(path[0], start)
    local = _local(path, start)
    np.testing.assert_allclose(local[-1, :3, 3], displacement, atol=1e-5)
    np.testing.assert_allclose(local[:, :3, :3], np.broadcast_to(np.eye(3), (33, 3, 3)), atol=1e-5)
    # Constant speed along a straight line (linear easing).
    steps = np.diff(local[:, :3, 3], axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(np.asarray(displacement) / 32, steps.shape), atol=1e-5)


@pytest.mark.parametrize(
    "name, forward_sign_axis",
    [("pan_left", (0, -1)), ("pan_right", (0, 1)), ("tilt_up", (1, -1)), ("tilt_down", (1, 1))],
)
def test_rotating_presets_turn_the_view(name, forward_sign_axis):
    start = _random_start(3)
    path = tr.preset(name, 17, start=start, angle_deg=40)
    _is_valid_path(path)
    local = _local(path, start)
    np.testing.assert_allclose(local[:, :3, 3], 0, atol=1e-5)  # rotation in place
    axis, sign = forward_sign_axis
    fwd = local[-1, :3, 2]  # view direction in the start camera's frame
    assert np.sign(fwd[axis]) == sign  # pan_left: towards -x (left); tilt_up: towards -y (up)
    assert math.degrees(math.acos(np.clip(fwd[2], -1, 1))) == pytest.approx(40, abs=1e-3)
    # The turn is about the camera's own vertical (pan) or horizontal (tilt) axis only.
    assert abs(fwd[1 - axis]) < 1e-6


@pytest.mark.parametrize("name, side", [("orbit_left", -1), ("orbit_right", 1)])
def test_orbits_keep_target_centred(name, side):
    start = _random_start(4)
    radius = 2.5
    path = tr.preset(name, 33, start=start, distance=radius, angle_deg=45)
    _is_valid_path(path)
    target = (start.astype(np.float64) @ np.array([0, 0, radius, 1.0]))[:3]
    K = np.array([[100, 0, 64], [0, 100, 48], [0, 0, 1]], np.float32)
    uv, z = _project(np.repeat(target[None], 33, 0)[:, None].astype(np.float32), K, path)
    np.testing.assert_allclose(np.asarray(uv)[:, 0], np.broadcast_to([64, 48], (33, 2)), atol=1e-3)
    np.testing.assert_allclose(np.asarray(z)[:, 0], radius, atol=1e-4)  # stays on the circle
    local = _local(path, start)
    assert np.sign(local[-1, 0, 3]) == side  # orbit_left moves the camera to its left (-x)
    assert local[-1, 1, 3] == pytest.approx(0, abs=1e-6)  # horizontal circle


def test_pull_presets():
    start = _random_start(5)
    for name, side in (("pull_left", -1), ("pull_right", 1)):
        local = _local(tr.preset(name, 33, start=start), start)
        np.testing.assert_allclose(local[-1, :3, 3], [0.3 * side, 0, -0.3], atol=1e-5)
        assert np.sign(local[-1, 0, 2]) == side  # the view turns the same way
    # A whole turn in place comes back exactly; a whole turn while moving does not.
    spin = tr.preset("pan_left", 9, start=start, angle_deg=360)
    np.testing.assert_array_equal(spin[-1], spin[0])
    np.testing.assert_allclose(spin[4], start @ np.diag([-1, 1, -1, 1]).astype(np.float32), atol=1e-5)
    moving = tr.preset("pull_left", 9, start=start, angle_deg=360)
    np.testing.assert_allclose(_local(moving, start)[-1, :3, 3], [-0.3, 0, -0.3], atol=1e-5)


def test_full_orbit_preset_returns_exactly_and_matches_orbit_function():
    path = tr.preset("orbit", 33, distance=2.0)
    np.testing.assert_array_equal(path[-1], path[0])
    np.testing.assert_array_equal(path[0], np.eye(4, dtype=np.float32))
    # The same circle from orbit(): centre 2 ahead of the identity camera.
    o = tr.orbit((0, 0, 2.0), 2.0, 33)
    np.testing.assert_allclose(o, path, atol=1e-5)
    # Halfway round, the camera is on the far side looking back (-z).
    np.testing.assert_allclose(path[16, :3, 3], [0, 0, 4], atol=1e-5)
    np.testing.assert_allclose(path[16, :3, 2], [0, 0, -1], atol=1e-5)


@pytest.mark.parametrize("name", sorted(tr.PRESETS))
@pytest.mark.parametrize("easing", ["linear", "smooth"])
def test_every_preset_loop_returns_exactly_to_start(name, easing):
    start = _random_start(6)
    T = tr.num_frames_for_chunks(2)
    loop = tr.preset(name, T, start=start, loop=True, easing=easing)
    _is_valid_path(loop)
    np.testing.assert_array_equal(loop[0], start)
    np.testing.assert_array_equal(loop[-1], start)
    # Odd T: the far end is hit at the middle frame, and the way back mirrors the way out.
    one_way = tr.preset(name, (T + 1) // 2, start=start, easing=easing)
    np.testing.assert_allclose(loop[T // 2], one_way[-1], atol=1e-5)
    np.testing.assert_allclose(loop[::-1], loop, atol=1e-5)


def test_smooth_easing_starts_and_stops_gently():
    lin = tr.preset("push_in", 33)[:, 2, 3]
    smooth = tr.preset("push_in", 33, easing="smooth")[:, 2, 3]
    assert smooth[-1] == pytest.approx(lin[-1], abs=1e-6)
    assert smooth[1] < 0.1 * lin[1]  # slow start
    assert (smooth[-1] - smooth[-2]) < 0.1 * (lin[-1] - lin[-2])  # slow stop
    assert np.all(np.diff(smooth) >= 0)


def test_preset_argument_errors():
    with pytest.raises(CameraError, match="unknown preset 'zoom'"):
        tr.preset("zoom", 10)
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(CameraError, match="start: rotation is not orthonormal"):
        tr.preset("push_in", 10, start=bad)
    with pytest.raises(CameraError, match="distance: must be finite"):
        tr.preset("push_in", 10, distance=float("nan"))
    with pytest.raises(CameraError, match="easing"):
        tr.preset("push_in", 10, easing="cubic")
    assert tr.preset("push_in", 1).shape == (1, 4, 4)


# ------------------------------------------------------------------------------ loops, orbits, chains


def test_out_and_back():
    path = tr.preset("pan_left", 17, start=_random_start(7))
    loop = tr.out_and_back(path)
    assert loop.shape == (33, 4, 4)
    np.testing.assert_array_equal(loop[-1], loop[0])
    np.testing.assert_array_equal(loop[:17], path)
    np.testing.assert_array_equal(loop[17:], path[-2::-1])
    with pytest.raises(CameraError, match="c2w_path"):
        tr.out_and_back(np.eye(4))


def test_orbit_function_centres_target_with_elevation_and_up():
    center = np.array([1.0, -0.5, 3.0])
    path = tr.orbit(center, 2.0, 25, elevation_deg=20, angle_deg=360)
    _is_valid_path(path)
    np.testing.assert_array_equal(path[-1], path[0])
    K = np.array([[50, 0, 32], [0, 50, 24], [0, 0, 1]], np.float32)
    uv, z = _project(np.repeat(center[None, None], 25, 0).astype(np.float32), K, path)
    np.testing.assert_allclose(np.asarray(uv)[:, 0], np.broadcast_to([32, 24], (25, 2)), atol=1e-3)
    np.testing.assert_allclose(np.asarray(z)[:, 0], 2.0, atol=1e-4)
    # Elevated: every camera is above the centre (world up is -y) and the image up is world up:
    # the camera's y axis (image down) has a positive world-y component.
    assert np.all(path[:, 1, 3] < center[1])
    assert np.all(path[:, 1, 1] > 0.5)
    # Consistent with cameras.look_at.
    np.testing.assert_allclose(np.asarray(cam.look_at(path[5, :3, 3], center)), path[5], atol=1e-5)
    with pytest.raises(CameraError, match="radius"):
        tr.orbit(center, 0.0, 10)
    with pytest.raises(CameraError, match="start_direction"):
        tr.orbit(center, 1.0, 10, start_direction=(0, 1, 0))


def test_chain_joins_segments_into_chunks():
    push = tr.preset("push_in", 33)
    pan = tr.preset("pan_left", 33)
    start = _random_start(8)
    path = tr.chain(push, pan, tr.preset("move_right", 33), start=start)
    assert path.shape == (tr.num_frames_for_chunks(3), 4, 4)
    _is_valid_path(path)
    local = _local(path, start)
    np.testing.assert_array_equal(path[0], start)
    np.testing.assert_allclose(local[32], push[-1], atol=1e-5)  # end of the first chunk
    np.testing.assert_allclose(local[64, :3, 3], [0, 0, 1], atol=1e-5)  # the pan happens in place
    # The last chunk moves right in the *panned* camera's frame.
    np.testing.assert_allclose(local[-1, :3, 3], [0, 0, 1] + 0.5 * local[64, :3, 0], atol=1e-5)
    rel = tr.relative_to_first(path)
    np.testing.assert_array_equal(rel[0], np.eye(4, dtype=np.float32))
    np.testing.assert_allclose(rel, local, atol=1e-5)


# ------------------------------------------------------------------------------ keyframe interpolation


def test_interpolate_keyframes_passes_through_keys_and_is_smooth():
    keys = tr.preset("orbit_left", 5, distance=2.0, angle_deg=120)
    keys[:, :3, 3] += np.array([[0, 0, 0], [0.3, -0.2, 0], [0, 0, 0.4], [-0.2, 0, 0], [0, 0.1, 0]], np.float32)
    T = 801  # fine sampling separates C1 (velocity jump -> 0 with the step) from C0
    path = tr.interpolate_keyframes(keys, T)
    _is_valid_path(path)
    idx = [0, 200, 400, 600, 800]
    np.testing.assert_array_equal(path[idx], keys)
    # C1 positions: the velocity just before and after an interior key agree up to O(step).
    v = np.diff(path[:, :3, 3].astype(np.float64), axis=0)
    jumps_spline = [np.linalg.norm(v[i] - v[i - 1]) for i in idx[1:-1]]
    lin = tr.interpolate_keyframes(keys, T, position="linear")
    vl = np.diff(lin[:, :3, 3].astype(np.float64), axis=0)
    jumps_linear = [np.linalg.norm(vl[i] - vl[i - 1]) for i in idx[1:-1]]
    assert max(jumps_spline) < 0.02 * max(jumps_linear)
    # Rotations are slerped: constant angular step within a segment.
    q = tr.matrix_to_quaternion(path[200:401:20, :3, :3].astype(np.float64))
    ang = 2 * np.arccos(np.clip(np.abs(np.sum(q[1:] * q[:-1], -1)), 0, 1))
    np.testing.assert_allclose(ang, ang[0], atol=1e-5)


def test_interpolate_keyframes_reproduces_uniform_motion_and_custom_indices():
    keys = tr.preset("push_in", 4, distance=3.0)  # collinear, equally spaced
    path = tr.interpolate_keyframes(keys, 31, key_frame_indices=[0, 10, 20, 30])
    np.testing.assert_allclose(path[:, 2, 3], np.linspace(0, 3, 31), atol=1e-5)  # Catmull-Rom keeps it linear
    with pytest.raises(CameraError, match="key_frame_indices"):
        tr.interpolate_keyframes(keys, 31, key_frame_indices=[0, 10, 10, 30])
    with pytest.raises(CameraError, match="key_frame_indices"):
        tr.interpolate_keyframes(keys, 31, key_frame_indices=[0, 10, 20, 29])
    with pytest.raises(CameraError, match="num_frames"):
        tr.interpolate_keyframes(keys, 3)
    one = tr.interpolate_keyframes(keys[:1], 5)
    np.testing.assert_array_equal(one, np.repeat(keys[:1], 5, 0))


# ------------------------------------------------------------------------------ quaternions


@given(quats)
def test_quaternion_matrix_round_trip(q):
    q = np.asarray(q, np.float64) / np.linalg.norm(q)
    R = tr.quaternion_to_matrix(q)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    q2 = tr.matrix_to_quaternion(R)
    assert q2[0] >= 0
    assert min(np.abs(q2 - q).max(), np.abs(q2 + q).max()) < 1e-9  # q and -q are one rotation
    np.testing.assert_allclose(tr.quaternion_to_matrix(q2), R, atol=1e-12)


def test_matrix_to_quaternion_half_turns_and_axis_angle():
    for axis in np.eye(3):
        R = tr.axis_angle_to_matrix(axis, math.pi)
        q = tr.matrix_to_quaternion(R)
        np.testing.assert_allclose(np.abs(q), np.concatenate([[0], axis]), atol=1e-12)
        np.testing.assert_allclose(tr.quaternion_to_matrix(q), R, atol=1e-12)
    # Positive angle about +y (OpenCV down) turns +z towards +x.
    np.testing.assert_allclose(tr.axis_angle_to_matrix([0, 1, 0], math.pi / 2) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(tr.axis_angle_to_matrix([0, 1, 0], 0.0), np.eye(3))


@given(quats, quats, st.floats(0, 1))
def test_slerp_unit_norm_endpoints_and_constant_speed(q0, q1, t):
    q0 = np.asarray(q0) / np.linalg.norm(q0)
    q1 = np.asarray(q1) / np.linalg.norm(q1)
    out = tr.slerp(q0, q1, np.array([0.0, t, 1.0]))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out[0], q0, atol=1e-9)
    np.testing.assert_allclose(np.abs(np.dot(out[2], q1)), 1.0, atol=1e-9)  # q1 up to sign
    # The angle from q0 grows linearly in t along the shorter arc.
    total = np.arccos(np.clip(abs(np.dot(q0, q1)), 0, 1))
    part = np.arccos(np.clip(abs(np.dot(q0, out[1])), 0, 1))
    assert part == pytest.approx(t * total, abs=1e-6)
    assert np.dot(out[1], q0) >= -1e-12  # stays on q0's side (shortest path)


def test_slerp_nearly_equal_and_broadcasting():
    q = tr.matrix_to_quaternion(tr.axis_angle_to_matrix([1, 2, 3], 0.7))
    q_close = tr.matrix_to_quaternion(tr.axis_angle_to_matrix([1, 2, 3], 0.7 + 1e-9))
    out = tr.slerp(q, q_close, np.linspace(0, 1, 5))
    assert out.shape == (5, 4) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.broadcast_to(q, (5, 4)), atol=1e-8)
    batch = tr.slerp(np.stack([q, q]), np.stack([q_close, -q]), np.array([0.5, 0.5]))
    assert batch.shape == (2, 4)
    np.testing.assert_allclose(np.abs(batch[1]), np.abs(q), atol=1e-12)
    with pytest.raises(CameraError, match="quaternions must be finite and non-zero"):
        tr.quaternion_to_matrix(np.zeros(4))
