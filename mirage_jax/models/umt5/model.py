"""The umT5 text encoder (transformers ``UMT5EncoderModel`` semantics) in Flax NNX.

Wan conditions its DiT on the last hidden state of the umT5-XXL encoder over 512 tokens. The
encoder differs from T5 in one way: every layer has its own relative position bias table
(T5 shares layer 0's). Per layer: RMS-normalised self-attention (no ``1/sqrt(d)`` scaling; the
bucketed relative position bias is added to the logits), residual; RMS-normalised gated-GELU
feed-forward ``wo(gelu_new(wi_0 x) * wi_1 x)``, residual; a final RMS norm. No linear layer has
a bias.

Numerics: parameters in ``runtime.param_dtype``; matmuls in ``runtime.dtype`` (float32 or
bfloat16); RMS statistics, attention logits / softmax and the residual stream in float32 (so
bfloat16 compute never accumulates the stream in bfloat16). float16 compute is refused: T5's
activations exceed float16's range (the reference and transformers clamp infinities instead).

Padding: ``attention_mask`` removes padded keys from attention and the output at padded
positions is exactly zero, per sample. (The Mirage reference zeroes the tail of every sample with
the first sample's length when it pads the empty prompt in batches > 1; we use each sample's own
mask.) transformers' ``UMT5EncoderModel`` leaves the padded positions' values in place; the
valid positions agree with it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.models.params import param
from mirage_jax.models.wan.layers import WanRuntime

__all__ = ["UMT5Config", "UMT5Encoder", "relative_position_buckets", "ACTIVATIONS"]

# transformers' ACT2FN names of the gated activations we implement.
ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation (umT5)
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def _dense_act_fn(feed_forward_proj: str) -> str:
    """transformers' rule: ``"gated-gelu"`` -> ``"gelu_new"``, else the last ``-`` part."""
    return "gelu_new" if feed_forward_proj == "gated-gelu" else feed_forward_proj.split("-")[-1]


