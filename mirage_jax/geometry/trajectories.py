"""Camera trajectories: WorldScore-style presets, out-and-back loops, orbits, keyframe splines.

Every pose is an OpenCV camera-to-world matrix [4, 4] (x right, y down, z forward). Presets are
defined in the start camera's own frame and then placed in the world: ``path = start @ local``,
so "push_in" always moves along the start camera's +z, whatever ``start`` is.

Pure NumPy, host side: trajectories are built once per request (they are inputs, not part of a
traced computation). Internally float64; trajectories come back as float32 [T, 4, 4], and the
quaternion / rotation helpers return float64. Quaternions are (w, x, y, z), Hamilton product,
unit norm; :func:`matrix_to_quaternion` returns the representative with w >= 0.

Frame counts: Mirage generates chunks of 33 pixel frames, each later chunk adding 32 (spec
section 5), so useful lengths are 33 + 32 k; ask for them with ``chunks=`` or
:func:`num_frames_for_chunks`.

Preset vocabulary and defaults follow WorldScore's camera generator (camera_speed 1, 30 degree
rotations): push_in / pull_out move 1 unit, move_left / move_right 0.5, pan_* and orbit_* turn
30 degrees (orbits about a point 1 unit ahead), pull_* move 0.3 sideways and 0.3 back while
panning 30 degrees. "orbit" is a full 360 degree orbit and "fixed" a still camera; move_up,
move_down, tilt_up and tilt_down complete the set.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import numpy as np

from mirage_jax.geometry.cameras import CameraError, check_pose, invert_pose, look_at

__all__ = [
    "CHUNK_FRAMES",
    "NEW_FRAMES_PER_CHUNK",
    "PRESETS",
    "Preset",
    "axis_angle_to_matrix",
    "chain",
    "chunks_for_num_frames",
    "interpolate_keyframes",
    "matrix_to_quaternion",
    "num_frames_for_chunks",
    "orbit",
    "out_and_back",
    "preset",
    "quaternion_to_matrix",
    "relative_to_first",
    "slerp",
]

CHUNK_FRAMES = 33  # pixel frames in the first chunk (9 latent frames)
NEW_FRAMES_PER_CHUNK = 32  # each later chunk reuses the previous last frame and adds 32

Easing = Literal["linear", "smooth"]


# ----------------------------------------------------------------------------------------------
# Frame counts.
# ----------------------------------------------------------------------------------------------


def num_frames_for_chunks(
    num_chunks: int, *, chunk_frames: int = CHUNK_FRAMES, new_frames_per_chunk: int = NEW_FRAMES_PER_CHUNK
) -> int:
    """Pixel frames covered by ``num_chunks`` chunks: 33 + 32 (num_chunks - 1) by default."""
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or num_chunks < 1:
        raise CameraError(f"num_chunks: expected a positive integer, got {num_chunks!r}")
    return int(chunk_frames + new_frames_per_chunk * (num_chunks - 1))


def chunks_for_num_frames(
    num_frames: int, *, chunk_frames: int = CHUNK_FRAMES, new_frames_per_chunk: int = NEW_FRAMES_PER_CHUNK
) -> int:
    """Inverse of :func:`num_frames_for_chunks`; raises CameraError unless num_frames = 33 + 32 k."""
    if (
        isinstance(num_frames, bool)
        or not isinstance(num_frames, (int, np.integer))
        or num_frames < chunk_frames
        or (num_frames - chunk_frames) % new_frames_per_chunk
    ):
        raise CameraError(
            f"num_frames: {num_frames!r} is not {chunk_frames} + {new_frames_per_chunk} k "
            f"(e.g. {chunk_frames}, {chunk_frames + new_frames_per_chunk}, {chunk_frames + 2 * new_frames_per_chunk})"
        )
    return 1 + (int(num_frames) - chunk_frames) // new_frames_per_chunk


def _resolve_num_frames(num_frames, chunks) -> int:
    if (num_frames is None) == (chunks is None):
        raise CameraError("give exactly one of num_frames and chunks")
    if chunks is not None:
        return num_frames_for_chunks(chunks)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise CameraError(f"num_frames: expected a positive integer, got {num_frames!r}")
    return int(num_frames)


# ----------------------------------------------------------------------------------------------
# Rotations and quaternions (float64).
# ----------------------------------------------------------------------------------------------


def axis_angle_to_matrix(axis, angle) -> np.ndarray:
    """Rotation matrices [..., 3, 3] about ``axis`` [3] (or [..., 3]) by ``angle`` radians [...].

    Right-handed: with OpenCV camera axes (y down) a positive angle about +y turns the view
    direction (+z) towards +x (right). An angle of exactly 0 gives exactly the identity.
    """
    axis = np.asarray(axis, np.float64)
    n = np.linalg.norm(axis, axis=-1, keepdims=True)
    if np.any(n < 1e-12) or not np.all(np.isfinite(axis)):
        raise CameraError(f"axis: expected a finite non-zero 3-vector, got {axis.tolist()}")
    k = axis / n
    angle = np.asarray(angle, np.float64)
    c, s = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    Kx = np.stack(
        [np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1), np.stack([-ky, kx, zero], -1)], -2
    )
    kkT = k[..., :, None] * k[..., None, :]
    return c * np.eye(3) + s * Kx + (1.0 - c) * kkT


def quaternion_to_matrix(q) -> np.ndarray:
    """Unit quaternions [..., 4] (w, x, y, z) -> rotation matrices float64 [..., 3, 3].

    The input is normalised first; a zero or non-finite quaternion raises CameraError.
    """
    q = np.asarray(q, np.float64)
    if q.ndim < 1 or q.shape[-1] != 4:
        raise CameraError(f"q: expected shape [..., 4] (w, x, y, z), got {q.shape}")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(n < 1e-12):
        raise CameraError("q: quaternions must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / n, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(R) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions float64 [..., 4] (w, x, y, z), w >= 0.

    Shepperd's method (branch on the largest of w, x, y, z): accurate for every rotation,
    including 180-degree ones. The matrix is assumed to be a rotation (validate with check_pose).
    """
    R = np.asarray(R, np.float64)
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise CameraError(f"R: expected shape [..., 3, 3], got {R.shape}")
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # Four candidates proportional to q, scaled by 4w, 4x, 4y, 4z respectively; each is
    # well-conditioned where its scaling component is the largest.
    cands = np.stack(
        [
            np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
            np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
            np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )  # [..., 4 candidates, 4]
    best = np.argmax(np.diagonal(cands, axis1=-2, axis2=-1), axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def slerp(q0, q1, t) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (w, x, y, z); float64 unit norm.

    Takes the shorter arc (q1 is negated when q0 . q1 < 0) and falls back to normalised linear
    interpolation when the two are within ~1e-6 rad. Shapes broadcast: q0, q1 [..., 4] with
    t [...]; e.g. q0, q1 [4] and t [N] give [N, 4]. t = 0 and t = 1 return q0 and (+-) q1.
    """
    q0 = np.asarray(q0, np.float64)
    q1 = np.asarray(q1, np.float64)
    if q0.shape[-1:] != (4,) or q1.shape[-1:] != (4,):
        raise CameraError(f"slerp: quaternions must have shape [..., 4], got {q0.shape} and {q1.shape}")
    q0 = q0 / np.linalg.norm(q0, axis=-1, keepdims=True)
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    t = np.asarray(t, np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    small = sin_theta < 1e-6
    safe = np.where(small, 1.0, sin_theta)
    w0 = np.where(small, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(small, t, np.sin(t * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _pose(R, t) -> np.ndarray:
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64)
    P = np.zeros(R.shape[:-2] + (4, 4), np.float64)
    P[..., :3, :3] = R
    P[..., :3, 3] = t
    P[..., 3, 3] = 1.0
    return P


def _check_path(c2w, name: str) -> np.ndarray:
    P = np.asarray(c2w)
    if P.ndim != 3:
        raise CameraError(f"{name}: expected shape [T, 4, 4], got {P.shape}")
    if P.shape[0] == 0:
        raise CameraError(f"{name}: has zero frames")
    return check_pose(P, name).astype(np.float64)


def _check_start(start) -> np.ndarray:
    if start is None:
        return np.eye(4)
    P = np.asarray(start)
    if P.shape not in ((4, 4), (3, 4)):
        raise CameraError(f"start: expected shape [4, 4], got {P.shape}")
    return check_pose(P, "start").astype(np.float64)


def _finite(x, name: str) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise CameraError(f"{name}: must be finite, got {x}")
    return x


def _progress(num_frames: int, loop: bool, easing: Easing) -> np.ndarray:
    """Motion parameter s in [0, 1] per frame; loops go 0 -> 1 -> 0 and end exactly at 0."""
    if easing not in ("linear", "smooth"):
        raise CameraError(f"easing: expected 'linear' or 'smooth', got {easing!r}")
    if num_frames == 1:
        return np.zeros(1)
    u = np.arange(num_frames, dtype=np.float64) / (num_frames - 1)
    if loop:
        u = 1.0 - np.abs(2.0 * u - 1.0)
        u[0] = u[-1] = 0.0
    if easing == "smooth":
        u = 0.5 - 0.5 * np.cos(np.pi * u)
        u[u < 1e-15] = 0.0
    return u


# ----------------------------------------------------------------------------------------------
# Presets.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A camera move in the start camera's frame (OpenCV axes).

    At progress s in [0, 1] the local pose is a rotation by ``angle_sign * angle * s`` about
    ``axis`` and, for translating moves, a translation ``s * distance * direction``. Orbits
    rotate the camera about a vertical axis through the point ``distance`` ahead of the start
    camera (0, 0, distance), keeping it centred.
    """

    name: str
    description: str
    direction: tuple[float, float, float] = (0.0, 0.0, 0.0)
    axis: tuple[float, float, float] = (0.0, 1.0, 0.0)
    angle_sign: float = 0.0
    default_distance: float = 0.0
    default_angle_deg: float = 0.0
    orbit: bool = False

    def local_poses(self, s, distance: float | None = None, angle_deg: float | None = None) -> np.ndarray:
        """Poses float64 [N, 4, 4] relative to the start camera at progress values s [N]."""
        d = self.default_distance if distance is None else _finite(distance, "distance")
        a = self.default_angle_deg if angle_deg is None else _finite(angle_deg, "angle_deg")
        s = np.asarray(s, np.float64)
        R = axis_angle_to_matrix(self.axis, self.angle_sign * math.radians(a) * s)
        if self.orbit:
            pivot = np.array([0.0, 0.0, d])
            t = pivot - R @ pivot
        else:
            t = s[:, None] * d * np.asarray(self.direction, np.float64)
        return _pose(R, t)


_Y = (0.0, 1.0, 0.0)  # OpenCV camera y points down: +angle about +y turns the view right
_X = (1.0, 0.0, 0.0)  # +angle about +x tilts the view up (z turns towards -y)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("fixed", "still camera"),
        Preset("push_in", "dolly forward along +z", direction=(0, 0, 1), default_distance=1.0),
        Preset("pull_out", "dolly backward along -z", direction=(0, 0, -1), default_distance=1.0),
        Preset("move_left", "truck left along -x", direction=(-1, 0, 0), default_distance=0.5),
        Preset("move_right", "truck right along +x", direction=(1, 0, 0), default_distance=0.5),
        Preset("move_up", "pedestal up along -y", direction=(0, -1, 0), default_distance=0.5),
        Preset("move_down", "pedestal down along +y", direction=(0, 1, 0), default_distance=0.5),
        Preset("pan_left", "yaw in place; the view turns left", axis=_Y, angle_sign=-1.0, default_angle_deg=30.0),
        Preset("pan_right", "yaw in place; the view turns right", axis=_Y, angle_sign=1.0, default_angle_deg=30.0),
        Preset("tilt_up", "pitch in place; the view turns up", axis=_X, angle_sign=1.0, default_angle_deg=30.0),
        Preset("tilt_down", "pitch in place; the view turns down", axis=_X, angle_sign=-1.0, default_angle_deg=30.0),
        Preset(
            "orbit_left",
            "circle left around the point `distance` ahead, keeping it centred",
            axis=_Y, angle_sign=1.0, default_distance=1.0, default_angle_deg=30.0, orbit=True,
        ),
        Preset(
            "orbit_right",
            "circle right around the point `distance` ahead, keeping it centred",
            axis=_Y, angle_sign=-1.0, default_distance=1.0, default_angle_deg=30.0, orbit=True,
        ),
        Preset(
            "orbit",
            "full 360-degree orbit (to the left) around the point `distance` ahead; ends at the start",
            axis=_Y, angle_sign=1.0, default_distance=1.0, default_angle_deg=360.0, orbit=True,
        ),
        Preset(
            "pull_left",
            "move `distance` left and `distance` back while panning left",
            direction=(-1, 0, -1), axis=_Y, angle_sign=-1.0, default_distance=0.3, default_angle_deg=30.0,
        ),
        Preset(
            "pull_right",
            "move `distance` right and `distance` back while panning right",
            direction=(1, 0, -1), axis=_Y, angle_sign=1.0, default_distance=0.3, default_angle_deg=30.0,
        ),
    )
}


