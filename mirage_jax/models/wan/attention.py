"""Attention kernels behind one signature, chosen by name at runtime.

Every implementation takes ``q [B, Nq, H, D]``, ``k, v [B, Nk, H, D]`` (same dtype) and an
optional softmax ``scale`` (default ``D ** -0.5``, as PyTorch's scaled_dot_product_attention)
and returns ``[B, Nq, H, D]`` in the input dtype. The Wan DiT attends over all tokens
(self-attention) and over the whole padded text sequence (cross-attention), as diffusers does;
an optional ``key_mask`` (bool ``[B, Nk]``, False = never attended to, e.g. padded frames) is
passed only when a caller sets one, so implementations registered without it keep working
unmasked. With no mask the numbers are unchanged.

Built in:
  * ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")`` (any backend, any dtype;
    materialises the ``[B, H, Nq, Nk]`` logits).
  * ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (NVIDIA GPUs,
    float16 / bfloat16 only; flash attention, no logits in memory).
  * ``"auto"``: ``jax.nn.dot_product_attention(implementation=None)``: JAX picks.
  * ``"chunked"``: XLA attention over query blocks of ``chunk_size`` with ``lax.map`` (bounded
    memory on any backend, e.g. float32 on GPU or TPU without a Pallas kernel).

Register more (e.g. a TPU Pallas splash-attention kernel) with :func:`register_attention`;
the runtime selects by name (``WanRuntime(attention="splash")``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


_REGISTRY: dict[str, Callable[..., jax.Array]] = {}


def register_attention(name: str, fn: Callable[..., jax.Array], *, overwrite: bool = False) -> None:
    """Registers ``fn(q, k, v, *, scale=None, **options) -> out`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"attention implementation {name!r} is already registered")
    _REGISTRY[name] = fn


def available_attention() -> list[str]:
    return sorted(_REGISTRY)


def get_attention(name: str) -> Callable[..., jax.Array]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention implementation {name!r}; available: {available_attention()}")
    return _REGISTRY[name]


def _check(q, k, v, name: str) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{name} attention wants [B, N, H, D] arrays, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{name} attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")


def _key_mask(key_mask, q, k, name: str, full: bool = False):
    """bool ``[B, Nk]`` -> the ``mask`` argument of ``jax.nn.dot_product_attention``:
    ``[B, 1, 1, Nk]``, or ``[B, 1, Nq, Nk]`` with ``full`` (cuDNN wants the query length)."""
    if key_mask is None:
        return None
    m = jnp.asarray(key_mask)
    if m.dtype != jnp.bool_ or m.shape != (k.shape[0], k.shape[1]):
        raise ValueError(f"{name} attention: key_mask must be bool [B, Nk] = {k.shape[:2]}, got {m.dtype} {m.shape}")
    m = m[:, None, None, :]
    return jnp.broadcast_to(m, (m.shape[0], 1, q.shape[1], m.shape[3])) if full else m


def xla_attention(q, k, v, *, scale=None, key_mask=None):
    _check(q, k, v, "xla")
    mask = _key_mask(key_mask, q, k, "xla")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation="xla")


def auto_attention(q, k, v, *, scale=None, key_mask=None):
    _check(q, k, v, "auto")
    mask = _key_mask(key_mask, q, k, "auto")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation=None)


def cudnn_attention(q, k, v, *, scale=None, key_mask=None):
    """cuDNN flash attention; a ``key_mask`` becomes a ``[B, 1, Nq, Nk]`` additive bias (cuDNN
    takes no per-key mask), i.e. ``B * Nq * Nk`` extra memory."""
    _check(q, k, v, "cudnn")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"cudnn attention needs bfloat16 or float16 inputs, got {q.dtype}; use WanRuntime(dtype='bfloat16') "
            "or attention='xla' / 'chunked'"
        )
    mask = _key_mask(key_mask, q, k, "cudnn", full=True)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation="cudnn")


def chunked_attention(q, k, v, *, scale=None, chunk_size: int = 1024, key_mask=None):
    """Exact attention computed ``chunk_size`` queries at a time (peak logits ``B*H*chunk*Nk``)."""
    _check(q, k, v, "chunked")
    mask = _key_mask(key_mask, q, k, "chunked")
    b, n, h, d = q.shape
    if n <= chunk_size:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask, implementation="xla")
    num = -(-n // chunk_size)
    pad = num * chunk_size - n
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
    qc = jnp.moveaxis(qp.reshape(b, num, chunk_size, h, d), 1, 0)  # [num, B, C, H, D]
    out = jax.lax.map(lambda qi: jax.nn.dot_product_attention(qi, k, v, scale=scale, mask=mask, implementation="xla"), qc)
    out = jnp.moveaxis(out, 0, 1).reshape(b, num * chunk_size, h, d)
    return out[:, :n]


register_attention("xla", xla_attention)
register_attention("cudnn", cudnn_attention)
register_attention("auto", auto_attention)
register_attention("chunked", chunked_attention)
