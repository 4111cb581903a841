"""``mirage-jax evaluate``: a checkpoint on the fixed held-out suite (:mod:`mirage_jax.eval.suite`),
written as ``results.json`` and ``results.md`` in ``--out``.

    mirage-jax evaluate --checkpoint random:tiny --worlds 8 --trajectories all --chunks 1 --out eval/

``--worlds N`` takes the first N of the 8 held-out worlds; ``--trajectories`` is ``all`` or a
comma-separated list of path types (out_and_back, orbit, pan) or entry names (``w0-indoor-pan``).
Depth for the memory's write-back is the renderer's exact depth (``--depth gt``), that depth with
seeded log-normal noise (``--depth noisy-gt --depth-noise 0.1``) or a JAX depth model
(``--depth model``: the checkpoint's own, as a small-model bundle's, or ``--depth-model
module:function``; it is then also scored by AbsRel). The memory options are those of
:class:`~mirage_jax.generate.rollout.RolloutConfig`: ``--memory off`` zeroes the readout
(references are still retrieved; ``--max-reference 0`` turns them off), ``--memory-capacity`` /
``--memory-policy`` / ``--memory-voxel`` bound the memory. The memory is the kind the model was
trained on (``Pipeline.control_source``: a bundle of the explicit RGB-cache variant rolls out the
RGB cache), recorded as ``settings.memory_kind``. Every option lands in ``results.json``'s
``settings``; every trajectory records the memory's bytes (final and peak) and
the readout coverage per chunk. A small-model bundle (``weights/small``) is trained on rooms: use
``--kinds indoor``. Bad arguments print one line ``mirage-jax evaluate: error: ...`` and exit
with status 2 before any model is built.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys

from mirage_jax.errors import InputError, MirageError

__all__ = ["image_size", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mirage-jax evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint ('random:tiny' for random tiny models)")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md)")
    p.add_argument("--worlds", type=int, default=8, help="held-out worlds, 1..8 (3 trajectories each)")
    p.add_argument("--kinds", default="indoor,outdoor", help="scene kinds the worlds cycle through: indoor,outdoor or indoor")
    p.add_argument("--trajectories", default="all", help="'all' or path types / entry names, comma-separated")
    p.add_argument("--chunks", type=int, default=1, help="chunks per rollout (33 + 32 (N - 1) frames)")
    p.add_argument("--image-size", default="128x128", help="H x W pixels, e.g. 128x128")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--sampler", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--depth", choices=("gt", "model", "noisy-gt"), default="gt",
                   help="depth of generated frames for the memory")
    p.add_argument("--depth-model", help="--depth model: module:function, a JAX fn(images [n,H,W,3] in [0,1], K) -> "
                   "[n,H,W] (default: the checkpoint's own depth model)")
    p.add_argument("--depth-noise", type=float, default=None,
                   help="--depth noisy-gt: relative std of the log-normal noise (default 0.1)")
    p.add_argument("--memory", choices=("on", "off"), default="on", help="off: zero readout (the model does not read)")
    p.add_argument("--memory-capacity", type=int, default=None, help="memory point slots (default: unbounded)")
    p.add_argument("--memory-policy", choices=("ring", "fuse"), default="ring", help="eviction / fusion of a full memory")
    p.add_argument("--memory-voxel", type=float, default=None, help="--memory-policy fuse: voxel edge (default 0.05)")
    p.add_argument("--max-reference", type=int, default=4, help="retrieved reference latents per chunk (0: none)")
    p.add_argument("--worldscore", action="store_true", help="also write each video in the WorldScore layout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _UsageError(Exception):
    pass


def image_size(text: str) -> tuple[int, int]:
    """``--image-size`` ``HxW`` as (H, W); InputError unless both are positive multiples of 16
    (also used by experiments/ablations.py)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size {text!r}: expected H x W, e.g. 128x128") from None
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise InputError(f"--image-size {text}: H and W must be positive multiples of 16 (the VAE's stride)")
    return h, w


