"""The Mirage model: the Wan DiT with a VACE control branch and optional LoRA (spec 3, 10.2, 10.3).

    cfg = MirageConfig(dit=WanDiTConfig.wan22_ti2v_5b())
    model = MirageModel(cfg, WanRuntime(dtype="bfloat16", scan_layers=True), rngs=nnx.Rngs(0))
    v = model(latents, timestep, text, control, num_reference=R)   # [B, R+T+P, H, W, C]

One call is the reference's model call (spec 10.2):

* latent frames in the order ``[reference (R) | target (T) | preceding (P)]``; RoPE positions
  (t, h, w) on the token grid ``(h', w')``: target + preceding ``t = 0 .. T+P-1``, reference
  ``t = -R .. -1`` with heights offset by ``+h'`` (:func:`mirage_positions`);
* timesteps per latent frame, broadcast to the frame's tokens (per-token modulation groups);
* the control branch sees only the ``T+P`` non-reference frames: their patch-embedded tokens
  ``x``, their modulation, RoPE tables and the same projected text
  (``WanContext.slice_tokens``); block 0 adds ``before_proj(c) + x``, every block ``n`` emits
  ``hint_n = after_proj_n(c)``;
* after backbone block ``control_layers[n]``: ``x[:, R*h'*w':] += hint_scale * hint_n``
  (reference tokens never get hints).

Padding (``frame_mask``): training batches have fixed shapes with a per-sample number of
reference and preceding frames; padded frames are excluded as attention keys everywhere
(backbone and branch) and their outputs are don't-care. Put the padding where it keeps the real
frames' RoPE positions: reference padding *first* (real references in the last slots keep
``t = -R_real .. -1``), preceding padding *last* (real preceding frames keep ``t = T ..``).
Then the padded call equals the unpadded one on the real frames.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import InputError
from mirage_jax.models.mirage.config import MirageConfig
from mirage_jax.models.mirage.lora import LoRAParam, apply_lora, lora_dropout_key
from mirage_jax.models.wan.dit import WanDiT, make_block_stack
from mirage_jax.models.wan.layers import Dense, PatchEmbed, WanContext, WanRuntime
from mirage_jax.models.wan.rope import grid_positions

__all__ = [
    "ControlBranch",
    "MirageModel",
    "mirage_positions",
    "copy_backbone_into_control",
    "trainable_filter",
]


def mirage_positions(num_reference: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """Host ``[num_frames * height * width, 3]`` int32 RoPE positions (t, h, w) of a Mirage call
    with ``num_frames`` latent frames of which the first ``num_reference`` are references, on a
    post-patch grid ``height x width`` (spec 10.2)."""
    r = int(num_reference)
    ref = grid_positions(r, height, width, t_offset=-r, h_offset=height)
    rest = grid_positions(num_frames - r, height, width)
    return np.concatenate([ref, rest], axis=0)


def _zero_dense(dim: int, names, key, **kw) -> Dense:
    layer = Dense(dim, dim, names, key=key, **kw)
    layer.kernel.set_value(jnp.zeros_like(layer.kernel.get_value()))
    return layer


class ControlBranch(nnx.Module):
    """The VACE control branch: ``patch_embedding`` (Conv3d ``control_in_channels -> dim``,
    kernel = stride = patch), ``before_proj`` (``[dim, dim]``, block 0's input projection),
    ``blocks`` (one :class:`WanBlock` per control layer; an ``nnx.List`` or, with
    ``runtime.scan_layers``, one block with stacked ``[K, ...]`` parameters) and ``after_proj``
    (one ``[dim, dim]`` Dense per block, zero-initialised; a list or stacked like ``blocks``).
    """

    def __init__(self, config: MirageConfig, runtime: WanRuntime, *, rngs: nnx.Rngs):
        d = config.dit
        dim, k = d.dim, config.num_control_blocks
        self.runtime = runtime
        k_patch, k_before, k_after = jax.random.split(rngs.params(), 3)
        kw = dict(dtype=runtime.dtype, param_dtype=runtime.param_dtype, precision=runtime.precision)
        self.patch_embedding = PatchEmbed(config.control_in_channels, dim, d.patch_size, key=k_patch, **kw)
        self.before_proj = Dense(dim, dim, ("embed", None), key=k_before, **kw)
        self.blocks = make_block_stack(
            k, dim, d.ffn_dim, d.num_attention_heads, cross_attn_norm=d.cross_attn_norm, eps=d.eps,
            runtime=runtime, rngs=rngs,
        )
        keys = jax.random.split(k_after, k)
        if runtime.scan_layers:
            make = nnx.vmap(
                lambda key: _zero_dense(dim, ("embed", None), key, **kw),
                in_axes=0, out_axes=0, axis_size=k, transform_metadata={nnx.PARTITION_NAME: None},
            )
            self.after_proj = make(keys)
        else:
            self.after_proj = nnx.List([_zero_dense(dim, ("embed", None), keys[i], **kw) for i in range(k)])

    def __call__(self, control: jax.Array, x: jax.Array, ctx: WanContext) -> jax.Array:
        """``control [B, T+P, H, W, C_ctrl]``, ``x [B, N_c, dim]`` the backbone's patch-embedded
        non-reference tokens, ``ctx`` their context -> hints ``[K, B, N_c, dim]`` (compute dtype)."""
        c = self.patch_embedding(control)
        if c.shape[1:] != x.shape[1:] or c.shape[0] not in (1, x.shape[0]):
            raise InputError(f"control tokens {c.shape} do not match the non-reference latent tokens {x.shape}")
        c = (self.before_proj(c) + x).astype(x.dtype)

        def body(h, blk, proj, cx):
            h = blk(h, cx)
            return h, proj(h)

        step = self.runtime.remat_wrap(body)
        if not self.runtime.scan_layers:
            hints = []
            for blk, proj in zip(self.blocks, self.after_proj):
                c, hint = step(c, blk, proj, ctx)
                hints.append(hint)
            return jnp.stack(hints)
        scan = nnx.scan(step, in_axes=(nnx.Carry, 0, 0, None), out_axes=(nnx.Carry, 0), unroll=self.runtime.scan_unroll)
        _, hints = scan(c, self.blocks, self.after_proj, ctx)
        return hints


class MirageModel(nnx.Module):
    """The Wan DiT (``dit``) plus the control branch (``control``); LoRA variables (when
    ``config.lora_rank > 0``) live inside the backbone's blocks. See the module docstring."""

    def __init__(self, config: MirageConfig, runtime: WanRuntime | None = None, *, rngs: nnx.Rngs | None = None):
        runtime = runtime or WanRuntime()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.runtime = runtime
        self.dit = WanDiT(config.dit, runtime, rngs=rngs)
        self.control = ControlBranch(config, runtime, rngs=rngs)
        if config.control_init == "copy":
            copy_backbone_into_control(self)
        if config.lora_rank > 0:
            apply_lora(
                self.dit.blocks, config.lora_targets, rank=config.lora_rank, alpha=config.lora_alpha,
                dropout=config.lora_dropout, scanned=runtime.scan_layers, key=rngs.params(),
            )

    def __call__(
        self,
        latents: jax.Array,
        timestep,
        text: jax.Array,
        control: jax.Array,
        *,
        num_reference: int,
        frame_mask: jax.Array | None = None,
        train: bool = False,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Velocity for all frames.

        Args:
          latents: ``[B, R+T+P, H, W, C]``, frames ``[reference | target | preceding]``.
          timestep: ``[R+T+P]`` or ``[B, R+T+P]`` per latent frame (0 for reference, preceding
            and target frame 0).
          text: ``[B, L, text_dim]``.
          control: ``[B, T+P, H, W, control_in_channels]`` (readouts of the target then the
            preceding frames || score latent).
          num_reference: R, a static Python int.
          frame_mask: optional bool ``[B, R+T+P]``; False frames are padding, never attended
            to (see the module docstring for where to put them).
          train: enables LoRA dropout (needs ``dropout_key`` when ``lora_dropout > 0``).
          dropout_key: PRNG key for LoRA dropout.
        Returns:
          ``[B, R+T+P, H, W, C_out]`` in the compute dtype.
        """
        cfg = self.config
        if latents.ndim != 5:
            raise InputError(f"latents must be [B, R+T+P, H, W, C], got shape {latents.shape}")
        b, f, h, w, _ = latents.shape
        if not isinstance(num_reference, (int, np.integer)) or isinstance(num_reference, bool) or not 0 <= num_reference < f:
            raise InputError(f"num_reference must be a Python int in [0, {f}) for {f} latent frames, got {num_reference!r}")
        r = int(num_reference)
        want = (b, f - r, h, w, cfg.control_in_channels)
        if control.ndim != 5 or control.shape[1:] != want[1:] or control.shape[0] not in (1, b):
            raise InputError(f"control must be [B, T+P, H, W, C_ctrl] = {want}, got {control.shape}")
        t = jnp.asarray(timestep)
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.shape[1] != f or t.shape[0] not in (1, b):
            raise InputError(f"timestep must be [R+T+P] = [{f}] or [B, R+T+P] = [{b}, {f}] (per latent frame), got {jnp.shape(timestep)}")
        t = jnp.broadcast_to(t, (b, f))

        _, ph, pw = cfg.dit.patch_size
        hp, wp = h // ph, w // pw  # divisibility is checked by the patch embedding
        positions = mirage_positions(r, f, hp, wp)
        tokens, ctx = self.dit.prepare(latents, t, text, positions)
        per_frame = hp * wp
        if frame_mask is not None:
            fm = jnp.asarray(frame_mask)
            if fm.shape != (b, f) or fm.dtype != jnp.bool_:
                raise InputError(f"frame_mask must be bool [B, R+T+P] = [{b}, {f}], got {fm.dtype} {fm.shape}")
            ctx = ctx.replace(key_mask=jnp.repeat(fm, per_frame, axis=1))
        start = r * per_frame
        ctx_c = ctx.slice_tokens(start, ctx.num_tokens)
        key = None
        if train and self.config.lora_rank > 0 and self.config.lora_dropout > 0:
            if dropout_key is None:
                raise InputError("train=True with LoRA dropout needs dropout_key")
            key = dropout_key
        hints = self.control(control, tokens[:, start:], ctx_c)
        with lora_dropout_key(key):
            x = self.dit.run_blocks(
                tokens, ctx, hints=hints, hint_layers=cfg.control_layers, hint_scale=cfg.hint_scale, hint_start=start
            )
        return self.dit.finalize(x, ctx)


def copy_backbone_into_control(model: MirageModel) -> None:
    """Sets control block ``n`` to a copy of backbone block ``control_layers[n]`` (every
    parameter of the block; LoRA factors, if any, are not copied). ``after_proj`` and the rest of
    the branch are left as they are. Works in the looped and scanned layouts."""
    layers = model.config.control_layers
    src = {path: var for path, var in nnx.to_flat_state(nnx.state(model.dit.blocks, nnx.Param))}
    dst = nnx.state(model.control.blocks, nnx.Param)
    for path, var in nnx.to_flat_state(dst):
        if model.runtime.scan_layers:
            var.set_value(src[path].get_value()[np.asarray(layers)])
        else:
            var.set_value(src[(layers[int(path[0])],) + tuple(path[1:])].get_value())
    nnx.update(model.control.blocks, dst)


def trainable_filter(stage: int):
    """NNX filter of the parameters trained in ``stage``: 1 = every parameter of the control
    branch; 2 = the LoRA factors only (:data:`LoRAParam`)."""
    if stage == 1:
        return nnx.All(nnx.Param, nnx.PathContains("control"), nnx.Not(LoRAParam))
    if stage == 2:
        return LoRAParam
    raise InputError(f"training stage must be 1 (control branch) or 2 (LoRA), got {stage!r}")
