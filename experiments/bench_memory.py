"""Benchmark of the latent spatial memory and of the RGB point-cloud cache baseline.

Measures, for memories holding N points (default 1e4, 1e5, 1e6, 4e6):

* ``read``: one camera at the 44 x 80 latent grid, C = 48 (projection + deterministic z-buffer);
* ``read_many``: a chunk's 9 latent poses in one call (all cameras in parallel with vmap,
  ``camera_chunk=9``; one camera at a time, ``camera_chunk=1``; and the default, which bounds
  the working set to 2**24 projected points per step);
* ``write``: one 44 x 80 frame into a full memory (ring policy; in place with ``donate=True``,
  and the functional copy ``donate=False`` that keeps the input memory alive);
* ``write_chunk``: 9 latent frames at once (``write_frames``, donated);
* ``write_fuse``: one frame with voxel fusion (O(N log M) lookup of held voxels), donated;
* ``pass``: one jitted pass over the memory's bytes (sum over points + features + valid), the
  physical lower bound of any operation that must touch every point; ratios are given to it;
  ``pass_geometry`` is the pass over points + valid only: what a read must touch (a read
  gathers the features of the h x w winners only, not all N);
* the RGB baseline with N points (uint8 colours): ``render`` at 704 x 1280 pixels and ``write``
  of one full-resolution 704 x 1280 frame (901,120 points, donated).

Times are medians per call after compilation (``block_until_ready``). It also reports the
memory's size per chunk (bytes added per 9-latent-frame chunk at 44 x 80 x 48) next to the
paper's ~0.45 MiB per chunk, and the RGB cache's bytes per chunk.

Usage::

    python experiments/bench_memory.py                  # full sweep, JSON to experiments/results/
    python experiments/bench_memory.py --quick          # 1e4 and 1e5 only, fewer repetitions
    python experiments/bench_memory.py --sizes 1e4,1e6 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import time_calls  # noqa: E402  (experiments/common.py)
from mirage_jax import memory  # noqa: E402
from mirage_jax.geometry.cameras import look_at  # noqa: E402
from mirage_jax.memory import rgb_cache  # noqa: E402

MIB = 2**20


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def timeit(fn, *, min_reps: int, max_reps: int, budget_s: float) -> dict:
    """Median seconds per call after one warm-up (compilation) call; fn returns a pytree."""
    t = time_calls(fn, repeats=min_reps, max_repeats=max_reps, budget_s=budget_s)
    return {k: t[k] for k in ("median_s", "min_s", "reps", "first_call_s")}


def camera(image_hw):
    H, W = image_hw
    f = 0.75 * W
    K = np.array([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], np.float32)
    return K


def filled_memory(n: int, channels: int, dtype, image_hw, seed: int, rgb: bool = False, **options):
    """A memory with n valid points spread in the camera's view frustum (depth 1..20)."""
    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    H, W = image_hw
    K = camera(image_hw)
    u = jax.random.uniform(k1, (n,), minval=0, maxval=W)
    v = jax.random.uniform(k2, (n,), minval=0, maxval=H)
    z = jax.random.uniform(k3, (n,), minval=1.0, maxval=20.0)
    pts = jnp.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=-1)
    if rgb:
        mem = rgb_cache.empty(n, dtype=dtype, **options)
        feats = jax.random.randint(jax.random.key(seed + 1), (n, 3), 0, 256).astype(dtype)
    else:
        mem = memory.empty(n, channels, dtype, **options)
        feats = jax.random.normal(jax.random.key(seed + 1), (n, channels)).astype(dtype)
    # Fresh buffers for every leaf (the memory is donated by the in-place writes).
    return mem.replace(
        points=pts.astype(jnp.float32),
        features=feats,
        valid=jnp.ones((n,), bool),
        step=jnp.zeros((n,), jnp.int32),
        weight=jnp.ones((n,), jnp.float32),
        count=jnp.asarray(n, jnp.int32),
    )


def trajectory(num: int):
    """num OpenCV cam2world poses moving forward and panning slightly."""
    poses = []
    for i in range(num):
        eye = np.array([0.05 * i, 0.0, 0.1 * i], np.float32)
        target = eye + np.array([0.02 * i, 0.0, 5.0], np.float32)
        poses.append(np.asarray(look_at(eye, target)))
    return np.stack(poses).astype(np.float32)


def bytes_of(mem, names=("points", "features", "valid")) -> int:
    return int(sum(getattr(mem, k).size * getattr(mem, k).dtype.itemsize for k in names))


