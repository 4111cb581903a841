"""One Mirage training step (DiT + control branch; forward + backward + AdamW), JAX vs PyTorch.

    python experiments/bench_train.py --json experiments/results/bench_train_cpu.json \\
        --refs-json experiments/results/bench_train_refs_cpu.json   # stages 1 and 2, R sweep, 5B memory
    python experiments/bench_train.py --torch off --sweep 0 --big off   # JAX only, quick
    # The 5B model's step time and memory on a GPU (one device; bf16 compute, fp32 master weights,
    # full remat, scanned layers, cuDNN attention, R = 4 reference + 9 target + 2 preceding frames
    # at 704 x 1280 = 13,200 tokens of which 9,680 control tokens):
    python experiments/bench_train.py --torch off --stages "" --sweep "" --big run --big-attention cudnn \\
        --json experiments/results/bench_train_gpu_5b.json

What runs (part 1): the small config of the brief (width 256 = 2 heads x 128, FFN 1024, 6 layers,
control blocks after layers 0, 2, 4, 48 latent channels, 96 control channels, a 16 x 16 latent grid
at patch (1, 2, 2), 9 target + 2 preceding latent frames = 704 tokens, 32 text tokens of width 256,
batch 1, float32) in two training stages:

* stage 1: the control branch trains, the backbone is frozen;
* stage 2: LoRA (rank 32, alpha 32, dropout 0.05) on the 10 reference targets of every backbone
  block trains, everything else frozen; ``stage2_dropout0`` is the same without LoRA dropout
  (``--stages 1,2,2:0``), which isolates the cost of drawing the dropout masks.

Loss: mean square error between the model output and a fixed random target (same work as the
flow-matching loss minus the in-jit sample construction, which torch's reference step does not
have either); update: global-norm clipping at 1.0 then AdamW (lr 1e-5, weight decay 0.01).

* JAX: :class:`mirage_jax.models.mirage.MirageModel` in a :class:`mirage_jax.train.step.TrainState`
  (``nnx.Optimizer(wrt=trainable_filter(stage))``, ``make_tx(OptimConfig(...))``); the step is
  ``jax.jit`` with the state donated, gradients of the stage's variables only
  (``nnx.value_and_grad(argnums=nnx.DiffState(0, wrt))``, as ``TrainStep``).
* PyTorch (the reference's training step): diffusers' ``WanVACETransformer3DModel`` with the
  same weights (converted with :func:`mirage_jax.models.mirage.names.mirage_rules`), the frozen
  parameters ``requires_grad=False``, ``clip_grad_norm_`` and ``torch.optim.AdamW`` on the
  trainable ones. Stage 2 uses peft when it is installed (``LoraConfig`` on the 10 targets);
  otherwise a hand-written LoRA (:class:`TorchLoRALinear`: ``base(x) + alpha / r * B(A(dropout(x)))``,
  A kaiming-uniform, B zero, which is peft's ``Linear`` forward) wraps the same 10 Linear layers
  of every block (``attn1.to_q/k/v/out.0``, ``attn2.to_q/k/v/out.0``, ``ffn.net.0.proj``,
  ``ffn.net.2``). diffusers has one timestep per sample in its VACE model, so both get a constant
  timestep (ours as per-frame timesteps, i.e. per-token modulation, which costs a little more).
  Threads: ``--threads`` (2); OMP_WAIT_POLICY defaults to PASSIVE here (set before torch loads)
  so torch's idle threads do not spin against other jobs on a shared machine.

Timing: interleaved rounds (per round and stage: torch, then JAX, ``--iters`` steps each, with
:func:`common.time_calls`), medians of wall and process CPU time and the JAX / torch ratios.
Throughput: tokens / s (backbone tokens per step / median step). MFU: analytic model FLOPs of
the step (:func:`step_flops`) / median step time / peak, the peak being the best FLOP/s of a
large float32 matmul (``--peak-n``, JAX and torch) measured on this machine at the start and
after every timing round of the same run (:class:`Peak`; not a datasheet number). The load
average (``os.getloadavg``) is recorded before and after.

Part 2 (``--sweep``): JAX stage-1 step against the number of reference frames R (backbone tokens
(R + 11) x 64, control tokens 704): seconds per step, tokens, and the compiled program's
``memory_analysis()`` (temp / argument / output bytes).

Part 3 (``--big``): the Wan2.2-TI2V-5B Mirage stage-1 step (30 layers, control every 2nd layer),
bf16 compute, fp32 parameters, remat "full", scanned layers, R = 4 + 9 + 2 latent frames of
44 x 80 (13,200 tokens, 9,680 control tokens), 512 text tokens: ``--big memory`` lowers and
compiles it for abstract inputs (``jax.ShapeDtypeStruct``, nothing allocated; the state comes
from ``nnx.eval_shape``) and prints ``memory_analysis()`` and the compile time; ``--big run``
also allocates and times it (for a GPU). On CPU ``--big-attention`` defaults to "chunked"
(a query-blocked attention, closer to a GPU's flash attention than "xla", which materialises
all 13,200^2 scores per head).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch's OpenMP starts

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import time_calls  # noqa: E402

STAGES = (1, 2)
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 32, 32.0, 0.05


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn-dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--grid", default="16,16", help="latent H,W")
    p.add_argument("--target", type=int, default=9)
    p.add_argument("--preceding", type=int, default=2)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--stages", default="1,2,2:0",
                   help="stages to compare; 'S:D' = stage S with LoRA dropout D (default 0.05)")
    p.add_argument("--iters", type=int, default=3, help="timed steps per stage per framework per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--torch", default="on", choices=("on", "off"))
    p.add_argument("--sweep", default="0,1,2,3,4", help="reference frame counts R for part 2 ('' = skip)")
    p.add_argument("--sweep-iters", type=int, default=3)
    p.add_argument("--big", default="memory", choices=("off", "memory", "run"))
    p.add_argument("--big-attention", default="chunked")
    p.add_argument("--big-reference", type=int, default=4)
    p.add_argument("--peak-n", type=int, default=2048, help="matmul size for the measured peak")
    p.add_argument("--json", default=None)
    p.add_argument("--refs-json", default=None, help="write part 2 (the R sweep) here")
    return p.parse_args(argv)


def small_config(args, stage: int, lora_dropout: float = LORA_DROPOUT):
    from mirage_jax.models.mirage import MirageConfig
    from mirage_jax.models.wan.dit import WanDiTConfig

    dit = WanDiTConfig(patch_size=(1, 2, 2), num_attention_heads=args.width_heads, attention_head_dim=args.head_dim,
                       in_channels=48, out_channels=48, text_dim=256, freq_dim=256, ffn_dim=args.ffn_dim,
                       num_layers=args.layers)
    lora = dict(lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=lora_dropout) if stage == 2 else {}
    return MirageConfig(dit=dit, **lora)


# ----------------------------------------------------------------------------------------------
# FLOPs.
# ----------------------------------------------------------------------------------------------


def _dense_flops_per_block(d: int, f: int, n: int, l: int) -> int:
    """Matmul FLOPs of a block's Dense layers (the part with weight gradients)."""
    return 8 * n * d * d + 4 * n * d * d + 4 * l * d * d + 4 * n * d * f


