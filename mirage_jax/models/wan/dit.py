"""Wan2.1 / Wan2.2 diffusion transformer (diffusers ``WanTransformer3DModel``) in Flax NNX.

Numerically equal to diffusers (float32: max abs difference < 1e-6 of the output scale on the test models) and
loading the same checkpoints (see :mod:`mirage_jax.convert.wan_dit`). Channels-last throughout.

Usage::

    cfg = WanDiTConfig.wan22_ti2v_5b()
    model = init_model(cfg, WanRuntime(dtype="bfloat16"), mesh=mesh, rules="fsdp")  # random, sharded
    # or: cfg, model = mirage_jax.convert.load_diffusers_transformer(path, runtime=runtime, mesh=mesh)
    v = model(latents, timestep, text)                             # [B, T, H, W, 48] velocity

``WanDiT(cfg, runtime, rngs=...)`` builds eagerly on the default device; :func:`init_model`
jits the initialiser (and shards it over a mesh); the loaders never random-initialise.

Inputs of the forward: ``latents [B, T, H, W, C_in]``; ``timestep`` ``[B]`` (one per sample),
``[B, T']`` (one per post-patch latent frame, Wan2.2 TI2V: frame 0 of a chunk is clean, t = 0)
or ``[B, N]`` (one per token); ``text [B, L, text_dim]`` (umT5 embeddings, padded); optional
``positions`` (t, h, w) per token ``[N, 3]`` / ``[B, N, 3]`` (int or float) or a per-axis
tuple, default the diffusers grid ``t in [0, T')``, ``h in [0, H')``, ``w in [0, W')``.

Hooks for a control branch (Mirage / VACE style, spec section 3):
  * ``tokens, ctx = model.prepare(latents, timestep, text, positions)``: patch-embedded tokens
    ``[B, N, dim]`` and a :class:`WanContext` (timestep modulation per token group, projected
    text, RoPE tables); ``ctx.slice_tokens(a, b)`` gives the context of a token range.
  * ``x = model.run_blocks(tokens, ctx, hints={layer: hint}, hint_scale=1.0, hint_start=s,
    hint_mask=m)``: the block stack, adding ``hint_scale * hint * mask`` to tokens
    ``[s, s + N_hint)`` after each listed layer (reference tokens placed before ``s`` are left
    alone). Works in the looped and scanned layouts, with remat.
  * ``model.finalize(x, ctx)``: output norm, modulation, projection and unpatchify.
  * :class:`WanBlock` (re-exported) is the block type a control branch stacks, called as
    ``block(x, ctx)``; :func:`make_block_stack` / :func:`run_block_stack` build and run a
    stack of them under a :class:`WanRuntime` like the backbone does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError
from mirage_jax.models.params import param
from mirage_jax.models.wan.attention import get_attention
from mirage_jax.models.wan.layers import (
    PatchEmbed,
    WanBlock,
    WanConditionEmbedder,
    WanContext,
    WanRuntime,
    Dense,
    layer_norm_f32,
    modulate,
)
from mirage_jax.models.wan.rope import grid_positions, rope_axis_dims, rope_cos_sin

__all__ = [
    "WanDiTConfig",
    "WanRuntime",
    "WanContext",
    "WanBlock",
    "WanDiT",
    "init_model",
    "make_block_stack",
    "run_block_stack",
    "count_params",
    "forward_flops",
]

# diffusers config keys that select features this implementation does not have (I2V image
# cross-attention, FLF2V position embedding): they must be None.
_UNSUPPORTED_KEYS = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")


@dataclasses.dataclass(frozen=True)
class WanDiTConfig:
    """Hyperparameters of ``WanTransformer3DModel`` (same names and defaults as diffusers)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self):
        patch = tuple(int(p) for p in self.patch_size)
        if len(patch) != 3 or min(patch) < 1:
            raise ConfigError(f"patch_size must be three positive ints (t, h, w), got {self.patch_size!r}")
        object.__setattr__(self, "patch_size", patch)
        # diffusers: ``out_channels = out_channels or in_channels``.
        object.__setattr__(self, "out_channels", int(self.out_channels or self.in_channels))
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "text_dim", "freq_dim",
                     "ffn_dim", "rope_max_seq_len"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.num_layers < 0:
            raise ConfigError(f"num_layers must be >= 0, got {self.num_layers}")
        if self.qk_norm != "rms_norm_across_heads":
            # diffusers' WanAttention always applies RMSNorm over all heads whatever this says;
            # other values would silently mean something else, so refuse them.
            raise ConfigError(
                f"qk_norm={self.qk_norm!r} is not supported: WanTransformer3DModel always uses RMS "
                "norms across heads ('rms_norm_across_heads')"
            )
        rope_axis_dims(self.attention_head_dim)  # validates the 3D RoPE split

    # -- derived -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    # -- diffusers interop ---------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "WanDiTConfig":
        """From a diffusers ``config.json`` dict. Keys starting with ``_`` (``_class_name``,
        ``_diffusers_version``, ...) are bookkeeping and ignored; I2V / FLF2V features
        (``image_dim``, ``added_kv_proj_dim``, ``pos_embed_seq_len``) must be null; any other
        unknown key raises (it would change the model)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        cls_name = config.get("_class_name")
        if cls_name not in (None, "WanTransformer3DModel"):
            raise ConfigError(f"config is for {cls_name!r}, expected 'WanTransformer3DModel'")
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_"):
                continue
            if key in _UNSUPPORTED_KEYS:
                if value is not None:
                    raise NotImplementedError(
                        f"config sets {key}={value!r}: image conditioning (Wan I2V / FLF2V) is not "
                        "supported by mirage_jax's WanDiT"
                    )
                continue
            if key in ("window_size",) and tuple(value) == (-1, -1):
                continue  # global attention, the only mode diffusers implements
            if key not in fields:
                unknown.append(key)
                continue
            kwargs[key] = tuple(value) if key == "patch_size" else value
        if unknown:
            raise ConfigError(f"unknown WanTransformer3DModel config keys {sorted(unknown)}")
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """A diffusers ``config.json`` dict (``WanTransformer3DModel.from_config`` accepts it)."""
        out: dict[str, Any] = {"_class_name": "WanTransformer3DModel"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if f.name == "patch_size" else v
        out.update({k: None for k in _UNSUPPORTED_KEYS})
        return out

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def wan22_ti2v_5b(cls) -> "WanDiTConfig":
        """Wan2.2-TI2V-5B (4,999,787,712 parameters)."""
        return cls(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
                   out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30)

    @classmethod
    def wan21_t2v_1_3b(cls) -> "WanDiTConfig":
        """Wan2.1-T2V-1.3B."""
        return cls(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)

    @classmethod
    def small(cls) -> "WanDiTConfig":
        """A small model for benchmarks on CPU (4 layers, 4 x 64 heads, Wan2.2 channels)."""
        return cls(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=48,
                   out_channels=48, text_dim=256, freq_dim=64, ffn_dim=1024, num_layers=4)

    @classmethod
    def tiny(cls) -> "WanDiTConfig":
        """A test-sized model: 2 layers, 2 heads x 20 (RoPE split 8 / 6 / 6)."""
        return cls(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=20, in_channels=4,
                   out_channels=4, text_dim=24, freq_dim=16, ffn_dim=64, num_layers=2)

    def num_params(self) -> int:
        """Analytic parameter count (equals diffusers' ``sum(p.numel())``)."""
        d, f, p = self.dim, self.ffn_dim, self.patch_volume
        attn = 4 * (d * d + d) + 2 * d
        block = 6 * d + 2 * attn + (2 * d if self.cross_attn_norm else 0) + (d * f + f + f * d + d)
        top = (p * self.in_channels * d + d) + (self.freq_dim * d + d + d * d + d) + (d * 6 * d + 6 * d)
        top += (self.text_dim * d + d + d * d + d) + 2 * d + (d * p * self.out_channels + p * self.out_channels)
        return top + self.num_layers * block


# ------------------------------------------------------------------------------------------------
# Block stacks (looped or scanned).
# ------------------------------------------------------------------------------------------------


def make_block_stack(
    num_layers: int,
    dim: int,
    ffn_dim: int,
    heads: int,
    *,
    cross_attn_norm: bool,
    eps: float,
    runtime: WanRuntime,
    rngs: nnx.Rngs,
):
    """``num_layers`` :class:`WanBlock` s: an ``nnx.List`` (looped) or, with
    ``runtime.scan_layers``, one ``WanBlock`` whose parameters carry a leading layer axis
    (logical name None, i.e. never sharded)."""
    kw = dict(cross_attn_norm=cross_attn_norm, eps=eps, runtime=runtime)
    if not runtime.scan_layers:
        return nnx.List([WanBlock(dim, ffn_dim, heads, rngs=rngs, **kw) for _ in range(num_layers)])
    if num_layers < 1:
        raise ValueError("a scanned block stack needs at least one layer")

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=num_layers, transform_metadata={nnx.PARTITION_NAME: None})
    def make(r):
        return WanBlock(dim, ffn_dim, heads, rngs=r, **kw)

    return make(rngs)


