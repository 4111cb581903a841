"""WorldScore's per-instance generator output (spec section 8), for users who run WorldScore
elsewhere::

    instance/
      frames/00000.png ...     every generated frame
      videos/output.mp4        the same frames (H.264, 16 fps)
      camera_data.json         Blender/OpenGL camera-to-world + one focal length
      image_data.json          input image name, prompt, frame count, size
      input_image.png          the conditioning image

:func:`write_instance` only composes the project's writers: camera_data.json, frames/ and
input_image.png come from :func:`mirage_jax.data.export.export_worldscore` (which also refuses
cameras WorldScore cannot express, or moves a pixel-centre principal point half a pixel with
``shift_principal_point=True`` and records the exact intrinsics), videos/output.mp4,
image_data.json and the real input image from
:func:`mirage_jax.generate.outputs.write_worldscore_extras` (the same files ``mirage-jax
generate --worldscore`` writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mirage_jax.errors import InputError

__all__ = ["INSTANCE_FILES", "write_instance"]

INSTANCE_FILES = ("frames", "videos/output.mp4", "camera_data.json", "image_data.json", "input_image.png")


def write_instance(out_dir, frames, intrinsics, cam2world, *, input_image, prompt: str,
                   shift_principal_point: bool = False) -> dict[str, Path]:
    """Writes one WorldScore instance (module docstring); returns {file: path} for INSTANCE_FILES.

    Args:
      frames: uint8 [T, H, W, 3] the generated video.
      intrinsics: [T, 3, 3] or [3, 3] pixels (fx = fy, principal point at the image centre:
        (W / 2, H / 2), or ((W - 1) / 2, (H - 1) / 2) with ``shift_principal_point``).
      cam2world: [T, 4, 4] OpenCV camera-to-world of each frame.
      input_image: uint8 [H, W, 3] the conditioning image (frame 0 of the video is its
        reconstruction, not the image itself).
      prompt: the text prompt.
    """
    from mirage_jax.data.export import export_worldscore
    from mirage_jax.generate.outputs import write_worldscore_extras
    from mirage_jax.generate.rollout import RolloutResult

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"write_instance: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    T, H, W = frames.shape[:3]
    image = np.asarray(input_image)
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise InputError(f"write_instance: input_image must be uint8 [{H}, {W}, 3], got {image.dtype} {list(image.shape)}")
    K = np.asarray(intrinsics, np.float32)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (T, 3, 3))
    out = Path(out_dir)
    export_worldscore(dict(frames=frames, intrinsics=K, cam2world=cam2world), out,
                      shift_principal_point=shift_principal_point)
    # write_worldscore_extras reads only the result's video.
    write_worldscore_extras(out, RolloutResult(video=frames, latents=None, memory=None, chunks=[], state=None),
                            image, prompt)
    return {name: out / name for name in INSTANCE_FILES}
