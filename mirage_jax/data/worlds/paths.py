"""Camera paths through a ``Scene`` that never enter geometry.

``random_trajectory(scene, seed, num_frames, kind)`` returns OpenCV camera-to-world poses
f32[T, 4, 4] (x right, y down, z forward) in the scene's y-down world, built with
``mirage_jax.geometry.cameras.look_at`` (default up = world -y, so cameras are level: no roll).

kinds
  "walk"   a smooth random walk: a Catmull-Rom spline through random waypoints in free space,
           looking at objects of the scene (yaw and pitch interpolated smoothly);
  "loop"   a closed, perturbed ellipse (periodic spline) around a free point; the last pose
           equals the first exactly (bit for bit);
  preset   any name of ``mirage_jax.geometry.trajectories.PRESETS`` (push_in, pan_left, orbit,
           ...), started from a random level camera placed so the whole move stays clear.

Every path is checked densely (8 samples per frame interval, each at its own time, so moving
objects are accounted for) against the scene's exact signed distance (``scene_sdf``): the camera
centre keeps ``clearance`` metres from every surface and stays inside ``scene.bounds``, and the
view is never blocked: the first surface along the optical axis is at least ``min_view``
metres away (sphere tracing the SDF). Candidates that fail are redrawn, deterministically from
(seed, scene); after ``max_tries`` failures a RuntimeError says which check failed.
All of this is host-side NumPy (float64), independent of the renderer.
"""

from __future__ import annotations

import math

import numpy as np

import jax

from mirage_jax.data.worlds.scene import (
    CLASS_IDS,
    GROUPS,
    STRUCTURAL_CLASSES,
    Scene,
    is_dynamic,
    primitive_poses,
    scene_sdf,
)
from mirage_jax.geometry.cameras import check_pose, look_at

__all__ = ["TRAJECTORY_KINDS", "random_trajectory", "catmull_rom", "view_distance", "path_clearance"]

TRAJECTORY_KINDS = ("walk", "loop")


def _preset_names():
    try:
        from mirage_jax.geometry import trajectories
    except ImportError:  # pragma: no cover - the geometry module ships with the package
        return {}
    return trajectories.PRESETS


# --------------------------------------------------------------------------------------------
# Splines.
# --------------------------------------------------------------------------------------------


def catmull_rom(points, u, periodic: bool = False) -> np.ndarray:
    """Uniform Catmull-Rom spline through points [K, D] evaluated at parameters u [M].

    Open curves: u in [0, K - 1] (end tangents from mirrored neighbours); periodic curves: u in
    [0, K) wraps around and the curve is C1 everywhere.
    """
    P = np.asarray(points, np.float64)
    K = P.shape[0]
    u = np.asarray(u, np.float64)
    if periodic:
        idx = lambda i: P[np.mod(i, K)]  # noqa: E731
        u = np.mod(u, K)
        i = np.floor(u).astype(int)
    else:
        ext = np.concatenate([2 * P[:1] - P[1:2], P, 2 * P[-1:] - P[-2:-1]], axis=0)
        idx = lambda i: ext[np.clip(i + 1, 0, K + 1)]  # noqa: E731
        i = np.clip(np.floor(u).astype(int), 0, K - 2)
    s = (u - i)[:, None]
    p0, p1, p2, p3 = idx(i - 1), idx(i), idx(i + 1), idx(i + 2)
    return 0.5 * (
        2 * p1 + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * s**3
    )


# --------------------------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------------------------


def _bounds(scene: Scene):
    b = np.asarray(scene.bounds, np.float64)
    return b[0], b[1]


def _in_bounds(scene: Scene, pts, tol=1e-6):
    lo, hi = _bounds(scene)
    return np.all((pts >= lo - tol) & (pts <= hi + tol), axis=-1)


