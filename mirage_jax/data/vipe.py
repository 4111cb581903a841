"""Training clips in the reference's layout (ViPE output, spec section 11) and the ``vipe_clips`` builder.

One folder per clip::

    <clip>/clip.mp4          the video (the reference: 81 frames, 16 fps, 1280 x 704)
    <clip>/depth.zip         per-frame OpenEXR files ``<frame>.exr`` with a float16 channel "Z" (z-depth)
    <clip>/mask.zip          per-frame PNGs ``<frame>.png``; > 0 = dynamic (excluded from the memory)
    <clip>/pose.npz          ``inds`` [N] int, ``data`` [N, 4, 4] camera-to-world (OpenCV)
    <clip>/intrinsics.npz    ``inds`` [N] int, ``data`` [N, 4] = fx, fy, cx, cy in pixels
    <clip>/clip.txt          the caption (``caption.txt`` / ``prompt.txt`` also accepted)

Everything is validated when it is read (:func:`read_vipe_clip`): the frame count of the video
against the members of both zips and the ``inds`` of both npz files (every frame 0..T-1 exactly
once), shapes, float16 depth, finite non-negative depth values (0 / NaN / inf mark invalid
pixels and are kept as they are), proper rotations, positive focal lengths; npz files are read
without pickles. Every error is a :class:`~mirage_jax.errors.FileFormatError` naming the file
and the zip member or npz key. We differ from the reference on purpose where it hides errors: an
EXR member that fails to decode raises here (the reference silently gives an all-NaN frame).

A clip whose dynamic mask covers more than ``max_mask_fraction`` (0.95, the reference's rule) of
any of its frames is rejected by the builder: it is not written, and it is logged and listed in
the dataset's metadata (``rejected``: split -> [[clip, frame, fraction], ...]).

:func:`write_vipe_clip` writes the same layout (tests, and exporting our synthetic worlds for the
reference's training code).

Dependencies (optional extra ``vipe``): ``imageio-ffmpeg`` (decodes / encodes the mp4 with its
bundled ffmpeg binary; no system ffmpeg needed) and ``openexr`` (the Academy Software
Foundation's bindings, 3.3 or later).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mirage_jax.data.builders import _discover_splits, _ManualDirBuilder, _split_root, clip_features, resize_crop_clip
from mirage_jax.errors import FileFormatError, MirageError, check_hw, file_error

VIDEO_NAME = "clip.mp4"
DEPTH_NAME = "depth.zip"
MASK_NAME = "mask.zip"
POSE_NAME = "pose.npz"
INTRINSICS_NAME = "intrinsics.npz"
CAPTION_NAMES = ("clip.txt", "caption.txt", "prompt.txt")
MAX_MASK_FRACTION = 0.95

_FRAME_MEMBER = re.compile(r"^(\d+)\.(\w+)$")


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_video(path) -> np.ndarray:
    """Decodes every frame of a video file -> uint8 [T, H, W, 3] (RGB), with imageio-ffmpeg."""
    import imageio_ffmpeg

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise file_error(path, "video not found")
    try:
        gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
        meta = next(gen)
        W, H = (int(v) for v in meta["size"])
        frames = [np.frombuffer(buf, np.uint8).reshape(H, W, 3) for buf in gen]
    except (RuntimeError, OSError, StopIteration, ValueError, KeyError) as err:
        raise file_error(path, f"cannot decode the video ({type(err).__name__}: {err})") from err
    if not frames:
        raise file_error(path, "the video has no frames")
    return np.stack(frames)


def _frame_members(zf: zipfile.ZipFile, zip_path: str, ext: str, num_frames: int) -> list[zipfile.ZipInfo]:
    """The members ``<frame>.<ext>`` of a per-frame zip, one per frame 0..num_frames-1, in order."""
    by_frame: dict[int, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = info.filename.rsplit("/", 1)[-1]
        m = _FRAME_MEMBER.match(name)
        if m is None or m.group(2).lower() != ext:
            raise file_error(zip_path, f"unexpected member {info.filename!r}; expected <frame>.{ext}", key=info.filename)
        frame = int(m.group(1))
        if frame in by_frame:
            raise file_error(zip_path, f"frame {frame} appears twice ({by_frame[frame].filename!r})", key=info.filename)
        by_frame[frame] = info
    missing = sorted(set(range(num_frames)) - set(by_frame))
    extra = sorted(set(by_frame) - set(range(num_frames)))
    if missing or extra:
        raise file_error(
            zip_path,
            f"holds frames {_ranges(sorted(by_frame))}, the video has {num_frames} (0..{num_frames - 1})"
            + (f"; missing {_ranges(missing)}" if missing else "")
            + (f"; beyond the video {_ranges(extra)}" if extra else ""),
        )
    return [by_frame[i] for i in range(num_frames)]


def _ranges(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)})"


def decode_exr_depth(data: bytes, where: str, channel: str = "Z") -> np.ndarray:
    """One EXR image (bytes) -> its float16 ``channel`` [H, W]; ``where`` names it in errors."""
    import OpenEXR

    try:
        # Through a temporary file: OpenEXR's Python bindings read file-like objects only from 3.4 on.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "frame.exr")
            with open(path, "wb") as out:
                out.write(data)
            with OpenEXR.File(path, separate_channels=True) as f:
                channels = f.channels()
                if channel not in channels:
                    raise FileFormatError(f"{where}: no channel {channel!r} (channels: {sorted(channels)})")
                pixels = np.array(channels[channel].pixels)
    except MirageError:
        raise
    except Exception as err:  # OpenEXR raises plain RuntimeError / ValueError / its own errors
        raise FileFormatError(f"{where}: cannot decode the EXR image ({type(err).__name__}: {err})") from err
    if pixels.dtype != np.float16 or pixels.ndim != 2:
        raise FileFormatError(f"{where}: channel {channel!r} is {pixels.dtype} {pixels.shape}; expected float16 [H, W]")
    return pixels


def read_depth_zip(path, num_frames: int, image_hw) -> np.ndarray:
    """``depth.zip`` -> float16 [T, H, W] z-depth (0 / NaN / inf = invalid, kept as they are).

    Raises FileFormatError naming the zip and member for a member that does not decode, a
    missing or extra frame, a size other than ``image_hw`` or a negative depth.
    """
    path = os.fspath(path)
    H, W = check_hw(tuple(image_hw), "image_hw")
    out = np.empty((num_frames, H, W), np.float16)
    try:
        with zipfile.ZipFile(path) as zf:
            for i, info in enumerate(_frame_members(zf, path, "exr", num_frames)):
                where = f"{path} (member {info.filename!r})"
                z = decode_exr_depth(zf.read(info), where)
                if z.shape != (H, W):
                    raise FileFormatError(f"{where}: depth is {z.shape[0]}x{z.shape[1]}, the video is {H}x{W}")
                if np.any(z < 0):
                    raise FileFormatError(f"{where}: negative depth {float(z.min()):.4g} (z-depth must be >= 0)")
                out[i] = z
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise file_error(path, f"not a readable zip ({type(err).__name__}: {err})") from err
    return out


def read_mask_zip(path, num_frames: int, image_hw) -> np.ndarray:
    """``mask.zip`` -> bool [T, H, W], True where the PNG is > 0 (dynamic)."""
    from PIL import Image

    path = os.fspath(path)
    H, W = check_hw(tuple(image_hw), "image_hw")
    out = np.empty((num_frames, H, W), bool)
    try:
        with zipfile.ZipFile(path) as zf:
            for i, info in enumerate(_frame_members(zf, path, "png", num_frames)):
                where = f"{path} (member {info.filename!r})"
                try:
                    with Image.open(io.BytesIO(zf.read(info))) as im:
                        if im.format != "PNG":
                            raise FileFormatError(f"{where}: a {im.format} image, expected PNG")
                        m = np.asarray(im)
                except (OSError, SyntaxError) as err:
                    raise FileFormatError(f"{where}: cannot decode the PNG ({type(err).__name__}: {err})") from err
                if m.shape != (H, W):
                    raise FileFormatError(f"{where}: mask has shape {m.shape}, expected a single-channel {H}x{W} image")
                out[i] = m > 0
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise file_error(path, f"not a readable zip ({type(err).__name__}: {err})") from err
    return out


def read_indexed_npz(path, row_shape: tuple[int, ...], num_frames: int) -> np.ndarray:
    """A ViPE ``{inds [N], data [N, *row_shape]}`` npz -> float64 [num_frames, *row_shape], row i = frame i.

    ``inds`` must hold every frame 0..num_frames-1 exactly once (any order); pickles are never
    loaded; ``data`` must be finite in float32.
    """
    from mirage_jax.geometry.formats import read_npz_arrays

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise file_error(path, "not found")

    def fail(key, message):
        raise file_error(path, message, key=key)

    arrays = read_npz_arrays(path, fail)
    for key in ("inds", "data"):
        if key not in arrays:
            fail(key, f"missing (keys: {sorted(arrays)})")
    inds, data = arrays["inds"], arrays["data"]
    if inds.ndim != 1 or not np.issubdtype(inds.dtype, np.integer):
        fail("inds", f"expected integer [N], got {inds.dtype} {inds.shape}")
    if data.ndim != 1 + len(row_shape) or data.shape[1:] != tuple(row_shape) or data.shape[0] != inds.shape[0]:
        fail("data", f"expected [{inds.shape[0]}, {', '.join(map(str, row_shape))}] (one row per ind), got {data.shape}")
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
        fail("data", f"expected a numeric dtype, got {data.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.all(np.isfinite(data.astype(np.float32))):
            fail("data", "contains non-finite values (in float32)")
    values = inds.astype(np.int64)
    if len(np.unique(values)) != len(values):
        fail("inds", "repeats a frame index")
    missing = sorted(set(range(num_frames)) - set(values.tolist()))
    extra = sorted(set(values.tolist()) - set(range(num_frames)))
    if missing or extra:
        fail(
            "inds",
            f"must cover the video's frames 0..{num_frames - 1} exactly"
            + (f"; missing {_ranges(missing)}" if missing else "")
            + (f"; beyond the video {_ranges(extra)}" if extra else ""),
        )
    return np.asarray(data, np.float64)[np.argsort(values)]


def _read_caption(folder: str) -> str | None:
    for name in CAPTION_NAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            try:
                with open(p, encoding="utf-8") as f:
                    return f.read().strip()
            except UnicodeDecodeError as err:
                raise file_error(p, f"caption is not UTF-8 text ({err})") from err
    return None


def read_vipe_clip(folder, *, require_caption: bool = True) -> dict[str, Any]:
    """Reads and validates one clip folder (module docstring) -> a clip dict.

    Returns ``frames`` uint8 [T,H,W,3], ``depth`` float16 [T,H,W], ``dynamic_mask`` bool
    [T,H,W], ``intrinsics`` float32 [T,3,3] (pixels), ``cam2world`` float32 [T,4,4] (OpenCV),
    ``frame_indices`` int64 [T], ``mask_fraction`` float32 [T] (dynamic share of each frame),
    ``caption`` str, ``has_masks`` bool (False: no mask.zip, ``dynamic_mask`` all False).
    A missing caption raises unless ``require_caption=False`` (then it is "").
    """
    from mirage_jax.geometry.cameras import CameraError, check_pose

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise file_error(folder, "clip folder not found")
    frames = read_video(os.path.join(folder, VIDEO_NAME))
    T, H, W = frames.shape[:3]
    for name in (DEPTH_NAME, POSE_NAME, INTRINSICS_NAME):
        if not os.path.isfile(os.path.join(folder, name)):
            raise file_error(os.path.join(folder, name), f"missing (a ViPE clip folder holds {VIDEO_NAME}, {DEPTH_NAME}, {POSE_NAME}, {INTRINSICS_NAME})")
    depth = read_depth_zip(os.path.join(folder, DEPTH_NAME), T, (H, W))
    mask_path = os.path.join(folder, MASK_NAME)
    has_masks = os.path.isfile(mask_path)
    dynamic = read_mask_zip(mask_path, T, (H, W)) if has_masks else np.zeros((T, H, W), bool)
    pose_path = os.path.join(folder, POSE_NAME)
    c2w = read_indexed_npz(pose_path, (4, 4), T)
    try:
        c2w = check_pose(c2w, name="data")
    except CameraError as err:
        raise file_error(pose_path, str(err), key="data") from err
    intr_path = os.path.join(folder, INTRINSICS_NAME)
    fxfycxcy = read_indexed_npz(intr_path, (4,), T)
    if np.any(fxfycxcy[:, :2] <= 0):
        bad = int(np.argmax(np.any(fxfycxcy[:, :2] <= 0, axis=1)))
        raise file_error(intr_path, f"focal lengths must be positive; frame {bad} has fx, fy = {fxfycxcy[bad, :2]}", key="data")
    K = np.zeros((T, 3, 3), np.float32)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = fxfycxcy.T
    K[:, 2, 2] = 1.0
    caption = _read_caption(folder)
    if caption is None:
        if require_caption:
            raise file_error(folder, f"no caption ({' / '.join(CAPTION_NAMES)}) in the clip folder")
        caption = ""
    return {
        "frames": frames,
        "depth": depth,
        "dynamic_mask": dynamic,
        "intrinsics": K,
        "cam2world": c2w,
        "frame_indices": np.arange(T, dtype=np.int64),
        "mask_fraction": dynamic.reshape(T, -1).mean(axis=1).astype(np.float32),
        "caption": caption,
        "has_masks": bool(has_masks),
    }


def mask_rejection(mask_fraction, max_mask_fraction: float = MAX_MASK_FRACTION) -> tuple[int, float] | None:
    """``(frame, fraction)`` of the first frame whose dynamic share exceeds ``max_mask_fraction``, else None."""
    frac = np.asarray(mask_fraction, np.float64)
    over = np.nonzero(frac > max_mask_fraction)[0]
    return (int(over[0]), float(frac[over[0]])) if over.size else None


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def write_vipe_clip(folder, *, frames, depth, cam2world, intrinsics, dynamic_mask=None, caption: str | None = "",
                    fps: int = 16, lossless: bool = False) -> str:
    """Writes one clip folder in the ViPE layout -> the folder path.

    ``frames`` uint8 [T,H,W,3] (H, W even: H.264 with 4:2:0 chroma), ``depth`` [T,H,W] (stored as
    float16 EXR "Z", ZIP compression), ``cam2world`` [T,4,4], ``intrinsics`` [T,3,3] (pixels;
    stored as fx, fy, cx, cy), ``dynamic_mask`` bool [T,H,W] or None (no mask.zip),
    ``caption`` (None: no caption file). ``lossless``: H.264 at constant quality 0 in 4:4:4
    (frames round-trip up to the RGB <-> YUV conversion) instead of the default quality.
    """
    import imageio_ffmpeg
    import OpenEXR
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MirageError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    T, H, W = frames.shape[:3]
    depth = np.asarray(depth)
    cam2world = np.asarray(cam2world, np.float32)
    intrinsics = np.asarray(intrinsics, np.float32)
    for name, value, shape in (("depth", depth, (T, H, W)), ("cam2world", cam2world, (T, 4, 4)),
                               ("intrinsics", intrinsics, (T, 3, 3))):
        if value.shape != shape:
            raise MirageError(f"{name}: expected shape {shape}, got {value.shape}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    output_params = ["-crf", "0"] if lossless else None
    writer = imageio_ffmpeg.write_frames(
        os.path.join(folder, VIDEO_NAME), (W, H), fps=fps, codec="libx264", macro_block_size=1,
        pix_fmt_out="yuv444p" if lossless else "yuv420p", quality=None if lossless else 8,
        output_params=output_params, ffmpeg_log_level="error",
    )
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with zipfile.ZipFile(os.path.join(folder, DEPTH_NAME), "w") as zf, tempfile.TemporaryDirectory() as tmp:
        for i in range(T):
            path = os.path.join(tmp, f"{i:05d}.exr")
            with OpenEXR.File(header, {"Z": np.ascontiguousarray(depth[i], np.float16)}) as exr:
                exr.write(path)
            zf.write(path, f"{i:05d}.exr")
    if dynamic_mask is not None:
        masks = np.asarray(dynamic_mask, bool)
        if masks.shape != (T, H, W):
            raise MirageError(f"dynamic_mask: expected shape {(T, H, W)}, got {masks.shape}")
        with zipfile.ZipFile(os.path.join(folder, MASK_NAME), "w") as zf:
            for i in range(T):
                buf = io.BytesIO()
                Image.fromarray(masks[i].astype(np.uint8) * 255).save(buf, format="PNG")
                zf.writestr(f"{i:05d}.png", buf.getvalue())
    inds = np.arange(T, dtype=np.int64)
    np.savez(os.path.join(folder, POSE_NAME), inds=inds, data=cam2world)
    fxfycxcy = np.stack([intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]], -1)
    np.savez(os.path.join(folder, INTRINSICS_NAME), inds=inds, data=fxfycxcy.astype(np.float32))
    if caption is not None:
        with open(os.path.join(folder, CAPTION_NAMES[0]), "w", encoding="utf-8") as f:
            f.write(caption)
    return folder


# --------------------------------------------------------------------------------------------
# Clip folders as a random-access source, and the tfds builder
# --------------------------------------------------------------------------------------------


def find_clip_folders(root) -> list[str]:
    """Sorted folders under ``root`` (recursively) that hold a ``clip.mp4``."""
    root = epath.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"vipe_clips: source directory {root} does not exist")
    stack, found = [root], []
    while stack:
        d = stack.pop()
        for p in d.iterdir():
            if p.is_dir():
                stack.append(p)
            elif p.name == VIDEO_NAME:
                found.append(os.fspath(p.parent))
    return sorted(found)


@dataclasses.dataclass(eq=False, kw_only=True)
class VipeClipsConfig(tfds.core.BuilderConfig):
    """``image_hw=None`` keeps each clip's own size; otherwise frames are resized and
    centre-cropped (depth and masks nearest, intrinsics adjusted exactly). Clips whose dynamic
    mask covers more than ``max_mask_fraction`` of a frame are rejected; ``require_caption``
    makes a clip without a caption file an error (otherwise its caption is "")."""

    image_hw: tuple[int, int] | None = None
    max_mask_fraction: float = MAX_MASK_FRACTION
    require_caption: bool = True

    def __post_init__(self):
        if self.image_hw is not None:
            check_hw(tuple(self.image_hw), f"{self.name}.image_hw")
        if not 0.0 <= self.max_mask_fraction <= 1.0:
            raise MirageError(f"{self.name}.max_mask_fraction must be in [0, 1], got {self.max_mask_fraction}")


VIPE_CONFIGS = (
    VipeClipsConfig(name="native", description="Clips at their own resolution (the reference: 704 x 1280)."),
    VipeClipsConfig(name="tiny", description="64 x 64 (resized, centre-cropped), for tests.", image_hw=(64, 64)),
)


class RejectedClip(Exception):
    """A clip refused by rule, not an error: its dynamic mask covers more than the allowed share
    of a frame. Counted and listed by the builder and the preprocessing."""

    def __init__(self, scene_id: str, frame: int, fraction: float, limit: float):
        super().__init__(f"{scene_id}: dynamic mask covers {100 * fraction:.1f}% of frame {frame} (> {100 * limit:.0f}%)")
        self.scene_id, self.frame, self.fraction = scene_id, frame, fraction


def vipe_example(folder, config: VipeClipsConfig, *, scene_id: str) -> dict[str, Any]:
    """One clip folder -> a ``vipe_clips`` example (resized to ``config.image_hw`` when set).

    Raises :class:`RejectedClip` when the dynamic mask covers more than
    ``config.max_mask_fraction`` of a frame (measured at the source resolution).
    """
    clip = read_vipe_clip(folder, require_caption=config.require_caption)
    bad = mask_rejection(clip["mask_fraction"], config.max_mask_fraction)
    if bad is not None:
        raise RejectedClip(scene_id, bad[0], bad[1], config.max_mask_fraction)
    meta = {k: clip.pop(k) for k in ("caption", "has_masks", "frame_indices")}
    meta["max_mask_fraction"] = np.float32(clip.pop("mask_fraction").max())
    if config.image_hw is not None:
        clip = resize_crop_clip(clip, config.image_hw)
    clip.update(meta, scene_id=scene_id, source_dir=os.fspath(folder))
    return clip


class VipeClips(_ManualDirBuilder):
    """Clips in the reference's ViPE layout (module docstring), one example per clip folder.

    Features (T frames of H x W; T, H, W may differ between clips unless the config fixes
    ``image_hw``): ``frames`` uint8 [T,H,W,3], ``depth`` float16 [T,H,W] (z-depth; 0 / NaN /
    inf invalid), ``dynamic_mask`` bool [T,H,W], ``intrinsics`` float32 [T,3,3] (pixels of the
    stored frames), ``cam2world`` float32 [T,4,4] (OpenCV), ``frame_indices`` int64 [T],
    ``mask_fraction`` float32 [T] (at the source resolution), ``has_masks`` bool,
    ``scene_id`` (folder relative to the split directory), ``caption``, ``source_dir`` Text.
    Rejected clips (mask fraction) are listed in ``info.metadata["rejected"]``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(VIPE_CONFIGS)
    DEFAULT_CONFIG_NAME = "native"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put ViPE clip folders (clip.mp4, depth.zip, mask.zip, pose.npz, intrinsics.npz, clip.txt) "
        "under the manual directory (optionally in train/ validation/ test/), or pass source_dir=... "
        "to the builder."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: VipeClipsConfig = self.builder_config
        H, W = cfg.image_hw if cfg.image_hw is not None else (None, None)
        feats = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description="Clips in the reference's ViPE layout: RGB, z-depth, dynamic masks, cameras, captions.",
            features=clip_features(
                None,
                H,
                W,
                depth_dtype=np.float16,
                masks=("dynamic_mask",),
                per_frame={"frame_indices": np.int64},
                clip={
                    "max_mask_fraction": feats.Scalar(dtype=np.float32),
                    "has_masks": feats.Scalar(dtype=np.bool_),
                    "source_dir": feats.Text(),
                },
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        splits = _discover_splits(root, VIDEO_NAME, self.name, recursive=True)
        return {split: self._generate_examples(split, _split_root(root, split), files) for split, files in splits.items()}

    def _generate_examples(self, split, split_root, videos) -> Iterator[tuple[str, dict[str, Any]]]:
        from absl import logging

        cfg: VipeClipsConfig = self.builder_config
        rejected = []
        for video in videos:
            folder = video.parent
            scene_id = os.path.relpath(os.fspath(folder), os.fspath(split_root)).replace(os.sep, "/")
            try:
                yield scene_id, vipe_example(folder, cfg, scene_id=scene_id)
            except RejectedClip as r:
                rejected.append([scene_id, r.frame, round(r.fraction, 6)])
                logging.warning("vipe_clips: rejected %s", r)
        self.info.metadata.setdefault("rejected", {})[split] = rejected
        logging.info("vipe_clips/%s: %s: %d clips written, %d rejected", cfg.name, split, len(videos) - len(rejected), len(rejected))


__all__ = [
    "MAX_MASK_FRACTION",
    "RejectedClip",
    "VIPE_CONFIGS",
    "VipeClips",
    "VipeClipsConfig",
    "decode_exr_depth",
    "find_clip_folders",
    "mask_rejection",
    "read_depth_zip",
    "read_indexed_npz",
    "read_mask_zip",
    "read_video",
    "read_vipe_clip",
    "vipe_example",
    "write_vipe_clip",
]
