"""grain pipelines over the TFDS sources: sampling, shuffling, sharding, resume, device placement."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap

import grain
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mirage_jax.data import pipeline as PL
from mirage_jax.sharding import make_mesh


def _cfg(data_dir, **kw):
    base = dict(dataset="synthetic_worlds/tiny", data_dir=str(data_dir), batch_size=2, num_frames=4, read_threads=0)
    base.update(kw)
    return PL.PipelineConfig(**base)


def _ids(batch):
    return [str(s) for s in batch["scene_id"]]


def _assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit-for-bit


def _long_clip(i: int, T: int = 24, H: int = 4, W: int = 4):
    rng = np.random.default_rng(100 + i)
    K = np.tile(np.array([[5.0, 0, 2], [0, 5.0, 2], [0, 0, 1]], np.float32), (T, 1, 1))
    c2w = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    c2w[:, 0, 3] = np.arange(T)  # x = frame position: identifies the frame
    return {
        "frames": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        "depth": rng.uniform(1, 2, (T, H, W)).astype(np.float16),
        "dynamic_mask": rng.random((T, H, W)) > 0.7,
        "sky_mask": rng.random((T, H, W)) > 0.8,
        "intrinsics": K,
        "cam2world": c2w,
        "scene_id": f"clip{i}".encode(),
        "caption": b"",
    }


def test_round_trip_tfds_to_grain_without_tensorflow(tiny_builder, tfds_data_dir, tiny_source):
    by_id = {ex["scene_id"].decode(): ex for ex in tiny_source}
    it = PL.make_iterator(_cfg(tfds_data_dir, frame_stride=2))
    batch = next(it)
    B, T = 2, 4
    assert batch["frames"].shape == (B, T, 64, 64, 3) and batch["frames"].dtype == np.float32
    assert batch["depth"].shape == (B, T, 64, 64) and batch["depth"].dtype == np.float32
    assert batch["intrinsics"].shape == (B, T, 3, 3) and batch["cam2world"].shape == (B, T, 4, 4)
    assert batch["keep_mask"].dtype == np.bool_ and batch["clip_indices"].dtype == np.int32
    assert -1.0 <= batch["frames"].min() and batch["frames"].max() <= 1.0
    assert batch["seed"].dtype == np.int64 and batch["fov_deg"].dtype == np.float32 and batch["shadows"].dtype == np.bool_
    assert batch["scene_id"].dtype.kind == "U" and batch["scene_id"].shape == (B,)
    for b, sid in enumerate(_ids(batch)):
        src = by_id[sid]
        idx = batch["clip_indices"][b]
        np.testing.assert_array_equal(np.diff(idx), 2)
        np.testing.assert_array_equal(batch["frames"][b], src["frames"][idx].astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(PL.denormalize_frames(batch["frames"][b]), src["frames"][idx])
        np.testing.assert_array_equal(batch["depth"][b], src["depth"][idx].astype(np.float32))
        np.testing.assert_array_equal(batch["cam2world"][b], src["cam2world"][idx])
        np.testing.assert_array_equal(batch["keep_mask"][b], ~src["dynamic_mask"][idx] & ~src["sky_mask"][idx])
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


def test_epochs_are_seeded_permutations(tiny_builder, tfds_data_dir):
    def order(seed):
        it = PL.make_iterator(_cfg(tfds_data_dir, seed=seed, num_epochs=2, batch_size=1))
        return [_ids(b)[0] for b in it]

    a, a2, b = order(0), order(0), order(1)
    assert len(a) == 12
    assert a == a2
    assert sorted(a[:6]) == sorted(a[6:]) and len(set(a[:6])) == 6  # each epoch is a permutation
    assert a[:6] != a[6:]  # reshuffled each epoch
    assert a != b
    unshuffled = PL.make_iterator(_cfg(tfds_data_dir, shuffle=False, num_epochs=1, batch_size=1))
    assert [_ids(x)[0] for x in unshuffled] == [PL._scene(e) for e in PL.make_data_source("synthetic_worlds/tiny", "train", str(tfds_data_dir))]


def test_window_sampling_reproducible_per_example_and_epoch():
    clips = [_long_clip(i) for i in range(3)]
    cfg = PL.PipelineConfig(batch_size=1, num_frames=5, frame_stride=3, shuffle=False, num_epochs=4, read_threads=0)
    starts = [int(b["clip_indices"][0, 0]) for b in PL.make_iterator(cfg, source=clips)]
    again = [int(b["clip_indices"][0, 0]) for b in PL.make_iterator(cfg, source=clips)]
    assert starts == again
    assert all(0 <= s <= 24 - 13 for s in starts)
    per_clip = [starts[i::3] for i in range(3)]
    assert any(len(set(p)) > 1 for p in per_clip)  # a new window in a new epoch
    other = [int(b["clip_indices"][0, 0]) for b in PL.make_iterator(PL.PipelineConfig.from_config(cfg, seed=7), source=clips)]
    assert other != starts
    with pytest.raises(ValueError, match="clip0.*needs 73"):
        next(PL.make_iterator(cfg, source=clips, num_frames=25))


def test_sharding_two_processes_partitions_data(tiny_builder, tfds_data_dir):
    def shard_ids(i, n=2, drop=False):
        opts = grain.sharding.ShardOptions(shard_index=i, shard_count=n, drop_remainder=drop)
        it = PL.make_iterator(_cfg(tfds_data_dir, num_epochs=1, batch_size=n), shard_options=opts)
        return [s for b in it for s in _ids(b)]

    s0, s1 = shard_ids(0), shard_ids(1)
    assert len(s0) == len(s1) == 3
    assert not set(s0) & set(s1)
    all_ids = {PL._scene(e) for e in PL.make_data_source("synthetic_worlds/tiny", "train", str(tfds_data_dir))}
    assert set(s0) | set(s1) == all_ids
    # 4 processes over 6 clips: with drop_remainder every process sees the same number (1).
    parts = [shard_ids(i, 4, drop=True) for i in range(4)]
    assert [len(p) for p in parts] == [1, 1, 1, 1] and len(set(sum(parts, []))) == 4
    # The default shards by JAX process: a single process reads everything.
    default = PL.resolve_shard(None, True)
    assert (default.shard_index, default.shard_count) == (jax.process_index(), jax.process_count())
    with pytest.raises(ValueError, match="not divisible"):
        PL.make_dataset(_cfg(tfds_data_dir, batch_size=3), shard_options=grain.sharding.ShardOptions(0, 2))


def test_iterator_resume_is_exact(tiny_builder, tfds_data_dir, tmp_path):
    cfg = _cfg(tfds_data_dir, sampling="mirage", num_target_frames=5, num_preceding_frames=0, num_reference_frames=2, read_threads=2)
    k, m = 4, 5  # 4 batches of 2 = 8 > 6 clips: resuming crosses an epoch boundary
    it = PL.make_iterator(cfg)
    for _ in range(k):
        next(it)
    state = it.get_state()
    raw = PL.iterator_state_to_bytes(it)
    assert json.loads(raw) == state
    reference = [next(it) for _ in range(m)]

    fresh = PL.make_iterator(cfg)
    fresh.set_state(state)
    _assert_trees_equal([next(fresh) for _ in range(m)], reference)

    from_bytes = PL.restore_iterator_state(PL.make_iterator(cfg), raw)
    _assert_trees_equal([next(from_bytes) for _ in range(m)], reference)

    # Through orbax with grain's checkpoint handler.
    import orbax.checkpoint as ocp

    it2 = PL.make_iterator(cfg)
    for _ in range(k):
        next(it2)
    ckptr = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
    ckptr.save(tmp_path / "ckpt" / "data", args=grain.checkpoint.CheckpointSave(it2))
    restored = ckptr.restore(tmp_path / "ckpt" / "data", args=grain.checkpoint.CheckpointRestore(PL.make_iterator(cfg)))
    _assert_trees_equal([next(restored) for _ in range(m)], reference)


def test_mirage_sample_construction():
    clips = [_long_clip(i, T=60) for i in range(4)]
    cfg = PL.PipelineConfig(
        sampling="mirage", batch_size=2, num_target_frames=33, num_preceding_frames=8, num_reference_frames=3,
        read_threads=0, num_epochs=2,
    )
    n_batches = 0
    for batch in PL.make_iterator(cfg, source=clips):
        n_batches += 1
        tgt, pre, ref = batch["target"], batch["preceding"], batch["references"]
        assert tgt["frames"].shape == (2, 33, 4, 4, 3) and pre["frames"].shape == (2, 8, 4, 4, 3)
        assert tgt["latent_cam2world"].shape == (2, 9, 4, 4) and pre["latent_cam2world"].shape == (2, 2, 4, 4)
        for b in range(2):
            t0 = int(batch["t0"][b])
            assert 8 <= t0 <= 60 - 33
            np.testing.assert_array_equal(tgt["clip_indices"][b], np.arange(t0, t0 + 33))
            np.testing.assert_array_equal(pre["clip_indices"][b], np.arange(t0 - 8, t0))
            np.testing.assert_array_equal(tgt["latent_positions"][b], np.arange(0, 33, 4))
            np.testing.assert_array_equal(tgt["latent_clip_indices"][b], t0 + np.arange(0, 33, 4))
            np.testing.assert_array_equal(pre["latent_clip_indices"][b], [t0 - 8, t0 - 4])
            # cam2world x-translation encodes the clip position of each frame.
            np.testing.assert_array_equal(tgt["latent_cam2world"][b, :, 0, 3], t0 + np.arange(0, 33, 4))
            np.testing.assert_array_equal(pre["cam2world"][b, :, 0, 3], np.arange(t0 - 8, t0))
            src = clips[int(str(batch["scene_id"][b])[4:])]
            np.testing.assert_array_equal(PL.denormalize_frames(tgt["frames"][b]), src["frames"][t0 : t0 + 33])
            refs = ref["clip_indices"][b]
            valid = ref["valid"][b]
            assert valid.all()  # 60 frames leave enough on-grid candidates outside the window
            assert np.all((refs < t0 - 8) | (refs >= t0 + 33)) and np.all((refs - t0) % 4 == 0)
            assert len(set(refs.tolist())) == 3 and np.all(np.diff(refs) > 0)
            np.testing.assert_array_equal(ref["cam2world"][b, :, 0, 3], refs)
    assert n_batches == 4
    too_short = [_long_clip(0, T=40)]
    with pytest.raises(ValueError, match="8 preceding \\+ 33 target"):
        next(PL.make_iterator(cfg, source=too_short, batch_size=1))
    short_refs = PL.make_iterator(cfg, source=[_long_clip(0, T=41)], batch_size=1, num_reference_frames=2)
    b = next(short_refs)
    assert not b["references"]["valid"].any()  # the window covers the whole clip: padding only


def test_config_validation_and_ml_collections(tfds_data_dir):
    cd = ml_collections.ConfigDict(dict(dataset="synthetic_worlds/tiny", batch_size=4, sampling="mirage", num_target_frames=9))
    cfg = PL.PipelineConfig.from_config(cd, data_dir=str(tfds_data_dir))
    assert cfg.batch_size == 4 and cfg.num_target_frames == 9 and cfg.data_dir == str(tfds_data_dir)
    assert PL.PipelineConfig.from_config(cfg.to_config_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PipelineConfig fields"):
        PL.PipelineConfig.from_config({"batchsize": 2})
    with pytest.raises(ValueError, match="4k \\+ 1"):
        PL.PipelineConfig(sampling="mirage", num_target_frames=32)
    with pytest.raises(ValueError, match="sampling"):
        PL.PipelineConfig(sampling="random")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        PL.make_data_source("synthetic_worlds/small_128", "train", str(tfds_data_dir))


def test_put_on_mesh_global_array(tiny_builder, tfds_data_dir):
    mesh = make_mesh((4, 2), ("data", "fsdp"))
    spec = P(("data", "fsdp"))
    it = PL.make_iterator(_cfg(tfds_data_dir, batch_size=8, keys=("frames", "cam2world", "scene_id")), mesh=mesh, spec=spec)
    batch = next(it)
    assert isinstance(batch["frames"], jax.Array) and batch["frames"].shape == (8, 4, 64, 64, 3)
    assert batch["frames"].sharding.spec == spec
    assert len(batch["frames"].addressable_shards) == 8
    assert all(s.data.shape == (1, 4, 64, 64, 3) for s in batch["frames"].addressable_shards)
    assert isinstance(batch["scene_id"], np.ndarray) and batch["scene_id"].shape == (8,)
    host = next(PL.make_iterator(_cfg(tfds_data_dir, batch_size=8, keys=("frames", "cam2world", "scene_id"))))
    np.testing.assert_array_equal(np.asarray(batch["frames"]), host["frames"])
    assert PL.default_batch_spec(mesh) == P(("data", "fsdp"))
    placed = PL.put_on_mesh({"seed": np.arange(8, dtype=np.int64)}, mesh)
    assert placed["seed"].dtype == (np.int64 if jax.config.jax_enable_x64 else np.int32)
    if not jax.config.jax_enable_x64:
        with pytest.raises(OverflowError, match="timestamps"):
            PL.put_on_mesh({"timestamps": np.full(8, 2**40, np.int64)}, mesh)


_TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    pid, port = int(sys.argv[1]), sys.argv[2]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    from jax.sharding import Mesh, PartitionSpec as P
    from mirage_jax.data.pipeline import put_on_mesh

    devs = np.array(jax.devices()).reshape(2, 4)  # row p = the devices of process p
    local = {"x": np.full((4, 3), pid, np.float32), "id": np.array([f"p{pid}"] * 4)}
    # Batch axis over both processes: each process's 4 examples are its half of a batch of 8.
    out = put_on_mesh(local, Mesh(devs, ("data", "model")), P(("data", "model")))
    assert out["x"].shape == (8, 3), out["x"].shape
    rows = sorted({float(s.data[0, 0]) for s in out["x"].addressable_shards})
    assert rows == [float(pid)], rows  # this process's devices hold this process's examples
    assert out["id"].shape == (4,)
    # Batch axis within each process, "model" across them: different examples per process
    # cannot be placed (inferring the shape would give a batch of 4 with diverging replicas).
    bad = Mesh(devs.T, ("data", "model"))
    try:
        put_on_mesh(local, bad, P("data"))
    except ValueError as err:
        assert "cannot be placed" in str(err), err
    else:
        raise AssertionError("placed different per-process batches on a mesh whose batch axis is per process")
    # ... but the same whole batch on every process can (num_batch_shards=1).
    same = put_on_mesh({"x": np.arange(12, dtype=np.float32).reshape(4, 3)}, bad, P("data"), num_batch_shards=1)
    assert same["x"].shape == (4, 3), same["x"].shape
    print("OK", pid)
    """
)


