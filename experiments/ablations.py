#!/usr/bin/env python
"""The paper's ablations at small scale (issue 10, section 4) on the held-out suite, with exact
ground truth: one row each, the same model, suite, sampler and seed, through
:func:`mirage_jax.eval.suite.evaluate` (its metrics, nothing recomputed here).

Rows (``--rows``, comma-separated; default all but ``rgb_cache``):

* ``memory``: the memory on, exact depth for write-back (the reference's unbounded memory);
* ``memory_off``: the readout zeroed at every chunk (``RolloutConfig(read_memory=False)``);
* ``depth_model``: write-back depth from the checkpoint's depth model (also scored by AbsRel);
* ``depth_noisy``: exact depth times log-normal noise of relative size ``--depth-noise``
  (:class:`mirage_jax.generate.providers.NoisyDepth`);
* on long revisiting paths (``--policy-chunks`` chunks of the same suite; every suite path comes
  back) at a fixed capacity of ``--capacity-latents`` latent frames' cells: ``append`` (unbounded:
  the reference), ``ring`` (oldest points evicted), ``fuse`` (voxel fusion, RolloutConfig's
  default voxel): quality and bytes;
* ``rgb_cache`` (with ``--rgb-weights DIR``, the bundle of experiments/train_rgb_ablation.py: a
  model trained with the RGB point-cloud cache): the same suite through
  ``RolloutConfig(memory_kind="rgb")``.

Each row: the aggregate PSNR / SSIM vs the truth, closed-loop PSNR vs the truth and vs the earlier
generated frame (PSNRc), the 3D-consistency MSE, depth AbsRel (``depth_model``), memory MiB held
at the end and at the peak, seconds; then ``memory`` - ``memory_off`` (and ``memory`` -
``rgb_cache``) deltas against the issue's targets (PSNRc >= 3 dB above memory off; the latent
cache at least as good as the RGB cache). Each suite is rendered once per (worlds, chunks).

    .venv/bin/python experiments/ablations.py --weights weights/small     # make ablations
    # -> experiments/results/ablations_small.json and .md; with the RGB-cache variant:
    .venv/bin/python experiments/ablations.py --rgb-weights runs/small_rgb_bundle
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

MAIN_ROWS = ("memory", "memory_off", "depth_model", "depth_noisy")
POLICY_ROWS = ("append", "ring", "fuse")
ROWS = MAIN_ROWS + POLICY_ROWS + ("rgb_cache",)
METRICS = (  # (row field, aggregate key of evaluate's report)
    ("psnr", "psnr"),
    ("ssim", "ssim"),
    ("psnrc_vs_gt", "closed_loop_psnr_vs_gt"),
    ("psnrc_vs_earlier", "closed_loop_psnr_vs_earlier"),
    ("consistency_mse", "consistency_mse"),
    ("depth_abs_rel", "depth_abs_rel"),
)
DELTAS = ("psnr", "ssim", "psnrc_vs_gt", "psnrc_vs_earlier", "consistency_mse")
TARGET_PSNRC_DB = 3.0


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="rows: " + ", ".join(ROWS))
    p.add_argument("--weights", default="weights/small", help="the model (a small-model bundle or any --checkpoint)")
    p.add_argument("--rgb-weights", help="a model trained with the RGB point-cloud cache: adds the rgb_cache row")
    p.add_argument("--rows", help="comma-separated subset of the rows (default: all but rgb_cache without --rgb-weights)")
    p.add_argument("--worlds", type=int, default=8, help="held-out worlds, 1..8 (3 returning paths each)")
    p.add_argument("--kinds", default="indoor", help="scene kinds of the worlds (the small model knows rooms only)")
    p.add_argument("--trajectories", default="all", help="'all' or path types / entry names, comma-separated")
    p.add_argument("--chunks", type=int, default=3, help="chunks per rollout of the memory / depth rows")
    p.add_argument("--policy-chunks", type=int, default=5, help="chunks per rollout of the policy rows")
    p.add_argument("--capacity-latents", type=int, default=8,
                   help="ring / fuse capacity in latent frames' cells (latent h x w each)")
    p.add_argument("--depth-noise", type=float, default=0.1, help="depth_noisy: relative std of the noise")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (flow UniPC)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--image-size", help="H x W (default: the bundle's training size)")
    p.add_argument("--out", default="experiments/results/ablations_small", help="output path without suffix (.json, .md)")
    p.add_argument("--quiet", action="store_true")
    return p


def _image_size(args, files) -> tuple[int, int]:
    if args.image_size:
        from mirage_jax.eval.cli import image_size

        return image_size(args.image_size)
    if "bundle" not in files:
        raise UsageError(f"--weights {args.weights}: not a small-model bundle; give --image-size")
    try:
        return tuple(json.loads(files["bundle"].read_text())["train_config"]["data"]["image_hw"])
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"{files['bundle']}: no train_config.data.image_hw ({e}); give --image-size") from None


def _prepare(args) -> dict:
    """Every option checked before any model is built (UsageError / MirageError)."""
    from mirage_jax.eval import suite as S
    from mirage_jax.generate.pipeline import check_checkpoint
    from mirage_jax.generate.rollout import RolloutConfig

    if args.rows:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in rows if r not in ROWS]
        if unknown or not rows:
            raise UsageError(f"--rows {args.rows!r}: unknown rows {unknown}; rows: {', '.join(ROWS)}")
    else:
        rows = [r for r in ROWS if r != "rgb_cache" or args.rgb_weights]
    for name, lo in (("chunks", 1), ("policy_chunks", 1), ("capacity_latents", 1), ("steps", 1), ("seed", 0)):
        if getattr(args, name) < lo:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if not (math.isfinite(args.depth_noise) and args.depth_noise >= 0):
        raise UsageError(f"--depth-noise must be a finite number >= 0, got {args.depth_noise}")
    files = check_checkpoint(args.weights)
    if "depth_model" in rows and not files.get("depth_model"):
        raise UsageError(f"row depth_model: --weights {args.weights} has no depth model of its own (a bundle has)")
    if _control_source(files) != "latent":
        raise UsageError(f"--weights {args.weights}: a model trained with the RGB cache (config.json control_source "
                         f"'rgb'); the latent-memory rows need Mirage's (give it as --rgb-weights for the rgb_cache row)")
    if "rgb_cache" in rows:
        if not args.rgb_weights:
            raise UsageError("row rgb_cache needs --rgb-weights DIR (a model trained with the RGB cache)")
        source = _control_source(check_checkpoint(args.rgb_weights))
        if source != "rgb":
            raise UsageError(f"--rgb-weights {args.rgb_weights}: not a bundle trained with the RGB cache (its config.json "
                             f"has control_source {source!r}, expected 'rgb': experiments/train_rgb_ablation.py)")
    elif args.rgb_weights:
        raise UsageError("--rgb-weights is only used by the rgb_cache row, which --rows leaves out")
    hw = _image_size(args, files)
    entries = S.heldout_suite(args.worlds, kinds=[k.strip() for k in args.kinds.split(",") if k.strip()])
    entries = S.select(entries, None if args.trajectories == "all" else
                       [t.strip() for t in args.trajectories.split(",") if t.strip()])
    if not entries:
        raise UsageError(f"--trajectories {args.trajectories!r} selects nothing")
    for name, options in row_options(rows, args.capacity_latents, 1).items():  # ConfigError names a bad value
        RolloutConfig(image_hw=hw, seed=args.seed, num_chunks=_chunks(name, args), **options)
    return dict(rows=rows, hw=hw, entries=entries)


def _control_source(files: dict) -> str:
    """The readout a checkpoint's model was trained on ("latent" for a non-bundle checkpoint)."""
    from mirage_jax.small import bundle_control_source

    return bundle_control_source(files["bundle"].parent) if "bundle" in files else "latent"