def view_distance(scene: Scene, origins, directions, times, max_distance: float = 30.0, steps: int = 64) -> np.ndarray:
    """Distance f64[M] along unit ``directions`` [M, 3] from ``origins`` [M, 3] to the first surface
    (sphere tracing the exact SDF at ``times`` [M]); ``max_distance`` if none is met."""
    o = np.asarray(origins, np.float64)
    d = np.asarray(directions, np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    t = np.zeros(o.shape[0])
    done = np.zeros(o.shape[0], bool)
    for _ in range(steps):
        dist = scene_sdf(scene, o + t[:, None] * d, times)
        done |= dist < 1e-3
        t = np.where(done, t, np.minimum(t + np.maximum(dist, 1e-3), max_distance))
        if np.all(done | (t >= max_distance)):
            break
    return t


def path_clearance(scene: Scene, eyes, times, substeps: int = 8) -> float:
    """Smallest SDF value along the piecewise-linear path through ``eyes`` [T, 3] (``substeps``
    samples per interval, times interpolated): the camera's worst clearance in metres."""
    eyes = np.asarray(eyes, np.float64)
    times = np.asarray(times, np.float64)
    if eyes.shape[0] == 1:
        return float(scene_sdf(scene, eyes, times).min())
    a = np.linspace(0.0, 1.0, substeps, endpoint=False)[None, :, None]
    pts = (eyes[:-1, None] * (1 - a) + eyes[1:, None] * a).reshape(-1, 3)
    ts = (times[:-1, None] * (1 - a[..., 0]) + times[1:, None] * a[..., 0]).reshape(-1)
    pts = np.concatenate([pts, eyes[-1:]])
    ts = np.concatenate([ts, times[-1:]])
    return float(scene_sdf(scene, pts, ts).min())


class _Rejected(Exception):
    pass


def _check(scene, eyes, forwards, times, clearance, min_view, dense):
    if not np.all(_in_bounds(scene, eyes)):
        raise _Rejected("leaves scene.bounds")
    if dense:
        c = path_clearance(scene, eyes, times)
    else:
        c = float(scene_sdf(scene, eyes, times).min())
    if c < clearance:
        raise _Rejected(f"passes {c:.3f} m from a surface (clearance {clearance} m)")
    if min_view > 0:
        v = view_distance(scene, eyes, forwards, times)
        if v.min() < min_view:
            raise _Rejected(f"view blocked at {v.min():.3f} m (min_view {min_view} m)")


# --------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------


def _look_targets(scene: Scene, t: float = 0.0):
    """Centres at time t of the scene's non-structural primitives (objects worth looking at)
    [M, 3], and whether each moves [M]."""
    pts, moving = [], []
    structural = [CLASS_IDS[c] for c in STRUCTURAL_CLASSES]
    for g in GROUPS:
        if g == "planes":
            continue
        p = jax.tree.map(np.asarray, scene.group(g))
        m = p.mask & ~np.isin(p.object_class, structural)
        p64 = jax.tree.map(lambda a: a.astype(np.float64) if a.dtype.kind == "f" else a, p)
        centers, _ = primitive_poses(p64, t, xp=np)
        pts.append(centers[m])
        moving.append(is_dynamic(p, xp=np)[m])
    if not pts:
        return np.zeros((0, 3)), np.zeros((0,), bool)
    return np.concatenate(pts), np.concatenate(moving)


def _pick_target(rng, scene, t):
    """A point to look at: a moving object half of the time when there is one, else any object;
    None when the scene has no objects."""
    pts, moving = _look_targets(scene, t)
    if not len(pts):
        return None
    if moving.any() and rng.uniform() < 0.5:
        pts = pts[moving]
    return pts[int(rng.integers(len(pts)))]


def _free_point(rng, scene, times, clearance, tries=200):
    lo, hi = _bounds(scene)
    for _ in range(tries):
        p = rng.uniform(lo, hi)
        if scene_sdf(scene, np.repeat(p[None], len(times), 0), times).min() >= clearance + 0.1:
            return p
    raise _Rejected("no free start point found")


def _poses(eyes, forwards) -> np.ndarray:
    """Level OpenCV camera-to-world [T, 4, 4] (float32) from eyes and forward directions."""
    eyes = np.asarray(eyes, np.float64)
    f = np.asarray(forwards, np.float64)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    # look_at in float32 is rigid to ~1e-7; targets one metre ahead keep it well conditioned.
    return np.array(look_at(eyes.astype(np.float32), (eyes + f).astype(np.float32)), np.float32)


def _direction(yaw, pitch):
    """Unit forward vectors from yaw (about world y, 0 = +z) and pitch (positive looks up)."""
    cp = np.cos(pitch)
    return np.stack([np.sin(yaw) * cp, -np.sin(pitch), np.cos(yaw) * cp], axis=-1)


def _yaw_towards(src, dst):
    d = dst - src
    return math.atan2(d[0], d[2])


def _walk(rng, scene, T, times, clearance, min_view, speed):
    duration = float(times[-1] - times[0]) if T > 1 else 0.0
    K = max(3, 2 + T // 8)
    length = speed * duration * rng.uniform(0.7, 1.3)
    step = length / (K - 1)
    p = _free_point(rng, scene, times, clearance)
    heading = rng.uniform(0, 2 * math.pi)
    pts = [p]
    lo, hi = _bounds(scene)
    for _ in range(K - 1):
        for _attempt in range(20):
            h = heading + rng.uniform(-1.0, 1.0)
            dy = rng.uniform(-0.1, 0.1) * step
            q = pts[-1] + np.array([math.sin(h) * step, dy, math.cos(h) * step])
            q[1] = np.clip(q[1], lo[1], hi[1])
            free = scene_sdf(scene, np.repeat(q[None], len(times), 0), times).min() >= clearance
            if _in_bounds(scene, q[None])[0] and free:
                heading = h
                pts.append(q)
                break
        else:
            raise _Rejected("random walk got stuck")
    pts = np.stack(pts)
    u = np.linspace(0.0, K - 1, T) if T > 1 else np.zeros(1)
    eyes = catmull_rom(pts, u)
    # Orientation: yaw keyframes towards objects (or along the motion), small pitch, turning at
    # most ``ang_speed`` rad/s between keyframes so views change smoothly.
    ang_speed = rng.uniform(0.15, 0.6)
    max_turn = ang_speed * duration / (K - 1)
    key_times = np.interp(np.arange(K), u, times) if T > 1 else np.full(K, times[0])
    yaws, pitches = [], []
    for k in range(K):
        tgt = _pick_target(rng, scene, key_times[k]) if rng.uniform() < 0.75 else None
        if tgt is not None:
            yaw = _yaw_towards(pts[k], tgt) + rng.uniform(-0.25, 0.25)
            flat = math.hypot(*(tgt - pts[k])[[0, 2]])
            pitch = math.atan2(-(tgt[1] - pts[k][1]), max(flat, 1e-3))
        else:
            yaw = rng.uniform(0, 2 * math.pi)
            pitch = rng.uniform(-0.2, 0.1)
        pitch = float(np.clip(pitch, -0.35, 0.15))
        if yaws:  # unwrap, and limit the turn between keyframes
            yaw = yaws[-1] + float(np.clip((yaw - yaws[-1] + math.pi) % (2 * math.pi) - math.pi, -max_turn, max_turn))
            pitch = pitches[-1] + float(np.clip(pitch - pitches[-1], -0.5 * max_turn, 0.5 * max_turn))
        yaws.append(yaw)
        pitches.append(pitch)
    ang = catmull_rom(np.stack([yaws, pitches], -1), u)
    fwd = _direction(ang[:, 0], np.clip(ang[:, 1], -0.4, 0.2))
    _check(scene, eyes, fwd, times, clearance, min_view, dense=True)
    return eyes, fwd


def _loop(rng, scene, T, times, clearance, min_view, speed):
    duration = float(times[-1] - times[0]) if T > 1 else 0.0
    perimeter = max(speed * duration * rng.uniform(0.7, 1.3), 0.3)
    c = _free_point(rng, scene, times, clearance)
    K = 6
    ratio = rng.uniform(0.5, 1.0)
    a = perimeter / (2 * math.pi * math.sqrt((1 + ratio**2) / 2))  # Ramanujan-free approximation
    b = ratio * a
    rot = rng.uniform(0, 2 * math.pi)
    theta = np.arange(K) * 2 * math.pi / K + rng.uniform(-0.2, 0.2, K)
    radial = rng.uniform(0.85, 1.15, K)
    local = np.stack([a * np.cos(theta) * radial, rng.uniform(-0.05, 0.05, K), b * np.sin(theta) * radial], -1)
    cr, sr = math.cos(rot), math.sin(rot)
    pts = c + np.stack([cr * local[:, 0] + sr * local[:, 2], local[:, 1], -sr * local[:, 0] + cr * local[:, 2]], -1)
    # Start anywhere on the loop: shift the parameter so that frame 0 is at u0.
    u0 = rng.uniform(0, K)
    s = np.arange(T) / max(T - 1, 1)
    u = u0 + K * s
    eyes = catmull_rom(pts, u, periodic=True)
    tgt = _pick_target(rng, scene, float(times[T // 2]))
    if tgt is not None and np.linalg.norm((tgt - c)[[0, 2]]) > 1.2:
        base_yaw = _yaw_towards(c, tgt)
    else:
        base_yaw = rng.uniform(0, 2 * math.pi)
    wob = min(rng.uniform(0.1, 0.5), 0.5 * rng.uniform(0.15, 0.6) * duration)
    phase = rng.uniform(0, 2 * math.pi)
    yaw = base_yaw + wob * np.sin(2 * math.pi * s + phase)
    pitch = rng.uniform(-0.2, 0.05) + 0.05 * np.sin(2 * math.pi * s + 2 * phase)
    fwd = _direction(yaw, pitch)
    eyes[-1] = eyes[0]
    fwd[-1] = fwd[0]
    _check(scene, eyes, fwd, times, clearance, min_view, dense=True)
    return eyes, fwd


def _preset_path(rng, scene, T, times, clearance, min_view, name, preset_kwargs):
    from mirage_jax.geometry import trajectories

    eye = _free_point(rng, scene, times, clearance)
    yaw = rng.uniform(0, 2 * math.pi)
    tgt = _pick_target(rng, scene, float(times[0])) if rng.uniform() < 0.75 else None
    if tgt is not None:
        yaw = _yaw_towards(eye, tgt)
    start = _poses(eye[None], _direction(np.array([yaw]), np.array([0.0])))[0]
    path = trajectories.preset(name, T, start=start, **preset_kwargs)
    eyes = path[:, :3, 3].astype(np.float64)
    fwd = path[:, :3, 2].astype(np.float64)
    _check(scene, eyes, fwd, times, clearance, min_view, dense=True)
    return path


def random_trajectory(
    scene: Scene,
    seed: int,
    num_frames: int,
    kind: str = "walk",
    *,
    times=None,
    fps: float = 16.0,
    clearance: float = 0.3,
    min_view: float | None = None,
    speed: float | None = None,
    max_tries: int = 200,
    **preset_kwargs,
) -> np.ndarray:
    """A collision-free camera path: OpenCV camera-to-world f32[T, 4, 4] (T = num_frames).

    scene: a single ``Scene``; seed: int (paths are deterministic in (seed, scene)); kind:
    "walk", "loop" or a preset name of ``mirage_jax.geometry.trajectories.PRESETS`` (extra
    keyword arguments such as ``distance``, ``angle_deg``, ``loop``, ``easing`` go to
    ``trajectories.preset``). times: f[T] seconds of each frame (default arange(T) / fps), used
    for clearance against moving objects. clearance: metres between the camera centre and any
    surface; min_view: nearest surface allowed along the optical axis (default 0.8 m indoors,
    1.5 m outdoors); speed: camera speed in m/s for walks and loops (default 0.6 indoors,
    1.2 outdoors).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if np.ndim(scene.kind) != 0:
        raise ValueError("random_trajectory takes a single scene, not a stacked batch")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    presets = _preset_names()
    if kind not in TRAJECTORY_KINDS and kind not in presets:
        raise ValueError(f"kind must be one of {TRAJECTORY_KINDS} or a preset {sorted(presets)}, got {kind!r}")
    if preset_kwargs and kind in TRAJECTORY_KINDS:
        raise TypeError(f"unexpected keyword arguments for kind={kind!r}: {sorted(preset_kwargs)}")
    T = int(num_frames)
    if times is None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        times = np.arange(T, dtype=np.float64) / float(fps)
    times = np.asarray(times, np.float64)
    if times.shape != (T,) or not np.all(np.isfinite(times)):
        raise ValueError(f"times: expected {T} finite values, got shape {times.shape}")
    outdoor = int(scene.kind) == 1
    min_view = (1.5 if outdoor else 0.8) if min_view is None else float(min_view)
    speed = (1.2 if outdoor else 0.6) if speed is None else float(speed)
    rng = np.random.default_rng([int(seed), int(scene.seed), int(scene.kind), 0xCA3E7A])
    reasons = {}
    for _ in range(max_tries):
        try:
            if kind == "walk":
                path = _poses(*_walk(rng, scene, T, times, clearance, min_view, speed))
            elif kind == "loop":
                path = _poses(*_loop(rng, scene, T, times, clearance, min_view, speed))
                path[-1] = path[0]
            else:
                path = _preset_path(rng, scene, T, times, clearance, min_view, kind, preset_kwargs)
        except _Rejected as e:
            reasons[str(e).split(" (")[0]] = reasons.get(str(e).split(" (")[0], 0) + 1
            continue
        return check_pose(path, "trajectory")
    raise RuntimeError(
        f"random_trajectory: no valid {kind!r} path in {max_tries} tries for scene seed {int(scene.seed)} "
        f"(rejections: {reasons}); lower clearance / min_view / speed or use another seed"
    )
