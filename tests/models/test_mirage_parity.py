"""MirageModel vs PyTorch: diffusers' WanVACETransformer3DModel (R = 0, one timestep per sample)
and a torch transcription of spec 10.2 built from the same diffusers modules (reference frames
with RoPE offsets, hint placement on the non-reference tokens, per-frame timesteps).

Semantics checked against spec 10.3 (diffusers' VACE): ``vace_blocks.0.proj_in`` is before_proj
(``c = proj_in(c) + x`` with x the patch-embedded tokens), ``vace_blocks.n.proj_out`` is after_proj,
hint ``n`` is added after backbone layer ``vace_layers[n]`` times ``control_hidden_states_scale[n]``.
Differences: diffusers has one timestep per sample in its VACE model (no per-token modulation),
no reference frames, and zero-pads a shorter control sequence to the full token count and adds
hints to every token, whereas the reference (and MirageModel) runs the branch on the non-reference
tokens only; diffusers requires layer 0 in ``vace_layers``, the reference does not.
"""

import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert.table import convert, flat_state_shapes
from mirage_jax.models.mirage import MirageConfig, MirageModel, mirage_positions
from mirage_jax.models.mirage.names import mirage_ignore, mirage_rules
from mirage_jax.models.wan.rope import inverse_frequencies, rope_axis_dims

pytestmark = pytest.mark.parity

CFG = MirageConfig.tiny()  # control layers (0, 1)
B, H, W, L = 2, 4, 6, 5  # 2 x 3 tokens per latent frame