def preset(
    name: str,
    num_frames: int | None = None,
    *,
    chunks: int | None = None,
    start=None,
    distance: float | None = None,
    angle_deg: float | None = None,
    loop: bool = False,
    easing: Easing = "linear",
) -> np.ndarray:
    """A preset camera path, float32 [T, 4, 4] OpenCV camera-to-world.

    Args:
      name: a key of PRESETS (push_in, pull_out, move_left, move_right, move_up, move_down,
        pan_left, pan_right, tilt_up, tilt_down, orbit, orbit_left, orbit_right, pull_left,
        pull_right, fixed).
      num_frames: T. Give this or ``chunks`` (T = 33 + 32 (chunks - 1)).
      start: float [4, 4] camera-to-world of frame 0 (default identity); motions are relative
        to it. Frame 0 equals ``start`` exactly.
      distance: translation (push/pull/move), per-axis displacement (pull_left/right), or orbit
        radius (distance to the orbited point); default per preset (WorldScore's).
      angle_deg: total rotation in degrees; default per preset (30, or 360 for "orbit").
      loop: go out and come back within the T frames (progress 0 -> 1 -> 0); the last frame
        equals the first exactly. With odd T (e.g. 33 + 32 k) the far end is hit exactly.
      easing: "linear" (constant speed, as WorldScore) or "smooth" (cosine ease in/out; with
        ``loop`` the camera also slows to a stop at the far end).
    """
    if name not in PRESETS:
        raise CameraError(f"name: unknown preset {name!r}; known: {sorted(PRESETS)}")
    T = _resolve_num_frames(num_frames, chunks)
    start64 = _check_start(start)
    spec = PRESETS[name]
    s = _progress(T, loop, easing)
    path = start64 @ spec.local_poses(s, distance, angle_deg)
    out = path.astype(np.float32)
    out[0] = start64.astype(np.float32)
    a = spec.default_angle_deg if angle_deg is None else float(angle_deg)
    returns = spec.orbit or not any(spec.direction)  # no net translation after whole turns
    full_turn = returns and spec.angle_sign != 0 and a != 0 and abs(a) % 360.0 == 0.0 and s[-1] == 1.0
    if loop or full_turn:
        out[-1] = out[0]
    return out


