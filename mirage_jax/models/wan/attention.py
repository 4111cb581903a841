"""Attention kernels behind one signature, chosen by name at runtime.

Every implementation takes ``q [B, Nq, H, D]``, ``k, v [B, Nk, H, D]`` (same dtype) and an
optional softmax ``scale`` (default ``D ** -0.5``, as PyTorch's scaled_dot_product_attention)
and returns ``[B, Nq, H, D]`` in the input dtype. No masks: the Wan DiT attends over all tokens
(self-attention) and over the whole padded text sequence (cross-attention), as diffusers does.

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

from typing import Callable, Protocol

import jax
import jax.numpy as jnp


class AttentionFn(Protocol):
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None) -> jax.Array: ...


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


def xla_attention(q, k, v, *, scale=None):
    _check(q, k, v, "xla")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")


def auto_attention(q, k, v, *, scale=None):
    _check(q, k, v, "auto")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=None)


def cudnn_attention(q, k, v, *, scale=None):
    _check(q, k, v, "cudnn")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"cudnn attention needs bfloat16 or float16 inputs, got {q.dtype}; use WanRuntime(dtype='bfloat16') "
            "or attention='xla' / 'chunked'"
        )
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")


def chunked_attention(q, k, v, *, scale=None, chunk_size: int = 1024):
    """Exact attention computed ``chunk_size`` queries at a time (peak logits ``B*H*chunk*Nk``)."""
    _check(q, k, v, "chunked")
    b, n, h, d = q.shape
    if n <= chunk_size:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")
    num = -(-n // chunk_size)
    pad = num * chunk_size - n
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
    qc = jnp.moveaxis(qp.reshape(b, num, chunk_size, h, d), 1, 0)  # [num, B, C, H, D]
    out = jax.lax.map(lambda qi: jax.nn.dot_product_attention(qi, k, v, scale=scale, implementation="xla"), qc)
    out = jnp.moveaxis(out, 0, 1).reshape(b, num * chunk_size, h, d)
    return out[:, :n]


register_attention("xla", xla_attention)
register_attention("cudnn", cudnn_attention)
register_attention("auto", auto_attention)
register_attention("chunked", chunked_attention)
