"""A small JAX depth model (U-Net, RGB -> z-depth) trained on the renderer's exact depth.

It supplies depth for generated frames in the rollout's memory write-back, the role
MapAnything plays for the reference (spec 10.7). See :mod:`mirage_jax.models.depth.model`.
"""

from mirage_jax.models.depth.model import DepthConfig, DepthNet, abs_rel, depth_loss

__all__ = ["DepthConfig", "DepthNet", "abs_rel", "depth_loss"]
