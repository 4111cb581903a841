"""WanDiT vs diffusers' WanTransformer3DModel (random tiny weights, torch CPU float32)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert.place import stack_layers, unstack_layers
from mirage_jax.convert.wan_dit import canonical_arrays, transformer_from_state
from mirage_jax.models.wan.dit import (
    WanBlock,
    WanDiT,
    WanDiTConfig,
    WanRuntime,
    count_params,
    forward_flops,
)
from mirage_jax.models.wan.rope import grid_positions

CFG = WanDiTConfig.tiny()  # 2 layers, 2 heads x 20 (RoPE split 8 / 6 / 6)
B, T, H, W, L = 2, 3, 4, 6, 7  # latent grid -> 3 x 2 x 3 = 18 tokens


def torch_model(cfg: WanDiTConfig, seed: int = 0) -> "WanTransformer3DModel":  # noqa: F821
    """Random diffusers model; every parameter perturbed so zero / one inits are non-trivial."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    model = WanTransformer3DModel.from_config(cfg.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def torch_forward(model, x, t, text):
    """Channels-last numpy in/out; ``t`` [B] or per-frame [B, T] (broadcast to tokens as diffusers wants)."""
    torch = pytest.importorskip("torch")
    if t.ndim == 2:
        t = np.repeat(t, x.shape[2] // 2 * x.shape[3] // 2, axis=1)
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 4, 1, 2, 3), torch.from_numpy(t), torch.from_numpy(text), return_dict=False)[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


@pytest.fixture(scope="module")
def ref():
    model = torch_model(CFG)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, H, W, CFG.in_channels)).astype(np.float32)
    t = np.array([[0.0, 700.0, 700.0], [0.0, 250.0, 250.0]], np.float32)  # frame 0 clean (TI2V)
    text = rng.standard_normal((B, L, CFG.text_dim)).astype(np.float32)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return dict(torch=model, state=state, x=x, t=t, text=text, out=torch_forward(model, x, t, text))


def _fwd(model, *args, **kw):
    return np.asarray(nnx.jit(lambda m, *a: m(*a, **kw))(model, *args)).astype(np.float32)


def assert_close(a, b, rel):
    scale = np.abs(b).max()
    err = np.abs(a - b).max()
    assert err <= rel * scale, f"max abs diff {err:.3e} > {rel:g} x output scale {scale:.3e}"


# ------------------------------------------------------------------------------------------------
# Config.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parity
def test_config_diffusers_round_trip_and_validation():
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel
    for cfg in (CFG, WanDiTConfig.wan22_ti2v_5b(), WanDiTConfig.wan21_t2v_1_3b()):
        assert WanDiTConfig.from_diffusers(cfg.to_diffusers()) == cfg
        # diffusers accepts our dict and reports the same config back (incl. its bookkeeping keys).
        torch_cfg = dict(WanTransformer3DModel.from_config(CFG.to_diffusers()).config) if cfg is CFG else None
        if torch_cfg is not None:
            assert WanDiTConfig.from_diffusers(torch_cfg) == CFG
    five = WanDiTConfig.wan22_ti2v_5b()
    assert (five.dim, five.num_layers, five.ffn_dim, five.in_channels) == (3072, 30, 14336, 48)
    with pytest.raises(NotImplementedError, match="image_dim"):
        WanDiTConfig.from_diffusers({**CFG.to_diffusers(), "image_dim": 1280})
    with pytest.raises(NotImplementedError, match="added_kv_proj_dim"):
        WanDiTConfig.from_diffusers({**CFG.to_diffusers(), "added_kv_proj_dim": 40})
    with pytest.raises(ValueError, match="unknown"):
        WanDiTConfig.from_diffusers({**CFG.to_diffusers(), "num_experts": 2})
    with pytest.raises(ValueError, match="qk_norm"):
        dataclasses.replace(CFG, qk_norm="layer_norm")
    with pytest.raises(ValueError, match="WanTransformer3DModel"):
        WanDiTConfig.from_diffusers({**CFG.to_diffusers(), "_class_name": "AutoencoderKLWan"})
    assert WanDiTConfig.from_diffusers({**CFG.to_diffusers(), "out_channels": None}).out_channels == CFG.in_channels
    with pytest.raises(ValueError, match="RoPE"):
        dataclasses.replace(CFG, attention_head_dim=4)


