"""Mirage weights: the reference's DiT / control (VACE) / LoRA files <-> MirageModel (spec 10.1, 10.3, 10.4)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert import load_mirage
from mirage_jax.convert.mirage import (
    export_control,
    export_lora,
    read_control_file,
    read_lora_file,
    save_mirage_reference,
)
from mirage_jax.convert.place import flat_variables, target_shardings
from mirage_jax.convert.safetensors_io import open_safetensors, save_safetensors
from mirage_jax.convert.table import ConversionError, export
from mirage_jax.errors import ConfigError, FileFormatError
from mirage_jax.models.mirage import MirageConfig, MirageModel, merge_lora
from mirage_jax.models.mirage.names import backbone_rules, control_rules
from mirage_jax.models.wan.layers import WanRuntime

CFG = MirageConfig.tiny()  # 2 layers, control blocks after both (the tiny default list would be (0,))
RANK = 3
# Spec 10.4: the reference's module names per block.
MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The reference's three files, random weights (NumPy, no model built), spec key names."""
    d = tmp_path_factory.mktemp("mirage_ref")
    rng = np.random.default_rng(0)
    shapes = {k: v.get_value().shape for k, v in flat_variables(nnx.eval_shape(lambda: MirageModel(CFG))).items()}
    arrays = {k: (0.2 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    dit = export({k: v for k, v in arrays.items() if k.startswith("dit.")}, backbone_rules("wan"))
    control = export({k: v for k, v in arrays.items() if k.startswith("control.")}, control_rules("wan"))
    save_safetensors(d / "dit.safetensors", dit)
    save_safetensors(d / "vace.safetensors", control)
    rng = np.random.default_rng(0)
    lora = {}
    for n in range(CFG.dit.num_layers):
        for mod in MODULES:
            w = dit[f"blocks.{n}.{mod}.weight"]  # [out, in]
            lora[f"pipe.dit.blocks.{n}.{mod}.lora_A.weight"] = (0.2 * rng.standard_normal((RANK, w.shape[1]))).astype(np.float32)
            lora[f"pipe.dit.blocks.{n}.{mod}.lora_B.weight"] = (0.2 * rng.standard_normal((w.shape[0], RANK))).astype(np.float32)
    save_safetensors(d / "lora.safetensors", lora)
    return dict(dir=d, dit=dit, control=control, lora=lora, dit_file=d / "dit.safetensors",
                control_file=d / "vace.safetensors", lora_file=d / "lora.safetensors")


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    lat = rng.standard_normal((1, 4, 4, 4, 4)).astype(np.float32)  # R=1, T=2, P=1
    ctrl = rng.standard_normal((1, 3, 4, 4, 8)).astype(np.float32)
    text = rng.standard_normal((1, 3, 24)).astype(np.float32)
    ts = np.array([0.0, 0.0, 700.0, 0.0], np.float32)
    return lat, ts, text, ctrl


@nnx.jit
def _fwd(model, lat, ts, text, ctrl):
    return model(lat, ts, text, ctrl, num_reference=1)


def _arrays(model):
    return {k: np.asarray(jax.device_get(v.get_value())) for k, v in flat_variables(model).items()}


def test_reference_key_names(ref):
    c = ref["control"]
    dim = CFG.dit.dim
    assert c["vace_patch_embedding.weight"].shape == (dim, 8, 1, 2, 2)
    assert c["vace_blocks.0.before_proj.weight"].shape == (dim, dim) and "vace_blocks.1.before_proj.weight" not in c
    for n in (0, 1):
        for k in ("after_proj.weight", "self_attn.q.weight", "cross_attn.o.bias", "norm3.weight", "ffn.2.weight",
                  "modulation", "self_attn.norm_k.weight"):
            assert f"vace_blocks.{n}.{k}" in c


def test_control_file_prefixes_and_nestings(ref, tmp_path):
    """Dotted prefixes / nestings of spec 10.3 in a safetensors file (keys are flat there)."""
    for prefix in ("", "module.", "model.", "pipe.vace.", "vace.", "generator.vace.", "state_dict.", "module.state_dict."):
        save_safetensors(tmp_path / "c.safetensors", {prefix + k: v for k, v in ref["control"].items()})
        got, _ = read_control_file(tmp_path / "c.safetensors")
        assert sorted(got) == sorted(ref["control"])
        for k, v in ref["control"].items():
            np.testing.assert_array_equal(np.asarray(got[k]), v)


@pytest.mark.parity  # needs torch to write the .pth files it reads
def test_control_torch_nested(ref, tmp_path):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in ref["control"].items()}
    for tree in ({"state_dict": tensors}, {"generator": {"vace": tensors}}, {"vace": tensors},
                 {"module." + k: v for k, v in tensors.items()}):
        torch.save(tree, tmp_path / "c.pth")
        got, _ = read_control_file(tmp_path / "c.pth")
        assert sorted(got) == sorted(ref["control"])
        for k, v in ref["control"].items():
            np.testing.assert_array_equal(got[k], v)
    torch.save({"vace": tensors, "other": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(FileFormatError, match="other"):
        read_control_file(tmp_path / "bad.pth")


def test_lora_file_prefixes(ref, tmp_path):
    bare = {k[len("pipe.dit."):]: v for k, v in ref["lora"].items()}
    for prefix in ("pipe.dit.", "module.", "model.", "dit.", "base_model.model.", "module.pipe.dit."):
        for default in (False, True):
            tree = {prefix + (k.replace(".weight", ".default.weight") if default else k): v for k, v in bare.items()}
            save_safetensors(tmp_path / "l.safetensors", tree)
            got, _ = read_lora_file(tmp_path / "l.safetensors")
            assert sorted(got) == sorted(bare)
            np.testing.assert_array_equal(np.asarray(got["blocks.1.ffn.2.lora_B.weight"]), bare["blocks.1.ffn.2.lora_B.weight"])


@pytest.fixture(scope="module")
def unfused(ref):
    """Training convention, alpha == r (scale 1), with its forward."""
    cfg, model = load_mirage(ref["dit_file"], ref["control_file"], ref["lora_file"], config=CFG,
                             lora_alpha=float(RANK), fuse_lora=False)
    return cfg, model, np.asarray(_fwd(model, *_inputs()))


def test_round_trip_exact_and_fused_vs_unfused(ref, unfused):
    """Control + LoRA in the reference naming load and export back bit for bit; the training
    scale with alpha == r equals the reference's inference fusion with alpha 1."""
    cfg_u, model, out = unfused
    assert (cfg_u.lora_rank, cfg_u.lora_alpha, cfg_u.control_layers) == (RANK, float(RANK), (0, 1))
    for exported, original in ((export_control(model), ref["control"]), (export_lora(model), ref["lora"])):
        assert sorted(exported) == sorted(original)
        for k, v in original.items():
            np.testing.assert_array_equal(exported[k], v, err_msg=k)
    np.testing.assert_array_equal(np.asarray(model.dit.blocks[1].attn1.to_q.lora_a[...]),
                                  ref["lora"]["pipe.dit.blocks.1.self_attn.q.lora_A.weight"].T)

    cfg_f, fused = load_mirage(ref["dit_file"], ref["control_file"], ref["lora_file"], config=CFG,
                               lora_alpha=1.0, fuse_lora=True)
    assert cfg_f.lora_rank == 0 and not any(k.endswith(("lora_a", "lora_b")) for k in _arrays(fused))
    scale = np.abs(out).max()
    np.testing.assert_allclose(np.asarray(_fwd(fused, *_inputs())), out, rtol=0, atol=1e-5 * scale)
    # ... and the LoRA matters: without it the output differs.
    _, plain = load_mirage(ref["dit_file"], ref["control_file"], config=CFG)
    assert np.abs(np.asarray(_fwd(plain, *_inputs())) - out).max() > 1e-3 * scale


def test_fused_is_w_plus_alpha_ba_bitwise(ref):
    alpha = 0.7  # the reference's inference: no division by r
    _, fused = load_mirage(ref["dit_file"], ref["control_file"], ref["lora_file"], config=CFG, lora_alpha=alpha)
    got = _arrays(fused)
    for n in range(CFG.dit.num_layers):
        for ours, mod in (("attn1.to_q", "self_attn.q"), ("attn2.to_out", "cross_attn.o"), ("ffn.proj_in", "ffn.0")):
            w = ref["dit"][f"blocks.{n}.{mod}.weight"].astype(np.float32)
            a = ref["lora"][f"pipe.dit.blocks.{n}.{mod}.lora_A.weight"].astype(np.float32)
            b = ref["lora"][f"pipe.dit.blocks.{n}.{mod}.lora_B.weight"].astype(np.float32)
            want = w + np.float32(alpha) * (b @ a)  # torch layout [out, in], float32
            np.testing.assert_array_equal(got[f"dit.blocks.{n}.{ours}.kernel"], want.T)
    # Everything else is the backbone as stored.
    np.testing.assert_array_equal(got["dit.blocks.0.attn1.to_q.bias"], ref["dit"]["blocks.0.self_attn.q.bias"])


def test_save_back_and_reload(ref, unfused, tmp_path):
    """Our files: the reference's naming plus lora_rank / lora_alpha (and control_layers) in the
    metadata, read back with them; the orbax checkpoint holds the whole model."""
    cfg, model, out = unfused
    paths = save_mirage_reference(model, tmp_path / "out")
    lora_file = open_safetensors(paths["lora"]).files[0]
    assert lora_file.metadata["lora_rank"] == str(RANK) and float(lora_file.metadata["lora_alpha"]) == RANK
    assert sorted(lora_file) == sorted(ref["lora"])
    assert json.loads(open_safetensors(paths["control"]).files[0].metadata["control_layers"]) == [0, 1]

    # Read back with the stored alpha and layer list (config= only for the head count).
    cfg2, again = load_mirage(ref["dit_file"], paths["control"], paths["lora"], config=CFG.dit, fuse_lora=False)
    cfg3, restored = load_mirage(paths["orbax"])
    assert cfg2 == cfg and cfg3 == cfg
    want = _arrays(model)
    for m in (again, restored):
        got = _arrays(m)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(_fwd(restored, *_inputs())), out)
    # Fused with the stored alpha: W += alpha / r * B @ A, the trained model.
    _, fused = load_mirage(ref["dit_file"], paths["control"], paths["lora"], config=CFG.dit)
    np.testing.assert_allclose(np.asarray(_fwd(fused, *_inputs())), out, rtol=0, atol=1e-5 * np.abs(out).max())

    with pytest.raises(FileFormatError, match="force=True"):
        save_mirage_reference(model, tmp_path / "out")
    merge_lora(again)
    with pytest.raises(ConfigError, match="unmerge_lora"):
        save_mirage_reference(again, tmp_path / "merged")


def test_fresh_branch_when_no_control_file(ref):
    """Without a control file the branch is initialised as control_init says ("copy": from the
    loaded backbone blocks; after_proj zero either way)."""
    cfg, model = load_mirage(ref["dit_file"], config=dataclasses.replace(CFG, control_init="copy", control_layers=(1,)))
    got = _arrays(model)
    np.testing.assert_array_equal(got["control.blocks.0.attn1.to_q.kernel"], ref["dit"]["blocks.1.self_attn.q.weight"].T)
    np.testing.assert_array_equal(got["control.blocks.0.norm2.bias"], ref["dit"]["blocks.1.norm3.bias"])
    assert not got["control.after_proj.0.kernel"].any() and got["control.before_proj.kernel"].std() > 0


def test_diffusers_backbone_directory(ref, unfused, tmp_path):
    """The backbone from a diffusers pipeline directory and from our orbax checkpoint of a WanDiT."""
    from mirage_jax.checkpoint import save_model
    from mirage_jax.convert.wan_dit import save_diffusers_transformer, transformer_from_state

    backbone = transformer_from_state(CFG.dit, ref["dit"], format="wan")
    save_diffusers_transformer(backbone, None, tmp_path / "pipe" / "transformer")
    save_model(tmp_path / "orbax", backbone, metadata={"kind": "wan_dit", "config": CFG.dit.to_diffusers()})
    want = _arrays(unfused[1])
    for path in (tmp_path / "pipe", tmp_path / "orbax"):  # the layer list comes from the MirageConfig
        cfg, model = load_mirage(path, ref["control_file"], ref["lora_file"], lora_alpha=float(RANK), fuse_lora=False,
                                 config=CFG)
        assert cfg == unfused[0]
        got = _arrays(model)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ConfigError, match="differs"):
        load_mirage(tmp_path / "pipe", config=dataclasses.replace(CFG.dit, ffn_dim=32))


def test_errors_name_the_problem(ref, tmp_path):
    # The layer list is not stored: the default for 2 layers is (0,), the file has 2 blocks.
    with pytest.raises(ConfigError, match=r"2 vace_blocks.*\[0\]"):
        load_mirage(ref["dit_file"], ref["control_file"], config=CFG.dit)
    with pytest.raises(ConfigError, match="head count"):
        load_mirage(ref["dit_file"], ref["control_file"])
    bad = dict(ref["lora"])
    bad["pipe.dit.blocks.0.self_attn.x.lora_A.weight"] = bad["pipe.dit.blocks.0.self_attn.q.lora_A.weight"]
    save_safetensors(tmp_path / "l.safetensors", bad)
    with pytest.raises(FileFormatError, match=r"'self_attn\.x'"):
        load_mirage(ref["dit_file"], ref["control_file"], tmp_path / "l.safetensors", config=CFG)
    bad = {k.replace("blocks.1.", "blocks.7."): v for k, v in ref["lora"].items()}
    save_safetensors(tmp_path / "l.safetensors", bad)
    with pytest.raises(FileFormatError, match="block 7 does not exist"):
        load_mirage(ref["dit_file"], ref["control_file"], tmp_path / "l.safetensors", config=CFG)
    bad = {k: v for k, v in ref["lora"].items() if "blocks.1.ffn.2.lora_B" not in k}
    save_safetensors(tmp_path / "l.safetensors", bad)
    with pytest.raises(FileFormatError, match=r"'ffn\.2'.*\(1, 'B'\)"):
        load_mirage(ref["dit_file"], ref["control_file"], tmp_path / "l.safetensors", config=CFG)
    # Coverage: a missing and an unexpected control key are both named.
    bad = {k: v for k, v in ref["control"].items() if k != "vace_blocks.1.after_proj.bias"}
    bad["vace_blocks.0.extra.weight"] = np.zeros(2, np.float32)
    save_safetensors(tmp_path / "c.safetensors", bad)
    with pytest.raises(ConversionError, match=r"(?s)control\.after_proj\.1\.bias.*vace_blocks\.0\.extra\.weight"):
        load_mirage(ref["dit_file"], tmp_path / "c.safetensors", config=CFG)


def test_loaded_on_a_mesh(ref):
    from mirage_jax.sharding import make_mesh

    mesh = make_mesh((2, 4), ("data", "fsdp"))
    _, model = load_mirage(ref["dit_file"], ref["control_file"], ref["lora_file"], config=CFG, fuse_lora=False,
                           lora_alpha=float(RANK), runtime=WanRuntime(scan_layers=True), mesh=mesh, rules="fsdp")
    want = target_shardings(nnx.state(model), mesh, "fsdp")
    for k, v in flat_variables(nnx.state(model)).items():
        assert v.get_value().sharding.is_equivalent_to(want[k], v.get_value().ndim), k
    kernel = model.control.before_proj.kernel.get_value()  # ("embed", None) -> fsdp on dim 0
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (CFG.dit.dim // 4, CFG.dit.dim)
    np.testing.assert_array_equal(np.asarray(kernel), ref["control"]["vace_blocks.0.before_proj.weight"].T)
    # The stacked (scanned) layout exports back to the reference's per-block names exactly.
    for exported, original in ((export_control(model), ref["control"]), (export_lora(model), ref["lora"])):
        assert sorted(exported) == sorted(original)
        for k, v in original.items():
            np.testing.assert_array_equal(exported[k], v, err_msg=k)
