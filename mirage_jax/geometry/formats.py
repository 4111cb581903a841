"""Readers and writers for the camera / geometry files users bring (spec section 8).

Inside mirage_jax every pose is an OpenCV camera-to-world matrix [4, 4] (x right, y down,
z forward) and every intrinsics matrix is [3, 3] in pixels of the image it belongs to. All
conversions from other conventions happen here, at the edge:

=====================  ===================================  ==================================
format                 poses in the file                    intrinsics in the file
=====================  ===================================  ==================================
RealEstate10K .txt     OpenCV world-to-camera, 3x4 rows     fx, cx / width; fy, cy / height
Spatia w2c.txt         OpenCV world-to-camera, 3x4 or 4x4   intrinsics.txt, normalised as above
nerfstudio / DL3DV     OpenGL camera-to-world 4x4           fl_x, fl_y, cx, cy in pixels, w, h
transforms.json
WorldScore             Blender/OpenGL camera-to-world 4x4   one focal_length in pixels; the
camera_data.json                                            principal point is the image centre
geometry.npz           OpenCV camera-to-world (T, 4, 4)     pixels (T, 3, 3)
=====================  ===================================  ==================================

OpenGL/Blender camera-to-world matrices become OpenCV ones by right-multiplying
diag(1, -1, -1, 1) (the camera's y and z axes flip; the world frame is untouched).

Everything here is host-side NumPy. Arrays come back as float32 (poses, intrinsics, depth),
int64 (timestamps, indices), uint8 (frames) and bool (masks). Bad input raises
:class:`FormatError` (a :class:`~mirage_jax.errors.FileFormatError`) naming the file and,
where there is one, the line (text formats), the JSON field or the npz key; bad arguments to
writers raise :class:`~mirage_jax.geometry.cameras.CameraError` (an
:class:`~mirage_jax.errors.InputError`) naming the argument.

Values are checked in the dtype they are returned in (float32): a number finite in float64
but not in float32 (1e300) is refused, never returned as inf. Focal lengths read from a file
must give a field of view under 179 degrees (fx / W >= 1 / (2 tan 89.5 deg)); ``.npz`` members
are size-checked against their ``.npy`` header before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mirage_jax.errors import FileFormatError, MirageError, check_hw
from mirage_jax.geometry.cameras import OPENGL_TO_OPENCV, CameraError, check_intrinsics, check_pose, invert_pose

PathLike = str | os.PathLike

__all__ = [
    "FormatError",
    "GeometryNpz",
    "Re10kCameras",
    "denormalize_intrinsics",
    "normalize_intrinsics",
    "read_geometry_npz",
    "read_npz_arrays",
    "read_re10k",
    "read_spatia",
    "read_transforms_json",
    "read_worldscore_cameras",
    "write_geometry_npz",
    "write_re10k",
    "write_spatia",
    "write_transforms_json",
    "write_worldscore_cameras",
]

# Orthonormality tolerance for rotations read from files (max |R^T R - I|). Files written
# with 6+ decimals are far inside it; an unconverted scale or a shear is far outside.
_ROT_ATOL = 1e-4

# Smallest focal length accepted from a file, as a fraction of the image size: a field of view
# under 179 degrees (fx / W >= 1 / (2 tan(89.5 deg)) ~ 1 / 229). camera_angle_x near pi or a
# focal length of 1e-14 px is a broken file, not a camera.
_MIN_FOCAL_NORM = 0.5 / math.tan(math.radians(89.5))
# Largest image side accepted from a file (int32 pixel indices).
_MAX_SIDE = 2**31 - 1


class FormatError(FileFormatError):
    """A malformed camera / geometry file. The message starts with ``path[:line]``.

    Attributes: ``path`` (str), ``line`` (1-based line number or None), ``key`` (JSON field or
    npz key, or None).
    """

    def __init__(self, path: PathLike, message: str, *, line: int | None = None, key: str | None = None):
        self.path = str(path)
        self.line = line
        self.key = key
        where = self.path if line is None else f"{self.path}:{line}"
        if key is not None:
            where = f"{where}: {key}"
        super().__init__(f"{where}: {message}")


# ----------------------------------------------------------------------------------------------
# Small shared helpers.
# ----------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 9) -> str:
    """Shortest text that round-trips a float32 (9 significant digits) or more for float64."""
    return format(float(x), f".{digits}g")


def _float32(x, path: PathLike, what: str, *, line: int | None = None, key: str | None = None) -> np.ndarray:
    """``x`` as float32 (the dtype it is returned in), raising FormatError unless every value is
    finite there: 1e300 is finite in float64 but inf in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(x, np.float64).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise FormatError(path, f"{what}: values not finite in float32 (|x| > 3.4e38)", line=line, key=key)
    return out


def _check_focal_norm(fx_norm: float, fy_norm: float, path: PathLike, *, line=None, key=None) -> None:
    """Focal lengths relative to the image size must give a field of view under 179 degrees."""
    if not (fx_norm >= _MIN_FOCAL_NORM and fy_norm >= _MIN_FOCAL_NORM):
        raise FormatError(
            path,
            f"focal lengths fx/W={fx_norm:.3g}, fy/H={fy_norm:.3g} are below {_MIN_FOCAL_NORM:.4g} "
            "(focal lengths must be positive and give a field of view under 179 degrees)",
            line=line,
            key=key,
        )


