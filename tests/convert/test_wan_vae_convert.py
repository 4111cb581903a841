"""Wan VAE checkpoint conversion: diffusers and original Wan-AI naming, files, coverage errors."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest


from mirage_jax.convert import wan_vae as cv  # noqa: E402
from mirage_jax.convert.table import ConversionError  # noqa: E402
from mirage_jax.errors import FileFormatError  # noqa: E402
from mirage_jax.models.wan import WanRuntime  # noqa: E402
from mirage_jax.models.wan.vae import WanVAEConfig  # noqa: E402

CONFIGS = {
    "wan2.2": WanVAEConfig.tiny("wan2.2"),
    # num_res_blocks=2 and 4 stages: the layout diffusers' own original-Wan2.1 converter hard-codes.
    "wan2.1": WanVAEConfig.tiny("wan2.1", num_res_blocks=2),
    # Encoder attention blocks (flat list) exercise the attention names of both tables.
    "wan2.1-attn": WanVAEConfig.tiny("wan2.1", attn_scales=(0.5,)),
}


def _torch_state(cfg: WanVAEConfig, seed: int = 0) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_") and k != "clip_output"}
    model = diffusers.AutoencoderKLWan(**kwargs)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    cfg = CONFIGS[request.param]
    sd = _torch_state(cfg)
    model = cv.vae_from_state(cfg, sd)
    return request.param, cfg, sd, model


@pytest.mark.parity
def test_diffusers_round_trip_is_exact(case):
    _, cfg, sd, model = case
    assert len(cv.model_shapes(cfg)) == len(sd)
    _assert_same_state(cv.export_diffusers_state(model), sd)
    # Layout: torch conv weight [out, in, kt, kh, kw] -> kernel [kt, kh, kw, in, out].
    np.testing.assert_array_equal(
        np.asarray(model.encoder.conv_in.kernel[...]), np.transpose(sd["encoder.conv_in.weight"], (2, 3, 4, 1, 0))
    )
    np.testing.assert_array_equal(np.asarray(model.decoder.norm_out.scale[...]), sd["decoder.norm_out.gamma"].reshape(-1))


@pytest.mark.parity
def test_original_round_trip_through_pth(case, tmp_path):
    torch = pytest.importorskip("torch")
    name, cfg, sd, model = case
    original = cv.export_original_state(model)
    assert len(original) == len(sd)
    assert "encoder.conv1.weight" in original and "conv2.bias" in original and "decoder.head.0.gamma" in original
    path = tmp_path / "vae.pth"
    torch.save({k: torch.tensor(v) for k, v in original.items()}, path)
    cfg2, loaded = cv.load_wan_original_vae(path, config=cfg)
    assert cfg2 == cfg
    _assert_same_state(cv.export_diffusers_state(loaded), sd)
    _assert_same_state(cv.export_original_state(loaded), original)


def _diffusers_script_wan22_name(key: str) -> str:
    """The key renaming of diffusers' scripts/convert_wan_to_diffusers.py::convert_vae_22."""
    fixed = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
             "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}  # fmt: skip
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"(encoder|decoder)\.middle\.(\d)\.(.*)", key)
    if m:
        side, idx, rest = m.groups()
        if idx == "1":
            return f"{side}.mid_block.attentions.0.{rest}"
        key = f"{side}.mid_block.resnets.{int(idx) // 2}.{rest}"
    key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = key.replace("encoder.downsamples.", "encoder.down_blocks.").replace("decoder.upsamples.", "decoder.up_blocks.")
    if "residual" in key or "shortcut" in key:
        key = key.replace(".downsamples.", ".resnets.").replace(".upsamples.", ".resnets.")
    elif "resample" in key or "time_conv" in key:
        parts = key.split(".")
        if len(parts) >= 4 and parts[3] in ("downsamples", "upsamples"):
            key = ".".join(parts[:3] + [parts[3][:-1] + "r"] + parts[5:])
    for a, b in ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                 (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut.")):  # fmt: skip
        key = key.replace(a, b)
    return key


@pytest.mark.parity
def test_original_names_agree_with_diffusers_converters(case):
    torch = pytest.importorskip("torch")
    name, cfg, sd, model = case
    if name == "wan2.1-attn":
        pytest.skip("diffusers' converter has no rule for encoder attention blocks")
    original = cv.export_original_state(model)
    if name == "wan2.1":
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        renamed = convert_wan_vae_to_diffusers({k: torch.tensor(v) for k, v in original.items()})
        renamed = {k: v.numpy() for k, v in renamed.items()}
    else:
        renamed = {_diffusers_script_wan22_name(k): v for k, v in original.items()}
    _assert_same_state(renamed, sd)


@pytest.mark.parity
def test_original_safetensors_needs_no_torch(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    cfg = CONFIGS["wan2.2"]
    sd = _torch_state(cfg, seed=1)
    original = cv.export_original_state(cv.vae_from_state(cfg, sd))
    path = tmp_path / "Wan2.2_VAE.safetensors"
    save_file(original, str(path))
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    _, model = cv.load_wan_original_vae(path, config=cfg)
    _assert_same_state(cv.export_original_state(model), original)
    with pytest.raises(ImportError, match="PyTorch"):
        cv.read_torch_checkpoint(tmp_path / "missing_torch.pth")


@pytest.mark.parity
def test_original_default_config_is_detected_from_keys(tmp_path):
    """Without a config the nested Wan2.2 layout selects wan22(): a tiny file then mismatches in shape."""
    torch = pytest.importorskip("torch")
    cfg = CONFIGS["wan2.2"]
    sd = _torch_state(cfg)
    original = cv.export_original_state(cv.vae_from_state(cfg, sd))
    path = tmp_path / "tiny.pth"
    torch.save({k: torch.tensor(v) for k, v in original.items()}, path)
    with pytest.raises(ConversionError, match=r"shape mismatches \((?!0\))") as err:
        cv.load_wan_original_vae(path)
    assert "model wants (3, 3, 3, 1024, 1024)" in str(err.value)  # full Wan2.2 decoder width
    assert cv._original_config_for(original) == WanVAEConfig.wan22()


@pytest.mark.parity
def test_coverage_errors_name_the_keys():
    cfg = CONFIGS["wan2.2"]
    sd = _torch_state(cfg)
    missing = dict(sd)
    del missing["decoder.up_blocks.1.upsampler.time_conv.bias"]
    with pytest.raises(ConversionError, match=r"decoder\.up_blocks\.1\.upsampler\.time_conv\.bias"):
        cv.convert_diffusers_state(missing, cfg)
    extra = dict(sd, **{"encoder.bogus.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected source keys \(1\):\s+encoder\.bogus\.weight"):
        cv.convert_diffusers_state(extra, cfg)
    wrong = dict(sd, **{"encoder.conv_in.weight": np.zeros((8, 12, 3, 3, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"shape mismatches \(1\):\s+encoder\.conv_in\.weight"):
        cv.convert_diffusers_state(wrong, cfg)
    # A Wan2.1 checkpoint into a Wan2.2 model: many keys have nowhere to go.
    with pytest.raises(ConversionError, match="mapped to no model parameter"):
        cv.convert_diffusers_state(_torch_state(CONFIGS["wan2.1"]), cfg)


@pytest.mark.parity
@pytest.mark.parametrize("sharded", [False, True])
def test_load_diffusers_directory(tmp_path, sharded):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cfg = CONFIGS["wan2.2"]
    torch.manual_seed(3)
    tm = diffusers.AutoencoderKLWan(**{k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_") and k != "clip_output"})
    root = tmp_path / "pipeline"
    tm.save_pretrained(root / "vae", safe_serialization=True, max_shard_size="2MB" if sharded else "10GB")
    assert (root / "vae" / cv.SAFETENSORS_INDEX).is_file() == sharded
    cfg2, model = cv.load_diffusers_vae(root)  # a pipeline folder: the vae subfolder is used
    assert cfg2 == WanVAEConfig.from_diffusers(dict(tm.config)) == cfg
    _assert_same_state(cv.export_diffusers_state(model), {k: v.numpy() for k, v in tm.state_dict().items()})


@pytest.mark.parity
def test_save_diffusers_vae_loads_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = CONFIGS["wan2.1"]
    sd = _torch_state(cfg, seed=4)
    model = cv.vae_from_state(cfg, sd)
    out = cv.save_diffusers_vae(model, cfg, tmp_path / "vae")
    with open(out / cv.CONFIG_NAME) as f:
        assert json.load(f)["_class_name"] == "AutoencoderKLWan"
    tm = diffusers.AutoencoderKLWan.from_pretrained(out)
    _assert_same_state({k: v.numpy() for k, v in tm.state_dict().items()}, sd)
    assert WanVAEConfig.from_diffusers(dict(tm.config)) == cfg
    # And back: the saved folder loads into an identical model.
    cfg3, again = cv.load_diffusers_vae(out)
    assert cfg3 == cfg
    _assert_same_state(cv.export_diffusers_state(again), sd)


@pytest.mark.parity
def test_bf16_checkpoint_round_trip(tmp_path):
    import jax.numpy as jnp
    import ml_dtypes

    cfg = CONFIGS["wan2.2"]
    sd = {k: v.astype(ml_dtypes.bfloat16) for k, v in _torch_state(cfg, seed=5).items()}
    model = cv.vae_from_state(cfg, sd, runtime=WanRuntime(param_dtype="bfloat16"))
    assert model.encoder.conv_in.kernel[...].dtype == jnp.bfloat16
    cv.save_diffusers_vae(model, cfg, tmp_path)
    _, again = cv.load_diffusers_vae(tmp_path, runtime=WanRuntime(param_dtype="bfloat16"))
    _assert_same_state(cv.export_diffusers_state(again), sd)


def test_directory_errors(tmp_path):
    with pytest.raises(FileFormatError, match="not a directory"):
        cv.load_diffusers_vae(tmp_path / "nope")
    with pytest.raises(FileFormatError, match="config.json"):
        cv.load_diffusers_vae(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["wan2.2"].to_diffusers()))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileFormatError, match="only safetensors"):
        cv.load_diffusers_vae(tmp_path)
    with pytest.raises(FileFormatError, match="no such checkpoint"):
        cv.load_wan_original_vae(tmp_path / "Wan2.2_VAE.pth")
