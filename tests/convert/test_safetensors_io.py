"""safetensors_io: header validation against the official ``safetensors`` library as the oracle.

Every file the official library rejects is rejected here with a SafetensorsError naming the file
(a FileFormatError, never a KeyError / TypeError / UnicodeDecodeError / struct.error); every
file it accepts is read to the same arrays.
"""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from mirage_jax.convert.safetensors_io import SafetensorsError, SafetensorsFile, open_safetensors, save_safetensors
from mirage_jax.errors import FileFormatError


def raw_file(header, data: bytes = b"", length: int | None = None) -> bytes:
    """Bytes of a safetensors file with the given header (dict/list -> JSON, or raw bytes)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def oracle_accepts(path) -> bool:
    safetensors = pytest.importorskip("safetensors")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                f.get_slice(k)
    except Exception:  # noqa: BLE001 - the oracle's own error types
        return False
    return True


def oracle_arrays(path) -> dict:
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


A = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
B = {"dtype": "I32", "shape": [1, 2], "data_offsets": [8, 16]}
DATA = np.array([1.5, -2.0], np.float32).tobytes() + np.array([[7, -9]], np.int32).tobytes()

BAD = {
    "header is a JSON list": raw_file([A], DATA),
    "header is a JSON string": raw_file("x", DATA),
    "header is not JSON": raw_file(b"{not json", DATA),
    "header is not UTF-8": raw_file(b'{"\xff": 1}', DATA),
    "entry without data_offsets": raw_file({"a": {"dtype": "F32", "shape": [2]}}, DATA[:8]),
    "entry without dtype": raw_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, DATA[:8]),
    "entry without shape": raw_file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, DATA[:8]),
    "entry is not an object": raw_file({"a": [0, 8]}, DATA[:8]),
    "unknown dtype": raw_file({"a": {**A, "dtype": "F31"}}, DATA[:8]),
    "negative shape": raw_file({"a": {**A, "shape": [-2]}}, DATA[:8]),
    "float shape": raw_file({"a": {**A, "shape": [2.0]}}, DATA[:8]),
    "offsets overlap": raw_file({"a": A, "b": {**B, "data_offsets": [4, 12]}}, DATA),
    "offsets leave a gap": raw_file({"a": A, "b": {**B, "data_offsets": [12, 20]}}, DATA + b"\0" * 4),
    "first offset not 0": raw_file({"a": {**A, "data_offsets": [4, 12]}}, DATA[:12]),
    "offsets out of bounds": raw_file({"a": A, "b": {**B, "data_offsets": [8, 16]}}, DATA[:12]),
    "offsets reversed": raw_file({"a": {**A, "data_offsets": [8, 0]}}, DATA[:8]),
    "byte length != prod(shape) * itemsize": raw_file({"a": {**A, "shape": [3]}}, DATA[:8]),
    "trailing bytes after the data": raw_file({"a": A}, DATA[:8] + b"\0" * 8),
    "header length beyond the file": raw_file({"a": A}, DATA[:8], length=10**6),
    "header length absurd": raw_file({"a": A}, DATA[:8], length=2**63),
    "file shorter than 8 bytes": b"\x05\0\0",
    "__metadata__ not str -> str": raw_file({"__metadata__": {"k": 1}, "a": A}, DATA[:8]),
    "__metadata__ a list": raw_file({"__metadata__": ["k"], "a": A}, DATA[:8]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_what_the_official_library_rejects_is_rejected(tmp_path, name):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD[name])
    assert not oracle_accepts(path), f"the oracle accepts {name!r}: the case is not bad"
    with pytest.raises(SafetensorsError, match=r"bad\.safetensors") as e:
        SafetensorsFile(path)
    assert isinstance(e.value, FileFormatError)


GOOD = {
    "two tensors": raw_file({"a": A, "b": B}, DATA),
    "listed out of offset order": raw_file({"b": B, "a": A}, DATA),
    "metadata and padding": raw_file(json.dumps({"__metadata__": {"format": "pt"}, "a": A}).encode() + b"   ", DATA[:8]),
    "zero-size tensor": raw_file({"a": A, "z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]}}, DATA[:8]),
    "scalar": raw_file({"s": {"dtype": "I32", "shape": [], "data_offsets": [0, 4]}}, DATA[8:12]),
    "empty": raw_file({}, b""),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_what_the_official_library_accepts_reads_the_same_arrays(tmp_path, name):
    path = tmp_path / "good.safetensors"
    path.write_bytes(GOOD[name])
    assert oracle_accepts(path)
    want = oracle_arrays(path)
    got = SafetensorsFile(path)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_array_equal(got[k], want[k])


def test_round_trip_with_bfloat16_and_the_official_reader(tmp_path):
    arrays = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 2], np.int64),
        "h": (np.arange(4) / 3).astype(ml_dtypes.bfloat16),
    }
    save_safetensors(tmp_path / "x.safetensors", arrays, metadata={"format": "pt"})
    got = open_safetensors(tmp_path / "x.safetensors")
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype
        np.testing.assert_array_equal(got[k], a)
    want = oracle_arrays(tmp_path / "x.safetensors")
    for k, a in arrays.items():
        assert want[k].dtype == a.dtype
        np.testing.assert_array_equal(want[k], a)


@pytest.mark.parametrize(
    "index,match",
    [
        ([1, 2], "needs a JSON object"),
        ({"weight_map": {"a": 3}}, "needs a JSON object"),
        ({"weight_map": {"a": "../x.safetensors"}}, "needs a JSON object"),
        ({"metadata": {}}, "needs a JSON object"),
    ],
)
def test_bad_index_files_name_the_file(tmp_path, index, match):
    p = tmp_path / "model.safetensors.index.json"
    p.write_text(json.dumps(index))
    with pytest.raises(SafetensorsError, match=rf"model\.safetensors\.index\.json.*{match}"):
        open_safetensors(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(SafetensorsError, match="not valid UTF-8 JSON"):
        open_safetensors(p)
