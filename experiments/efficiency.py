#!/usr/bin/env python
"""The paper's efficiency figure (spec section 7) on this machine: latent memory vs RGB cache.

A 5-chunk rollout at 1280 x 704 (44 x 80 latents, 48 channels) through a procedural indoor world
of :mod:`mirage_jax.data.worlds` (exact depth and colour from our renderer, no moving objects) along
a preset camera path of :mod:`mirage_jax.geometry.trajectories` (placed collision-free by
``random_trajectory``). Per chunk it measures the *conditioning* cost of the two ways to remember
what was generated (the denoiser itself is the same for both and is not timed):

* latent memory (Mirage): read the chunk's 9 latent poses (``memory.read_many``: one projection at
  latent resolution) + write the chunk's 8 new latent frames (``memory.write_frames``; chunk 1 also
  initialises the memory with latent frame 0). Features are random normalised latents: the cost
  does not depend on their values.
* RGB cache (Gen3C / Spatia / VMem style): rasterise the chunk's 33 frames at 1280 x 704 from an
  RGB point cloud (``rgb_cache.render_many``: one point per pixel, 1-pixel splat, nearest wins) +
  VAE-encode the 33 renders with the full Wan2.2 VAE configuration (random weights; timing does
  not depend on them) + write the chunk's new frames into the cloud. The cloud stores the same
  frames as the latent memory (every 4th pixel frame, the latent poses), at pixel resolution.

Both caches are sized to what they hold, like the reference's append-only list: a chunk's read
runs on a cache holding exactly the frames written before it, and its write goes into a cache
with room for exactly the frames held after it (set up untimed, then the write is timed donated,
in place). Cache bytes are the held entries times the bytes one entry takes as stored (xyz f32 +
features + valid + step + weight: 213 B per latent point in float32, 24 B per RGB point in
uint8), after the chunk's write.

The VAE encode of 33 frames costs the same every chunk, so it is measured once. On CPU the full
33-frame encode at 1280 x 704 is too slow for the budget: ``--vae-frames 1,5`` encodes the first
frame alone and then 1 + 4 frames (the encoder's causal chunking: the first frame, then chunks of
4 frames through a scan with a carried cache) and extrapolates linearly in the number of 4-frame
chunks: t(33) = t(1) + 8 (t(5) - t(1)). ``--vae-frames 33`` measures it directly (accelerators).
The JSON records which was done.

Voxel fusion: the same latent writes along an out-and-back version of the path (the camera
returns over what it has seen), once with ``policy="ring"`` (an append list) and once with
``policy="fuse"``: fused bytes stay flat while the path revisits.

Times are medians of ``--repeats`` calls after a warm-up call (compile), each waited for
(``experiments/common.py: time_calls``); the machine's load average is recorded.

    .venv/bin/python experiments/efficiency.py      # writes experiments/results/efficiency_cpu.json + .png
    # the two parts side by side (what produced the committed CPU result; the VAE part took 17 min):
    .venv/bin/python experiments/efficiency.py --vae-only      # -> experiments/results/efficiency_vae_cpu.json
    .venv/bin/python experiments/efficiency.py --rgb-repeats 1 --repeats 7 \
        --vae-from experiments/results/efficiency_vae_cpu.json --vae-wait 3000
    .venv/bin/python experiments/efficiency.py --replot experiments/results/efficiency_cpu.json   # PNG only
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
from flax import nnx  # noqa: E402

from mirage_jax import memory  # noqa: E402
from mirage_jax.data.worlds import intrinsics_from_fov, random_trajectory, render_frames, sample_scene  # noqa: E402
from mirage_jax.generate.rollout import memory_bytes  # noqa: E402
from mirage_jax.geometry.trajectories import NEW_FRAMES_PER_CHUNK, num_frames_for_chunks  # noqa: E402
from mirage_jax.memory import rgb_cache  # noqa: E402
from mirage_jax.models.wan.vae import ENCODE_CHUNK, WanVAE, WanVAEConfig, param_count  # noqa: E402

MIB = 2**20
LATENT_STRIDE = 4  # pixel frames per latent frame (Wan2.2's temporal compression)
NEW_LATENTS = NEW_FRAMES_PER_CHUNK // LATENT_STRIDE  # 8 new latent frames per chunk

# The paper's efficiency figure as read in spec section 7 (5-chunk rollout, GPU, end to end).
PAPER = {
    "seconds_per_frame": {
        "Mirage": [0.79, 0.25, 0.25, 0.25, 0.25],
        "Gen3C": [2.80, 2.88, 2.88, 2.87, 2.90],
        "Spatia": [4.03, 5.03, 6.32, 6.00, 7.63],
        "VMem": [4.07, 6.19, 6.79, 7.24, 7.25],
    },
    "cache_mib": {
        "Mirage": [0.46, 0.90, 1.36, 1.80, 2.25],
        "Gen3C": [22.3, 43.8, 43.8, 43.8, 43.8],
        "Spatia": [23.4, 47.0, 73.2, 98.4, 124.0],
        "VMem": [18.8, 33.8, 48.8, 63.8, 78.8],
    },
}

VAE_CONFIGS = {"wan22": WanVAEConfig.wan22, "tiny22": lambda: WanVAEConfig.tiny("wan2.2")}


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _timed(fn, repeats: int) -> dict:
    t = time_calls(fn, repeats=repeats)
    return {k: t[k] for k in ("median_s", "min_s", "reps", "first_call_s")} | {
        "cpu_over_wall": float(np.median(np.asarray(t["cpu_s"]) / np.asarray(t["times_s"])))
    }


def _timed_donated(fn, state: dict, repeats: int) -> dict:
    """Times ``state["m"] = fn(state["m"])`` (donated writes: each call consumes the last result)."""

    def go():
        state["m"] = fn(state["m"])
        return state["m"]

    return _timed(go, repeats)


# ---------------------------------------------------------------------------------------------
# The world and the camera paths.
# ---------------------------------------------------------------------------------------------


def world(args):
    """Scene, K, the main and the revisiting path [T, 4, 4], and the rendered latent-pose frames."""
    H, W = args.image_hw
    T = num_frames_for_chunks(args.chunks)
    scene = sample_scene(args.seed, "indoor", num_dynamic=0)
    kw = dict(angle_deg=args.angle_deg) if args.angle_deg is not None else {}
    if args.distance is not None:
        kw["distance"] = args.distance
    path = random_trajectory(scene, args.seed, T, args.path, **kw)
    revisit = random_trajectory(scene, args.seed, T, args.path, loop=True, **kw)
    K = intrinsics_from_fov((H, W), args.fov)
    out = {"scene": scene, "K": K, "path": path, "revisit": revisit}
    for name in ("path", "revisit"):
        poses = out[name][::LATENT_STRIDE]  # the latent poses: pixel frames 0, 4, 8, ...
        r = render_frames(scene, np.broadcast_to(K, (len(poses), 3, 3)), poses, (H, W), max_rays=1 << 20)
        out[name + "_depth"] = np.asarray(r["depth"], np.float32)
        out[name + "_rgb"] = np.asarray(np.round(np.clip(r["rgb"], 0, 1) * 255), np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# The VAE encode of one chunk's 33 renders.
# ---------------------------------------------------------------------------------------------


def encode_seconds(measured_s: dict[int, float], frames: int) -> tuple[float, str]:
    """Seconds to encode ``frames`` frames from encodes of some frame counts, and how it was got.

    The encoder runs the first frame alone and then chunks of ``ENCODE_CHUNK`` frames (a scan with
    a carried cache), so its cost is t(1 + 4k) = t0 + k c: with ``frames`` measured it is used
    as is, otherwise t0 and c come from the smallest and the largest count measured.
    """
    if frames in measured_s:
        return measured_s[frames], f"measured: one encode of {frames} frames at full size"
    ns = sorted(measured_s)
    if len(ns) < 2 or any((n - 1) % ENCODE_CHUNK for n in ns) or (frames - 1) % ENCODE_CHUNK:
        raise ValueError(f"need {frames} frames or two counts of 1 + {ENCODE_CHUNK} k frames, got {ns}")
    a, b = ns[0], ns[-1]
    ka, kb, k = ((n - 1) // ENCODE_CHUNK for n in (a, b, frames))
    per_chunk = (measured_s[b] - measured_s[a]) / (kb - ka)
    method = (
        f"extrapolated: encodes of {a} and {b} frames at full size (the encoder's causal chunking: the first "
        f"frame, then chunks of {ENCODE_CHUNK}); t({frames}) = t({a}) + {k - ka} x (t({b}) - t({a})) / {kb - ka}"
    )
    return measured_s[a] + per_chunk * (k - ka), method


def vae_encode_cost(args) -> dict:
    """Seconds to encode 33 frames (measured, or extrapolated from ``args.vae_frames``).

    The input is a random video in [-1, 1]: the encoder is dense convolutions whose cost does not
    depend on the values (nor on the random weights).
    """
    cfg = VAE_CONFIGS[args.vae_config]()
    # Random weights drawn in one compiled program (eager initialisation of the 700M parameters
    # dispatches every initialiser separately: minutes on a loaded 2-core CPU).
    vae = nnx.jit(lambda: WanVAE(cfg, rngs=nnx.Rngs(args.seed)))()
    graphdef, state = nnx.split(vae)
    enc = jax.jit(lambda s, v: nnx.merge(graphdef, s).encode(v))
    frames_per_chunk = NEW_FRAMES_PER_CHUNK + 1
    measured = {}
    for n in args.vae_frames:
        if (n - 1) % ENCODE_CHUNK:
            raise SystemExit(f"--vae-frames: {n} is not 1 + {ENCODE_CHUNK} k")
        video = jax.random.uniform(jax.random.key(args.seed), (1, n, *args.image_hw, 3), jnp.float32, -1.0, 1.0)
        # Compiled ahead (seconds), so that no untimed warm-up run of minutes is needed.
        t0 = time.perf_counter()
        compiled = enc.lower(state, video).compile()
        compile_s = time.perf_counter() - t0
        t = time_calls(lambda: compiled(state, video), repeats=args.vae_repeats, warmup=0)
        measured[str(n)] = {k: t[k] for k in ("median_s", "min_s", "times_s", "cpu_s", "reps")} | {"compile_s": compile_s}
        print(f"  VAE encode {n} x {args.image_hw[0]} x {args.image_hw[1]}: {t['median_s']:.2f} s "
              f"(compile {compile_s:.1f} s)", flush=True)
    del state, vae
    seconds, method = encode_seconds({int(n): t["median_s"] for n, t in measured.items()}, frames_per_chunk)
    return {
        "config": args.vae_config,
        "params": param_count(cfg),
        "frames": frames_per_chunk,
        "seconds": seconds,
        "method": method,
        "measured": measured,
    }


# ---------------------------------------------------------------------------------------------
# Per-chunk conditioning cost.
# ---------------------------------------------------------------------------------------------


class _Cache:
    """One kind of cache (latent or RGB): how to make, fill, read and write it."""

    def __init__(self, kind, w, args, latents):
        self.kind, self.w, self.args = kind, w, args
        H, W = args.image_hw
        self.image_hw = (H, W)
        self.latent_hw = (H // args.spatial, W // args.spatial)
        if kind == "latent":
            self.feats = latents
            self.cells = self.latent_hw[0] * self.latent_hw[1]
        else:
            self.feats = w["path_rgb"]
            self.cells = H * W

    def empty(self, frames: int, **options):
        if self.kind == "latent":
            return memory.empty(frames * self.cells, self.feats.shape[-1], self.args.dtype, **options)
        return rgb_cache.empty(frames * self.cells, **options)

    def write(self, mem, idx, depths, poses, donate=True):
        fn = memory.write_frames if self.kind == "latent" else rgb_cache.write_frames
        return fn(mem, self.feats[idx], depths[idx], self.w["K"], poses[idx], validate=False, donate=donate)

    def filled(self, capacity_frames: int, held_frames: int, depths, poses, **options):
        mem = self.empty(capacity_frames, **options)
        if held_frames:
            mem = self.write(mem, np.arange(held_frames), depths, poses)
        return mem

    def read(self, mem, poses):
        if self.kind == "latent":
            return memory.read_many(mem, self.w["K"], poses, self.image_hw, self.latent_hw, validate=False)
        return rgb_cache.render_many(mem, self.w["K"], poses, self.image_hw, validate=False)


def chunk_costs(args, w, latents) -> list[dict]:
    """Per chunk: latent-memory and RGB-cache read / write medians and held bytes (no VAE yet)."""
    depths, lposes = w["path_depth"], w["path"][::LATENT_STRIDE]
    caches = {k: _Cache(k, w, args, latents) for k in ("latent", "rgb")}
    rows = []
    for c in range(args.chunks):
        before, after = 1 + NEW_LATENTS * c, 1 + NEW_LATENTS * (c + 1)
        new = np.arange(before, after)
        row = {"chunk": c + 1, "held_frames_before": before, "held_frames_after": after}
        for kind, cache in caches.items():
            reps = args.repeats if kind == "latent" else args.rgb_repeats
            t = {}
            if c == 0:  # initialise with latent / pixel frame 0
                st = {"m": cache.empty(1)}
                t["init"] = _timed_donated(lambda m: cache.write(m, np.arange(1), depths, lposes), st, reps)
                del st
            mem = cache.filled(before, before, depths, lposes)
            if kind == "latent":  # the chunk's 9 latent poses
                views = lposes[NEW_LATENTS * c: NEW_LATENTS * c + NEW_LATENTS + 1]
            else:  # the chunk's 33 pixel frames
                views = w["path"][NEW_FRAMES_PER_CHUNK * c: NEW_FRAMES_PER_CHUNK * (c + 1) + 1]
            t["read"] = _timed(lambda: cache.read(mem, views), reps)
            del mem
            st = {"m": cache.filled(after, before, depths, lposes)}
            t["write"] = _timed_donated(lambda m: cache.write(m, new, depths, lposes), st, reps)
            del st
            # the held bytes after the chunk's write (one fresh fill, so the counters are exact)
            held = cache.filled(after, after, depths, lposes)
            b = memory_bytes(held)
            row[f"{kind}_points"] = int(held.count)
            row[f"{kind}_bytes"] = b["held"]
            row[f"{kind}_bytes_per_entry"] = b["per_entry"]
            del held
            row[f"{kind}_s"] = t["read"]["median_s"] + t["write"]["median_s"] + (t["init"]["median_s"] if c == 0 else 0.0)
            row[f"{kind}_read_s" if kind == "latent" else "rgb_render_s"] = t["read"]["median_s"]
            row[f"{kind}_write_s"] = t["write"]["median_s"]
            if c == 0:
                row[f"{kind}_init_s"] = t["init"]["median_s"]
            row[f"{kind}_timings"] = t
        rows.append(row)
        print(f"  chunk {c + 1}: latent {row['latent_s'] * 1e3:.1f} ms, RGB render + write {row['rgb_s']:.2f} s",
              flush=True)
    return rows


def add_vae(rows: list[dict], vae_s: float) -> None:
    """Adds the 33-frame encode to every chunk's RGB path, and the ratios."""
    for row in rows:
        row["rgb_encode_s"] = vae_s
        row["rgb_s"] += vae_s
        row["time_ratio_rgb_over_latent"] = row["rgb_s"] / row["latent_s"]
        row["bytes_ratio_rgb_over_latent"] = row["rgb_bytes"] / row["latent_bytes"]


