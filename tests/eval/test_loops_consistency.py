"""Depth AbsRel, revisit detection, closed-loop PSNR and the 3D-consistency warp against values
computed by hand."""

import math

import numpy as np
import pytest

from mirage_jax.errors import InputError
from mirage_jax.eval import metrics as M
from mirage_jax.geometry.trajectories import preset


def test_abs_rel_by_hand():
    target = np.array([[1.0, 2.0], [4.0, 0.0]], np.float32)  # 0 = unknown: not counted
    pred = np.array([[1.5, 2.0], [3.0, 99.0]], np.float32)
    # (0.5 / 1 + 0 / 2 + 1 / 4) / 3 = 0.25
    assert float(M.abs_rel(pred, target)) == pytest.approx(0.25, rel=1e-6)
    mask = np.array([[True, True], [False, True]])
    assert float(M.abs_rel(pred, target, mask)) == pytest.approx(0.25, rel=1e-6)  # (0.5 + 0) / 2
    assert float(M.abs_rel(target, target)) == 0.0
    batch = M.abs_rel(np.stack([pred, target]), np.stack([target, target]))
    np.testing.assert_allclose(batch, [0.25, 0.0], rtol=1e-6)
    bad = pred.copy()
    bad[0, 1] = np.nan  # a NaN prediction on a valid pixel is never skipped
    assert math.isnan(float(M.abs_rel(bad, target)))
    with pytest.raises(InputError, match="no valid ground-truth depth"):
        M.abs_rel(pred, np.zeros_like(target))
    with pytest.raises(InputError, match="float z-depth"):
        M.abs_rel(pred.astype(np.int32), target)


def test_pose_distance_and_revisits_of_an_out_and_back_pan():
    # pan 60 degrees out and back over 33 frames: 3.75 degrees per frame, far end at frame 16.
    path = preset("pan_left", 33, angle_deg=60.0, loop=True)
    rot, trans = M.pose_distance(path[0], path[16])
    assert rot == pytest.approx(60.0, abs=1e-3) and trans == pytest.approx(0.0, abs=1e-6)
    pairs = M.revisit_pairs(path, max_rotation_deg=1.0, max_translation=0.1, leave_factor=2.0)
    # j returns to i = 32 - j (same pose) once the far end is > 2 degrees away: 16 - (32 - j)
    # steps of 3.75 degrees > 2 holds from j = 17 on.
    np.testing.assert_array_equal(pairs, [[32 - j, j] for j in range(17, 33)])
    # a camera that only moves forward never returns
    assert M.revisit_pairs(preset("push_in", 33)).shape == (0, 2)
    # a full orbit returns to its start at the last frame only (plus nothing else)
    orbit = preset("orbit", 33)
    np.testing.assert_array_equal(M.revisit_pairs(orbit, max_rotation_deg=5.0, max_translation=0.1), [[0, 32]])
    with pytest.raises(InputError, match="leave_factor"):
        M.revisit_pairs(path, leave_factor=0.5)


def test_closed_loop_psnr_by_hand():
    path = preset("orbit", 33)  # returns at frame 32 to frame 0 only
    gt = np.zeros((33, 4, 4, 3), np.uint8)
    gen = gt.copy()
    gen[0] = 10  # the earlier generated frame is off by 10 ...
    gen[32] = 5  # ... and the returning one by 5 from the truth: 5 from each other
    out = M.closed_loop_psnr(gen, gt, path)
    np.testing.assert_array_equal(out["pairs"], [[0, 32]])
    assert out["mean_vs_earlier"] == pytest.approx(20 * math.log10(255 / 5), rel=1e-6)
    assert out["mean_vs_gt"] == pytest.approx(20 * math.log10(255 / 5), rel=1e-6)
    mask = np.ones((33, 4, 4), bool)
    gen[32, 0, 0] = 200
    mask[0, 0, 0] = False  # excluded in the earlier frame: the pair does not count that pixel
    assert M.closed_loop_psnr(gen, gt, path, mask=mask)["mean_vs_earlier"] == pytest.approx(20 * math.log10(255 / 5), rel=1e-6)
    none = M.closed_loop_psnr(gen, gt, preset("push_in", 33))
    assert none["pairs"].shape == (0, 2) and none["mean_vs_gt"] is None
    with pytest.raises(InputError, match=r"c2w must be \[33, 4, 4\]"):
        M.closed_loop_psnr(gen, gt, path[:5])


