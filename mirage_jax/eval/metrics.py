"""Image metrics in JAX: mean squared error and PSNR (optionally over a pixel mask), SSIM.

Images are channels-last ``[..., H, W, C]`` with any leading batch axes; every metric returns
one value per image, float32 ``[...]``. Integer images (uint8 photos) are compared exactly in
float32; give ``max_val`` in their units (255 for uint8, 1 for images in [0, 1]).

SSIM is ``dm_pix.ssim`` (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03: Wang et al. 2004).
MSE and PSNR are written here because ``dm_pix.psnr`` has no mask and assumes ``max_val`` 1;
without a mask and with ``max_val=1`` they equal ``dm_pix.psnr`` (tested).

Validation happens on concrete inputs: shapes always, and an empty mask (no pixel to average,
i.e. a 0 / 0) raises :class:`~mirage_jax.errors.InputError`. Under ``jax.jit`` the mask's
values cannot be inspected: an image whose mask selects nothing then gets NaN.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.errors import InputError

__all__ = ["mse", "psnr", "ssim"]


def _pair(a, b, name: str) -> tuple[jax.Array, jax.Array]:
    """Both images as float32 arrays [..., H, W, C] of the same shape; else InputError."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{name}: image shapes differ, {a.shape} vs {b.shape}")
    if a.ndim < 3:
        raise InputError(f"{name}: expected images [..., H, W, C], got shape {a.shape}")
    for label, x in (("a", a), ("b", b)):
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise InputError(f"{name}: {label} has dtype {x.dtype}; expected an integer or float image")
    return a.astype(jnp.float32), b.astype(jnp.float32)


def _check_max_val(max_val, name: str) -> float:
    if not (np.isscalar(max_val) and np.isfinite(max_val) and max_val > 0):
        raise InputError(f"{name}: max_val must be a positive finite number, got {max_val!r}")
    return float(max_val)


def mse(a, b, mask=None) -> jax.Array:
    """Mean squared error per image: images [..., H, W, C] -> float32 [...].

    With ``mask`` bool [..., H, W] (or [H, W], broadcast over the leading axes) the mean runs
    over all channels of the pixels where it is True (module docstring for an empty mask).
    """
    a, b = _pair(a, b, "mse")
    sq = jnp.square(a - b)
    if mask is None:
        return jnp.mean(sq, axis=(-3, -2, -1))
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise InputError(f"mse: mask must be bool [..., H, W], got dtype {mask.dtype}")
    try:
        mask = jnp.broadcast_to(mask, a.shape[:-1])
    except ValueError as err:
        raise InputError(f"mse: mask shape {mask.shape} does not match images {a.shape[:-1]} (+ channels)") from err
    try:
        empty = ~np.asarray(mask).any(axis=(-2, -1))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):  # traced: see the docstring
        empty = None
    if empty is not None and empty.any():
        where = "" if empty.ndim == 0 else f" for image(s) {np.argwhere(empty).tolist()}"
        raise InputError(f"mse: the mask selects no pixel{where}")
    m = mask[..., None].astype(jnp.float32)
    return jnp.sum(sq * m, axis=(-3, -2, -1)) / (jnp.sum(m, axis=(-3, -2, -1)) * a.shape[-1])


def psnr(a, b, *, max_val: float = 1.0, mask=None) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(max_val**2 / mse)``.

    Images [..., H, W, C] -> float32 [...]; identical images give +inf. ``mask`` bool
    [..., H, W] restricts the error to those pixels (:func:`mse`).
    """
    max_val = _check_max_val(max_val, "psnr")
    err = mse(a, b, mask)
    return 10.0 * jnp.log10(jnp.float32(max_val * max_val) / err)


def ssim(a, b, *, max_val: float = 1.0) -> jax.Array:
    """Structural similarity per image (``dm_pix.ssim``, standard parameters): images
    [..., H, W, C] -> float32 [...] (mean of the SSIM map over pixels and channels).

    H and W must be at least the window size 11 (a smaller image has no valid window).
    """
    max_val = _check_max_val(max_val, "ssim")
    a, b = _pair(a, b, "ssim")
    if min(a.shape[-3:-1]) < 11:
        raise InputError(f"ssim: images must be at least 11 x 11 (the Gaussian window), got {a.shape[-3:-1]}")
    lead = a.shape[:-3]
    flat = (-1,) + a.shape[-3:]
    out = dm_pix.ssim(a.reshape(flat), b.reshape(flat), max_val=max_val)
    return out.reshape(lead)
