"""The explicit RGB-cache variant's stored control (RGBControlEncoder) and its record key."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from mirage_jax.data import latents as L
from mirage_jax.data.worlds import make_clip
from mirage_jax.errors import ConfigError
from mirage_jax.memory import rgb_cache
from mirage_jax.models.wan.vae import WanVAEConfig
from mirage_jax.preprocess import random_vae

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
HW = (32, 32)
TEXT = L.HashedTextEncoder(dim=8, max_length=4)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
_ENCODE = nnx.jit(lambda vae, video: vae.normalize(vae.encode(video)))


@pytest.fixture(scope="module")
def setup():
    vae = random_vae(WanVAEConfig.tiny("wan2.2"), seed=3)
    clip = dict(make_clip(2, HW, 21, kind="indoor"))  # F = 6 latents; T = 3, P_max = 2 -> starts 2, 3
    clip["dynamic_mask"] = clip["dynamic_mask"].copy()
    clip["dynamic_mask"][8, 4:20, 6:22] = True  # frame 8 (latent 2) has an excluded block
    enc = L.RGBControlEncoder(vae, num_target=3, max_preceding=2, compiler_options=FAST_COMPILE)
    return vae, clip, enc, enc(clip)


def _encode(vae, frames):
    """uint8 [B, T, H, W, 3] -> normalised latents."""
    return np.asarray(_ENCODE(vae, frames.astype(np.float32) / 127.5 - 1.0))


def test_rendering_frame_4j_at_its_own_camera_is_the_frame_where_nothing_is_excluded(setup):
    vae, clip, _, out = setup
    assert out.shape == (2, 3 + 2, 2, 2, vae.config.z_dim) and out.dtype == np.float32
    geo = L.latent_geometry(clip)
    for jj, j in enumerate((2, 3)):
        frame, exclude = clip["frames"][4 * j], geo["exclude"][j]
        # target latent 0 covers render 0 alone (causal VAE): the cloud of frame 4j at camera 4j
        want = _encode(vae, np.where(exclude[..., None], 0, frame)[None, None])[0, 0]
        np.testing.assert_allclose(out[jj, 0], want, atol=1e-5)
        if exclude.any():  # the check can fail: the excluded block is black, not the frame
            assert np.abs(_encode(vae, frame[None, None])[0, 0] - want).max() > 1e-3
    assert geo["exclude"][2].sum() >= 16 * 16
    # preceding entries of start 2: latents 0 and 1 (pixel cameras 0 and 4), each a 1-frame video
    cache = rgb_cache.write(rgb_cache.empty(HW[0] * HW[1]), clip["frames"][8], geo["depth"][2].astype(np.float32),
                            geo["intrinsics"][2], geo["cam2world"][2], exclude=geo["exclude"][2])
    for e, px in ((3, 0), (4, 4)):
        r = rgb_cache.render(cache, clip["intrinsics"][px], clip["cam2world"][px], HW)
        assert 0.1 < float(np.mean(r.hit)) < 1.0  # another camera: a partial render with holes
        np.testing.assert_allclose(out[0, e], _encode(vae, np.asarray(r.image)[None, None])[0, 0], atol=1e-5)
    assert np.abs(out[0, 1:3] - out[1, 0:2]).max() > 1e-3  # start 3's target is rendered from frame 12's cloud


def test_preceding_latents_before_the_clip_are_zero(setup):
    vae, clip, _, _ = setup
    # F - T = 1: start 1 only
    out = L.RGBControlEncoder(vae, num_target=5, max_preceding=2, compiler_options=FAST_COMPILE)(clip)
    assert out.shape == (1, 5 + 2, 2, 2, vae.config.z_dim)
    np.testing.assert_array_equal(out[0, 5], 0.0)  # latent -1
    assert np.abs(out[0, 6]).max() > 0  # latent 0


def test_preprocess_writes_rgb_control_records(setup, tmp_path):
    vae, clip, enc, direct = setup
    source = [clip]
    lat_enc = lambda videos: _encode(vae, videos)  # noqa: E731
    lat_enc.name = "tiny-vae"
    entry = L.preprocess(source, tmp_path / "rgb", encoder=lat_enc, text_encoder=TEXT, rgb_control=enc)
    assert entry["run"]["rgb_control"] == enc.name
    rec = L.open_latent_clips(tmp_path / "rgb")[0]
    np.testing.assert_array_equal(rec["rgb_control"], direct)
    assert rec["latents"].shape == (6, 2, 2, vae.config.z_dim)
    # a directory written without the key is not resumed with it (and vice versa)
    L.preprocess(source, tmp_path / "plain", encoder=lat_enc, text_encoder=TEXT)
    assert "rgb_control" not in L.open_latent_clips(tmp_path / "plain")[0]
    with pytest.raises(ConfigError, match="rgb_control"):
        L.preprocess(source, tmp_path / "plain", encoder=lat_enc, text_encoder=TEXT, rgb_control=enc)
