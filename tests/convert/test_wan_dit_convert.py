"""Wan DiT checkpoint conversion: diffusers / original naming round trips, files, CLI, coverage."""

import json

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert import cli
from mirage_jax.convert.safetensors_io import open_safetensors, save_safetensors
from mirage_jax.convert.table import ConversionError
from mirage_jax.convert.wan_dit import (
    config_from_wan_original,
    detect_format,
    export_state,
    load_diffusers_transformer,
    transformer_from_state,
    load_transformer,
    load_wan_original_transformer,
    save_diffusers_transformer,
    save_wan_original_transformer,
)
from mirage_jax.models.wan.dit import WanDiTConfig, WanRuntime

CFG = WanDiTConfig.tiny()


@pytest.fixture(scope="module")
def ref():
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(CFG.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4, CFG.in_channels)).astype(np.float32)
    t = np.array([[0.0, 600.0]], np.float32)
    text = rng.standard_normal((1, 5, CFG.text_dim)).astype(np.float32)
    with torch.no_grad():
        out = model(
            torch.from_numpy(x).permute(0, 4, 1, 2, 3),
            torch.from_numpy(np.repeat(t, 4, axis=1)),
            torch.from_numpy(text),
            return_dict=False,
        )[0].permute(0, 2, 3, 4, 1).numpy()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    fwd = nnx.jit(lambda m: m(x, t, text))
    return dict(torch=model, state=state, x=x, t=t, text=text, out=out, fwd=fwd)


def _check_output(ref, model):
    out = np.asarray(ref["fwd"](model))
    assert np.abs(out - ref["out"]).max() <= 1e-4 * np.abs(ref["out"]).max()


def _assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parity
@pytest.mark.parametrize("scan", [False, True], ids=["looped", "scanned"])
def test_diffusers_round_trip_is_exact(ref, scan):
    model = transformer_from_state(CFG, ref["state"], runtime=WanRuntime(scan_layers=scan))
    _assert_same_state(export_state(model, "diffusers"), ref["state"])


# diffusers' scripts/convert_wan_to_diffusers.py TRANSFORMER_KEYS_RENAME_DICT (T2V / TI2V part),
# applied in order with str.replace as that script does.
_DIFFUSERS_SCRIPT_RENAMES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
)


def _diffusers_script_name(key: str) -> str:
    for old, new in _DIFFUSERS_SCRIPT_RENAMES:
        key = key.replace(old, new)
    return key