def _normalize_hints(hints, hint_layers, num_layers: int):
    """-> (layers tuple, stacked [K, B, Nh, dim]) or ((), None)."""
    if hints is None:
        if hint_layers is not None:
            raise ValueError("hint_layers given without hints")
        return (), None
    if isinstance(hints, Mapping):
        if hint_layers is not None:
            raise ValueError("pass hint layers either as the keys of a hints dict or as hint_layers, not both")
        layers = tuple(sorted(int(k) for k in hints))
        arrays = [jnp.asarray(hints[k]) for k in sorted(hints, key=int)]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all hints must share one shape [B, N_hint, dim], got {sorted(shapes)}")
        stacked = jnp.stack(arrays) if arrays else None
    else:
        if hint_layers is None:
            raise ValueError("stacked hints [K, B, N_hint, dim] need hint_layers (K layer indices)")
        layers = tuple(int(k) for k in hint_layers)
        stacked = jnp.asarray(hints)
        if stacked.ndim != 4 or stacked.shape[0] != len(layers):
            raise ValueError(f"stacked hints must be [K={len(layers)}, B, N_hint, dim], got {stacked.shape}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"hint layers repeat: {layers}")
    bad = [k for k in layers if not 0 <= k < num_layers]
    if bad:
        raise ValueError(f"hint layers {bad} outside [0, {num_layers})")
    if not layers:
        return (), None
    return layers, stacked


def _add_hint(x, hint, weight, start: int, mask):
    """``x`` with ``weight * hint (* mask)`` added to tokens ``[start, start + N_hint)``."""
    n_hint = hint.shape[1]
    h = hint.astype(jnp.float32) * weight
    if mask is not None:
        h = h * mask
    if start == 0 and n_hint == x.shape[1]:
        return x + h.astype(x.dtype)
    seg = jax.lax.slice_in_dim(x, start, start + n_hint, axis=1) + h.astype(x.dtype)
    return jnp.concatenate([x[:, :start], seg, x[:, start + n_hint :]], axis=1)


def run_block_stack(
    blocks,
    x: jax.Array,
    ctx: WanContext,
    runtime: WanRuntime,
    *,
    hints=None,
    hint_layers: Sequence[int] | None = None,
    hint_scale=1.0,
    hint_start: int = 0,
    hint_mask: jax.Array | None = None,
) -> jax.Array:
    """Runs a block stack from :func:`make_block_stack` on ``x [B, N, dim]``.

    Args:
      hints: ``{layer: [B|1, N_hint, dim]}`` or a stacked ``[K, B|1, N_hint, dim]`` array with
        ``hint_layers`` (K layer indices). After block ``layer`` the hint times ``hint_scale``
        (scalar, may be traced) times ``hint_mask`` (``[N_hint]``, ``[B, N_hint]`` or
        ``[B, N_hint, 1]``, optional) is added to tokens ``[hint_start, hint_start + N_hint)``.
    """
    scanned = runtime.scan_layers
    num_layers = (
        jax.tree.leaves(nnx.state(blocks, nnx.Param))[0].shape[0] if scanned else len(blocks)
    )
    layers, stacked = _normalize_hints(hints, hint_layers, num_layers)
    mask = None
    if stacked is not None:
        _, hb, n_hint, hd = stacked.shape
        if hd != x.shape[2] or hb not in (1, x.shape[0]):
            raise ValueError(f"hints {stacked.shape[1:]} do not fit tokens {x.shape} ([B|1, N_hint, dim])")
        if not 0 <= int(hint_start) <= x.shape[1] - n_hint:
            raise ValueError(f"hint tokens [{hint_start}, {hint_start} + {n_hint}) exceed the {x.shape[1]} tokens")
        if hint_mask is not None:
            mask = jnp.asarray(hint_mask, jnp.float32)
            if mask.ndim == 1:
                mask = mask[None, :, None]
            elif mask.ndim == 2:
                mask = mask[:, :, None]
            if mask.ndim != 3 or mask.shape[1] != n_hint or mask.shape[2] != 1 or mask.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"hint_mask {jnp.shape(hint_mask)} must be [N_hint], [B, N_hint] or [B, N_hint, 1] with N_hint={n_hint}")
    elif hint_mask is not None:
        raise ValueError("hint_mask given without hints")
    start = int(hint_start)
    scale = jnp.asarray(hint_scale, jnp.float32)

    if not scanned:
        step = runtime.remat_wrap(lambda blk, h, c: blk(h, c))
        where = {layer: k for k, layer in enumerate(layers)}
        for i, blk in enumerate(blocks):
            x = step(blk, x, ctx)
            if i in where:
                x = _add_hint(x, stacked[where[i]], scale, start, mask)
        return x

    index = np.full((num_layers,), -1, np.int32)
    for k, layer in enumerate(layers):
        index[layer] = k

    def body(h, blk, idx, c, hs, sc, m):
        h = blk(h, c)
        if hs is not None:
            hint = jax.lax.dynamic_index_in_dim(hs, jnp.maximum(idx, 0), axis=0, keepdims=False)
            h = _add_hint(h, hint, sc * (idx >= 0).astype(jnp.float32), start, m)
        return h

    scan = nnx.scan(
        runtime.remat_wrap(body),
        in_axes=(nnx.Carry, 0, 0, None, None, None, None),
        out_axes=nnx.Carry,
        unroll=runtime.scan_unroll,
    )
    return scan(x, blocks, jnp.asarray(index), ctx, stacked, scale, mask)


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------