def test_put_on_mesh_two_processes(tmp_path):
    """Two JAX processes (4 CPU devices each): the global batch shape is explicit, never inferred."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "two_process.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), str(port)], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"OK {i}" in out, out[-3000:]


def test_make_dataset_mesh_needs_one_shard_per_process():
    mesh = make_mesh((8,), ("data",))
    with pytest.raises(ValueError, match="one shard per process"):
        PL.make_dataset(
            PL.PipelineConfig(batch_size=8, read_threads=0), source=[_long_clip(0)] * 4, mesh=mesh,
            shard_options=grain.sharding.ShardOptions(shard_index=0, shard_count=2),
        )


def test_pipelines_that_would_yield_nothing_raise_before_iterating():
    from mirage_jax.errors import ConfigError, InputError

    clips = [_long_clip(i, T=6) for i in range(3)]
    base = dict(batch_size=1, num_frames=2, shuffle=False, read_threads=0)
    # One epoch of 3 clips never fills a batch of 4: no silent empty iterator.
    with pytest.raises(InputError, match=r"batch_size=4 .* exceeds the 3 examples .*num_epochs=1"):
        PL.make_dataset(PL.PipelineConfig(**{**base, "batch_size": 4}, num_epochs=1), source=clips)
    # ... nor do two grain workers with 2 clips at most each.
    with pytest.raises(InputError, match="worker_count=2 workers"):
        PL.make_dataset(PL.PipelineConfig(**{**base, "batch_size": 3}, num_epochs=1, worker_count=2), source=clips)
    # Enough epochs, keeping the remainder or repeating forever: batches come.
    assert len(list(PL.make_iterator(PL.PipelineConfig(**{**base, "batch_size": 4}, num_epochs=2), source=clips))) == 1
    kept = list(PL.make_iterator(PL.PipelineConfig(**{**base, "batch_size": 4}, num_epochs=1, drop_remainder=False), source=clips))
    assert [len(b["scene_id"]) for b in kept] == [3]
    assert next(PL.make_iterator(PL.PipelineConfig(**{**base, "batch_size": 4}), source=clips))["frames"].shape[0] == 4
    # An empty source, and more shards than examples (truncated to a multiple of the count).
    with pytest.raises(InputError, match="the source has no examples"):
        PL.make_dataset(PL.PipelineConfig(**base), source=[])
    with pytest.raises(InputError, match=r"shard 0 of 4 .* 3 examples truncated"):
        PL.make_dataset(PL.PipelineConfig(**{**base, "batch_size": 4}), source=clips, shard_options=grain.sharding.ShardOptions(0, 4, True))
    with pytest.raises(ConfigError, match="keys"):
        PL.PipelineConfig(keys=())
