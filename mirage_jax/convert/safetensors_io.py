"""Lazy, torch-free safetensors reading and writing (bfloat16 included, via ml_dtypes).

The format: an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`` and the raw little-endian data.
:class:`SafetensorsCheckpoint` memory-maps one or many files (a directory, a sharded
``*.safetensors.index.json`` or single files) and hands out NumPy views on demand, so a
converter touches one tensor at a time and never holds a whole checkpoint in memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file / index."""


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        size = os.path.getsize(path)
        if n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from e
    return header, 8 + n


class SafetensorsFile(Mapping[str, np.ndarray]):
    """One memory-mapped safetensors file as a read-only ``{name: np.ndarray}`` mapping."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, self._data_start = _read_header(self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._mmap: np.memmap | None = None
        size = os.path.getsize(self.path) - self._data_start
        for name, e in header.items():
            if e.get("dtype") not in _DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            b, end = e["data_offsets"]
            nbytes = int(np.prod(e["shape"], dtype=np.int64)) * _DTYPES[e["dtype"]].itemsize
            if end - b != nbytes or end > size or b < 0:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has inconsistent offsets {e['data_offsets']}")

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        return self._mmap

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def __getitem__(self, name: str) -> np.ndarray:
        e = self._entries[name]
        b, end = e["data_offsets"]
        dtype = _DTYPES[e["dtype"]]
        if end == b:
            return np.zeros(e["shape"], dtype)
        buf = self._buffer()[b:end]
        return buf.view(dtype).reshape(e["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class SafetensorsCheckpoint(Mapping[str, np.ndarray]):
    """Several safetensors files as one lazy mapping (each name in exactly one file)."""

    def __init__(self, files: Sequence[str | os.PathLike], origin: str | os.PathLike | None = None):
        if not files:
            raise SafetensorsError(f"no safetensors files found at {origin}")
        self.files = [SafetensorsFile(f) for f in files]
        self.origin = str(origin if origin is not None else files[0])
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for name in f:
                if name in self._where:
                    raise SafetensorsError(f"tensor {name!r} appears in both {self._where[name].path} and {f.path}")
                self._where[name] = f

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self._where[name].dtype(name)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def open_safetensors(path: str | os.PathLike, prefer: str = "diffusion_pytorch_model") -> SafetensorsCheckpoint:
    """Opens a ``.safetensors`` file, a ``*.safetensors.index.json`` or a directory.

    A directory is read through its ``{prefer}.safetensors.index.json`` (or the only index
    there), else its ``{prefer}.safetensors``, else all of its ``*.safetensors`` files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if path.is_dir():
        index = path / f"{prefer}.safetensors.index.json"
        indices = [index] if index.exists() else sorted(path.glob("*.safetensors.index.json"))
        if len(indices) > 1:
            raise SafetensorsError(f"{path} holds several index files {[i.name for i in indices]}; pass one")
        if indices:
            return open_safetensors(indices[0])
        single = path / f"{prefer}.safetensors"
        if single.exists():
            return SafetensorsCheckpoint([single], origin=path)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise SafetensorsError(f"no *.safetensors files in {path}")
        return SafetensorsCheckpoint(files, origin=path)
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise SafetensorsError(f"{path}: not a safetensors index (needs a 'weight_map'): {e}") from e
        files = sorted({path.parent / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise SafetensorsError(f"{path}: shard files listed in the index are missing: {missing}")
        ckpt = SafetensorsCheckpoint(files, origin=path)
        listed, present = set(weight_map), set(ckpt)
        if listed != present:
            raise SafetensorsError(
                f"{path}: index and shards disagree; only in index: {sorted(listed - present)[:10]}, "
                f"only in shards: {sorted(present - listed)[:10]}"
            )
        return ckpt
    if path.suffix != ".safetensors":
        raise SafetensorsError(f"{path}: expected a .safetensors file, an index .json or a directory")
    return SafetensorsCheckpoint([path], origin=path)


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``tensors`` (NumPy, any dtype in the table, bfloat16 included) to one file."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name]))
        if arr.dtype not in _CODES:
            raise SafetensorsError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored in safetensors")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)


def save_sharded_safetensors(
    directory: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    prefix: str = "diffusion_pytorch_model",
    max_shard_bytes: int = 10 * 2**30,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Writes ``{prefix}.safetensors`` or, above ``max_shard_bytes``, numbered shards plus a
    ``{prefix}.safetensors.index.json`` (the diffusers / transformers layout)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = np.asarray(tensors[name]).nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    if len(shards) == 1:
        out = directory / f"{prefix}.safetensors"
        save_safetensors(out, shards[0], metadata)
        return [out]
    paths, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards):
        out = directory / f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(out, shard, metadata)
        paths.append(out)
        for name in shard:
            weight_map[name] = out.name
            total += np.asarray(shard[name]).nbytes
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return paths
