#!/usr/bin/env python
"""Wan VAE benchmark: mirage_jax ``WanVAE`` against diffusers' ``AutoencoderKLWan`` (same weights).

Times ``encode`` (video -> latent mean) and ``decode`` (latent -> video) for one config and video
size, in JAX (whole call jit-compiled; compile time reported apart) and in PyTorch in the same
run, and reports the ratio (torch time / JAX time), the largest difference between the two
outputs, and memory:

* JAX: XLA's compiled memory analysis (arguments, outputs, temporaries, peak where the backend
  reports it) and, on GPU, the device's ``peak_bytes_in_use`` (process-wide high-water mark,
  read after each phase; JAX preallocation is switched off);
* torch: ``torch.cuda.max_memory_allocated`` on CUDA (not measurable per call on CPU).

``--memory-scaling`` compiles (without running) tiled and untiled decode/encode at one and two
times the frame width and reports XLA's temporary bytes: tiled memory should not grow with the
frame size beyond the tile outputs.

Examples::

    # CPU, tiny config (seconds)
    python experiments/bench_vae.py --config tiny22 --height 64 --width 64 --frames 9 \\
        --json experiments/results/bench_vae_cpu_tiny.json
    # GPU, the full Wan2.2 VAE at the Mirage resolution
    python experiments/bench_vae.py --config wan22 --height 704 --width 1280 --frames 33 \\
        --dtype bfloat16 --json experiments/results/bench_vae_gpu_wan22.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# JAX must not grab most of the GPU up front: torch runs in the same process, and the device's
# peak_bytes_in_use should reflect what the VAE needs.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import time_calls  # noqa: E402  (experiments/common.py)
from mirage_jax.convert import wan_vae as cv  # noqa: E402
from mirage_jax.convert.place import place  # noqa: E402
from mirage_jax.models.wan import WanRuntime  # noqa: E402
from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig, param_count  # noqa: E402

CONFIGS = {
    "wan22": WanVAEConfig.wan22,
    "wan21": WanVAEConfig.wan21,
    "tiny22": lambda: WanVAEConfig.tiny("wan2.2"),
    "tiny21": lambda: WanVAEConfig.tiny("wan2.1"),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _mem_dict(compiled) -> dict | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes") if hasattr(m, k)}
    peak = getattr(m, "peak_memory_in_bytes", None)
    if peak:
        out["peak_memory_in_bytes"] = int(peak)
    return out


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _summary(times: list[float]) -> dict:
    return {"times_s": [round(t, 6) for t in times], "median_s": statistics.median(times), "min_s": min(times)}


def _random_model(cfg: WanVAEConfig, dtype, seed: int) -> WanVAE:
    """Random weights drawn on the host (fan-in scaled normal kernels, zero biases, unit norms)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for path, shape in cv.model_shapes(cfg).items():
        if path.endswith(".kernel"):
            fan_in = int(np.prod(shape[:-1]))
            arrays[path] = (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
        elif path.endswith(".scale"):
            arrays[path] = np.ones(shape, np.float32)
        else:
            arrays[path] = np.zeros(shape, np.float32)
    return place(nnx.eval_shape(lambda: WanVAE(cfg, WanRuntime(dtype=dtype))), arrays)


def _torch_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _run_jax(model: WanVAE, args, video: np.ndarray, latent: np.ndarray | None, tiling: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    graphdef, state = nnx.split(model)

    def enc(state, v):
        return nnx.merge(graphdef, state).encode(v, **tiling)

    def dec(state, z):
        return nnx.merge(graphdef, state).decode(z, **tiling)

    res: dict = {}
    mean = out = None
    dev_video = jax.device_put(jnp.asarray(video, model.dtype))
    if not args.skip_encode:
        t0 = time.perf_counter()
        compiled = jax.jit(enc).lower(state, dev_video).compile()
        compile_s = time.perf_counter() - t0
        mean = compiled(state, dev_video)
        times = time_calls(lambda: compiled(state, dev_video), repeats=args.repeats, warmup=args.warmup)["times_s"]
        res["encode"] = {"compile_s": compile_s, **_summary(times), "memory": _mem_dict(compiled), "device_peak_bytes": _device_peak()}
        mean = np.asarray(mean.astype(jnp.float32))
    z = latent if latent is not None else mean
    dev_z = jax.device_put(jnp.asarray(z, model.dtype))
    if not args.skip_decode:
        t0 = time.perf_counter()
        compiled = jax.jit(dec).lower(state, dev_z).compile()
        compile_s = time.perf_counter() - t0
        out = compiled(state, dev_z)
        times = time_calls(lambda: compiled(state, dev_z), repeats=args.repeats, warmup=args.warmup)["times_s"]
        res["decode"] = {"compile_s": compile_s, **_summary(times), "memory": _mem_dict(compiled), "device_peak_bytes": _device_peak()}
        out = np.asarray(out.astype(jnp.float32))
    return res, mean, out


def _run_torch(tm, args, video: np.ndarray, latent: np.ndarray, cfg: WanVAEConfig, tiling: dict) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    import torch

    device = next(tm.parameters()).device
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    res: dict = {}
    mean = out = None
    x = torch.tensor(np.asarray(video)).permute(0, 4, 1, 2, 3).to(device, tdtype)
    z = torch.tensor(np.asarray(latent)).permute(0, 4, 1, 2, 3).to(device, tdtype)
    with torch.inference_mode():
        for phase, fn in (("encode", lambda: tm.encode(x).latent_dist.mode()), ("decode", lambda: tm.decode(z).sample)):
            if getattr(args, f"skip_{phase}"):
                continue
            if tiling.get("tiled"):
                p = cfg.patch
                # diffusers' tiled_encode measures tiles after patchify; tiled_decode in pixels.
                div = p if phase == "encode" else 1
                tm.enable_tiling(
                    tiling["tile_sample_size"] // div, tiling["tile_sample_size"] // div,
                    tiling["tile_sample_stride"] // div, tiling["tile_sample_stride"] // div,
                )  # fmt: skip
            if cuda:
                torch.cuda.reset_peak_memory_stats()

            def call():
                y = fn()
                sync()
                return y

            y = call()
            times = time_calls(call, repeats=args.repeats, warmup=args.warmup)["times_s"]
            res[phase] = {**_summary(times), "peak_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None}
            arr = y.float().permute(0, 2, 3, 4, 1).cpu().numpy()
            if phase == "encode":
                mean = arr
            else:
                out = arr
    return res, mean, out


def _memory_scaling(cfg: WanVAEConfig, args, dtype) -> dict:
    """XLA temporary bytes of tiled vs untiled encode/decode at 1x and 2x width (compile only)."""
    abstract = nnx.eval_shape(lambda: WanVAE(cfg, WanRuntime(dtype=dtype)))
    graphdef, state = nnx.split(abstract)
    out = {}
    tiling = dict(tile_sample_size=args.tile_size, tile_sample_stride=args.tile_stride)
    for width in (args.width, 2 * args.width):
        vshape = (args.batch, args.frames, args.height, width, cfg.video_channels)
        zshape = cfg.latent_shape(vshape)
        row = {}
        for name, fn, shape in (
            ("encode", lambda s, v, **kw: nnx.merge(graphdef, s).encode(v, **kw), vshape),
            ("decode", lambda s, z, **kw: nnx.merge(graphdef, s).decode(z, **kw), zshape),
        ):
            x = jax.ShapeDtypeStruct(shape, dtype)
            for tiled in (False, True):
                kw = dict(tiled=True, **tiling) if tiled else {}
                compiled = jax.jit(lambda s, x, fn=fn, kw=kw: fn(s, x, **kw)).lower(state, x).compile()
                row[f"{name}_{'tiled' if tiled else 'untiled'}"] = _mem_dict(compiled)
        out[f"width_{width}"] = row
        print(f"  memory (width {width}): " + ", ".join(f"{k} temp {v['temp_size_in_bytes'] / 2**20:.1f} MiB" for k, v in row.items() if v))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny22")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--frames", type=int, default=9, help="1 + 4k")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype of both implementations")
    ap.add_argument("--tiled", action="store_true", help="spatially tiled encode/decode (both implementations)")
    ap.add_argument("--tile-size", type=int, default=None, help="tile size in video pixels (default: diffusers' default)")
    ap.add_argument("--tile-stride", type=int, default=None, help="tile stride in video pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true", help="time JAX only (random weights)")
    ap.add_argument("--torch-device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--memory-scaling", action="store_true", help="also compile tiled/untiled at 1x and 2x width and report XLA temp bytes")
    ap.add_argument("--json", type=str, default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    cfg = CONFIGS[args.config]()
    dtype = DTYPES[args.dtype]
    if args.tiled:
        p, s = cfg.patch, cfg.spatial_ratio
        args.tile_size = args.tile_size or 256 * p
        args.tile_stride = args.tile_stride or 192 * p
        if args.tile_size % s or args.tile_stride % s:
            ap.error(f"with --tiled, tile size/stride must be multiples of {s} pixels")
    tiling = dict(tiled=True, tile_sample_size=args.tile_size, tile_sample_stride=args.tile_stride) if args.tiled else {}
    video_shape = (args.batch, args.frames, args.height, args.width, cfg.video_channels)
    latent_shape = cfg.latent_shape(video_shape)
    rng = np.random.default_rng(args.seed)
    video = rng.uniform(-1.0, 1.0, video_shape).astype(np.float32)

    use_torch = not args.no_torch
    if use_torch:
        try:
            import diffusers
            import torch
        except ImportError:
            print("torch/diffusers not installed: timing JAX only")
            use_torch = False

    t0 = time.perf_counter()
    tm = None
    if use_torch:
        torch.manual_seed(args.seed)
        kwargs = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_") and k != "clip_output"}
        tm = diffusers.AutoencoderKLWan(**kwargs).eval()
        sd = {k: v.numpy() for k, v in tm.state_dict().items()}
        model = cv.vae_from_state(cfg, sd, runtime=WanRuntime(dtype=dtype))
        del sd
        tm = tm.to(_torch_device(args.torch_device))
        if args.dtype != "float32":
            tm = tm.to(torch.bfloat16)
    else:
        model = _random_model(cfg, dtype, args.seed)
    setup_s = time.perf_counter() - t0

    dev = jax.devices()[0]
    print(f"config {args.config} ({param_count(cfg)['total']:,} params), video {video_shape} -> latent {latent_shape}, "
          f"{args.dtype}, tiled={args.tiled}, JAX on {dev.platform} ({dev.device_kind}), setup {setup_s:.1f}s")  # fmt: skip

    latent_in = rng.normal(size=latent_shape).astype(np.float32) if args.skip_encode else None
    jax_res, jax_mean, jax_out = _run_jax(model, args, video, latent_in, tiling)
    latent = jax_mean if jax_mean is not None else latent_in

    result = {
        "benchmark": "wan_vae",
        "config": args.config,
        "config_dict": cfg.to_diffusers(),
        "params": param_count(cfg),
        "video_shape": list(video_shape),
        "latent_shape": list(latent_shape),
        "dtype": args.dtype,
        "tiling": {k: v for k, v in tiling.items()} or None,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "env": {
            "jax": jax.__version__,
            "jax_backend": dev.platform,
            "jax_device": dev.device_kind,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "jax": jax_res,
    }
    for phase in ("encode", "decode"):
        if phase in jax_res:
            r = jax_res[phase]
            mem = (r.get("memory") or {}).get("temp_size_in_bytes")
            print(f"  JAX   {phase}: median {r['median_s'] * 1e3:9.1f} ms (compile {r['compile_s']:.1f}s)"
                  + (f", XLA temp {mem / 2**20:.1f} MiB" if mem is not None else "")
                  + (f", device peak {r['device_peak_bytes'] / 2**30:.2f} GiB" if r.get("device_peak_bytes") else ""))  # fmt: skip

    if tm is not None:
        import torch

        result["env"]["torch"] = torch.__version__
        result["env"]["torch_device"] = str(next(tm.parameters()).device)
        import diffusers

        result["env"]["diffusers"] = diffusers.__version__
        torch_res, t_mean, t_out = _run_torch(tm, args, video, latent, cfg, tiling)
        result["torch"] = torch_res
        ratio, diffs = {}, {}
        for phase, ours, theirs in (("encode", jax_mean, t_mean), ("decode", jax_out, t_out)):
            if phase in torch_res and phase in jax_res:
                ratio[phase] = torch_res[phase]["median_s"] / jax_res[phase]["median_s"]
                scale = float(np.max(np.abs(theirs))) or 1.0
                diffs[phase] = {"max_abs": float(np.max(np.abs(ours - theirs))), "ref_max_abs": scale}
                r = torch_res[phase]
                print(f"  torch {phase}: median {r['median_s'] * 1e3:9.1f} ms" + (f", peak {r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "")
                      + f"  -> torch/JAX time ratio {ratio[phase]:.2f}, max |diff| {diffs[phase]['max_abs']:.2e} (ref max {scale:.2f})")  # fmt: skip
        result["speedup_torch_over_jax"] = ratio
        result["output_diff"] = diffs

    if args.memory_scaling:
        if not args.tiled:
            args.tile_size = args.tile_size or 256 * cfg.patch
            args.tile_stride = args.tile_stride or 192 * cfg.patch
        result["memory_scaling"] = _memory_scaling(cfg, args, dtype)

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