@pytest.mark.parity
def test_parameter_counts():
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel
    five = WanDiTConfig.wan22_ti2v_5b()
    for rt in (WanRuntime(), WanRuntime(scan_layers=True)):
        abstract = nnx.eval_shape(lambda: WanDiT(five, rt))
        assert count_params(abstract) == 4_999_787_712
    assert five.num_params() == 4_999_787_712
    model = torch_model(CFG)
    n_torch = sum(p.numel() for p in model.parameters())
    assert count_params(nnx.eval_shape(lambda: WanDiT(CFG))) == n_torch == CFG.num_params()
    no_norm = dataclasses.replace(CFG, cross_attn_norm=False)
    n_torch = sum(p.numel() for p in WanTransformer3DModel.from_config(no_norm.to_diffusers()).parameters())
    assert count_params(nnx.eval_shape(lambda: WanDiT(no_norm))) == n_torch == no_norm.num_params()
    # FLOPs grow quadratically in tokens only through attention.
    f1, f2 = forward_flops(five, 1000), forward_flops(five, 2000)
    assert f2 > 2 * f1


# ------------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.parametrize(
    "runtime",
    [WanRuntime(), WanRuntime(scan_layers=True, remat="full")],
    ids=["looped", "scanned_remat"],
)
def test_matches_diffusers_per_frame_timesteps(ref, runtime):
    model = transformer_from_state(CFG, ref["state"], runtime=runtime)
    out = _fwd(model, ref["x"], ref["t"], ref["text"])
    assert out.shape == (B, T, H, W, CFG.out_channels)
    assert_close(out, ref["out"], 1e-4)
    if not runtime.scan_layers:
        # The same timesteps given per token ([B, N], diffusers' own Wan2.2 TI2V layout).
        per_token = np.repeat(ref["t"], (H // 2) * (W // 2), axis=1)
        assert_close(_fwd(model, ref["x"], per_token, ref["text"]), ref["out"], 1e-4)


@pytest.mark.parity
def test_matches_diffusers_global_timestep_and_no_cross_norm():
    cfg = dataclasses.replace(CFG, cross_attn_norm=False, out_channels=6)
    model = torch_model(cfg, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 2, 4, cfg.in_channels)).astype(np.float32)
    t = np.array([321.5], np.float32)
    text = rng.standard_normal((1, 5, cfg.text_dim)).astype(np.float32)
    ours = transformer_from_state(cfg, {k: v.numpy() for k, v in model.state_dict().items()})
    assert_close(_fwd(ours, x, t, text), torch_forward(model, x, t, text), 1e-4)


@pytest.mark.parity
def test_explicit_positions(ref):
    model = transformer_from_state(CFG, ref["state"])
    f = nnx.jit(lambda m, x, t, c, p: m(x, t, c, positions=p))
    grid = grid_positions(T, H // 2, W // 2)
    base = np.asarray(f(model, ref["x"], ref["t"], ref["text"], grid))
    assert_close(base, ref["out"], 1e-4)
    # RoPE is relative: shifting every token's time by -5 and height by +7 changes nothing.
    shifted = grid + np.array([-5, 7, 0], np.int32)
    assert_close(np.asarray(f(model, ref["x"], ref["t"], ref["text"], shifted)), base, 1e-5)
    # Moving only frame 0 to t = -2 (a reference-frame layout) does change the output.
    moved = grid.copy()
    moved[: (H // 2) * (W // 2), 0] = -2
    assert np.abs(np.asarray(f(model, ref["x"], ref["t"], ref["text"], moved)) - base).max() > 1e-3
    # Batched float positions equal integer ones.
    batched = np.broadcast_to(grid.astype(np.float32), (B,) + grid.shape)
    assert_close(np.asarray(f(model, ref["x"], ref["t"], ref["text"], batched)), base, 1e-5)


@pytest.mark.parity
def test_hints_looped_and_scanned(ref):
    looped = transformer_from_state(CFG, ref["state"])
    scanned = transformer_from_state(CFG, ref["state"], runtime=WanRuntime(scan_layers=True))
    rng = np.random.default_rng(2)
    n, start = 12, 6  # hints cover tokens [6, 18): the first frame (6 tokens) is left alone
    hints = {k: rng.standard_normal((B, n, CFG.dim)).astype(np.float32) for k in (0, 1)}
    mask = np.ones((B, n), np.float32)
    mask[1, :3] = 0.0

    kw = dict(hint_scale=0.5, hint_start=start, hint_mask=mask)

    @nnx.jit
    def run_looped(m):
        tokens, ctx = m.prepare(ref["x"], ref["t"], ref["text"])
        plain = m.run_blocks(tokens, ctx)
        last = m.run_blocks(tokens, ctx, hints={1: hints[1]}, **kw)
        both = m.run_blocks(tokens, ctx, hints=hints, **kw)
        return plain, last, both, m.finalize(plain, ctx)

    @nnx.jit
    def run_scanned(m):
        tokens, ctx = m.prepare(ref["x"], ref["t"], ref["text"])
        return m.run_blocks(tokens, ctx, hints=np.stack([hints[0], hints[1]]), hint_layers=(0, 1), **kw)

    plain, last, both_l, out = map(np.asarray, run_looped(looped))
    # A hint after the last layer only: exact, token-range-limited and masked.
    np.testing.assert_allclose(last[:, :start], plain[:, :start], atol=1e-6)
    np.testing.assert_allclose(last[:, start:], plain[:, start:] + 0.5 * hints[1] * mask[..., None], atol=1e-5)
    # Hints at every layer: looped (dict form) == scanned (stacked form), and they matter.
    np.testing.assert_allclose(np.asarray(run_scanned(scanned)), both_l, atol=1e-5)
    assert np.abs(both_l[:, :start] - plain[:, :start]).max() > 1e-3  # layer-0 hint propagates via attention
    # prepare / run_blocks / finalize compose to the forward.
    assert_close(out, ref["out"], 1e-4)
    tokens, ctx = looped.prepare(ref["x"], ref["t"], ref["text"])
    with pytest.raises(ValueError, match="outside"):
        looped.run_blocks(tokens, ctx, hints={2: hints[0]})
    with pytest.raises(ValueError, match="exceed"):
        looped.run_blocks(tokens, ctx, hints={0: hints[0]}, hint_start=10)
    # The context of a token range (what a control branch over target frames would use).
    sub = ctx.slice_tokens(6, 18)
    assert sub.mod.shape[1] == 2 and sub.grid == (2, 2, 3) and sub.rope_cos.shape[1] == 12
    with pytest.raises(ValueError, match="group"):
        ctx.slice_tokens(3, 18)
    # The block type is reusable on its own (no mesh needed), e.g. by a control branch that
    # runs over the target tokens with the sliced context (checked abstractly: no compile).
    out = nnx.eval_shape(
        lambda: WanBlock(CFG.dim, CFG.ffn_dim, CFG.num_attention_heads, rngs=nnx.Rngs(1))(tokens[:, 6:], sub)
    )
    assert out.shape == (B, 12, CFG.dim)


@pytest.mark.parity
def test_bf16_compute_tolerance(ref):
    """bfloat16 compute with float32 parameters stays within 3e-2 of the output scale of the
    float32 reference (bf16 has an 8-bit mantissa, ~4e-3 relative per rounding; diffusers' own
    bf16 forward on this model is ~7e-3 off)."""
    model = transformer_from_state(CFG, ref["state"], runtime=WanRuntime(dtype="bfloat16", scan_layers=True))
    assert model.blocks.attn1.to_q.kernel[...].dtype == jnp.float32
    out = nnx.jit(lambda m, *a: m(*a))(model, ref["x"], ref["t"], ref["text"])
    assert out.dtype == jnp.bfloat16
    assert_close(np.asarray(out, np.float32), ref["out"], 3e-2)


@pytest.mark.parity
def test_gradients_scanned_remat_equal_looped(ref):
    def loss(m):
        return jnp.mean(jnp.square(m(ref["x"], ref["t"], ref["text"])))

    grads = []
    for rt in (WanRuntime(), WanRuntime(scan_layers=True, remat="dots_saveable")):
        g = nnx.jit(nnx.grad(loss))(transformer_from_state(CFG, ref["state"], runtime=rt))
        flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g)}
        grads.append(unstack_layers(flat) if rt.scan_layers else flat)
    assert sorted(grads[0]) == sorted(grads[1])
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-7, err_msg=k)
    assert np.abs(grads[0]["blocks.0.attn1.to_q.kernel"]).max() > 0


@pytest.mark.parity
def test_layout_helpers_and_input_errors(ref):
    model = transformer_from_state(CFG, ref["state"], runtime=WanRuntime(scan_layers=True))
    per_layer = canonical_arrays(model)
    assert "blocks.1.ffn.proj_in.kernel" in per_layer and "blocks.ffn.proj_in.kernel" not in per_layer
    restacked = stack_layers(per_layer)
    np.testing.assert_array_equal(restacked["blocks.ffn.proj_in.kernel"][1], per_layer["blocks.1.ffn.proj_in.kernel"])
    with pytest.raises(ValueError, match="channels"):
        model(ref["x"][..., :2], ref["t"], ref["text"])
    with pytest.raises(ValueError, match="divisible"):
        model(ref["x"][:, :, :3], ref["t"], ref["text"])
    with pytest.raises(ValueError, match="timestep"):
        model(ref["x"], ref["t"][:, :2], ref["text"])
    with pytest.raises(ValueError, match="text"):
        model(ref["x"], ref["t"], ref["text"][..., :5])
    with pytest.raises(ValueError, match="remat"):
        WanRuntime(remat="sometimes")
