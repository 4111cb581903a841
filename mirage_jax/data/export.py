"""Export clips to the formats the PyTorch reference and WorldScore read.

A *clip* is a dict as produced by :func:`mirage_jax.data.worlds.make_clip` or read from the
builders of :mod:`mirage_jax.data.builders` (one example, unbatched):

  ``frames``     uint8 [T, H, W, 3]
  ``depth``      float [T, H, W] z-depth (float16 from ``synthetic_worlds`` is widened)
  ``intrinsics`` float [T, 3, 3] pixels;  ``cam2world`` float [T, 4, 4] OpenCV
  masks (optional): ``keep_mask`` (True = static/keep) or ``dynamic_mask`` / ``sky_mask``
  (True = moving object / sky); optional ``frame_indices`` / ``clip_indices``,
  ``original_size``, ``caption``, ``scene_id`` (str or bytes).

Outputs (spec section 8):

* ``geometry.npz`` (:func:`export_geometry_npz`): frames, depths float32, intrinsics,
  poses_c2w, masks (True = static/keep = NOT dynamic AND NOT sky), frame_indices,
  original_size, processed_size, written with
  :func:`mirage_jax.geometry.formats.write_geometry_npz`. The reference format requires finite
  depth with <= 0 meaning invalid, so non-finite depth (the ray-caster's sky at infinity)
  is written as 0; those pixels are also False in ``masks`` when the clip marks them as sky.
* WorldScore-style instance (:func:`export_worldscore`): ``camera_data.json`` (Blender/OpenGL
  camera-to-world, one focal length, principal point implied at (W / 2, H / 2), via
  :func:`mirage_jax.geometry.formats.write_worldscore_cameras`), ``frames/00000.png ...`` and
  ``input_image.png`` (frame 0). A principal point at ((W - 1) / 2, (H - 1) / 2), as the
  ray-caster writes it, is refused unless ``shift_principal_point=True`` (see there).
* :func:`export_clip` writes both into one directory plus ``caption.txt`` (which the
  ``geometry_npz`` builder reads back as the caption).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.ndarray):
        return _text(value.item())
    return str(value)


def as_clip(example: Mapping[str, Any]) -> dict[str, Any]:
    """A clip dict with host NumPy arrays (frames uint8, depth float32, cameras float32, masks
    bool, text as str) from make_clip's output or a builder example.

    Raises ValueError / TypeError naming the key for missing frames or cameras, float frames
    (convert with :func:`mirage_jax.data.pipeline.denormalize_frames` first) or inconsistent
    shapes.
    """
    for key in ("frames", "intrinsics", "cam2world"):
        if key not in example or example[key] is None:
            raise ValueError(f"clip: missing {key!r} (keys: {sorted(example)})")
    frames = np.asarray(example["frames"])
    if frames.dtype != np.uint8:
        raise TypeError(
            f"clip: frames must be uint8 [T, H, W, 3], got {frames.dtype}; normalised float frames "
            "must be converted back first (mirage_jax.data.pipeline.denormalize_frames)"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"clip: frames must be [T, H, W, 3], got {frames.shape}")
    T, H, W = frames.shape[:3]
    clip: dict[str, Any] = {"frames": frames}
    K = np.asarray(example["intrinsics"], np.float32)
    c2w = np.asarray(example["cam2world"], np.float32)
    if K.shape != (T, 3, 3):
        raise ValueError(f"clip: intrinsics must be [{T}, 3, 3], got {K.shape}")
    if c2w.shape != (T, 4, 4):
        raise ValueError(f"clip: cam2world must be [{T}, 4, 4], got {c2w.shape}")
    clip["intrinsics"], clip["cam2world"] = K, c2w
    if example.get("depth") is not None:
        depth = np.asarray(example["depth"]).astype(np.float32)
        if depth.shape != (T, H, W):
            raise ValueError(f"clip: depth must be [{T}, {H}, {W}], got {depth.shape}")
        clip["depth"] = depth
    for key in ("keep_mask", "dynamic_mask", "sky_mask"):
        if example.get(key) is not None:
            m = np.asarray(example[key])
            if m.shape != (T, H, W) or m.dtype != np.bool_:
                raise ValueError(f"clip: {key} must be bool [{T}, {H}, {W}], got {m.dtype} {m.shape}")
            clip[key] = m
    for key in ("frame_indices", "clip_indices"):
        if example.get(key) is not None:
            idx = np.asarray(example[key]).astype(np.int64)
            if idx.shape != (T,):
                raise ValueError(f"clip: {key} must have {T} entries, got {idx.shape}")
            clip[key] = idx
    if example.get("original_size") is not None:
        clip["original_size"] = np.asarray(example["original_size"]).astype(np.int64).reshape(-1)
    clip["caption"] = _text(example.get("caption"))
    clip["scene_id"] = _text(example.get("scene_id"))
    return clip


def keep_mask(clip: Mapping[str, Any]) -> np.ndarray | None:
    """bool [T, H, W], True = static/keep: ``keep_mask`` if present, else NOT dynamic AND NOT
    sky from whichever of ``dynamic_mask`` / ``sky_mask`` exist; None when the clip has none."""
    if clip.get("keep_mask") is not None:
        return np.asarray(clip["keep_mask"], bool)
    masks = [np.asarray(clip[k], bool) for k in ("dynamic_mask", "sky_mask") if clip.get(k) is not None]
    if not masks:
        return None
    keep = np.ones(masks[0].shape, bool)
    for m in masks:
        keep &= ~m
    return keep


def export_geometry_npz(clip: Mapping[str, Any], path: PathLike, *, compress: bool = True) -> Path:
    """Writes one clip as a reference ``geometry.npz`` (module docstring); returns the path.

    ``frame_indices`` come from the clip's ``frame_indices`` (source video indices), else its
    ``clip_indices`` (positions of a sampled window), else 0..T-1. ``original_size`` is the
    clip's when it has a known one (not (0, 0)), else the frame size.
    """
    from mirage_jax.geometry.formats import write_geometry_npz

    c = as_clip(clip)
    if "depth" not in c:
        raise ValueError("clip: geometry.npz needs 'depth' (this clip has none, e.g. RealEstate10K frames)")
    T, H, W = c["frames"].shape[:3]
    depth = np.where(np.isfinite(c["depth"]), c["depth"], 0.0).astype(np.float32)
    idx = c.get("frame_indices", c.get("clip_indices"))
    if idx is None:
        idx = np.arange(T, dtype=np.int64)
    original = c.get("original_size")
    if original is None or original.shape != (2,) or np.any(original <= 0):
        original = np.array([H, W], np.int64)
    path = Path(path)
    write_geometry_npz(
        path,
        depths=depth,
        intrinsics=c["intrinsics"],
        poses_c2w=c["cam2world"],
        frames=c["frames"],
        masks=keep_mask(c),
        frame_indices=idx,
        original_size=original,
        processed_size=(H, W),
        compress=compress,
    )
    return path


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    os.replace(tmp, path)


def export_worldscore(
    clip: Mapping[str, Any],
    out_dir: PathLike,
    *,
    scale: float = 1.0,
    shift_principal_point: bool = False,
) -> dict[str, Path]:
    """Writes a WorldScore-style instance directory; returns ``{"camera_data", "frames",
    "input_image"}`` paths.

    ``camera_data.json``: the clip's cameras. WorldScore stores one focal length (fx = fy, the
    same in every frame, within 1e-3 px) and no principal point: its consumers (and
    :func:`mirage_jax.geometry.formats.read_worldscore_cameras`) put it at (W / 2, H / 2).
    Cameras that do not fit raise CameraError instead of being altered.

    The ray-caster (and any camera whose principal point is the exact image centre in the
    pixel-centre convention) has (cx, cy) = ((W - 1) / 2, (H - 1) / 2): WorldScore cannot
    express it, and the file would be read back half a pixel off. That also raises, unless the
    caller opts in with ``shift_principal_point=True``: the principal point is then moved to
    (W / 2, H / 2) for WorldScore, and the clip's exact intrinsics are written next to it in
    the same file under the extra key ``"intrinsics_exact"`` (float [T, 3, 3] pixels,
    pixel-centre convention; WorldScore ignores extra keys) so the shift is explicit.

    ``frames/{i:05d}.png``: every frame; ``input_image.png``: frame 0.
    """
    from mirage_jax.geometry.cameras import CameraError
    from mirage_jax.geometry.formats import write_worldscore_cameras

    tol = 1e-3
    c = as_clip(clip)
    H, W = c["frames"].shape[1:3]
    K = c["intrinsics"].astype(np.float64)
    exact = K.copy()
    shifted = False
    for axis, size, name in ((0, W, "cx"), (1, H, "cy")):
        p = K[:, axis, 2]
        if np.all(np.abs(p - size / 2.0) <= tol):
            continue
        if np.all(np.abs(p - (size - 1) / 2.0) <= tol):
            if not shift_principal_point:
                raise CameraError(
                    f"intrinsics: {name} = {(size - 1) / 2} (the image centre in the pixel-centre convention) "
                    f"cannot be expressed in WorldScore's camera_data.json, which implies {size / 2}; readers "
                    "would be off by 0.5 px. Pass shift_principal_point=True to export with the principal "
                    "point moved to (W / 2, H / 2) (the exact intrinsics are then stored as 'intrinsics_exact')"
                )
            K[:, axis, 2] = size / 2.0
            shifted = True
            continue
        raise CameraError(
            f"intrinsics: WorldScore has no principal point; {name} must be the image centre "
            f"({size / 2}, or {(size - 1) / 2} with shift_principal_point=True), got {p[:4].tolist()}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cam_path = out / "camera_data.json"
    write_worldscore_cameras(cam_path, c["cam2world"], K, (H, W), scale=scale, atol_px=tol)
    if shifted:
        data = json.loads(cam_path.read_text())
        data["intrinsics_exact"] = exact.tolist()
        tmp = cam_path.with_name(cam_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, cam_path)
    frames_dir = out / "frames"
    for i, frame in enumerate(c["frames"]):
        _write_png(frames_dir / f"{i:05d}.png", frame)
    input_path = out / "input_image.png"
    _write_png(input_path, c["frames"][0])
    return {"camera_data": cam_path, "frames": frames_dir, "input_image": input_path}


def export_clip(
    clip: Mapping[str, Any],
    out_dir: PathLike,
    *,
    geometry: bool = True,
    worldscore: bool = True,
    shift_principal_point: bool = False,
) -> dict[str, Path]:
    """Writes ``geometry.npz`` and/or the WorldScore files plus ``caption.txt`` to ``out_dir``.

    ``shift_principal_point`` is forwarded to :func:`export_worldscore` (needed for clips of the
    ray-caster, whose principal point WorldScore cannot express exactly).

    Returns the written paths (keys ``geometry``, ``camera_data``, ``frames``, ``input_image``,
    ``caption``).
    """
    c = as_clip(clip)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if geometry:
        paths["geometry"] = export_geometry_npz(c, out / "geometry.npz")
    if worldscore:
        paths.update(export_worldscore(c, out, shift_principal_point=shift_principal_point))
    caption_path = out / "caption.txt"
    caption_path.write_text(c["caption"] + "\n" if c["caption"] else "")
    paths["caption"] = caption_path
    return paths


__all__ = ["as_clip", "keep_mask", "export_geometry_npz", "export_worldscore", "export_clip"]