class WanDiT(nnx.Module):
    """``WanTransformer3DModel`` in NNX. See the module docstring for the call API.

    Parameters (NNX paths; diffusers names in :mod:`mirage_jax.convert.wan_dit`):
    ``patch_embedding``, ``condition_embedder.{time_embedder, time_proj, text_embedder}``,
    ``blocks`` (``blocks.<i>.*`` looped, or stacked ``blocks.*`` with a leading layer axis),
    ``scale_shift_table [1, 2, dim]``, ``proj_out``.
    """

    def __init__(self, config: WanDiTConfig, runtime: WanRuntime | None = None, *, rngs: nnx.Rngs | None = None):
        runtime = runtime or WanRuntime()
        get_attention(runtime.attention)  # fail fast on an unknown attention implementation
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.runtime = runtime
        d = config.dim
        k_patch, k_cond, k_table, k_out = jax.random.split(rngs.params(), 4)
        kw = dict(dtype=runtime.dtype, param_dtype=runtime.param_dtype, precision=runtime.precision)
        # Logical axis names are metadata only (models.params.param); parameters are placed in a
        # mesh by sharding.create_sharded (init_model) or convert.place (the loaders).
        self.patch_embedding = PatchEmbed(config.in_channels, d, config.patch_size, key=k_patch, **kw)
        self.condition_embedder = WanConditionEmbedder(d, config.freq_dim, config.text_dim, runtime, key=k_cond)
        self.blocks = make_block_stack(
            config.num_layers, d, config.ffn_dim, config.num_attention_heads,
            cross_attn_norm=config.cross_attn_norm, eps=config.eps, runtime=runtime, rngs=rngs,
        )
        self.scale_shift_table = param(
            jax.random.normal(k_table, (1, 2, d), runtime.param_dtype) * d**-0.5, (None, None, "norm")
        )
        self.proj_out = Dense(d, config.patch_volume * config.out_channels, ("embed", "latent"), key=k_out, **kw)

    # -- pieces ----------------------------------------------------------------------------------
    def embed_timesteps(self, timestep, batch: int, grid: tuple[int, int, int]) -> tuple[jax.Array, jax.Array]:
        """``timestep`` ``[]``, ``[B]``, ``[B, T']`` or ``[B, N]`` -> ``(temb [B, G, dim], mod [B, G, 6, dim])``."""
        t = jnp.asarray(timestep)
        n = math.prod(grid)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] not in (1, batch) or t.shape[1] not in (1, grid[0], n):
            raise ValueError(
                f"timestep has shape {tuple(jnp.shape(timestep))}; expected [B], [B, T'={grid[0]}] (per latent "
                f"frame) or [B, N={n}] (per token) with B={batch}"
            )
        t = jnp.broadcast_to(t, (batch, t.shape[1]))
        return self.condition_embedder.time(t)

    def prepare(self, latents: jax.Array, timestep, text: jax.Array, positions=None) -> tuple[jax.Array, WanContext]:
        """Patch embedding and per-call conditioning.

        Args:
          latents: ``[B, T, H, W, C_in]``; T, H, W divisible by ``patch_size``.
          timestep: ``[B]`` / ``[B, T']`` / ``[B, N]`` (any real dtype; 0 = clean).
          text: ``[B, L, text_dim]``.
          positions: optional (t, h, w) per token (see :func:`rope.rope_cos_sin`).
        Returns:
          tokens ``[B, N, dim]`` (compute dtype) and the :class:`WanContext`.
        """
        cfg = self.config
        if latents.ndim != 5:
            raise ValueError(f"latents must be [B, T, H, W, C] (channels-last), got shape {latents.shape}")
        if text.ndim != 3 or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text must be [B, L, {cfg.text_dim}], got shape {text.shape}")
        if text.shape[0] not in (1, latents.shape[0]):
            raise ValueError(f"text batch {text.shape[0]} does not match latents batch {latents.shape[0]}")
        batch = latents.shape[0]
        grid = self.patch_embedding.grid(latents.shape)
        tokens = self.patch_embedding(latents)
        temb, mod = self.embed_timesteps(timestep, batch, grid)
        ctx_text = self.condition_embedder.text(text)
        if ctx_text.shape[0] != batch:
            ctx_text = jnp.broadcast_to(ctx_text, (batch,) + ctx_text.shape[1:])
        if positions is None:
            positions = grid_positions(*grid)
        cos, sin = rope_cos_sin(positions, cfg.attention_head_dim, cfg.rope_max_seq_len)
        if cos.shape[0] not in (1, batch) or cos.shape[1] != tokens.shape[1]:
            raise ValueError(f"positions give RoPE tables {cos.shape[:2]}, tokens are {tokens.shape[:2]}")
        ctx = WanContext(mod=mod, temb=temb, text=ctx_text, rope_cos=cos, rope_sin=sin, grid=grid)
        return tokens, ctx

    def run_blocks(self, tokens: jax.Array, ctx: WanContext, **hint_kwargs) -> jax.Array:
        """The block stack; keyword arguments as :func:`run_block_stack` (hints)."""
        return run_block_stack(self.blocks, tokens, ctx, self.runtime, **hint_kwargs)

    def finalize(self, x: jax.Array, ctx: WanContext) -> jax.Array:
        """Output LayerNorm + modulation, projection, unpatchify -> ``[B, T, H, W, C_out]``."""
        if ctx.grid is None or math.prod(ctx.grid) != x.shape[1]:
            raise ValueError(f"cannot unpatchify {x.shape[1]} tokens with grid {ctx.grid}")
        ss = self.scale_shift_table[...].astype(jnp.float32)[None] + ctx.temb.astype(jnp.float32)[:, :, None, :]
        h = modulate(layer_norm_f32(x, self.config.eps), ss[:, :, 0], ss[:, :, 1]).astype(x.dtype)
        y = self.proj_out(h)
        b = y.shape[0]
        gt, gh, gw = ctx.grid
        pt, ph, pw = self.config.patch_size
        y = y.reshape(b, gt, gh, gw, pt, ph, pw, self.config.out_channels)
        y = y.transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return y.reshape(b, gt * pt, gh * ph, gw * pw, self.config.out_channels)

    def __call__(
        self,
        latents: jax.Array,
        timestep,
        text: jax.Array,
        positions=None,
        **hint_kwargs,
    ) -> jax.Array:
        """Velocity ``[B, T, H, W, C_out]`` (compute dtype); see :meth:`prepare` / :meth:`run_blocks`."""
        tokens, ctx = self.prepare(latents, timestep, text, positions)
        return self.finalize(self.run_blocks(tokens, ctx, **hint_kwargs), ctx)


