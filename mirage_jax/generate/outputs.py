"""Writing a rollout's results: video.mp4 (+ GIF), frames/*.png, memory.npz / memory.ply,
metadata.json, and the WorldScore per-instance layout (spec 8).

Layout of ``out/``::

    video.mp4          libx264, yuv420p, 16 fps (imageio-ffmpeg's bundled ffmpeg)
    video.gif          the same frames (Pillow)
    frames/00000.png   every frame
    memory.npz         the final latent memory (mirage_jax.memory.save; never a pickle)
    memory.ply         its valid points, coloured by the features' principal components
    metadata.json      config, seeds, per-chunk poses / references / timings / memory counters

With ``worldscore=True`` also ``videos/output.mp4``, ``input_image.png``, ``image_data.json`` and
``camera_data.json`` (Blender camera-to-world + focal length, written before any compute by the
CLI, which is where a camera WorldScore cannot represent is refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mirage_jax import memory
from mirage_jax.errors import InputError

__all__ = ["FPS", "write_video", "write_gif", "write_frames", "write_outputs", "write_worldscore_extras"]

FPS = 16


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def write_video(path, frames, fps: int = FPS) -> Path:
    """H.264 mp4 through imageio-ffmpeg (the ``vipe`` extra)."""
    import imageio_ffmpeg

    frames = _check_frames(frames)
    T, H, W = frames.shape[:3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", macro_block_size=1,
                                         pix_fmt_out="yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p",
                                         quality=8, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return path


def write_gif(path, frames, fps: int = FPS) -> Path:
    frames = _check_frames(frames)
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)
    return Path(path)


def write_frames(folder, frames) -> list[str]:
    frames = _check_frames(frames)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, f in enumerate(frames):
        name = f"{i:05d}.png"
        Image.fromarray(f).save(folder / name)
        names.append(name)
    return names


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (Path, os.PathLike)):
        return os.fspath(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_outputs(out, result, metadata: dict, *, gif: bool = True) -> dict:
    """Writes the layout above from a :class:`~mirage_jax.generate.rollout.RolloutResult`;
    returns {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"video": write_video(out / "video.mp4", result.video)}
    if gif:
        paths["gif"] = write_gif(out / "video.gif", result.video)
    write_frames(out / "frames", result.video)
    paths["frames"] = out / "frames"
    paths["memory"] = memory.save(result.memory, out / "memory.npz")
    paths["ply"] = memory.export_ply(result.memory, out / "memory.ply")
    meta = dict(metadata)
    meta["memory"] = memory.counters(result.memory)
    meta["chunks"] = result.chunks
    meta["video"] = dict(frames=int(result.video.shape[0]), height=int(result.video.shape[1]),
                         width=int(result.video.shape[2]), fps=FPS)
    (out / "metadata.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    paths["metadata"] = out / "metadata.json"
    return paths


def write_worldscore_extras(out, result, image, prompt: str) -> None:
    """WorldScore's per-instance files besides camera_data.json (spec 8)."""
    out = Path(out)
    write_video(out / "videos" / "output.mp4", result.video)
    Image.fromarray(np.asarray(image, np.uint8)).save(out / "input_image.png")
    data = dict(image="input_image.png", prompt=prompt, num_frames=int(result.video.shape[0]),
                image_hw=[int(result.video.shape[1]), int(result.video.shape[2])])
    (out / "image_data.json").write_text(json.dumps(data, indent=2))
