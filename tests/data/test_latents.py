"""Preprocessing clips into latent clip records: schema, equality with a direct VAE encode, resume."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from mirage_jax.data import latents as L
from mirage_jax.errors import ConfigError, FileFormatError
from mirage_jax.models.wan.vae import WanVAEConfig
from mirage_jax.preprocess import random_vae
from mirage_jax.sharding import make_mesh

# imageio-ffmpeg starts ffmpeg with subprocess (fork + exec at once), which JAX warns about.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
FAST_COMPILE = {"xla_backend_optimization_level": 0}
TEXT = L.HashedTextEncoder(dim=16, max_length=8)


class Subset:
    """The first ``n`` clips of a source."""

    def __init__(self, source, n):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]


class Counting:
    """Wraps an encoder (same name, batch size) and counts its calls; ``fail_after`` simulates a kill."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        self.name = getattr(inner, "name")
        self.batch_size = getattr(inner, "batch_size", 1)

    def __call__(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return self.inner(x)


@pytest.fixture(scope="module")
def vae():
    return random_vae(WanVAEConfig.tiny("wan2.2"), seed=3)


@pytest.fixture(scope="module")
def encoder(vae):
    mesh = make_mesh((2,), ("data",), devices=jax.devices()[:2])
    return L.LatentEncoder(vae, mesh=mesh, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def written(tiny_source, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "ref"
    source = Subset(tiny_source, 3)
    entry = L.preprocess(source, out, encoder=encoder, text_encoder=TEXT, clips_per_shard=2)
    return out, source, entry


def test_records_follow_the_schema_and_equal_a_direct_encode(written, vae):
    out, source, entry = written
    ds = L.open_latent_clips(out)
    assert len(ds) == 3 and entry["num_shards"] == 2 and entry["complete"]
    direct = jax.jit(lambda v: vae.normalize(vae.encode(v)), compiler_options=FAST_COMPILE)
    for i in range(3):
        rec, clip = ds[i], source[i]
        T, H, W = clip["depth"].shape  # 9 frames of 64 x 64 -> F = 3 latents of 4 x 4 x 8
        F = (T - 1) // 4 + 1
        assert rec["latents"].shape == (F, H // 16, W // 16, 8) and rec["latents"].dtype == np.float32
        video = clip["frames"][None].astype(np.float32) / 127.5 - 1.0
        np.testing.assert_allclose(rec["latents"], np.asarray(direct(video))[0], rtol=1e-5, atol=1e-5)
        pos = np.arange(0, T, 4)
        np.testing.assert_array_equal(rec["frame_indices"], pos)
        assert rec["depth"].dtype == np.float16 and rec["depth"].shape == (F, H, W)
        np.testing.assert_array_equal(rec["depth"], clip["depth"][pos])
        depth = clip["depth"][pos].astype(np.float32)
        expect = clip["dynamic_mask"][pos] | clip["sky_mask"][pos] | ~np.isfinite(depth) | (depth <= 0)
        np.testing.assert_array_equal(rec["exclude"], expect)
        np.testing.assert_array_equal(rec["intrinsics"], clip["intrinsics"][pos])
        np.testing.assert_array_equal(rec["cam2world"], clip["cam2world"][pos])
        np.testing.assert_array_equal(rec["text"], TEXT([clip["caption"].decode()])[0])
        assert rec["caption"] == clip["caption"] and rec["scene_id"] == clip["scene_id"]
        assert tuple(rec["image_hw"]) == (H, W) and rec["source_index"] == i


def test_resume_after_a_kill_gives_identical_files(written, encoder, tmp_path):
    ref, source, _ = written
    out = tmp_path / "resumed"
    crashing = Counting(encoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):  # dies while encoding shard 2 of 3 (one clip per shard)
        L.preprocess(source, out, encoder=crashing, text_encoder=TEXT, clips_per_shard=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["splits"]["train"]["shards"]) == ["0", "1"] and not manifest["splits"]["train"]["complete"]
    with pytest.raises(FileFormatError, match="incomplete"):
        L.open_latent_clips(out)
    restarted = Counting(encoder)
    L.preprocess(source, out, encoder=restarted, text_encoder=TEXT, clips_per_shard=1)
    assert restarted.calls == 1  # only the unfinished shard was encoded again
    straight = tmp_path / "straight"
    L.preprocess(source, straight, encoder=encoder, text_encoder=TEXT, clips_per_shard=1)
    shards = sorted(f for f in os.listdir(straight) if ".array_record-" in f)
    assert len(shards) == 3 and sorted(f for f in os.listdir(out) if ".array_record-" in f) == shards
    for name in shards + ["manifest.json"]:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    # Same records as the 2-clips-per-shard reference written in batches of 2.
    a, b = L.open_latent_clips(out), L.open_latent_clips(ref)
    for i in range(3):
        np.testing.assert_array_equal(a[i]["latents"], b[i]["latents"])
    # Another setting on the same directory refuses to mix.
    with pytest.raises(ConfigError, match="clips_per_shard"):
        L.preprocess(source, out, encoder=encoder, text_encoder=TEXT, clips_per_shard=2)


def test_vipe_folders_with_rejection_and_bfloat16(encoder, tmp_path, tiny_source):
    from mirage_jax.data.vipe import write_vipe_clip

    clip = tiny_source[0]
    T = 10  # one frame beyond 1 + 4k: dropped and counted
    frames = np.concatenate([clip["frames"], clip["frames"][-1:]])
    geo = {k: np.concatenate([clip[k], clip[k][-1:]]) for k in ("depth", "cam2world", "intrinsics", "dynamic_mask")}
    write_vipe_clip(tmp_path / "src" / "a", frames=frames, caption="a room", **geo)
    masked = dict(geo, dynamic_mask=np.ones_like(geo["dynamic_mask"]))
    write_vipe_clip(tmp_path / "src" / "b", frames=frames, caption="all moving", **masked)
    source = L.open_clip_source("vipe_clips/native", source_dir=tmp_path / "src")
    assert len(source) == 2
    entry = L.preprocess(source, tmp_path / "out", encoder=encoder, text_encoder=TEXT,
                         latents_dtype="bfloat16", text_dtype="bfloat16")
    shard = entry["shards"]["0"]
    assert shard["records"] == 1 and shard["tail_frames_dropped"] == T - 9
    assert [r[:2] for r in shard["rejected"]] == [[1, "b"]]
    rec = L.open_latent_clips(tmp_path / "out")[0]
    assert rec["latents"].dtype.name == "bfloat16" and rec["latents"].shape == (3, 4, 4, 8)
    assert rec["text"].dtype.name == "bfloat16" and rec["caption"] == b"a room"
    np.testing.assert_array_equal(rec["depth"], geo["depth"][0:9:4])


def test_latent_geometry_excludes_masks_and_invalid_depth():
    T, H, W = 6, 2, 3  # 6 frames -> the first 5 are used -> latents at frames 0 and 4
    depth = np.full((T, H, W), 2.0, np.float32)
    depth[4, 0, :3] = [0.0, np.nan, np.inf]
    dyn, sky, keep = np.zeros((T, H, W), bool), np.zeros((T, H, W), bool), np.ones((T, H, W), bool)
    dyn[0, 1, 0], sky[0, 1, 1], keep[4, 1, 2] = True, True, False
    dyn[1] = True  # not a latent-aligned frame: ignored
    clip = dict(depth=depth, dynamic_mask=dyn, sky_mask=sky, keep_mask=keep,
                intrinsics=np.tile(np.eye(3, dtype=np.float32), (T, 1, 1)), cam2world=np.tile(np.eye(4), (T, 1, 1)))
    geo = L.latent_geometry(clip)
    np.testing.assert_array_equal(geo["frame_indices"], [0, 4])
    expect = np.zeros((2, H, W), bool)
    expect[0, 1, 0] = expect[0, 1, 1] = True
    expect[1, 0, :] = True
    expect[1, 1, 2] = True
    np.testing.assert_array_equal(geo["exclude"], expect)
    assert geo["depth"].dtype == np.float16 and geo["cam2world"].dtype == np.float32
    with pytest.raises(ValueError, match="float16 range"):
        L.latent_geometry(dict(clip, depth=np.full((T, H, W), 1e6, np.float32)))


def test_hashed_text_encoder_is_deterministic_and_zero_padded():
    from mirage_jax.preprocess import make_text_encoder

    enc = make_text_encoder("hashed:16:8")
    assert enc == TEXT
    a, b = enc(["A red door.", "a RED door ."])
    np.testing.assert_array_equal(a, b)  # lower-cased word / punctuation tokens
    assert np.all(a[4:] == 0) and np.all(np.abs(a[:4]).sum(-1) > 0)
    assert not np.array_equal(enc(["blue"])[0, 0], enc(["red"])[0, 0])
    with pytest.raises(ConfigError):
        make_text_encoder("hashed:16")


def test_cli_reports_bad_arguments(tmp_path, capsys):
    from mirage_jax.preprocess import main

    argv = ["--dataset", "synthetic_worlds/tiny", "--vae-config", "tiny", "--out", str(tmp_path)]
    assert main(argv + ["--text-encoder", "hashed:0:4"]) == 2
    assert "hashed:DIM:LEN" in capsys.readouterr().err
    assert main(argv + ["--devices", "999"]) == 2
    assert "999" in capsys.readouterr().err