def chunk_size_report(channels: int, latent_hw, image_hw, frames: int) -> dict:
    """Bytes added per chunk of ``frames`` latent frames, measured by writing a real chunk."""
    h, w = latent_hw
    H, W = image_hw
    K = camera(image_hw)
    poses = trajectory(frames)
    rng = np.random.default_rng(0)
    depths = rng.uniform(2.0, 10.0, (frames, H, W)).astype(np.float32)
    latents = rng.normal(size=(frames, h, w, channels)).astype(np.float32)
    out = {"frames_per_chunk": frames, "latent_grid": [h, w, channels], "paper_mib_per_chunk": 0.45}
    for dt in ("float32", "bfloat16", "float16"):
        mem = memory.empty(frames * h * w, channels, dt)
        mem = memory.write_frames(mem, latents, depths, K, poses)
        n = int(mem.count)
        per_slot = mem.nbytes / mem.capacity
        out[dt] = {
            "points_per_chunk": n,
            "bytes_per_point_all_fields": per_slot,
            "bytes_per_point_xyz_features": 12 + channels * jnp.dtype(dt).itemsize,
            "mib_per_chunk_all_fields": n * per_slot / MIB,
            "mib_per_chunk_xyz_features": n * (12 + channels * jnp.dtype(dt).itemsize) / MIB,
            "mib_per_latent_frame_all_fields": h * w * per_slot / MIB,
        }
    # The RGB cache keeps every pixel of every frame it caches (uint8 colours + f32 xyz).
    rgb_per_point = 12 + 3 + 1 + 4 + 4
    out["rgb_cache_uint8"] = {
        "bytes_per_point_all_fields": rgb_per_point,
        "mib_per_frame_all_fields": H * W * rgb_per_point / MIB,
        "mib_per_frame_xyz_rgb": H * W * 15 / MIB,
    }
    return out


def run(args) -> dict:
    h, w = args.latent_hw
    H, W = args.image_hw
    C = args.channels
    K = camera((H, W))
    poses = trajectory(9)
    c2w = poses[0]
    rng = np.random.default_rng(0)
    latent = jnp.asarray(rng.normal(size=(h, w, C)).astype(np.float32))
    depth = jnp.asarray(rng.uniform(2.0, 10.0, (H, W)).astype(np.float32))
    latents9 = jnp.asarray(rng.normal(size=(9, h, w, C)).astype(np.float32))
    depths9 = jnp.asarray(rng.uniform(2.0, 10.0, (9, H, W)).astype(np.float32))
    image = jnp.asarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    reps = dict(min_reps=3, max_reps=20 if not args.quick else 5, budget_s=1.0 if not args.quick else 0.3)

    dev = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }
    print(f"device: {info['device']} ({info['backend']}), jax {info['jax']}", flush=True)
    print(HEADER, flush=True)
    rows = []
    pass_fn = jax.jit(
        lambda m: jnp.sum(m.points) + jnp.sum(m.features.astype(jnp.float32)) + jnp.sum(m.valid.astype(jnp.int32))
    )
    pass_geo = jax.jit(lambda m: jnp.sum(m.points) + jnp.sum(m.valid.astype(jnp.int32)))
    for n in args.sizes:
        row = {"points": n}
        mem = filled_memory(n, C, args.dtype, (H, W), seed=1)
        row["memory_bytes"] = bytes_of(mem)
        row["geometry_bytes"] = bytes_of(mem, ("points", "valid"))
        row["pass"] = timeit(lambda: pass_fn(mem), **reps)
        row["pass_geometry"] = timeit(lambda: pass_geo(mem), **reps)
        row["read"] = timeit(lambda: memory.read(mem, K, c2w, (H, W), (h, w), validate=False), **reps)
        row["read_many_9"] = timeit(
            lambda: memory.read_many(mem, K, poses, (H, W), (h, w), camera_chunk=9, validate=False), **reps
        )
        row["read_many_9_auto"] = timeit(
            lambda: memory.read_many(mem, K, poses, (H, W), (h, w), validate=False), **reps
        )
        row["read_many_9_chunk1"] = timeit(
            lambda: memory.read_many(mem, K, poses, (H, W), (h, w), camera_chunk=1, validate=False), **reps
        )
        row["write_copy"] = timeit(
            lambda: memory.write(mem, latent, depth, K, c2w, validate=False), **reps
        )
        state = {"m": filled_memory(n, C, args.dtype, (H, W), seed=1)}

        def write_donated(fn, *a, **kw):
            def go():
                state["m"] = fn(state["m"], *a, validate=False, donate=True, **kw)
                return state["m"]

            return go

        row["write_donated"] = timeit(write_donated(memory.write, latent, depth, K, c2w), **reps)
        row["write_chunk_9_donated"] = timeit(write_donated(memory.write_frames, latents9, depths9, K, poses), **reps)
        del state["m"]
        if not args.skip_fuse:
            state["m"] = filled_memory(n, C, args.dtype, (H, W), seed=1, policy="fuse", voxel_size=0.05)
            row["write_fuse_donated"] = timeit(write_donated(memory.write, latent, depth, K, c2w), **reps)
            del state["m"]
        del mem
        if not args.skip_rgb:
            cache = filled_memory(n, 3, jnp.uint8, (H, W), seed=2, rgb=True)
            row["rgb_memory_bytes"] = bytes_of(cache)
            row["rgb_render"] = timeit(lambda: rgb_cache.render(cache, K, c2w, (H, W), validate=False), **reps)
            del cache
            state["m"] = filled_memory(n, 3, jnp.uint8, (H, W), seed=2, rgb=True)
            row["rgb_write_frame_donated"] = timeit(write_donated(rgb_cache.write, image, depth, K, c2w), **reps)
            del state["m"]
        t_pass = row["pass"]["median_s"]
        row["read_points_per_s"] = n / row["read"]["median_s"]
        row["read_over_pass"] = row["read"]["median_s"] / t_pass
        row["read_over_pass_geometry"] = row["read"]["median_s"] / row["pass_geometry"]["median_s"]
        best9 = min(row[k]["median_s"] for k in ("read_many_9", "read_many_9_chunk1", "read_many_9_auto"))
        row["read_many_9_per_camera_over_pass"] = best9 / 9 / t_pass
        row["pass_gb_per_s"] = row["memory_bytes"] / t_pass / 1e9
        row["write_points_per_s_donated"] = h * w / row["write_donated"]["median_s"]
        if "rgb_render" in row:
            row["rgb_render_over_latent_read"] = row["rgb_render"]["median_s"] / row["read"]["median_s"]
        rows.append(row)
        print(_row_line(row), flush=True)
    return {
        "what": "latent memory read/write cost vs number of points; RGB cache baseline",
        "config": {
            "latent_hw": [h, w],
            "image_hw": [H, W],
            "channels": C,
            "features_dtype": str(jnp.dtype(args.dtype)),
            "rgb_dtype": "uint8",
            "policy": "ring (fuse measured separately, voxel 0.05)",
            "quick": args.quick,
        },
        "info": info,
        "results": rows,
        "chunk_size": chunk_size_report(C, (h, w), (H, W), 9),
    }


