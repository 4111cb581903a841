"""3D rotary position embedding of the Wan DiT (diffusers ``WanRotaryPosEmbed``), with explicit positions.

The head dimension ``D`` is split into a temporal, a height and a width part exactly as diffusers
does: ``h = w = 2 * (D // 6)`` and ``t = D - h - w`` (44 / 42 / 42 at ``D = 128``). Each part
rotates consecutive channel pairs ``(2j, 2j + 1)`` by the angle ``pos * theta ** (-2j / part)``.

Numerics: diffusers builds float64 tables ``cos(pos * inv_freq)`` / ``sin(...)`` for integer
positions ``0 .. rope_max_seq_len - 1`` and casts them to float32. Here the same float64 tables
are built once on the host (NumPy), extended to negative positions ``-rope_max_seq_len .. -1``
(reference frames sit at negative temporal positions), and gathered on device by integer
position, so integer positions give bit-identical float32 tables to diffusers. Fractional
positions ``p = n + f`` (``n = floor(p)``) use the table at ``n`` and the angle-addition formula
with the small float32 angle ``f * inv_freq`` (error ~1e-7). Positions outside the table range
give NaN (never a silently clamped value); host-side inputs are also checked eagerly.

Arrays returned here hold one value per channel *pair*: ``cos, sin`` of shape ``[B, N, D // 2]``
(``B`` may be 1 and broadcast), float32. :func:`apply_rope` applies them to ``[B, N, H, D]``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROPE_THETA = 10000.0


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """``(t, h, w)`` channel counts of the three RoPE axes for ``head_dim`` (as diffusers)."""
    h = w = 2 * (head_dim // 6)
    t = head_dim - h - w
    if head_dim % 2 or h == 0 or t <= 0:
        raise ValueError(
            f"attention_head_dim={head_dim} cannot be split into the three even, non-empty RoPE "
            f"parts (t, h, w) = ({t}, {h}, {w}); use an even head dim >= 6"
        )
    return t, h, w


def inverse_frequencies(dim: int, theta: float = ROPE_THETA) -> np.ndarray:
    """``[dim // 2]`` float64 inverse frequencies ``1 / theta ** (2j / dim)`` (diffusers' formula)."""
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


@functools.lru_cache(maxsize=16)
def _tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Per axis (t, h, w): host float32 tables ``cos, sin`` ``[2 * max_seq_len, dim_axis // 2]``.

    Row ``r`` holds position ``r - max_seq_len``; values are computed in float64 exactly as
    diffusers (``outer(pos, inv_freq)``, then cos / sin) and rounded to float32.
    """
    pos = np.arange(-max_seq_len, max_seq_len, dtype=np.int64)
    out = []
    for dim in rope_axis_dims(head_dim):
        freqs = np.outer(pos, inverse_frequencies(dim, theta))  # float64, as diffusers' torch.outer
        cos = np.cos(freqs).astype(np.float32)
        sin = np.sin(freqs).astype(np.float32)
        cos.setflags(write=False)
        sin.setflags(write=False)
        out.append((cos, sin))
    return tuple(out)


def grid_positions(
    num_frames: int,
    height: int,
    width: int,
    *,
    t_positions: Sequence[float] | np.ndarray | None = None,
    t_offset: int = 0,
    h_offset: int = 0,
    w_offset: int = 0,
    dtype=np.int32,
) -> np.ndarray:
    """Host ``[num_frames * height * width, 3]`` (t, h, w) positions of a token grid.

    Tokens are ordered frame-major, then row, then column (the DiT's flattening order).
    ``t_positions`` (length ``num_frames``) overrides the temporal positions
    ``t_offset + arange(num_frames)``; ``h_offset`` / ``w_offset`` shift the spatial ones.
    Example (spec section 3): reference frames ``grid_positions(R, h, w, t_offset=-R,
    h_offset=h)``, target frames ``grid_positions(T, h, w)``, preceding frames
    ``grid_positions(P, h, w, t_offset=T)``, concatenated along tokens in that order.
    """
    if t_positions is None:
        t = np.arange(num_frames) + t_offset
    else:
        t = np.asarray(t_positions)
        if t.shape != (num_frames,):
            raise ValueError(f"t_positions has shape {t.shape}, expected ({num_frames},)")
    tt, hh, ww = np.meshgrid(t, np.arange(height) + h_offset, np.arange(width) + w_offset, indexing="ij")
    return np.stack([tt, hh, ww], axis=-1).reshape(-1, 3).astype(dtype)


def _concrete(x) -> np.ndarray | None:
    """``x`` as a host array when it is concrete (not traced inside jit), else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_host_range(positions, max_seq_len: int) -> None:
    arr = _concrete(positions)
    if arr is not None and arr.size:
        if not np.all(np.isfinite(arr)):
            raise ValueError("RoPE positions contain NaN or infinite values")
        if np.floor(arr.min()) < -max_seq_len or np.floor(arr.max()) >= max_seq_len:
            raise ValueError(
                f"RoPE positions span [{arr.min()}, {arr.max()}], outside the supported range "
                f"[-{max_seq_len}, {max_seq_len}) (rope_max_seq_len={max_seq_len})"
            )


def normalize_positions(positions, num_tokens: int) -> jax.Array:
    """Accepts ``[N, 3]``, ``[B, N, 3]`` or a tuple of three ``[N]`` / ``[B, N]`` arrays -> ``[B|1, N, 3]``."""
    if isinstance(positions, (tuple, list)) and len(positions) == 3 and not np.isscalar(positions[0]):
        parts = [jnp.asarray(p) for p in positions]
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"per-axis positions must share one shape, got {[p.shape for p in parts]}")
        dtype = jnp.result_type(*parts)
        positions = jnp.stack([p.astype(dtype) for p in parts], axis=-1)
    else:
        positions = jnp.asarray(positions)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[1] != num_tokens:
        raise ValueError(
            f"positions must be [N, 3] or [B, N, 3] (t, h, w) with N={num_tokens} tokens, got shape "
            f"{tuple(positions.shape)}"
        )
    return positions


def rope_cos_sin(
    positions,
    head_dim: int,
    max_seq_len: int = 1024,
    theta: float = ROPE_THETA,
) -> tuple[jax.Array, jax.Array]:
    """RoPE ``cos, sin`` ``[B|1, N, head_dim // 2]`` float32 for (t, h, w) positions.

    Args:
      positions: ``[N, 3]`` or ``[B, N, 3]`` int or float (t, h, w) per token, or a tuple of
        three per-axis arrays ``[N]`` / ``[B, N]``. Works on traced values (inside ``jit``).
      head_dim: attention head dim ``D``.
      max_seq_len: diffusers' ``rope_max_seq_len``; positions must lie in
        ``[-max_seq_len, max_seq_len)`` (NaN otherwise; concrete inputs raise ValueError).
    """
    if isinstance(positions, (tuple, list)) and len(positions) == 3 and not np.isscalar(positions[0]):
        for p in positions:
            _check_host_range(p, max_seq_len)
        num_tokens = np.shape(positions[0])[-1]
    else:
        _check_host_range(positions, max_seq_len)
        num_tokens = np.shape(positions)[-2]
    pos = normalize_positions(positions, num_tokens)
    if jnp.issubdtype(pos.dtype, jnp.integer):
        base = pos.astype(jnp.int32)
        frac = None
    else:
        posf = pos.astype(jnp.float32)
        basef = jnp.floor(posf)
        frac = posf - basef
        base = basef.astype(jnp.int32)
    idx = base + max_seq_len  # [B, N, 3] rows of the tables
    cos_parts, sin_parts, frac_parts, inv_parts = [], [], [], []
    for axis, (cos_t, sin_t) in enumerate(_tables(head_dim, max_seq_len, float(theta))):
        # mode="fill": out-of-range rows become NaN instead of being clamped.
        take = lambda t: jnp.take(jnp.asarray(t), idx[..., axis], axis=0, mode="fill", fill_value=jnp.nan)
        cos_parts.append(take(cos_t))
        sin_parts.append(take(sin_t))
        if frac is not None:
            dim = cos_t.shape[1]
            frac_parts.append(jnp.broadcast_to(frac[..., axis : axis + 1], frac.shape[:2] + (dim,)))
            inv_parts.append(inverse_frequencies(2 * dim, theta).astype(np.float32))
    cos = jnp.concatenate(cos_parts, axis=-1)
    sin = jnp.concatenate(sin_parts, axis=-1)
    if frac is not None:
        ang = jnp.concatenate(frac_parts, axis=-1) * jnp.asarray(np.concatenate(inv_parts))
        cf, sf = jnp.cos(ang), jnp.sin(ang)
        cos, sin = cos * cf - sin * sf, sin * cf + cos * sf
    return cos, sin


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates channel pairs of ``x`` ``[B, N, H, D]`` by ``cos, sin`` ``[B|1, N, D // 2]``.

    Computed in float32 (as diffusers, whose float32 tables promote the product) and cast back
    to ``x.dtype``. Pair ``j`` is channels ``(2j, 2j + 1)``: ``(a, b) -> (a c - b s, a s + b c)``.
    """
    dtype = x.dtype
    xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    a, b = xf[..., 0], xf[..., 1]
    c = cos[:, :, None, :]
    s = sin[:, :, None, :]
    out = jnp.stack([a * c - b * s, a * s + b * c], axis=-1)
    return out.reshape(x.shape).astype(dtype)