def fusion_bytes(args, w, latents) -> list[dict]:
    """Held bytes per chunk of ring vs voxel fusion on the revisiting (out-and-back) path."""
    depths, lposes = w["revisit_depth"], w["revisit"][::LATENT_STRIDE]
    cap = (1 + NEW_LATENTS * args.chunks) * latents.shape[1] * latents.shape[2]
    out = []
    mems = {
        "ring": memory.empty(cap, latents.shape[-1], args.dtype),
        "fuse": memory.empty(cap, latents.shape[-1], args.dtype, policy="fuse", voxel_size=args.voxel),
    }
    for c in range(args.chunks):
        idx = np.arange(0 if c == 0 else 1 + NEW_LATENTS * c, 1 + NEW_LATENTS * (c + 1))
        row = {"chunk": c + 1}
        for name, m in mems.items():
            t0 = time.perf_counter()
            m = jax.block_until_ready(
                memory.write_frames(m, latents[idx], depths[idx], w["K"], lposes[idx], validate=False, donate=True)
            )
            row[f"{name}_write_s_single"] = time.perf_counter() - t0
            mems[name] = m
            row[f"{name}_bytes"] = memory_bytes(m)["held"]
            row[f"{name}_points"] = int(m.count)
        row["fuse_fused"] = int(mems["fuse"].fused)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

