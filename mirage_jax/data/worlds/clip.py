"""``make_clip``: a rendered video clip with exact geometry, from one integer seed."""

from __future__ import annotations

import numpy as np

from mirage_jax.data.worlds.captions import caption
from mirage_jax.data.worlds.paths import random_trajectory
from mirage_jax.data.worlds.render import intrinsics_from_fov, render_frames
from mirage_jax.data.worlds.scene import KINDS, sample_scene
from mirage_jax.errors import check_hw

__all__ = ["make_clip", "scene_id"]


def scene_id(seed: int, kind: str) -> str:
    """Stable identifier of the scene sampled from (seed, kind), e.g. 'indoor-00000042'."""
    return f"{kind}-{int(seed):08d}"


def make_clip(
    seed: int,
    image_hw=(64, 64),
    num_frames: int = 9,
    kind: str = "indoor",
    fov_deg: float = 60.0,
    trajectory: str = "walk",
    shadows: bool = False,
    fps: float = 16,
    **scene_options,
) -> dict:
    """Samples a scene and a camera path from ``seed`` and renders ``num_frames`` frames.

    Returns dict(
      frames       uint8[T, H, W, 3]  (rgb rounded from [0, 1]),
      depth        f32[T, H, W]       z-depth in metres, 0 where invalid (sky),
      dynamic_mask bool[T, H, W]      pixels whose nearest surface is a moving object,
      sky_mask     bool[T, H, W]      pixels that hit nothing (outdoor sky),
      moving_shadow_mask bool[T, H, W] static surfaces darkened by a moving object's shadow
                                      (their colour changes over time; all False without shadows),
      intrinsics   f32[T, 3, 3]       pixels of this image (principal point at the centre),
      cam2world    f32[T, 4, 4]       OpenCV axes, y-down world (see worlds.scene),
      times        f32[T]             seconds (frame i at i / fps; moving objects follow it),
      caption      str,
      scene_id     str                '<kind>-<seed:08d>' (plus options, if any were given),
    ).
    Deterministic: the same arguments give bit-identical arrays. Extra keyword arguments go to
    ``sample_scene`` (images, num_objects, num_dynamic, capacity, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    H, W = check_hw(image_hw, "image_hw")
    scene = sample_scene(seed, kind, **scene_options)
    T = int(num_frames)
    times = (np.arange(T, dtype=np.float64) / float(fps)).astype(np.float32)
    c2w = random_trajectory(scene, seed, T, kind=trajectory, times=times.astype(np.float64))
    K = np.broadcast_to(intrinsics_from_fov((H, W), fov_deg), (T, 3, 3)).copy()
    out = render_frames(scene, K, c2w, (H, W), times, shadows=shadows)
    rgb = np.asarray(out["rgb"])
    sid = scene_id(seed, kind)
    if scene_options:
        sid += "-" + "-".join(f"{k}={scene_options[k]}" for k in sorted(scene_options))
    return {
        "frames": np.round(rgb * 255.0).astype(np.uint8),
        "depth": np.asarray(out["depth"], np.float32),
        "dynamic_mask": np.asarray(out["dynamic"], bool),
        "sky_mask": np.asarray(out["sky"], bool),
        "moving_shadow_mask": np.asarray(out["moving_shadow"], bool),
        "intrinsics": K.astype(np.float32),
        "cam2world": np.asarray(c2w, np.float32),
        "times": times,
        "caption": caption(scene),
        "scene_id": sid,
    }
