"""Saving, loading and exporting the memory (no pickles).

``save`` writes every array of the pytree (slots, counters, ring cursor) and the options
(``mem.config``) so that a loaded memory continues exactly where the saved one stopped.
Formats by file extension: ``.npz`` (NumPy, read back with ``allow_pickle=False``) or
``.safetensors``. Metadata (format version, options, feature dtype) is a JSON string: a uint8
array ``__meta__`` in npz files, the header metadata in safetensors files. bfloat16 features
(no NumPy dtype) are stored bit-exactly as uint16 and tagged in the metadata.

``export_ply`` writes the valid points as a binary little-endian (or ASCII) PLY with colours
from a given per-slot RGB, or from the first three principal components of the features.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mirage_jax.memory.core import LatentMemory, LatentMemoryError, MemoryConfig, _check_memory

__all__ = ["FORMAT_VERSION", "export_ply", "load", "save"]

FORMAT_VERSION = 1
_SLOT_FIELDS = ("points", "features", "valid", "step", "weight")
_SCALAR_FIELDS = ("cursor", "count", "frames", "written", "rejected", "inserted", "fused", "dropped", "evicted")
_FIELD_DTYPES = {
    "points": np.float32,
    "valid": np.bool_,
    "step": np.int32,
    "weight": np.float32,
    **{k: np.int32 for k in _SCALAR_FIELDS},
}
_BITCAST = {"bfloat16": np.uint16}
_PLY_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])


def _format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    raise LatentMemoryError(f"{path}: unknown memory file extension {suffix!r} (use .npz or .safetensors)")


def save(mem: LatentMemory, path) -> Path:
    """Writes ``mem`` to ``path`` (.npz or .safetensors); returns the path.

    A single memory only (for a batch of memories save each one).
    """
    _check_memory(mem)
    if np.ndim(mem.cursor) != 0:
        raise LatentMemoryError("save: expected a single memory, got a batch (save each memory separately)")
    path = Path(path)
    fmt = _format(path)
    feat_dtype = str(jnp.dtype(mem.features.dtype))
    arrays = {}
    for name in _SLOT_FIELDS + _SCALAR_FIELDS:
        a = np.asarray(getattr(mem, name))
        if name == "features" and feat_dtype in _BITCAST:
            a = a.view(_BITCAST[feat_dtype])
        arrays[name] = np.array(a, order="C", copy=True)
    meta = {
        "format": "mirage_jax.LatentMemory",
        "version": FORMAT_VERSION,
        "capacity": mem.capacity,
        "channels": mem.channels,
        "features_dtype": feat_dtype,
        "config": dataclasses.asdict(mem.config),
    }
    text = json.dumps(meta, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    if fmt == "npz":
        arrays["__meta__"] = np.frombuffer(text.encode("utf-8"), np.uint8)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    else:
        from safetensors.numpy import save_file

        # safetensors has no 0-d or bool special cases to worry about, but keep scalars 1-D for
        # portability with readers that reject 0-d tensors.
        st = {k: (v.reshape(1) if v.ndim == 0 else v) for k, v in arrays.items()}
        save_file(st, str(tmp), metadata={"mirage_jax": text})
    os.replace(tmp, path)
    return path


def _read_arrays(path: Path, fmt: str):
    if not path.exists():
        raise LatentMemoryError(f"{path}: no such memory file")
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as e:  # object arrays need pickles: refused
            raise LatentMemoryError(f"{path}: cannot read without pickles ({e})") from e
        except Exception as e:  # noqa: BLE001 - report the file
            raise LatentMemoryError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
        if "__meta__" not in arrays:
            raise LatentMemoryError(f"{path}: missing key '__meta__' (not a mirage_jax memory file)")
        text = arrays.pop("__meta__").tobytes().decode("utf-8")
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                md = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - report the file
            raise LatentMemoryError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {e})") from e
        if "mirage_jax" not in md:
            raise LatentMemoryError(f"{path}: missing metadata 'mirage_jax' (not a mirage_jax memory file)")
        text = md["mirage_jax"]
        arrays = {k: (v.reshape(()) if k in _SCALAR_FIELDS and v.shape == (1,) else v) for k, v in arrays.items()}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise LatentMemoryError(f"{path}: corrupt metadata ({e})") from e
    return arrays, meta


def load(path) -> LatentMemory:
    """Reads a memory written by :func:`save` (exact round trip, ready to continue writing).

    Raises LatentMemoryError naming the file for a missing key, a wrong shape or dtype, an
    unknown format version or invalid options.
    """
    path = Path(path)
    fmt = _format(path)
    arrays, meta = _read_arrays(path, fmt)
    for key in ("format", "version", "capacity", "channels", "features_dtype", "config"):
        if key not in meta:
            raise LatentMemoryError(f"{path}: metadata is missing {key!r}")
    if meta["format"] != "mirage_jax.LatentMemory":
        raise LatentMemoryError(f"{path}: not a mirage_jax memory file (format {meta['format']!r})")
    if meta["version"] != FORMAT_VERSION:
        raise LatentMemoryError(
            f"{path}: unsupported memory format version {meta['version']} (expected {FORMAT_VERSION})"
        )
    n, c = int(meta["capacity"]), int(meta["channels"])
    feat_dtype = jnp.dtype(meta["features_dtype"])
    try:
        config = MemoryConfig().with_options(**meta["config"])
    except (LatentMemoryError, TypeError) as e:
        raise LatentMemoryError(f"{path}: invalid options in metadata: {e}") from e
    expected = {
        "points": (n, 3),
        "features": (n, c),
        "valid": (n,),
        "step": (n,),
        "weight": (n,),
        **{k: () for k in _SCALAR_FIELDS},
    }
    fields = {}
    for name, shape in expected.items():
        if name not in arrays:
            raise LatentMemoryError(f"{path}: missing key {name!r}")
        a = arrays[name]
        if tuple(a.shape) != shape:
            raise LatentMemoryError(
                f"{path}: key {name!r} has shape {list(a.shape)}, expected {list(shape)} "
                f"(capacity {n}, channels {c})"
            )
        if name == "features":
            stored = np.dtype(_BITCAST.get(str(feat_dtype), feat_dtype))
            if a.dtype != stored:
                raise LatentMemoryError(f"{path}: key 'features' has dtype {a.dtype}, expected {stored}")
            if str(feat_dtype) in _BITCAST:
                a = a.view(feat_dtype)
        elif a.dtype != np.dtype(_FIELD_DTYPES[name]):
            raise LatentMemoryError(
                f"{path}: key {name!r} has dtype {a.dtype}, expected {np.dtype(_FIELD_DTYPES[name])}"
            )
        fields[name] = jnp.asarray(a)
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise LatentMemoryError(f"{path}: unexpected key(s) {extra}")
    return LatentMemory(**fields, config=config)


# --------------------------------------------------------------------------------------------
# PLY export.
# --------------------------------------------------------------------------------------------


def _pca_colours(features: np.ndarray) -> np.ndarray:
    """uint8[M, 3] colours from the first three principal components of features [M, C]."""
    x = features.astype(np.float64)
    m = x.shape[0]
    if m == 0:
        return np.zeros((0, 3), np.uint8)
    x = x - x.mean(axis=0, keepdims=True)
    k = min(3, x.shape[1])
    if m > 1:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = vt[:k]
        # Fix the sign of each component (largest absolute loading positive): deterministic.
        sign = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
        proj = x @ comps.T
    else:
        proj = np.zeros((1, k))
    if k < 3:
        proj = np.concatenate([proj, np.zeros((m, 3 - k))], axis=1)
    lo = np.percentile(proj, 1, axis=0)
    hi = np.percentile(proj, 99, axis=0)
    scaled = (proj - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _rgb_to_uint8(rgb, n, path) -> np.ndarray:
    a = np.asarray(rgb)
    if a.shape != (n, 3):
        raise LatentMemoryError(f"{path}: rgb must be [N, 3] per slot with N = {n}, got {list(a.shape)}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise LatentMemoryError(f"{path}: rgb must be uint8 or float in [0, 1], got {a.dtype}")
    if not np.all(np.isfinite(a)) or a.min(initial=0) < 0 or a.max(initial=0) > 1:
        raise LatentMemoryError(f"{path}: float rgb must be finite and in [0, 1]")
    return np.round(a * 255).astype(np.uint8)


def export_ply(mem: LatentMemory, path, rgb=None, binary: bool = True) -> Path:
    """Writes the valid points of ``mem`` as a PLY point cloud (x, y, z float32; r, g, b uchar).

    Args:
      mem: a single memory.
      path: output .ply path.
      rgb: optional per-slot colours [N, 3] (uint8, or float in [0, 1]; e.g. decoded RGB of the
        cells); default: the first three principal components of the valid features, each
        scaled from its 1st..99th percentile to 0..255.
      binary: binary little-endian (default) or ASCII.
    """
    _check_memory(mem)
    path = Path(path)
    valid = np.asarray(mem.valid)
    pts = np.asarray(mem.points)[valid].astype("<f4")
    if rgb is not None:
        cols = _rgb_to_uint8(rgb, mem.capacity, path)[valid]
    else:
        cols = _pca_colours(np.asarray(mem.features.astype(jnp.float32))[valid])
    header = (
        "ply\n"
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0\n"
        "comment mirage_jax latent memory\n"
        f"element vertex {pts.shape[0]}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        if binary:
            rec = np.empty(pts.shape[0], dtype=_PLY_VERTEX)
            rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
            rec["r"], rec["g"], rec["b"] = cols[:, 0], cols[:, 1], cols[:, 2]
            f.write(rec.tobytes())
        else:
            lines = [
                f"{p[0]:.9g} {p[1]:.9g} {p[2]:.9g} {c[0]} {c[1]} {c[2]}\n" for p, c in zip(pts.tolist(), cols.tolist())
            ]
            f.write("".join(lines).encode("ascii"))
    return path
