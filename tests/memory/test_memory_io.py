"""save / load round trips (npz, safetensors), error reporting, and PLY export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memtest_lib as lib
from mirage_jax import memory as M

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
    with pytest.raises(M.LatentMemoryError, match="pickle.npz: cannot read without pickles"):
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
