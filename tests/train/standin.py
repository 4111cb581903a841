"""A tiny stand-in with the Mirage model's call contract, used until/unless the real model is
importable: a per-frame MLP backbone (``dit``, LoRA factors of their own Param type) and a
control branch (``control``) whose zero-initialised output projection adds to the target and
preceding frames. Parameters carry logical axis names so the sharding rules apply."""

import jax
import jax.numpy as jnp
from flax import nnx


class LoRAParam(nnx.Param):
    pass


def _p(key, shape, names, scale=None, cls=nnx.Param):
    scale = shape[0] ** -0.5 if scale is None else scale
    return cls(jax.random.normal(key, shape, jnp.float32) * scale, out_sharding=names)


class _Dit(nnx.Module):
    def __init__(self, c, text_dim, width, lora_rank, key):
        k = jax.random.split(key, 6)
        self.w_in = _p(k[0], (c, width), ("latent", "embed"))
        self.w_text = _p(k[1], (text_dim, width), ("text_embed", "embed"))
        self.w_time = _p(k[2], (1, width), (None, "embed"), scale=1.0)
        self.w_out = _p(k[3], (width, c), ("embed", "latent"))
        if lora_rank:
            self.lora_a = _p(k[4], (c, lora_rank), ("latent", "lora"), cls=LoRAParam)
            self.lora_b = LoRAParam(jnp.zeros((lora_rank, width)), out_sharding=("lora", "embed"))
        self.lora_rank = lora_rank


class _Control(nnx.Module):
    def __init__(self, cin, width, c, key):
        k = jax.random.split(key, 2)
        self.w_in = _p(k[0], (cin, width), ("latent", "embed"))
        self.after_proj = nnx.Param(jnp.zeros((width, c)), out_sharding=("embed", "latent"))


class StandInMirage(nnx.Module):
    def __init__(self, channels=4, text_dim=8, width=16, lora_rank=0, *, rngs):
        key = rngs.params()
        k1, k2 = jax.random.split(key)
        with nnx.use_eager_sharding(False):
            self.dit = _Dit(channels, text_dim, width, lora_rank, k1)
            self.control = _Control(2 * channels, width, channels, k2)

    def __call__(self, latents, timestep, text, control, *, num_reference, frame_mask=None, train=False,
                 dropout_key=None):
        d = self.dit
        B, F = latents.shape[:2]
        R = num_reference
        x = latents @ d.w_in[...]
        if d.lora_rank:
            x = x + (latents @ d.lora_a[...]) @ d.lora_b[...]
        t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (B, F))
        tx = jnp.mean(text @ d.w_text[...], axis=1)  # [B, width]
        x = x + (jnp.tanh(t[..., None] / 1000.0) @ d.w_time[...])[:, :, None, None] + tx[:, None, None, None]
        if frame_mask is not None:
            m = frame_mask.astype(x.dtype)[:, :, None, None, None]
            ctx = jnp.sum(x * m, axis=1, keepdims=True) / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
        else:
            ctx = jnp.mean(x, axis=1, keepdims=True)
        h = jax.nn.gelu(x + 0.1 * ctx)
        hint = jax.nn.gelu(control @ self.control.w_in[...]) @ self.control.after_proj[...]
        out = h @ d.w_out[...]
        return out.at[:, R:].add(hint)


def standin_filter(stage):
    if stage == 1:
        return nnx.All(nnx.Param, nnx.PathContains("control"))
    return LoRAParam