def out_and_back(c2w_path) -> np.ndarray:
    """Plays a path forwards then backwards: float32 [2T - 1, 4, 4], ending exactly at frame 0.

    The far end is not repeated: [p0, ..., p_{T-1}, p_{T-2}, ..., p0]. A path of 17 frames gives
    33 (and one of 16 k + 17 gives 33 + 32 k).
    """
    P = _check_path(c2w_path, "c2w_path").astype(np.float32)
    out = np.concatenate([P, P[-2::-1]], axis=0)
    out[-1] = out[0]
    return out


def orbit(
    center,
    radius: float,
    num_frames: int | None = None,
    *,
    chunks: int | None = None,
    up=(0.0, -1.0, 0.0),
    start_direction=None,
    angle_deg: float = 360.0,
    elevation_deg: float = 0.0,
) -> np.ndarray:
    """Cameras on a circle around ``center`` looking at it: float32 [T, 4, 4] OpenCV c2w.

    Args:
      center: float [3] world point kept at the image centre.
      radius: distance from ``center`` (> 0).
      up: world direction that appears up in every image; the circle lies in the plane
        perpendicular to it (default -y, the up of an OpenCV y-down world).
      start_direction: world direction from ``center`` towards the first camera, projected onto
        that plane (default: -z, so the first camera looks along +z at ``center``).
      angle_deg: total sweep; positive moves the camera to its left (as preset "orbit_left").
        Frames span [0, angle] inclusive, so a full turn (multiple of 360) ends exactly at the
        first pose.
      elevation_deg: raises the circle towards ``up`` (the cameras then look down at center).
    """
    T = _resolve_num_frames(num_frames, chunks)
    center = np.asarray(center, np.float64)
    up = np.asarray(up, np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise CameraError(f"center: expected a finite 3-vector, got {center.tolist()}")
    if up.shape != (3,) or not np.all(np.isfinite(up)) or np.linalg.norm(up) < 1e-12:
        raise CameraError(f"up: expected a finite non-zero 3-vector, got {up.tolist()}")
    radius = _finite(radius, "radius")
    if radius <= 0:
        raise CameraError(f"radius: must be positive, got {radius}")
    angle = math.radians(_finite(angle_deg, "angle_deg"))
    elev = math.radians(_finite(elevation_deg, "elevation_deg"))
    if abs(elev) >= math.pi / 2:
        raise CameraError(f"elevation_deg: must be in (-90, 90), got {elevation_deg}")
    u = up / np.linalg.norm(up)
    if start_direction is not None:
        cands = [np.asarray(start_direction, np.float64)]
    else:
        cands = [np.array([0.0, 0.0, -1.0]), np.array([1.0, 0.0, 0.0])]
    for d in cands:
        if d.shape != (3,) or not np.all(np.isfinite(d)):
            raise CameraError(f"start_direction: expected a finite 3-vector, got {d.tolist()}")
        e1 = d - np.dot(d, u) * u
        if np.linalg.norm(e1) > 1e-9:
            break
    else:
        raise CameraError("start_direction: must not be parallel to up")
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(e1, u)  # positive angle = towards the camera's left
    theta = angle * (np.arange(T, dtype=np.float64) / max(T - 1, 1))
    ring = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2
    eyes = center + radius * (math.cos(elev) * ring + math.sin(elev) * u)
    out = look_at(eyes, np.broadcast_to(center, eyes.shape), np.broadcast_to(u, eyes.shape)).astype(np.float32)
    if T > 1 and angle != 0 and abs(math.degrees(angle)) % 360.0 == 0.0:
        out[-1] = out[0]
    return out


def interpolate_keyframes(
    keyframes,
    num_frames: int | None = None,
    *,
    chunks: int | None = None,
    key_frame_indices: Sequence[int] | None = None,
    position: Literal["catmull_rom", "linear"] = "catmull_rom",
) -> np.ndarray:
    """A smooth path through keyframe poses: float32 [T, 4, 4] OpenCV camera-to-world.

    Rotations are slerped between consecutive keyframes (shortest arc). Positions follow a
    Catmull-Rom spline in frame time (a cubic Hermite spline whose tangent at key j is
    (p[j+1] - p[j-1]) / (t[j+1] - t[j-1]); one-sided at the ends), C1-continuous and without
    the speed jumps of piecewise-linear motion; or straight lines with ``position="linear"``.
    Frame ``key_frame_indices[j]`` equals ``keyframes[j]`` exactly.

    Args:
      keyframes: float [K, 4, 4] camera-to-world (K >= 1).
      num_frames / chunks: T, as in :func:`preset`.
      key_frame_indices: strictly increasing frame indices of the keyframes, first 0 and last
        T - 1; default evenly spread (rounded).
    """
    key = _check_path(keyframes, "keyframes")
    T = _resolve_num_frames(num_frames, chunks)
    K = key.shape[0]
    if position not in ("catmull_rom", "linear"):
        raise CameraError(f"position: expected 'catmull_rom' or 'linear', got {position!r}")
    if K == 1:
        return np.repeat(key.astype(np.float32), T, axis=0)
    if key_frame_indices is None:
        if T < K:
            raise CameraError(f"num_frames: {T} frames cannot hold {K} distinct keyframes")
        idx = np.round(np.linspace(0, T - 1, K)).astype(np.int64)
    else:
        idx = np.asarray(key_frame_indices)
        if idx.shape != (K,) or not np.issubdtype(idx.dtype, np.integer):
            raise CameraError(f"key_frame_indices: expected {K} integers, got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64)
    if idx[0] != 0 or idx[-1] != T - 1 or np.any(np.diff(idx) <= 0):
        raise CameraError(
            f"key_frame_indices: must increase strictly from 0 to num_frames - 1 = {T - 1}, got {idx.tolist()}"
        )

    frames = np.arange(T)
    seg = np.clip(np.searchsorted(idx, frames, side="right") - 1, 0, K - 2)
    t0, t1 = idx[seg].astype(np.float64), idx[seg + 1].astype(np.float64)
    u = (frames - t0) / (t1 - t0)

    # Rotations: slerp per segment, with the quaternion sequence on one hemisphere.
    q = matrix_to_quaternion(key[:, :3, :3])
    for j in range(1, K):
        if np.dot(q[j - 1], q[j]) < 0:
            q[j] = -q[j]
    R = quaternion_to_matrix(slerp(q[seg], q[seg + 1], u))

    p = key[:, :3, 3]
    if position == "linear":
        pos = (1 - u)[:, None] * p[seg] + u[:, None] * p[seg + 1]
    else:
        tk = idx.astype(np.float64)
        m = np.empty_like(p)
        m[0] = (p[1] - p[0]) / (tk[1] - tk[0])
        m[-1] = (p[-1] - p[-2]) / (tk[-1] - tk[-2])
        if K > 2:
            m[1:-1] = (p[2:] - p[:-2]) / (tk[2:] - tk[:-2])[:, None]
        dt = (t1 - t0)[:, None]
        uu = u[:, None]
        h00 = 2 * uu**3 - 3 * uu**2 + 1
        h10 = uu**3 - 2 * uu**2 + uu
        h01 = -2 * uu**3 + 3 * uu**2
        h11 = uu**3 - uu**2
        pos = h00 * p[seg] + h10 * dt * m[seg] + h01 * p[seg + 1] + h11 * dt * m[seg + 1]
    out = _pose(R, pos).astype(np.float32)
    out[idx] = key.astype(np.float32)
    return out


def relative_to_first(c2w_path) -> np.ndarray:
    """Re-expresses a path relative to its first camera: float32 [T, 4, 4], frame 0 = identity."""
    P = _check_path(c2w_path, "c2w_path")
    out = (invert_pose(P[0]) @ P).astype(np.float32)
    out[0] = np.eye(4, dtype=np.float32)
    return out


def chain(*paths, start=None) -> np.ndarray:
    """Joins paths end to start: float32 [sum(T_i) - (n - 1), 4, 4].

    Each later path is moved rigidly so that its first camera sits on the previous path's last
    camera (its motion is applied relative to that pose) and its now duplicate first frame is
    dropped. With ``start`` the whole result is placed so that frame 0 equals ``start``;
    otherwise the first path keeps its own placement. Chaining k presets of 33 frames gives
    33 + 32 (k - 1) frames, one chunk per preset: e.g.
    ``chain(preset("push_in", 33), preset("pan_left", 33))`` like WorldScore's camera_path.
    """
    if not paths:
        raise CameraError("chain: needs at least one path")
    checked = [_check_path(p, f"paths[{i}]") for i, p in enumerate(paths)]
    first = checked[0]
    base = first[0] if start is None else _check_start(start)
    pieces = [base @ (invert_pose(first[0]) @ first)]
    for P in checked[1:]:
        rel = invert_pose(P[0]) @ P[1:]
        pieces.append(pieces[-1][-1] @ rel)
    out = np.concatenate(pieces, axis=0).astype(np.float32)
    out[0] = base.astype(np.float32)
    return out
