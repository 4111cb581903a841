"""One parameter helper, one placement: models build eagerly, under eval_shape and inside a mesh;
place() puts host arrays / lazy readers into any layer layout and sharding. No torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirage_jax.convert.place import Lazy, place, stack_layers, unstack_layers
from mirage_jax.convert.table import ConversionError, flat_state_shapes
from mirage_jax.errors import InputError
from mirage_jax.models.params import param
from mirage_jax.models.wan import WanDiT, WanDiTConfig, WanRuntime, WanVAE, WanVAEConfig
from mirage_jax.models.wan.dit import count_params
from mirage_jax.models.wan.vae import WanVAEInputError
from mirage_jax.sharding import make_mesh

# The smallest configs of each architecture: eager construction compiles one initialiser per
# parameter shape (twice: again inside the mesh), so few distinct shapes keep the build test short.
VAE_CFG = WanVAEConfig.tiny("wan2.1", dim_mult=(1,), temperal_downsample=(), scale_factor_spatial=1,
                            scale_factor_temporal=1)
DIT_CFG = WanDiTConfig(**{**WanDiTConfig.tiny().__dict__, "num_layers": 3})


def _names(model):
    state = nnx.state(model, nnx.Param)
    return {".".join(map(str, p)): v.get_metadata().get("out_sharding") for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("factory", [lambda: WanVAE(VAE_CFG), lambda: WanDiT(DIT_CFG, rngs=nnx.Rngs(0))],
                         ids=["vae", "dit"])
def test_models_build_eagerly_abstractly_and_under_a_mesh(factory):
    eager = factory()
    abstract = nnx.eval_shape(factory)
    with jax.set_mesh(make_mesh((4, 2), ("fsdp", "tp"))):
        meshed = factory()
    assert count_params(eager) == count_params(abstract) == count_params(meshed) > 0
    assert _names(eager) == _names(abstract) == _names(meshed)
    assert all(names is not None for names in _names(eager).values())
    # Names are metadata: an eager build inside a mesh shards nothing (placement is create_sharded's / place's).
    for leaf in jax.tree.leaves(nnx.state(meshed, nnx.Param)):
        assert getattr(leaf.sharding, "spec", jax.sharding.PartitionSpec()) == jax.sharding.PartitionSpec()


def test_param_helper():
    p = param(nnx.initializers.zeros, ("embed", None), key=jax.random.key(0), shape=(2, 3), dtype=jnp.bfloat16)
    assert p[...].shape == (2, 3) and p[...].dtype == jnp.bfloat16
    assert p.get_metadata()["out_sharding"] == ("embed", None)
    with pytest.raises(ValueError, match="2 axis names"):
        param(jnp.zeros((3,)), ("embed", "mlp"))
    with pytest.raises(ValueError, match="needs key= and shape="):
        param(nnx.initializers.zeros, ("embed",))

    class Sub(nnx.Param):
        pass

    assert type(param(jnp.zeros((2,)), ("norm",), kind=Sub)) is Sub


def test_place_layouts_shardings_and_lazy_reads():
    mesh = make_mesh((4, 2), ("fsdp", "tp"))
    rng = np.random.default_rng(0)
    looped = nnx.eval_shape(lambda: WanDiT(DIT_CFG))
    per_layer = {k: rng.standard_normal(s).astype(np.float32) for k, s in flat_state_shapes(looped).items()}
    stacked = stack_layers(per_layer)
    assert stacked["blocks.ffn.proj_in.kernel"].shape == (3, 40, 64)
    reads = []

    def lazy(a):
        return Lazy(a.shape, lambda: reads.append(1) or a)

    scanned_abs = nnx.eval_shape(lambda: WanDiT(DIT_CFG, WanRuntime(scan_layers=True)))
    # per-layer source -> stacked model, sharded, lazily read once per tensor, cast to bf16.
    model = place(scanned_abs, {k: lazy(v) for k, v in per_layer.items()}, mesh=mesh, rules="fsdp_tp", dtype=jnp.bfloat16)
    assert len(reads) == len(per_layer)
    kernel = model.blocks.ffn.proj_in.kernel[...]
    assert kernel.shape == (3, 40, 64) and kernel.dtype == jnp.bfloat16
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tp")
    assert kernel.addressable_shards[0].data.shape == (3, 10, 32)  # each device got only its slice
    np.testing.assert_array_equal(np.asarray(kernel, np.float32), stacked["blocks.ffn.proj_in.kernel"].astype(jnp.bfloat16).astype(np.float32))
    # stacked source -> looped model on one device; exact float32 values.
    back = place(looped, stacked)
    np.testing.assert_array_equal(np.asarray(back.blocks[2].attn1.to_q.kernel[...]), per_layer["blocks.2.attn1.to_q.kernel"])
    assert unstack_layers(stacked).keys() == per_layer.keys()
    # Every problem is listed.
    bad = dict(per_layer)
    del bad["blocks.1.norm2.scale"]
    bad["proj_out.kernel"] = bad["proj_out.kernel"][:, :3]
    bad["extra.weight"] = np.zeros(2)
    with pytest.raises(ConversionError) as err:
        place(looped, bad, what="test source")
    msg = str(err.value)
    assert "test source" in msg and "blocks.1.norm2.scale" in msg and "proj_out.kernel" in msg and "extra.weight" in msg
    with pytest.raises(ConversionError, match="layers"):
        stack_layers({"blocks.0.x": 1, "blocks.2.x": 2})


def test_vae_refuses_integer_and_0_255_video():
    vae = nnx.eval_shape(lambda: WanVAE(VAE_CFG))
    video = np.zeros((1, 1, 8, 8, 3), np.uint8)
    with pytest.raises(WanVAEInputError, match=r"dtype uint8.*\[-1, 1\]"):
        vae.encode(video)
    with pytest.raises(InputError, match=r"span \[0, 255\].*\[-1, 1\]"):
        vae.encode(np.linspace(0, 255, 192, dtype=np.float32).reshape(1, 1, 8, 8, 3))
    with pytest.raises(InputError, match="span"):
        vae.encode(np.full((1, 1, 8, 8, 3), np.nan, np.float32))
    # Under jit the values cannot be checked (documented); the dtype still is.
    model = place(vae, {k: np.zeros(s, np.float32) for k, s in flat_state_shapes(vae).items()})
    out = jax.eval_shape(model.encode, jax.ShapeDtypeStruct((1, 1, 8, 8, 3), jnp.float32))
    assert out.shape == (1, 1, 8, 8, VAE_CFG.z_dim)
    with pytest.raises(WanVAEInputError, match="dtype int32"):
        jax.eval_shape(model.encode, jax.ShapeDtypeStruct((1, 1, 8, 8, 3), jnp.int32))
