"""MirageModel: config validation, control branch / hints, padding masks, LoRA, filters, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.models.mirage import (
    DEFAULT_TARGETS,
    REFERENCE_TARGET_NAMES,
    LoRADense,
    LoRAParam,
    MirageConfig,
    MirageModel,
    clear_score_cache,
    merge_lora,
    mirage_positions,
    score_latent,
    trainable_filter,
    unmerge_lora,
)
from mirage_jax.models.wan.dit import WanDiTConfig
from mirage_jax.models.wan.layers import WanRuntime

CFG = MirageConfig.tiny()  # 2 layers, control after both, 4 latent channels, control 8
B, H, W, L = 2, 4, 4, 3  # 2 x 2 tokens per latent frame


def inputs(r, t, p, seed=0, batch=B):
    rng = np.random.default_rng(seed)
    f = r + t + p
    lat = rng.standard_normal((batch, f, H, W, 4)).astype(np.float32)
    ctrl = rng.standard_normal((batch, t + p, H, W, 8)).astype(np.float32)
    text = rng.standard_normal((batch, L, 24)).astype(np.float32)
    ts = np.zeros((batch, f), np.float32)
    ts[:, r + 1 : r + t] = rng.uniform(100, 900, (batch, 1))  # noisy target frames 1..T-1
    return lat, ts, text, ctrl


def randomize(model, filt, seed=1, scale=0.1):
    """Replaces the parameters selected by ``filt`` with random values (non-trivial hints / LoRA)."""
    state = nnx.state(model, filt)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: scale * jax.random.normal(next(keys), x.shape, x.dtype), state))


def after_proj_filter():
    return nnx.All(nnx.Param, nnx.PathContains("after_proj"))


@nnx.jit(static_argnames=("num_reference", "train"))
def _call(m, *args, num_reference=None, train=False, **kw):
    if num_reference is None:  # the plain WanDiT
        return m(*args, **kw)
    return m(*args, num_reference=num_reference, train=train, **kw)


def fwd(model, *args, **kw):
    """One jitted forward shared by the tests (compiled once per model structure and shapes)."""
    return np.asarray(_call(model, *args, **kw))


# ------------------------------------------------------------------------------------------------
# Config.
# ------------------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    five_b = MirageConfig()
    assert five_b.control_layers == tuple(range(0, 30, 2)) and five_b.num_control_blocks == 15
    assert five_b.control_in_channels == 96 and five_b.lora_targets == DEFAULT_TARGETS
    forty = MirageConfig(dit=dataclasses.replace(WanDiTConfig.wan22_ti2v_5b(), num_layers=40))
    assert forty.control_layers == (0, 5, 10, 15, 20, 25, 30, 35)
    assert MirageConfig(control_in_channels=49).control_in_channels == 49  # hole-mask variant
    assert len(DEFAULT_TARGETS) == 10 and REFERENCE_TARGET_NAMES["ffn.proj_out"] == "ffn.2"
    assert MirageConfig.tiny(lora_rank=4, lora_alpha=8.0).lora_scale == 2.0

    bad = [
        (dict(control_layers=(0, 2)), "outside"),
        (dict(control_layers=(1, 0)), "increasing"),
        (dict(control_layers=(1, 1)), "repeats"),
        (dict(control_layers=()), "empty"),
        (dict(control_in_channels=7), "control_in_channels"),
        (dict(lora_rank=-1), "lora_rank"),
        (dict(lora_rank=2, lora_targets=("attn1.to_q", "attn3.to_q")), "attn3.to_q"),
        (dict(control_init="zeros"), "control_init"),
        (dict(lora_dropout=1.0), "lora_dropout"),
    ]
    for kw, needle in bad:
        with pytest.raises(ConfigError, match=needle):
            MirageConfig.tiny(**kw)


# ------------------------------------------------------------------------------------------------
# Forward semantics.
# ------------------------------------------------------------------------------------------------


def test_positions_follow_spec():
    pos = mirage_positions(2, 5, 2, 3)  # R=2, T+P=3, grid 2 x 3
    ref, rest = pos[: 2 * 6], pos[2 * 6 :]
    assert sorted(set(ref[:, 0])) == [-2, -1] and ref[:, 1].min() == 2 and ref[:, 1].max() == 3
    assert sorted(set(rest[:, 0])) == [0, 1, 2] and rest[:, 1].max() == 1
    np.testing.assert_array_equal(rest[:6, 2], [0, 1, 2, 0, 1, 2])  # row-major


def test_zero_after_proj_equals_backbone_then_hints_change_the_output():
    cfg = MirageConfig.tiny(lora_rank=2)  # LoRA B = 0: no change either
    model = MirageModel(cfg, rngs=nnx.Rngs(0))
    r, t, p = 1, 2, 1
    lat, ts, text, ctrl = inputs(r, t, p)
    pos = mirage_positions(r, r + t + p, H // 2, W // 2)
    base = fwd(model.dit, lat, ts, text, pos)
    np.testing.assert_array_equal(fwd(model, lat, ts, text, ctrl, num_reference=r), base)

    randomize(model, after_proj_filter())
    out = fwd(model, lat, ts, text, ctrl, num_reference=r)
    assert np.abs(out - base).max() > 1e-3  # hints change the output
    # (Hint placement on the non-reference tokens is checked against a torch transcription of
    # spec 10.2 in test_mirage_parity.py.)


def _stack_into(looped, scanned):
    """Copies a looped model's parameters into a scanned one (stacking the layer lists)."""
    flat = dict(nnx.to_flat_state(nnx.state(looped, nnx.Variable)))
    dst = nnx.state(scanned, nnx.Variable)
    for path, var in nnx.to_flat_state(dst):
        if path[:2] in (("dit", "blocks"), ("control", "blocks"), ("control", "after_proj")):
            n = var.get_value().shape[0]
            var.set_value(jnp.stack([flat[path[:2] + (i,) + path[2:]].get_value() for i in range(n)]))
        else:
            var.set_value(flat[path].get_value())
    nnx.update(scanned, dst)