@dataclasses.dataclass(frozen=True)
class UMT5Config:
    """Hyperparameters of transformers' ``UMT5Config`` that define the encoder (same names and
    defaults). ``dense_act_fn`` is derived from ``feed_forward_proj`` as transformers derives it;
    only gated feed-forwards (``gated-<act>``, as every umT5) are implemented."""

    vocab_size: int = 250112
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "gated-gelu"
    layer_norm_epsilon: float = 1e-6
    dense_act_fn: str = "gelu_new"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "relative_attention_num_buckets",
                     "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"UMT5Config.{name} must be a positive int, got {v!r}")
        if not isinstance(self.num_layers, (int, np.integer)) or self.num_layers < 0:
            raise ConfigError(f"UMT5Config.num_layers must be an int >= 0, got {self.num_layers!r}")
        if self.relative_attention_num_buckets < 4:
            raise ConfigError(
                f"UMT5Config.relative_attention_num_buckets={self.relative_attention_num_buckets}: at least 4 "
                "(half per direction, half of those exact)"
            )
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4:
            raise ConfigError(
                f"UMT5Config.relative_attention_max_distance={self.relative_attention_max_distance} must exceed "
                f"num_buckets // 4 = {self.relative_attention_num_buckets // 4} (the exact range)"
            )
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and math.isfinite(self.layer_norm_epsilon)
                and self.layer_norm_epsilon > 0):
            raise ConfigError(f"UMT5Config.layer_norm_epsilon must be a positive number, got {self.layer_norm_epsilon!r}")
        parts = self.feed_forward_proj.split("-") if isinstance(self.feed_forward_proj, str) else []
        if len(parts) != 2 or parts[0] != "gated":
            raise ConfigError(
                f"UMT5Config.feed_forward_proj={self.feed_forward_proj!r}: only gated feed-forwards "
                "('gated-<activation>', e.g. 'gated-gelu' as umT5) are implemented"
            )
        if self.dense_act_fn != _dense_act_fn(self.feed_forward_proj):
            raise ConfigError(
                f"UMT5Config.dense_act_fn={self.dense_act_fn!r} contradicts feed_forward_proj="
                f"{self.feed_forward_proj!r}, which means {_dense_act_fn(self.feed_forward_proj)!r}"
            )
        if self.dense_act_fn not in ACTIVATIONS:
            raise ConfigError(f"UMT5Config: activation {self.dense_act_fn!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def inner_dim(self) -> int:
        """``num_heads * d_kv``, the width of q, k, v."""
        return self.num_heads * self.d_kv

    # -- transformers interop ------------------------------------------------------------------
    @classmethod
    def from_transformers(cls, config: Mapping[str, Any]) -> "UMT5Config":
        """From a transformers ``config.json`` dict of a umT5 model (``model_type`` "umt5").

        Keys that only matter for training or the decoder (dropout, ``num_decoder_layers``,
        token ids, ``tie_word_embeddings`` ...) are ignored; a stored ``dense_act_fn`` is
        re-derived from ``feed_forward_proj`` as transformers does. T5 / mT5 configs are refused
        (they share one position bias table, a different model).
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"a umT5 config must be a mapping, got {type(config).__name__}")
        model_type = config.get("model_type")
        if model_type != "umt5":
            raise ConfigError(
                f"model_type {model_type!r}: expected 'umt5' (T5 / mT5 share one relative position bias across "
                "layers and are a different model)"
            )
        if config.get("is_decoder"):
            raise ConfigError("is_decoder=true: this is a decoder config, the text encoder needs the encoder's")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name == "dense_act_fn" or f.name not in config:
                continue
            value = config[f.name]
            if isinstance(f.default, int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{f.name}: expected an integer, got {value!r}")
            if isinstance(f.default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{f.name}: expected a number, got {value!r}")
            if isinstance(f.default, str) and not isinstance(value, str):
                raise ConfigError(f"{f.name}: expected a string, got {value!r}")
            kwargs[f.name] = float(value) if isinstance(f.default, float) else value
        kwargs["dense_act_fn"] = _dense_act_fn(kwargs.get("feed_forward_proj", cls.feed_forward_proj))
        return cls(**kwargs)

    def to_transformers(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.UMT5Config(**d)`` / ``from_pretrained`` accept."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(model_type="umt5", architectures=["UMT5EncoderModel"], is_encoder_decoder=True,
                   num_decoder_layers=self.num_layers, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        return out

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def umt5_xxl(cls) -> "UMT5Config":
        """Wan's text encoder: umT5-XXL (24 layers, 4096 wide, 64 heads x 64, FFN 10240,
        256384 tokens; 5.68 B parameters in the encoder)."""
        return cls(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)

    @classmethod
    def tiny(cls) -> "UMT5Config":
        """A test-sized encoder whose few buckets reach the logarithmic range at ~20 tokens."""
        return cls(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)

    def num_params(self) -> int:
        d, i, f, h = self.d_model, self.inner_dim, self.d_ff, self.num_heads
        block = 4 * d * i + self.relative_attention_num_buckets * h + 3 * d * f + 2 * d
        return self.vocab_size * d + self.num_layers * block + d


# ------------------------------------------------------------------------------------------------
# Relative position buckets.
# ------------------------------------------------------------------------------------------------


def relative_position_buckets(query_len: int, key_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 ``[query_len, key_len]`` bidirectional bucket of ``key - query`` (T5's rule).

    Half the buckets per direction; of those, half exact offsets and half logarithmic bins up to
    ``max_distance``. Computed on the host in float32 like transformers' and Wan's torch code, so
    the bins at exact powers agree bit for bit (a float64 log can round the other way).
    """
    rel = np.arange(key_len, dtype=np.int64)[None, :] - np.arange(query_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    log_ratio = np.log(np.maximum(rel, max_exact).astype(np.float32) / np.float32(max_exact))
    log_ratio = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + log_ratio.astype(np.int64), half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Layers.
# ------------------------------------------------------------------------------------------------


def _normal(key, shape, std, dtype):
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)


class Linear(nnx.Module):
    """``x @ kernel`` without bias (T5's ``nn.Linear(bias=False)``), ``kernel [in, out]``."""

    def __init__(self, din: int, dout: int, names, *, key, std: float, runtime: WanRuntime):
        self.kernel = param(_normal(key, (din, dout), std, runtime.param_dtype), names)
        self.dtype = runtime.dtype
        self.precision = runtime.precision

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype), precision=self.precision)


class RMSNorm(nnx.Module):
    """T5's layer norm: ``x / sqrt(mean(x^2) + eps) * scale`` (no mean, no bias), float32
    statistics and output (the stream stays float32; the next matmul casts)."""

    def __init__(self, dim: int, eps: float, *, runtime: WanRuntime):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), runtime.param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return x * self.scale[...].astype(jnp.float32)


def _attention_impl(name: str) -> str | None:
    """``jax.nn.dot_product_attention`` implementation for a runtime attention name. The
    encoder needs an additive bias, which only these take; "chunked" and registry kernels map
    to "xla" (512 tokens: the ``[B, H, 512, 512]`` logits are small)."""
    return {"cudnn": "cudnn", "auto": None}.get(name, "xla")