def _prepare(args):
    from mirage_jax.eval import suite as S
    from mirage_jax.generate.pipeline import check_checkpoint
    from mirage_jax.generate.rollout import RolloutConfig

    if args.chunks < 1:
        raise _UsageError(f"--chunks must be >= 1, got {args.chunks}")
    if args.steps < 1:
        raise _UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    hw = image_size(args.image_size)
    entries = S.heldout_suite(args.worlds, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()])
    wanted = None if args.trajectories == "all" else [t.strip() for t in args.trajectories.split(",") if t.strip()]
    entries = S.select(entries, wanted)
    if not entries:
        raise _UsageError(f"--trajectories {args.trajectories!r} selects nothing in the first {args.worlds} worlds")
    files = check_checkpoint(args.checkpoint)  # the layout, before any weight is read
    depth_fn = None
    if args.depth == "model":
        if args.depth_model:
            if ":" not in args.depth_model:
                raise _UsageError(f"--depth-model {args.depth_model!r}: expected module:function")
            mod, fn = args.depth_model.split(":", 1)
            try:
                depth_fn = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as e:
                raise _UsageError(f"--depth-model {args.depth_model}: cannot import ({e})") from None
        elif not files.get("depth_model"):
            raise _UsageError(f"--depth model: the checkpoint {args.checkpoint} has no depth model of its own; "
                              "give --depth-model module:function")
    elif args.depth_model:
        raise _UsageError("--depth-model needs --depth model")
    if args.depth_noise is not None and args.depth != "noisy-gt":
        raise _UsageError("--depth-noise needs --depth noisy-gt")
    depth_noise = (0.1 if args.depth_noise is None else args.depth_noise) if args.depth == "noisy-gt" else None
    if depth_noise is not None and not (math.isfinite(depth_noise) and depth_noise >= 0):
        raise _UsageError(f"--depth-noise must be a finite number >= 0, got {depth_noise}")
    if args.memory_voxel is not None and args.memory_policy != "fuse":
        raise _UsageError("--memory-voxel needs --memory-policy fuse")
    if args.memory_capacity is not None and args.memory_capacity < 1:
        raise _UsageError(f"--memory-capacity must be >= 1, got {args.memory_capacity}")
    options = dict(read_memory=args.memory == "on", memory_capacity=args.memory_capacity,
                   memory_policy=args.memory_policy, max_reference=args.max_reference)
    if args.memory_voxel is not None:
        options["memory_voxel"] = args.memory_voxel
    RolloutConfig(num_chunks=args.chunks, image_hw=hw, seed=args.seed, **options)  # ConfigError names a bad value
    settings = dict(checkpoint=args.checkpoint, kinds=args.kinds, trajectories=args.trajectories, steps=args.steps,
                    sampler=args.sampler, seed=args.seed, memory=args.memory, memory_capacity=args.memory_capacity,
                    memory_policy=args.memory_policy, max_reference=args.max_reference,
                    memory_voxel=options.get("memory_voxel", RolloutConfig.memory_voxel) if args.memory_policy == "fuse"
                    else None,
                    depth=args.depth, depth_model=args.depth_model if args.depth_model else
                    ("checkpoint" if args.depth == "model" else None), depth_noise=depth_noise)
    return hw, entries, depth_fn, depth_noise, options, settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        hw, entries, depth_fn, depth_noise, options, settings = _prepare(args)
    except (_UsageError, MirageError) as e:
        print(f"mirage-jax evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from mirage_jax.diffusion import FlowEuler, FlowUniPC
    from mirage_jax.eval import suite as S
    from mirage_jax.generate.pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint, seed=0)
    settings["memory_kind"] = pipe.control_source  # the rollout's memory: what the model was trained on
    if args.depth == "model" and depth_fn is None:
        depth_fn = pipe.depth_model  # the checkpoint's own (check_checkpoint found it)
    sampler = (FlowUniPC if args.sampler == "unipc" else FlowEuler)(num_steps=args.steps)
    generate = S.rollout_generate_fn(pipe, chunks=args.chunks, sampler=sampler, seed=args.seed, depth_fn=depth_fn,
                                     depth_noise=depth_noise, **options)
    report = S.evaluate(generate, entries, image_hw=hw, chunks=args.chunks, out=args.out, depth_fn=depth_fn,
                        worldscore=args.worldscore, label=f"{pipe.name}, {args.steps} {args.sampler} steps",
                        progress=not args.quiet, settings=settings)
    print(S.markdown_table(report), end="")
    print(f"wrote {args.out}/results.json and results.md ({len(entries)} trajectories)")
    return 0