def _rotation_defects(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-matrix max |R^T R - I| and determinant for R [N, 3, 3]."""
    R = np.asarray(R, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # huge entries: inf / nan, refused below
        err = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-1, -2))
        det = np.linalg.det(R)
    return np.where(np.isnan(err), np.inf, err), det


def _check_rotation_rows(R: np.ndarray, path: PathLike, lines: Sequence[int], what: str) -> None:
    """Raises FormatError naming the first line whose rotation block is not a proper rotation."""
    err, det = _rotation_defects(R)
    for i in range(len(err)):
        if err[i] > _ROT_ATOL:
            raise FormatError(
                path,
                f"{what}: rotation block is not orthonormal (max |R^T R - I| = {err[i]:.3g})",
                line=lines[i],
            )
        if det[i] < 0:
            raise FormatError(
                path, f"{what}: rotation block has determinant {det[i]:.3g} (a reflection)", line=lines[i]
            )


def _as_pose_argument(c2w, name: str) -> np.ndarray:
    """Validates a [T, 4, 4] (or [T, 3, 4]) camera-to-world argument; returns float64 [T, 4, 4]."""
    P = np.asarray(c2w)
    if P.ndim != 3:
        raise CameraError(f"{name}: expected shape [T, 4, 4], got {P.shape}")
    return check_pose(P, name, atol=_ROT_ATOL).astype(np.float64)


def _as_intrinsics_argument(K, name: str, num_frames: int | None = None) -> np.ndarray:
    """Validates [T, 3, 3] or [3, 3] (broadcast to T) pixel intrinsics; returns float64 [T, 3, 3]."""
    K = check_intrinsics(K, name).astype(np.float64)
    if K.ndim == 2:
        if num_frames is None:
            raise CameraError(f"{name}: expected shape [T, 3, 3], got {K.shape}")
        K = np.broadcast_to(K, (num_frames, 3, 3)).copy()
    if K.ndim != 3:
        raise CameraError(f"{name}: expected shape [T, 3, 3] or [3, 3], got {K.shape}")
    if num_frames is not None and K.shape[0] != num_frames:
        raise CameraError(f"{name}: has {K.shape[0]} frames but the poses have {num_frames}")
    return K


def normalize_intrinsics(K, image_hw) -> np.ndarray:
    """Pixel intrinsics [..., 3, 3] -> normalised (fx/W, fy/H, cx/W, cy/H) float32 [..., 4].

    Raises CameraError for non-zero skew (it has no place in the normalised 4-vector).
    """
    H, W = check_hw(image_hw, "image_hw", CameraError)
    K = check_intrinsics(K, "intrinsics").astype(np.float64)
    if np.any(np.abs(K[..., 0, 1]) > 1e-9 * np.maximum(1.0, np.abs(K[..., 0, 0]))):
        raise CameraError("intrinsics: non-zero skew K[0, 1] cannot be written as normalised fx fy cx cy")
    out = np.stack([K[..., 0, 0] / W, K[..., 1, 1] / H, K[..., 0, 2] / W, K[..., 1, 2] / H], axis=-1)
    return out.astype(np.float32)


def denormalize_intrinsics(intrinsics_norm, image_hw) -> np.ndarray:
    """Normalised (fx/W, fy/H, cx/W, cy/H) [..., 4] -> pixel intrinsics float32 [..., 3, 3]."""
    H, W = check_hw(image_hw, "image_hw", CameraError)
    n = np.asarray(intrinsics_norm, np.float64)
    if n.ndim < 1 or n.shape[-1] != 4:
        raise CameraError(f"intrinsics_norm: expected shape [..., 4], got {n.shape}")
    K = np.zeros(n.shape[:-1] + (3, 3), np.float64)
    K[..., 0, 0] = n[..., 0] * W
    K[..., 1, 1] = n[..., 1] * H
    K[..., 0, 2] = n[..., 2] * W
    K[..., 1, 2] = n[..., 3] * H
    K[..., 2, 2] = 1.0
    return check_intrinsics(K, "intrinsics_norm")


def _check_norm_intrinsics_argument(n, name: str, num_frames: int | None) -> np.ndarray:
    """Validates normalised intrinsics [T, 4] (or [4], broadcast); returns float64 [T, 4]."""
    n = np.asarray(n)
    if not np.issubdtype(n.dtype, np.number):
        raise CameraError(f"{name}: expected a numeric dtype, got {n.dtype}")
    n = n.astype(np.float64)
    if n.ndim == 1 and n.shape == (4,) and num_frames is not None:
        n = np.broadcast_to(n, (num_frames, 4)).copy()
    if n.ndim != 2 or n.shape[1] != 4:
        raise CameraError(f"{name}: expected shape [T, 4] (fx fy cx cy normalised), got {n.shape}")
    if num_frames is not None and n.shape[0] != num_frames:
        raise CameraError(f"{name}: has {n.shape[0]} frames but the poses have {num_frames}")
    if not np.all(np.isfinite(n)):
        raise CameraError(f"{name}: contains non-finite values")
    if np.any(n[:, :2] <= 0):
        raise CameraError(f"{name}: focal lengths (columns 0, 1) must be positive")
    return n


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"not UTF-8 text ({e})") from None


def _parse_numbers(tokens: Sequence[str], path: PathLike, line: int, first_column: int = 1) -> np.ndarray:
    """Parses number tokens; errors name the 1-based column (``first_column`` for tokens[0])."""
    out = np.empty(len(tokens), np.float64)
    for i, tok in enumerate(tokens):
        try:
            out[i] = float(tok)
        except ValueError:
            raise FormatError(path, f"column {i + first_column}: not a number: {tok!r}", line=line) from None
    if not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise FormatError(path, f"column {bad + first_column}: non-finite value {tokens[bad]!r}", line=line)
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# RealEstate10K camera txt.
# ----------------------------------------------------------------------------------------------

_RE10K_COLUMNS = 19  # timestamp, fx fy cx cy, 0 0, 12 entries of a row-major 3x4 world-to-camera


@dataclasses.dataclass(frozen=True, eq=False)
class Re10kCameras:
    """The cameras of one RealEstate10K clip.

    Attributes:
      url: str, the YouTube URL on line 1.
      timestamps: int64 [T], microseconds.
      intrinsics_norm: float32 [T, 4], (fx, fy, cx, cy) with fx, cx divided by the image width
        and fy, cy by the image height.
      cam2world: float32 [T, 4, 4], OpenCV camera-to-world (the file holds world-to-camera).
    """

    url: str
    timestamps: np.ndarray
    intrinsics_norm: np.ndarray
    cam2world: np.ndarray

    def __post_init__(self):
        if not isinstance(self.url, str) or any(c.isspace() for c in self.url):
            raise CameraError(f"url: expected a string without whitespace, got {self.url!r}")
        ts = np.asarray(self.timestamps)
        if ts.ndim != 1 or not (np.issubdtype(ts.dtype, np.integer)):
            raise CameraError(f"timestamps: expected an integer array [T], got {ts.dtype} {ts.shape}")
        T = ts.shape[0]
        if T == 0:
            raise CameraError("timestamps: zero frames")
        c2w = check_pose(self.cam2world, "cam2world", atol=_ROT_ATOL)
        if c2w.shape != (T, 4, 4):
            raise CameraError(f"cam2world: expected shape ({T}, 4, 4) to match timestamps, got {c2w.shape}")
        n = _check_norm_intrinsics_argument(self.intrinsics_norm, "intrinsics_norm", T).astype(np.float32)
        object.__setattr__(self, "timestamps", ts.astype(np.int64))
        object.__setattr__(self, "intrinsics_norm", n)
        object.__setattr__(self, "cam2world", c2w)

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def intrinsics(self, image_hw) -> np.ndarray:
        """Pixel intrinsics float32 [T, 3, 3] for frames of size image_hw = (H, W)."""
        return denormalize_intrinsics(self.intrinsics_norm, image_hw)

    @classmethod
    def from_pixels(cls, url: str, timestamps, intrinsics, image_hw, cam2world) -> "Re10kCameras":
        """Builds from pixel intrinsics [T, 3, 3] of images of size image_hw = (H, W)."""
        return cls(url, np.asarray(timestamps), normalize_intrinsics(intrinsics, image_hw), cam2world)


def read_re10k(path: PathLike) -> Re10kCameras:
    """Reads a RealEstate10K camera file.

    Format: line 1 the video URL; then one line per frame with 19 whitespace-separated columns:
    ``timestamp fx fy cx cy 0 0`` followed by the row-major 3x4 OpenCV world-to-camera matrix.
    fx, cx are normalised by the image width and fy, cy by the height. Blank lines are skipped.
    The two zero columns must be zero (they are not documented; refusing non-zero values keeps
    anything from being dropped silently).

    Returns:
      Re10kCameras with cam2world = inverse of the file's world-to-camera (OpenCV).
    Raises:
      FormatError naming the file and line: wrong column count, a token that is not a number, a
      non-integer timestamp, non-finite values, non-positive focal lengths, non-zero columns 6-7,
      a rotation block that is not a proper rotation, a data row on line 1, or no rows at all.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    if not lines:
        raise FormatError(path, "empty file; expected the video URL on line 1")
    url = lines[0].strip()
    first = url.split()
    if len(first) == _RE10K_COLUMNS:
        try:
            [float(t) for t in first]
        except ValueError:
            pass
        else:
            raise FormatError(path, "line 1 looks like a camera row; the first line must be the video URL", line=1)
    if len(first) > 1:
        raise FormatError(path, f"line 1 must be a single URL, got {len(first)} fields", line=1)

    timestamps, values, line_numbers = [], [], []
    for lineno, raw in enumerate(lines[1:], start=2):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != _RE10K_COLUMNS:
            raise FormatError(
                path,
                f"expected {_RE10K_COLUMNS} columns (timestamp fx fy cx cy 0 0 and a row-major 3x4 "
                f"world-to-camera matrix), got {len(tokens)}",
                line=lineno,
            )
        try:
            ts = int(tokens[0])
        except ValueError:
            raise FormatError(path, f"column 1: timestamp is not an integer: {tokens[0]!r}", line=lineno) from None
        if not -(2**63) <= ts < 2**63:
            raise FormatError(path, f"column 1: timestamp {ts} does not fit in int64", line=lineno)
        v = _parse_numbers(tokens[1:], path, lineno, first_column=2)
        n32 = _float32(v[:4], path, "intrinsics (columns 2-5)", line=lineno)
        _check_focal_norm(float(n32[0]), float(n32[1]), path, line=lineno)
        if v[4] != 0.0 or v[5] != 0.0:
            raise FormatError(path, f"columns 6 and 7 must be 0, got {tokens[5]} {tokens[6]}", line=lineno)
        timestamps.append(ts)
        values.append(v)
        line_numbers.append(lineno)
    if not values:
        raise FormatError(path, "no camera rows after the URL line")

    v = np.stack(values)
    w2c = np.zeros((len(v), 4, 4), np.float64)
    w2c[:, :3, :] = v[:, 6:].reshape(-1, 3, 4)
    w2c[:, 3, 3] = 1.0
    _check_rotation_rows(w2c[:, :3, :3], path, line_numbers, "world-to-camera")
    c2w = invert_pose(w2c)
    for i, lineno in enumerate(line_numbers):
        _float32(w2c[i], path, "world-to-camera matrix", line=lineno)
        _float32(c2w[i], path, "camera-to-world (inverse of the row's matrix)", line=lineno)
    return Re10kCameras(
        url=url,
        timestamps=np.asarray(timestamps, np.int64),
        intrinsics_norm=v[:, :4].astype(np.float32),
        cam2world=c2w.astype(np.float32),
    )


def write_re10k(path: PathLike, cams: Re10kCameras) -> None:
    """Writes a RealEstate10K camera file (see :func:`read_re10k` for the format)."""
    if not isinstance(cams, Re10kCameras):
        raise CameraError(f"cams: expected Re10kCameras, got {type(cams).__name__}")
    w2c = invert_pose(cams.cam2world.astype(np.float64))
    rows = [cams.url]
    for ts, n, m in zip(cams.timestamps, cams.intrinsics_norm, w2c):
        fields = [str(int(ts))] + [_fmt(x) for x in n] + ["0", "0"] + [_fmt(x, 12) for x in m[:3].reshape(-1)]
        rows.append(" ".join(fields))
    _write_text_atomic(Path(path), "\n".join(rows) + "\n")


# ----------------------------------------------------------------------------------------------
# Spatia-style w2c.txt + intrinsics.txt.
# ----------------------------------------------------------------------------------------------

_SPLIT = re.compile(r"[\s,\[\]]+")


def _flat_tokens(line: str) -> list[str]:
    return [t for t in _SPLIT.split(line) if t]


def _spatia_paths(directory_or_paths, w2c_name: str, intrinsics_name: str) -> tuple[Path, Path]:
    if isinstance(directory_or_paths, (tuple, list)):
        if len(directory_or_paths) != 2:
            raise CameraError(
                f"directory_or_paths: expected a directory or (w2c_path, intrinsics_path), got {directory_or_paths!r}"
            )
        return Path(directory_or_paths[0]), Path(directory_or_paths[1])
    d = Path(directory_or_paths)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory (expected one holding {w2c_name} and {intrinsics_name})")
    return d / w2c_name, d / intrinsics_name


def read_spatia(
    directory_or_paths, *, w2c_name: str = "w2c.txt", intrinsics_name: str = "intrinsics.txt"
) -> tuple[np.ndarray, np.ndarray]:
    """Reads Spatia-style cameras: ``w2c.txt`` and ``intrinsics.txt``.

    ``w2c.txt`` holds one OpenCV world-to-camera matrix per non-blank line, 3x4 or 4x4, either as
    a JSON nested list (``[[r00, r01, r02, t0], ...]``, what Spatia writes) or as 12 / 16 plain
    numbers in row-major order (whitespace or comma separated). ``intrinsics.txt`` holds
    normalised ``fx fy cx cy`` (fx, cx / width; fy, cy / height), optionally in brackets: either
    one line per frame, or a single line, which then applies to every frame (Spatia's own files
    hold a single line). Any other line count is an error.

    Args:
      directory_or_paths: a directory holding both files, or (w2c_path, intrinsics_path).
    Returns:
      (intrinsics_norm float32 [T, 4], cam2world float32 [T, 4, 4] OpenCV).
    Raises:
      FormatError naming the file and line.
    """
    w2c_path, intr_path = _spatia_paths(directory_or_paths, w2c_name, intrinsics_name)
    mats, w2c_lines = [], []
    for lineno, raw in enumerate(_read_text(w2c_path).splitlines(), start=1):
        if not raw.strip():
            continue
        tokens = _flat_tokens(raw)
        if len(tokens) not in (12, 16):
            raise FormatError(
                w2c_path, f"expected a 3x4 or 4x4 matrix (12 or 16 numbers), got {len(tokens)} numbers", line=lineno
            )
        v = _parse_numbers(tokens, w2c_path, lineno)
        m = np.eye(4)
        m[: len(v) // 4] = v.reshape(-1, 4)
        if len(v) == 16 and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
            raise FormatError(w2c_path, f"bottom row must be 0 0 0 1, got {m[3].tolist()}", line=lineno)
        _float32(m, w2c_path, "world-to-camera matrix", line=lineno)
        mats.append(m)
        w2c_lines.append(lineno)
    if not mats:
        raise FormatError(w2c_path, "no matrices")
    w2c = np.stack(mats)
    _check_rotation_rows(w2c[:, :3, :3], w2c_path, w2c_lines, "world-to-camera")
    c2w = invert_pose(w2c)
    for i, lineno in enumerate(w2c_lines):
        _float32(c2w[i], w2c_path, "camera-to-world (inverse of the line's matrix)", line=lineno)

    rows, intr_lines = [], []
    for lineno, raw in enumerate(_read_text(intr_path).splitlines(), start=1):
        if not raw.strip():
            continue
        tokens = _flat_tokens(raw)
        if len(tokens) != 4:
            raise FormatError(
                intr_path, f"expected 4 numbers (fx fy cx cy, normalised), got {len(tokens)}", line=lineno
            )
        v = _parse_numbers(tokens, intr_path, lineno)
        v32 = _float32(v, intr_path, "intrinsics", line=lineno)
        _check_focal_norm(float(v32[0]), float(v32[1]), intr_path, line=lineno)
        rows.append(v)
        intr_lines.append(lineno)
    T = len(mats)
    if len(rows) == 1:
        intr = np.broadcast_to(rows[0], (T, 4))
    elif len(rows) == T:
        intr = np.stack(rows)
    else:
        raise FormatError(
            intr_path,
            f"has {len(rows)} intrinsics lines but {w2c_path.name} has {T} matrices "
            "(expected one line shared by all frames, or one per frame)",
        )
    return intr.astype(np.float32), c2w.astype(np.float32)


def write_spatia(
    directory: PathLike,
    intrinsics_norm,
    cam2world,
    *,
    w2c_rows: int = 4,
    w2c_name: str = "w2c.txt",
    intrinsics_name: str = "intrinsics.txt",
) -> tuple[Path, Path]:
    """Writes Spatia-style ``w2c.txt`` + ``intrinsics.txt`` into ``directory``.

    Args:
      intrinsics_norm: float [T, 4] or [4], normalised fx fy cx cy. When every frame has the
        same intrinsics a single line is written (what Spatia's own reader expects); otherwise
        one line per frame.
      cam2world: float [T, 4, 4] OpenCV camera-to-world; written as world-to-camera JSON rows.
      w2c_rows: 4 (4x4 matrices, Spatia's default) or 3 (3x4).
    Returns:
      (w2c_path, intrinsics_path).
    """
    if w2c_rows not in (3, 4):
        raise CameraError(f"w2c_rows: expected 3 or 4, got {w2c_rows!r}")
    c2w = _as_pose_argument(cam2world, "cam2world")
    intr = _check_norm_intrinsics_argument(intrinsics_norm, "intrinsics_norm", c2w.shape[0])
    w2c = invert_pose(c2w)
    d = Path(directory)
    w2c_lines = []
    for m in w2c:
        rows = ", ".join("[" + ", ".join(_fmt(x, 12) for x in r) + "]" for r in m[:w2c_rows])
        w2c_lines.append(f"[{rows}]")
    shared = bool(np.all(intr == intr[:1]))
    intr_rows = intr[:1] if shared else intr
    intr_lines = [" ".join(_fmt(x) for x in r) for r in intr_rows]
    w2c_path, intr_path = d / w2c_name, d / intrinsics_name
    _write_text_atomic(w2c_path, "\n".join(w2c_lines) + "\n")
    _write_text_atomic(intr_path, "\n".join(intr_lines) + "\n")
    return w2c_path, intr_path


# ----------------------------------------------------------------------------------------------
# nerfstudio / DL3DV / instant-ngp transforms.json.
# ----------------------------------------------------------------------------------------------

_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise FormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


def _json_number(value, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(path, f"expected a number, got {value!r}", key=key)
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x):
        raise FormatError(path, f"non-finite value {value!r}", key=key)
    return x


def _json_numbers_only(value) -> bool:
    """True if ``value`` is a number or nested lists of numbers (no bools, strings, nulls)."""
    if isinstance(value, list):
        return all(_json_numbers_only(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_matrix(value, path: Path, key: str, shapes=((4, 4), (3, 4))) -> np.ndarray:
    if not _json_numbers_only(value):
        raise FormatError(path, "expected a numeric matrix (nested lists of numbers)", key=key)
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise FormatError(path, "expected a numeric matrix (nested lists)", key=key) from None
    if m.shape not in shapes:
        raise FormatError(path, f"expected a matrix of shape {' or '.join(map(str, shapes))}, got {m.shape}", key=key)
    _float32(m, path, "matrix", key=key)
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    elif not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise FormatError(path, f"bottom row must be [0, 0, 0, 1], got {m[3].tolist()}", key=key)
    err, det = _rotation_defects(m[None, :3, :3])
    if err[0] > _ROT_ATOL:
        raise FormatError(path, f"rotation block is not orthonormal (max |R^T R - I| = {err[0]:.3g})", key=key)
    if det[0] < 0:
        raise FormatError(path, f"rotation block has determinant {det[0]:.3g} (a reflection)", key=key)
    return m


def read_transforms_json(path: PathLike, image_hw=None) -> dict:
    """Reads a nerfstudio / DL3DV (or instant-ngp / NeRF-synthetic) ``transforms.json``.

    Fields used: ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` at the top level, each of which a
    frame may override (per-frame intrinsics); ``frames[i].transform_matrix`` (OpenGL
    camera-to-world, 4x4 or 3x4) and ``frames[i].file_path``. Conventions of the older formats
    that are filled in (documented, never guessed): ``camera_angle_x`` / ``camera_angle_y``
    give fl = w / (2 tan(angle / 2)); a missing ``fl_y`` equals ``fl_x`` (square pixels); missing
    ``cx``, ``cy`` are w / 2, h / 2; missing ``w``, ``h`` come from ``image_hw`` or raise.
    Frames stay in file order.

    Returns a dict:
      cam2world: float32 [T, 4, 4] OpenCV camera-to-world (the file's matrices times
        diag(1, -1, -1, 1)); in the file's world frame (``applied_transform`` is not undone).
      intrinsics: float32 [T, 3, 3] pixels.
      image_hw: (H, W) when every frame has the same size, else None.
      image_hw_per_frame: int64 [T, 2].
      file_paths: list[str | None] (None where a frame has no file_path).
      camera_model: str or None.
      distortion: dict name -> float32 [T] of the distortion coefficients present in the file
        (k1..k4, p1, p2), never applied; an empty dict when the file holds none.
      applied_transform: float32 [4, 4] or None (nerfstudio's world re-orientation, as stored).
    Raises:
      FormatError naming the file and the field (for example ``frames[3].transform_matrix``).
    """
    path = Path(path)
    meta = _load_json(path)
    if not isinstance(meta, dict):
        raise FormatError(path, f"expected a JSON object at the top level, got {type(meta).__name__}")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FormatError(path, "expected a non-empty list", key="frames")
    camera_model = meta.get("camera_model")
    if camera_model is not None and camera_model not in _PINHOLE_MODELS:
        raise FormatError(
            path,
            f"unsupported camera model {camera_model!r} (pinhole models only: {_PINHOLE_MODELS})",
            key="camera_model",
        )
    default_hw = None if image_hw is None else check_hw(image_hw, "image_hw", CameraError)

    c2w, Ks, hws, file_paths = [], [], [], []
    distortion: dict[str, list[float]] = {}
    for i, frame in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(frame, dict):
            raise FormatError(path, f"expected an object, got {type(frame).__name__}", key=where)

        def field(name, _frame=frame, _where=where):
            if name in _frame:
                return _json_number(_frame[name], path, f"{_where}.{name}")
            if name in meta:
                return _json_number(meta[name], path, name)
            return None

        w, h = field("w"), field("h")
        if w is None or h is None:
            if default_hw is None:
                raise FormatError(path, "no image size (w, h) in the file; pass image_hw=(H, W)", key=where)
            h, w = (h if h is not None else default_hw[0]), (w if w is not None else default_hw[1])
        if not (0 < w <= _MAX_SIDE and 0 < h <= _MAX_SIDE) or w != int(w) or h != int(h):
            raise FormatError(
                path, f"image size must be positive integers below 2**31, got w={w}, h={h}", key=where
            )

        def from_angle(name, size):
            angle = field(name)
            if angle is None:
                return None
            if not 0 < angle < math.pi:
                raise FormatError(path, f"{name} must be a field of view in (0, pi) radians, got {angle}", key=where)
            return 0.5 * size / math.tan(0.5 * angle)

        fx, fy = field("fl_x"), field("fl_y")
        if fx is None:
            fx = from_angle("camera_angle_x", w)
            if fx is None:
                raise FormatError(path, "no focal length (fl_x or camera_angle_x)", key=where)
        if fy is None:
            fy = from_angle("camera_angle_y", h)
            fy = fx if fy is None else fy
        cx, cy = field("cx"), field("cy")
        cx = 0.5 * w if cx is None else cx
        cy = 0.5 * h if cy is None else cy
        k32 = _float32([fx, fy, cx, cy], path, "intrinsics (fl_x, fl_y, cx, cy)", key=where)
        _check_focal_norm(float(k32[0]) / w, float(k32[1]) / h, path, key=where)
        Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        hws.append((int(h), int(w)))
        for k in _DISTORTION_KEYS:
            d = field(k)
            if d is not None:
                _float32(d, path, f"distortion {k}", key=where)
                distortion.setdefault(k, [0.0] * i).append(d)
        for k in distortion:
            if len(distortion[k]) < i + 1:
                distortion[k].append(0.0)
        if "transform_matrix" not in frame:
            raise FormatError(path, "missing", key=f"{where}.transform_matrix")
        c2w.append(_json_matrix(frame["transform_matrix"], path, f"{where}.transform_matrix"))
        fp = frame.get("file_path")
        if fp is not None and not isinstance(fp, str):
            raise FormatError(path, f"expected a string, got {fp!r}", key=f"{where}.file_path")
        file_paths.append(fp)

    applied = meta.get("applied_transform")
    if applied is not None:
        applied = _json_matrix(applied, path, "applied_transform").astype(np.float32)
    hw_arr = np.asarray(hws, np.int64)
    uniform = bool(np.all(hw_arr == hw_arr[:1]))
    return {
        "cam2world": (np.stack(c2w) @ OPENGL_TO_OPENCV.astype(np.float64)).astype(np.float32),
        "intrinsics": np.asarray(Ks, np.float32),
        "image_hw": tuple(int(v) for v in hw_arr[0]) if uniform else None,
        "image_hw_per_frame": hw_arr,
        "file_paths": file_paths,
        "camera_model": camera_model,
        "distortion": {k: np.asarray(v, np.float32) for k, v in distortion.items()},
        "applied_transform": applied,
    }


def write_transforms_json(path: PathLike, cam2world, intrinsics, image_hw, file_paths=None) -> None:
    """Writes a nerfstudio ``transforms.json`` (camera_model OPENCV, zero distortion).

    Args:
      cam2world: float [T, 4, 4] OpenCV camera-to-world; stored as OpenGL ``transform_matrix``.
      intrinsics: float [T, 3, 3] or [3, 3] pixels (no skew). Shared intrinsics go to the top
        level (fl_x, fl_y, cx, cy); differing ones are written per frame.
      image_hw: (H, W) of every frame, stored as h, w.
      file_paths: list of T strings; default ``images/frame_00001.png``, ... (nerfstudio naming).
    """
    c2w = _as_pose_argument(cam2world, "cam2world")
    T = c2w.shape[0]
    K = _as_intrinsics_argument(intrinsics, "intrinsics", T)
    H, W = check_hw(image_hw, "image_hw", CameraError)
    if np.any(np.abs(K[:, 0, 1]) > 1e-9 * np.abs(K[:, 0, 0])):
        raise CameraError("intrinsics: non-zero skew K[0, 1] cannot be stored in transforms.json")
    if file_paths is None:
        file_paths = [f"images/frame_{i + 1:05d}.png" for i in range(T)]
    file_paths = list(file_paths)
    if len(file_paths) != T or not all(isinstance(p, str) for p in file_paths):
        raise CameraError(f"file_paths: expected {T} strings, got {len(file_paths)} items")
    gl = c2w @ OPENGL_TO_OPENCV.astype(np.float64)
    intr = np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], axis=-1)
    shared = bool(np.all(intr == intr[:1]))
    names = ("fl_x", "fl_y", "cx", "cy")
    meta: dict[str, Any] = {"camera_model": "OPENCV", "w": W, "h": H}
    if shared:
        meta.update({n: float(v) for n, v in zip(names, intr[0])})
    meta.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    frames = []
    for i in range(T):
        fr: dict[str, Any] = {"file_path": file_paths[i], "transform_matrix": gl[i].tolist()}
        if not shared:
            fr.update({n: float(v) for n, v in zip(names, intr[i])})
        frames.append(fr)
    meta["frames"] = frames
    _write_text_atomic(Path(path), json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# WorldScore camera_data.json.
# ----------------------------------------------------------------------------------------------
# WorldScore's camera generator (worldscore/benchmark/helpers/camera_generator.py,
# CameraGen.save_cameras) writes {"focal_length": <pixels, default 500>, "scale": <camera_speed>,
# "cameras": [keyframe c2w 4x4 ...], "cameras_interp": [per-frame c2w 4x4 ...]}. The matrices are
# Blender/OpenGL camera-to-world (its PyTorch3D w2c left-multiplied by diag(-1, 1, -1, 1) and
# inverted); the evaluator reads "cameras_interp" (one per generated frame) and "scale". The image
# size is not stored: it is the generator's configured resolution, and consumers put the
# principal point at the image centre. We use (W / 2, H / 2). Our writer also stores "image_hw"
# ([H, W], an extra key WorldScore ignores) so our reader can rebuild K without being told.


def read_worldscore_cameras(path: PathLike, image_hw=None) -> dict:
    """Reads a WorldScore ``camera_data.json``.

    Args:
      image_hw: (H, W) of the generated frames; needed unless the file has our ``image_hw`` key
        (if both are given they must agree).
    Returns a dict:
      cam2world: float32 [T, 4, 4] OpenCV camera-to-world from ``cameras_interp``.
      intrinsics: float32 [T, 3, 3] pixels: fx = fy = focal_length, (cx, cy) = (W / 2, H / 2).
      keyframes_cam2world: float32 [K, 4, 4] OpenCV from ``cameras`` (or None if absent).
      focal_length: float (pixels); scale: float (WorldScore's camera_speed, 1.0 if absent);
      image_hw: (H, W).
    Raises:
      FormatError naming the file and the field.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise FormatError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    if "cameras_interp" not in data:
        raise FormatError(path, "missing", key="cameras_interp")
    if "focal_length" not in data:
        raise FormatError(
            path, "missing (WorldScore's own default is 500 px; nothing is assumed here)", key="focal_length"
        )
    focal = _json_number(data["focal_length"], path, "focal_length")
    _float32(focal, path, "focal length", key="focal_length")
    if focal <= 0:
        raise FormatError(path, f"must be positive, got {focal}", key="focal_length")
    scale = _json_number(data.get("scale", 1.0), path, "scale")

    file_hw = None
    if "image_hw" in data:
        v = data["image_hw"]
        if (
            not isinstance(v, list)
            or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= _MAX_SIDE for x in v)
        ):
            raise FormatError(path, f"expected [H, W] positive integers below 2**31, got {v!r}", key="image_hw")
        file_hw = (v[0], v[1])
    if image_hw is not None:
        hw = check_hw(image_hw, "image_hw", CameraError)
        if file_hw is not None and file_hw != hw:
            raise FormatError(path, f"file says {list(file_hw)} but image_hw={hw} was passed", key="image_hw")
    elif file_hw is not None:
        hw = file_hw
    else:
        raise FormatError(path, "the file does not store the image size; pass image_hw=(H, W)")

    def matrices(key):
        v = data[key]
        if not isinstance(v, list) or not v:
            raise FormatError(path, "expected a non-empty list of 4x4 matrices", key=key)
        mats = np.stack([_json_matrix(m, path, f"{key}[{i}]", shapes=((4, 4),)) for i, m in enumerate(v)])
        return (mats @ OPENGL_TO_OPENCV.astype(np.float64)).astype(np.float32)

    c2w = matrices("cameras_interp")
    keyframes = matrices("cameras") if "cameras" in data else None
    H, W = hw
    _check_focal_norm(focal / W, focal / H, path, key="focal_length")
    K = np.array([[focal, 0.0, W / 2.0], [0.0, focal, H / 2.0], [0.0, 0.0, 1.0]], np.float32)
    return {
        "cam2world": c2w,
        "intrinsics": np.broadcast_to(K, (c2w.shape[0], 3, 3)).copy(),
        "keyframes_cam2world": keyframes,
        "focal_length": focal,
        "scale": scale,
        "image_hw": hw,
    }


def write_worldscore_cameras(
    path: PathLike,
    cam2world,
    intrinsics,
    image_hw,
    *,
    keyframe_indices: Sequence[int] | None = None,
    scale: float = 1.0,
    atol_px: float = 1e-3,
) -> None:
    """Writes a WorldScore ``camera_data.json`` (Blender/OpenGL camera-to-world, see above).

    WorldScore stores one focal length and no principal point, so ``intrinsics`` must share one
    focal length (fx = fy in every frame) with the principal point at (W / 2, H / 2), within
    ``atol_px`` pixels; anything else raises CameraError rather than being dropped.

    Args:
      cam2world: float [T, 4, 4] OpenCV camera-to-world (-> ``cameras_interp``).
      intrinsics: float [T, 3, 3] or [3, 3] pixels.
      image_hw: (H, W); stored as our extra ``image_hw`` key.
      keyframe_indices: frames stored as the keyframe list ``cameras``; default [0, T - 1].
      scale: WorldScore's ``scale`` (its camera_speed).
    """
    c2w = _as_pose_argument(cam2world, "cam2world")
    T = c2w.shape[0]
    K = _as_intrinsics_argument(intrinsics, "intrinsics", T)
    H, W = check_hw(image_hw, "image_hw", CameraError)
    f = float(K[0, 0, 0])
    if not (
        np.allclose(K[:, 0, 0], f, rtol=0, atol=atol_px)
        and np.allclose(K[:, 1, 1], f, rtol=0, atol=atol_px)
        and np.allclose(K[:, 0, 1], 0.0, atol=atol_px)
    ):
        raise CameraError(
            "intrinsics: WorldScore stores one focal length; every frame needs fx = fy = the same value"
        )
    centred = np.allclose(K[:, 0, 2], W / 2.0, rtol=0, atol=atol_px) and np.allclose(
        K[:, 1, 2], H / 2.0, rtol=0, atol=atol_px
    )
    if not centred:
        raise CameraError(
            f"intrinsics: WorldScore has no principal point; it must be the image centre ({W / 2}, {H / 2}), "
            f"got cx={K[0, 0, 2]}, cy={K[0, 1, 2]}"
        )
    if not math.isfinite(scale):
        raise CameraError(f"scale: must be finite, got {scale}")
    if keyframe_indices is None:
        keyframe_indices = [0, T - 1] if T > 1 else [0]
    idx = np.asarray(keyframe_indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or np.any(idx < 0) or np.any(idx >= T):
        raise CameraError(f"keyframe_indices: expected integer indices in [0, {T}), got {keyframe_indices!r}")
    gl = c2w @ OPENGL_TO_OPENCV.astype(np.float64)
    data = {
        "focal_length": f,
        "scale": float(scale),
        "cameras": gl[idx].tolist(),
        "cameras_interp": gl.tolist(),
        "image_hw": [H, W],
    }
    _write_text_atomic(Path(path), json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Reference geometry.npz.
# ----------------------------------------------------------------------------------------------

_GEOMETRY_KEYS = (
    "frames",
    "depths",
    "intrinsics",
    "poses_c2w",
    "masks",
    "frame_indices",
    "original_size",
    "processed_size",
)


@dataclasses.dataclass(frozen=True, eq=False)
class GeometryNpz:
    """Contents of a reference ``geometry.npz`` (spec section 8), validated.

    Attributes:
      depths: float32 [T, H, W] z-depth (<= 0 means invalid).
      intrinsics: float32 [T, 3, 3] pixels of the H x W frames.
      poses_c2w: float32 [T, 4, 4] OpenCV camera-to-world.
      frames: uint8 [T, H, W, 3] or None (the reference may keep first_frame.png / clip.mp4
        next to the npz instead; see ``sidecar``).
      masks: bool [T, H, W] or None; True = static / keep.
      frame_indices: int64 [T] or None.
      original_size: (H, W) or None; processed_size: (H, W) or None. Both are returned in
        (H, W) order; processed_size must equal the depth size, which also tells which order
        the file used (a file storing (W, H) is read correctly).
      sidecar: path of first_frame.png or clip.mp4 next to the file when ``frames`` is absent,
        else None (not decoded here).
      extras: other arrays in the file, kept verbatim.
    """

    depths: np.ndarray
    intrinsics: np.ndarray
    poses_c2w: np.ndarray
    frames: np.ndarray | None = None
    masks: np.ndarray | None = None
    frame_indices: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    processed_size: tuple[int, int] | None = None
    sidecar: str | None = None
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.depths.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.depths.shape[1]), int(self.depths.shape[2])

    def save(self, path: PathLike, *, compress: bool = True) -> None:
        write_geometry_npz(
            path,
            self.depths,
            self.intrinsics,
            self.poses_c2w,
            frames=self.frames,
            masks=self.masks,
            frame_indices=self.frame_indices,
            original_size=self.original_size,
            processed_size=self.processed_size,
            extras=dict(self.extras),
            compress=compress,
        )


def _validate_geometry(arrays: dict, fail) -> dict:
    """Validates geometry arrays; ``fail(key, message)`` raises. Returns normalised arrays."""
    out: dict[str, Any] = {}
    for key in ("depths", "intrinsics", "poses_c2w"):
        if arrays.get(key) is None:
            fail(key, "required but missing")
    depths = np.asarray(arrays["depths"])
    if depths.ndim != 3:
        fail("depths", f"expected shape (T, H, W), got {depths.shape}")
    if not np.issubdtype(depths.dtype, np.floating):
        fail("depths", f"expected a float dtype (float32), got {depths.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        depths = depths.astype(np.float32)  # checked in the dtype it is returned in
    if not np.all(np.isfinite(depths)):
        fail("depths", f"{int(np.sum(~np.isfinite(depths)))} non-finite values in float32 (use 0 for invalid depth)")
    T, H, W = depths.shape
    if T == 0:
        fail("depths", "has zero frames")
    out["depths"] = depths

    try:
        K = check_intrinsics(arrays["intrinsics"], "intrinsics")
    except CameraError as e:
        fail("intrinsics", str(e).removeprefix("intrinsics: "))
    if K.shape != (T, 3, 3):
        fail("intrinsics", f"expected shape ({T}, 3, 3) to match depths, got {K.shape}")
    out["intrinsics"] = K

    try:
        P = check_pose(arrays["poses_c2w"], "poses_c2w", atol=_ROT_ATOL)
    except CameraError as e:
        fail("poses_c2w", str(e).removeprefix("poses_c2w: "))
    if P.shape != (T, 4, 4):
        fail("poses_c2w", f"expected shape ({T}, 4, 4) to match depths, got {P.shape}")
    out["poses_c2w"] = P

    frames = arrays.get("frames")
    if frames is not None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            fail("frames", f"expected uint8, got {frames.dtype}")
        if frames.shape != (T, H, W, 3):
            fail("frames", f"expected shape ({T}, {H}, {W}, 3) to match depths, got {frames.shape}")
    out["frames"] = frames

    masks = arrays.get("masks")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != (T, H, W):
            fail("masks", f"expected shape ({T}, {H}, {W}) to match depths, got {masks.shape}")
        if masks.dtype != np.bool_:
            if not np.issubdtype(masks.dtype, np.integer):
                fail("masks", f"expected bool (True = static/keep), got {masks.dtype}")
            values = np.unique(masks)
            if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
                fail("masks", f"integer masks must hold only 0/1 (or 0/255), got values {values[:8].tolist()}")
            masks = masks != 0
    out["masks"] = masks

    fi = arrays.get("frame_indices")
    if fi is not None:
        fi = np.asarray(fi)
        if fi.shape != (T,) or not np.issubdtype(fi.dtype, np.integer):
            fail("frame_indices", f"expected integers of shape ({T},), got {fi.dtype} {fi.shape}")
        if np.any(fi < 0):
            fail("frame_indices", "negative index")
        fi = fi.astype(np.int64)
    out["frame_indices"] = fi

    def size(key):
        v = arrays.get(key)
        if v is None:
            return None
        v = np.asarray(v)
        if v.shape != (2,) or not np.issubdtype(v.dtype, np.integer) or np.any(v <= 0) or np.any(v > _MAX_SIDE):
            fail(key, f"expected two positive integers, got {v.dtype} {v.shape} {v.tolist()}")
        return int(v[0]), int(v[1])

    processed, original = size("processed_size"), size("original_size")
    swap = False
    if processed is not None:
        if processed == (H, W):
            pass
        elif processed == (W, H):
            swap = True  # the file stores sizes as (W, H)
        else:
            fail("processed_size", f"{list(processed)} does not match the depth size (H, W) = ({H}, {W})")
    if swap:
        processed = processed[::-1]
        original = None if original is None else original[::-1]
    out["processed_size"], out["original_size"] = processed, original
    return out


def read_npz_arrays(path: PathLike, fail) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read without pickles; ``fail(key, message)`` raises.

    Written by hand over ``zipfile`` + ``numpy.lib.format`` instead of ``np.load`` so that each
    member's ``.npy`` header is checked against the member's size *before* anything is
    allocated (a corrupt header claiming 1e12 elements fails here instead of allocating), and so
    that every failure (bad zip, CRC, zlib, header, truncation, object dtype) goes through
    ``fail`` naming the key. ``key`` is None for the archive as a whole.
    """
    import zlib

    arrays: dict[str, np.ndarray] = {}
    key = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy"):
                    fail(key, "archive member is not an .npy array")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        fail(key, f"unsupported .npy format version {version}")
                    if dtype.hasobject:
                        fail(key, f"cannot be loaded without pickle (dtype {dtype})")
                    nbytes = math.prod(shape) * dtype.itemsize
                    available = info.file_size - f.tell()
                    if nbytes != available:
                        fail(key, f"header claims {dtype} {shape} ({nbytes} bytes) but the member holds {available}")
                    data = bytearray(f.read(nbytes))
                if len(data) != nbytes:
                    fail(key, f"truncated: {len(data)} of {nbytes} bytes")
                a = np.frombuffer(data, dtype) if nbytes else np.zeros(0, dtype)
                arrays[key] = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, TypeError) as e:
        if isinstance(e, MirageError):
            raise
        fail(key, f"not a readable .npz file ({type(e).__name__}: {e})")
    return arrays


def read_geometry_npz(path: PathLike) -> GeometryNpz:
    """Reads and validates a reference ``geometry.npz`` (np.load with allow_pickle=False).

    Required keys: depths (T, H, W) float, intrinsics (T, 3, 3) pixels, poses_c2w (T, 4, 4)
    OpenCV. Optional: frames (T, H, W, 3) uint8, masks (T, H, W) bool (or 0/1 integers; True =
    static/keep), frame_indices (T,), original_size (2,), processed_size (2,). Other keys are kept
    in ``extras``.

    Raises:
      FormatError naming the file and the key (wrong shape or dtype, inconsistent T / H / W,
      non-finite values, bad rotations, non-positive focal lengths, pickled object arrays).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")

    def fail(key, message):
        raise FormatError(path, message, key=key)

    arrays = read_npz_arrays(path, fail)
    v = _validate_geometry(arrays, fail)
    sidecar = None
    if v["frames"] is None:
        for name in ("first_frame.png", "clip.mp4"):
            if (path.parent / name).exists():
                sidecar = str(path.parent / name)
                break
    extras = {k: a for k, a in arrays.items() if k not in _GEOMETRY_KEYS}
    return GeometryNpz(sidecar=sidecar, extras=extras, **v)


def write_geometry_npz(
    path: PathLike,
    depths,
    intrinsics,
    poses_c2w,
    *,
    frames=None,
    masks=None,
    frame_indices=None,
    original_size=None,
    processed_size=None,
    extras: Mapping[str, Any] | None = None,
    compress: bool = True,
) -> None:
    """Validates and writes a ``geometry.npz`` in the reference layout (see read_geometry_npz).

    Sizes are written in (H, W) order. ``processed_size`` defaults to the depth size. Raises
    CameraError naming the argument for bad input.
    """

    def fail(key, message):
        raise CameraError(f"{key}: {message}")

    if processed_size is None:
        d = np.asarray(depths)
        processed_size = d.shape[1:3] if d.ndim == 3 else None
    arrays = {
        "depths": depths,
        "intrinsics": intrinsics,
        "poses_c2w": poses_c2w,
        "frames": frames,
        "masks": masks,
        "frame_indices": frame_indices,
        "original_size": None if original_size is None else np.asarray(original_size, np.int64),
        "processed_size": None if processed_size is None else np.asarray(processed_size, np.int64),
    }
    v = _validate_geometry(arrays, fail)
    if v["processed_size"] is not None and tuple(np.asarray(processed_size).tolist()) != v["processed_size"]:
        fail("processed_size", "must be given as (H, W)")
    out = {k: a for k, a in v.items() if a is not None}
    for k in ("original_size", "processed_size"):
        if k in out:
            out[k] = np.asarray(out[k], np.int64)
    for k, a in (extras or {}).items():
        if k in _GEOMETRY_KEYS:
            fail("extras", f"key {k!r} is a reserved geometry key")
        a = np.asarray(a)
        if a.dtype == object:
            fail("extras", f"key {k!r} is an object array (would need pickle)")
        out[k] = a
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    (np.savez_compressed if compress else np.savez)(tmp, **out)
    os.replace(tmp, path)
