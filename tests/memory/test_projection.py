"""Depth / mask resizing against PyTorch, the edge-safe resize, and the deterministic z-buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import memtest_lib as lib
from mirage_jax.memory import projection as proj


def _torch_resize(x, size, mode):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    kw = {"align_corners": False, "antialias": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(t, size=size, mode=mode, **kw)[0, 0].numpy()


@pytest.mark.parity
@pytest.mark.parametrize(
    "src,dst",
    [
        ((704, 1280), (44, 80)),
        ((8, 12), (4, 6)),
        ((9, 15), (3, 5)),
        ((32, 24), (2, 8)),
        ((6, 6), (6, 6)),
        ((5, 7), (2, 3)),
    ],
)
def test_bilinear_resize_is_bit_exact_with_torch(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    depth = rng.uniform(0.1, 50.0, src).astype(np.float32)
    depth[rng.uniform(size=src) < 0.1] = 0.0
    ours = np.asarray(proj.resize_depth(depth, dst, "bilinear"))
    ref = _torch_resize(depth, dst, "bilinear")
    if src[0] % dst[0] == 0 and src[1] % dst[1] == 0:
        # Integer factors (what write accepts): weights are 0, 1/4, 1/2 or 1, every product is
        # exact, and the sum follows torch's order: bit-identical.
        np.testing.assert_array_equal(ours, ref)
    else:  # general factors: same taps and weights, rounding may differ in the last bit
        np.testing.assert_allclose(ours, ref, rtol=3e-7, atol=0)
    # The factor-16 sample position of the spec: cell u reads source x = 16u + 7.5.
    if src == (704, 1280):
        u, v = 5, 3
        expect = depth[16 * v + 7 : 16 * v + 9, 16 * u + 7 : 16 * u + 9].mean(dtype=np.float64)
        assert abs(ours[v, u] - expect) <= 1e-5 * expect
        # And the independent NumPy (float64 loops) implementation of the spec agrees.
        np.testing.assert_allclose(ours, lib.np_bilinear(depth, *dst), rtol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize(
    "src,dst", [((704, 1280), (44, 80)), ((8, 12), (4, 6)), ((9, 15), (3, 5)), ((10, 7), (4, 3)), ((5, 5), (5, 5))]
)
def test_mask_nearest_matches_torch(src, dst):
    rng = np.random.default_rng(7)
    mask = rng.uniform(size=src) < 0.4
    ours = np.asarray(proj.resize_mask_nearest(jnp.asarray(mask), dst))
    ref = _torch_resize(mask.astype(np.float32), dst, "nearest") > 0.5
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours, lib.np_nearest(mask, *dst))


_edge_safe = jax.jit(lambda d, e: proj.resize_depth(d, lib.LATENT_HW, "edge_safe", e))
_bilinear = jax.jit(lambda d: proj.resize_depth(d, lib.LATENT_HW, "bilinear"))


@given(seed=st.integers(0, 2**31 - 1), hole=st.floats(0.0, 0.9), level=st.floats(0.5, 20.0))
def test_edge_safe_never_creates_half_depth(seed, hole, level):
    rng = np.random.default_rng(seed)
    depth = np.full((lib.H, lib.W), level, np.float32)
    depth[rng.uniform(size=depth.shape) < hole] = 0.0
    depth[rng.uniform(size=depth.shape) < 0.05] = -1.0  # negative depth is invalid too
    exclude = rng.uniform(size=depth.shape) < 0.1
    es = np.asarray(_edge_safe(depth, exclude))
    # Every cell is either the true depth (up to the rounding of the renormalisation) or empty
    # (0): no mixing with holes or excluded pixels.
    assert np.all((es == 0) | (np.abs(es - np.float32(level)) <= 1e-6 * level))
    # A cell is empty exactly when none of its taps is valid.
    valid = (depth > 0) & ~exclude
    taps = valid.reshape(lib.h, 2, lib.w, 2).any(axis=(1, 3))
    np.testing.assert_array_equal(es > 0, taps)
    # Where all taps are valid (and nothing is excluded), edge_safe is bit-identical to bilinear.
    no_ex = np.asarray(_edge_safe(depth, np.zeros_like(exclude)))
    bl = np.asarray(_bilinear(depth))
    full = (depth > 0).reshape(lib.h, 2, lib.w, 2).all(axis=(1, 3))
    np.testing.assert_array_equal(no_ex[full], bl[full])
    # The reference bilinear does create the half-depth points the spec warns about.
    if hole > 0.3 and (~full & (bl > 0)).any():
        assert np.any((bl > 0) & (bl < level * 0.99))


def test_edge_safe_matches_bilinear_on_smooth_valid_depth():
    rng = np.random.default_rng(1)
    depth = rng.uniform(1, 3, (lib.H, lib.W)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(_edge_safe(depth, np.zeros(depth.shape, bool))), np.asarray(_bilinear(depth))
    )


_zbuffer = jax.jit(proj.zbuffer, static_argnames="num_cells")


def test_zbuffer_exact_ties_are_order_independent():
    # 3 cells; cell 0 has an exact depth tie between priorities 4 and 9 (9 wins), cell 1 a
    # strict minimum, cell 2 only points outside; a point not inside never counts.
    cell = np.array([0, 0, 0, 1, 1, 2, 0], np.int32)
    z = np.array([2.0, 2.0, 3.0, 5.0, 4.0, 1.0, 0.5], np.float32)
    inside = np.array([1, 1, 1, 1, 1, 0, 0], bool)
    prio = np.array([4, 9, 10, 1, 2, 3, 11], np.int32)
    results = []
    for perm in [np.arange(7), np.arange(7)[::-1], np.random.default_rng(0).permutation(7)]:
        zb = _zbuffer(cell[perm], z[perm], inside[perm], prio[perm], num_cells=3)
        results.append(jax.tree.map(np.asarray, zb))
    for r in results:
        np.testing.assert_array_equal(r.winner, [9, 2, -1])
        np.testing.assert_array_equal(r.hit, [True, True, False])
        np.testing.assert_array_equal(r.depth, [2.0, 4.0, 0.0])


@given(seed=st.integers(0, 2**31 - 1))
def test_zbuffer_matches_loop_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n, cells = 64, 5
    cell = rng.integers(0, cells, n).astype(np.int32)
    z = rng.integers(1, 4, n).astype(np.float32)  # lots of exact ties
    inside = rng.uniform(size=n) < 0.8
    prio = rng.permutation(n).astype(np.int32)
    zb = _zbuffer(cell, z, inside, prio, num_cells=cells)
    for c in range(cells):
        sel = inside & (cell == c)
        if not sel.any():
            assert int(zb.winner[c]) == -1 and not bool(zb.hit[c]) and float(zb.depth[c]) == 0.0
            continue
        zmin = z[sel].min()
        assert int(zb.winner[c]) == prio[sel & (z == zmin)].max()
        assert float(zb.depth[c]) == zmin
    perm = rng.permutation(n)
    zb2 = _zbuffer(cell[perm], z[perm], inside[perm], prio[perm], num_cells=cells)
    np.testing.assert_array_equal(np.asarray(zb.winner), np.asarray(zb2.winner))


@pytest.mark.parity
def test_rounding_is_half_to_even_like_torch():
    torch = pytest.importorskip("torch")
    # Points placed so that u = 0.5, 1.5, 2.5 exactly (grid K = identity-like, z = 1).
    K = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]], np.float32)
    pts = np.array([[0.5, 0.0, 1.0], [1.5, 0.0, 1.0], [2.5, 0.0, 1.0]], np.float32)
    fn = jax.jit(proj.project_to_cells, static_argnames="grid_hw")
    cell, _, inside = fn(jnp.asarray(pts), jnp.ones(3, bool), K, np.eye(4, dtype=np.float32), grid_hw=(1, 4))
    np.testing.assert_array_equal(np.asarray(cell), torch.round(torch.tensor([0.5, 1.5, 2.5])).numpy().astype(np.int32))
    assert np.asarray(inside).all()


@pytest.mark.parity
def test_round_half_even_equals_jnp_round_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.arange(-6, 6, 0.5, dtype=np.float32),  # exact halves
            np.nextafter(np.float32(0.5), np.float32(0)) * np.array([1, -1], np.float32),  # 0.49999997
            np.array([2.0**23 + 1, -(2.0**23) - 3, 2.0**30, np.inf, -np.inf], np.float32),
            rng.normal(size=1000).astype(np.float32) * 50,
        ]
    )
    ours = np.asarray(jax.jit(proj.round_half_even)(x))
    np.testing.assert_array_equal(ours, np.asarray(jnp.round(x)))
    np.testing.assert_array_equal(ours, torch.round(torch.from_numpy(x)).numpy())
    assert np.isnan(np.asarray(jax.jit(proj.round_half_even)(np.float32(np.nan))))
