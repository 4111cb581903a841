"""Benchmark of the chunked rollout (the shape of the paper's efficiency figure, spec 7).

For a 5-chunk rollout of the tiny random pipeline (``random:tiny``) on a procedural world with
ground-truth depth, per chunk: seconds per generated frame (chunk 1: 33 frames incl. compilation;
later chunks: 32 new frames, the programs reused) split into denoise + decode, depth and memory
write, and the memory's size (MiB held by its valid entries, and allocated). The paper's Mirage:
0.79, 0.25, 0.25, 0.25, 0.25 s per frame and 0.46, 0.90, 1.36, 1.80, 2.25 MiB (5B on a GPU).

``--peak-5b`` adds the compiled 5B chunk program's memory analysis at 1280 x 704 (scanned layers,
chunked attention, tiled decode; abstract inputs, nothing allocated): ``chunk_memory_analysis``,
in bf16 and in f32. On the CPU backend the bf16 program's temporaries include f32 copies of the
bf16 weights (its dots run in f32: ~28 GiB for the 5B model + branch), which a GPU does not make;
the f32 program has no such copies.

Writes JSON (and a PNG plot when matplotlib is installed) to experiments/results/.

    python experiments/bench_rollout.py                       # tiny, 5 chunks, 64 x 128
    python experiments/bench_rollout.py --peak-5b             # + the 5B memory analysis
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mirage_jax.data.worlds import make_clip  # noqa: E402
from mirage_jax.diffusion import FlowUniPC  # noqa: E402
from mirage_jax.generate.pipeline import tiny_pipeline  # noqa: E402
from mirage_jax.generate.providers import GeometryDepth  # noqa: E402
from mirage_jax.generate.rollout import RolloutConfig, chunk_memory_analysis, rollout  # noqa: E402

MIB = 2**20


def bench_tiny(chunks: int, image_hw, steps: int) -> dict:
    frames = 33 + 32 * (chunks - 1)
    t0 = time.perf_counter()
    clip = make_clip(0, image_hw, frames, kind="indoor", trajectory="loop")
    render_s = time.perf_counter() - t0
    pipe = tiny_pipeline(0)
    text = pipe.encode_text(["a room"])
    res = rollout(pipe.model, pipe.vae, clip["frames"][0], clip["intrinsics"][0], clip["cam2world"], text,
                  first_depth=clip["depth"][0], depth=GeometryDepth(clip["depth"]), sampler=FlowUniPC(num_steps=steps),
                  config=RolloutConfig(num_chunks=chunks, image_hw=image_hw))
    rows = []
    for c in res.chunks:
        rows.append(dict(
            chunk=c["chunk"] + 1,
            seconds_per_frame=c["seconds_per_frame"],
            seconds=c["seconds"],
            memory_points=c["memory"]["count"],
            memory_mib=c["memory_bytes"]["held"] / MIB,
            memory_allocated_mib=c["memory_bytes"]["allocated"] / MIB,
            references=c["reference_latents"],
            reference_iou=c["reference_iou"],
            readout_coverage=c["readout_coverage"],
        ))
    return dict(image_hw=list(image_hw), chunks=chunks, steps=steps, render_clip_s=render_s, per_chunk=rows)


def peak_5b(attention: str = "chunked", dtype: str = "bfloat16") -> dict:
    from mirage_jax.models.mirage import MirageConfig
    from mirage_jax.models.wan.layers import WanRuntime
    from mirage_jax.models.wan.vae import WanVAEConfig

    rt = WanRuntime(param_dtype=dtype, dtype=dtype, scan_layers=True, attention=attention)
    t0 = time.perf_counter()
    out = chunk_memory_analysis(MirageConfig(), WanVAEConfig.wan22(), runtime=rt, vae_runtime=rt, image_hw=(704, 1280),
                                config=RolloutConfig(num_chunks=5, image_hw=(704, 1280), tiled_decode=True))
    out = {k: v / 2**30 for k, v in out.items()}
    return dict(unit="GiB", attention=attention, dtype=dtype, compile_s=time.perf_counter() - t0, **out)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG plot (JSON only)")
        return False
    rows = result["tiny"]["per_chunk"]
    x = [r["chunk"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(x, [r["seconds_per_frame"] for r in rows], "o-")
    a.set(xlabel="chunk", ylabel="seconds per frame", title="rollout time (tiny, CPU)")
    b.plot(x, [r["memory_mib"] for r in rows], "o-")
    b.set(xlabel="chunk", ylabel="MiB", title="latent memory held")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--image-hw", default="64,128")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak-5b", action="store_true")
    ap.add_argument("--attention", default="chunked", help="5B attention kernel (xla materialises the scores)")
    ap.add_argument("--peak-dtypes", default="bfloat16,float32",
                    help="5B parameter / compute dtypes to analyse (the CPU backend upcasts bf16 weights to f32)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_rollout"))
    args = ap.parse_args()
    hw = tuple(int(v) for v in args.image_hw.split(","))
    result = dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()][:1],
                  machine=platform.machine(), jax=jax.__version__)
    result["tiny"] = bench_tiny(args.chunks, hw, args.steps)
    for r in result["tiny"]["per_chunk"]:
        print(f"chunk {r['chunk']}: {r['seconds_per_frame']:.4f} s/frame, memory {r['memory_mib']:.4f} MiB "
              f"({r['memory_points']} points), references {r['references']}")
    if args.peak_5b:
        result["peak_5b"] = [peak_5b(args.attention, d) for d in args.peak_dtypes.split(",")]
        for r in result["peak_5b"]:
            print("5B chunk program:", json.dumps(r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print("wrote", out.with_suffix(".json"))


if __name__ == "__main__":
    main()