def _chunks(row: str, args) -> int:
    return args.policy_chunks if row in POLICY_ROWS else args.chunks


def row_options(rows, capacity_latents: int, cells: int) -> dict:
    """RolloutConfig options of each row; the bounded rows hold ``capacity_latents`` latent
    frames of ``cells`` (latent h x w) points."""
    from mirage_jax.generate.rollout import RolloutConfig

    capacity = capacity_latents * cells
    table = dict(memory={}, memory_off=dict(read_memory=False), depth_model={}, depth_noisy={}, append={},
                 ring=dict(memory_capacity=capacity, memory_policy="ring"),
                 fuse=dict(memory_capacity=capacity, memory_policy="fuse", memory_voxel=RolloutConfig.memory_voxel),
                 rgb_cache=dict(memory_kind="rgb"))
    return {r: table[r] for r in rows}


def summarize(name: str, report: dict, seconds: float, options: dict) -> dict:
    """One row of the table from an :func:`~mirage_jax.eval.suite.evaluate` report."""
    agg = report["aggregate"]
    row = dict(row=name, trajectories=agg["trajectories"], chunks=report["settings"]["chunks"],
               frames=report["settings"]["frames"], options=options)
    row.update({k: agg[key] for k, key in METRICS})
    for k in ("held", "peak"):
        b = agg[f"memory_bytes_{k}"]
        row[f"memory_mib_{k}"] = None if b is None else b / 2**20
    row["seconds"] = seconds
    return row


