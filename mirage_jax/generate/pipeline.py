"""What a rollout needs besides the cameras: the Mirage model, the VAE and a text encoder.

``load_pipeline("random:tiny")`` builds test-sized models with random weights (seeded): the tiny
Mirage model, a tiny Wan2.2-style VAE with the same latent channels and a tiny umT5 encoder fed
with the prompt's UTF-8 bytes as token ids (no tokenizer files needed). It exercises every code
path of the real pipeline at a size that runs in seconds on a CPU; its videos are noise.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError

__all__ = ["Pipeline", "load_pipeline", "tiny_pipeline"]

TINY_TEXT_LEN = 16


@dataclasses.dataclass
class Pipeline:
    """model: MirageModel; vae: WanVAE; encode_text: ``texts -> [B, L, text_dim]``; name: a label."""

    model: object
    vae: object
    encode_text: Callable
    name: str


def tiny_pipeline(seed: int = 0) -> Pipeline:
    """Random tiny models (see the module docstring)."""
    from mirage_jax.models.mirage import MirageConfig, MirageModel
    from mirage_jax.models.umt5 import UMT5Config, UMT5Encoder
    from mirage_jax.models.wan.dit import WanDiTConfig
    from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig

    tcfg = UMT5Config.tiny()
    dit = dataclasses.replace(WanDiTConfig.tiny(), text_dim=tcfg.d_model)
    rngs = nnx.Rngs(seed)
    model = MirageModel(MirageConfig.tiny(dit=dit), rngs=rngs)
    # after_proj is zero-initialised (training starts from the plain backbone); a random
    # pipeline gives it small weights so the memory readout reaches the output.
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model.control.after_proj, nnx.Param)):
        var.set_value(0.02 * rng.standard_normal(var.get_value().shape).astype(np.float32))
    vae = WanVAE(WanVAEConfig.tiny(z_dim=dit.in_channels), rngs=rngs)
    encoder = UMT5Encoder(tcfg, rngs=rngs)

    def encode_text(texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.zeros((len(texts), TINY_TEXT_LEN), np.int32)
        mask = np.zeros_like(ids)
        for b, t in enumerate(texts):
            raw = list(t.encode("utf-8"))[: TINY_TEXT_LEN - 1] + [1]  # 1 plays </s>
            ids[b, : len(raw)] = np.asarray(raw) % tcfg.vocab_size
            mask[b, : len(raw)] = 1
        return encoder(jnp.asarray(ids), jnp.asarray(mask))

    return Pipeline(model, vae, encode_text, f"random:tiny (seed {seed})")


def load_pipeline(spec: str, seed: int = 0) -> Pipeline:
    """``"random:tiny"`` -> :func:`tiny_pipeline`. Other values raise ConfigError naming what is
    supported."""
    if spec == "random:tiny":
        return tiny_pipeline(seed)
    raise ConfigError(
        f"--checkpoint {spec!r}: only 'random:tiny' is supported by this build; loading Mirage weights "
        "(control branch + LoRA files) for generation is not wired yet"
    )