HEADER = (
    f"{'chunk':>5} | {'latent ms':>9} {'read':>7} {'write':>7} | {'RGB s':>7} {'render':>7} {'encode':>7} "
    f"{'write':>6} | {'x time':>7} | {'lat MiB':>8} {'RGB MiB':>8} {'x bytes':>7}"
)


def _row_line(r) -> str:
    return (
        f"{r['chunk']:>5} | {r['latent_s'] * 1e3:9.2f} {r['latent_read_s'] * 1e3:7.2f} {r['latent_write_s'] * 1e3:7.2f} | "
        f"{r['rgb_s']:7.2f} {r['rgb_render_s']:7.2f} {r['rgb_encode_s']:7.2f} {r['rgb_write_s']:6.2f} | "
        f"{r['time_ratio_rgb_over_latent']:7.0f} | {r['latent_bytes'] / MIB:8.2f} {r['rgb_bytes'] / MIB:8.1f} "
        f"{r['bytes_ratio_rgb_over_latent']:7.1f}"
    )


def paper_ratios() -> dict:
    """Baseline / Mirage per chunk in the paper's figure (time per frame and cache MiB)."""
    out = {}
    for key in ("seconds_per_frame", "cache_mib"):
        m = np.asarray(PAPER[key]["Mirage"])
        out[key] = {k: list(np.round(np.asarray(v) / m, 2)) for k, v in PAPER[key].items() if k != "Mirage"}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, fus = result["chunks"], result["fusion"]
    x = np.arange(1, len(rows) + 1)
    px = np.arange(1, 6)
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    # (a) time: ours per chunk
    a = ax[0, 0]
    a.plot(x, [r["latent_s"] for r in rows], "o-", label="latent memory (read 9 poses + write)")
    a.plot(x, [r["rgb_s"] for r in rows], "s-", label="RGB cache (render 33 frames + VAE encode + write)")
    a.plot(x, [r["rgb_render_s"] + r["rgb_write_s"] for r in rows], "s--", alpha=0.6, label="RGB cache without the VAE encode")
    a.set_yscale("log")
    rt = [r["time_ratio_rgb_over_latent"] for r in rows]
    rn = [(r["rgb_s"] - r["rgb_encode_s"]) / r["latent_s"] for r in rows]
    a.set_title("ours (CPU): conditioning seconds per chunk\nRGB / latent: " + ", ".join(f"{v:.0f}x" for v in rt)
                + "\nwithout the VAE encode: " + ", ".join(f"{v:.0f}x" for v in rn), fontsize=9)
    # (a') time: the paper
    a = ax[0, 1]
    for k, v in PAPER["seconds_per_frame"].items():
        a.plot(px, v, "o-", label=k)
    a.set_yscale("log")
    pr = result["paper_ratios"]["seconds_per_frame"]
    a.set_title("paper (GPU, end to end): seconds per frame\n" + "\n".join(
        f"{k} / Mirage: " + ", ".join(f"{v:.1f}x" for v in vs) for k, vs in pr.items()), fontsize=9)
    # (b) bytes: ours
    a = ax[1, 0]
    a.plot(x, [r["latent_bytes"] / MIB for r in rows], "o-", label="latent memory (ring: append)")
    a.plot(x, [r["rgb_bytes"] / MIB for r in rows], "s-", label="RGB cache")
    a.plot(x, [f["ring_bytes"] / MIB for f in fus], "^:", label="latent, out-and-back path, ring")
    a.plot(x, [f["fuse_bytes"] / MIB for f in fus], "v-", label=f"latent, out-and-back path, voxel fusion {result['config']['voxel']} m")
    a.set_yscale("log")
    rb = [r["bytes_ratio_rgb_over_latent"] for r in rows]
    rf = [f["ring_bytes"] / f["fuse_bytes"] for f in fus]
    a.set_title("ours: cache MiB after each chunk\nRGB / latent: " + ", ".join(f"{v:.1f}x" for v in rb)
                + "\nout-and-back, ring / fusion: " + ", ".join(f"{v:.1f}x" for v in rf), fontsize=9)
    # (b') bytes: the paper
    a = ax[1, 1]
    for k, v in PAPER["cache_mib"].items():
        a.plot(px, v, "o-", label=k)
    a.set_yscale("log")
    pr = result["paper_ratios"]["cache_mib"]
    a.set_title("paper: peak cache MiB\n" + "\n".join(
        f"{k} / Mirage: " + ", ".join(f"{v:.0f}x" for v in vs) for k, vs in pr.items()), fontsize=9)
    for a in ax.flat:
        a.set_xlabel("chunk")
        a.set_xticks(px)
        lo, hi = a.get_ylim()
        a.set_ylim(lo, hi * (hi / lo) ** 0.6)  # head room for the legend (log axes)
        a.legend(fontsize=7, loc="upper left", ncol=2)
        a.grid(alpha=0.3)
    cfg = result["config"]
    fig.suptitle(
        f"Efficiency, {cfg['image_hw'][1]} x {cfg['image_hw'][0]} ({cfg['latent_hw'][1]} x {cfg['latent_hw'][0]} latents, "
        f"{cfg['channels']} ch, {cfg['features_dtype']}), {len(rows)} chunks; ours on {result['info']['cpu_count']} CPU cores "
        f"(load ~{result['info']['load_average_at_start'][0]:.0f})",
        fontsize=11,
    )
    fig.text(0.01, 0.005, f"VAE encode ({result['vae']['config']} config, random weights): " + result["vae"]["method"]
             + f" = {result['vae']['seconds']:.1f} s per chunk", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_vae(path: Path, args, hw) -> dict:
    """The ``vae`` block of an earlier ``--vae-only`` run (waits up to ``--vae-wait`` s for it)."""
    deadline = time.perf_counter() + args.vae_wait
    while not path.exists() and time.perf_counter() < deadline:
        time.sleep(10)
    if not path.exists():
        raise SystemExit(f"--vae-from {path}: no such file")
    vae = json.loads(path.read_text())["vae"]
    if vae["config"] != args.vae_config or vae.get("image_hw") != hw:
        raise SystemExit(f"--vae-from {path}: measured for {vae['config']} at {vae.get('image_hw')}, "
                         f"not {args.vae_config} at {hw}")
    return vae | {"from": str(path)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-hw", type=_parse_hw, default=(704, 1280), help="H x W pixels")
    p.add_argument("--chunks", type=int, default=5)
    p.add_argument("--vae-config", choices=sorted(VAE_CONFIGS), default="wan22")
    p.add_argument("--vae-frames", type=lambda s: [int(x) for x in s.split(",")], default=[1, 5],
                   help="frame counts encoded at full size: 33, or two counts 1 + 4k to extrapolate from")
    p.add_argument("--vae-repeats", type=int, default=1, help="timed calls per VAE encode (compiled ahead, no warm-up run)")
    p.add_argument("--vae-only", action="store_true", help="measure the VAE encode only and write its JSON")
    p.add_argument("--vae-from", default=None, help="reuse the 'vae' block of a JSON written earlier (--vae-only)")
    p.add_argument("--vae-wait", type=float, default=0.0,
                   help="seconds to wait for the --vae-from file (a --vae-only run side by side)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per latent-memory measurement")
    p.add_argument("--rgb-repeats", type=int, default=3, help="timed calls per RGB-cache measurement")
    p.add_argument("--dtype", default="float32", help="feature dtype of the latent memory")
    p.add_argument("--path", default="orbit_left", help="trajectory preset (mirage_jax.geometry.trajectories.PRESETS)")
    p.add_argument("--angle-deg", type=float, default=90.0)
    p.add_argument("--distance", type=float, default=None)
    p.add_argument("--fov", type=float, default=60.0, help="horizontal field of view, degrees")
    p.add_argument("--voxel", type=float, default=0.05, help="voxel size (m) of the fusion variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="default experiments/results/efficiency_<backend>.json")
    p.add_argument("--png", default=None, help="default: the JSON path with .png")
    p.add_argument("--replot", default=None, help="only redraw the PNG of this result JSON")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        plot(result, Path(args.png) if args.png else Path(args.replot).with_suffix(".png"))
        return result
    args.dtype = jnp.dtype(args.dtype)
    cfg = VAE_CONFIGS[args.vae_config]()
    args.spatial = cfg.scale_factor_spatial
    H, W = args.image_hw
    if H % args.spatial or W % args.spatial:
        raise SystemExit(f"--image-hw {H}x{W} is not a multiple of the VAE's {args.spatial}x")
    t_start = time.perf_counter()
    info = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    print(f"{info['backend']} ({info['cpu_count']} cores, load {info['load_average_at_start'][0]:.1f}); "
          f"{H} x {W}", flush=True)
    if args.vae_only:
        print("VAE encode cost ...", flush=True)
        vae = vae_encode_cost(args) | {"image_hw": [H, W], "load_average_after": list(os.getloadavg())}
        path = Path(args.json or ROOT / "experiments" / "results" / f"efficiency_vae_{jax.default_backend()}.json")
        path.write_text(json.dumps({"info": info, "vae": vae}, indent=2, default=float) + "\n")
        print(f"wrote {path}: {vae['seconds']:.1f} s per 33-frame encode ({vae['method']})")
        return {"info": info, "vae": vae}
    w = world(args)
    info["load_average_after_render"] = list(os.getloadavg())
    rng = np.random.default_rng(args.seed)
    n_lat = len(w["path_depth"])
    latents = rng.standard_normal((n_lat, H // args.spatial, W // args.spatial, cfg.z_dim), np.float32)
    print("per-chunk conditioning ...", flush=True)
    rows = chunk_costs(args, w, latents)
    info["load_average_after_chunks"] = list(os.getloadavg())
    fus = fusion_bytes(args, w, latents)
    for f in fus:
        print(f"  out-and-back chunk {f['chunk']}: ring {f['ring_bytes'] / MIB:.2f} MiB, "
              f"voxel fusion {f['fuse_bytes'] / MIB:.2f} MiB ({f['fuse_fused']} fused observations)", flush=True)
    del w, latents
    if args.vae_from:
        vae = _load_vae(Path(args.vae_from), args, [H, W])
    else:
        print("VAE encode cost ...", flush=True)
        vae = vae_encode_cost(args) | {"image_hw": [H, W], "load_average_after": list(os.getloadavg())}
    add_vae(rows, vae["seconds"])
    print(HEADER)
    for r in rows:
        print(_row_line(r))
    info["load_average_at_end"] = list(os.getloadavg())
    result = {
        "what": "per-chunk conditioning time and cache bytes: latent memory vs RGB point-cloud cache + VAE encode",
        "config": {
            "image_hw": [H, W],
            "latent_hw": [H // args.spatial, W // args.spatial],
            "channels": cfg.z_dim,
            "features_dtype": str(args.dtype),
            "rgb_dtype": "uint8",
            "chunks": args.chunks,
            "path": args.path,
            "angle_deg": args.angle_deg,
            "distance": args.distance,
            "fov_deg": args.fov,
            "scene": f"procedural indoor world, seed {args.seed}, no moving objects (mirage_jax.data.worlds)",
            "voxel": args.voxel,
            "repeats": {"latent": args.repeats, "rgb": args.rgb_repeats, "vae": args.vae_repeats},
        },
        "method": {
            "latent_s": "read_many at the chunk's 9 latent poses + write_frames of its 8 new latent frames "
                        "(+ the write of latent frame 0 in chunk 1); medians",
            "rgb_s": "render_many of the chunk's 33 pixel frames at full resolution + VAE encode of 33 frames "
                     "+ write_frames of the chunk's 8 new frames at pixel resolution (every 4th frame, the same "
                     "frames the latent memory stores; + frame 0 in chunk 1); medians",
            "bytes": "held entries x bytes per stored entry (xyz f32, features, valid, step, weight) after the "
                     "chunk's write; the caches are sized to what they hold (append-only, like the reference)",
            "vae": vae["method"],
            "fusion": "the same latent writes along the out-and-back version of the path (loop=True), ring vs "
                      "voxel fusion; bytes after each chunk; write times are single calls (those of chunks 1 and 2 "
                      "include compilation: 9, then 8 frames per write)",
            "load": "the machine was shared with other jobs: see info.load_average_*",
        },
        "info": info,
        "vae": vae,
        "chunks": rows,
        "fusion": fus,
        "paper": PAPER,
        "paper_ratios": paper_ratios(),
        "summary": {
            "time_ratio_rgb_over_latent": [round(r["time_ratio_rgb_over_latent"], 1) for r in rows],
            "bytes_ratio_rgb_over_latent": [round(r["bytes_ratio_rgb_over_latent"], 2) for r in rows],
            "time_ratio_without_vae": [round((r["rgb_s"] - r["rgb_encode_s"]) / r["latent_s"], 1) for r in rows],
        },
    }
    result["total_s"] = time.perf_counter() - t_start
    path = Path(args.json or ROOT / "experiments" / "results" / f"efficiency_{jax.default_backend()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    png = Path(args.png) if args.png else path.with_suffix(".png")
    plot(result, png)
    print(f"wrote {path} and {png} ({result['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
