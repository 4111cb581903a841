"""``mirage-jax evaluate``: a checkpoint on the fixed held-out suite (:mod:`mirage_jax.eval.suite`),
written as ``results.json`` and ``results.md`` in ``--out``.

    mirage-jax evaluate --checkpoint random:tiny --worlds 8 --trajectories all --chunks 1 --out eval/

``--worlds N`` takes the first N of the 8 held-out worlds; ``--trajectories`` is ``all`` or a
comma-separated list of path types (out_and_back, orbit, pan) or entry names (``w0-indoor-pan``).
Depth for the memory's write-back is the renderer's exact depth (``--depth gt``) or a JAX depth
model (``--depth model --depth-model module:function``, which is then also scored by AbsRel).
Bad arguments print one line ``mirage-jax evaluate: error: ...`` and exit with status 2 before
any model is built.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mirage_jax.errors import MirageError

__all__ = ["main"]


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
    p.add_argument("--depth", choices=("gt", "model"), default="gt", help="depth of generated frames for the memory")
    p.add_argument("--depth-model", help="--depth model: module:function, a JAX fn(images [n,H,W,3] in [0,1], K) -> [n,H,W]")
    p.add_argument("--worldscore", action="store_true", help="also write each video in the WorldScore layout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _UsageError(Exception):
    pass


def _image_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise _UsageError(f"--image-size {text!r}: expected H x W, e.g. 128x128") from None
    if h < 16 or w < 16 or h % 16 or w % 16:
        raise _UsageError(f"--image-size {text}: H and W must be positive multiples of 16 (the VAE's stride)")
    return h, w


def _prepare(args):
    from mirage_jax.eval import suite as S

    if args.chunks < 1:
        raise _UsageError(f"--chunks must be >= 1, got {args.chunks}")
    if args.steps < 1:
        raise _UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    hw = _image_size(args.image_size)
    entries = S.heldout_suite(args.worlds, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()])
    wanted = None if args.trajectories == "all" else [t.strip() for t in args.trajectories.split(",") if t.strip()]
    entries = S.select(entries, wanted)
    if not entries:
        raise _UsageError(f"--trajectories {args.trajectories!r} selects nothing in the first {args.worlds} worlds")
    depth_fn = None
    if args.depth == "model":
        if not args.depth_model or ":" not in args.depth_model:
            raise _UsageError("--depth model needs --depth-model module:function")
        mod, fn = args.depth_model.split(":", 1)
        try:
            depth_fn = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise _UsageError(f"--depth-model {args.depth_model}: cannot import ({e})") from None
    elif args.depth_model:
        raise _UsageError("--depth-model needs --depth model")
    from mirage_jax.generate.pipeline import check_checkpoint

    check_checkpoint(args.checkpoint)  # the layout, before any weight is read
    return hw, entries, depth_fn


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        hw, entries, depth_fn = _prepare(args)
    except (_UsageError, MirageError) as e:
        print(f"mirage-jax evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from mirage_jax.diffusion import FlowEuler, FlowUniPC
    from mirage_jax.eval import suite as S
    from mirage_jax.generate.pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint, seed=0)
    sampler = (FlowUniPC if args.sampler == "unipc" else FlowEuler)(num_steps=args.steps)
    generate = S.rollout_generate_fn(pipe, chunks=args.chunks, sampler=sampler, seed=args.seed, depth_fn=depth_fn)
    report = S.evaluate(generate, entries, image_hw=hw, chunks=args.chunks, out=args.out, depth_fn=depth_fn,
                        worldscore=args.worldscore, label=f"{pipe.name}, {args.steps} {args.sampler} steps",
                        progress=not args.quiet)
    print(S.markdown_table(report), end="")
    print(f"wrote {args.out}/results.json and results.md ({len(entries)} trajectories)")
    return 0