def forward_flops_mirage(cfg, num_tokens: int, num_control_tokens: int, text_len: int, batch: int, frames: int) -> dict:
    """Analytic forward FLOPs of a Mirage call, :func:`~mirage_jax.models.wan.dit.forward_flops`
    extended to the control branch: K more blocks on the control tokens plus its patch embedding,
    before_proj and K after_proj; LoRA adds ``2 N r (in + out)`` per target and block.

    Returns {"backbone", "control", "lora", "total", "dense_frozen_stage1", "dense_frozen_stage2"}
    (per batch); the last two are the forward FLOPs of the Dense layers whose weights are frozen in
    each stage (their weight gradients are not computed).
    """
    from mirage_jax.models.wan.dit import forward_flops

    d, f, p, l = cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.patch_volume, text_len
    k, nc = cfg.num_control_blocks, num_control_tokens
    backbone = forward_flops(cfg.dit, num_tokens, text_len, 1, timestep_groups=frames)
    one, none = (dataclasses.replace(cfg.dit, num_layers=k_) for k_ in (1, 0))
    block_c = forward_flops(one, nc, text_len) - forward_flops(none, nc, text_len)  # one block on the control tokens
    control = k * block_c + 2 * nc * p * cfg.control_in_channels * d + 2 * nc * d * d + k * 2 * nc * d * d
    dims = {"attn1.to_q": (d, d), "attn1.to_k": (d, d), "attn1.to_v": (d, d), "attn1.to_out": (d, d),
            "attn2.to_q": (d, d), "attn2.to_k": (d, d), "attn2.to_v": (d, d), "attn2.to_out": (d, d),
            "ffn.proj_in": (d, f), "ffn.proj_out": (f, d)}
    r = cfg.lora_rank
    lora = 0
    if r:
        for t in cfg.lora_targets:
            rows = l if t in ("attn2.to_k", "attn2.to_v") else num_tokens
            lora += 2 * rows * r * sum(dims[t])
        lora *= cfg.dit.num_layers
    dense_backbone = cfg.dit.num_layers * _dense_flops_per_block(d, f, num_tokens, l)
    dense_control = k * _dense_flops_per_block(d, f, nc, l)
    out = {"backbone": backbone, "control": control, "lora": lora, "total": backbone + control + lora,
           "dense_frozen_stage1": dense_backbone, "dense_frozen_stage2": dense_backbone + dense_control}
    return {key: batch * v for key, v in out.items()}


