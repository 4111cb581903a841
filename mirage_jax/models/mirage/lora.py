"""LoRA on the backbone's Dense layers, as a small NNX tree transform.

Why not a library: qwix's NNX LoRA (``qwix.apply_lora_to_model``, checked with qwix 0.1.8)
creates the A / B factors lazily by intercepting ``dot_general`` during a first call; inside our
scanned block stack (``WanRuntime(scan_layers=True)``, blocks stacked with ``nnx.vmap`` and run
by ``nnx.scan``) that fails (IndexError while creating the per-layer variables), and its
dropout draws from module RNG streams that a scanned stack would have to split per layer.
``flax.nnx.LoRA`` has no ``alpha / r`` scale, no dropout and no logical axis names. So:

* :func:`apply_lora` replaces every targeted :class:`~mirage_jax.models.wan.layers.Dense` of
  the backbone blocks with a :class:`LoRADense`, which keeps the *same* ``kernel`` / ``bias``
  variables (parameter paths of the base weights are unchanged, checkpoints load as before)
  and adds ``lora_a [in, r]`` (kaiming-uniform, as the reference / peft) and ``lora_b [r, out]``
  (zeros), both :data:`LoRAParam`. In a scanned stack every variable carries the leading
  layer axis ``[L, ...]`` (logical name None), so ``nnx.scan`` slices them like the rest.
* The forward is ``x @ W + b + alpha / r * dropout(x) @ A @ B`` (the reference's training
  scale; its inference fuses with another convention, see spec 10.4 and ``merge_lora``).
* Dropout (training only) needs a key inside every Dense of every layer, also inside the
  scanned stack. :func:`lora_dropout_key` sets one key for the duration of a forward (a
  context variable read at trace time); each ``LoRADense`` folds in its own ``LoRAIndex``
  (a unique integer per layer and target, stacked ``[L]`` in a scanned stack), so every
  layer and target draws an independent mask without any RNG state in the model.
* :func:`merge_lora` / :func:`unmerge_lora`: ``W += alpha / r * A @ B`` and back; after a
  merge the factors are *kept* (for unmerging and export) and ignored by the forward.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from mirage_jax.errors import ConfigError
from mirage_jax.models.params import param
from mirage_jax.models.wan.layers import Dense, default_kernel_init, dense

__all__ = [
    "LoRAParam",
    "LoRAIndex",
    "LoRADense",
    "apply_lora",
    "merge_lora",
    "unmerge_lora",
    "lora_dropout_key",
    "iter_lora_layers",
]

# The LoRA factors' variable type: flax's own (an nnx.Param subclass), so filters, optimizers
# (``nnx.Optimizer(model, tx, wrt=LoRAParam)``) and other NNX LoRA code recognise them.
LoRAParam = nnx.LoRAParam


class LoRAIndex(nnx.Variable):
    """A constant int32 identifying a LoRA layer (its dropout stream); not trained."""


_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("mirage_lora_dropout_key", default=None)


@contextlib.contextmanager
def lora_dropout_key(key: jax.Array | None) -> Iterator[None]:
    """Within the block, every :class:`LoRADense` with a dropout rate > 0 applies dropout to its
    LoRA input with a key folded from ``key`` (None: no dropout, the inference forward)."""
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


def _lora_names(names: tuple | None, ndim: int) -> tuple[tuple, tuple]:
    names = tuple(names) if names is not None else (None,) * ndim
    return names[:-1] + ("lora",), names[:-2] + ("lora", names[-1])


class LoRADense(Dense):
    """A :class:`Dense` with a LoRA update; built from an existing ``Dense`` (shares its variables).

    ``kernel [..., in, out]``, ``bias [..., out]`` as the base; ``lora_a [..., in, r]``,
    ``lora_b [..., r, out]`` (:data:`LoRAParam`); leading ``...`` = the layer axis of a
    scanned stack. ``index`` (:class:`LoRAIndex`, ``[...]``) names the dropout stream.
    """

    def __init__(self, base: Dense, rank: int, alpha: float, dropout: float, index: jax.Array, *, key: jax.Array):
        kernel = base.kernel
        value = kernel.get_value()
        lead, (din, dout) = value.shape[:-2], value.shape[-2:]
        a_names, b_names = _lora_names(kernel.get_metadata().get("out_sharding"), value.ndim)
        self.kernel = kernel
        self.bias = base.bias
        self.dtype = base.dtype
        self.precision = base.precision
        self.rank = int(rank)
        self.scale = float(alpha) / int(rank)
        self.dropout = float(dropout)
        self.merged = False
        # peft / the reference: kaiming_uniform(a=sqrt(5)) on A -> U(-1/sqrt(in), 1/sqrt(in)); B = 0.
        a = default_kernel_init(key, lead + (din, rank), value.dtype)
        self.lora_a = param(a, a_names, kind=LoRAParam)
        self.lora_b = param(jnp.zeros(lead + (rank, dout), value.dtype), b_names, kind=LoRAParam)
        self.index = LoRAIndex(jnp.asarray(index, jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if self.merged:
            return y
        h = x.astype(self.dtype)
        key = _DROPOUT_KEY.get()
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.index[...]), 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / jnp.asarray(1.0 - self.dropout, h.dtype), jnp.zeros((), h.dtype))
        # 2-D matmuls like the base layer (``layers.dense``: plain GEMM weight gradients).
        zero = jnp.zeros((), self.dtype)
        u = dense(h, self.lora_a[...].astype(self.dtype), zero, self.precision)
        d = dense(u, self.lora_b[...].astype(self.dtype), zero, self.precision)
        return y + (d * jnp.asarray(self.scale, d.dtype)).astype(y.dtype)

    def delta(self) -> jax.Array:
        """``alpha / r * A @ B`` in float32, shaped like the kernel."""
        a = self.lora_a[...].astype(jnp.float32)
        b = self.lora_b[...].astype(jnp.float32)
        return self.scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def apply_lora(blocks, targets, *, rank: int, alpha: float, dropout: float, scanned: bool, key: jax.Array) -> None:
    """Replaces ``targets`` (paths inside a WanBlock, e.g. ``"attn1.to_q"``) of every block in
    ``blocks`` (an ``nnx.List`` of blocks, or one stacked block when ``scanned``) with
    :class:`LoRADense` in place. Raises ValueError for a target that is not a Dense."""
    stack = [blocks] if scanned else list(blocks)
    keys = jax.random.split(key, len(stack) * len(targets))
    for i, block in enumerate(stack):
        for j, path in enumerate(targets):
            base = _get(block, path)
            if not isinstance(base, Dense) or isinstance(base, LoRADense):
                raise ConfigError(f"LoRA target {path!r} is a {type(base).__name__}, not a (plain) Dense")
            if scanned:
                layers = base.kernel.get_value().shape[0]
                index = jnp.arange(layers, dtype=jnp.int32) * len(targets) + j
            else:
                index = i * len(targets) + j
            _set(block, path, LoRADense(base, rank, alpha, dropout, index, key=keys[i * len(targets) + j]))


def iter_lora_layers(model) -> Iterator[tuple[tuple, LoRADense]]:
    """``(path, LoRADense)`` for every LoRA layer of ``model``."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoRADense):
            yield path, node


def merge_lora(model) -> int:
    """Adds ``alpha / r * A @ B`` to every LoRA layer's kernel (float32 arithmetic, cast to the
    kernel dtype) and marks it merged: the forward then skips the LoRA path; the factors are
    kept so :func:`unmerge_lora` can undo it. Already merged layers are left alone. Returns the
    number of layers merged."""
    n = 0
    for _, layer in iter_lora_layers(model):
        if layer.merged:
            continue
        w = layer.kernel.get_value()
        layer.kernel.set_value((w.astype(jnp.float32) + layer.delta()).astype(w.dtype))
        layer.merged = True
        n += 1
    return n


def unmerge_lora(model) -> int:
    """Inverse of :func:`merge_lora` (exact up to float rounding). Returns the layers unmerged."""
    n = 0
    for _, layer in iter_lora_layers(model):
        if not layer.merged:
            continue
        w = layer.kernel.get_value()
        layer.kernel.set_value((w.astype(jnp.float32) - layer.delta()).astype(w.dtype))
        layer.merged = False
        n += 1
    return n
