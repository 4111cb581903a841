"""Wan2.1 / Wan2.2 video VAE (diffusers ``AutoencoderKLWan``) in Flax NNX, channels-last.

Numerically equivalent to diffusers' PyTorch module, including its *temporal chunking*: the
encoder sees the first frame alone and then chunks of 4 frames, the decoder one latent frame at
a time, and every causal 3D convolution carries the last ``CACHE_T`` = 2 frames of its input
stream from one chunk to the next (diffusers' ``feat_cache``). The first chunk is special in
three places, all reproduced here:

* ``Resample`` ``downsample3d``: the strided time convolution is skipped on the first chunk (its
  one frame passes through) and later chunks see the last frame of the previous chunk;
* ``Resample`` ``upsample3d``: the time convolution (which doubles the frame count) is skipped on
  the first chunk, and the second chunk starts from zeros: the first chunk's frames never enter it;
* Wan2.2's ``DupUp3D`` shortcut drops its first ``factor_t - 1`` frames on the first chunk, and
  ``AvgDown3D`` zero-pads a chunk whose length is not a multiple of its temporal factor at the front.

The chunk loop is the first chunk traced once plus a ``jax.lax.scan`` over the remaining chunks
with every cache as carry, so compile time does not depend on the number of frames.

Layouts (all channels-last): videos ``[B, T, H, W, 3]`` in [-1, 1] with ``T = 1 + 4k``,
latents ``[B, 1 + k, H / s, W / s, z_dim]`` with ``s`` = ``config.spatial_ratio`` (16 for
Wan2.2, 8 for Wan2.1). Parameters follow diffusers' module names (``encoder.down_blocks.1.
resnets.0.conv1.kernel``) with flax leaf names (``kernel`` [kt, kh, kw, in, out], ``bias``,
``scale``); see :mod:`mirage_jax.convert.wan_vae` for checkpoint conversion.

The methods are traceable: wrap them with ``nnx.jit`` (or split the model and ``jax.jit`` a pure
function) for speed. Dropout is inactive (inference semantics, as diffusers in ``eval()``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.models.params import param
from mirage_jax.models.wan.layers import WanRuntime

Array = jax.Array

CACHE_T = 2  # frames of context every causal convolution keeps between chunks (diffusers' CACHE_T)
ENCODE_CHUNK = 4  # frames per encoder chunk after the first frame (fixed in diffusers' _encode)

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.157, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


class WanVAEInputError(InputError):
    """A video or latent of the wrong rank, size, channel count, dtype or value range."""

# Videos are floats in [-1, 1]; values beyond it by more than this are refused (a 0..255 video).
VIDEO_RANGE_TOLERANCE = 1e-2


# ----------------------------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Hyperparameters of diffusers' ``AutoencoderKLWan`` (same names, same defaults).

    ``clip_output`` exists in the released Wan2.2 ``config.json`` but diffusers' module does not
    take it (it warns and ignores it) and always clamps decoded videos to [-1, 1]; it is kept
    here only so that configs round-trip. ``dropout`` is inactive (inference semantics).
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    clip_output: bool | None = None

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
        object.__setattr__(self, "temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
        object.__setattr__(self, "latents_mean", tuple(float(v) for v in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(v) for v in self.latents_std))
        errors = []
        if self.base_dim <= 0 or self.z_dim <= 0 or self.num_res_blocks <= 0:
            errors.append("base_dim, z_dim and num_res_blocks must be positive")
        if len(self.dim_mult) < 1:
            errors.append("dim_mult must not be empty")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            errors.append(
                f"temperal_downsample has {len(self.temperal_downsample)} entries, dim_mult has "
                f"{len(self.dim_mult)}: need len(dim_mult) - 1"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            errors.append(
                f"latents_mean/latents_std have {len(self.latents_mean)}/{len(self.latents_std)} "
                f"entries, z_dim is {self.z_dim}"
            )
        if any(s <= 0 for s in self.latents_std):
            errors.append("latents_std must be positive")
        p = self.patch
        if p < 1:
            errors.append(f"patch_size must be >= 1 or None, got {self.patch_size}")
        elif self.in_channels % (p * p) or self.out_channels % (p * p):
            errors.append(f"in_channels {self.in_channels} / out_channels {self.out_channels} not divisible by patch_size^2")
        if self.scale_factor_spatial is not None and self.scale_factor_spatial != self.spatial_ratio:
            errors.append(
                f"scale_factor_spatial={self.scale_factor_spatial} but the architecture compresses by "
                f"{self.spatial_ratio} (patch_size x 2^(len(dim_mult) - 1))"
            )
        if self.scale_factor_temporal is not None and self.scale_factor_temporal != self.temporal_ratio:
            errors.append(
                f"scale_factor_temporal={self.scale_factor_temporal} but the architecture compresses by "
                f"{self.temporal_ratio} (2^sum(temperal_downsample))"
            )
        if errors:
            raise ConfigError("invalid WanVAEConfig: " + "; ".join(errors))

    # -- derived sizes ----------------------------------------------------------------------
    @property
    def patch(self) -> int:
        return 1 if self.patch_size is None else int(self.patch_size)

    @property
    def spatial_ratio(self) -> int:
        """Pixels per latent cell along H and W."""
        return self.patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_ratio(self) -> int:
        """Frames per latent frame (after the first)."""
        return 2 ** sum(self.temperal_downsample)

    @property
    def video_channels(self) -> int:
        """Channels of the pixel video (3 for RGB), before patchify."""
        return self.in_channels // (self.patch * self.patch)

    @property
    def decoded_channels(self) -> int:
        return self.out_channels // (self.patch * self.patch)

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else int(self.decoder_base_dim)

    @property
    def encoder_dims(self) -> tuple[int, ...]:
        return tuple(self.base_dim * u for u in (1,) + self.dim_mult)

    @property
    def decoder_dims(self) -> tuple[int, ...]:
        return tuple(self.decoder_dim * u for u in (self.dim_mult[-1],) + self.dim_mult[::-1])

    def latent_shape(self, video_shape: Sequence[int]) -> tuple[int, ...]:
        """[B, T, H, W, C] video shape -> [B, T', h, w, z_dim] latent shape (no checks)."""
        b, t, h, w = video_shape[:4]
        return (b, 1 + (t - 1) // self.temporal_ratio, h // self.spatial_ratio, w // self.spatial_ratio, self.z_dim)

    def video_shape(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """[B, T', h, w, z] latent shape -> [B, T, H, W, 3] decoded video shape."""
        b, t, h, w = latent_shape[:4]
        return (b, 1 + (t - 1) * self.temporal_ratio, h * self.spatial_ratio, w * self.spatial_ratio, self.decoded_channels)

    # -- diffusers config dicts -------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "WanVAEConfig":
        """From a diffusers ``config.json`` dict; ``_``-prefixed metadata keys are skipped.

        Unknown keys raise (nothing is silently dropped).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in fields)
        if unknown:
            raise ConfigError(f"AutoencoderKLWan config has keys WanVAEConfig does not know: {unknown}")
        cls_name = config.get("_class_name")
        if cls_name is not None and cls_name != "AutoencoderKLWan":
            raise ConfigError(f"config is for {cls_name!r}, expected 'AutoencoderKLWan'")
        kwargs = {k: v for k, v in config.items() if k in fields}
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """A diffusers ``config.json`` dict (``_class_name`` included; JSON-serialisable)."""
        out: dict[str, Any] = {"_class_name": "AutoencoderKLWan"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "clip_output" and v is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def wan22(cls) -> "WanVAEConfig":
        """Wan2.2-TI2V-5B VAE: z 48, 2x2 patchify, 4 x 16 x 16 compression, residual blocks."""
        return cls(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=4,
            scale_factor_spatial=16,
            latents_mean=WAN22_LATENTS_MEAN,
            latents_std=WAN22_LATENTS_STD,
            clip_output=False,
        )

    @classmethod
    def wan21(cls) -> "WanVAEConfig":
        """Wan2.1 VAE: z 16, 4 x 8 x 8 compression (diffusers' defaults)."""
        return cls()

    @classmethod
    def tiny(cls, variant: str = "wan2.2", **overrides) -> "WanVAEConfig":
        """A few-kilo-parameter config of the same architecture, for tests.

        ``variant``: ``"wan2.2"`` (residual, patchified, 16x) or ``"wan2.1"`` (8x).
        The first ``z_dim`` entries of the real latents statistics are used.
        """
        if variant in ("wan2.2", "wan22"):
            z = overrides.pop("z_dim", 8)
            base = dict(
                base_dim=8, decoder_base_dim=16, z_dim=z, num_res_blocks=1, is_residual=True,
                in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
                scale_factor_spatial=16, latents_mean=WAN22_LATENTS_MEAN[:z],
                latents_std=WAN22_LATENTS_STD[:z],
            )  # fmt: skip
        elif variant in ("wan2.1", "wan21"):
            z = overrides.pop("z_dim", 4)
            base = dict(
                base_dim=8, z_dim=z, num_res_blocks=1, latents_mean=WAN21_LATENTS_MEAN[:z],
                latents_std=WAN21_LATENTS_STD[:z],
            )  # fmt: skip
        else:
            raise ConfigError(f"unknown variant {variant!r}; use 'wan2.2' or 'wan2.1'")
        base.update(overrides)
        return cls(**base)


# ----------------------------------------------------------------------------------------------
# Pure helpers (channels-last).
# ----------------------------------------------------------------------------------------------


def patchify(x: Array, p: int) -> Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], channel order (c, dx, dy) as diffusers."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: Array, p: int) -> Array:
    """Inverse of :func:`patchify`: [B, T, h, w, C*p*p] -> [B, T, h*p, w*p, C]."""
    if p == 1:
        return x
    b, t, h, w, cp = x.shape
    c = cp // (p * p)
    x = x.reshape(b, t, h, w, c, p, p)
    x = x.transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, c)


def avg_down_3d(x: Array, out_channels: int, factor_t: int, factor_s: int) -> Array:
    """diffusers ``AvgDown3D``: space/time-to-channel then group mean. [B,T,H,W,C] -> [B,T/ft,H/fs,W/fs,out].

    A chunk whose length is not a multiple of ``factor_t`` is zero-padded at the front.
    """
    b, t, h, w, c = x.shape
    factor = factor_t * factor_s * factor_s
    if (c * factor) % out_channels:
        raise ValueError(f"AvgDown3D: {c} channels x factor {factor} not divisible by {out_channels}")
    pad_t = (factor_t - t % factor_t) % factor_t
    if pad_t:
        x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
        t += pad_t
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, t // factor_t, h // factor_s, w // factor_s, out_channels, c * factor // out_channels)
    return jnp.mean(x, axis=-1)


def dup_up_3d(x: Array, out_channels: int, factor_t: int, factor_s: int, first_chunk: bool) -> Array:
    """diffusers ``DupUp3D``: channel repeat then channel-to-space/time. [B,T,H,W,C] -> [B,T*ft,H*fs,W*fs,out].

    On the first chunk the first ``factor_t - 1`` output frames are dropped.
    """
    b, t, h, w, c = x.shape
    factor = factor_t * factor_s * factor_s
    if (out_channels * factor) % c:
        raise ValueError(f"DupUp3D: {out_channels} channels x factor {factor} not divisible by {c}")
    x = jnp.repeat(x, out_channels * factor // c, axis=-1)
    x = x.reshape(b, t, h, w, out_channels, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)
    x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_channels)
    if first_chunk:
        x = x[:, factor_t - 1 :]
    return x


def _tail(prev: Array, x: Array, n: int) -> Array:
    """Last ``n`` frames of the stream ``prev ++ x`` (the cache diffusers keeps)."""
    if x.shape[1] >= n:
        return x[:, x.shape[1] - n :]
    return jnp.concatenate([prev.astype(x.dtype), x], axis=1)[:, -n:]


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
    return param(init, names, key=rngs.params(), shape=shape, dtype=dtype)


# torch's Conv default (kaiming_uniform with a = sqrt(5), fan_in over in x kernel), as diffusers'
# random init; a uniform draw also compiles far faster than a truncated normal when built eagerly.
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# ----------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------


class RMSNorm(nnx.Module):
    """diffusers ``WanRMS_norm`` over the channel (last) axis: ``x / max(|x|, 1e-12) * sqrt(C) * scale``.

    The normalisation runs in float32 whatever the compute dtype (as diffusers for 16-bit inputs).
    """

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dim = dim
        self.dtype = dtype
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = (xf / jnp.maximum(norm, 1e-12)).astype(self.dtype)
        return y * jnp.asarray(math.sqrt(self.dim), self.dtype) * self.scale[...].astype(self.dtype)


class CausalConv3d(nnx.Module):
    """diffusers ``WanCausalConv3d``: zero padding ``2 * padding_t`` frames in front, none behind.

    Kernel [kt, kh, kw, in, out]. ``__call__(x, context)`` prepends ``context`` frames (the
    previous chunk's cache) and pads the remainder with zeros, like diffusers' ``cache_x``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0, dtype, param_dtype, precision, rngs):
        k = _triple(kernel_size)
        self.stride = _triple(stride)
        pad = _triple(padding)
        self.time_pad = 2 * pad[0]
        self.spatial_pad = (pad[1], pad[2])
        self.dtype = dtype
        self.precision = precision
        self.kernel = _param(rngs, _KERNEL_INIT, k + (in_channels, out_channels), (None, None, None, "conv_in", "conv_out"), param_dtype)
        self.bias = _param(rngs, nnx.initializers.zeros, (out_channels,), ("conv_out",), param_dtype)

    def __call__(self, x: Array, context: Array | None = None) -> Array:
        x = x.astype(self.dtype)
        pad = self.time_pad
        if context is not None and pad > 0:
            x = jnp.concatenate([context.astype(self.dtype), x], axis=1)
            pad -= context.shape[1]
        if pad > 0:
            x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
        elif pad < 0:
            x = x[:, -pad:]
        kernel = self.kernel[...].astype(self.dtype)
        bias = self.bias[...].astype(self.dtype)
        if kernel.shape[:3] == (1, 1, 1) and self.stride == (1, 1, 1) and self.spatial_pad == (0, 0):
            y = jnp.einsum("bthwc,cd->bthwd", x, kernel[0, 0, 0], precision=self.precision)
        else:
            ph, pw = self.spatial_pad
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=self.stride,
                padding=((0, 0), (ph, ph), (pw, pw)),
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                precision=self.precision,
            )
        return y + bias

    def step(self, x: Array, cache: Array | None) -> tuple[Array, Array]:
        """One chunk with diffusers' cache protocol: returns (y, last ``CACHE_T`` input frames).

        ``cache=None`` (first chunk) is the zero context, as diffusers' causal zero padding.
        """
        x = x.astype(self.dtype)
        if cache is None:
            cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], self.dtype)
        return self(x, cache), _tail(cache, x, CACHE_T)


class Conv2d(nnx.Module):
    """A 2D convolution applied per frame. Kernel [kh, kw, in, out]."""

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=((0, 0), (0, 0)), dtype, param_dtype, precision, rngs):
        self.stride = (stride, stride)
        self.padding = padding
        self.dtype = dtype
        self.precision = precision
        self.kernel = _param(rngs, _KERNEL_INIT, (kernel_size, kernel_size, in_channels, out_channels), (None, None, "conv_in", "conv_out"), param_dtype)
        self.bias = _param(rngs, nnx.initializers.zeros, (out_channels,), ("conv_out",), param_dtype)

    def __call__(self, x: Array) -> Array:
        """x: [..., H, W, C] (any leading dims)."""
        lead = x.shape[:-3]
        x = x.astype(self.dtype).reshape((-1,) + x.shape[-3:])
        kernel = self.kernel[...].astype(self.dtype)
        if kernel.shape[:2] == (1, 1) and self.stride == (1, 1) and self.padding == ((0, 0), (0, 0)):
            y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0], precision=self.precision)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, window_strides=self.stride, padding=self.padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision,
            )  # fmt: skip
        y = y + self.bias[...].astype(self.dtype)
        return y.reshape(lead + y.shape[1:])


class ResidualBlock(nnx.Module):
    """diffusers ``WanResidualBlock``: norm-SiLU-conv twice plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.norm1 = RMSNorm(in_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
        self.norm2 = RMSNorm(out_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, **kw) if in_dim != out_dim else None

    def __call__(self, x: Array, cache=None):
        h = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        c1, c2 = (None, None) if cache is None else cache
        x, c1 = self.conv1.step(jax.nn.silu(self.norm1(x)), c1)
        x, c2 = self.conv2.step(jax.nn.silu(self.norm2(x)), c2)
        return x + h, (c1, c2)


class AttentionBlock(nnx.Module):
    """diffusers ``WanAttentionBlock``: single-head self-attention over H*W within each frame."""

    def __init__(self, dim: int, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.dtype = dtype
        self.precision = precision
        self.norm = RMSNorm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.to_qkv = Conv2d(dim, dim * 3, 1, **kw)
        self.proj = Conv2d(dim, dim, 1, **kw)

    def __call__(self, x: Array, cache=None):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, t, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("btqc,btkc->btqk", q, k, precision=self.precision, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * (1.0 / math.sqrt(c)), axis=-1).astype(self.dtype)
        o = jnp.einsum("btqk,btkc->btqc", probs, v, precision=self.precision).reshape(b, t, h, w, c)
        return self.proj(o) + x.astype(self.dtype), None


class Resample(nnx.Module):
    """diffusers ``WanResample``: 2x spatial up/down sampling, optionally with 2x in time.

    Modes: ``upsample2d``, ``upsample3d`` (nearest-exact 2x + 3x3 conv; 3d adds a causal time
    conv producing two frames per frame), ``downsample2d``, ``downsample3d`` (right/bottom zero
    pad + stride-2 3x3 conv; 3d adds a stride-2 time conv).
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None, *, dtype, param_dtype, precision, rngs):
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} not in {self.MODES}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.mode = mode
        self.dtype = dtype
        if mode.startswith("upsample"):
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.conv = Conv2d(dim, out, 3, padding=((1, 1), (1, 1)), **kw)
        else:
            self.conv = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), **kw)
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0), **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)
        else:
            self.time_conv = None

    def __call__(self, x: Array, cache=None):
        x = x.astype(self.dtype)
        new_cache = None
        if self.mode == "upsample3d":
            if cache is None:
                # First chunk: no time upsampling; the next chunk starts from a zero context.
                new_cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], self.dtype)
            else:
                y, new_cache = self.time_conv.step(x, cache)
                b, t, h, w, c2 = y.shape
                y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
                x = y.reshape(b, 2 * t, h, w, c2 // 2)
        if self.mode.startswith("upsample"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact at scale 2
        x = self.conv(x)
        if self.mode == "downsample3d":
            new_cache = x[:, -1:]
            if cache is not None:
                x = self.time_conv(jnp.concatenate([cache.astype(self.dtype), x], axis=1))
        return x, new_cache


class MidBlock(nnx.Module):
    """diffusers ``WanMidBlock``: resnet, (attention, resnet) x num_layers."""

    def __init__(self, dim: int, num_layers: int = 1, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.resnets = nnx.List([ResidualBlock(dim, dim, **kw) for _ in range(num_layers + 1)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw) for _ in range(num_layers)])

    def __call__(self, x: Array, cache=None):
        caches = [None] * len(self.resnets) if cache is None else list(cache)
        x, caches[0] = self.resnets[0](x, caches[0])
        for i, attn in enumerate(self.attentions):
            x, _ = attn(x)
            x, caches[i + 1] = self.resnets[i + 1](x, caches[i + 1])
        return x, tuple(caches)


class ResidualDownBlock(nnx.Module):
    """diffusers ``WanResidualDownBlock`` (Wan2.2): resnets + downsampler, plus an AvgDown3D shortcut."""

    def __init__(self, in_dim, out_dim, num_res_blocks, *, temperal_downsample, down_flag, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.out_dim = out_dim
        self.factor_t = 2 if temperal_downsample else 1
        self.factor_s = 2 if down_flag else 1
        if (in_dim * self.factor_t * self.factor_s**2) % out_dim:
            raise ValueError(f"AvgDown3D: in_dim {in_dim} x factor not divisible by out_dim {out_dim}")
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nnx.List([ResidualBlock(dims[i], out_dim, **kw) for i in range(num_res_blocks)])
        if down_flag:
            self.downsampler = Resample(out_dim, "downsample3d" if temperal_downsample else "downsample2d", **kw)
        else:
            self.downsampler = None

    def __call__(self, x: Array, cache=None):
        shortcut = avg_down_3d(x, self.out_dim, self.factor_t, self.factor_s)
        res_caches = [None] * len(self.resnets) if cache is None else list(cache[0])
        for i, resnet in enumerate(self.resnets):
            x, res_caches[i] = resnet(x, res_caches[i])
        down_cache = None
        if self.downsampler is not None:
            x, down_cache = self.downsampler(x, None if cache is None else cache[1])
        return x + shortcut.astype(x.dtype), (tuple(res_caches), down_cache)


class ResidualUpBlock(nnx.Module):
    """diffusers ``WanResidualUpBlock`` (Wan2.2): resnets + upsampler, plus a DupUp3D shortcut."""

    def __init__(self, in_dim, out_dim, num_res_blocks, *, temperal_upsample, up_flag, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.out_dim = out_dim
        self.up_flag = up_flag
        self.factor_t = 2 if temperal_upsample else 1
        self.factor_s = 2
        if up_flag and (out_dim * self.factor_t * self.factor_s**2) % in_dim:
            raise ValueError(f"DupUp3D: out_dim {out_dim} x factor not divisible by in_dim {in_dim}")
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([ResidualBlock(dims[i], out_dim, **kw) for i in range(num_res_blocks + 1)])
        if up_flag:
            mode = "upsample3d" if temperal_upsample else "upsample2d"
            self.upsampler = Resample(out_dim, mode, upsample_out_dim=out_dim, **kw)
        else:
            self.upsampler = None

    def __call__(self, x: Array, cache=None):
        first = cache is None
        x_in = x
        res_caches = [None] * len(self.resnets) if first else list(cache[0])
        for i, resnet in enumerate(self.resnets):
            x, res_caches[i] = resnet(x, res_caches[i])
        up_cache = None
        if self.upsampler is not None:
            x, up_cache = self.upsampler(x, None if first else cache[1])
        if self.up_flag:
            x = x + dup_up_3d(x_in, self.out_dim, self.factor_t, self.factor_s, first).astype(x.dtype)
        return x, (tuple(res_caches), up_cache)


class UpBlock(nnx.Module):
    """diffusers ``WanUpBlock`` (Wan2.1): resnets + optional ``upsamplers[0]``."""

    def __init__(self, in_dim, out_dim, num_res_blocks, upsample_mode: str | None, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([ResidualBlock(dims[i], out_dim, **kw) for i in range(num_res_blocks + 1)])
        self.upsamplers = nnx.List([Resample(out_dim, upsample_mode, **kw)]) if upsample_mode else None

    def __call__(self, x: Array, cache=None):
        res_caches = [None] * len(self.resnets) if cache is None else list(cache[0])
        for i, resnet in enumerate(self.resnets):
            x, res_caches[i] = resnet(x, res_caches[i])
        up_cache = None
        if self.upsamplers is not None:
            x, up_cache = self.upsamplers[0](x, None if cache is None else cache[1])
        return x, (tuple(res_caches), up_cache)


class Encoder3d(nnx.Module):
    """diffusers ``WanEncoder3d`` applied to one chunk: ``(x, cache) -> (moments, cache)``."""

    def __init__(self, config: WanVAEConfig, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        cfg = config
        dims = cfg.encoder_dims
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, **kw)
        blocks: list[nnx.Module] = []
        scale = 1.0
        last = len(cfg.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if cfg.is_residual:
                blocks.append(
                    ResidualDownBlock(
                        in_dim, out_dim, cfg.num_res_blocks,
                        temperal_downsample=cfg.temperal_downsample[i] if i != last else False,
                        down_flag=i != last, **kw,
                    )
                )  # fmt: skip
            else:
                for _ in range(cfg.num_res_blocks):
                    blocks.append(ResidualBlock(in_dim, out_dim, **kw))
                    if scale in cfg.attn_scales:
                        blocks.append(AttentionBlock(out_dim, **kw))
                    in_dim = out_dim
                if i != last:
                    blocks.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d", **kw))
                    scale /= 2.0
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, **kw)

    def __call__(self, x: Array, cache=None):
        c = (None, [None] * len(self.down_blocks), None, None) if cache is None else cache
        x, c_in = self.conv_in.step(x, c[0])
        c_down = list(c[1])
        for i, block in enumerate(self.down_blocks):
            x, c_down[i] = block(x, c_down[i])
        x, c_mid = self.mid_block(x, c[2])
        x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), c[3])
        return x, (c_in, tuple(c_down), c_mid, c_out)


class Decoder3d(nnx.Module):
    """diffusers ``WanDecoder3d`` applied to one latent frame: ``(z, cache) -> (frames, cache)``."""

    def __init__(self, config: WanVAEConfig, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        cfg = config
        dims = cfg.decoder_dims
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks: list[nnx.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0 and not cfg.is_residual:
                in_dim = in_dim // 2  # Wan2.1: the previous upsampler halved the channels
            up_flag = i != last
            if cfg.is_residual:
                blocks.append(
                    ResidualUpBlock(
                        in_dim, out_dim, cfg.num_res_blocks,
                        temperal_upsample=temperal_upsample[i] if up_flag else False, up_flag=up_flag, **kw,
                    )
                )  # fmt: skip
            else:
                mode = None
                if up_flag:
                    mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
                blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, **kw)

    def __call__(self, x: Array, cache=None):
        c = (None, None, [None] * len(self.up_blocks), None) if cache is None else cache
        x, c_in = self.conv_in.step(x, c[0])
        x, c_mid = self.mid_block(x, c[1])
        c_up = list(c[2])
        for i, block in enumerate(self.up_blocks):
            x, c_up[i] = block(x, c_up[i])
        x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), c[3])
        return x, (c_in, c_mid, tuple(c_up), c_out)


# ----------------------------------------------------------------------------------------------
# Chunk loops and tiling.
# ----------------------------------------------------------------------------------------------


def _scan_chunks(module: nnx.Module, first: Array, rest: Array | None, chunk: int) -> Array:
    """Runs ``module(chunk, cache)`` over ``first`` then ``rest`` split in chunks of ``chunk`` frames.

    The first chunk is traced on its own (it creates the caches); the others go through one
    ``lax.scan`` with the caches as carry. Returns the outputs concatenated along time.
    """
    y0, cache = module(first, None)
    if rest is None or rest.shape[1] == 0:
        return y0
    b, t = rest.shape[:2]
    if t % chunk:
        raise WanVAEInputError(f"{t} frames after the first do not split into chunks of {chunk}")
    n = t // chunk
    xs = jnp.moveaxis(rest.reshape((b, n, chunk) + rest.shape[2:]), 1, 0)
    graphdef, state = nnx.split(module)

    def body(carry, x_chunk):
        y, carry = nnx.merge(graphdef, state)(x_chunk, carry)
        return carry, y

    _, ys = jax.lax.scan(body, cache, xs)
    ys = jnp.moveaxis(ys, 0, 1)
    ys = ys.reshape((b, n * ys.shape[2]) + ys.shape[3:])
    return jnp.concatenate([y0, ys.astype(y0.dtype)], axis=1)


def _tile_grid(n: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(start, size) of diffusers' tiles along one axis: starts 0, stride, ... < n."""
    return [(s, min(tile, n - s)) for s in range(0, n, stride)]


def _map_tiles(fn: Callable[[Array], Array], x: Array, grid_h, grid_w) -> dict[tuple[int, int], Array]:
    """Applies ``fn`` to every tile x[:, :, h0:h0+nh, w0:w0+nw]; one ``lax.map`` per tile shape.

    Only one tile's activations are live at a time (``lax.map`` is a sequential scan); tiles of
    the same size share one compiled body (at most four sizes: interior, last row/column, corner).
    """
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for i, (h0, nh) in enumerate(grid_h):
        for j, (w0, nw) in enumerate(grid_w):
            groups[(nh, nw)].append((i, j, h0, w0))
    out: dict[tuple[int, int], Array] = {}
    b, t = x.shape[:2]
    c = x.shape[-1]
    for (nh, nw), items in groups.items():
        starts = jnp.asarray([[h0, w0] for _, _, h0, w0 in items], jnp.int32)

        def one(st, nh=nh, nw=nw):
            zero = jnp.zeros((), jnp.int32)
            tile = jax.lax.dynamic_slice(x, (zero, zero, st[0], st[1], zero), (b, t, nh, nw, c))
            return fn(tile)

        res = jax.lax.map(one, starts)
        for k, (i, j, _, _) in enumerate(items):
            out[(i, j)] = res[k]
    return out


def _blend_weights(extent: int, dtype) -> tuple[Array, Array]:
    y = np.arange(extent, dtype=np.float64)
    return jnp.asarray(1.0 - y / extent, dtype), jnp.asarray(y / extent, dtype)


def _blend(a: Array, b: Array, extent: int, axis: int) -> Array:
    """diffusers' blend_v (axis 2) / blend_h (axis 3): linear ramp from ``a``'s end into ``b``'s start."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    wa, wb = _blend_weights(extent, b.dtype)
    shape = [1] * b.ndim
    shape[axis] = extent
    wa, wb = wa.reshape(shape), wb.reshape(shape)
    a_end = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    b_start = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    mixed = a_end.astype(b.dtype) * wa + b_start * wb
    return jnp.concatenate([mixed, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)], axis=axis)


def _stitch(tiles: dict, n_i: int, n_j: int, blend: tuple[int, int], stride: tuple[int, int], size: tuple[int, int]) -> Array:
    """Blends and crops a tile grid exactly as diffusers' tiled_encode / tiled_decode.

    diffusers blends in place and row-major, so each tile is blended with its *already blended*
    upper and left neighbours; this reproduces that order.
    """
    blended: dict[tuple[int, int], Array] = {}
    rows = []
    for i in range(n_i):
        row = []
        for j in range(n_j):
            t = tiles[(i, j)]
            if i > 0:
                t = _blend(blended[(i - 1, j)], t, blend[0], axis=2)
            if j > 0:
                t = _blend(blended[(i, j - 1)], t, blend[1], axis=3)
            blended[(i, j)] = t
            row.append(t[:, :, : stride[0], : stride[1]])
        rows.append(jnp.concatenate(row, axis=3))
    return jnp.concatenate(rows, axis=2)[:, :, : size[0], : size[1]]


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ----------------------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------------------


class WanVAE(nnx.Module):
    """diffusers ``AutoencoderKLWan`` in NNX (channels-last).

    Args:
      config: the architecture (:class:`WanVAEConfig`).
      runtime: the :class:`~mirage_jax.models.wan.WanRuntime` knobs the VAE uses:
        ``dtype`` (compute dtype of activations; kernels are cast to it; RMS norms and the
        attention softmax run in float32 whatever it is), ``param_dtype`` (stored dtype) and
        ``precision`` (of convolutions and matmuls). Default: float32 everywhere.
      rngs: initialiser keys (weights are normally overwritten by a checkpoint; default seed 0).

    Parameters carry logical axis names (``conv_in``/``conv_out``/``norm``) as metadata
    (:func:`mirage_jax.models.params.param`): the model builds eagerly, under
    ``nnx.eval_shape`` and inside a mesh alike; :func:`mirage_jax.sharding.create_sharded`
    and the loaders place it in a mesh.
    """

    def __init__(self, config: WanVAEConfig, runtime: WanRuntime | None = None, *, rngs: nnx.Rngs | None = None):
        runtime = runtime or WanRuntime()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.dtype = dtype = runtime.dtype
        self.precision = precision = runtime.precision
        kw = dict(dtype=dtype, param_dtype=runtime.param_dtype, precision=precision, rngs=rngs)
        self.encoder = Encoder3d(config, **kw)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1, **kw)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1, **kw)
        self.decoder = Decoder3d(config, **kw)

    # -- input checks ------------------------------------------------------------------------
    def _check_video(self, video) -> None:
        """Shape, dtype (floating) and, when the values are concrete (not under jit), range
        [-1, 1] within :data:`VIDEO_RANGE_TOLERANCE` and finiteness. Under jit only the shape
        and dtype are checked."""
        cfg = self.config
        shape = tuple(video.shape)
        if len(shape) != 5:
            raise WanVAEInputError(f"video must be [B, T, H, W, C] (channels-last), got shape {shape}")
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise WanVAEInputError(
                f"video has dtype {video.dtype}; the VAE takes floats in [-1, 1] (e.g. uint8 frames: "
                "video.astype(np.float32) / 127.5 - 1)"
            )
        try:
            lo, hi = float(jnp.min(video)), float(jnp.max(video))
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            lo = hi = None  # traced: values cannot be checked (documented)
        if lo is not None and not (-1 - VIDEO_RANGE_TOLERANCE <= lo and hi <= 1 + VIDEO_RANGE_TOLERANCE):
            raise WanVAEInputError(
                f"video values span [{lo:g}, {hi:g}]; the VAE takes finite floats in [-1, 1] (a 0..255 video: "
                "x / 127.5 - 1; a 0..1 video: 2 * x - 1)"
            )
        b, t, h, w, c = shape
        if c != cfg.video_channels:
            raise WanVAEInputError(
                f"video has {c} channels in its last axis, the VAE takes {cfg.video_channels} "
                f"(channels-last [B, T, H, W, C]; got shape {shape})"
            )
        if t < 1 or (t - 1) % ENCODE_CHUNK:
            raise WanVAEInputError(f"video has {t} frames; the causal VAE takes 1 + {ENCODE_CHUNK}k frames (1, 5, 9, ...)")
        if h % cfg.spatial_ratio or w % cfg.spatial_ratio:
            raise WanVAEInputError(f"video frames are {h}x{w}; height and width must be multiples of {cfg.spatial_ratio}")

    def _check_latent(self, latent) -> None:
        cfg = self.config
        shape = tuple(latent.shape)
        if len(shape) != 5 or shape[-1] != cfg.z_dim:
            raise WanVAEInputError(f"latent must be [B, T', h, w, {cfg.z_dim}] (channels-last), got shape {shape}")
        if shape[1] < 1:
            raise WanVAEInputError(f"latent has no frames: shape {shape}")

    def _tiles(self, tile_sample_size, tile_sample_stride, encode: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        p, s = self.config.patch, self.config.spatial_ratio
        # diffusers' defaults: 256/192 sample pixels; its tiled_encode measures them after
        # patchify, i.e. in units of patch_size pixels.
        scale = p if encode else 1
        size = _pair(256 * scale if tile_sample_size is None else tile_sample_size, "tile_sample_size")
        stride = _pair(192 * scale if tile_sample_stride is None else tile_sample_stride, "tile_sample_stride")
        for a, bb in zip(size, stride):
            if a % s or bb % s or a <= 0 or bb <= 0:
                raise ValueError(f"tile size {size} and stride {stride} must be positive multiples of {s} pixels")
            if bb > a:
                raise ValueError(f"tile stride {stride} larger than tile size {size} would leave gaps")
        return size, stride

    # -- encode ------------------------------------------------------------------------------
    def _encode_moments(self, xp: Array) -> Array:
        """Patchified video [B, T, H/p, W/p, Cin] -> quant_conv moments [B, T', h, w, 2z] (untiled)."""
        rest = xp[:, 1:] if xp.shape[1] > 1 else None
        moments = _scan_chunks(self.encoder, xp[:, :1], rest, ENCODE_CHUNK)
        return self.quant_conv(moments)

    def moments(self, video: Array, *, tiled: bool = False, tile_sample_size=None, tile_sample_stride=None) -> Array:
        """video [B, T, H, W, 3] in [-1, 1] -> posterior parameters [B, T', H/s, W/s, 2 z] (mean ++ logvar).

        ``tiled``: encode overlapping spatial tiles one at a time and blend them (diffusers'
        ``tiled_encode``); used only when the frame exceeds one tile. Tile size and stride are in
        pixels of the input video (default 256 x patch_size and 192 x patch_size, which is
        diffusers' default after its patchify).
        """
        self._check_video(video)
        cfg = self.config
        xp = patchify(video.astype(self.dtype), cfg.patch)
        if not tiled:
            return self._encode_moments(xp)
        size, stride = self._tiles(tile_sample_size, tile_sample_stride, encode=True)
        _, _, h, w, _ = video.shape
        if h <= size[0] and w <= size[1]:
            return self._encode_moments(xp)
        p, s = cfg.patch, cfg.spatial_ratio
        grid_h = _tile_grid(h // p, size[0] // p, stride[0] // p)
        grid_w = _tile_grid(w // p, size[1] // p, stride[1] // p)
        tiles = _map_tiles(self._encode_moments, xp, grid_h, grid_w)
        blend = ((size[0] - stride[0]) // s, (size[1] - stride[1]) // s)
        return _stitch(tiles, len(grid_h), len(grid_w), blend, (stride[0] // s, stride[1] // s), (h // s, w // s))

    def encode_dist(self, video: Array, **tiling) -> tuple[Array, Array]:
        """(mean, logvar), each [B, T', h, w, z]; logvar clamped to [-30, 20] as diffusers."""
        m = self.moments(video, **tiling)
        mean, logvar = jnp.split(m, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    @staticmethod
    def sample(mean: Array, logvar: Array, key: Array) -> Array:
        """A draw from the posterior N(mean, exp(logvar)) (diffusers' ``latent_dist.sample()``)."""
        noise = jax.random.normal(key, mean.shape, jnp.float32)
        return (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * noise).astype(mean.dtype)

    def encode(self, video: Array, **tiling) -> Array:
        """video [B, T, H, W, 3] in [-1, 1], T = 1 + 4k -> latent mean [B, 1 + k, H/s, W/s, z_dim].

        Equals diffusers' ``encode(x).latent_dist.mode()`` (un-normalised latents). Keyword
        arguments: ``tiled``, ``tile_sample_size``, ``tile_sample_stride`` (see :meth:`moments`).
        Integer videos (uint8 frames) and values outside [-1, 1] (a 0..255 float video) raise
        :class:`WanVAEInputError`; under jit only the shape and dtype can be checked.
        """
        return self.moments(video, **tiling)[..., : self.config.z_dim]

    # -- decode ------------------------------------------------------------------------------
    def _decode_patched(self, latent: Array) -> Array:
        """latent [B, T', h, w, z] -> patchified video [B, T, h*s/p, w*s/p, Cout], unclamped, untiled."""
        x = self.post_quant_conv(latent.astype(self.dtype))
        rest = x[:, 1:] if x.shape[1] > 1 else None
        return _scan_chunks(self.decoder, x[:, :1], rest, 1)

    def decode(self, latent: Array, *, tiled: bool = False, tile_sample_size=None, tile_sample_stride=None, clamp: bool = True) -> Array:
        """latent [B, T', h, w, z_dim] (un-normalised) -> video [B, 1 + 4(T'-1), h*s, w*s, 3].

        Clamped to [-1, 1] like diffusers (which clamps unconditionally) unless ``clamp=False``.
        ``tiled``: decode overlapping latent tiles one at a time and blend them in (patchified)
        pixel space like diffusers' ``tiled_decode``; tile size/stride in output pixels
        (default 256 / 192), used only when the latent exceeds one tile.
        """
        self._check_latent(latent)
        cfg = self.config
        p, s = cfg.patch, cfg.spatial_ratio
        _, _, h, w, _ = latent.shape
        out = None
        if tiled:
            size, stride = self._tiles(tile_sample_size, tile_sample_stride, encode=False)
            if h > size[0] // s or w > size[1] // s:
                grid_h = _tile_grid(h, size[0] // s, stride[0] // s)
                grid_w = _tile_grid(w, size[1] // s, stride[1] // s)
                tiles = _map_tiles(self._decode_patched, latent, grid_h, grid_w)
                blend = (size[0] // p - stride[0] // p, size[1] // p - stride[1] // p)
                out = _stitch(tiles, len(grid_h), len(grid_w), blend, (stride[0] // p, stride[1] // p), (h * s // p, w * s // p))
        if out is None:
            out = self._decode_patched(latent)
        out = unpatchify(out, p)
        return jnp.clip(out, -1.0, 1.0) if clamp else out

    # -- latent statistics ---------------------------------------------------------------------
    def _stats(self) -> tuple[Array, Array]:
        return jnp.asarray(self.config.latents_mean, jnp.float32), jnp.asarray(self.config.latents_std, jnp.float32)

    def normalize(self, latent: Array) -> Array:
        """(latent - latents_mean) / latents_std over the last axis (the space the DiT denoises in).

        latent: [..., z_dim] (any leading dims); computed in float32, returned in latent's dtype.
        """
        mean, std = self._stats()
        return ((latent.astype(jnp.float32) - mean) / std).astype(latent.dtype)

    def denormalize(self, latent: Array) -> Array:
        """Inverse of :meth:`normalize`: latent * latents_std + latents_mean ([..., z_dim])."""
        mean, std = self._stats()
        return (latent.astype(jnp.float32) * std + mean).astype(latent.dtype)


def param_count(config: WanVAEConfig) -> dict[str, int]:
    """Parameter counts {total, encoder (+quant_conv), decoder (+post_quant_conv)} without memory."""
    abstract = nnx.eval_shape(lambda: WanVAE(config))
    counts = {"encoder": 0, "decoder": 0}
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        n = int(np.prod(var.get_value().shape))
        counts["encoder" if path[0] in ("encoder", "quant_conv") else "decoder"] += n
    counts["total"] = counts["encoder"] + counts["decoder"]
    return counts


__all__ = [
    "CACHE_T",
    "VIDEO_RANGE_TOLERANCE",
    "ENCODE_CHUNK",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "WAN22_LATENTS_MEAN",
    "WAN22_LATENTS_STD",
    "WanVAE",
    "WanVAEConfig",
    "WanVAEInputError",
    "avg_down_3d",
    "dup_up_3d",
    "param_count",
    "patchify",
    "unpatchify",
]