class UMT5Attention(nnx.Module):
    """Self-attention with this layer's relative position bias and no logit scaling.

    Parameters: ``q, k, v`` (``[d_model, H * d_kv]``), ``o`` (``[H * d_kv, d_model]``),
    ``relative_attention_bias [num_buckets, H]``.
    """

    def __init__(self, config: UMT5Config, runtime: WanRuntime, *, key):
        d, i, h = config.d_model, config.inner_dim, config.num_heads
        kq, kk, kv, ko, kb = jax.random.split(key, 5)
        # transformers' UMT5 init (factor 1): q ~ (d * d_kv)^-1/2, k, v ~ d^-1/2, o ~ (H * d_kv)^-1/2.
        self.q = Linear(d, i, ("embed", "heads"), key=kq, std=(d * config.d_kv) ** -0.5, runtime=runtime)
        self.k = Linear(d, i, ("embed", "heads"), key=kk, std=d**-0.5, runtime=runtime)
        self.v = Linear(d, i, ("embed", "heads"), key=kv, std=d**-0.5, runtime=runtime)
        self.o = Linear(i, d, ("heads", "embed"), key=ko, std=i**-0.5, runtime=runtime)
        self.relative_attention_bias = param(
            _normal(kb, (config.relative_attention_num_buckets, h), d**-0.5, runtime.param_dtype), (None, None)
        )
        self.heads, self.d_kv = h, config.d_kv
        self.implementation = _attention_impl(runtime.attention)

    def __call__(self, x: jax.Array, buckets: jax.Array, key_mask: jax.Array) -> jax.Array:
        """``x [B, L, d_model]``, ``buckets`` int32 ``[L, L]``, ``key_mask`` bool ``[B, L]``."""
        b, n, _ = x.shape
        q, k, v = (proj(x).reshape(b, n, self.heads, self.d_kv) for proj in (self.q, self.k, self.v))
        bias = jnp.take(self.relative_attention_bias[...].astype(jnp.float32), buckets, axis=0)  # [L, L, H]
        bias = jnp.transpose(bias, (2, 0, 1))[None]  # [1, H, L, L] float32 (added to float32 logits)
        mask = key_mask[:, None, None, :]
        if self.implementation == "cudnn":  # cuDNN wants the bias in the input dtype, the mask per query
            bias = bias.astype(q.dtype)
            mask = jnp.broadcast_to(mask, (b, 1, n, n))
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0, implementation=self.implementation)
        return self.o(out.reshape(b, n, self.heads * self.d_kv))


class UMT5FeedForward(nnx.Module):
    """``wo(act(wi_0 x) * wi_1 x)`` (transformers ``UMT5DenseGatedActDense``)."""

    def __init__(self, config: UMT5Config, runtime: WanRuntime, *, key):
        d, f = config.d_model, config.d_ff
        k0, k1, ko = jax.random.split(key, 3)
        self.wi_0 = Linear(d, f, ("embed", "mlp"), key=k0, std=d**-0.5, runtime=runtime)
        self.wi_1 = Linear(d, f, ("embed", "mlp"), key=k1, std=d**-0.5, runtime=runtime)
        self.wo = Linear(f, d, ("mlp", "embed"), key=ko, std=f**-0.5, runtime=runtime)
        self.act = ACTIVATIONS[config.dense_act_fn]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class UMT5Block(nnx.Module):
    """``x + attn(norm1(x))`` then ``x + ffn(norm2(x))`` on a float32 stream."""

    def __init__(self, config: UMT5Config, runtime: WanRuntime, *, rngs: nnx.Rngs):
        ka, kf = jax.random.split(rngs.params())
        self.norm1 = RMSNorm(config.d_model, config.layer_norm_epsilon, runtime=runtime)
        self.attn = UMT5Attention(config, runtime, key=ka)
        self.norm2 = RMSNorm(config.d_model, config.layer_norm_epsilon, runtime=runtime)
        self.ffn = UMT5FeedForward(config, runtime, key=kf)

    def __call__(self, x: jax.Array, buckets: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), buckets, key_mask).astype(jnp.float32)
        return x + self.ffn(self.norm2(x)).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# The encoder.
# ------------------------------------------------------------------------------------------------