def test_scan_remat_bf16_and_lora_gradients():
    cfg = MirageConfig.tiny(lora_rank=2, lora_dropout=0.0)
    looped = MirageModel(cfg, WanRuntime(), rngs=nnx.Rngs(0))
    randomize(looped, nnx.Any(after_proj_filter(), LoRAParam))
    scanned = MirageModel(cfg, WanRuntime(scan_layers=True, remat="full"), rngs=nnx.Rngs(5))
    _stack_into(looped, scanned)
    args = inputs(2, 2, 1)
    ref = fwd(looped, *args, num_reference=2)
    np.testing.assert_allclose(fwd(scanned, *args, num_reference=2), ref, rtol=0, atol=1e-5 * np.abs(ref).max())

    # bf16 compute (fp32 parameters): stage-2 gradients flow to the LoRA factors through the
    # scanned, rematerialised stack, and the bf16 forward is close to the fp32 one.
    bf16 = MirageModel(cfg, WanRuntime(dtype="bfloat16", scan_layers=True, remat="full"), rngs=nnx.Rngs(5))
    _stack_into(looped, bf16)

    def loss(m):
        out = m(*args, num_reference=2)
        return jnp.mean(jnp.square(out.astype(jnp.float32))), out

    grads, out = nnx.jit(lambda m: nnx.grad(loss, argnums=nnx.DiffState(0, trainable_filter(2)), has_aux=True)(m))(bf16)
    assert out.dtype == jnp.bfloat16
    assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.05 * np.abs(ref).max()
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 2 * 10 and all(np.isfinite(np.asarray(g, np.float32)).all() for g in leaves)
    assert max(float(jnp.abs(g).max()) for g in leaves) > 0


def test_frame_mask_padding_equals_unpadded():
    """R=2 real references padded (in front) to 4, P=1 preceding padded (behind) to 2; the xla
    and the chunked attention (query blocks of 8 of the 32 tokens)."""
    model = MirageModel(CFG, rngs=nnx.Rngs(0))
    randomize(model, after_proj_filter())
    r, t, p = 2, 2, 1
    lat, ts, text, ctrl = inputs(r, t, p)
    want = fwd(model, lat, ts, text, ctrl, num_reference=r)

    rng = np.random.default_rng(7)
    junk = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    lat_p = np.concatenate([junk(B, 2, H, W, 4), lat, junk(B, 1, H, W, 4)], axis=1)
    ctrl_p = np.concatenate([ctrl, junk(B, 1, H, W, 8)], axis=1)
    ts_p = np.concatenate([np.zeros((B, 2), np.float32), ts, np.zeros((B, 1), np.float32)], axis=1)
    mask = np.ones((B, 8), bool)
    mask[:, :2] = mask[:, -1] = False
    got = fwd(model, lat_p, ts_p, text, ctrl_p, num_reference=4, frame_mask=mask)
    np.testing.assert_allclose(got[:, 2:-1], want, rtol=0, atol=1e-5 * np.abs(want).max())
    chunked = MirageModel(CFG, WanRuntime(attention="chunked", attention_chunk_size=8), rngs=nnx.Rngs(1))
    nnx.update(chunked, nnx.state(model))
    got = fwd(chunked, lat_p, ts_p, text, ctrl_p, num_reference=4, frame_mask=mask)
    np.testing.assert_allclose(got[:, 2:-1], want, rtol=0, atol=1e-5 * np.abs(want).max())
    # ... and without the mask the padding does leak in (the test can fail).
    leak = fwd(model, lat_p, ts_p, text, ctrl_p, num_reference=4)[:, 2:-1]
    assert np.abs(leak - want).max() > 1e-3


