"""Property-based sweep over every file reader of geometry/, memory/ and convert/safetensors_io.

Each class starts from a good file written by the project's own writer and applies corrupted,
truncated, overflowing or inconsistent edits (hypothesis, the derandomized "ci" profile from
tests/conftest.py). Every case must either load, and then return finite values equal to an
independent reading of the (edited) file, or raise a MirageError; any other exception type,
inf/NaN in the output or a value that differs from the file fails the test. OUTCOMES counts how
each class ends; ``pytest -s`` prints the table.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import struct
import tempfile
import zipfile

import ml_dtypes  # noqa: F401 - bfloat16 in safetensors files
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirage_jax import memory as M
from mirage_jax.convert.safetensors_io import SafetensorsFile, save_safetensors
from mirage_jax.errors import MirageError
from mirage_jax.geometry import formats as F
from mirage_jax.geometry.cameras import OPENGL_TO_OPENCV

OUTCOMES: collections.Counter = collections.Counter()
# Cases per class: above the profile's 25 so that every class sees each kind of edit many times
# (about 10 s for the whole sweep on one core).
SWEEP_EXAMPLES = 100
_DIR = tempfile.mkdtemp(prefix="readers_sweep_")


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    classes = sorted({c for c, _ in OUTCOMES})
    print("\nreaders sweep: cases per class and how they ended")
    for c in classes:
        ends = {o: n for (k, o), n in OUTCOMES.items() if k == c}
        print(f"  {c:24s} {sum(ends.values()):4d}  " + ", ".join(f"{o}: {n}" for o, n in sorted(ends.items())))
    print(f"  total {sum(OUTCOMES.values())}")
    shutil.rmtree(_DIR, ignore_errors=True)


def attempt(cls: str, read, check) -> None:
    """read() must raise a MirageError or return something check() accepts."""
    try:
        out = read()
    except MirageError as e:
        OUTCOMES[cls, type(e).__name__] += 1
        return
    check(out)
    OUTCOMES[cls, "loaded, equal to the file"] += 1


def put(name: str, data: bytes) -> str:
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def finite(*arrays):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a, np.float64))), "inf/NaN returned"


# ----------------------------------------------------------------------------------------------
# Edits.
# ----------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["0", "-0", "-1", "1e300", "-1e300", "1e39", "3.5e38", "1e-50", "nan", "inf", "-inf", "x", "",
                  "1e400", "0x10", "1_0", "2", "0.5", "99999999999999999999999"]


@st.composite
def text_edit(draw, text: str) -> str:
    """A corrupted / truncated / overflowing / inconsistent version of a text file."""
    lines = text.splitlines()
    kind = draw(st.sampled_from(["token", "overflow", "overflow", "truncate", "bytes", "drop_line", "dup_line", "swap_lines"]))
    if kind == "overflow":  # a number finite in float64 but not in float32, in a data row
        i = draw(st.integers(1 if len(lines) > 1 else 0, len(lines) - 1))
        toks = lines[i].split(" ")
        j = draw(st.integers(0, len(toks) - 1))
        big = draw(st.sampled_from(["1e300", "-1e300", "1e39", "3.5e38", "-4e38"]))
        toks[j] = toks[j].replace(toks[j].strip("[],"), big) if toks[j].strip("[],") else big
        lines[i] = " ".join(toks)
        return "\n".join(lines) + "\n"
    if kind == "token":
        i = draw(st.integers(0, len(lines) - 1))
        toks = lines[i].split(" ")
        j = draw(st.integers(0, len(toks) - 1))
        new = draw(st.sampled_from(SPECIAL_TOKENS) | st.floats(allow_nan=True, allow_infinity=True).map(repr))
        toks[j] = new
        lines[i] = " ".join(toks)
        return "\n".join(lines) + "\n"
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "bytes":
        chars = list(text)
        for _ in range(draw(st.integers(1, 4))):
            chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from(list("0123456789.-e ,[]\n\tx")))
        return "".join(chars)
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "drop_line":
        del lines[i]
    elif kind == "dup_line":
        lines.insert(i, lines[i])
    else:
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


@st.composite
def byte_edit(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "extend"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + bytes(draw(st.integers(1, 16)))
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b)


# ----------------------------------------------------------------------------------------------
# Good files.
# ----------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def _poses(T):
    out = []
    for t in range(T):
        a = 0.3 * t
        R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        P = np.eye(4)
        P[:3, :3], P[:3, 3] = R, [0.5 * t, -0.2, 1.0 + t]
        out.append(P)
    return np.stack(out).astype(np.float32)


POSES = _poses(3)
K_PX = np.array([[40.0, 0, 31.5], [0, 42.0, 24.0], [0, 0, 1]], np.float32)
HW = (48, 64)


def _text(write) -> str:
    d = tempfile.mkdtemp(dir=_DIR)
    paths = write(d)
    return [open(p).read() for p in paths]


RE10K = _text(lambda d: (F.write_re10k(os.path.join(d, "c.txt"),
                                        F.Re10kCameras.from_pixels("u", [0, 33, 66], K_PX[None].repeat(3, 0), HW, POSES)),
                         os.path.join(d, "c.txt"))[1:])[0]
SPATIA_W2C, SPATIA_INTR = _text(lambda d: F.write_spatia(d, F.normalize_intrinsics(K_PX, HW), POSES, w2c_rows=3))


def _tokens_as_floats(line: str) -> list[float]:
    return [float(t) for t in line.replace(",", " ").replace("[", " ").replace("]", " ").split()]


def _inv(P):
    P = np.asarray(P, np.float64)
    out = np.eye(4).repeat(len(P), 0).reshape(len(P), 4, 4) if P.ndim == 3 else np.eye(4)
    Rt = np.swapaxes(P[..., :3, :3], -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, P[..., :3, 3])
    return out


def close(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-4 * (1 + np.abs(b).max(initial=0)))


# ----------------------------------------------------------------------------------------------
# Camera text formats.
# ----------------------------------------------------------------------------------------------


@settings(max_examples=SWEEP_EXAMPLES)
@given(st.data())
def test_re10k(data):
    text = data.draw(text_edit(RE10K))
    path = put("re10k.txt", text.encode())

    def check(cams):
        rows = [_tokens_as_floats(line) for line in text.splitlines()[1:] if line.split()]
        v = np.array(rows, np.float64)  # an independent reading of the edited file
        assert v.shape == (len(cams), 19)
        finite(cams.intrinsics_norm, cams.cam2world)
        assert np.array_equal(cams.timestamps, v[:, 0].astype(np.int64))
        close(cams.intrinsics_norm, v[:, 1:5])
        close(_inv(cams.cam2world)[:, :3], v[:, 7:].reshape(-1, 3, 4))

    attempt("re10k txt", lambda: F.read_re10k(path), check)


@settings(max_examples=SWEEP_EXAMPLES)
@given(st.data(), st.booleans())
def test_spatia(data, edit_w2c):
    w2c = data.draw(text_edit(SPATIA_W2C)) if edit_w2c else SPATIA_W2C
    intr = SPATIA_INTR if edit_w2c else data.draw(text_edit(SPATIA_INTR))
    p1, p2 = put("w2c.txt", w2c.encode()), put("intrinsics.txt", intr.encode())

    def check(out):
        n, c2w = out
        finite(n, c2w)
        m = np.array([_tokens_as_floats(line) for line in w2c.splitlines() if line.strip()])
        close(_inv(c2w)[:, :3].reshape(len(c2w), -1), m[:, :12])
        rows = np.array([_tokens_as_floats(line) for line in intr.splitlines() if line.strip()])
        close(n, np.broadcast_to(rows, n.shape))

    attempt("spatia txt", lambda: F.read_spatia((p1, p2)), check)


# ----------------------------------------------------------------------------------------------
# JSON camera formats.
# ----------------------------------------------------------------------------------------------

JSON_VALUES = [0, -1, 0.0, 1e300, -1e300, 1e39, -1e39, 1e300, 1e-300, math.pi, 3.1415926, 1e-9, 2**70, True, None, "12", [], {},
               [1, 2], 64, 48.5]


def _write_json(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def json_edit(draw, obj, paths):
    """Sets one field (chosen among ``paths``, lists of keys/indices) to a bad value, deletes it,
    or edits the bytes of the serialised JSON."""
    obj = json.loads(json.dumps(obj))
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "bytes"]))
    if kind == "bytes":
        return None, draw(byte_edit(_write_json(obj)))
    path = draw(st.sampled_from(paths))
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(st.sampled_from(JSON_VALUES) | st.floats())
    return obj, _write_json(obj)


def _transforms_good():
    path = os.path.join(_DIR, "good_transforms.json")
    F.write_transforms_json(path, POSES, K_PX, HW)
    meta = json.load(open(path))
    meta.pop("fl_y")  # exercise the defaults too
    meta["frames"][1]["camera_angle_x"] = 1.2
    meta["frames"][1].pop("file_path")
    return meta


TRANSFORMS = _transforms_good()
TRANSFORMS_PATHS = [["fl_x"], ["cx"], ["cy"], ["w"], ["h"], ["k1"], ["frames", 1, "camera_angle_x"],
                    ["frames", 0, "transform_matrix", 0, 3], ["frames", 2, "transform_matrix", 1, 1],
                    ["frames", 2, "transform_matrix", 3], ["frames", 1], ["frames", 0, "transform_matrix"]]


@settings(max_examples=SWEEP_EXAMPLES)
@given(json_edit(TRANSFORMS, TRANSFORMS_PATHS))
def test_transforms_json(edit):
    obj, raw = edit
    path = put("transforms.json", raw)

    def check(out):
        finite(out["cam2world"], out["intrinsics"], *out["distortion"].values())
        meta = json.loads(raw)  # the file as JSON says it
        for i, fr in enumerate(meta["frames"]):
            get = lambda k: fr.get(k, meta.get(k))  # noqa: E731
            m = np.asarray(fr["transform_matrix"], np.float64)
            m = np.vstack([m, [0, 0, 0, 1]]) if m.shape == (3, 4) else m
            close(out["cam2world"][i], m @ OPENGL_TO_OPENCV)
            w, h = get("w"), get("h")
            fx = get("fl_x") if get("fl_x") is not None else 0.5 * w / math.tan(0.5 * get("camera_angle_x"))
            fy = get("fl_y") if get("fl_y") is not None else fx
            cx = get("cx") if get("cx") is not None else w / 2
            cy = get("cy") if get("cy") is not None else h / 2
            close(out["intrinsics"][i], [[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
            assert fx / w > 1 / 230 and fy / h > 1 / 230  # a field of view under 179 degrees
            assert tuple(out["image_hw_per_frame"][i]) == (h, w)

    attempt("transforms.json", lambda: F.read_transforms_json(path), check)


def _worldscore_good():
    path = os.path.join(_DIR, "good_camera_data.json")
    K = K_PX.copy()
    K[1, 1] = K[0, 0]
    K[0, 2], K[1, 2] = HW[1] / 2, HW[0] / 2
    F.write_worldscore_cameras(path, POSES, K, HW)
    return json.load(open(path))


WORLDSCORE = _worldscore_good()
WORLDSCORE_PATHS = [["focal_length"], ["scale"], ["image_hw", 0], ["image_hw"], ["cameras_interp", 1, 0, 3],
                    ["cameras_interp", 0, 2, 2], ["cameras_interp", 2], ["cameras", 0, 3], ["cameras_interp"]]


@settings(max_examples=SWEEP_EXAMPLES)
@given(json_edit(WORLDSCORE, WORLDSCORE_PATHS))
def test_worldscore(edit):
    obj, raw = edit
    path = put("camera_data.json", raw)

    def check(out):
        finite(out["cam2world"], out["intrinsics"], out["focal_length"], out["scale"])
        meta = json.loads(raw)
        close(out["cam2world"], np.asarray(meta["cameras_interp"], np.float64) @ OPENGL_TO_OPENCV)
        H, W = meta["image_hw"]
        f = meta["focal_length"]
        close(out["intrinsics"], np.broadcast_to([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], out["intrinsics"].shape))

    attempt("worldscore json", lambda: F.read_worldscore_cameras(path), check)


# ----------------------------------------------------------------------------------------------
# npz files: geometry.npz and memory files.
# ----------------------------------------------------------------------------------------------


def _npz_bytes(arrays) -> bytes:
    path = os.path.join(_DIR, "tmp_good.npz")
    np.savez(path, **arrays)
    return open(path, "rb").read()


GEOMETRY = {
    "depths": RNG.uniform(0.5, 4, (3, 6, 8)).astype(np.float32),
    "intrinsics": np.repeat(np.array([[[5.0, 0, 4], [0, 5, 3], [0, 0, 1]]], np.float32), 3, 0),
    "poses_c2w": POSES,
    "masks": RNG.random((3, 6, 8)) > 0.5,
    "frame_indices": np.arange(3),
    "processed_size": np.array([6, 8]),
}
ARRAY_VALUES = [np.float64(1e300), np.float64(-1e39), np.nan, np.inf, 0.0, -1.0, 1e-45, 2.0]


@st.composite
def npz_edit(draw, arrays: dict):
    """Array-level edits (a value that overflows float32 / is non-finite, a dropped key, a wrong
    shape or dtype, an object array, an npy header claiming 1e12 elements) or byte-level ones."""
    a = {k: np.array(v) for k, v in arrays.items()}
    kind = draw(st.sampled_from(["value", "value", "drop", "shape", "dtype", "header", "bytes", "bytes"]))
    key = draw(st.sampled_from(sorted(a)))
    if kind == "bytes":
        return draw(byte_edit(_npz_bytes(a)))
    if kind == "value":
        v = a[key].astype(np.float64) if a[key].dtype.kind == "f" else a[key]
        flat = v.reshape(-1)
        if flat.size:
            x = draw(st.sampled_from(ARRAY_VALUES))
            with np.errstate(invalid="ignore", over="ignore"):
                flat[draw(st.integers(0, flat.size - 1))] = x if v.dtype.kind == "f" else np.clip(
                    np.nan_to_num(x), -(2**31), 2**31 - 1
                ).astype(v.dtype)
        a[key] = v
    elif kind == "drop":
        del a[key]
    elif kind == "shape":
        a[key] = a[key].reshape(-1)[: max(a[key].size - 1, 0)]
    elif kind == "dtype":
        a[key] = a[key].astype(draw(st.sampled_from([np.int64, np.float16, np.float64, np.uint8, np.bool_])))
    if kind != "header":
        return _npz_bytes(a)
    raw = _npz_bytes(a)
    src = put("hdr_src.npz", raw)
    out = os.path.join(_DIR, "hdr_out.npz")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            d = zin.read(info)
            if info.filename == key + ".npy":
                end = d.index(b"\n")
                i, j = d.index(b"'shape': (") + len(b"'shape': ("), d.index(b")", d.index(b"'shape': ("))
                new = b"1000000000000," if j == i else b"1000000000000" + d[d.index(b",", i) if b"," in d[i:j] else j: j]
                grow = len(new) - (j - i)
                if d[end - grow : end] == b" " * grow:
                    d = d[:i] + new + d[j : end - grow] + d[end:]
            zout.writestr(info, d)
    return open(out, "rb").read()


@settings(max_examples=SWEEP_EXAMPLES)
@given(npz_edit(GEOMETRY))
def test_geometry_npz(raw):
    path = put("geometry.npz", raw)

    def check(g):
        finite(g.depths, g.intrinsics, g.poses_c2w)
        with np.load(path, allow_pickle=False) as z:  # the file as NumPy reads it
            np.testing.assert_array_equal(g.depths, z["depths"].astype(np.float32))
            close(g.intrinsics, z["intrinsics"])
            close(g.poses_c2w, z["poses_c2w"])

    attempt("geometry.npz", lambda: F.read_geometry_npz(path), check)


def _memory_good():
    import memtest_lib as lib

    mem = M.empty(40, lib.C)
    rng = np.random.default_rng(3)
    for i in range(2):
        lat, depth = lib.random_frame(rng, hole_fraction=0.3)
        mem = M.write(mem, lat, depth, lib.K_image(), lib.pose(t=(0.2 * i, 0, 0)))
    p = M.save(mem, os.path.join(_DIR, "good_mem.npz"))
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    M.save(mem, os.path.join(_DIR, "good_mem.safetensors"))
    return arrays


@pytest.fixture(scope="module")
def memory_arrays():
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "memory"))
    return _memory_good()


def _check_memory_equals_file(path, mem):
    with np.load(path, allow_pickle=False) as z:
        for name in ("points", "valid", "step", "weight", "count", "cursor", "frames", "written"):
            np.testing.assert_array_equal(np.asarray(getattr(mem, name)), z[name])
    finite(mem.points, mem.features.astype(np.float32), mem.weight)
    assert int(mem.count) == int(np.asarray(mem.valid).sum()) <= mem.capacity
    assert 0 <= int(mem.cursor) < mem.capacity


META_EDITS = [
    lambda m: b"\xff\xfe",
    lambda m: b"[]",
    lambda m: b"{",
    lambda m: json.dumps({**m, "capacity": 10**12}).encode(),
    lambda m: json.dumps({**m, "capacity": 41}).encode(),
    lambda m: json.dumps({**m, "channels": 0}).encode(),
    lambda m: json.dumps({**m, "features_dtype": "object"}).encode(),
    lambda m: json.dumps({**m, "features_dtype": ["x"]}).encode(),
    lambda m: json.dumps({**m, "config": {"policy": 3}}).encode(),
    lambda m: json.dumps({**m, "config": None}).encode(),
    lambda m: json.dumps({**m, "version": 2}).encode(),
    lambda m: json.dumps({k: v for k, v in m.items() if k != "format"}).encode(),
]


@settings(max_examples=SWEEP_EXAMPLES)
@given(st.data())
def test_memory_npz(memory_arrays, data):
    arrays = dict(memory_arrays)
    kind = data.draw(st.sampled_from(["arrays", "arrays", "counter", "counter", "meta"]))
    if kind == "counter":
        name = data.draw(st.sampled_from(["count", "cursor", "frames", "written", "inserted", "dropped", "evicted"]))
        arrays[name] = np.int32(data.draw(st.sampled_from([-1, 0, 1, 20, 39, 40, 41, 999, 2**31 - 1])))
        raw = _npz_bytes(arrays)
    elif kind == "meta":
        meta = json.loads(arrays["__meta__"].tobytes())
        arrays["__meta__"] = np.frombuffer(data.draw(st.sampled_from(META_EDITS))(meta), np.uint8)
        raw = _npz_bytes(arrays)
    else:
        raw = data.draw(npz_edit({k: v for k, v in arrays.items()}))
    path = put("mem.npz", raw)
    attempt("memory .npz", lambda: M.load(path), lambda mem: _check_memory_equals_file(path, mem))


@settings(max_examples=SWEEP_EXAMPLES)
@given(st.data())
def test_memory_safetensors(memory_arrays, data):
    good = open(os.path.join(_DIR, "good_mem.safetensors"), "rb").read()
    raw = data.draw(byte_edit(good))
    path = put("mem.safetensors", raw)

    def check(mem):
        # A byte edit that still loads changed data bytes or padding: the memory equals the file
        # as the official library reads it (and is consistent).
        import safetensors

        with safetensors.safe_open(path, framework="numpy") as f:
            for name in ("points", "features", "valid", "step", "weight", "count", "cursor", "written"):
                np.testing.assert_array_equal(np.asarray(getattr(mem, name)).reshape(-1), f.get_tensor(name).reshape(-1))
        finite(mem.points, mem.features.astype(np.float32), mem.weight)
        assert int(mem.count) == int(np.asarray(mem.valid).sum()) <= mem.capacity

    attempt("memory .safetensors", lambda: M.load(path), check)


# ----------------------------------------------------------------------------------------------
# safetensors headers, against the official library.
# ----------------------------------------------------------------------------------------------

ST_ARRAYS = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
             "c": np.arange(3, dtype=np.uint8)}


def _st_good():
    path = os.path.join(_DIR, "good.safetensors")
    save_safetensors(path, ST_ARRAYS, metadata={"format": "pt"})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


ST_HEADER, ST_DATA = _st_good()


@st.composite
def st_edit(draw):
    header = json.loads(json.dumps(ST_HEADER))
    kind = draw(st.sampled_from(["offset", "shift", "shift", "shape", "dtype", "drop", "meta", "bytes", "data"]))
    name = draw(st.sampled_from(sorted(ST_ARRAYS)))
    data = ST_DATA
    if kind == "bytes":
        text = json.dumps(header).encode()
        return draw(byte_edit(struct.pack("<Q", len(text)) + text + data))
    if kind == "offset":
        i = draw(st.integers(0, 1))
        header[name]["data_offsets"][i] += draw(st.sampled_from([-8, -1, 1, 4, 8, 10**6, -(10**6)]))
    elif kind == "shift":  # moves a whole tensor: overlaps, gaps, out of bounds, or swaps
        k = draw(st.sampled_from([-8, -4, -1, 1, 3, 8, 24]))
        header[name]["data_offsets"] = [o + k for o in header[name]["data_offsets"]]
    elif kind == "shape":
        header[name]["shape"] = draw(st.sampled_from([[], [0], [6], [3, 2], [1, 6], [2, 3, 1], [-6], [6.0], "6"]))
    elif kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(["F16", "I32", "U8", "BF16", "F64", "X9", 4, None]))
    elif kind == "drop":
        del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "meta":
        header["__metadata__"] = draw(st.sampled_from([{"k": 1}, ["k"], "k", {"k": None}, {}, None, {"k": "v"}]))
    else:
        data = data[: draw(st.integers(0, len(data)))] + bytes(draw(st.integers(0, 9)))
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@settings(max_examples=SWEEP_EXAMPLES)
@given(st_edit())
def test_safetensors_headers_agree_with_the_official_library(raw):
    safetensors = pytest.importorskip("safetensors")
    path = put("x.safetensors", raw)
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            want = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - the oracle's own error types
        want = None

    def check(got):
        assert want is not None, "accepted a file the official library rejects"
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            np.testing.assert_array_equal(got[k], want[k])

    attempt("safetensors", lambda: dict(SafetensorsFile(path)), check)