@pytest.fixture(scope="module")
def vace():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = CFG.dit.to_diffusers()
    cfg.update(_class_name="WanVACETransformer3DModel", vace_layers=list(CFG.control_layers),
               vace_in_channels=CFG.control_in_channels)
    for k in ("pos_embed_seq_len",):
        cfg.pop(k, None)
    model = diffusers.WanVACETransformer3DModel.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # zero-init proj_out / biases become non-trivial
    source = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = MirageModel(CFG, rngs=nnx.Rngs(0))
    arrays = convert(source, mirage_rules("diffusers"), flat_state_shapes(ours), ignore=mirage_ignore("diffusers"))
    state = nnx.state(ours, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        var.set_value(np.asarray(arrays.pop(".".join(map(str, path)))))
    nnx.update(ours, state)
    assert not arrays
    return model, ours


def _call(ours, *args, **kw):
    return np.asarray(nnx.jit(lambda m, *a: m(*a, **kw))(ours, *args))


def assert_close(a, b, rel=1e-4):
    scale = np.abs(b).max()
    err = np.abs(a - b).max()
    assert err <= rel * scale, f"max abs diff {err:.3e} > {rel:g} x output scale {scale:.3e}"


def test_vace_parity_no_reference(vace):
    import torch

    model, ours = vace
    rng = np.random.default_rng(0)
    f = 3
    lat = rng.standard_normal((B, f, H, W, 4)).astype(np.float32)
    ctrl = rng.standard_normal((B, f, H, W, 8)).astype(np.float32)
    text = rng.standard_normal((B, L, 24)).astype(np.float32)
    t = np.array([700.0, 250.0], np.float32)
    cf = lambda a: torch.from_numpy(a).permute(0, 4, 1, 2, 3)  # noqa: E731
    with torch.no_grad():
        want = model(cf(lat), torch.from_numpy(t), torch.from_numpy(text), control_hidden_states=cf(ctrl),
                     return_dict=False)[0].permute(0, 2, 3, 4, 1).numpy()
    got = _call(ours, lat, np.repeat(t[:, None], f, axis=1), text, ctrl, num_reference=0)
    assert_close(got, want)


def _rope_table(positions: np.ndarray, head_dim: int):
    """diffusers-layout (cos, sin) [1, N, 1, D]: float64 angles, each value repeated per pair."""
    import torch

    cos, sin = [], []
    for axis, dim in enumerate(rope_axis_dims(head_dim)):
        ang = np.outer(positions[:, axis].astype(np.float64), inverse_frequencies(dim))
        cos.append(np.repeat(np.cos(ang), 2, axis=1))
        sin.append(np.repeat(np.sin(ang), 2, axis=1))
    as_t = lambda parts: torch.from_numpy(np.concatenate(parts, 1).astype(np.float32))[None, :, None]  # noqa: E731
    return as_t(cos), as_t(sin)


def torch_mirage(model, lat, ts, text, ctrl, r, layers, scale):
    """Spec 10.2 in torch with diffusers' modules (a transcription, not our code)."""
    import torch
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    cfg = model.config
    b, f, h, w, _ = lat.shape
    hp, wp = h // 2, w // 2
    tpf = hp * wp
    n = f * tpf
    cf = lambda a: torch.from_numpy(a).permute(0, 4, 1, 2, 3)  # noqa: E731
    # Positions: reference t = -R..-1, heights + h'; target + preceding t = 0..T+P-1.
    pos = []
    for i in range(f):
        for y in range(hp):
            for x in range(wp):
                pos.append((i - r, y + (hp if i < r else 0), x))
    rope = _rope_table(np.asarray(pos), cfg.attention_head_dim)
    rope_c = tuple(a[:, r * tpf :] for a in rope)
    with torch.no_grad():
        x = model.patch_embedding(cf(lat)).flatten(2).transpose(1, 2)
        ts_tok = torch.from_numpy(np.repeat(ts, tpf, axis=1))  # [B, N]
        temb, proj, enc, _ = model.condition_embedder(ts_tok.flatten(), torch.from_numpy(text), None, timestep_seq_len=n)
        proj = proj.unflatten(2, (6, -1))
        c = model.vace_patch_embedding(cf(ctrl)).flatten(2).transpose(1, 2)
        hints = []
        for k, vb in enumerate(model.vace_blocks):
            blk = WanTransformerBlock(cfg.num_attention_heads * cfg.attention_head_dim, cfg.ffn_dim,
                                      cfg.num_attention_heads, cfg.qk_norm, cfg.cross_attn_norm, cfg.eps)
            sd = {key: v for key, v in vb.state_dict().items() if not key.startswith(("proj_in.", "proj_out."))}
            blk.load_state_dict(sd)
            if k == 0:
                c = vb.proj_in(c) + x[:, r * tpf :]
            c = blk(c, enc, proj[:, r * tpf :], rope_c)
            hints.append(vb.proj_out(c))
        hs = x
        for i, blk in enumerate(model.blocks):
            hs = blk(hs, enc, proj, rope)
            if i in layers:
                hs = torch.cat([hs[:, : r * tpf], hs[:, r * tpf :] + scale * hints[layers.index(i)]], dim=1)
        shift, sc = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        hs = (model.norm_out(hs.float()) * (1 + sc.squeeze(2)) + shift.squeeze(2)).type_as(hs)
        hs = model.proj_out(hs).reshape(b, f, hp, wp, 1, 2, 2, -1)
        out = hs.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return out.permute(0, 2, 3, 4, 1).numpy()


def test_reference_frames_rope_offsets_hints_per_frame_timesteps(vace):
    model, ours = vace
    rng = np.random.default_rng(1)
    r, t, p = 2, 3, 1
    f = r + t + p
    lat = rng.standard_normal((B, f, H, W, 4)).astype(np.float32)
    ctrl = rng.standard_normal((B, t + p, H, W, 8)).astype(np.float32)
    text = rng.standard_normal((B, L, 24)).astype(np.float32)
    ts = np.zeros((B, f), np.float32)
    ts[:, r + 1 : r + t] = [[600.0], [150.0]]
    want = torch_mirage(model, lat, ts, text, ctrl, r, list(CFG.control_layers), CFG.hint_scale)
    got = _call(ours, lat, ts, text, ctrl, num_reference=r)
    assert_close(got, want)
    # The transcription's positions are the ones MirageModel uses.
    pos = mirage_positions(r, f, H // 2, W // 2)
    assert pos[0].tolist() == [-2, 2, 0] and pos[r * 6].tolist() == [0, 0, 0]