@pytest.mark.parity
def test_original_naming_round_trip(ref, tmp_path):
    model = transformer_from_state(CFG, ref["state"])
    original = export_state(model, "wan")
    # Spot-check the original names (norm3 is the cross-attention norm there).
    np.testing.assert_array_equal(original["blocks.1.norm3.weight"], ref["state"]["blocks.1.norm2.weight"])
    np.testing.assert_array_equal(original["blocks.0.self_attn.o.weight"], ref["state"]["blocks.0.attn1.to_out.0.weight"])
    np.testing.assert_array_equal(original["head.modulation"], ref["state"]["scale_shift_table"])
    np.testing.assert_array_equal(original["time_projection.1.bias"], ref["state"]["condition_embedder.time_proj.bias"])
    assert "blocks.0.norm2.weight" not in original and len(original) == len(ref["state"])
    assert detect_format(original) == "wan" and detect_format(ref["state"]) == "diffusers"
    # Every original name, renamed the way diffusers' scripts/convert_wan_to_diffusers.py does
    # (ordered substring replacements, norm2 <-> norm3 swapped), gives the diffusers name.
    _assert_same_state({_diffusers_script_name(k): v for k, v in original.items()}, ref["state"])

    # Write it as a release would (file + original config.json) and load it back.
    path = save_wan_original_transformer(model, tmp_path / "wan" / "diffusion_pytorch_model.safetensors")
    orig_cfg = {"_class_name": "WanModel", "model_type": "ti2v", "dim": CFG.dim, "num_heads": CFG.num_attention_heads,
                "in_dim": CFG.in_channels, "out_dim": CFG.out_channels, "ffn_dim": CFG.ffn_dim, "freq_dim": CFG.freq_dim,
                "text_dim": CFG.text_dim, "num_layers": CFG.num_layers, "patch_size": [1, 2, 2], "window_size": [-1, -1],
                "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "text_len": 512}
    (tmp_path / "wan" / "config.json").write_text(json.dumps(orig_cfg))
    assert config_from_wan_original(orig_cfg) == CFG
    cfg, loaded = load_wan_original_transformer(path, runtime=WanRuntime(scan_layers=True))
    assert cfg == CFG
    _assert_same_state(export_state(loaded, "diffusers"), ref["state"])
    _assert_same_state(export_state(loaded, "wan"), original)
    cfg, auto = load_transformer(tmp_path / "wan")
    _check_output(ref, auto)
    with pytest.raises(NotImplementedError, match="model_type"):
        config_from_wan_original({**orig_cfg, "model_type": "i2v"})


@pytest.mark.parity
def test_coverage_errors_name_the_keys(ref):
    state = dict(ref["state"])
    del state["blocks.1.attn2.norm_k.weight"]
    state["blocks.0.attn1.to_qq.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ConversionError) as err:
        transformer_from_state(CFG, state)
    msg = str(err.value)
    assert "blocks.1.attn2.norm_k.scale" in msg and "blocks.0.attn1.to_qq.weight" in msg
    # A checkpoint with a layer more than the config.
    state = dict(ref["state"])
    state["blocks.2.scale_shift_table"] = state["blocks.1.scale_shift_table"]
    with pytest.raises(ConversionError, match="blocks.2.scale_shift_table"):
        transformer_from_state(CFG, state, runtime=WanRuntime(scan_layers=True))
    # Wrong shape.
    state = dict(ref["state"])
    state["proj_out.weight"] = state["proj_out.weight"][:-1]
    with pytest.raises(ConversionError, match="proj_out"):
        transformer_from_state(CFG, state)
    # Original naming: drop one, add one.
    original = export_state(transformer_from_state(CFG, ref["state"]), "wan")
    del original["blocks.0.cross_attn.k.bias"]
    original["blocks.0.norm2.weight"] = np.ones(CFG.dim, np.float32)
    with pytest.raises(ConversionError) as err:
        transformer_from_state(CFG, original, format="wan")
    assert "blocks.0.attn2.to_k.bias" in str(err.value) and "blocks.0.norm2.weight" in str(err.value)


@pytest.mark.parity
def test_diffusers_directories_sharded_and_bf16(ref, tmp_path):
    # diffusers' own save_pretrained, split into shards with an index.
    torch = pytest.importorskip("torch")
    ref["torch"].save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    cfg, model = load_diffusers_transformer(tmp_path / "sharded")
    assert cfg == CFG
    _check_output(ref, model)
    # A pipeline directory with a transformer/ subfolder, bf16 weights (read via ml_dtypes).
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in ref["state"].items()}
    save_safetensors(tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors", bf16)
    (tmp_path / "pipe" / "transformer" / "config.json").write_text(json.dumps(CFG.to_diffusers()))
    _, model = load_diffusers_transformer(tmp_path / "pipe", runtime=WanRuntime(param_dtype="bfloat16"))
    _assert_same_state(export_state(model, "diffusers"), bf16)
    # torch reads our bf16 file identically.
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert back["proj_out.weight"].dtype == torch.bfloat16
    np.testing.assert_array_equal(back["proj_out.weight"].float().numpy(), bf16["proj_out.weight"].astype(np.float32))


@pytest.mark.parity
def test_save_diffusers_transformer_loads_in_pytorch(ref, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import WanTransformer3DModel
    model = transformer_from_state(CFG, ref["state"], runtime=WanRuntime(scan_layers=True))
    save_diffusers_transformer(model, None, tmp_path / "out", max_shard_bytes=30_000)
    back = WanTransformer3DModel.from_pretrained(tmp_path / "out").eval()
    assert WanDiTConfig.from_diffusers(dict(back.config)) == CFG
    with torch.no_grad():
        out = back(
            torch.from_numpy(ref["x"]).permute(0, 4, 1, 2, 3),
            torch.from_numpy(np.repeat(ref["t"], 4, axis=1)),
            torch.from_numpy(ref["text"]),
            return_dict=False,
        )[0].permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_array_equal(out, ref["out"])  # same weights, same torch code: bit-identical


@pytest.mark.parity
def test_convert_cli(ref, tmp_path):
    ref["torch"].save_pretrained(tmp_path / "src")
    out = tmp_path / "orbax"
    assert cli.main(["--transformer", str(tmp_path / "src"), "--out", str(out)]) == 0
    cfg, model = load_transformer(out / "transformer", runtime=WanRuntime(scan_layers=True))
    assert cfg == CFG
    _check_output(ref, model)
    # Existing output without --force, bad arguments.
    assert cli.main(["--transformer", str(tmp_path / "src"), "--out", str(out)]) == 2
    assert cli.main(["--out", str(out)]) == 2
    assert cli.main(["--transformer", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2


def test_safetensors_reader_checks(tmp_path):
    save_safetensors(tmp_path / "a.safetensors", {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    ckpt = open_safetensors(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(ckpt["x"], np.arange(6).reshape(2, 3))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="too short"):
        open_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        open_safetensors(tmp_path / "missing.safetensors")
