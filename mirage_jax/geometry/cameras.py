"""Pinhole cameras and rigid poses.

All functions take and return channels-last arrays and work on leading batch dimensions.
Poses are camera-to-world [..., 4, 4] in OpenCV axes (x right, y down, z forward).
Intrinsics are [..., 3, 3] in pixels of the image they belong to.

The JAX functions here are pure and jit/vmap/grad friendly. The ``check_*`` functions are
host-side validators (NumPy) for use at the edges, where bad input must raise an error that
names the argument (and, for files, the file and line).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.errors import InputError

Convention = Literal["reference", "centred"]
CONVENTIONS = ("reference", "centred")

# Right-multiplying an OpenGL/Blender camera-to-world by this flips the camera's y and z axes,
# giving OpenCV axes; the matrix is its own inverse.
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)


class CameraError(InputError):
    """Raised for malformed cameras: wrong shapes, non-finite values, bad rotations, zero focal."""


# --------------------------------------------------------------------------------------------
# Host-side validation (NumPy): use at the edges, never inside jit.
# --------------------------------------------------------------------------------------------


def check_intrinsics(K, name: str = "intrinsics") -> np.ndarray:
    """Validates intrinsics [..., 3, 3] (pixels) and returns them as float32 NumPy.

    Raises CameraError naming ``name`` for a wrong shape, non-finite entries, a zero or negative
    focal length, or a last row other than (0, 0, 1).
    """
    K = np.asarray(K)
    if K.ndim < 2 or K.shape[-2:] != (3, 3):
        raise CameraError(f"{name}: expected shape [..., 3, 3], got {K.shape}")
    if not np.issubdtype(K.dtype, np.number):
        raise CameraError(f"{name}: expected a numeric dtype, got {K.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        K = K.astype(np.float32)
    if not np.all(np.isfinite(K)):
        raise CameraError(f"{name}: contains non-finite values (in float32, the dtype returned)")
    if np.any(K[..., 0, 0] <= 0) or np.any(K[..., 1, 1] <= 0):
        raise CameraError(
            f"{name}: focal lengths must be positive, got fx={K[..., 0, 0].ravel()[:4]}, "
            f"fy={K[..., 1, 1].ravel()[:4]}"
        )
    if not np.allclose(K[..., 2, :], [0.0, 0.0, 1.0], atol=1e-6) or not np.allclose(
        K[..., 1, 0], 0.0, atol=1e-6
    ):
        raise CameraError(f"{name}: not a pinhole matrix (last row must be [0, 0, 1], K[1,0] = 0)")
    return K


def check_pose(c2w, name: str = "cam2world", atol: float = 1e-4) -> np.ndarray:
    """Validates rigid poses [..., 4, 4] (or [..., 3, 4]) and returns float32 [..., 4, 4].

    Raises CameraError naming ``name`` for a wrong shape, non-finite values, a bottom row other
    than (0, 0, 0, 1), or a rotation block that is not orthonormal with determinant +1 within
    ``atol`` (a reflection such as an unconverted OpenGL matrix flipped once is caught here).
    """
    P = np.asarray(c2w)
    if P.ndim < 2 or P.shape[-2:] not in ((4, 4), (3, 4)):
        raise CameraError(f"{name}: expected shape [..., 4, 4] or [..., 3, 4], got {P.shape}")
    if not np.issubdtype(P.dtype, np.number):
        raise CameraError(f"{name}: expected a numeric dtype, got {P.dtype}")
    # Finite in the float32 it is returned as (1e300 is finite in float64, inf in float32).
    with np.errstate(over="ignore", invalid="ignore"):
        finite32 = np.all(np.isfinite(P.astype(np.float32)))
    P = P.astype(np.float64)
    if not finite32:
        raise CameraError(f"{name}: contains non-finite values (in float32, the dtype returned)")
    if P.shape[-2:] == (3, 4):
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), P.shape[:-2] + (1, 4))
        P = np.concatenate([P, bottom], axis=-2)
    elif not np.allclose(P[..., 3, :], [0.0, 0.0, 0.0, 1.0], atol=atol):
        raise CameraError(f"{name}: bottom row must be [0, 0, 0, 1], got {P[..., 3, :].reshape(-1, 4)[0]}")
    R = P[..., :3, :3]
    err = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-1, -2))
    det = np.linalg.det(R)
    if np.any(err > atol):
        i = int(np.argmax(err.reshape(-1)))
        raise CameraError(
            f"{name}: rotation is not orthonormal (max |R^T R - I| = {err.reshape(-1)[i]:.3g} at index {i})"
        )
    if np.any(det < 0):
        i = int(np.argmin(det.reshape(-1)))
        raise CameraError(f"{name}: rotation has determinant {det.reshape(-1)[i]:.3g} at index {i} (a reflection)")
    return P.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Pure JAX functions.
# --------------------------------------------------------------------------------------------


def scale_intrinsics(K, image_hw, grid_hw, convention: Convention = "reference"):
    """Rescales intrinsics [..., 3, 3] from an image of size image_hw to a grid of size grid_hw.

    ``reference`` (Mirage's reference semantics, spec section 2): fx' = fx sx, cx' = cx sx,
    fy' = fy sy, cy' = cy sy with sx = w / W, sy = h / H and no half-pixel correction, so grid
    cell u corresponds to image x = u / sx.
    ``centred`` (geometrically exact for cell centres): cx' = (cx + 0.5) sx - 0.5, likewise cy'.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    H, W = image_hw
    h, w = grid_hw
    sx = w / W
    sy = h / H
    K = jnp.asarray(K, jnp.float32)
    fx = K[..., 0, 0] * sx
    fy = K[..., 1, 1] * sy
    skew = K[..., 0, 1] * sx
    if convention == "reference":
        cx = K[..., 0, 2] * sx
        cy = K[..., 1, 2] * sy
    else:
        cx = (K[..., 0, 2] + 0.5) * sx - 0.5
        cy = (K[..., 1, 2] + 0.5) * sy - 0.5
    zero = jnp.zeros_like(fx)
    one = jnp.ones_like(fx)
    rows = [
        jnp.stack([fx, skew, cx], axis=-1),
        jnp.stack([zero, fy, cy], axis=-1),
        jnp.stack([zero, zero, one], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def _xp(*xs):
    """NumPy for NumPy inputs (host-side code keeps its float64), else jax.numpy."""
    return np if all(isinstance(x, (np.ndarray, np.generic)) for x in xs) else jnp


def invert_pose(P):
    """Inverts rigid transforms [..., 4, 4] exactly (R^T, -R^T t) rather than by a general inverse.

    The one rigid inverse of the project: NumPy arrays in give NumPy arrays out (same dtype, so
    host-side float64 code stays float64); anything else is computed with jax.numpy (jit/vmap
    friendly). Elementwise arithmetic (no dot_general), like :func:`transform_points`.
    """
    xp = _xp(P)
    P = xp.asarray(P)
    R = P[..., :3, :3]
    t = P[..., :3, 3]
    Rt = xp.swapaxes(R, -1, -2)
    t_inv = -xp.stack([Rt[..., i, 0] * t[..., 0] + Rt[..., i, 1] * t[..., 1] + Rt[..., i, 2] * t[..., 2] for i in range(3)], axis=-1)
    top = xp.concatenate([Rt, t_inv[..., None]], axis=-1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=P.dtype), P.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def opengl_to_opencv(c2w_gl):
    """OpenGL/Blender camera-to-world (x right, y up, z backward) -> OpenCV camera-to-world."""
    return jnp.asarray(c2w_gl) @ jnp.asarray(OPENGL_TO_OPENCV, dtype=jnp.asarray(c2w_gl).dtype)


def opencv_to_opengl(c2w_cv):
    """OpenCV camera-to-world -> OpenGL/Blender camera-to-world (the same flip, its own inverse)."""
    return jnp.asarray(c2w_cv) @ jnp.asarray(OPENGL_TO_OPENCV, dtype=jnp.asarray(c2w_cv).dtype)


def look_at(eye, target, up=(0.0, -1.0, 0.0)):
    """OpenCV camera-to-world [..., 4, 4] at ``eye`` [..., 3] looking at ``target`` [..., 3].

    ``up`` is the world direction that should appear up in the image; with OpenCV axes the
    camera's y axis points down, so the default world up is -y (a y-down world, as in OpenCV).

    NumPy ``eye`` and ``target`` give a NumPy result in their float dtype (at least float32;
    float64 for the host-side paths of :mod:`mirage_jax.geometry.trajectories`); otherwise
    float32 jax.numpy. Concrete inputs raise CameraError when eye and target coincide or ``up``
    is parallel to the viewing direction; under jit (traced inputs) such cameras come out as NaN.
    """
    xp = _xp(eye, target)
    dtype = np.result_type(eye, target, np.float32) if xp is np else jnp.float32
    eye, target, up = (xp.asarray(a, dtype) for a in (eye, target, up))
    z = target - eye
    zn = xp.linalg.norm(z, axis=-1, keepdims=True)
    if not isinstance(zn, jax.core.Tracer):
        if np.any(np.asarray(zn) < 1e-12):
            raise CameraError("look_at: eye and target coincide")
    z = z / zn
    x = xp.cross(z, up)
    xn = xp.linalg.norm(x, axis=-1, keepdims=True)
    if not isinstance(xn, jax.core.Tracer) and not isinstance(up, jax.core.Tracer):
        if np.any(np.asarray(xn) < 1e-9 * np.linalg.norm(np.asarray(up), axis=-1, keepdims=True)):
            raise CameraError("look_at: up is parallel to the viewing direction")
    x = x / xn
    y = xp.cross(z, x)
    R = xp.stack([x, y, z], axis=-1)
    top = xp.concatenate([R, eye[..., None]], axis=-1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype), top.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def transform_points(P, x):
    """``P[:3, :3] x + P[:3, 3]`` for rigid P [..., 4, 4] and points x [..., 3] (broadcasting).

    Written as elementwise multiply-adds in a fixed order rather than a dot_general, so the
    result is the same bits under jit, vmap and batching, and never runs at reduced (TF32)
    matmul precision on GPUs.
    """
    cols = []
    for i in range(3):
        acc = P[..., i, 0] * x[..., 0] + P[..., i, 1] * x[..., 1] + P[..., i, 2] * x[..., 2]
        cols.append(acc + P[..., i, 3])
    return jnp.stack(cols, axis=-1)


def unproject_grid(depth, K, c2w):
    """Back-projects every cell (u, v) of a depth grid [..., h, w] to world points [..., h, w, 3].

    Cell (u, v) with integer indices maps to camera point ((u - cx) d / fx, (v - cy) d / fy, d)
    (spec section 2, with K [..., 3, 3] already scaled to the grid; skew supported), then
    p = R X + t with c2w [..., 4, 4].
    """
    depth = jnp.asarray(depth, jnp.float32)
    h, w = depth.shape[-2:]
    K = jnp.asarray(K, jnp.float32)
    c2w = jnp.asarray(c2w, jnp.float32)
    u = jnp.arange(w, dtype=jnp.float32)[None, :]
    v = jnp.arange(h, dtype=jnp.float32)[:, None]
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    skew = K[..., 0, 1, None, None]
    y = (v - cy) * depth / fy
    x = ((u - cx) * depth - skew * y) / fx
    X = jnp.stack([x, y, depth], axis=-1)
    return transform_points(c2w[..., None, None, :, :], X)


def project_points(points, K, c2w):
    """Projects world points [..., N, 3] into a camera; returns (uv [..., N, 2], z [..., N]).

    uv are continuous pixel coordinates in the frame of ``K`` [..., 3, 3] (u = fx X/Z + cx);
    z is the camera-space depth. Points with z <= 0 get finite but meaningless uv: callers
    mask on z.
    """
    points = jnp.asarray(points, jnp.float32)
    w2c = invert_pose(jnp.asarray(c2w, jnp.float32))
    Xc = transform_points(w2c[..., None, :, :], points)
    z = Xc[..., 2]
    safe_z = jnp.where(jnp.abs(z) > 1e-12, z, 1e-12)
    K = jnp.asarray(K, jnp.float32)
    u = (K[..., 0, 0, None] * Xc[..., 0] + K[..., 0, 1, None] * Xc[..., 1]) / safe_z + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * Xc[..., 1] / safe_z + K[..., 1, 2, None]
    return jnp.stack([u, v], axis=-1), z
