"""Wan2.1 / Wan2.2 diffusion transformer and VAE in Flax NNX (diffusers-equivalent).

    from mirage_jax.models.wan import WanDiT, WanDiTConfig, WanVAE, WanVAEConfig, WanRuntime
    dit = WanDiT(WanDiTConfig.wan22_ti2v_5b(), rngs=nnx.Rngs(0))
"""

from mirage_jax.models.wan.dit import WanDiT, WanDiTConfig  # noqa: F401
from mirage_jax.models.wan.layers import WanBlock, WanContext, WanRuntime  # noqa: F401
from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig  # noqa: F401
