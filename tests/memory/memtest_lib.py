"""Shared helpers for the memory tests: tiny fixed shapes (one compilation each), scenes, and an
independent plain-NumPy implementation of spec section 2 written from the spec text (loops over
cells and points; it never calls mirage_jax)."""

from __future__ import annotations

import math

import numpy as np

# Tiny shapes shared by all tests so that every jitted function compiles once per configuration.
h, w, C = 4, 6, 3  # latent grid
S = 2  # integer resize factor depth -> latent
H, W = h * S, w * S  # depth / image size
IMAGE_HW = (H, W)
LATENT_HW = (h, w)
CAP = 64


def K_image(fx=10.0, fy=11.0, cx=W / 2 - 0.3, cy=H / 2 + 0.2):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], np.float32)


def rotation(axis_angle) -> np.ndarray:
    """Rodrigues: axis-angle (3,) -> rotation (3, 3), float64."""
    v = np.asarray(axis_angle, np.float64)
    theta = np.linalg.norm(v)
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def pose(axis_angle=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    P = np.eye(4)
    P[:3, :3] = rotation(axis_angle)
    P[:3, 3] = t
    return P.astype(np.float32)


def random_pose(rng, max_angle=math.pi, max_t=5.0) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return pose(axis * rng.uniform(0, max_angle), rng.uniform(-max_t, max_t, 3))


def random_frame(rng, hole_fraction=0.2, depth_range=(0.5, 5.0), shape=None):
    """(latent f32[h, w, C], depth f32[H, W] with zero holes)."""
    hh, ww, cc, HH, WW = (h, w, C, H, W) if shape is None else shape
    lat = rng.normal(size=(hh, ww, cc)).astype(np.float32)
    depth = rng.uniform(*depth_range, size=(HH, WW)).astype(np.float32)
    depth[rng.uniform(size=(HH, WW)) < hole_fraction] = 0.0
    return lat, depth


# --------------------------------------------------------------------------------------------
# Plain NumPy reference of spec section 2 (float64, explicit loops).
# --------------------------------------------------------------------------------------------


def np_bilinear(depth, hh, ww):
    """Bilinear, half-pixel centres, no antialiasing, clamped at the border (from the spec)."""
    HH, WW = depth.shape
    out = np.zeros((hh, ww))
    for v in range(hh):
        for u in range(ww):
            sy = max((v + 0.5) * HH / hh - 0.5, 0.0)
            sx = max((u + 0.5) * WW / ww - 0.5, 0.0)
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, HH - 1), min(x0 + 1, WW - 1)
            ly, lx = sy - y0, sx - x0
            out[v, u] = (
                (1 - ly) * (1 - lx) * depth[y0, x0]
                + (1 - ly) * lx * depth[y0, x1]
                + ly * (1 - lx) * depth[y1, x0]
                + ly * lx * depth[y1, x1]
            )
    return out


def np_nearest(mask, hh, ww):
    """PyTorch "nearest": source index floor(dst * in / out)."""
    HH, WW = mask.shape
    out = np.zeros((hh, ww), mask.dtype)
    for v in range(hh):
        for u in range(ww):
            out[v, u] = mask[min(int(math.floor(v * HH / hh)), HH - 1), min(int(math.floor(u * WW / ww)), WW - 1)]
    return out


def np_scale_K(K, image_hw, grid_hw, convention):
    HH, WW = image_hw
    hh, ww = grid_hw
    sx, sy = ww / WW, hh / HH
    fx, fy = K[0, 0] * sx, K[1, 1] * sy
    if convention == "reference":
        cx, cy = K[0, 2] * sx, K[1, 2] * sy
    else:
        cx, cy = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return fx, fy, cx, cy


def np_write(latent, depth, K, c2w, exclude=None, convention="reference"):
    """Returns the list of (point (3,), feature (C,)) in row-major cell order."""
    hh, ww, _ = latent.shape
    HH, WW = depth.shape
    d = np_bilinear(depth.astype(np.float64), hh, ww)
    ex = np.zeros((hh, ww), bool) if exclude is None else np_nearest(exclude, hh, ww)
    fx, fy, cx, cy = np_scale_K(K.astype(np.float64), (HH, WW), (hh, ww), convention)
    R = c2w[:3, :3].astype(np.float64)
    t = c2w[:3, 3].astype(np.float64)
    out = []
    for v in range(hh):
        for u in range(ww):
            z = d[v, u]
            if not (z > 0) or ex[v, u]:
                continue
            X = np.array([(u - cx) * z / fx, (v - cy) * z / fy, z])
            out.append((R @ X + t, latent[v, u].copy()))
    return out


def np_read(points, features, K, c2w, image_hw, grid_hw, convention="reference", eps=1e-3):
    """Z-buffer of points (in write order: later = more recent) at a camera.

    Returns (features [h, w, C], hit [h, w], depth [h, w], ambiguous [h, w]); ``ambiguous``
    marks cells whose content could differ under float32 rounding (a projection within ``eps``
    of a rounding boundary, or two candidates with nearly equal depth), to be skipped when
    comparing with a float32 implementation.
    """
    hh, ww = grid_hw
    fx, fy, cx, cy = np_scale_K(K.astype(np.float64), image_hw, grid_hw, convention)
    R = c2w[:3, :3].astype(np.float64)
    t = c2w[:3, 3].astype(np.float64)
    best_z = np.full((hh, ww), np.inf)
    best_i = np.full((hh, ww), -1)
    second_z = np.full((hh, ww), np.inf)
    amb = np.zeros((hh, ww), bool)
    for i, p in enumerate(points):
        X = R.T @ (np.asarray(p, np.float64) - t)
        Z = X[2]
        if not Z > 0:
            continue
        u = fx * X[0] / Z + cx
        v = fy * X[1] / Z + cy
        ur, vr = np.round(u), np.round(v)  # half to even
        near_u = abs(abs(u - math.floor(u)) - 0.5) < eps
        near_v = abs(abs(v - math.floor(v)) - 0.5) < eps
        if near_u or near_v:
            for cu in {math.floor(u), math.ceil(u)}:
                for cv in {math.floor(v), math.ceil(v)}:
                    if 0 <= cu < ww and 0 <= cv < hh:
                        amb[cv, cu] = True
        if not (0 <= ur <= ww - 1 and 0 <= vr <= hh - 1):
            continue
        cu, cv = int(ur), int(vr)
        if Z < best_z[cv, cu] or (Z == best_z[cv, cu]):  # ties: the later (more recent) point wins
            second_z[cv, cu] = best_z[cv, cu]
            best_z[cv, cu], best_i[cv, cu] = Z, i
        elif Z < second_z[cv, cu]:
            second_z[cv, cu] = Z
    both = np.isfinite(second_z) & np.isfinite(best_z)
    gap = np.full(best_z.shape, np.inf)
    gap[both] = np.abs(second_z[both] - best_z[both])
    amb |= both & (gap <= 1e-4 * np.abs(np.where(both, best_z, 0.0)))
    hit = best_i >= 0
    C_ = len(features[0]) if len(features) else 1
    feats = np.zeros((hh, ww, C_), np.float32)
    for v in range(hh):
        for u in range(ww):
            if hit[v, u]:
                feats[v, u] = features[best_i[v, u]]
    return feats, hit, np.where(hit, best_z, 0.0), amb