def _plane_views(shift_px):
    """A fronto-parallel plane at depth 4 seen by camera a and by camera b moved along +x so that
    the plane moves by ``shift_px`` pixels to the left (fx tx / d = shift_px)."""
    H, W, fx, d = 6, 12, 8.0, 4.0
    K = np.array([[fx, 0, (W - 1) / 2], [0, fx, (H - 1) / 2], [0, 0, 1]], np.float32)
    a = np.eye(4, dtype=np.float32)
    b = a.copy()
    b[0, 3] = shift_px * d / fx
    ramp = np.broadcast_to((np.arange(W, dtype=np.float32) * 10)[None, :, None], (H, W, 3))
    return K, np.stack([a, b]), np.full((2, H, W), d, np.float32), ramp.astype(np.uint8)


def test_warp_identity_is_exact():
    K, poses, depth, img = _plane_views(0)
    frames = np.stack([img, img])
    out = M.warp_consistency(frames, depth, K, poses, np.array([[0, 1], [1, 0], [0, 0]]))
    np.testing.assert_array_equal(out["mse"], [0, 0, 0])
    np.testing.assert_array_equal(out["coverage"], [1, 1, 1])
    assert out["mean_psnr"] == math.inf


def test_warp_known_shift():
    K, poses, depth, img = _plane_views(2)
    # b sees the plane 2 pixels to the left: b[:, x] = a[:, x + 2] for x < W - 2, nothing beyond.
    b = np.zeros_like(img)
    b[:, :-2] = img[:, 2:]
    out = M.warp_consistency(np.stack([img, b]), depth, K, poses, np.array([[0, 1]]))
    assert float(out["mse"][0]) == 0.0
    assert float(out["coverage"][0]) == pytest.approx(10 / 12)
    # against an unshifted b every counted pixel is off by 2 ramp steps (20 levels)
    out = M.warp_consistency(np.stack([img, img]), depth, K, poses, np.array([[0, 1]]))
    assert float(out["mse"][0]) == pytest.approx((20 / 255) ** 2, rel=1e-5)
    assert float(out["psnr"][0]) == pytest.approx(20 * math.log10(255 / 20), rel=1e-5)
    # occlusion test: b's ground-truth depth disagrees (something nearer) on half the rows
    d2 = depth.copy()
    d2[1, :3] = 1.0
    out = M.warp_consistency(np.stack([img, b]), d2, K, poses, np.array([[0, 1]]))
    assert float(out["coverage"][0]) == pytest.approx(10 / 12 / 2)
    assert float(M.warp_consistency(np.stack([img, b]), d2, K, poses, np.array([[0, 1]]),
                                    occlusion_tol=None)["coverage"][0]) == pytest.approx(10 / 12)
    keep = np.ones((2, 6, 12), bool)
    keep[0, :, :6] = False  # a's left half is not warped
    out = M.warp_consistency(np.stack([img, b]), depth, K, poses, np.array([[0, 1]]), keep=keep)
    assert float(out["coverage"][0]) == pytest.approx(6 / 12)  # columns 4..9 of b


def test_warp_bad_inputs():
    K, poses, depth, img = _plane_views(0)
    frames = np.stack([img, img])
    with pytest.raises(InputError, match="pair frame indices"):
        M.warp_consistency(frames, depth, K, poses, np.array([[0, 2]]))
    with pytest.raises(InputError, match="depth must be float"):
        M.warp_consistency(frames, depth[:1], K, poses, np.array([[0, 1]]))
    with pytest.raises(InputError, match="cam2world"):
        M.warp_consistency(frames, depth, K, poses[:1], np.array([[0, 1]]))
