"""Lazy, torch-free safetensors reading and writing (bfloat16 included, via ml_dtypes).

The format: an 8-byte little-endian header length, a JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`` and the raw little-endian data.
:class:`SafetensorsCheckpoint` memory-maps one or many files (a directory, a sharded
``*.safetensors.index.json`` or single files) and hands out NumPy views on demand, so a
converter touches one tensor at a time and never holds a whole checkpoint in memory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import ml_dtypes
import numpy as np

from mirage_jax.errors import FileFormatError, file_error

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


# The official library's limit on the JSON header (safetensors' MAX_HEADER_SIZE).
_MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(FileFormatError):
    """A malformed or inconsistent safetensors file / index (the message names the file)."""


def _fail(path, what: str, key: str | None = None) -> SafetensorsError:
    return file_error(path, what, key=key, cls=SafetensorsError)


def _read_header(path: Path) -> tuple[dict, int]:
    """(header dict, data start) of a safetensors file; the header length is checked against
    the file size before it is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _fail(path, f"too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER_BYTES:
            raise _fail(path, f"header length {n} exceeds the format's limit of {_MAX_HEADER_BYTES} bytes")
        if n > size - 8:
            raise _fail(path, f"header length {n} exceeds the file size {size}")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header must be a JSON object, got {type(header).__name__}")
    return header, 8 + n


def _validate_entries(path: Path, header: dict, data_size: int) -> tuple[dict, dict]:
    """Checks the header the way the official ``safetensors`` library does; returns
    (metadata str -> str, {name: (dtype, shape, begin, end)}).

    Every entry needs ``dtype`` (known), ``shape`` (non-negative ints) and ``data_offsets``
    ([begin, end] ints with end - begin = prod(shape) * itemsize); sorted by offset the entries
    must tile the data exactly from 0 to the end of the file: no overlap, no gap, nothing past
    the end, no trailing bytes.
    """
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "must be a JSON object of string -> string", key="__metadata__")

    def is_uint(x):
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    entries = {}
    for name, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise _fail(path, "tensor entry needs 'dtype', 'shape' and 'data_offsets'", key=name)
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise _fail(path, f"unsupported dtype {dtype!r} (known: {sorted(_DTYPES)})", key=name)
        if not isinstance(shape, list) or not all(is_uint(d) for d in shape):
            raise _fail(path, f"shape must be a list of non-negative ints, got {shape!r}", key=name)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_uint(o) for o in offsets):
            raise _fail(path, f"data_offsets must be [begin, end] non-negative ints, got {offsets!r}", key=name)
        begin, end = offsets
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if end < begin or end - begin != nbytes:
            raise _fail(
                path, f"data_offsets {offsets} hold {end - begin} bytes but {dtype} {shape} needs {nbytes}", key=name
            )
        entries[name] = (_DTYPES[dtype], tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise _fail(path, f"data_offsets [{begin}, {end}] {what} (expected to start at {position})", key=name)
        position = end
    if position != data_size:
        raise _fail(
            path,
            f"tensors cover {position} bytes of data but the file holds {data_size} after the header "
            f"({'truncated' if position > data_size else 'trailing bytes'})",
        )
    return metadata, entries


class SafetensorsFile(Mapping[str, np.ndarray]):
    """One memory-mapped safetensors file as a read-only ``{name: np.ndarray}`` mapping.

    The header is validated as the official ``safetensors`` library validates it (see
    :func:`_validate_entries`), so a file it rejects is rejected here too, with a
    :class:`SafetensorsError` naming the file and the tensor.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, self._data_start = _read_header(self.path)
        data_size = os.path.getsize(self.path) - self._data_start
        self.metadata, self._entries = _validate_entries(self.path, header, data_size)
        self._mmap: np.memmap | None = None

    def _buffer(self) -> np.memmap:
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        return self._mmap

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, b, end = self._entries[name]
        if end == b:
            return np.zeros(shape, dtype)
        return self._buffer()[b:end].view(dtype).reshape(shape)

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
            index = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _fail(path, f"not a safetensors index: not valid UTF-8 JSON ({e})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()
        ):
            raise _fail(path, "not a safetensors index: needs a JSON object mapping tensor names to shard file names", key="weight_map")
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