def test_input_errors():
    model = MirageModel(CFG, rngs=nnx.Rngs(0))
    lat, ts, text, ctrl = inputs(1, 2, 0)
    with pytest.raises(InputError, match="control"):
        model(lat, ts, text, ctrl[:, :1], num_reference=1)
    with pytest.raises(InputError, match="num_reference"):
        model(lat, ts, text, ctrl, num_reference=3)
    with pytest.raises(InputError, match="timestep"):
        model(lat, ts[:, :2], text, ctrl, num_reference=1)
    with pytest.raises(InputError, match="frame_mask"):
        model(lat, ts, text, ctrl, num_reference=1, frame_mask=np.ones((B, 3), np.float32))


# ------------------------------------------------------------------------------------------------
# LoRA, filters, copy init.
# ------------------------------------------------------------------------------------------------


def test_lora_merge_unmerge_and_dropout():
    """On the scanned stack (stacked [L, in, r] factors; the looped layout is the same code)."""
    cfg = MirageConfig.tiny(lora_rank=3, lora_alpha=6.0, lora_dropout=0.5)
    model = MirageModel(cfg, WanRuntime(scan_layers=True), rngs=nnx.Rngs(0))
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, LoRADense)]
    assert len(layers) == 10 and layers[0].lora_a.get_value().shape == (2, 40, 3)
    assert not any(isinstance(m, LoRADense) for _, m in nnx.iter_graph(model.control))
    args = inputs(1, 2, 1)
    base = fwd(model, *args, num_reference=1)
    randomize(model, nnx.All(LoRAParam, nnx.PathContains("lora_b")))
    lora = fwd(model, *args, num_reference=1)
    assert np.abs(lora - base).max() > 1e-3

    kernels = [np.asarray(m.kernel.get_value()) for m in layers]
    assert merge_lora(model) == len(layers)
    merged = fwd(model, *args, num_reference=1)
    np.testing.assert_allclose(merged, lora, rtol=0, atol=1e-5 * np.abs(lora).max())
    assert unmerge_lora(model) == len(layers)
    for m, k in zip(layers, kernels):
        np.testing.assert_allclose(np.asarray(m.kernel.get_value()), k, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fwd(model, *args, num_reference=1), lora, rtol=0, atol=1e-5 * np.abs(lora).max())

    key = jax.random.key(3)
    d1 = fwd(model, *args, num_reference=1, train=True, dropout_key=key)
    d2 = fwd(model, *args, num_reference=1, train=True, dropout_key=key)
    d3 = fwd(model, *args, num_reference=1, train=True, dropout_key=jax.random.key(4))
    np.testing.assert_array_equal(d1, d2)
    assert np.abs(d1 - lora).max() > 1e-4 and np.abs(d1 - d3).max() > 1e-4
    with pytest.raises(InputError, match="dropout_key"):
        model(*args, num_reference=1, train=True)


