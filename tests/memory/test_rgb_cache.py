"""The RGB point-cloud cache baseline: full-resolution points, 1-pixel splat, nearest wins,
sharing the latent memory's projection and z-buffer."""

import jax.numpy as jnp
import numpy as np
import pytest

import memtest_lib as lib
from mirage_jax import memory as M
from mirage_jax.memory import rgb_cache

K = lib.K_image()
I4 = np.eye(4, dtype=np.float32)
HW = lib.IMAGE_HW


def test_rgb_cache_round_trip_occlusion_and_shared_kernel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
    img2 = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 3.0, HW).astype(np.float32)
    depth[rng.uniform(size=HW) < 0.2] = 0.0
    exclude = rng.uniform(size=HW) < 0.1
    cache = rgb_cache.write(rgb_cache.empty(400), img, depth, K, I4, exclude=exclude)
    valid = (depth > 0) & ~exclude
    assert int(cache.count) == valid.sum() and cache.dtype == jnp.uint8
    out = rgb_cache.render(cache, K, I4, HW)
    # At its own camera every stored pixel comes back exactly (stride 1: no resize, K unscaled).
    np.testing.assert_array_equal(np.asarray(out.hit), valid)
    np.testing.assert_array_equal(np.asarray(out.image)[valid], img[valid])
    assert not np.asarray(out.image)[~valid].any()
    np.testing.assert_allclose(np.asarray(out.depth)[valid], depth[valid], rtol=1e-5)
    # A nearer layer written later or earlier always wins.
    near = np.full(HW, 0.5, np.float32)
    for first, second in [((img, depth), (img2, near)), ((img2, near), (img, depth))]:
        c = rgb_cache.empty(400)
        c = rgb_cache.write(c, *first, K, I4)
        c = rgb_cache.write(c, *second, K, I4)
        np.testing.assert_array_equal(np.asarray(rgb_cache.render(c, K, I4, HW).image), img2)
    # The render is the memory's read at the pixel grid (shared code), also for other cameras.
    poses = np.stack([lib.pose((0.05, -0.1, 0.0), (0.2, 0.0, 0.1)), lib.pose(t=(-0.3, 0.1, 0.0))])
    many = rgb_cache.render_many(cache, K, poses, HW)
    for i, p in enumerate(poses):
        r = M.read(cache, K, p, HW, HW)
        np.testing.assert_array_equal(np.asarray(many.image[i]), np.asarray(r.features))
        np.testing.assert_array_equal(np.asarray(many.hit[i]), np.asarray(r.hit))
    assert 0 < np.asarray(many.hit).mean() < 1


def test_rgb_cache_float_frames_and_bad_input():
    rng = np.random.default_rng(1)
    imgs = rng.uniform(size=(2, *HW, 3)).astype(np.float32)
    depths = np.full((2, *HW), 2.0, np.float32)
    cache = rgb_cache.write_frames(rgb_cache.empty(300, dtype=jnp.float32), imgs, depths, K, np.stack([I4, I4]))
    assert int(cache.count) == 2 * HW[0] * HW[1]
    np.testing.assert_array_equal(np.asarray(rgb_cache.render(cache, K, I4, HW).image), imgs[1])
    with pytest.raises(M.LatentMemoryError, match=r"image: expected shape \[H, W, 3\]"):
        rgb_cache.write(rgb_cache.empty(10), imgs[0, ..., :2], depths[0], K, I4)
    with pytest.raises(M.LatentMemoryError, match="the memory stores uint8; got float32"):
        rgb_cache.write(rgb_cache.empty(10), imgs[0], depths[0], K, I4)
    with pytest.raises(M.LatentMemoryError, match="an RGB cache has 3 channels"):
        rgb_cache.write(M.empty(10, 4), imgs[0], depths[0], K, I4)
