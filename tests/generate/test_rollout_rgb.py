"""The rollout with the explicit RGB point-cloud cache (memory_kind="rgb", issue 10 section 4) on a
tiny random model: one trace for 2 chunks, the cache written with the first image and every 4th
decoded frame, the control built from renders of the chunk's pixel cameras, output unlike the
latent memory's."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from mirage_jax import memory
from mirage_jax.data.worlds import make_clip
from mirage_jax.diffusion import FlowEuler
from mirage_jax.errors import ConfigError, InputError
from mirage_jax.generate.denoise import TRACE_COUNTS
from mirage_jax.generate.pipeline import tiny_pipeline
from mirage_jax.generate.providers import GeometryDepth, GeometryMask
from mirage_jax.generate.rollout import Rollout, RolloutConfig, memory_bytes
from mirage_jax.memory import rgb_cache
from mirage_jax.models.mirage.rgb_control import encode_views

HW = (32, 64)
CHUNKS = 2
LATENT_CHUNKS = 3  # the latent run uses test_rollout.py's programs (same config): no extra compile there


@pytest.fixture(scope="module")
def run():
    clip = make_clip(5, HW, 33 + 32 * (LATENT_CHUNKS - 1), kind="indoor")
    pipe = tiny_pipeline(0)
    text = pipe.encode_text("a room")
    kw = dict(depth=GeometryDepth(clip["depth"]), mask=GeometryMask(~clip["dynamic_mask"]),
              sampler=FlowEuler(num_steps=2))
    args = (pipe.model, pipe.vae, text, clip["intrinsics"][0], clip["cam2world"])
    first = (clip["frames"][0], clip["depth"][0], clip["dynamic_mask"][0])
    before = dict(TRACE_COUNTS)
    rgb = Rollout(*args, **kw, config=RolloutConfig(num_chunks=CHUNKS, image_hw=HW, memory_kind="rgb"))
    rgb.init(*first)
    for _ in range(CHUNKS):
        rgb.chunk()
    traces = {k: TRACE_COUNTS[k] - before.get(k, 0) for k in ("rollout_chunk", "rollout_write", "rollout_init")}
    lat = Rollout(*args, **kw, config=RolloutConfig(num_chunks=LATENT_CHUNKS, image_hw=HW))
    lat.init(*first)
    for _ in range(CHUNKS):
        lat.chunk()
    return dict(clip=clip, pipe=pipe, rgb=rgb.result(), lat=lat.result(), traces=traces)


def test_rgb_rollout_compiles_once_and_differs_from_the_latent_memory(run):
    rgb, lat = run["rgb"], run["lat"]
    assert rgb.video.shape == lat.video.shape == (33 + 32 * (CHUNKS - 1), *HW, 3)
    assert rgb.latents.shape == lat.latents.shape
    assert all(v <= 1 for v in run["traces"].values()), run["traces"]  # 2 chunks, one program each
    np.testing.assert_array_equal(rgb.video[0], lat.video[0])  # same clean first frame
    assert np.abs(rgb.latents[1:].astype(np.float64) - lat.latents[1:]).max() > 1e-3
    assert rgb.memory.channels == 3 and rgb.memory.dtype == np.uint8
    H, W = HW
    assert rgb.chunks[-1]["memory_bytes"] == memory_bytes(rgb.memory)
    assert all(0.0 < rec["readout_coverage"] <= 1.0 for rec in rgb.chunks)
    # a pixel-resolution cache holds 16 x 16 = 256 times as many points as the latent memory's cells
    assert rgb.chunks[-1]["memory"]["written"] + rgb.chunks[-1]["memory"]["rejected"] == (1 + 1 + 8 * CHUNKS) * H * W
    assert rgb.chunks[-1]["memory_bytes"]["held"] > 20 * lat.chunks[-1]["memory_bytes"]["held"]


def test_rgb_cache_holds_the_first_image_and_every_fourth_decoded_frame(run):
    rgb, clip = run["rgb"], run["clip"]
    K, P, D, X = clip["intrinsics"][0], clip["cam2world"], clip["depth"], clip["dynamic_mask"]
    cache = rgb_cache.empty(rgb.memory.capacity)
    cache = rgb_cache.write(cache, clip["frames"][0], D[0], K, P[0], exclude=X[0])  # init
    cache = rgb_cache.write(cache, clip["frames"][0], D[0], K, P[0], exclude=X[0])  # chunk 0's frame 0 again
    for g in range(1, 1 + 8 * CHUNKS):
        cache = rgb_cache.write(cache, rgb.video[4 * g], D[4 * g], K, P[4 * g], exclude=X[4 * g])
    np.testing.assert_array_equal(np.asarray(cache.points), np.asarray(rgb.memory.points))
    np.testing.assert_array_equal(np.asarray(cache.features), np.asarray(rgb.memory.features))


def test_encode_views_renders_the_frame_back_at_its_own_camera(run):
    """A cache of one frame rendered at that frame's camera is the frame (excluded pixels black):
    latent 0 of the target (the causal VAE encodes frame 0 alone) equals that image's encoding;
    at another camera the render has holes and the encoding differs."""
    clip, vae = run["clip"], run["pipe"].vae
    K, P, frame = clip["intrinsics"][0], clip["cam2world"], clip["frames"][8]
    exclude = np.zeros(HW, bool)
    exclude[4:20, 10:30] = True
    cache = rgb_cache.write(rgb_cache.empty(HW[0] * HW[1]), frame, clip["depth"][8], K, P[8], exclude=exclude)
    fn = nnx.jit(lambda v, c: encode_views(v, c, K, P[8:13], P[[8, 4]], HW))
    feats, hit = fn(vae, cache)
    assert feats.shape == (2 + 2, HW[0] // 16, HW[1] // 16, vae.config.z_dim) and hit.shape == (5 + 2, *HW)
    np.testing.assert_array_equal(np.asarray(hit[0]), ~exclude)
    seen = np.where(exclude[..., None], 0, frame).astype(np.float32) / 127.5 - 1.0
    want = nnx.jit(lambda v, x: v.normalize(v.encode(x)))(vae, seen[None, None])[0, 0]
    np.testing.assert_allclose(np.asarray(feats[0]), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(feats[2]), np.asarray(want), atol=1e-5)  # preceding camera 8: 1-frame video
    assert np.abs(np.asarray(feats[3]) - np.asarray(want)).max() > 1e-2  # camera 4 sees the cloud elsewhere
    with pytest.raises(InputError, match="1 \\+ 4 k"):
        encode_views(vae, cache, K, P[8:12], P[:0], HW)
    with pytest.raises(InputError, match="uint8"):
        encode_views(vae, memory.empty(10, 3), K, P[8:13], P[:0], HW)


def test_memory_kind_is_checked():
    with pytest.raises(ConfigError, match="memory_kind"):
        RolloutConfig(memory_kind="pixels")
    pipe = tiny_pipeline(0)
    P = np.tile(np.eye(4, dtype=np.float32), (33, 1, 1))
    K = np.array([[32, 0, 32], [0, 32, 16], [0, 0, 1]], np.float32)
    r = Rollout(pipe.model, pipe.vae, pipe.encode_text("x"), K, P, depth=None,
                config=RolloutConfig(num_chunks=1, image_hw=HW, memory_kind="rgb"))
    with pytest.raises(InputError, match="in \\[-1, 1\\]"):
        r.init(np.full((*HW, 3), 2.0, np.float32), np.ones(HW, np.float32))
    # a pipeline rolls out with the memory its model was trained on (Pipeline.control_source)
    assert pipe.control_source == "latent" and pipe.rollout_config(num_chunks=1).memory_kind == "latent"
    assert dataclasses.replace(pipe, control_source="rgb").rollout_config().memory_kind == "rgb"
    with pytest.raises(ConfigError, match="memory_kind 'rgb' would feed"):
        pipe.rollout_config(memory_kind="rgb")
    with pytest.raises(ConfigError, match="control_source must be one of"):
        dataclasses.replace(pipe, control_source="pixels")


def test_chunk_0_control_is_the_training_records_rgb_control(recording):
    """Training's precomputed control (RGBControlEncoder, start 0) and the rollout's chunk-0
    readout are the same numbers: the same cache (frame 0 with the record's float16 depth and
    exclusion mask), cameras 0..32, no preceding latent, the same VAE normalisation."""
    from mirage_jax.data.latents import RGBControlEncoder, latent_geometry

    clip = make_clip(7, HW, 33, kind="indoor")
    pipe = tiny_pipeline(0)
    geo = latent_geometry(clip)
    stored = RGBControlEncoder(pipe.vae, num_target=9, max_preceding=2)(clip)
    assert stored.shape[:2] == (1, 11)  # one start (j = 0): 9 target latents + 2 preceding (before the clip: 0)
    _Recording, _SEEN = recording
    r = Rollout(_Recording(pipe.model), pipe.vae, pipe.encode_text("a room"), clip["intrinsics"][0], clip["cam2world"],
                depth=GeometryDepth(clip["depth"]), sampler=FlowEuler(num_steps=1),
                config=RolloutConfig(num_chunks=1, image_hw=HW, memory_kind="rgb"))
    r.init(clip["frames"][0], geo["depth"][0].astype(np.float32), geo["exclude"][0])
    r.chunk()
    c = pipe.model.config.dit.in_channels
    assert len(_SEEN) == 1 and np.abs(stored[0, :9]).max() > 0.1
    assert np.abs(stored[0, 8] - stored[0, 1]).max() > 1e-3  # the camera moves: a wrong camera index would show
    np.testing.assert_allclose(_SEEN[0][0, ..., :c], stored[0], atol=1e-4)
