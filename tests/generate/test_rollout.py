"""The chunked rollout on a tiny random model over 3 chunks (spec 5, 10.7): determinism, chunk plan
and latent pose alignment, memory writes per chunk, reference retrieval by voxel IoU, one trace."""

import jax
import numpy as np
import pytest

from mirage_jax import memory
from mirage_jax.data.worlds import make_clip
from mirage_jax.diffusion import FlowEuler
from mirage_jax.errors import InputError
from mirage_jax.generate.denoise import TRACE_COUNTS
from mirage_jax.generate.pipeline import tiny_pipeline
from mirage_jax.generate.providers import GeometryDepth, GeometryMask
from mirage_jax.generate.rollout import Rollout, RolloutConfig, chunk_plan, rollout, set_step_hook

HW = (32, 64)
CHUNKS = 3
CELLS = (HW[0] // 16) * (HW[1] // 16)


@pytest.fixture(scope="module")
def run():
    clip = make_clip(3, HW, 33 + 32 * (CHUNKS - 1), kind="indoor")
    pipe = tiny_pipeline(0)
    text = pipe.encode_text("a room")
    cfg = RolloutConfig(num_chunks=CHUNKS, image_hw=HW)
    sampler = FlowEuler(num_steps=2)
    args = (pipe.model, pipe.vae, text, clip["intrinsics"][0], clip["cam2world"])
    # masks on write-back (the dynamic objects), as the CLI's --masks
    kw = dict(depth=GeometryDepth(clip["depth"]), mask=GeometryMask(~clip["dynamic_mask"]), sampler=sampler, config=cfg)
    before = dict(TRACE_COUNTS)
    r = Rollout(*args, **kw)
    r.init(clip["frames"][0], clip["depth"][0], clip["dynamic_mask"][0])
    steps = []
    set_step_hook(steps.append)  # the progress bar's hook: once per sampler step
    try:
        r.chunk()
        r.chunk()
        snap = jax.tree.map(np.asarray, r.state._replace(key=None))  # before chunk 3 (the write donates the state)
        r.chunk()
    finally:
        set_step_hook(None)
    a = r.result()
    traces = {k: TRACE_COUNTS[k] - before.get(k, 0) for k in ("rollout_chunk", "rollout_write", "rollout_init")}
    b = rollout(pipe.model, pipe.vae, clip["frames"][0], clip["intrinsics"][0], clip["cam2world"], text,
                first_depth=clip["depth"][0], first_exclude=clip["dynamic_mask"][0], **kw)
    traces_again = {k: TRACE_COUNTS[k] - before.get(k, 0) for k in traces}
    return dict(clip=clip, a=a, b=b, snap=snap, traces=traces, traces_again=traces_again, steps=steps)


def test_deterministic_and_compiled_once(run):
    a, b = run["a"], run["b"]
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert [c["reference_latents"] for c in a.chunks] == [c["reference_latents"] for c in b.chunks]
    # at most one trace of each program for 3 chunks (none if an earlier test compiled them),
    # and none for a second rollout
    assert all(v <= 1 for v in run["traces"].values()), run["traces"]
    assert run["traces_again"] == run["traces"]
    assert sorted(run["steps"]) == [0, 0, 0, 1, 1, 1]  # 3 chunks x 2 sampler steps reported


def test_chunk_plan_and_memory_written_at_the_latent_poses(run):
    a, clip = run["a"], run["clip"]
    assert a.video.shape == (33 + 32 * (CHUNKS - 1), *HW, 3) and a.video.dtype == np.uint8
    assert a.latents.shape[0] == 1 + 8 * CHUNKS
    for c, rec in enumerate(a.chunks):
        assert rec["latent_frames"] == [32 * c + 4 * i for i in range(9)] == chunk_plan(CHUNKS)[c]["latent_frames"]
        assert rec["frames"] == [32 * c, 32 * c + 32]
        assert rec["preceding_latents"] == ([] if c == 0 else [8 * c - 2, 8 * c - 1])
    # written per chunk: 9 latents in chunk 0 (frame 0 re-added, as the reference), 8 later
    seen = [rec["memory"]["written"] + rec["memory"]["rejected"] for rec in a.chunks]
    assert np.diff([CELLS] + seen).tolist() == [9 * CELLS, 8 * CELLS, 8 * CELLS]
    added = [rec["memory_added"] for rec in a.chunks]
    assert np.diff([a.chunks[0]["memory"]["count"] - added[0]] + [r["memory"]["count"] for r in a.chunks]).tolist() == added
    assert all(r["memory"]["evicted"] == r["memory"]["dropped"] == 0 for r in a.chunks)
    assert a.chunks[-1]["memory"]["count"] == a.chunks[-1]["memory"]["written"] <= (1 + 9 + 8 * (CHUNKS - 1)) * CELLS
    # the same memory built by hand: latent g with the depth and pose of pixel frame 4 g
    K, P, D, X = clip["intrinsics"][0], clip["cam2world"], clip["depth"], clip["dynamic_mask"]
    mem = memory.empty(a.memory.capacity, a.latents.shape[-1])
    order = [0, 0] + list(range(1, a.latents.shape[0]))  # init, chunk 0's frame 0 again, then the rest
    for g in order:
        mem = memory.write(mem, a.latents[g], D[4 * g], K, P[4 * g], exclude=X[4 * g])
    np.testing.assert_array_equal(np.asarray(mem.points), np.asarray(a.memory.points))
    np.testing.assert_array_equal(np.asarray(mem.features), np.asarray(a.memory.features))
    # frame 0 of every chunk is the previous chunk's last latent, decoded into the shared frame
    np.testing.assert_array_equal(a.latents[8], run["snap"].latents[8])


def _np_visible_keys(points, valid, K, c2w, hw, voxel=0.1):
    R, t = c2w[:3, :3], c2w[:3, 3]
    X = (points - t) @ R
    z = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(K[0, 0] * X[:, 0] / z + K[0, 2])
        v = np.round(K[1, 1] * X[:, 1] / z + K[1, 2])
    ok = valid & (z > 0) & (u >= 0) & (u < hw[1]) & (v >= 0) & (v < hw[0])
    return {tuple(k) for k in np.floor(points[ok] / np.float32(voxel)).astype(np.int64)}


def test_references_by_voxel_iou(run):
    a, snap, clip = run["a"], run["snap"], run["clip"]
    mem = snap.memory
    pts, valid = np.asarray(mem.points), np.asarray(mem.valid)
    K, P = clip["intrinsics"][0], clip["cam2world"]
    n = int(snap.count)  # 17: chunk 3 starts at latent 16
    start = n - 1
    sets = []
    for g in range(n):
        keys = np.asarray(snap.visible.keys[g][: int(snap.visible.count[g])])
        sets.append({tuple(k) for k in keys.astype(np.int64)})
    # the sets recorded after chunk 2's write are the frusta of the memory at that time
    for g in range(9, n):
        assert sets[g] == _np_visible_keys(pts, valid, K, P[4 * g], HW)
    target = set().union(*(_np_visible_keys(pts, valid, K, P[4 * (start + i)], HW) for i in range(9)))
    iou = [len(s & target) / max(len(s | target), 1) for s in sets]
    cands = [g for g in range(start - 2) if iou[g] >= 0.04]
    want = sorted(cands, key=lambda g: (-iou[g], -g))[:4]
    rec = a.chunks[2]
    assert rec["reference_latents"] == want and len(want) > 0
    np.testing.assert_allclose(rec["reference_iou"], [iou[g] for g in want], rtol=1e-6)
    assert a.chunks[0]["reference_latents"] == []


def test_bad_inputs_before_compute():
    pipe = tiny_pipeline(0)
    text = pipe.encode_text("x")
    K = np.array([[30, 0, 32], [0, 30, 16], [0, 0, 1]], np.float32)
    poses = np.tile(np.eye(4, dtype=np.float32), (40, 1, 1))
    with pytest.raises(InputError, match="40 poses; 2 chunks need 65"):
        Rollout(pipe.model, pipe.vae, text, K, poses, depth=None, config=RolloutConfig(num_chunks=2, image_hw=HW))
    with pytest.raises(InputError, match="multiple of the VAE"):
        Rollout(pipe.model, pipe.vae, text, K, poses, depth=None, config=RolloutConfig(num_chunks=1, image_hw=(40, 64)))