def _ms(x):
    return f"{x['median_s'] * 1e3:9.2f}"


HEADER = (
    f"{'points':>9} {'MiB':>7} {'pass ms':>9} {'geo ms':>9} {'read ms':>9} {'rd/pass':>7} {'rd/geo':>7} "
    f"{'read9 ms':>9} {'r9 seq':>9} {'r9 auto':>9} {'wr copy':>9} {'wr inpl':>9} {'wr9 inpl':>9} {'wr fuse':>9} "
    f"{'rgb rend':>9} {'rgb wr':>9}"
)


def _row_line(r) -> str:
    na = f"{'-':>9}"
    return (
        f"{r['points']:>9.0e} {r['memory_bytes'] / MIB:7.1f} {_ms(r['pass'])} {_ms(r['pass_geometry'])} "
        f"{_ms(r['read'])} {r['read_over_pass']:7.2f} {r['read_over_pass_geometry']:7.2f} {_ms(r['read_many_9'])} "
        f"{_ms(r['read_many_9_chunk1'])} {_ms(r['read_many_9_auto'])} {_ms(r['write_copy'])} {_ms(r['write_donated'])} "
        f"{_ms(r['write_chunk_9_donated'])} {_ms(r['write_fuse_donated']) if 'write_fuse_donated' in r else na} "
        f"{_ms(r['rgb_render']) if 'rgb_render' in r else na} "
        f"{_ms(r['rgb_write_frame_donated']) if 'rgb_write_frame_donated' in r else na}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_parse_sizes, default=None, help="comma-separated point counts (1e4,1e5,...)")
    p.add_argument("--quick", action="store_true", help="sizes 1e4,1e5 and fewer repetitions")
    p.add_argument("--json", "--out", dest="json", default=None, help="output JSON path")
    p.add_argument("--channels", type=int, default=48)
    p.add_argument("--latent-hw", type=_parse_hw, default=(44, 80))
    p.add_argument("--image-hw", type=_parse_hw, default=(704, 1280))
    p.add_argument("--dtype", default="float32", help="feature dtype of the latent memory")
    p.add_argument("--skip-rgb", action="store_true")
    p.add_argument("--skip-fuse", action="store_true")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000, 4_000_000]
    args.dtype = jnp.dtype(args.dtype)
    t0 = time.perf_counter()
    out = run(args)
    out["total_s"] = time.perf_counter() - t0
    out["info"]["load_average_at_end"] = list(os.getloadavg())
    path = Path(args.json or ROOT / "experiments" / "results" / f"bench_memory_{jax.default_backend()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    cs = out["chunk_size"]
    print(
        f"chunk (9 latent frames, {cs['latent_grid']}): {cs['float32']['points_per_chunk']} points; "
        f"float32 {cs['float32']['mib_per_chunk_all_fields']:.2f} MiB, bfloat16 "
        f"{cs['bfloat16']['mib_per_chunk_all_fields']:.2f} MiB (all fields); one latent frame "
        f"{cs['bfloat16']['mib_per_latent_frame_all_fields']:.3f} MiB bf16; paper ~0.45 MiB/chunk; RGB cache "
        f"{cs['rgb_cache_uint8']['mib_per_frame_all_fields']:.1f} MiB per 704x1280 frame"
    )
    print(f"wrote {path} ({out['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