def step_flops(fwd: dict, stage: int) -> int:
    """Model FLOPs of a training step: forward + backward with backward = 2 x forward (input and
    weight gradients) less the weight-gradient half of every frozen Dense layer. Elementwise ops,
    the optimizer and XLA's pruning of unneeded backward work (e.g. backbone layers below the first
    hint in stage 1) are ignored; 3 x forward is the usual all-trainable convention."""
    return 3 * fwd["total"] - fwd[f"dense_frozen_stage{stage}"]


def measure_peak(n: int, threads: int, use_torch: bool) -> dict:
    """Best FLOP/s of an [n, n] x [n, n] float32 matmul on this machine (JAX, and torch)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    t = time_calls(lambda: mm(a, a), repeats=5, warmup=1)
    out = {"n": n, "jax_flops_per_s": 2 * n**3 / t["min_s"]}
    if use_torch:
        import torch

        torch.set_num_threads(threads)
        x = torch.randn(n, n)
        t = time_calls(lambda: x @ x, repeats=5, warmup=1)
        out["torch_flops_per_s"] = 2 * n**3 / t["min_s"]
    out["peak_flops_per_s"] = max(v for k, v in out.items() if k.endswith("flops_per_s"))
    return out


class Peak:
    """The machine's fp32 matmul peak, re-measured between timing rounds (other jobs share the
    cores, so one measurement can be low); :attr:`best` is the highest of all measurements."""

    def __init__(self, args):
        self.args, self.samples = args, []

    def measure(self) -> float:
        a = self.args
        self.samples.append(measure_peak(a.peak_n, a.threads, a.torch == "on"))
        return self.samples[-1]["peak_flops_per_s"]

    @property
    def best(self) -> float:
        return max(s["peak_flops_per_s"] for s in self.samples)

    def record(self) -> dict:
        return {"n": self.args.peak_n, "peak_flops_per_s": self.best, "samples": self.samples,
                "note": "measured: best fp32 matmul FLOP/s (JAX or torch) on this machine over this run's measurements"}


# ----------------------------------------------------------------------------------------------
# JAX.
# ----------------------------------------------------------------------------------------------


def _weights_into(model, source: dict | None):
    """Sets ``model``'s non-LoRA parameters from a diffusers VACE state dict (None: keep random)."""
    if source is None:
        return model
    from flax import nnx

    from mirage_jax.convert.table import convert, flat_state_shapes
    from mirage_jax.models.mirage import LoRAParam
    from mirage_jax.models.mirage.names import mirage_ignore, mirage_rules

    base = nnx.All(nnx.Param, nnx.Not(LoRAParam))
    arrays = convert(source, mirage_rules("diffusers"), flat_state_shapes(model, base), ignore=mirage_ignore("diffusers"))
    state = nnx.state(model, base)
    for path, var in nnx.to_flat_state(state):
        var.set_value(np.asarray(arrays.pop(".".join(map(str, path)))))
    nnx.update(model, state)
    return model


