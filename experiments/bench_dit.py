"""Wan DiT throughput: JAX (mirage_jax) vs PyTorch (diffusers) at the same config and inputs.

    python experiments/bench_dit.py --config small --latent-grid 2,16,16 --text-len 64 \
        --json experiments/results/bench_dit_cpu.json
    # GPU, full model, 9,680 tokens (11 latent frames of 44 x 80), bf16, cuDNN flash attention:
    python experiments/bench_dit.py --config wan22_ti2v_5b --latent-grid 11,44,80 --dtype bfloat16 \
        --attention cudnn --backward --remat full --json experiments/results/bench_dit_h100.json

Measures the forward (and with ``--backward`` the forward + backward of a mean-square loss
w.r.t. all parameters) of one jitted step: compile time, then the median and minimum of
``--iters`` timed runs (each ``block_until_ready``), tokens per second (``batch * N / time``) and
MFU. Per-frame timesteps (frame 0 clean, as in Wan2.2 TI2V) and random text are used.

FLOPs (analytic, :func:`mirage_jax.models.wan.dit.forward_flops`): 2 per multiply-add of every
matmul. Per block with N tokens, L text tokens, width D, FFN width F:
``8ND^2 + 4N^2D`` (self-attention projections, scores and values), ``4ND^2 + 4LD^2 + 4NLD``
(cross-attention), ``4NDF`` (FFN); plus patch embedding, output projection, text and timestep
MLPs. Forward + backward counts ``3x`` the forward FLOPs (remat recomputation is not counted:
model FLOPs utilisation). MFU = FLOPs / time / (peak FLOP/s per device x devices used), the
peak from ``--peak-tflops`` or the table below (dense bf16 / fp32 tensor-core numbers).

PyTorch runs on CUDA when available, else on CPU; ``--torch off`` skips it (``auto`` skips it
only for the 5B config without CUDA). With PyTorch on, both frameworks use the same weights
(diffusers' random init, perturbed) and the maximum output difference is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import time_calls  # noqa: E402  (experiments/common.py)

# Peak dense FLOP/s per device in TFLOP/s: (device-kind substring, compute dtype) -> peak.
PEAK_TFLOPS = {
    ("H200", "bfloat16"): 989.0,
    ("H100", "bfloat16"): 989.0,
    ("H100", "float32"): 494.0,  # TF32 tensor cores
    ("H200", "float32"): 494.0,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 156.0,
    ("L4", "bfloat16"): 121.0,
    ("TPU v4", "bfloat16"): 275.0,
    ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5e", "bfloat16"): 197.0,
    ("TPU v5p", "bfloat16"): 459.0,
    ("TPU v6", "bfloat16"): 918.0,
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for (kind, dt), value in PEAK_TFLOPS.items():
        if kind.lower() in device_kind.lower() and dt == dtype:
            return value
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=("tiny", "small", "wan21_t2v_1_3b", "wan22_ti2v_5b"))
    p.add_argument("--latent-grid", default=None,
                   help="latent T,H,W (default 11,44,80 = 9,680 tokens for the Wan presets, 2,16,16 otherwise)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=None, help="text tokens (default 512 for Wan presets, 64 otherwise)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default="auto",
                   help="auto (JAX picks: cuDNN flash on GPU in bf16, else XLA) | xla | cudnn | chunked")
    p.add_argument("--remat", default="none")
    p.add_argument("--scan", action="store_true", help="scanned (stacked) layers")
    p.add_argument("--backward", action="store_true", help="also time forward + backward")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--torch", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s per device (TFLOP/s) for MFU")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def _summary(times, tokens, flops, peak_flops, devices):
    med = statistics.median(times)
    out = {"median_s": med, "min_s": min(times), "times_s": times, "tokens_per_s": tokens / med,
           "tflops_per_s": flops / med / 1e12}
    out["mfu"] = flops / med / (peak_flops * devices) if peak_flops else None
    return out


def random_model(cfg, runtime, seed: int = 0):
    """Random weights for timing only: N(0, 0.02) (norm scales 1 + N(0, 0.02)), each parameter
    drawn by a jitted generator cached per shape, so even the 5B model compiles a handful of
    small programs (the model's own initialiser traces one RNG call per parameter)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mirage_jax.models.wan.dit import WanDiT

    graphdef, state = nnx.split(nnx.eval_shape(lambda: WanDiT(cfg, runtime)))
    fns = {}
    for i, (path, var) in enumerate(nnx.to_flat_state(state)):
        value = var.get_value()
        one = 1.0 if str(path[-1]) == "scale" else 0.0
        key = (value.shape, value.dtype, one)
        if key not in fns:
            fns[key] = jax.jit(
                lambda k, shape=value.shape, dtype=value.dtype, one=one: (one + 0.02 * jax.random.normal(k, shape)).astype(dtype)
            )
        var.set_value(fns[key](jax.random.fold_in(jax.random.key(seed), i)))
    return nnx.merge(graphdef, state)


def run_torch(args, cfg, x, t, text, tokens_per_sample, fwd_flops, tokens):
    """Times diffusers' model first (then frees its GPU memory before JAX starts); returns
    (result dict, output [B, T, H, W, C] float32, state dict as NumPy for the JAX model)."""
    import torch
    from diffusers import WanTransformer3DModel

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(cfg.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}  # keeps the CPU copies alive
    tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    model = model.to(dev)
    if tdtype != torch.float32:
        # As from_pretrained(torch_dtype=bf16): bf16 except diffusers' _keep_in_fp32_modules.
        model = model.to(tdtype)
        keep = set(model._keep_in_fp32_modules or ())
        for name, module in model.named_modules():
            if keep & set(name.split(".")):
                module.float()
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).to(dev, tdtype)
    tt = torch.from_numpy(np.repeat(t, tokens_per_sample // t.shape[1], axis=1)).to(dev)
    ct = torch.from_numpy(text).to(dev, tdtype)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    out = None

    def fwd():
        nonlocal out
        with torch.no_grad():
            out = model(xt, tt, ct, return_dict=False)[0]
        sync()

    timed = time_calls(fwd, repeats=args.iters)
    warm_s, times = timed["first_call_s"], timed["times_s"]
    res = {"version": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
           "threads": torch.get_num_threads(),
           "forward": {"warmup_s": warm_s, **_summary(times, tokens, fwd_flops, args.peak_flops, 1)}}
    out_np = out.float().permute(0, 2, 3, 4, 1).cpu().numpy()
    if args.backward:
        model.train()
        if args.remat != "none":
            model.enable_gradient_checkpointing()

        def fb():
            model.zero_grad(set_to_none=True)
            loss = model(xt, tt, ct, return_dict=False)[0].float().square().mean()
            loss.backward()
            sync()

        timed = time_calls(fb, repeats=args.iters)
        warm_s, times = timed["first_call_s"], timed["times_s"]
        res["forward_backward"] = {"warmup_s": warm_s, **_summary(times, tokens, 3 * fwd_flops, args.peak_flops, 1)}
    del model, xt, ct, out
    if dev == "cuda":
        torch.cuda.empty_cache()
    return res, out_np, state


def main(argv=None) -> int:
    args = parse_args(argv)
    from mirage_jax.models.wan.dit import WanDiTConfig, forward_flops

    cfg = getattr(WanDiTConfig, args.config)()
    wan = args.config.startswith("wan")
    grid = tuple(int(v) for v in (args.latent_grid or ("11,44,80" if wan else "2,16,16")).split(","))
    text_len = args.text_len or (512 if wan else 64)
    pt, ph, pw = cfg.patch_size
    tokens_per_sample = (grid[0] // pt) * (grid[1] // ph) * (grid[2] // pw)
    tokens = args.batch * tokens_per_sample
    fwd_flops = forward_flops(cfg, tokens_per_sample, text_len, args.batch, timestep_groups=grid[0] // pt)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + grid + (cfg.in_channels,)).astype(np.float32)
    t = np.tile(np.array([[0.0] + [500.0] * (grid[0] // pt - 1)], np.float32), (args.batch, 1))
    text = rng.standard_normal((args.batch, text_len, cfg.text_dim)).astype(np.float32)

    # ---- PyTorch first (same weights; its GPU memory is released before JAX allocates) --------
    use_torch = args.torch == "on"
    if args.torch == "auto":
        try:
            import torch

            use_torch = torch.cuda.is_available() or args.config != "wan22_ti2v_5b"
        except ImportError:
            use_torch = False
    args.peak_flops = None  # filled once the JAX device is known; torch MFU patched below
    torch_res = out_torch = state = None
    if use_torch:
        torch_res, out_torch, state = run_torch(args, cfg, x, t, text, tokens_per_sample, fwd_flops, tokens)

    # ---- JAX ----------------------------------------------------------------------------------
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mirage_jax.convert.wan_dit import transformer_from_state
    from mirage_jax.models.wan.dit import WanRuntime

    runtime = WanRuntime(param_dtype=args.param_dtype, dtype=args.dtype, attention=args.attention,
                         remat=args.remat, scan_layers=args.scan)
    model = transformer_from_state(cfg, state, runtime=runtime) if state is not None else random_model(cfg, runtime)
    del state
    graphdef, params = nnx.split(model)
    del model
    xj, tj, cj = jnp.asarray(x), jnp.asarray(t), jnp.asarray(text)

    @jax.jit
    def forward(params, x, t, c):
        return nnx.merge(graphdef, params)(x, t, c)

    @jax.jit
    def forward_backward(params, x, t, c):
        def loss(p):
            return jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, c).astype(jnp.float32)))

        return jax.value_and_grad(loss)(params)

    device = jax.devices()[0]
    peak = args.peak_tflops or peak_tflops(device.device_kind, args.dtype)
    peak_flops = peak * 1e12 if peak else None
    out_jax = None

    def run_fwd():
        nonlocal out_jax
        out_jax = forward(params, xj, tj, cj)
        jax.block_until_ready(out_jax)

    timed = time_calls(run_fwd, repeats=args.iters)
    compile_s, times = timed["first_call_s"], timed["times_s"]
    result = {
        "config": args.config, "config_dict": cfg.to_diffusers(), "latent_grid": grid, "batch": args.batch,
        "tokens": tokens, "text_len": text_len, "dtype": args.dtype, "param_dtype": args.param_dtype,
        "attention": args.attention, "remat": args.remat, "scan": args.scan, "iters": args.iters,
        "forward_flops": fwd_flops, "peak_tflops_per_device": peak,
        "jax": {"version": jax.__version__, "backend": jax.default_backend(), "device": device.device_kind,
                "forward": {"compile_s": compile_s, **_summary(times, tokens, fwd_flops, peak_flops, 1)}},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    }
    if args.backward:
        timed = time_calls(lambda: forward_backward(params, xj, tj, cj), repeats=args.iters)
        compile_s, times = timed["first_call_s"], timed["times_s"]
        result["jax"]["forward_backward"] = {"compile_s": compile_s, **_summary(times, tokens, 3 * fwd_flops, peak_flops, 1)}

    if torch_res is not None:
        for kind in ("forward", "forward_backward"):
            if kind in torch_res:
                torch_res[kind]["mfu"] = (
                    torch_res[kind]["tflops_per_s"] * 1e12 / peak_flops if peak_flops else None)
        result["torch"] = torch_res
        ours = np.asarray(out_jax, np.float32)
        result["max_abs_diff_vs_torch"] = float(np.abs(ours - out_torch).max())
        result["output_scale"] = float(np.abs(out_torch).max())
        result["ratio_jax_over_torch_time"] = {
            k: result["jax"][k]["median_s"] / torch_res[k]["median_s"] for k in ("forward", "forward_backward")
            if k in torch_res and k in result["jax"]
        }

    # ---- Report -------------------------------------------------------------------------------
    print(f"Wan DiT {args.config}: {tokens:,} tokens (grid {grid}, batch {args.batch}), text {text_len}, "
          f"{args.dtype} compute, attention={args.attention}, remat={args.remat}, scan={args.scan}")
    print(f"forward FLOPs {fwd_flops / 1e12:.3f} TFLOP; peak {peak or 'unknown'} TFLOP/s per device")
    for fw in ("jax", "torch"):
        if fw not in result:
            continue
        for kind in ("forward", "forward_backward"):
            r = result[fw].get(kind)
            if r is None:
                continue
            mfu = f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
            print(f"  {fw:5s} {kind:16s} median {r['median_s'] * 1e3:9.2f} ms  min {r['min_s'] * 1e3:9.2f} ms  "
                  f"{r['tokens_per_s']:12,.0f} tok/s  {r['tflops_per_s']:.3f} TFLOP/s{mfu}")
    if "ratio_jax_over_torch_time" in result:
        print(f"  time ratio jax/torch: {result['ratio_jax_over_torch_time']}; "
              f"max |jax - torch| = {result['max_abs_diff_vs_torch']:.2e} (output scale {result['output_scale']:.2e})")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
