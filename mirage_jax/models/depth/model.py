"""``DepthNet``: a small U-Net predicting log z-depth from an RGB frame, trained on exact depth.

    net = DepthNet(DepthConfig(), rngs=nnx.Rngs(0))
    depth = net(images)              # images f32 [B, H, W, 3] in [0, 1] -> z-depth f32 [B, H, W] (> 0)
    loss = depth_loss(net, images, true_depth)   # L1 in log-depth over valid pixels (depth > 0)
    abs_rel(depth, true_depth)       # mirage_jax.eval.metrics.abs_rel: mean |d - d*| / d* over valid pixels

Architecture: ``levels`` stages of (two 3x3 conv + GroupNorm + SiLU) with 2x2 average-pool
down and nearest-neighbour up plus skip connections; the head predicts ``log(depth)``
around ``log_depth_offset`` (the scene scale of our worlds, metres). Metric depth (not up to
scale) because the memory stores points in world units. Written by hand rather than taken from
a library because no maintained JAX depth network of this size exists; it reuses flax's
``nnx.Conv`` / ``nnx.GroupNorm`` with the project's logical axis names.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.eval.metrics import abs_rel

__all__ = ["DepthConfig", "DepthNet", "depth_loss", "abs_rel"]


@dataclasses.dataclass(frozen=True)
class DepthConfig:
    """base: channels of the first stage (doubled per level); levels: resolution stages (the input
    H and W must be multiples of 2^(levels-1)); groups: GroupNorm groups; log_depth_offset: the
    head's output is added to this (log metres)."""

    base: int = 16
    levels: int = 4
    groups: int = 4
    log_depth_offset: float = 1.0

    def __post_init__(self):
        if self.base < 1 or self.levels < 1 or self.groups < 1 or self.base % self.groups:
            raise ConfigError(f"DepthConfig: base {self.base} must be a positive multiple of groups {self.groups}, levels >= 1")

    def num_params(self) -> int:
        from mirage_jax.models.wan.dit import count_params

        return count_params(nnx.eval_shape(lambda: DepthNet(self, rngs=nnx.Rngs(0))))


def _names(*names) -> dict:
    """Parameter metadata: logical axis names only (placement happens in mirage_jax.sharding)."""
    return {"out_sharding": names, "eager_sharding": False}


def _conv(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs,
                    kernel_metadata=_names(None, None, "conv_in", "conv_out"), bias_metadata=_names("conv_out"))


def _norm(dim: int, groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(dim, num_groups=groups, rngs=rngs, scale_metadata=_names("norm"), bias_metadata=_names("norm"))


class _Stage(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, rngs)
        self.norm1 = _norm(cout, groups, rngs)
        self.conv2 = _conv(cout, cout, rngs)
        self.norm2 = _norm(cout, groups, rngs)

    def __call__(self, x):
        x = nnx.silu(self.norm1(self.conv1(x)))
        return nnx.silu(self.norm2(self.conv2(x)))


class DepthNet(nnx.Module):
    """images f32 [B, H, W, 3] in [0, 1] -> z-depth f32 [B, H, W] (strictly positive)."""

    def __init__(self, config: DepthConfig = DepthConfig(), *, rngs: nnx.Rngs):
        self.config = c = config
        dims = [c.base * 2**i for i in range(c.levels)]
        self.down = nnx.List([_Stage(3 if i == 0 else dims[i - 1], dims[i], c.groups, rngs) for i in range(c.levels)])
        self.up = nnx.List([_Stage(dims[i + 1] + dims[i], dims[i], c.groups, rngs) for i in reversed(range(c.levels - 1))])
        self.head = nnx.Conv(dims[0], 1, (1, 1), rngs=rngs, kernel_init=nnx.initializers.zeros,
                             kernel_metadata=_names(None, None, "conv_in", None), bias_metadata=_names(None))

    def log_depth(self, images: jax.Array) -> jax.Array:
        """log z-depth f32 [B, H, W]."""
        images = jnp.asarray(images)
        n = 2 ** (self.config.levels - 1)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"DepthNet: images must be [B, H, W, 3] in [0, 1], got shape {images.shape}")
        if images.shape[1] % n or images.shape[2] % n:
            raise InputError(f"DepthNet: H x W = {images.shape[1]} x {images.shape[2]} must be multiples of {n}")
        x = images.astype(jnp.float32) * 2.0 - 1.0
        skips = []
        for i, stage in enumerate(self.down):
            if i:
                x = nnx.avg_pool(x, (2, 2), (2, 2))
            x = stage(x)
            skips.append(x)
        for stage, skip in zip(self.up, reversed(skips[:-1])):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = stage(jnp.concatenate([x, skip], axis=-1))
        return self.head(x)[..., 0] + self.config.log_depth_offset

    def __call__(self, images: jax.Array) -> jax.Array:
        return jnp.exp(self.log_depth(images))


def depth_loss(net: DepthNet, images: jax.Array, depth: jax.Array) -> jax.Array:
    """Mean L1 between predicted and true log-depth over valid pixels (finite depth > 0)."""
    depth = jnp.asarray(depth, jnp.float32)
    valid = jnp.isfinite(depth) & (depth > 0)
    err = jnp.abs(net.log_depth(images) - jnp.log(jnp.where(valid, depth, 1.0)))
    return jnp.sum(jnp.where(valid, err, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