def test_trainable_filters_and_copy_init():
    cfg = MirageConfig.tiny(lora_rank=2, control_layers=(1,), control_init="copy")
    model = MirageModel(cfg, rngs=nnx.Rngs(0))
    s1 = nnx.to_flat_state(nnx.state(model, trainable_filter(1)))
    s2 = nnx.to_flat_state(nnx.state(model, trainable_filter(2)))
    all_control = nnx.to_flat_state(nnx.state(model.control, nnx.Param))
    assert {p[1:] for p, _ in s1} == {p for p, _ in all_control} and all(p[0] == "control" for p, _ in s1)
    assert len(s2) == 2 * 2 * 10 and all(p[0] == "dit" and p[-1] in ("lora_a", "lora_b") for p, _ in s2)
    assert all(type(v) is LoRAParam for _, v in s2)
    with pytest.raises(InputError):
        trainable_filter(3)
    # control_init="copy": control block 0 is backbone block 1 (LoRA factors not copied).
    src = dict(nnx.to_flat_state(nnx.state(model.dit.blocks[1], nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(model.control.blocks[0], nnx.Param)):
        np.testing.assert_array_equal(var.get_value(), src[path].get_value())
    assert not np.any(np.asarray(model.control.after_proj[0].kernel.get_value()))
    scanned = MirageModel(dataclasses.replace(cfg, control_layers=(0, 1)), WanRuntime(scan_layers=True), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(scanned.control.blocks.ffn.proj_in.kernel.get_value(),
                                  scanned.dit.blocks.ffn.proj_in.kernel.get_value())


# ------------------------------------------------------------------------------------------------
# Sharding.
# ------------------------------------------------------------------------------------------------


def test_sharded_equals_single_device():
    """FSDP rules on a (2, 4) mesh of the 8 CPU devices, scanned layers with LoRA; parameters
    placed from their logical names (``create_sharded`` builds them the same way)."""
    from mirage_jax.sharding import make_mesh, state_shardings

    cfg = MirageConfig.tiny(lora_rank=2)
    single = MirageModel(cfg, WanRuntime(scan_layers=True), rngs=nnx.Rngs(0))
    randomize(single, nnx.Any(after_proj_filter(), LoRAParam))
    mesh = make_mesh((2, 4), ("data", "fsdp"))
    graphdef, state = nnx.split(single)
    sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh, "fsdp")))
    assert sharded.control.blocks.attn1.to_q.kernel.get_value().sharding.spec[1] == "fsdp"  # [K, embed, heads]
    assert sharded.dit.blocks.attn1.to_q.lora_a.get_value().sharding.spec[1] == "fsdp"  # [L, embed, lora]
    args = inputs(1, 2, 1, batch=4)
    want = fwd(single, *args, num_reference=1)
    with jax.set_mesh(mesh):
        got = fwd(sharded, *args, num_reference=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


# ------------------------------------------------------------------------------------------------
# Score latent.
# ------------------------------------------------------------------------------------------------


class CausalPoolVAE(nnx.Module):
    """A small causal video encoder with WanVAE's interface (``config.temporal_ratio``,
    ``encode``, ``normalize``): frame 0 alone, then groups of 4 frames; 8x8 pooling; counts its
    calls. (The real WanVAE's numbers are tested in test_wan_vae.py; a jitted tiny WanVAE
    encode costs minutes on a busy 2-core machine.)"""

    config = type("Cfg", (), {"temporal_ratio": 4, "spatial_ratio": 8})()

    def __init__(self):
        self.w = nnx.Param(jnp.arange(1.0, 4.0))
        self.calls = 0

    def encode(self, video):
        b, t, h, w, _ = video.shape
        assert (t - 1) % 4 == 0, t
        x = video @ self.w[...]
        x = x.reshape(b, t, h // 8, 8, w // 8, 8).mean(axis=(3, 5))
        first = x[:, :1]
        rest = x[:, 1:].reshape(b, (t - 1) // 4, 4, h // 8, w // 8).sum(axis=2)
        return jnp.concatenate([first, rest], axis=1)[..., None]

    def normalize(self, latent):
        self.calls += 1  # trace-time count: once per compile
        return (latent - 1.0) / 2.0


def test_score_latent_cached_and_correct():
    vae = CausalPoolVAE()
    clear_score_cache()
    s = score_latent(vae, 3, (16, 24))
    assert s.shape == (3, 2, 3, 1) and s.dtype == jnp.float32
    # ones(9 frames) -> encode: frame 0 = 6, later latents = 4 * 6 = 24 -> normalise.
    np.testing.assert_allclose(np.asarray(s[..., 0]), np.stack([np.full((2, 3), 2.5)] + [np.full((2, 3), 11.5)] * 2))
    assert score_latent(vae, 3, (16, 24)) is s and vae.calls == 1  # cached: encoded once
    assert score_latent(vae, 1, (16, 24)).shape == (1, 2, 3, 1)
    assert score_latent(CausalPoolVAE(), 3, (16, 24)) is not s  # keyed by the VAE object
    with pytest.raises(InputError):
        score_latent(vae, 0, (16, 24))
    with pytest.raises(InputError):
        score_latent(vae, 2, (16.0, 24))