def jax_train_step(cfg, runtime, stage: int, num_reference: int, source=None, abstract: bool = False):
    """-> (jitted step(state, latents, t, text, control, target, key) -> (loss, state), graphdef, state).

    ``abstract``: the state is built with ``nnx.eval_shape`` (ShapeDtypeStructs, nothing allocated)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mirage_jax.models.mirage import MirageModel, trainable_filter
    from mirage_jax.train.step import OptimConfig, TrainState, create_train_state, make_tx

    tx = make_tx(OptimConfig(learning_rate=1e-5, weight_decay=0.01, clip_norm=1.0))
    wrt = trainable_filter(stage)
    factory = lambda: _weights_into(MirageModel(cfg, runtime, rngs=nnx.Rngs(0)), source)  # noqa: E731
    if abstract:
        ts = nnx.eval_shape(lambda: TrainState(factory(), tx, wrt, 0))
    else:
        ts = create_train_state(factory, tx, wrt)
    graphdef, state = nnx.split(ts)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, latents, t, text, control, target, key):
        ts = nnx.merge(graphdef, state)

        def loss_of(model):
            v = model(latents, t, text, control, num_reference=num_reference, train=True, dropout_key=key)
            return jnp.mean(jnp.square(v.astype(jnp.float32) - target))

        loss, grads = nnx.value_and_grad(loss_of, argnums=nnx.DiffState(0, ts.optimizer.wrt))(ts.model)
        ts.optimizer.update(ts.model, grads)
        return loss, nnx.state(ts)

    return step, graphdef, state


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes")
    return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


class JaxStepper:
    """A compiled, donated step and its live state; ``()`` runs one step and waits."""

    def __init__(self, cfg, runtime, stage, r, inputs, source=None):
        import jax

        step, _, state = jax_train_step(cfg, runtime, stage, r, source)
        self.inputs = tuple(jax.numpy.asarray(a) for a in inputs) + (jax.random.key(1),)
        t0 = time.perf_counter()
        self.compiled = step.lower(state, *self.inputs).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = _memory(self.compiled)
        self.state = state
        self.loss = None

    def __call__(self):
        self.loss, self.state = self.compiled(self.state, *self.inputs)
        return self.loss


# ----------------------------------------------------------------------------------------------
# PyTorch.
# ----------------------------------------------------------------------------------------------


def _torch_lora_class():
    import math

    import torch

    class TorchLoRALinear(torch.nn.Module):
        """peft's LoRA ``Linear`` forward by hand: ``base(x) + alpha / r * B(A(dropout(x)))``."""

        def __init__(self, base: torch.nn.Linear, r: int, alpha: float, dropout: float):
            super().__init__()
            self.base = base
            self.lora_A = torch.nn.Linear(base.in_features, r, bias=False)
            self.lora_B = torch.nn.Linear(r, base.out_features, bias=False)
            torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(self.lora_B.weight)
            self.drop = torch.nn.Dropout(dropout)
            self.scale = alpha / r

        def forward(self, x):
            return self.base(x) + self.scale * self.lora_B(self.lora_A(self.drop(x)))

    return TorchLoRALinear


