"""3D RoPE tables and rotation vs diffusers' WanRotaryPosEmbed and a direct float64 formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mirage_jax.models.wan.rope import (
    apply_rope,
    grid_positions,
    inverse_frequencies,
    rope_axis_dims,
    rope_cos_sin,
)


def test_axis_split():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(20) == (8, 6, 6)
    with pytest.raises(ValueError, match="head dim"):
        rope_axis_dims(4)
    with pytest.raises(ValueError, match="even"):
        rope_axis_dims(21)


def _wan_rotary():
    pytest.importorskip("torch")
    return pytest.importorskip("diffusers.models.transformers.transformer_wan").WanRotaryPosEmbed


@pytest.mark.parity
def test_axis_split_matches_diffusers():
    WanRotaryPosEmbed = _wan_rotary()
    for d in (20, 64, 128):
        ref = WanRotaryPosEmbed(d, (1, 2, 2), 16)
        assert rope_axis_dims(d) == (ref.t_dim, ref.h_dim, ref.w_dim)


@pytest.mark.parity
@pytest.mark.parametrize("head_dim,grid", [(20, (3, 4, 5)), (128, (2, 3, 4))])
def test_default_grid_bit_identical_to_diffusers(head_dim, grid):
    WanRotaryPosEmbed = _wan_rotary()
    import torch
    t, h, w = grid
    ref = WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, t, 2 * h, 2 * w))  # [1, N, 1, D], pairs interleaved
    cos, sin = rope_cos_sin(grid_positions(t, h, w), head_dim, 1024)
    assert cos.shape == (1, t * h * w, head_dim // 2) and cos.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(cos[0]), cos_ref[0, :, 0, 0::2].numpy())
    np.testing.assert_array_equal(np.asarray(sin[0]), sin_ref[0, :, 0, 1::2].numpy())


def _direct(pos: np.ndarray, head_dim: int):
    """float64 reference: axis a rotates its channel pairs by pos_a * inv_freq_a."""
    angles = [np.asarray(pos[..., a], np.float64)[..., None] * inverse_frequencies(d) for a, d in enumerate(rope_axis_dims(head_dim))]
    ang = np.concatenate(angles, axis=-1)
    return np.cos(ang), np.sin(ang)


def test_offset_positions_vs_direct_formula():
    # Spec layout: 2 reference frames at t = -2, -1 with heights offset by +h, 3 target frames,
    # 1 preceding frame at t = T.
    h, w, head_dim = 3, 4, 20
    pos = np.concatenate(
        [
            grid_positions(2, h, w, t_offset=-2, h_offset=h),
            grid_positions(3, h, w),
            grid_positions(1, h, w, t_offset=3),
        ]
    )
    assert pos[:, 0].min() == -2 and pos[: 2 * h * w, 1].min() == h
    cos, sin = rope_cos_sin(pos, head_dim, 16)
    c_ref, s_ref = _direct(pos, head_dim)
    # Integer positions: float64 then rounded to float32, exactly.
    np.testing.assert_array_equal(np.asarray(cos[0]), c_ref.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(sin[0]), s_ref.astype(np.float32))

    # Fractional, batched positions, inside jit (traced: no host checks possible).
    rng = np.random.default_rng(0)
    posf = rng.uniform(-15.5, 15.5, size=(2, 7, 3)).astype(np.float32)
    cos, sin = jax.jit(lambda p: rope_cos_sin(p, head_dim, 16))(posf)
    c_ref, s_ref = _direct(posf, head_dim)
    np.testing.assert_allclose(np.asarray(cos), c_ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(sin), s_ref, atol=2e-6)

    # Per-axis tuple form equals the stacked form.
    c2, s2 = rope_cos_sin((pos[:, 0], pos[:, 1], pos[:, 2]), head_dim, 16)
    c1, s1 = rope_cos_sin(pos, head_dim, 16)
    np.testing.assert_array_equal(np.asarray(c2), np.asarray(c1))
    np.testing.assert_array_equal(np.asarray(s2), np.asarray(s1))


def test_out_of_range_positions_are_loud():
    with pytest.raises(ValueError, match="outside"):
        rope_cos_sin(np.array([[0, 0, 16]]), 20, 16)
    with pytest.raises(ValueError, match="outside"):
        rope_cos_sin(np.array([[-17, 0, 0]]), 20, 16)
    # Traced: NaN, never a clamped table row.
    cos, _ = jax.jit(lambda p: rope_cos_sin(p, 20, 16))(np.array([[0, 0, 16], [0, 0, 15]]))
    assert np.isnan(np.asarray(cos[0, 0])).any() and np.isfinite(np.asarray(cos[0, 1])).all()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        rope_cos_sin(np.zeros((4, 2), np.int32), 20, 16)


def test_apply_rope_is_pairwise_complex_rotation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 20)).astype(np.float32)
    pos = rng.integers(-4, 10, size=(2, 5, 3))
    cos, sin = rope_cos_sin(pos, 20, 16)
    out = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    z = x[..., 0::2] + 1j * x[..., 1::2]
    rot = z * (np.asarray(cos) + 1j * np.asarray(sin))[:, :, None, :]
    np.testing.assert_allclose(out[..., 0::2], rot.real, atol=1e-6)
    np.testing.assert_allclose(out[..., 1::2], rot.imag, atol=1e-6)
    # Norm-preserving per pair, dtype preserved.
    assert apply_rope(jnp.asarray(x, jnp.bfloat16), cos, sin).dtype == jnp.bfloat16
