"""Rendering throughput of the procedural worlds (mirage_jax.data.worlds) on this machine.

Renders clips with ``render_frames`` (one batched, jit-compiled program per clip shape) and
reports frames per second after compilation, for indoor scenes without and with shadows and for
outdoor scenes; plus the end-to-end ``make_clip`` rate (scene sampling + collision-free path
planning + rendering + captions). The headline figure (``fps``) is indoor, no shadows, at the
requested resolution (default 128 x 128, the project's target: >= 100 fps on a 2-core CPU).

    .venv/bin/python experiments/bench_worlds.py --json experiments/results/bench_worlds_cpu.json

Timings are wall clock (best and median of ``--repeats`` runs, each over ``--scenes`` scenes);
``cpu_s`` is the process CPU time of the best run (CPU time / wall time = cores in use). The
machine may be shared: the best run is the least disturbed one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from common import time_calls  # experiments/common.py


def _setting(name, kind, shadows, hw, frames, scenes, repeats):
    from mirage_jax.data.worlds import intrinsics_from_fov, random_trajectory, render_frames, sample_scene

    K = np.broadcast_to(intrinsics_from_fov(hw, 60.0), (frames, 3, 3)).copy()
    times = np.arange(frames, dtype=np.float32) / 16.0
    jobs = []
    for seed in range(scenes):
        scene = sample_scene(seed, kind)
        c2w = random_trajectory(scene, seed, frames, times=times.astype(np.float64))
        jobs.append((scene, c2w))
    compile_s = time_calls(lambda: render_frames(jobs[0][0], K, jobs[0][1], hw, times, shadows=shadows), repeats=1)[
        "first_call_s"
    ]
    timed = time_calls(
        lambda: [render_frames(scene, K, c2w, hw, times, shadows=shadows) for scene, c2w in jobs],
        repeats=repeats,
        warmup=0,
    )
    walls, cpus = timed["times_s"], timed["cpu_s"]
    n = frames * scenes
    best = int(np.argmin(walls))
    return {
        "name": name,
        "kind": kind,
        "shadows": shadows,
        "image_hw": list(hw),
        "frames_per_clip": frames,
        "clips": scenes,
        "fps": n / walls[best],
        "fps_median": n / statistics.median(walls),
        "ms_per_frame": 1e3 * walls[best] / n,
        "cpu_s": cpus[best],
        "wall_s": walls[best],
        "compile_s": compile_s,
    }


def _make_clip_rate(hw, frames, clips):
    from mirage_jax.data.worlds import make_clip

    make_clip(0, image_hw=hw, num_frames=frames)  # compile
    t0 = time.perf_counter()
    for seed in range(1, clips + 1):
        make_clip(seed, image_hw=hw, num_frames=frames, kind="indoor" if seed % 2 else "outdoor")
    dt = time.perf_counter() - t0
    return {"name": "make_clip", "image_hw": list(hw), "frames_per_clip": frames, "clips": clips,
            "clips_per_s": clips / dt, "fps": clips * frames / dt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=16, help="frames per clip (one batched program)")
    p.add_argument("--scenes", type=int, default=4, help="clips (scenes) per timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clips", type=int, default=8, help="clips for the end-to-end make_clip rate")
    p.add_argument("--json", type=str, default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)

    import jax

    hw = tuple(args.hw)
    settings = [
        ("indoor", "indoor", False),
        ("indoor+shadows", "indoor", True),
        ("outdoor", "outdoor", False),
        ("outdoor+shadows", "outdoor", True),
    ]
    results = []
    for name, kind, shadows in settings:
        r = _setting(name, kind, shadows, hw, args.frames, args.scenes, args.repeats)
        results.append(r)
        print(
            f"{name:16s} {hw[0]}x{hw[1]} x{args.frames}: {r['fps']:7.1f} fps (median {r['fps_median']:7.1f}), "
            f"{r['ms_per_frame']:.2f} ms/frame, cpu/wall {r['cpu_s'] / r['wall_s']:.2f}, "
            f"compile {r['compile_s']:.1f} s",
            flush=True,
        )
    clip = _make_clip_rate(hw, args.frames, args.clips)
    print(f"make_clip end to end: {clip['clips_per_s']:.2f} clips/s ({clip['fps']:.1f} frames/s)", flush=True)
    head = results[0]
    out = {
        "fps": head["fps"],
        "setting": {"kind": "indoor", "shadows": False, "image_hw": list(hw), "frames_per_clip": args.frames,
                    "fov_deg": 60.0, "renderer": "render_frames (jit + vmap over frames)"},
        "fps_indoor_shadows": results[1]["fps"],
        "fps_outdoor": results[2]["fps"],
        "fps_outdoor_shadows": results[3]["fps"],
        "make_clip": clip,
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "python": sys.version.split()[0],
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
