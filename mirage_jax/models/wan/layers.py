"""Building blocks of the Wan DiT (diffusers ``transformer_wan.py`` semantics) in Flax NNX.

Contents: :class:`WanRuntime` (runtime knobs), :class:`WanContext` (the per-call conditioning a
block consumes), norms computed in float32 like diffusers' ``FP32LayerNorm`` / ``torch.nn.RMSNorm``,
the sinusoidal timestep embedding, :class:`WanAttention`, :class:`FeedForward`,
:class:`WanConditionEmbedder`, :class:`PatchEmbed` and :class:`WanBlock` (self-attention with 3D
RoPE, cross-attention to text, FFN, adaLN modulation), which a control branch reuses as is.

Mixed precision follows diffusers' bf16 inference: parameters in ``param_dtype``; matmuls,
attention and the residual stream in ``dtype``; norms, modulation, RoPE and the timestep MLP in
float32; gated residual adds in float32 then cast back to the stream dtype.

Per-token conditioning: the timestep modulation in :class:`WanContext` has ``G`` groups of
``N // G`` consecutive tokens (``G = 1``: one timestep per sample; ``G = T``: one per latent frame,
Wan2.2 TI2V; ``G = N``: one per token), which is exactly diffusers' ``[B, seq_len]`` timestep
broadcast, without materialising ``[B, N, 6, dim]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mirage_jax.models.params import param
from mirage_jax.models.wan import attention as attention_lib
from mirage_jax.models.wan.rope import apply_rope

# torch.nn.Linear's default init (kaiming_uniform with a = sqrt(5)) as a variance scaling.
default_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# ----------------------------------------------------------------------------------------------
# Runtime knobs.
# ----------------------------------------------------------------------------------------------

REMAT_POLICIES: dict[str, Callable | None] = {
    # name -> jax.checkpoint policy (None: recompute everything inside a block).
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep the attention outputs (the costliest recomputation), recompute the rest.
    "save_attention": jax.checkpoint_policies.save_only_these_names("wan_self_attn", "wan_cross_attn"),
}


def _as_dtype(x, name: str) -> np.dtype:
    try:
        return jnp.dtype(x)
    except TypeError as e:
        raise ValueError(f"WanRuntime.{name}={x!r} is not a dtype") from e


@dataclasses.dataclass(frozen=True)
class WanRuntime:
    """How to run a Wan DiT (nothing here changes the checkpoint or the maths).

    Attributes:
      param_dtype: parameter storage dtype (default float32).
      dtype: compute dtype for matmuls, attention and the residual stream (float32 or
        bfloat16; bf16 compute with float32 parameters is the usual training set-up).
      attention: name in the attention registry (``"xla"``, ``"cudnn"``, ``"auto"``,
        ``"chunked"`` or one added with :func:`attention.register_attention`).
      attention_chunk_size: query block for ``"chunked"``.
      remat: ``"none"`` or a key of :data:`REMAT_POLICIES` (``"full"``, ``"dots_saveable"``,
        ``"dots_with_no_batch_dims_saveable"``, ``"save_attention"``), applied per block.
      scan_layers: stack the blocks' parameters on a leading layer axis and run them with
        ``nnx.scan`` (one compiled block; same numbers and same checkpoints as the loop).
      scan_unroll: ``unroll`` of that scan.
      precision: matmul precision of the dense layers (None: JAX default).
    """

    param_dtype: Any = "float32"
    dtype: Any = "float32"
    attention: str = "xla"
    attention_chunk_size: int = 1024
    remat: str = "none"
    scan_layers: bool = False
    scan_unroll: int = 1
    precision: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "param_dtype", _as_dtype(self.param_dtype, "param_dtype"))
        object.__setattr__(self, "dtype", _as_dtype(self.dtype, "dtype"))
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"WanRuntime.remat={self.remat!r}; choose 'none' or one of {sorted(REMAT_POLICIES)}")
        if self.attention_chunk_size <= 0 or self.scan_unroll <= 0:
            raise ValueError("WanRuntime.attention_chunk_size and scan_unroll must be positive")

    def remat_wrap(self, f: Callable) -> Callable:
        """``f`` wrapped with ``nnx.remat`` under the configured policy (``f`` itself for "none")."""
        if self.remat == "none":
            return f
        return nnx.remat(f, policy=REMAT_POLICIES[self.remat])


# ----------------------------------------------------------------------------------------------
# Per-call conditioning.
# ----------------------------------------------------------------------------------------------


@flax.struct.dataclass
class WanContext:
    """Everything a :class:`WanBlock` needs besides its input tokens (a pytree).

    Attributes:
      mod: ``[B, G, 6, dim]`` float32 timestep projection (before each block's own
        ``scale_shift_table``); group ``g`` covers tokens ``[g * N/G, (g + 1) * N/G)``.
      temb: ``[B, G, dim]`` timestep embedding (compute dtype), for the output modulation.
      text: ``[B, L, dim]`` projected text tokens (compute dtype), the cross-attention keys.
      rope_cos, rope_sin: ``[B|1, N, head_dim // 2]`` float32 RoPE tables of the tokens.
      grid: static post-patch token grid ``(T', H', W')`` of the tokens (None when the tokens
        are not a whole grid); used by ``WanDiT.finalize`` to unpatchify.
      key_mask: optional bool ``[B, N]``: False tokens are never attended to as self-attention
        keys (padding); None (default) attends to all tokens, with unchanged numbers.
    """

    mod: jax.Array
    temb: jax.Array
    text: jax.Array
    rope_cos: jax.Array
    rope_sin: jax.Array
    grid: tuple[int, int, int] | None = flax.struct.field(pytree_node=False, default=None)
    key_mask: jax.Array | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.rope_cos.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.mod.shape[1])

    @property
    def group_size(self) -> int:
        return self.num_tokens // self.num_groups

    def slice_tokens(self, start: int, stop: int) -> "WanContext":
        """The context of tokens ``[start, stop)`` (e.g. the target + preceding frames a
        control branch sees). ``start`` / ``stop`` must fall on modulation-group boundaries."""
        n, g = self.num_tokens, self.group_size
        if not (0 <= start < stop <= n):
            raise ValueError(f"token slice [{start}, {stop}) is not inside [0, {n})")
        if self.num_groups > 1 and (start % g or stop % g):
            raise ValueError(
                f"token slice [{start}, {stop}) cuts through a timestep group of {g} tokens; "
                "slice on frame boundaries"
            )
        mod, temb = self.mod, self.temb
        if self.num_groups > 1:
            mod, temb = mod[:, start // g : stop // g], temb[:, start // g : stop // g]
        grid = None
        if self.grid is not None:
            per_frame = self.grid[1] * self.grid[2]
            if start % per_frame == 0 and stop % per_frame == 0:
                grid = ((stop - start) // per_frame, self.grid[1], self.grid[2])
        return WanContext(
            mod=mod,
            temb=temb,
            text=self.text,
            rope_cos=self.rope_cos[:, start:stop],
            rope_sin=self.rope_sin[:, start:stop],
            grid=grid,
            key_mask=None if self.key_mask is None else self.key_mask[:, start:stop],
        )


def grouped(fn: Callable[..., jax.Array], x: jax.Array, *per_group: jax.Array) -> jax.Array:
    """Applies ``fn(x, *per_group)`` with ``x [B, N, D]`` split into the ``G`` token groups of
    ``per_group`` arrays ``[B, G, D]`` (broadcast over each group's tokens) -> ``[B, N, D]``."""
    b, n, d = x.shape
    g = per_group[0].shape[1]
    if n % g:
        raise ValueError(f"{n} tokens do not split into {g} timestep groups")
    xr = x.reshape(b, g, n // g, d)
    out = fn(xr, *[p[:, :, None, :] for p in per_group])
    return out.reshape(out.shape[0], n, out.shape[-1])


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """``x * (1 + scale) + shift`` per token group (float32 in, float32 out)."""
    return grouped(lambda a, sh, sc: a * (1 + sc) + sh, x, shift, scale)


def gated_add(x: jax.Array, y: jax.Array, gate: jax.Array) -> jax.Array:
    """``(x.f32 + y.f32 * gate).astype(x.dtype)`` per token group (diffusers' gated residual)."""
    b, n, d = x.shape
    g = gate.shape[1]
    xr = x.astype(jnp.float32).reshape(b, g, n // g, d)
    yr = y.astype(jnp.float32).reshape(b, g, n // g, d)
    return (xr + yr * gate[:, :, None, :]).reshape(b, n, d).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Small layers.
# ----------------------------------------------------------------------------------------------


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, precision=None) -> jax.Array:
    """``x [..., in] @ kernel [in, out] + bias [out]`` computed as one 2-D ``[prod(...), in]``
    matmul, reshaped back to ``[..., out]``.

    Why 2-D: the weight gradient of a matmul over ``[B, N, in]`` tokens contracts two axes
    (B and N). XLA:CPU lowers that dot by transposing an operand, and fuses the transpose with
    the elementwise producers of the incoming gradient, recomputing them; for the residual
    stream that producer chain spans every later block, so a training step did quadratic work
    in depth (3x PyTorch's step at 6 layers). On 2-D operands the weight gradient is a plain
    ``x^T g`` GEMM with no copy. Same forward numbers.
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, precision=precision) + bias
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


class Dense(nnx.Module):
    """``x @ kernel + bias`` with ``kernel [in, out]`` (torch ``Linear.weight.T``) and logical
    axis names ``names`` on the kernel (the bias takes the output name). Computes in ``dtype``.

    Kernel initialised like ``torch.nn.Linear`` (uniform, bound ``1 / sqrt(in)``) from one PRNG
    ``key``, bias zero. (No ``nnx.Rngs`` calls per layer, which are slow to trace hundreds of
    times, and one random draw per layer, which keeps the jitted initialiser quick to compile.)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        names: tuple[str | None, str | None],
        *,
        key: jax.Array,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision=None,
    ):
        self.kernel = param(default_kernel_init(key, (in_features, out_features), param_dtype), names)
        self.bias = param(jnp.zeros((out_features,), param_dtype), (names[1],))
        self.dtype = dtype
        self.precision = precision

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        return dense(x.astype(self.dtype), kernel, self.bias[...].astype(self.dtype), self.precision)


def layer_norm_f32(x: jax.Array, eps: float, scale: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis in float32 (biased variance, as torch); returns float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


class LayerNorm(nnx.Module):
    """Affine LayerNorm computed in float32, output cast to the input dtype (``FP32LayerNorm``)."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), param_dtype), ("norm",))
        self.bias = param(jnp.zeros((dim,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm_f32(x, self.eps, self.scale[...], self.bias[...]).astype(x.dtype)


class RMSNorm(nnx.Module):
    """``torch.nn.RMSNorm`` over the last axis: float32 statistics, weight in the input dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[..., dim]`` float32, cos first (diffusers ``Timesteps`` with
    ``flip_sin_to_cos=True, downscale_freq_shift=0``), for timesteps ``t`` of any shape."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / half)
    args = jnp.asarray(t).astype(jnp.float32)[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = ``patch`` as one matmul: ``[B, T, H, W, C] -> [B, N, dim]``.

    The kernel is stored conv-shaped ``[pt, ph, pw, C, dim]`` (torch's ``[dim, C, pt, ph, pw]``
    with the CONV transform); tokens are ordered (t, h, w) like diffusers' ``flatten(2)``.
    """

    def __init__(self, in_channels: int, dim: int, patch: tuple[int, int, int], *, key, dtype, param_dtype, precision=None):
        self.patch = tuple(int(p) for p in patch)
        self.in_channels = in_channels
        self.dtype = dtype
        self.precision = precision
        shape = self.patch + (in_channels, dim)
        init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1, 2, 3), out_axis=4)
        self.kernel = param(init(key, shape, param_dtype), (None, None, None, "latent", "embed"))
        self.bias = param(jnp.zeros((dim,), param_dtype), ("embed",))

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        _, t, h, w, c = shape
        pt, ph, pw = self.patch
        if c != self.in_channels:
            raise ValueError(f"latents have {c} channels, the patch embedding wants {self.in_channels}")
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent grid (T, H, W) = {(t, h, w)} is not divisible by the patch size {self.patch}")
        return t // pt, h // ph, w // pw

    def __call__(self, x: jax.Array) -> jax.Array:
        b = x.shape[0]
        gt, gh, gw = self.grid(x.shape)
        pt, ph, pw = self.patch
        c = x.shape[-1]
        x = x.astype(self.dtype).reshape(b, gt, pt, gh, ph, gw, pw, c)
        x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, gt * gh * gw, pt * ph * pw * c)
        kernel = self.kernel[...].astype(self.dtype).reshape(pt * ph * pw * c, -1)
        return dense(x, kernel, self.bias[...].astype(self.dtype), self.precision)


class _MLP2(nnx.Module):
    """``linear_2(act(linear_1(x)))`` (diffusers ``TimestepEmbedding`` / ``PixArtAlphaTextProjection``)."""

    def __init__(self, din: int, dim: int, in_name: str, act: Callable, *, key, dtype, param_dtype, precision=None):
        self.act = act
        k1, k2 = jax.random.split(key)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.linear_1 = Dense(din, dim, (in_name, "embed"), key=k1, **kw)
        self.linear_2 = Dense(dim, dim, ("embed", None), key=k2, **kw)

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


class WanConditionEmbedder(nnx.Module):
    """Timestep MLP (float32, as diffusers keeps it), 6-way modulation projection and text MLP."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int, runtime: WanRuntime, *, key: jax.Array):
        self.freq_dim = freq_dim
        self.dtype = runtime.dtype
        k1, k2, k3 = jax.random.split(key, 3)
        kw = dict(param_dtype=runtime.param_dtype, precision=runtime.precision)
        self.time_embedder = _MLP2(freq_dim, dim, "freq", jax.nn.silu, key=k1, dtype=jnp.float32, **kw)
        self.time_proj = Dense(dim, 6 * dim, ("embed", None), key=k2, dtype=runtime.dtype, **kw)
        self.text_embedder = _MLP2(text_dim, dim, "text_embed", gelu_tanh, key=k3, dtype=runtime.dtype, **kw)

    def time(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``t [B, G]`` -> ``temb [B, G, dim]`` (compute dtype), ``mod [B, G, 6, dim]`` float32."""
        temb = self.time_embedder(timestep_embedding(t, self.freq_dim)).astype(self.dtype)
        proj = self.time_proj(jax.nn.silu(temb))
        mod = proj.reshape(proj.shape[:-1] + (6, -1)).astype(jnp.float32)
        return temb, mod

    def text(self, text: jax.Array) -> jax.Array:
        """``[B, L, text_dim]`` -> ``[B, L, dim]`` (compute dtype)."""
        return self.text_embedder(text.astype(self.dtype))


class WanAttention(nnx.Module):
    """Multi-head attention with RMS q/k norms across heads (diffusers ``WanAttention``).

    Self-attention rotates q / k with the 3D RoPE; cross-attention reads keys and values from
    the text tokens. Parameters: ``to_q, to_k, to_v, to_out`` (``[dim, dim]`` kernels) and
    ``norm_q, norm_k`` (``[dim]``).
    """

    def __init__(self, dim: int, heads: int, eps: float, runtime: WanRuntime, *, cross: bool, key: jax.Array):
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.cross = cross
        self.attention = runtime.attention
        self.attention_chunk_size = runtime.attention_chunk_size
        kq, kk, kv, ko = jax.random.split(key, 4)
        kw = dict(dtype=runtime.dtype, param_dtype=runtime.param_dtype, precision=runtime.precision)
        self.to_q = Dense(dim, dim, ("embed", "heads"), key=kq, **kw)
        self.to_k = Dense(dim, dim, ("embed", "heads"), key=kk, **kw)
        self.to_v = Dense(dim, dim, ("embed", "heads"), key=kv, **kw)
        self.to_out = Dense(dim, dim, ("heads", "embed"), key=ko, **kw)
        self.norm_q = RMSNorm(dim, eps, param_dtype=runtime.param_dtype)
        self.norm_k = RMSNorm(dim, eps, param_dtype=runtime.param_dtype)

    def _attn(self, q, k, v, key_mask=None):
        fn = attention_lib.get_attention(self.attention)
        kw = {} if key_mask is None else {"key_mask": key_mask}
        if self.attention == "chunked":
            return fn(q, k, v, chunk_size=self.attention_chunk_size, **kw)
        return fn(q, k, v, **kw)

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        rope: tuple[jax.Array, jax.Array] | None = None,
        key_mask: jax.Array | None = None,
    ) -> jax.Array:
        """``x [B, N, dim]``; ``context [B, L, dim]`` for cross-attention; ``rope`` = (cos, sin);
        ``key_mask`` optional bool ``[B, N_keys]`` (False keys are ignored)."""
        src = x if context is None else context
        b, n, d = x.shape
        q = self.norm_q(self.to_q(x)).reshape(b, n, self.heads, d // self.heads)
        k = self.norm_k(self.to_k(src)).reshape(b, src.shape[1], self.heads, d // self.heads)
        v = self.to_v(src).reshape(b, src.shape[1], self.heads, d // self.heads)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        o = self._attn(q, k, v.astype(q.dtype), key_mask).reshape(b, n, d)
        o = checkpoint_name(o, "wan_cross_attn" if self.cross else "wan_self_attn")
        return self.to_out(o)


class FeedForward(nnx.Module):
    """``proj_out(gelu_tanh(proj_in(x)))`` (diffusers ``FeedForward(..., "gelu-approximate")``)."""

    def __init__(self, dim: int, hidden: int, runtime: WanRuntime, *, key: jax.Array):
        k1, k2 = jax.random.split(key)
        kw = dict(dtype=runtime.dtype, param_dtype=runtime.param_dtype, precision=runtime.precision)
        self.proj_in = Dense(dim, hidden, ("embed", "mlp"), key=k1, **kw)
        self.proj_out = Dense(hidden, dim, ("mlp", "embed"), key=k2, **kw)

    def __call__(self, x):
        return self.proj_out(gelu_tanh(self.proj_in(x)))


class WanBlock(nnx.Module):
    """One Wan DiT block (diffusers ``WanTransformerBlock``), ``block(x, ctx) -> x``.

    ``x [B, N, dim]`` in the stream dtype; ``ctx`` a :class:`WanContext` for the same ``N``
    tokens. Order: adaLN-modulated self-attention (RoPE) with gated residual; cross-attention to
    ``ctx.text`` after an affine LayerNorm (``cross_attn_norm``); adaLN-modulated FFN with gated
    residual. Parameters: ``scale_shift_table [1, 6, dim]``, ``attn1``, ``attn2``, ``norm2``
    (when ``cross_attn_norm``), ``ffn``.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        heads: int,
        *,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        runtime: WanRuntime | None = None,
        rngs: nnx.Rngs,
    ):
        runtime = runtime or WanRuntime()
        self.eps = eps
        k_table, k_attn1, k_attn2, k_ffn = jax.random.split(rngs.params(), 4)
        # Parameters carry logical axis names as metadata only (models.params.param), so the
        # block builds anywhere, e.g. in a control branch, with or without a mesh.
        self.scale_shift_table = param(
            jax.random.normal(k_table, (1, 6, dim), runtime.param_dtype) * dim**-0.5, (None, None, "norm")
        )
        self.attn1 = WanAttention(dim, heads, eps, runtime, cross=False, key=k_attn1)
        self.attn2 = WanAttention(dim, heads, eps, runtime, cross=True, key=k_attn2)
        self.norm2 = LayerNorm(dim, eps, param_dtype=runtime.param_dtype) if cross_attn_norm else None
        self.ffn = FeedForward(dim, ffn_dim, runtime, key=k_ffn)

    def __call__(self, x: jax.Array, ctx: WanContext) -> jax.Array:
        if x.shape[1] != ctx.num_tokens:
            raise ValueError(f"block input has {x.shape[1]} tokens, its context {ctx.num_tokens}")
        mod = self.scale_shift_table[...].astype(jnp.float32)[None] + ctx.mod  # [B, G, 6, dim]
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, :, i] for i in range(6))

        h = modulate(layer_norm_f32(x, self.eps), shift, scale).astype(x.dtype)
        x = gated_add(x, self.attn1(h, rope=(ctx.rope_cos, ctx.rope_sin), key_mask=ctx.key_mask), gate)

        h = self.norm2(x) if self.norm2 is not None else x
        x = x + self.attn2(h, context=ctx.text).astype(x.dtype)

        h = modulate(layer_norm_f32(x, self.eps), c_shift, c_scale).astype(x.dtype)
        return gated_add(x, self.ffn(h), c_gate)