def deltas(rows: dict, a: str, b: str) -> dict | None:
    """``a`` - ``b`` for the quality metrics, when both rows ran."""
    if a not in rows or b not in rows:
        return None
    out = {}
    for k in DELTAS:
        x, y = rows[a][k], rows[b][k]
        out[k] = None if x is None or y is None else x - y
    return out


def run(args, prep) -> dict:
    """Loads the model(s) once and runs the rows; returns the result (settings, rows, deltas,
    targets and each row's full evaluate report)."""
    from mirage_jax.diffusion import FlowUniPC
    from mirage_jax.eval import suite as S
    from mirage_jax.generate.pipeline import load_pipeline

    pipelines = dict(main=load_pipeline(args.weights))
    if "rgb_cache" in prep["rows"]:
        pipelines["rgb"] = load_pipeline(args.rgb_weights)
    pipe = pipelines["main"]
    sampler = FlowUniPC(num_steps=args.steps)
    hw = prep["hw"]
    ratio = pipe.vae.config.spatial_ratio
    options = row_options(prep["rows"], args.capacity_latents, (hw[0] // ratio) * (hw[1] // ratio))
    rendered: dict[int, list] = {}
    reports, rows = {}, {}
    for name in prep["rows"]:
        chunks = _chunks(name, args)
        if chunks not in rendered:
            rendered[chunks] = [S.render_instance(e, hw, chunks) for e in prep["entries"]]
        depth_fn = pipe.depth_model if name == "depth_model" else None
        gen = S.rollout_generate_fn(pipelines["rgb" if name == "rgb_cache" else "main"], chunks=chunks,
                                    sampler=sampler, seed=args.seed, depth_fn=depth_fn,
                                    depth_noise=args.depth_noise if name == "depth_noisy" else None,
                                    **options[name])
        t0 = time.perf_counter()
        rep = S.evaluate(gen, rendered[chunks], image_hw=hw, chunks=chunks, depth_fn=depth_fn, label=name,
                         progress=not args.quiet, settings=dict(row=name, **options[name]))
        reports[name] = rep
        rows[name] = summarize(name, rep, time.perf_counter() - t0, options[name])
        if not args.quiet:
            print(S.aggregate_table({name: rep}).splitlines()[-1], flush=True)
    d_off = deltas(rows, "memory", "memory_off")
    d_rgb = deltas(rows, "memory", "rgb_cache")
    targets = dict(
        psnrc_memory_minus_off_db=None if d_off is None else d_off["psnrc_vs_gt"],
        psnrc_3db_above_memory_off=None if d_off is None or d_off["psnrc_vs_gt"] is None
        else bool(d_off["psnrc_vs_gt"] >= TARGET_PSNRC_DB),
        latent_at_least_rgb=None if d_rgb is None or d_rgb["psnrc_vs_gt"] is None else bool(d_rgb["psnrc_vs_gt"] >= 0),
    )
    return dict(
        settings=dict(weights=str(args.weights), rgb_weights=args.rgb_weights, image_hw=list(hw),
                      worlds=args.worlds, kinds=args.kinds, trajectories=[e.name for e in prep["entries"]],
                      chunks=args.chunks, policy_chunks=args.policy_chunks, capacity_latents=args.capacity_latents,
                      depth_noise=args.depth_noise, steps=args.steps, sampler="FlowUniPC", seed=args.seed,
                      model=pipe.name, platform=platform.platform(), python=sys.version.split()[0]),
        rows=rows,
        deltas=dict(memory_minus_memory_off=d_off, memory_minus_rgb_cache=d_rgb),
        targets=targets,
        reports=reports,
    )


def markdown(result: dict) -> str:
    from mirage_jax.eval import suite as S

    s = result["settings"]
    lines = [f"# Ablations: {s['model']}", "",
             f"{len(s['trajectories'])} held-out trajectories ({s['kinds']}), {s['image_hw'][0]}x{s['image_hw'][1]}, "
             f"{s['steps']} UniPC steps, seed {s['seed']}; memory / depth rows {s['chunks']} chunks, policy rows "
             f"{s['policy_chunks']} chunks at {s['capacity_latents']} latent frames of capacity.", "",
             S.aggregate_table(result["reports"])]
    for key, d in result["deltas"].items():
        if d is not None:
            lines.append(f"{key.replace('_', ' ')}: " + ", ".join(
                f"{k} {'-' if v is None else f'{v:+.3f}'}" for k, v in d.items()))
    lines.append(f"\ntargets: {json.dumps(result['targets'])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from mirage_jax.errors import MirageError
    from mirage_jax.eval import suite as S

    args = _parser().parse_args(argv)
    try:
        prep = _prepare(args)
    except (UsageError, MirageError) as e:
        print(f"ablations: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    result = run(args, prep)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(S.json_safe(result), indent=1, allow_nan=False) + "\n")
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md, end="")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