def init_model(
    config: WanDiTConfig,
    runtime: WanRuntime | None = None,
    *,
    seed: int = 0,
    mesh=None,
    rules=None,
) -> WanDiT:
    """A randomly initialised :class:`WanDiT` built by one jitted initialiser (much faster than
    eager construction, which dispatches hundreds of small ops), with its parameters created
    directly in their shardings when a ``mesh`` is given (logical ``rules`` preset or table,
    default ``"fsdp"``); see :func:`mirage_jax.sharding.create_sharded`."""
    from mirage_jax.sharding import create_sharded

    return create_sharded(lambda: WanDiT(config, runtime, rngs=nnx.Rngs(seed)), mesh, rules)


# ------------------------------------------------------------------------------------------------
# Counting and layouts.
# ------------------------------------------------------------------------------------------------


def count_params(model_or_state) -> int:
    """Number of parameters of a (possibly abstract) model or state."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(state)))


def forward_flops(config: WanDiTConfig, num_tokens: int, text_len: int = 512, batch: int = 1, timestep_groups: int = 1) -> int:
    """Analytic forward FLOPs (2 per multiply-add of every matmul; elementwise ops ignored).

    Per block with N tokens, L text tokens, width D, FFN width F:
      self-attention projections 4 * 2ND^2, scores + values 2 * 2N^2D,
      cross-attention q / out 2 * 2ND^2, k / v on text 2 * 2LD^2, scores + values 2 * 2NLD,
      FFN 2 * 2NDF.
    Plus patch embedding 2N(pC_in)D, output 2ND(pC_out), text MLP 2L(T_d D + D^2) and the
    timestep MLP + projection per group 2G(f D + D^2 + 6D^2). Backward ~ 2x forward.
    """
    d, f, n, l = config.dim, config.ffn_dim, num_tokens, text_len
    p = config.patch_volume
    block = 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * l * d * d + 4 * n * l * d + 4 * n * d * f
    top = 2 * n * p * config.in_channels * d + 2 * n * d * p * config.out_channels
    top += 2 * l * (config.text_dim * d + d * d)
    top += 2 * timestep_groups * (config.freq_dim * d + d * d + 6 * d * d)
    return batch * (config.num_layers * block + top)