class UMT5Encoder(nnx.Module):
    """umT5 encoder: ``encoder(input_ids [B, L] int, attention_mask [B, L]) -> [B, L, d_model]``.

    Parameters (NNX paths): ``token_embedding [vocab, d_model]`` (logical ``("vocab", "embed")``),
    ``blocks.<i>.{norm1, attn.{q, k, v, o, relative_attention_bias}, norm2, ffn.{wi_0, wi_1, wo}}``
    (stacked ``blocks.*`` with a leading layer axis under ``runtime.scan_layers``),
    ``final_norm.scale``. ``runtime``: dtypes, attention implementation ("cudnn" needs bfloat16),
    remat per block, scanned layers.

    Returns float32 when ``runtime.dtype`` is float32, else the compute dtype; positions where
    ``attention_mask`` is 0 are exactly zero.
    """

    def __init__(self, config: UMT5Config, runtime: WanRuntime | None = None, *, rngs: nnx.Rngs | None = None):
        runtime = runtime or WanRuntime()
        if runtime.dtype == jnp.float16 or runtime.param_dtype == jnp.float16:
            raise ConfigError(
                "umT5 in float16 overflows (T5 activations exceed 65504); use dtype / param_dtype float32 or bfloat16"
            )
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config, self.runtime = config, runtime
        # transformers initialises the shared embedding with std 1 (factor 1).
        self.token_embedding = param(
            _normal(rngs.params(), (config.vocab_size, config.d_model), 1.0, runtime.param_dtype), ("vocab", "embed")
        )
        if runtime.scan_layers:
            if config.num_layers < 1:
                raise ConfigError("a scanned umT5 encoder needs at least one layer")

            @nnx.split_rngs(splits=config.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=config.num_layers,
                      transform_metadata={nnx.PARTITION_NAME: None})
            def make(r):
                return UMT5Block(config, runtime, rngs=r)

            self.blocks = make(rngs)
        else:
            self.blocks = nnx.List([UMT5Block(config, runtime, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon, runtime=runtime)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """``[B, L]`` ids -> float32 ``[B, L, d_model]``. Ids outside ``[0, vocab)`` raise when
        the ids are concrete; under ``jit`` they give NaN rows (never a silently clipped id)."""
        if not isinstance(input_ids, jax.core.Tracer):
            ids = np.asarray(input_ids)
            bad = (ids < 0) | (ids >= self.config.vocab_size)
            if bad.any():
                raise InputError(
                    f"input_ids: {int(bad.sum())} ids outside [0, {self.config.vocab_size}) "
                    f"(e.g. {ids[bad][:5].tolist()}); the tokenizer does not match this encoder's vocabulary"
                )
        ids = jnp.where(input_ids < 0, self.config.vocab_size, input_ids)  # negative ids must not wrap
        # Gather rows in the stored dtype, then widen them (never the whole 256k-row table).
        rows = jnp.take(self.token_embedding[...], ids, axis=0, mode="fill", fill_value=jnp.nan)
        return rows.astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        input_ids = jnp.asarray(input_ids) if not isinstance(input_ids, jax.core.Tracer) else input_ids
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise InputError(f"input_ids must be integer [B, L], got {input_ids.dtype} {tuple(input_ids.shape)}")
        if attention_mask is None:
            key_mask = jnp.ones(input_ids.shape, bool)
        else:
            mask = attention_mask
            if tuple(mask.shape) != tuple(input_ids.shape):
                raise InputError(f"attention_mask {tuple(mask.shape)} must match input_ids {tuple(input_ids.shape)}")
            if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
                raise InputError(f"attention_mask must be bool or integer 0/1, got {mask.dtype}")
            if not isinstance(mask, jax.core.Tracer) and not np.isin(np.asarray(mask), (0, 1)).all():
                raise InputError("attention_mask must hold only 0 and 1")
            key_mask = jnp.asarray(mask) != 0
        n = input_ids.shape[1]
        buckets = jnp.asarray(
            relative_position_buckets(n, n, self.config.relative_attention_num_buckets,
                                      self.config.relative_attention_max_distance)
        )
        x = self.embed(input_ids)
        if self.runtime.scan_layers:
            scan = nnx.scan(
                self.runtime.remat_wrap(lambda h, blk, bk, km: blk(h, bk, km)),
                in_axes=(nnx.Carry, 0, None, None),
                out_axes=nnx.Carry,
                unroll=self.runtime.scan_unroll,
            )
            x = scan(x, self.blocks, buckets, key_mask)
        else:
            step = self.runtime.remat_wrap(lambda blk, h, bk, km: blk(h, bk, km))
            for blk in self.blocks:
                x = step(blk, x, buckets, key_mask)
        x = jnp.where(key_mask[..., None], self.final_norm(x), 0.0)
        return x.astype(self.runtime.dtype)
