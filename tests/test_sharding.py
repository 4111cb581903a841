"""Sharding of the Wan DiT on the simulated 8-device CPU mesh (2 x 4: fsdp x tp)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mirage_jax.convert.table import export
from mirage_jax.convert.wan_dit import DIFFUSERS_RULES, canonical_shapes, transformer_from_state
from mirage_jax.models.wan.dit import WanDiT, WanDiTConfig, WanRuntime, init_model
from mirage_jax.sharding import logical_to_spec, make_mesh, state_shardings

CFG = WanDiTConfig.tiny()  # dim 40 (divisible by 2 and 4), ffn 64


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 8, "tests/conftest.py simulates 8 CPU devices"
    return make_mesh((2, 4), ("fsdp", "tp"))


def test_rules_map_logical_names(mesh):
    assert logical_to_spec(("embed", "mlp"), "fsdp", mesh, (40, 64)) == P("fsdp", None)
    assert logical_to_spec(("embed", "mlp"), "fsdp_tp", mesh, (40, 64)) == P("fsdp", "tp")
    assert logical_to_spec((None, "heads", "embed"), "fsdp_tp", mesh, (2, 40, 40)) == P(None, "tp", "fsdp")
    dropped = []
    assert logical_to_spec(("latent", "embed"), "fsdp_tp", mesh, (16, 41), dropped) == P(None, None)
    assert dropped and "41" in dropped[0]
    # Every DiT parameter name is in the vocabulary and the full model shards cleanly.
    abstract = nnx.eval_shape(lambda: WanDiT(WanDiTConfig.wan22_ti2v_5b(), WanRuntime(scan_layers=True)))
    _, notes = state_shardings(nnx.state(abstract, nnx.Param), make_mesh((1, 8), ("fsdp", "tp")), "fsdp_tp", report=True)
    assert notes == {}


EXPECTED = {
    # path: (fsdp spec, fsdp_tp spec); scanned layout: leading layer axis never sharded.
    "blocks.attn1.to_q.kernel": (P(None, "fsdp", None), P(None, "fsdp", "tp")),
    "blocks.attn1.to_q.bias": (P(None, None), P(None, "tp")),
    "blocks.attn2.to_out.kernel": (P(None, None, "fsdp"), P(None, "tp", "fsdp")),
    "blocks.ffn.proj_in.kernel": (P(None, "fsdp", None), P(None, "fsdp", "tp")),
    "blocks.ffn.proj_out.kernel": (P(None, None, "fsdp"), P(None, "tp", "fsdp")),
    "blocks.attn1.norm_q.scale": (P(None, None), P(None, None)),
    "patch_embedding.kernel": (P(None, None, None, None, "fsdp"), P(None, None, None, None, "fsdp")),
    "condition_embedder.text_embedder.linear_1.kernel": (P(None, "fsdp"), P(None, "fsdp")),
    "proj_out.kernel": (P("fsdp", None), P("fsdp", None)),
}


def _flat(model):
    return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp"])
def test_parameters_created_sharded(mesh, preset):
    model = init_model(CFG, WanRuntime(scan_layers=True), seed=0, mesh=mesh, rules=preset)
    flat = _flat(model)
    col = 0 if preset == "fsdp" else 1
    for path, specs in EXPECTED.items():
        arr = flat[path]
        assert arr.sharding.spec == specs[col], (path, arr.sharding.spec)
        # No device holds more than its shard.
        shard = arr.sharding.shard_shape(arr.shape)
        assert all(s.data.shape == shard for s in arr.addressable_shards), path
    assert flat["blocks.ffn.proj_in.kernel"].sharding.shard_shape((2, 40, 64)) == ((2, 20, 64) if col == 0 else (2, 20, 16))


def test_sharded_forward_equals_single_device(mesh):
    rng = np.random.default_rng(0)
    shapes = canonical_shapes(nnx.eval_shape(lambda: WanDiT(CFG)))
    state = export({k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}, DIFFUSERS_RULES)
    single = transformer_from_state(CFG, state)
    sharded = transformer_from_state(CFG, state, mesh=mesh, rules="fsdp_tp")
    assert _flat(sharded)["blocks.0.attn1.to_q.kernel"].sharding.spec == P("fsdp", "tp")

    x = rng.standard_normal((2, 3, 4, 6, CFG.in_channels)).astype(np.float32)
    t = np.array([[0.0, 900.0, 900.0], [0.0, 100.0, 100.0]], np.float32)
    text = rng.standard_normal((2, 5, CFG.text_dim)).astype(np.float32)
    ref = np.asarray(nnx.jit(lambda m: m(x, t, text))(single))
    # Batch sharded over fsdp, parameters over fsdp x tp.
    batch = jax.sharding.NamedSharding(mesh, P("fsdp"))
    xs, ts, cs = (jax.device_put(a, batch) for a in (x, t, text))
    out = nnx.jit(lambda m, a, b, c: m(a, b, c))(sharded, xs, ts, cs)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5 * np.abs(ref).max())


def test_replicated_dimensions_are_reported_not_silent(caplog):
    import logging

    from mirage_jax import sharding as S
    from mirage_jax.models.params import param

    class Odd(nnx.Module):
        def __init__(self):
            self.kernel = param(np.zeros((3, 6), np.float32), ("embed", "mlp"))

    mesh = S.make_mesh((2, 4), ("fsdp", "tp"))
    state = nnx.state(nnx.eval_shape(Odd))
    _, notes = S.state_shardings(state, mesh, "fsdp_tp", report=True)
    assert list(notes) == ["kernel"] and len(notes["kernel"]) == 2
    with caplog.at_level(logging.WARNING):
        S.state_shardings(state, mesh, "fsdp_tp")
    assert "kernel" in caplog.text and "replicated" in caplog.text