TORCH_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")


def torch_vace(cfg):
    """diffusers' WanVACETransformer3DModel at ``cfg`` (random weights, seed 0)."""
    import torch
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(0)
    dcfg = cfg.dit.to_diffusers()
    dcfg.update(_class_name="WanVACETransformer3DModel", vace_layers=list(cfg.control_layers),
                vace_in_channels=cfg.control_in_channels)
    dcfg.pop("pos_embed_seq_len", None)
    model = WanVACETransformer3DModel.from_config(dcfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vace_blocks" in name and "proj_out" in name:
                p.add_(0.02 * torch.randn_like(p))  # after_proj is zero-initialised: make hints non-trivial
    return model


def torch_stepper(model, cfg, stage: int, inputs, threads: int):
    """Freezes / adapts ``model`` for ``stage`` -> (step fn, LoRA implementation name, trainable count)."""
    import torch

    torch.set_num_threads(threads)
    model.requires_grad_(False)
    impl = None
    if stage == 1:
        for name, p in model.named_parameters():
            if name.startswith(("vace_patch_embedding.", "vace_blocks.")):
                p.requires_grad_(True)
    else:
        try:
            import peft

            pattern = r"blocks\.\d+\.(" + "|".join(t.replace(".", r"\.") for t in TORCH_TARGETS) + ")"
            model = peft.inject_adapter_in_model(
                peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=cfg.lora_dropout,
                                target_modules=pattern),
                model)
            impl = f"peft {peft.__version__}"
        except ImportError:
            lora = _torch_lora_class()
            for blk in model.blocks:
                for t in TORCH_TARGETS:
                    *parent, leaf = t.split(".")
                    owner = functools.reduce(getattr, parent, blk)
                    owner_set = owner.__setitem__ if leaf.isdigit() else functools.partial(setattr, owner)
                    base = owner[int(leaf)] if leaf.isdigit() else getattr(owner, leaf)
                    owner_set(int(leaf) if leaf.isdigit() else leaf, lora(base, LORA_RANK, LORA_ALPHA, cfg.lora_dropout))
            impl = "hand-written TorchLoRALinear (peft not installed)"
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    lat, t, text, ctrl, target = inputs
    cf = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 4, 1, 2, 3).contiguous()  # noqa: E731
    xt, ct, yt = cf(lat), cf(ctrl), cf(target)
    tt, et = torch.from_numpy(t[:, 0].copy()), torch.from_numpy(text)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = (model(xt, tt, et, control_hidden_states=ct, return_dict=False)[0] - yt).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    def forward():
        with torch.no_grad():
            model.eval()
            y = model(xt, tt, et, control_hidden_states=ct, return_dict=False)[0]
            model.train()
        return y.permute(0, 2, 3, 4, 1).numpy().copy()

    return step, forward, impl, sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------------
# Parts.
# ----------------------------------------------------------------------------------------------


def make_inputs(cfg, args, num_reference: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in args.grid.split(","))
    f = num_reference + args.target + args.preceding
    b = args.batch
    lat = rng.standard_normal((b, f, h, w, cfg.dit.in_channels)).astype(np.float32)
    t = np.full((b, f), 500.0, np.float32)
    text = rng.standard_normal((b, args.text_len, cfg.dit.text_dim)).astype(np.float32)
    ctrl = rng.standard_normal((b, f - num_reference, h, w, cfg.control_in_channels)).astype(np.float32)
    target = rng.standard_normal(lat.shape).astype(np.float32)
    return lat, t, text, ctrl, target


