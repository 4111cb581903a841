"""Orbax save / restore of NNX parameters: layouts, sharded restore, dtype casts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax import checkpoint as ckpt
from mirage_jax.convert.table import export
from mirage_jax.convert.wan_dit import DIFFUSERS_RULES, canonical_arrays, canonical_shapes, transformer_from_state
from mirage_jax.models.wan.dit import WanDiT, WanDiTConfig, WanRuntime
from mirage_jax.sharding import make_mesh

CFG = WanDiTConfig.tiny()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    # Random parameters drawn on the host (a jitted random initialiser is slow to compile on CPU).
    rng = np.random.default_rng(7)
    shapes = canonical_shapes(nnx.eval_shape(lambda: WanDiT(CFG)))
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    model = transformer_from_state(CFG, export(arrays, DIFFUSERS_RULES))
    path = ckpt.save_model(root / "looped", model, metadata={"kind": "wan_dit", "config": CFG.to_diffusers()})
    return dict(root=root, path=path, model=model, arrays=canonical_arrays(model))


def _same(model, arrays):
    got = canonical_arrays(model)
    assert sorted(got) == sorted(arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k].astype(got[k].dtype), err_msg=k)


def test_round_trip_and_metadata(saved):
    assert ckpt.is_checkpoint(saved["path"]) and not ckpt.is_checkpoint(saved["root"])
    meta = ckpt.read_metadata(saved["path"])
    assert meta["kind"] == "wan_dit" and WanDiTConfig.from_diffusers(meta["config"]) == CFG
    restored = ckpt.restore_model(saved["path"], lambda: WanDiT(CFG))
    _same(restored, saved["arrays"])
    # A concrete model can serve as the structure too.
    _same(ckpt.restore_model(saved["path"], nnx.eval_shape(lambda: WanDiT(CFG))), saved["arrays"])


def test_layouts_convert_both_ways_and_sharded(saved):
    mesh = make_mesh((2, 4), ("fsdp", "tp"))
    scanned = ckpt.restore_model(saved["path"], lambda: WanDiT(CFG, WanRuntime(scan_layers=True)), mesh=mesh, rules="fsdp_tp")
    _same(scanned, saved["arrays"])
    q = scanned.blocks.attn1.to_q.kernel[...]
    assert q.shape == (CFG.num_layers, CFG.dim, CFG.dim)
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tp")
    # Each device holds only its shard (no full copy anywhere).
    assert {s.data.shape for s in q.addressable_shards} == {(CFG.num_layers, CFG.dim // 2, CFG.dim // 4)}
    # Save the scanned model, restore it looped on the mesh.
    path = ckpt.save_model(saved["root"] / "scanned", scanned)
    looped = ckpt.restore_model(path, lambda: WanDiT(CFG), mesh=mesh, rules="fsdp")
    _same(looped, saved["arrays"])
    assert looped.blocks[1].ffn.proj_in.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_dtype_cast_and_errors(saved):
    bf16 = ckpt.restore_model(saved["path"], lambda: WanDiT(CFG, WanRuntime(param_dtype="bfloat16")))
    assert bf16.proj_out.kernel[...].dtype == jnp.bfloat16
    _same(bf16, saved["arrays"])
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.restore_model(saved["path"], lambda: WanDiT(WanDiTConfig(**{**CFG.__dict__, "ffn_dim": 32})))
    assert "ffn.proj_in.kernel" in str(err.value)
    with pytest.raises(ckpt.CheckpointError, match="missing from the source|does not have"):
        ckpt.restore_model(saved["path"], lambda: WanDiT(WanDiTConfig(**{**CFG.__dict__, "num_layers": 3})))
    with pytest.raises(ckpt.CheckpointError, match="exists; pass force=True"):
        ckpt.save_model(saved["path"], saved["model"])
    with pytest.raises(ckpt.CheckpointError, match="not a mirage_jax"):
        ckpt.read_metadata(saved["root"])
