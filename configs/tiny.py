"""Tiny Wan-architecture models for tests and laptop runs (random weights)."""

import dataclasses

import ml_collections

from mirage_jax.models.wan.dit import WanDiTConfig
from mirage_jax.models.wan.vae import WanVAEConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.dit = dataclasses.asdict(WanDiTConfig.tiny())
    vae = WanVAEConfig.tiny("wan2.2")
    c.vae = dataclasses.asdict(vae)
    # Keep the DiT's channels equal to the VAE's latent channels so the two compose.
    c.dit.in_channels = c.dit.out_channels = vae.z_dim
    c.runtime = ml_collections.ConfigDict(
        dict(param_dtype="float32", dtype="float32", attention="xla", remat="none", scan_layers=False)
    )
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("fsdp", "tp"), rules="fsdp"))
    c.video = ml_collections.ConfigDict(dict(height=64, width=64, chunk_frames=9, fps=16))
    return c