def _tokens(cfg, args, num_reference: int) -> tuple[int, int]:
    h, w = (int(v) for v in args.grid.split(","))
    _, ph, pw = cfg.dit.patch_size
    per = (h // ph) * (w // pw)
    nc = (args.target + args.preceding) * per
    return num_reference * per + nc, nc


def _summary(t: dict) -> dict:
    return {"median_s": statistics.median(t["times_s"]), "min_s": min(t["times_s"]),
            "median_cpu_s": statistics.median(t["cpu_s"]), "times_s": t["times_s"], "cpu_times_s": t["cpu_s"]}


def part_compare(args, peak: Peak) -> dict:
    """Stages 1 and 2: JAX vs torch, interleaved."""
    from flax import nnx

    from mirage_jax.models.mirage import trainable_filter
    from mirage_jax.models.wan.dit import count_params
    from mirage_jax.models.wan.layers import WanRuntime

    runners, info = {}, {}
    n, nc = _tokens(small_config(args, 1), args, 0)
    for entry in args.stages.split(","):
        stage, _, drop = entry.partition(":")
        stage = int(stage)
        cfg = small_config(args, stage, float(drop) if drop else LORA_DROPOUT)
        key = f"stage{stage}" + (f"_dropout{drop}" if drop else "")
        inputs = make_inputs(cfg, args, 0)
        row = {"tokens": n * args.batch, "control_tokens": nc * args.batch}
        runners[key] = {}
        source = None
        if args.torch == "on":
            tmodel = torch_vace(cfg)
            source = {k: v.detach().numpy().copy() for k, v in tmodel.state_dict().items()}
            step, fwd, impl, count = torch_stepper(tmodel, cfg, stage, inputs, args.threads)
            row["torch"] = {"lora_impl": impl, "trainable_params": int(count)}
            y_torch = fwd()
            t0 = time.perf_counter()
            step()
            row["torch"]["first_step_s"] = time.perf_counter() - t0
            runners[key]["torch"] = step
        js = JaxStepper(cfg, WanRuntime(), stage, 0, inputs, source)
        trainable = nnx.state(js.state["model"], trainable_filter(stage))
        row["jax"] = {"compile_s": js.compile_s, "memory": js.memory,
                      "trainable_params": count_params(trainable)}
        if source is not None:
            row["max_abs_diff_forward"] = float(np.abs(_jax_forward(cfg, inputs, source) - y_torch).max())
            row["forward_scale"] = float(np.abs(y_torch).max())
        runners[key]["jax"] = js
        frames = args.target + args.preceding
        fwd = forward_flops_mirage(cfg, n, nc, args.text_len, args.batch, frames)
        row["forward_flops"] = fwd
        row["step_flops"] = step_flops(fwd, stage)
        row["lora_dropout"] = cfg.lora_dropout if stage == 2 else None
        info[key] = row
    stages = list(info)

    for s in stages:  # one untimed step each after the compile / first step above
        runners[s]["jax"]()
        runners[s].get("torch", lambda: None)()
    times = {s: {fw: {"times_s": [], "cpu_s": []} for fw in runners[s]} for s in stages}
    for _ in range(args.rounds):
        for s in stages:
            for fw, fn in runners[s].items():
                t = time_calls(fn, repeats=args.iters, warmup=0)
                times[s][fw]["times_s"] += t["times_s"]
                times[s][fw]["cpu_s"] += t["cpu_s"]
        peak.measure()
    for s in stages:
        row = info[s]
        for fw in runners[s]:
            row[fw].update(_summary(times[s][fw]))
            med = row[fw]["median_s"]
            row[fw]["tokens_per_s"] = row["tokens"] / med
            row[fw]["model_flops_per_s"] = row["step_flops"] / med
            row[fw]["mfu"] = row["step_flops"] / med / peak.best
        if "torch" in runners[s]:
            row["ratio_jax_over_torch"] = row["jax"]["median_s"] / row["torch"]["median_s"]
            row["cpu_ratio_jax_over_torch"] = row["jax"]["median_cpu_s"] / row["torch"]["median_cpu_s"]
        row["jax_final_loss"] = float(runners[s]["jax"].loss)
    return info


def _jax_forward(cfg, inputs, source) -> np.ndarray:
    """Our model's eval forward with ``source``'s weights (sanity check of the same weights)."""
    from flax import nnx

    from mirage_jax.models.mirage import MirageModel

    model = _weights_into(MirageModel(cfg, rngs=nnx.Rngs(0)), source)
    lat, t, text, ctrl, _ = inputs
    return np.asarray(nnx.jit(lambda m, *a: m(*a, num_reference=0))(model, lat, t, text, ctrl), np.float32)


def part_refs(args, peak: Peak) -> dict:
    """JAX stage-1 step against R: seconds, tokens, compiled memory."""
    from mirage_jax.models.wan.layers import WanRuntime

    cfg = small_config(args, 1)
    rows = []
    for r in [int(v) for v in args.sweep.split(",") if v != ""]:
        js = JaxStepper(cfg, WanRuntime(), 1, r, make_inputs(cfg, args, r))
        t = time_calls(js, repeats=args.sweep_iters, warmup=1)
        n, nc = _tokens(cfg, args, r)
        fwd = forward_flops_mirage(cfg, n, nc, args.text_len, args.batch, r + args.target + args.preceding)
        row = {"num_reference": r, "tokens": n * args.batch, "control_tokens": nc * args.batch,
               "compile_s": js.compile_s, "memory": js.memory, **_summary(t),
               "step_flops": step_flops(fwd, 1), "load_avg": os.getloadavg()}
        peak.measure()
        rows.append(row)
        print(f"  R={r}: {row['tokens']} tokens, {row['median_s']:.3f} s/step (cpu {row['median_cpu_s']:.3f}), "
              f"temp {js.memory.get('temp_size_in_bytes', 0) / 2**20:.1f} MiB, compile {js.compile_s:.1f} s", flush=True)
    for row in rows:
        row["mfu"] = row["step_flops"] / row["median_s"] / peak.best
    return {"stage": 1, "rows": rows}


def part_big(args) -> dict:
    """The 5B stage-1 step: compiled memory analysis for abstract inputs (and a timed run with --big run)."""
    import jax
    import jax.numpy as jnp

    from mirage_jax.models.mirage import MirageConfig
    from mirage_jax.models.wan.dit import WanDiTConfig
    from mirage_jax.models.wan.layers import WanRuntime

    cfg = MirageConfig(dit=WanDiTConfig.wan22_ti2v_5b())
    rt = WanRuntime(dtype="bfloat16", param_dtype="float32", remat="full", scan_layers=True, attention=args.big_attention)
    r, t_, p_ = args.big_reference, 9, 2
    h, w, l = 44, 80, 512
    f = r + t_ + p_
    sds = jax.ShapeDtypeStruct
    inputs = (sds((1, f, h, w, 48), jnp.float32), sds((1, f), jnp.float32), sds((1, l, 4096), jnp.float32),
              sds((1, t_ + p_, h, w, 96), jnp.float32), sds((1, f, h, w, 48), jnp.float32),
              jax.eval_shape(lambda: jax.random.key(0)))
    t0 = time.perf_counter()
    step, _, state = jax_train_step(cfg, rt, 1, r, abstract=True)
    lowered = step.lower(state, *inputs)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out = {"config": "wan22_ti2v_5b + control every 2nd layer (15 blocks)", "stage": 1,
           "runtime": {"dtype": "bfloat16", "param_dtype": "float32", "remat": "full", "scan_layers": True,
                       "attention": args.big_attention},
           "frames": {"reference": r, "target": t_, "preceding": p_}, "latent_hw": [h, w], "text_len": l,
           "tokens": f * (h // 2) * (w // 2), "control_tokens": (t_ + p_) * (h // 2) * (w // 2),
           "backend": jax.default_backend(), "lower_s": lower_s, "compile_s": time.perf_counter() - t0,
           "memory": _memory(compiled)}
    if args.big == "run":
        _, _, live = jax_train_step(cfg, rt, 1, r)
        rng = np.random.default_rng(0)
        arrays = [jnp.asarray(rng.standard_normal(s.shape).astype(np.float32)) for s in inputs[:5]]
        arrays[1] = jnp.full(inputs[1].shape, 500.0)
        box = {"state": live}

        def run():
            loss, box["state"] = compiled(box["state"], *arrays, jax.random.key(1))
            return loss

        out["timing"] = _summary(time_calls(run, repeats=3, warmup=1))
        stats = jax.devices()[0].memory_stats() or {}
        out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    return out


def _write(args, result: dict, refs: dict | None) -> None:
    """Writes what is done so far (each part adds to the files, so a slow last part loses nothing)."""
    for path, data in ((args.json, result), (args.refs_json, refs)):
        if path and data is not None:
            data = {**data, "load_avg_before": result["load_avg_before"], "load_avg_now": os.getloadavg()}
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    result = {"load_avg_before": os.getloadavg(), "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
              "jax": {"version": jax.__version__, "backend": jax.default_backend()}}
    peak = Peak(args)
    print(f"fp32 {args.peak_n}^3 matmul: {peak.measure() / 1e9:.1f} GFLOP/s", flush=True)
    if args.torch == "on":
        import torch

        result["torch"] = {"version": torch.__version__, "threads": args.threads,
                           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    cfg = small_config(args, 1)
    result["config"] = {"dit": cfg.dit.to_diffusers(), "control_layers": list(cfg.control_layers),
                        "control_in_channels": cfg.control_in_channels, "grid": args.grid, "target": args.target,
                        "preceding": args.preceding, "text_len": args.text_len, "batch": args.batch,
                        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT},
                        "optimizer": "clip_by_global_norm(1.0) + AdamW(lr 1e-5, wd 0.01)", "dtype": "float32",
                        "iters": args.iters, "rounds": args.rounds}
    if args.stages:
        result["compare"] = part_compare(args, peak)
        result["peak"] = peak.record()
        print(f"peak (best fp32 matmul so far): {peak.best / 1e9:.1f} GFLOP/s", flush=True)
        for key, row in result["compare"].items():
            line = f"{key}: {row['tokens']} tokens"
            for fw in ("torch", "jax"):
                if fw in row:
                    line += (f"  {fw} {row[fw]['median_s'] * 1e3:.0f} ms (cpu {row[fw]['median_cpu_s'] * 1e3:.0f}) "
                             f"{row[fw]['tokens_per_s']:.0f} tok/s MFU {100 * row[fw]['mfu']:.1f}%")
            if "ratio_jax_over_torch" in row:
                line += f"  jax/torch {row['ratio_jax_over_torch']:.2f} (cpu {row['cpu_ratio_jax_over_torch']:.2f})"
                line += f"  max|diff| fwd {row['max_abs_diff_forward']:.1e} of {row['forward_scale']:.1e}"
            print(line, flush=True)
        _write(args, result, None)
    refs = None
    if args.sweep:
        print("step against reference frames (JAX, stage 1):", flush=True)
        refs = part_refs(args, peak)
        refs["config"] = result["config"]
        refs["peak"] = result["peak"] = peak.record()
        _write(args, result, refs)
    if args.big != "off":
        print("5B stage-1 step, compiled for abstract inputs ...", flush=True)
        try:
            result["big_5b"] = part_big(args)
            m = result["big_5b"]["memory"]
            print(f"  compile {result['big_5b']['compile_s']:.0f} s; memory_analysis: "
                  + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in m.items()), flush=True)
        except Exception as e:  # report, keep the other parts' results
            result["big_5b"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"  failed: {result['big_5b']['error'][:500]}", flush=True)
    result["peak"] = peak.record()
    _write(args, result, refs)
    print(f"wrote {args.json} {args.refs_json or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
