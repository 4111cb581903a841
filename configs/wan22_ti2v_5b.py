"""Wan2.2-TI2V-5B backbone (DiT 4,999,787,712 params; VAE 704,688,668 params).

Model hyperparameters mirror the diffusers config.json files; runtime knobs (dtype, attention
kernel, remat, scan, mesh) are kept apart under ``runtime`` and ``mesh``.
``get_config("tp4")`` selects FSDP + 4-way tensor parallelism instead of pure FSDP.
"""

import dataclasses

import ml_collections

from mirage_jax.models.wan.dit import WanDiTConfig
from mirage_jax.models.wan.vae import WanVAEConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "wan22_ti2v_5b"
    c.dit = dataclasses.asdict(WanDiTConfig.wan22_ti2v_5b())
    c.vae = dataclasses.asdict(WanVAEConfig.wan22())
    c.runtime = ml_collections.ConfigDict(
        dict(param_dtype="float32", dtype="bfloat16", attention="auto", remat="dots_saveable", scan_layers=True)
    )
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("fsdp", "tp"), rules="fsdp"))
    if arg == "tp4":
        c.mesh.shape = (-1, 4)
        c.mesh.rules = "fsdp_tp"
    # Resolution of the paper: 1280 x 704 pixels -> 80 x 44 latents -> 40 x 22 tokens per frame.
    c.video = ml_collections.ConfigDict(dict(height=704, width=1280, chunk_frames=33, fps=16))
    return c
