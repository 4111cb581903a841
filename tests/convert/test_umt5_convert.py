"""umT5 checkpoints: transformers directories (single / sharded / pipeline text_encoder), the
original Wan naming (.pth through torch, .safetensors without), exact round trips, placement
on a mesh, coverage errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert.safetensors_io import save_safetensors
from mirage_jax.convert.table import ConversionError
from mirage_jax.convert.umt5 import (
    config_from_wan_state,
    encoder_from_state,
    export_state,
    load_umt5,
    load_wan_original_umt5,
    save_umt5,
)
from mirage_jax.errors import FileFormatError
from mirage_jax.models.umt5 import UMT5Config, UMT5Encoder
from mirage_jax.models.wan.layers import WanRuntime

# Wan's T5 has max_distance 128 fixed; tiny otherwise.
CFG = UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


@pytest.fixture(scope="module")
def encoder():
    return UMT5Encoder(CFG, rngs=nnx.Rngs(1))


def _params(model) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_save_load_round_trip_exact(encoder, tmp_path):
    save_umt5(encoder, tmp_path / "single")
    config, loaded = load_umt5(tmp_path / "single")
    assert config == CFG
    _assert_same_params(encoder, loaded)
    # Sharded with an index, found through a pipeline's text_encoder/ folder.
    save_umt5(encoder, tmp_path / "pipe" / "text_encoder", max_shard_bytes=4096)
    assert (tmp_path / "pipe" / "text_encoder" / "model.safetensors.index.json").is_file()
    _, sharded = load_umt5(tmp_path / "pipe")
    _assert_same_params(encoder, sharded)


def test_embedding_stored_under_the_encoder_name(encoder, tmp_path):
    state = export_state(encoder)
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    _assert_same_params(encoder, encoder_from_state(CFG, state))
    # Both present (transformers ties them): the shared one is read; a full model's decoder is skipped.
    state = export_state(encoder)
    state["encoder.embed_tokens.weight"] = np.zeros_like(state["shared.weight"])
    state["decoder.final_layer_norm.weight"] = np.ones(CFG.d_model, np.float32)
    _assert_same_params(encoder, encoder_from_state(CFG, state))


def test_wan_naming_safetensors_without_torch(encoder, tmp_path):
    state = export_state(encoder, "wan")
    assert "blocks.1.ffn.gate.0.weight" in state and "blocks.0.pos_embedding.embedding.weight" in state
    np.testing.assert_array_equal(state["blocks.0.ffn.gate.0.weight"], np.asarray(encoder.blocks[0].ffn.wi_0.kernel[...]).T)
    assert config_from_wan_state(state) == CFG
    save_safetensors(tmp_path / "t5.safetensors", state)
    config, loaded = load_umt5(tmp_path / "t5.safetensors")
    assert config == CFG
    _assert_same_params(encoder, loaded)


def test_wan_pth_through_torch(encoder, tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(np.array(v)).to(torch.bfloat16) for k, v in export_state(encoder, "wan").items()}
    torch.save(state, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    config, loaded = load_wan_original_umt5(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    assert config == CFG
    for k, v in export_state(loaded, "wan").items():
        np.testing.assert_array_equal(v, state[k].float().numpy(), err_msg=k)  # bf16 values exactly


@pytest.mark.parity
def test_transformers_round_trip_exact(encoder, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ref = transformers.UMT5EncoderModel(transformers.UMT5Config(**CFG.to_transformers())).eval()
    ref.save_pretrained(tmp_path / "hf")
    config, loaded = load_umt5(tmp_path / "hf")
    assert config == CFG
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    got = export_state(loaded)
    assert set(want) - set(got) == {"encoder.embed_tokens.weight"}  # tied to shared.weight
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)
    # ... and back: transformers reads what we write, bit for bit.
    save_umt5(loaded, tmp_path / "ours")
    back = transformers.UMT5EncoderModel.from_pretrained(tmp_path / "ours")
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_placed_on_a_mesh(encoder, tmp_path):
    from mirage_jax.sharding import make_mesh

    save_umt5(encoder, tmp_path / "enc")
    mesh = make_mesh((1, 8), ("data", "fsdp"))
    _, sharded = load_umt5(tmp_path / "enc", mesh=mesh, runtime=WanRuntime(scan_layers=True))
    emb = sharded.token_embedding.get_value()
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # ("vocab", "embed")
    assert sharded.blocks.attn.q.kernel.get_value().shape == (2, 16, 16)  # stacked layers
    ids = np.arange(24, dtype=np.int32).reshape(2, 12) % CFG.vocab_size
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    run = nnx.jit(lambda enc, i, m: enc(i, m))
    np.testing.assert_allclose(np.asarray(run(sharded, ids, mask)), np.asarray(run(encoder, ids, mask)), rtol=1e-5, atol=1e-5)


def test_coverage_and_file_errors(encoder, tmp_path):
    state = export_state(encoder)
    missing = {k: v for k, v in state.items() if k != "encoder.block.1.layer.0.SelfAttention.k.weight"}
    with pytest.raises(ConversionError, match=r"not filled \(1\)"):
        encoder_from_state(CFG, missing)
    with pytest.raises(ConversionError, match=r"unexpected source keys \(1\):\s+encoder.block.0.layer.2.x"):
        encoder_from_state(CFG, {**state, "encoder.block.0.layer.2.x": np.zeros(1)})
    wrong = dict(state, **{"encoder.final_layer_norm.weight": np.ones(CFG.d_model + 1, np.float32)})
    with pytest.raises(ConversionError, match="shape mismatches"):
        encoder_from_state(CFG, wrong)
    with pytest.raises(ConversionError, match="pos_embedding"):
        config_from_wan_state({"token_embedding.weight": np.zeros((4, 4))})
    save_umt5(encoder, tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    (tmp_path / "enc" / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(FileFormatError, match=r"config.json: model_type 't5'"):
        load_umt5(tmp_path / "enc")
    with pytest.raises(FileFormatError, match="does not exist"):
        load_umt5(tmp_path / "nowhere")


@pytest.mark.parity
def test_wan_table_matches_a_transcription_of_wan_t5(encoder):
    """The Wan names play the roles the table gives them: a torch transcription of Wan's
    ``T5Encoder`` (wan/modules/t5.py, shared_pos=False) fed the Wan-named export gives our output."""
    torch = pytest.importorskip("torch")
    import math

    w = {k: torch.from_numpy(np.array(v)) for k, v in export_state(encoder, "wan").items()}
    ids = np.arange(30, dtype=np.int64).reshape(2, 15) % CFG.vocab_size
    mask = np.ones_like(ids)
    mask[1, 9:] = 0

    def norm(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def buckets(n, num=CFG.relative_attention_num_buckets, max_dist=128):
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        num //= 2
        out = (rel > 0).long() * num
        rel = rel.abs()
        exact = num // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (num - exact)).long()
        return out + torch.where(rel < exact, rel, large.clamp(max=num - 1))

    x = w["token_embedding.weight"][torch.from_numpy(ids)]
    m = torch.from_numpy(mask)
    b, n, h = 2, 15, CFG.num_heads
    for i in range(CFG.num_layers):
        p = f"blocks.{i}."
        e = w[p + "pos_embedding.embedding.weight"][buckets(n)].permute(2, 0, 1)[None]
        y = norm(x, w[p + "norm1.weight"])
        q, k, v = (torch.nn.functional.linear(y, w[p + f"attn.{c}.weight"]).view(b, n, h, -1) for c in "qkv")
        bias = e.masked_fill(m.view(b, 1, 1, n) == 0, torch.finfo(x.dtype).min)
        a = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, -1)
        x = x + torch.nn.functional.linear(torch.einsum("bnij,bjnc->binc", a, v).reshape(b, n, -1), w[p + "attn.o.weight"])
        y = norm(x, w[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(y, w[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + torch.nn.functional.linear(torch.nn.functional.linear(y, w[p + "ffn.fc1.weight"]) * gate, w[p + "ffn.fc2.weight"])
    ref = norm(x, w["norm.weight"]).numpy()
    out = np.asarray(encoder(ids.astype(np.int32), mask))
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(out[1, :9], ref[1, :9], atol=1e-5 * np.abs(ref).max())
    assert np.all(out[1, 9:] == 0)
