"""One Wan DiT training step, JAX (mirage_jax) vs PyTorch (diffusers), same config, weights and inputs.

    python experiments/bench_dit_step.py --json experiments/results/bench_dit_step_cpu.json
    python experiments/bench_dit_step.py --remat full --scan      # the scanned / rematerialised paths
    # on a shared machine, keep torch's OpenMP threads from spinning against other jobs:
    OMP_WAIT_POLICY=PASSIVE python experiments/bench_dit_step.py ...

Default config: spec section 12's CPU sizing model (width 256 = 2 heads x 128, 6 layers, FFN 1024,
48 latent channels, 13 x 16 x 16 latents at patch (1, 2, 2) = 832 tokens, batch 1, float32,
per-frame timesteps with frame 0 clean as Wan2.2 TI2V, 32 text tokens). Three jitted programs per
framework: the forward, forward + backward of a mean-square flow-matching-style loss w.r.t. all
parameters, and a full training step (that plus AdamW: ``optax.adamw`` through ``nnx.Optimizer``
/ ``torch.optim.AdamW``). PyTorch runs on CPU with ``--threads`` threads (2, like the CI machine).

The timings are interleaved (per round: torch then JAX for each program, ``--iters`` runs each) so
a shared, noisy machine slows both alike; medians over all rounds are reported with the JAX / torch
time ratio, for wall time and for process CPU time (steadier when other jobs share the cores). Output difference of the forwards is reported as a sanity check of the same weights.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROGRAMS = ("forward", "forward_backward", "train_step")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--in-channels", type=int, default=48)
    p.add_argument("--text-dim", type=int, default=256)
    p.add_argument("--latent-grid", default="13,16,16", help="latent T,H,W")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--remat", default="none")
    p.add_argument("--scan", action="store_true", help="scanned (stacked) layers")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--iters", type=int, default=3, help="timed runs per program per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--torch", default="on", choices=("on", "off"))
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def _timed(fn, iters: int) -> list[tuple[float, float]]:
    """``iters`` runs of ``fn`` -> [(wall seconds, process CPU seconds)]."""
    out = []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def torch_programs(cfg, x, t, text, target, tokens_per_sample, args):
    """diffusers' model at ``cfg`` -> (programs {name: fn}, forward output [B, T, H, W, C], state dict)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(cfg.to_diffusers())
    if args.remat != "none":
        model.enable_gradient_checkpointing()
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
    tt = torch.from_numpy(np.repeat(t, tokens_per_sample // t.shape[1], axis=1))
    ct = torch.from_numpy(text)
    yt = torch.from_numpy(target).permute(0, 4, 1, 2, 3).contiguous()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    out = {}

    def forward():
        with torch.no_grad():
            out["y"] = model(xt, tt, ct, return_dict=False)[0]

    def forward_backward():
        model.zero_grad(set_to_none=True)
        (model(xt, tt, ct, return_dict=False)[0] - yt).square().mean().backward()

    def train_step():
        opt.zero_grad(set_to_none=True)
        (model(xt, tt, ct, return_dict=False)[0] - yt).square().mean().backward()
        opt.step()

    forward()
    y = out["y"].permute(0, 2, 3, 4, 1).numpy().copy()
    return {"forward": forward, "forward_backward": forward_backward, "train_step": train_step}, y, state


def jax_programs(cfg, runtime, state, x, t, text, target, args):
    """mirage_jax's WanDiT with ``state``'s weights (random if None) -> (programs, forward output, compile s)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from mirage_jax.models.wan.dit import init_model

    if state is not None:
        from mirage_jax.convert.wan_dit import transformer_from_state

        model = transformer_from_state(cfg, state, runtime=runtime)
    else:
        model = init_model(cfg, runtime)
    optimizer = nnx.Optimizer(model, optax.adamw(args.lr, weight_decay=0.01), wrt=nnx.Param)
    graphdef, mstate = nnx.split(model)
    opt_graphdef, ostate = nnx.split((model, optimizer))
    xj, tj, cj, yj = (jnp.asarray(a) for a in (x, t, text, target))

    def loss_fn(m):
        return jnp.mean(jnp.square(m(xj, tj, cj).astype(jnp.float32) - yj))

    @jax.jit
    def forward(s):
        return nnx.merge(graphdef, s)(xj, tj, cj)

    @jax.jit
    def forward_backward(s):
        return nnx.value_and_grad(loss_fn)(nnx.merge(graphdef, s))

    @jax.jit
    def train_step(s):
        m, opt = nnx.merge(opt_graphdef, s)
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss, nnx.state((m, opt))

    box = {"ostate": ostate}
    compile_s = {}
    progs = {
        "forward": lambda: jax.block_until_ready(forward(mstate)),
        "forward_backward": lambda: jax.block_until_ready(forward_backward(mstate)),
    }

    def step():
        loss, box["ostate"] = train_step(box["ostate"])
        jax.block_until_ready(loss)

    progs["train_step"] = step
    for name, fn in progs.items():
        t0 = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - t0
    return progs, np.asarray(forward(mstate), np.float32), compile_s


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from mirage_jax.models.wan.dit import WanDiTConfig, WanRuntime

    cfg = WanDiTConfig(patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                       in_channels=args.in_channels, out_channels=args.in_channels, text_dim=args.text_dim,
                       freq_dim=256, ffn_dim=args.ffn_dim, num_layers=args.layers)
    grid = tuple(int(v) for v in args.latent_grid.split(","))
    pt, ph, pw = cfg.patch_size
    frames = grid[0] // pt
    tokens_per_sample = frames * (grid[1] // ph) * (grid[2] // pw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + grid + (cfg.in_channels,)).astype(np.float32)
    t = np.tile(np.array([[0.0] + [500.0] * (frames - 1)], np.float32), (args.batch, 1))
    text = rng.standard_normal((args.batch, args.text_len, cfg.text_dim)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)

    programs = {}
    y_torch = state = None
    if args.torch == "on":
        programs["torch"], y_torch, state = torch_programs(cfg, x, t, text, target, tokens_per_sample, args)
    runtime = WanRuntime(remat=args.remat, scan_layers=args.scan)
    programs["jax"], y_jax, compile_s = jax_programs(cfg, runtime, state, x, t, text, target, args)

    times = {fw: {name: [] for name in PROGRAMS} for fw in programs}
    for _ in range(args.rounds):
        for name in PROGRAMS:
            for fw in programs:
                times[fw][name] += _timed(programs[fw][name], args.iters)

    result = {
        "config": cfg.to_diffusers(), "latent_grid": grid, "batch": args.batch, "tokens": args.batch * tokens_per_sample,
        "text_len": args.text_len, "remat": args.remat, "scan": args.scan, "iters": args.iters, "rounds": args.rounds,
        "jax": {"version": jax.__version__, "backend": jax.default_backend(), "compile_s": compile_s},
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_after": os.getloadavg()},
    }
    for fw in programs:
        result[fw] = {**result.get(fw, {}), **{
            name: {"median_s": statistics.median(w for w, _ in ts), "min_s": min(w for w, _ in ts),
                   "median_cpu_s": statistics.median(c for _, c in ts), "times_s": [w for w, _ in ts],
                   "cpu_times_s": [c for _, c in ts]}
            for name, ts in times[fw].items()}}
    if y_torch is not None:
        import torch

        result["torch"].update(version=torch.__version__, threads=torch.get_num_threads())
        result["max_abs_diff_forward"] = float(np.abs(y_jax - y_torch).max())
        result["ratio_jax_over_torch"] = {
            name: result["jax"][name]["median_s"] / result["torch"][name]["median_s"] for name in PROGRAMS}
        result["cpu_ratio_jax_over_torch"] = {
            name: result["jax"][name]["median_cpu_s"] / result["torch"][name]["median_cpu_s"] for name in PROGRAMS}

    print(f"Wan DiT training step: {cfg.dim} wide ({cfg.num_attention_heads} x {cfg.attention_head_dim}), "
          f"{cfg.num_layers} layers, FFN {cfg.ffn_dim}, {result['tokens']} tokens, text {args.text_len}, float32, "
          f"remat={args.remat}, scan={args.scan}; {args.rounds} rounds x {args.iters} runs")
    for name in PROGRAMS:
        row = "  ".join(f"{fw} {1e3 * result[fw][name]['median_s']:8.1f} ms (cpu {1e3 * result[fw][name]['median_cpu_s']:8.1f})"
                        for fw in programs)
        ratio = (f"  jax/torch {result['ratio_jax_over_torch'][name]:.2f} (cpu {result['cpu_ratio_jax_over_torch'][name]:.2f})"
                 if y_torch is not None else "")
        print(f"  {name:17s} {row}{ratio}")
    if y_torch is not None:
        print(f"  max |jax - torch| forward = {result['max_abs_diff_forward']:.2e}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
