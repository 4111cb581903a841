"""Image metrics against values computed by hand."""

import math

import dm_pix
import jax
import numpy as np
import pytest

from mirage_jax.errors import InputError
from mirage_jax.eval import metrics as M


def test_psnr_of_a_constant_error():
    # Every pixel off by d: MSE = d**2, PSNR = 20 log10(max_val / d).
    a = np.full((2, 8, 8, 3), 0.5, np.float32)
    b = a + np.float32(0.1)
    np.testing.assert_allclose(M.psnr(a, b), [20.0, 20.0], rtol=1e-5)
    u = np.zeros((8, 8, 3), np.uint8)
    assert float(M.psnr(u, u + 5, max_val=255)) == pytest.approx(20 * math.log10(255 / 5), rel=1e-6)
    assert float(M.psnr(a[0], a[0])) == math.inf


def test_masked_psnr_counts_only_masked_pixels():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10
    b[3, 3] = 200  # outside the mask: must not count
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    # MSE over 2 pixels x 3 channels: (3 * 100) / 6 = 50.
    expected = 10 * math.log10(255**2 / 50.0)
    assert float(M.psnr(a, b, mask=mask, max_val=255)) == pytest.approx(expected, rel=1e-6)
    jitted = jax.jit(lambda a, b, m: M.psnr(a, b, mask=m, max_val=255))
    assert float(jitted(a, b, mask)) == pytest.approx(expected, rel=1e-6)
    # Under jit an empty mask cannot be checked: NaN, as the docstring says.
    assert math.isnan(float(jitted(a, b, np.zeros((4, 4), bool))))


def test_psnr_without_mask_matches_dm_pix():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 2, 9, 7, 3), dtype=np.float32)
    np.testing.assert_allclose(M.psnr(a, b), dm_pix.psnr(a, b), rtol=1e-5)


def test_ssim_hand_values():
    # Constant images p and q: no variance, so SSIM is the luminance term alone,
    # (2 p q + C1) / (p^2 + q^2 + C1) with C1 = (0.01 max_val)^2.
    p, q = 0.5, 0.25
    # (One image shape throughout: dm_pix compiles per shape.)
    a = np.full((3, 16, 16, 3), p, np.float32)
    b = np.full((3, 16, 16, 3), q, np.float32)
    c1 = 0.01**2
    expected = (2 * p * q + c1) / (p * p + q * q + c1)
    np.testing.assert_allclose(M.ssim(a, b), [expected] * 3, rtol=1e-5)
    # Same in uint8 units with max_val=255.
    np.testing.assert_allclose(M.ssim(a * 255, b * 255, max_val=255), [expected] * 3, rtol=1e-5)
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(M.ssim(x, x), np.ones(3), rtol=1e-6)
    assert M.ssim(x.reshape(3, 1, 16, 16, 3), x.reshape(3, 1, 16, 16, 3)).shape == (3, 1)
    assert float(M.ssim(x, 1 - x).max()) < 0.5  # structure inverted


def test_bad_inputs_raise_input_error():
    a = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(InputError, match="shapes differ"):
        M.psnr(a, a[:, :2])
    with pytest.raises(InputError, match=r"\[\.\.\., H, W, C\]"):
        M.psnr(a[0, 0], a[0, 0])
    with pytest.raises(InputError, match="max_val"):
        M.psnr(a, a, max_val=0)
    mask = np.ones((2, 4, 4), bool)
    mask[1] = False
    with pytest.raises(InputError, match=r"no pixel for image\(s\) \[\[1\]\]"):
        M.psnr(a, a + 1, mask=mask)
    with pytest.raises(InputError, match="mask shape"):
        M.psnr(a, a, mask=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="bool"):
        M.psnr(a, a, mask=np.ones((4, 4), np.uint8))
    with pytest.raises(InputError, match="11 x 11"):
        M.ssim(a, a)
