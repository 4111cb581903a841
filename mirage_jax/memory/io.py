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

from mirage_jax.errors import file_error
from mirage_jax.geometry.formats import read_npz_arrays
from mirage_jax.memory._internal import LatentMemory, LatentMemoryError, MemoryConfig, MemoryFileError, check_memory

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
    check_memory(mem)  # also refuses a stacked batch of memories
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


def _fail(path, what: str) -> MemoryFileError:
    return file_error(path, what, cls=MemoryFileError)


def _read_arrays(path: Path, fmt: str):
    """(arrays, metadata text) of a memory file; every failure raises MemoryFileError."""
    if not path.is_file():
        raise _fail(path, "no such memory file")
    if fmt == "npz":

        def fail(key, message):
            raise _fail(path, message if key is None else f"key {key!r}: {message}")

        arrays = read_npz_arrays(path, fail)
        if "__meta__" not in arrays:
            raise _fail(path, "missing key '__meta__' (not a mirage_jax memory file)")
        raw = arrays.pop("__meta__")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise _fail(path, f"key '__meta__' must be uint8 [n] (UTF-8 JSON), got {raw.dtype} {list(raw.shape)}")
        try:
            text = raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise _fail(path, f"corrupt metadata: not UTF-8 ({e})") from None
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                md = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - the library's own error types; report the file
            raise _fail(path, f"not a readable .safetensors file ({type(e).__name__}: {e})") from None
        if "mirage_jax" not in md:
            raise _fail(path, "missing metadata 'mirage_jax' (not a mirage_jax memory file)")
        text = md["mirage_jax"]
        arrays = {k: (v.reshape(()) if k in _SCALAR_FIELDS and v.shape == (1,) else v) for k, v in arrays.items()}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"corrupt metadata: expected a JSON object, got {type(meta).__name__}")
    return arrays, meta


def _meta_int(path, meta, key, lo, hi) -> int:
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(path, f"metadata {key!r} must be an int in [{lo}, {hi}], got {v!r}")
    return v


def _check_consistent(path, f: dict, n: int) -> None:
    """The counters and per-slot arrays of a loaded memory must agree (what :func:`save` of a
    memory built by empty / write always gives); a file that contradicts itself is refused."""
    count, cursor = int(f["count"]), int(f["cursor"])
    for name in _SCALAR_FIELDS:
        if int(f[name]) < 0:
            raise _fail(path, f"counter {name!r} is negative ({int(f[name])})")
    if count > n:
        raise _fail(path, f"count {count} exceeds the capacity {n}")
    if cursor >= n:
        raise _fail(path, f"cursor {cursor} is outside the ring [0, {n})")
    valid = f["valid"]
    held = int(valid.sum())
    if held != count:
        raise _fail(path, f"count says {count} entries but {held} slots are marked valid")
    if int(f["written"]) != int(f["inserted"]) + int(f["fused"]) + int(f["dropped"]):
        raise _fail(
            path,
            f"counters disagree: written {int(f['written'])} != inserted {int(f['inserted'])} + fused "
            f"{int(f['fused'])} + dropped {int(f['dropped'])}",
        )
    step, weight, frames = f["step"], f["weight"], int(f["frames"])
    checks = (
        (np.all(np.isfinite(f["points"][valid])), "valid slots hold non-finite points"),
        (
            not np.issubdtype(f["features"].dtype, np.floating)
            or np.all(np.isfinite(f["features"][valid].astype(np.float32))),
            "valid slots hold non-finite features",
        ),
        (np.all((step[valid] >= 0) & (step[valid] < frames)), f"valid slots have step outside [0, frames={frames})"),
        (np.all(step[~valid] == -1), "empty slots must have step -1"),
        (np.all(np.isfinite(weight[valid]) & (weight[valid] >= 1)), "valid slots need weight >= 1"),
        (np.all(weight[~valid] == 0), "empty slots must have weight 0"),
    )
    for ok, what in checks:
        if not ok:
            raise _fail(path, what)


def load(path) -> LatentMemory:
    """Reads a memory written by :func:`save` (exact round trip, ready to continue writing).

    Raises:
      MemoryFileError (a LatentMemoryError and a FileFormatError) naming the file: unreadable
      or truncated file (npz members are size-checked before anything is allocated; safetensors
      files are read by the official library), pickled arrays, a missing or unexpected key, a
      wrong shape or dtype, bad metadata (not UTF-8 JSON, unknown format version, capacity or
      channels out of range, unknown dtype, invalid options), or counters that contradict the
      arrays (count > capacity, count != number of valid slots, cursor outside [0, capacity),
      negative counters, written != inserted + fused + dropped, non-finite points or features
      in valid slots, steps outside [0, frames), weights inconsistent with validity).
    """
    path = Path(path)
    fmt = _format(path)
    arrays, meta = _read_arrays(path, fmt)
    for key in ("format", "version", "capacity", "channels", "features_dtype", "config"):
        if key not in meta:
            raise _fail(path, f"metadata is missing {key!r}")
    if meta["format"] != "mirage_jax.LatentMemory":
        raise _fail(path, f"not a mirage_jax memory file (format {meta['format']!r})")
    if isinstance(meta["version"], bool) or meta["version"] != FORMAT_VERSION:
        raise _fail(path, f"unsupported memory format version {meta['version']!r} (expected {FORMAT_VERSION})")
    n = _meta_int(path, meta, "capacity", 1, 2**31 - 2)
    c = _meta_int(path, meta, "channels", 1, 2**31 - 1)
    try:
        feat_dtype = jnp.dtype(meta["features_dtype"])
        if not isinstance(meta["features_dtype"], str):
            raise TypeError("not a string")
    except (TypeError, ValueError) as e:
        raise _fail(path, f"metadata 'features_dtype' {meta['features_dtype']!r} is not a dtype ({e})") from None
    if not (jnp.issubdtype(feat_dtype, jnp.floating) or jnp.issubdtype(feat_dtype, jnp.integer)):
        raise _fail(path, f"metadata 'features_dtype' must be a float or integer dtype, got {feat_dtype}")
    if not isinstance(meta["config"], dict):
        raise _fail(path, f"invalid options in metadata: expected an object, got {meta['config']!r}")
    try:
        config = MemoryConfig().with_options(**meta["config"])
    except (LatentMemoryError, TypeError) as e:
        raise _fail(path, f"invalid options in metadata: {e}") from None
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
            raise _fail(path, f"missing key {name!r}")
        a = arrays[name]
        if tuple(a.shape) != shape:
            raise _fail(
                path, f"key {name!r} has shape {list(a.shape)}, expected {list(shape)} (capacity {n}, channels {c})"
            )
        if name == "features":
            stored = np.dtype(_BITCAST.get(str(feat_dtype), feat_dtype))
            if a.dtype != stored:
                raise _fail(path, f"key 'features' has dtype {a.dtype}, expected {stored}")
            if str(feat_dtype) in _BITCAST:
                a = a.view(feat_dtype)
        elif a.dtype != np.dtype(_FIELD_DTYPES[name]):
            raise _fail(path, f"key {name!r} has dtype {a.dtype}, expected {np.dtype(_FIELD_DTYPES[name])}")
        fields[name] = a
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise _fail(path, f"unexpected key(s) {extra}")
    _check_consistent(path, fields, n)
    return LatentMemory(**{k: jnp.asarray(a) for k, a in fields.items()}, config=config)


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
    check_memory(mem)
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
