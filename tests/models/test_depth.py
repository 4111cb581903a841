"""The small depth model: shapes, errors, AbsRel against hand-computed values, and a few training
steps on rendered frames that lower the loss and the AbsRel."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mirage_jax.errors import ConfigError, InputError
from mirage_jax.models.depth import DepthConfig, DepthNet, abs_rel, depth_loss

TINY = DepthConfig(base=4, levels=2, groups=2)


def test_shapes_positive_and_zero_initialised_head():
    net = DepthNet(TINY, rngs=nnx.Rngs(0))
    d = net(jnp.full((3, 16, 8, 3), 0.5))
    assert d.shape == (3, 16, 8)
    # the head starts at zero: every pixel at exp(log_depth_offset)
    np.testing.assert_allclose(np.asarray(d), np.exp(TINY.log_depth_offset), rtol=1e-6)
    assert TINY.num_params() == sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))


def test_bad_inputs_and_config():
    net = DepthNet(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
        net(jnp.zeros((16, 16, 3)))
    with pytest.raises(InputError, match="multiples of 2"):
        net(jnp.zeros((1, 15, 16, 3)))
    with pytest.raises(ConfigError, match="groups"):
        DepthConfig(base=6, groups=4)


def test_abs_rel_hand_computed():
    gt = np.array([[[1.0, 2.0], [4.0, 0.0]]], np.float32)  # one invalid pixel (0)
    pred = np.array([[[1.5, 2.0], [3.0, 7.0]]], np.float32)
    # (0.5 / 1 + 0 / 2 + 1 / 4) / 3 valid pixels
    np.testing.assert_allclose(np.asarray(abs_rel(pred, gt)), [0.25], rtol=1e-6)
    with pytest.raises(InputError, match="no valid"):
        abs_rel(pred, np.zeros_like(gt))
    with pytest.raises(InputError, match="one shape"):
        abs_rel(pred[0], gt)


def test_loss_ignores_invalid_pixels():
    net = DepthNet(TINY, rngs=nnx.Rngs(0))
    img = jnp.zeros((1, 4, 4, 3))
    e = float(np.exp(TINY.log_depth_offset))
    gt = jnp.full((1, 4, 4), e).at[0, 0, 0].set(0.0).at[0, 1, 1].set(jnp.nan)
    assert float(depth_loss(net, img, gt)) == pytest.approx(0.0, abs=1e-6)
    gt2 = gt.at[0, 2, 2].set(e * np.e)  # one valid pixel off by 1 in log depth, 14 valid pixels
    assert float(depth_loss(net, img, gt2)) == pytest.approx(1.0 / 14, rel=1e-5)


def test_training_steps_lower_loss_and_abs_rel():
    from mirage_jax.data.worlds import make_clip

    clip = make_clip(3, (16, 16), 4, "indoor")
    img = jnp.asarray(clip["frames"].astype(np.float32) / 255.0)
    gt = jnp.asarray(clip["depth"])
    net = DepthNet(TINY, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(net, opt):
        loss, g = nnx.value_and_grad(lambda m: depth_loss(m, img, gt))(net)
        opt.update(net, g)
        return loss

    before = float(jnp.mean(abs_rel(net(img), gt)))
    losses = [float(step(net, opt)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert float(jnp.mean(abs_rel(net(img), gt))) < before
