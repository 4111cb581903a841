"""Exact voxel keys, lexicographic search, segmented sums."""

import jax
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mirage_jax.memory import voxels

seeds = st.integers(0, 2**31 - 1)
_search = jax.jit(voxels.lex_searchsorted)
_sort = jax.jit(voxels.sort_keys)
_segsum = jax.jit(voxels.segmented_cumsum)
_dense = jax.jit(voxels.dense_voxel_ids)


@given(seed=seeds)
def test_lex_search_sort_and_segmented_sum(seed):
    rng = np.random.default_rng(seed)
    keys = rng.integers(-3, 3, (40, 3)).astype(np.int32)
    valid = rng.uniform(size=40) < 0.8
    perm, sk = _sort(keys, valid)
    perm, sk = np.asarray(perm), np.asarray(sk)
    k = np.where(valid[:, None], keys, np.iinfo(np.int32).max)  # invalid rows last, by index
    order = np.lexsort((np.arange(40), k[:, 2], k[:, 1], k[:, 0]))
    np.testing.assert_array_equal(perm, order)
    np.testing.assert_array_equal(sk[: valid.sum()], keys[order][: valid.sum()])
    assert (sk[valid.sum() :] == voxels.SENTINEL).all()
    queries = rng.integers(-4, 4, (50, 3)).astype(np.int32)
    idx = np.asarray(_search(sk, queries))
    as_tuples = [tuple(r) for r in sk.astype(np.int64)]
    for q, i in zip(queries, idx):
        expect = sum(t < tuple(q.astype(np.int64)) for t in as_tuples)  # lower bound
        assert i == expect
    vals = rng.normal(size=(40, 2)).astype(np.float32)
    starts = rng.uniform(size=40) < 0.3
    out = np.asarray(_segsum(vals, starts))
    acc = np.zeros(2)
    for i in range(40):
        acc = vals[i].astype(np.float64) if (starts[i] or i == 0) else acc + vals[i]
        np.testing.assert_allclose(out[i], acc, rtol=1e-5, atol=1e-6)


@given(seed=seeds)
def test_dense_voxel_ids_match_numpy_unique(seed):
    rng = np.random.default_rng(seed)
    pts = (rng.integers(-5, 5, (60, 3)) * 0.1 + rng.uniform(0, 0.1, (60, 3))).astype(np.float32)
    pts[0] = [1e12, 0, 0]  # not representable as an int32 key: never keyed
    valid = rng.uniform(size=60) < 0.85
    idx = _dense(pts, valid, 0.1)
    keys = np.floor(pts / np.float32(0.1)).astype(np.int64)
    ok = valid & (np.abs(keys) < 2**30).all(1)
    uniq, inv = np.unique(keys[ok], axis=0, return_inverse=True)
    ids = np.asarray(idx.ids)
    assert int(idx.num) == len(uniq)
    np.testing.assert_array_equal(ids[ok], inv.ravel())
    assert (ids[~ok] == -1).all()
