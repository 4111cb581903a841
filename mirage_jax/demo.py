"""``make demo``: the bundled small Mirage generates a held-out world with and without its memory.

    python -m mirage_jax.demo [--weights weights/small] [--out outputs/demo] [--seed S]

Loads the bundle of ``make train-small`` (:func:`mirage_jax.small.load_bundle`), samples a
held-out indoor world (a seed of :mod:`mirage_jax.eval.suite`'s reserved range, outside the
training range recorded in the bundle), and generates ``--chunks`` chunks (3: 97 frames) from
its first frame along an out-and-back camera path (a walk of 49 poses played forwards then
backwards, so frame 96 - t is at the pose of frame t) with
:func:`mirage_jax.generate.rollout.rollout`, twice: with the memory, and with the memory off
(the control input's readout half zeroed at every chunk: ``RolloutConfig(read_memory=False)``;
the same model, sampler and seed). Depth for the write-back of generated frames comes from the
bundled depth model (the pipeline's ``depth_model``); the first frame's depth is the world's
exact depth.

Writes into ``--out``: ``video.mp4`` and ``video.gif`` (ground truth | with memory | memory off),
``frames/`` (the side-by-side frames), ``memory.ply`` (the memory of the run with memory),
``psnr.png`` (per-frame PSNR of both runs), ``report.json``; prints the closed-loop figures.
Report fields: ``psnr_memory`` / ``psnr_memory_off`` (mean over generated frames 1.. vs ground
truth), ``closed_loop_psnr_memory`` / ``closed_loop_psnr_memory_off`` (the frames where the path
returns, 49..96, vs ground truth), ``closed_loop_consistency_*`` (the same frames vs the frame
generated earlier at the same pose: the paper's PSNRc), ``frames``, ``seconds``,
``scene_seed`` and the per-frame lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from mirage_jax.errors import ConfigError
from mirage_jax.eval.suite import check_held_out, held_out_seed

__all__ = ["DEMO_SEED", "main", "run_demo"]

DEMO_SEED = held_out_seed(2)  # a held-out world of mirage_jax.eval.suite (training seeds are [0, num_clips))


def demo_world(seed: int, image_hw, num_chunks: int, fov_deg: float = 60.0, fps: float = 16.0) -> dict:
    """The held-out world, its out-and-back path of 33 + 32 (N - 1) poses and the ground truth."""
    from mirage_jax.data.worlds import caption, intrinsics_from_fov, random_trajectory, render_frames, sample_scene
    from mirage_jax.geometry.trajectories import num_frames_for_chunks, out_and_back

    n = num_frames_for_chunks(num_chunks)
    if n % 2 == 0:
        raise ConfigError(f"{num_chunks} chunks give {n} frames; an out-and-back path needs an odd count")
    scene = sample_scene(int(seed), "indoor")
    half = (n + 1) // 2
    c2w = out_and_back(random_trajectory(scene, int(seed), half, kind="walk",
                                         times=np.arange(half, dtype=np.float64) / fps))
    K = np.asarray(intrinsics_from_fov(tuple(image_hw), fov_deg), np.float32)
    times = (np.arange(n) / fps).astype(np.float32)
    out = render_frames(scene, np.broadcast_to(K, (n, 3, 3)).copy(), c2w, tuple(image_hw), times)
    frames = np.round(np.asarray(out["rgb"]) * 255).astype(np.uint8)
    return dict(scene=scene, c2w=np.asarray(c2w, np.float32), K=K, frames=frames,
                depth=np.asarray(out["depth"], np.float32), caption=caption(scene), half=half)


def per_frame_psnr(a, b) -> np.ndarray:
    from mirage_jax.eval.metrics import psnr

    return np.asarray(psnr(a, b, max_val=255.0))


def run_demo(weights="weights/small", out="outputs/demo", *, seed: int = DEMO_SEED, num_chunks: int = 3,
             sampler_steps: int = 20, quiet: bool = False) -> dict:
    from mirage_jax import memory
    from mirage_jax.diffusion import FlowUniPC
    from mirage_jax.generate.outputs import write_frames, write_gif, write_video
    from mirage_jax.generate.providers import JaxDepth
    from mirage_jax.generate.rollout import rollout
    from mirage_jax.small import load_bundle

    t0 = time.perf_counter()
    bundle = load_bundle(weights)
    lo, hi = bundle.config.get("train_seeds", (0, 0))
    if lo <= seed < hi:
        raise ConfigError(f"scene seed {seed} was used in training (seeds [{lo}, {hi})); pick a held-out one")
    check_held_out(seed, "--seed")
    hw = tuple(bundle.config["train_config"]["data"]["image_hw"])
    world = demo_world(seed, hw, num_chunks)
    pipe = bundle.pipeline
    text = pipe.encode_text([world["caption"]])
    depth = JaxDepth(pipe.depth_model)
    cfg = pipe.rollout_config(num_chunks=num_chunks, image_hw=hw)
    sampler = FlowUniPC(num_steps=sampler_steps)
    videos, results = {}, {}
    for name, read in (("memory", True), ("memory_off", False)):
        res = rollout(pipe.model, pipe.vae, world["frames"][0], world["K"], world["c2w"], text,
                      first_depth=world["depth"][0], depth=depth, sampler=sampler,
                      config=dataclasses.replace(cfg, read_memory=read))
        videos[name], results[name] = res.video, res
        if not quiet:
            print(f"{name}: {res.video.shape[0]} frames, {sum(c['seconds']['total'] for c in res.chunks):.1f} s")
    gt = world["frames"][: cfg.num_frames]
    n, half = cfg.num_frames, world["half"]
    psnr = {k: per_frame_psnr(v, gt) for k, v in videos.items()}
    back = np.arange(half, n)  # frames on the way back; frame t sits at the pose of frame n - 1 - t
    report = dict(scene_seed=int(seed), caption=world["caption"], frames=int(n), image_hw=list(hw),
                  sampler_steps=sampler_steps, weights=str(weights))
    for k in videos:
        report[f"psnr_{k}"] = float(np.mean(psnr[k][1:]))
        report[f"closed_loop_psnr_{k}"] = float(np.mean(psnr[k][back]))
        report[f"closed_loop_consistency_{k}"] = float(np.mean(per_frame_psnr(videos[k][back], videos[k][n - 1 - back])))
        report[f"per_frame_psnr_{k}"] = [float(x) for x in psnr[k]]
        report[f"readout_coverage_{k}"] = [c["readout_coverage"] for c in results[k].chunks]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    side = np.concatenate([gt, videos["memory"], videos["memory_off"]], axis=2)
    write_video(out / "video.mp4", side)
    write_gif(out / "video.gif", side)
    write_frames(out / "frames", side)
    memory.export_ply(results["memory"].memory, out / "memory.ply")
    _plot(out / "psnr.png", psnr, half)
    report["seconds"] = time.perf_counter() - t0
    report["files"] = dict(video="video.mp4", gif="video.gif", frames="frames", ply="memory.ply", plot="psnr.png",
                           report="report.json")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if not quiet:
        print(f"scene {seed}: closed-loop PSNR with memory {report['closed_loop_psnr_memory']:.2f} dB, memory off "
              f"{report['closed_loop_psnr_memory_off']:.2f} dB (all frames: {report['psnr_memory']:.2f} vs "
              f"{report['psnr_memory_off']:.2f}); {report['seconds']:.0f} s -> {out}")
    return report


def _plot(path, psnr: dict, half: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for k, label in (("memory", "with memory"), ("memory_off", "memory off")):
        ax.plot(np.arange(1, len(psnr[k])), psnr[k][1:], label=label)
    ax.axvline(half - 0.5, color="grey", ls="--", lw=0.8, label="path turns back")
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR vs ground truth (dB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="weights/small")
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--seed", type=int, default=DEMO_SEED, help="held-out scene seed")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="sampler steps per chunk")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    run_demo(args.weights, args.out, seed=args.seed, num_chunks=args.chunks, sampler_steps=args.steps, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
