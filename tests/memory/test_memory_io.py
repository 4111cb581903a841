"""save / load round trips (npz, safetensors), error reporting, and PLY export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memtest_lib as lib
from mirage_jax import memory as M
from mirage_jax.geometry import CameraError

K = lib.K_image()
I4 = np.eye(4, dtype=np.float32)


def _filled(dtype=jnp.float32, **options):
    rng = np.random.default_rng(0)
    mem = M.empty(30, lib.C, dtype, **options)
    for i in range(2):
        lat, depth = lib.random_frame(rng, hole_fraction=0.2)
        mem = M.write(mem, lat, depth, K, lib.pose(t=(0.3 * i, 0, 0)))
    return mem


def _equal(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize(
    "dtype,options",
    [
        (jnp.float32, {}),
        (jnp.bfloat16, {"policy": "fuse", "voxel_size": 0.2, "fuse_mode": "replace", "convention": "centred"}),
    ],
)
def test_save_load_round_trip_is_exact_and_continues(tmp_path, suffix, dtype, options):
    mem = _filled(dtype, **options)
    assert int(mem.evicted) > 0 or options  # counters are non-trivial
    path = M.save(mem, tmp_path / f"mem{suffix}")
    loaded = M.load(path)
    assert _equal(mem, loaded) and loaded.config == mem.config
    # Continuing from the loaded memory gives exactly what continuing the original gives.
    lat, depth = lib.random_frame(np.random.default_rng(5))
    assert _equal(M.write(mem, lat, depth, K, I4), M.write(loaded, lat, depth, K, I4))


def test_load_errors_name_the_file_and_the_problem(tmp_path):
    mem = _filled()
    good = M.save(mem, tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def write(name, **changes):
        a = dict(arrays)
        for k, v in changes.items():
            if v is None:
                a.pop(k)
            else:
                a[k] = v
        path = tmp_path / name
        np.savez(path, **a)
        return path

    p = write("missing.npz", valid=None)
    with pytest.raises(M.LatentMemoryError, match=rf"{p}: missing key 'valid'"):
        M.load(p)
    p = write("shape.npz", features=np.zeros((30, 5), np.float32))
    with pytest.raises(M.LatentMemoryError, match=r"shape.npz: key 'features' has shape \[30, 5\], expected \[30, 3\]"):
        M.load(p)
    p = write("dtype.npz", step=arrays["step"].astype(np.int64))
    with pytest.raises(M.LatentMemoryError, match="dtype.npz: key 'step' has dtype int64"):
        M.load(p)
    p = write("extra.npz", junk=np.zeros(3))
    with pytest.raises(M.LatentMemoryError, match=r"unexpected key\(s\) \['junk'\]"):
        M.load(p)
    p = write("nometa.npz", __meta__=None)
    with pytest.raises(M.LatentMemoryError, match="nometa.npz: missing key '__meta__'"):
        M.load(p)
    meta = json.loads(arrays["__meta__"].tobytes())
    meta["config"]["policy"] = "lru"
    p = write("badopt.npz", __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(M.LatentMemoryError, match="badopt.npz: invalid options in metadata: policy must be one of"):
        M.load(p)
    p = write("pickle.npz", step=np.array([{"a": 1}], dtype=object))
    with pytest.raises(M.LatentMemoryError, match="pickle.npz: key 'step': cannot be loaded without pickle"):
        M.load(p)
    with pytest.raises(M.LatentMemoryError, match="absent.npz: no such memory file"):
        M.load(tmp_path / "absent.npz")
    with pytest.raises(M.LatentMemoryError, match="unknown memory file extension '.pt'"):
        M.save(mem, tmp_path / "mem.pt")
    (tmp_path / "notmem.safetensors").write_bytes(b"garbage")
    with pytest.raises(M.LatentMemoryError, match="notmem.safetensors: not a readable .safetensors file"):
        M.load(tmp_path / "notmem.safetensors")


def _read_ply(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n = int(next(line for line in header if line.startswith("element vertex")).split()[-1])
    fmt = next(line for line in header if line.startswith("format")).split()[1]
    if fmt == "binary_little_endian":
        vertex = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")]
        rec = np.frombuffer(data[end:], dtype=vertex)
        assert len(rec) == n
        return np.stack([rec["x"], rec["y"], rec["z"]], 1), np.stack([rec["r"], rec["g"], rec["b"]], 1)
    rows = np.array([line.split() for line in data[end:].decode("ascii").strip().splitlines()], dtype=np.float64)
    assert len(rows) == n
    return rows[:, :3].astype(np.float32), rows[:, 3:].astype(np.uint8)


@pytest.mark.parametrize("binary", [True, False])
def test_export_ply_valid_points_with_pca_or_given_colours(tmp_path, binary):
    mem = _filled()
    valid = np.asarray(mem.valid)
    xyz, rgb = _read_ply(M.export_ply(mem, tmp_path / "pca.ply", binary=binary))
    np.testing.assert_array_equal(xyz, np.asarray(mem.points)[valid])
    assert rgb.shape == (valid.sum(), 3) and rgb.min() == 0 and rgb.max() == 255  # percentile-scaled
    # PCA colours are deterministic and follow the features' dominant directions.
    _, rgb2 = _read_ply(M.export_ply(mem, tmp_path / "pca2.ply", binary=binary))
    np.testing.assert_array_equal(rgb, rgb2)
    feats = np.asarray(mem.features)[valid].astype(np.float64)
    feats -= feats.mean(0)
    pc1 = np.linalg.svd(feats, full_matrices=False)[2][0]
    assert abs(np.corrcoef(feats @ pc1, rgb[:, 0].astype(float))[0, 1]) > 0.9
    given = np.random.default_rng(1).integers(0, 256, (mem.capacity, 3)).astype(np.uint8)
    _, rgb3 = _read_ply(M.export_ply(mem, tmp_path / "rgb.ply", rgb=given, binary=binary))
    np.testing.assert_array_equal(rgb3, given[valid])
    with pytest.raises(M.LatentMemoryError, match=r"rgb must be \[N, 3\]"):
        M.export_ply(mem, tmp_path / "bad.ply", rgb=given[:3])
    with pytest.raises(M.LatentMemoryError, match=r"float rgb must be finite and in \[0, 1\]"):
        M.export_ply(mem, tmp_path / "bad.ply", rgb=given.astype(np.float32))


def _rewrite(tmp_path, name, arrays, meta=None, **changes):
    """Saves the arrays of a good memory file with ``changes`` (and optionally new metadata)."""
    a = {**arrays, **changes}
    if meta is not None:
        a["__meta__"] = np.frombuffer(meta if isinstance(meta, bytes) else json.dumps(meta).encode(), np.uint8)
    path = tmp_path / name
    np.savez(path, **a)
    return path


def _good_arrays(tmp_path):
    """A consistent, partly filled memory (64 slots, one frame) saved as good.npz."""
    lat, depth = lib.random_frame(np.random.default_rng(0), hole_fraction=0.2)
    good = M.save(M.write(M.empty(64, lib.C), lat, depth, K, I4), tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: {"count": np.int32(999)}, "count 999 exceeds the capacity 64"),
        (lambda a: {"cursor": np.int32(-1)}, "counter 'cursor' is negative"),
        (lambda a: {"cursor": np.int32(64)}, r"cursor 64 is outside the ring \[0, 64\)"),
        (lambda a: {"valid": np.ones(64, bool)}, r"count says \d+ entries but 64 slots are marked valid"),
        (lambda a: {"count": np.int32(20)}, "count says 20 entries but"),
        (lambda a: {"dropped": np.int32(a["dropped"] + 1)}, "written .* != inserted"),
        (lambda a: {"evicted": np.int32(-5)}, "counter 'evicted' is negative"),
        (lambda a: {"points": np.full((64, 3), np.nan, np.float32)}, "non-finite points"),
        (lambda a: {"step": np.full(64, 99, np.int32)}, r"step outside \[0, frames=1\)"),
        (lambda a: {"weight": np.zeros(64, np.float32)}, "weight >= 1"),
    ],
)
def test_load_refuses_counters_that_contradict_the_arrays(tmp_path, change, match):
    arrays = _good_arrays(tmp_path)
    assert 0 < int(arrays["count"]) < 64  # the good file is consistent and partly filled
    M.load(tmp_path / "good.npz")
    p = _rewrite(tmp_path, "bad.npz", arrays, **change(arrays))
    with pytest.raises(M.MemoryFileError, match=f"bad.npz: .*{match}"):
        M.load(p)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: b"\xff\xfe not utf-8", "corrupt metadata: not UTF-8"),
        (lambda m: [1, 2], "expected a JSON object, got list"),
        (lambda m: {**m, "capacity": "30"}, "metadata 'capacity' must be an int"),
        (lambda m: {**m, "capacity": True}, "metadata 'capacity' must be an int"),
        (lambda m: {**m, "channels": -3}, "metadata 'channels' must be an int"),
        (lambda m: {**m, "features_dtype": 7}, "'features_dtype' 7 is not a dtype"),
        (lambda m: {**m, "features_dtype": "complex64"}, "must be a float or integer dtype"),
        (lambda m: {**m, "config": [1]}, "invalid options in metadata"),
        (lambda m: {**m, "config": {"voxel_size": "big"}}, "invalid options in metadata"),
        (lambda m: {**m, "version": True}, "unsupported memory format version True"),
    ],
)
def test_load_bad_metadata_raises_naming_the_file(tmp_path, edit, match):
    arrays = _good_arrays(tmp_path)
    meta = json.loads(arrays["__meta__"].tobytes())
    p = _rewrite(tmp_path, "meta.npz", arrays, meta=edit(meta))
    with pytest.raises(M.MemoryFileError, match=f"meta.npz: .*{match}"):
        M.load(p)


def _npy_claiming(data: bytes, old: bytes, new: bytes) -> bytes:
    """An .npy member whose header says ``new`` instead of ``old`` (padding kept, data kept)."""
    end = data.index(b"\n")
    i = data.index(old)
    grow = len(new) - len(old)
    assert data[end - grow : end] == b" " * grow
    return data[:i] + new + data[i + len(old) : end - grow] + data[end:]


def test_load_checks_npz_member_sizes_before_allocating(tmp_path):
    import zipfile

    arrays = _good_arrays(tmp_path)
    src = tmp_path / "good.npz"
    dst = tmp_path / "huge.npz"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "points.npy":  # the header claims 1e12 x 3 float32
                data = _npy_claiming(data, b"(64, 3)", b"(1000000000000, 3)")
            zout.writestr(info, data)
    assert "points" in arrays
    with pytest.raises(M.MemoryFileError, match=r"huge.npz: key 'points': header claims"):
        M.load(dst)


def test_memory_errors_are_project_errors():
    from mirage_jax.errors import FileFormatError, InputError

    assert issubclass(M.LatentMemoryError, InputError)
    assert issubclass(M.MemoryFileError, M.LatentMemoryError) and issubclass(M.MemoryFileError, FileFormatError)


def test_write_and_read_refuse_intrinsics_of_another_resolution():
    rng = np.random.default_rng(1)
    lat, depth = lib.random_frame(rng)
    mem = M.empty(lib.CAP, lib.C)
    big = lib.K_image(cx=8 * lib.W, cy=lib.H / 2)  # principal point 8x outside the depth map
    with pytest.raises(CameraError, match=r"intrinsics: principal point .* far outside the 8 x 12 image"):
        M.write(mem, lat, depth, big, I4)
    with pytest.raises(CameraError, match=r"principal point"):
        M.write_frames(mem, lat[None], depth[None], big, I4[None])
    mem = M.write(mem, lat, depth, K, I4)
    with pytest.raises(CameraError, match=r"principal point"):
        M.read(mem, big, I4, lib.IMAGE_HW, lib.LATENT_HW)
    with pytest.raises(CameraError, match=r"principal point"):
        M.read_many(mem, big, I4[None], lib.IMAGE_HW, lib.LATENT_HW)
    # The edges of the documented rule (cx in [-W, 2W], cy in [-H, 2H]) are accepted.
    edge = lib.K_image(cx=2 * lib.W, cy=-lib.H)
    assert M.read(mem, edge, I4, lib.IMAGE_HW, lib.LATENT_HW).hit.shape == lib.LATENT_HW
