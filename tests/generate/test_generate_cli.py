"""`mirage-jax generate` end to end on the tiny random pipeline, and bad inputs refused before compute."""

import json

import numpy as np
import pytest
from PIL import Image

from mirage_jax import geometry, memory
from mirage_jax.cli import main as mirage_main
from mirage_jax.data.worlds import make_clip
from mirage_jax.generate import cli
from mirage_jax.generate.denoise import TRACE_COUNTS

HW = (32, 64)


@pytest.fixture(scope="module")
def geo_path(tmp_path_factory):
    clip = make_clip(5, HW, 97, kind="indoor")
    path = tmp_path_factory.mktemp("geo") / "geometry.npz"
    geometry.write_geometry_npz(path, clip["depth"], clip["intrinsics"], clip["cam2world"], frames=clip["frames"],
                                masks=~clip["dynamic_mask"])
    return path, clip


def test_generate_end_to_end(geo_path, tmp_path, capsys):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # noqa: F841  (the vipe extra)
    from mirage_jax.data.vipe import read_video

    path, clip = geo_path
    out = tmp_path / "out"
    before = {k: TRACE_COUNTS[k] for k in ("rollout_chunk", "rollout_write")}
    rc = mirage_main(["generate", "--geometry", str(path), "--chunks", "3", "--prompt", "a room",
                      "--checkpoint", "random:tiny", "--out", str(out), "--steps", "2", "--sampler", "euler",
                      "--worldscore", "--masks", "--quiet"])
    assert rc == 0
    assert all(TRACE_COUNTS[k] - v <= 1 for k, v in before.items())  # 3 chunks, one program each
    n = 97
    video = read_video(out / "video.mp4")
    assert video.shape == (n, *HW, 3)
    frames = sorted((out / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:05d}.png" for i in range(n)]
    png = np.stack([np.asarray(Image.open(f)) for f in frames])
    # the same frames, up to H.264 (random-weight frames are noise: compare frame colour means)
    assert np.abs(video.mean((1, 2)) - png.mean((1, 2))).max() < 6
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == n
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["config"]["num_chunks"] == 3 and meta["seeds"]["rollout"] == 42 and meta["depth"] == "gt"
    assert [c["latent_frames"] for c in meta["chunks"]] == [list(range(32 * c, 32 * c + 33, 4)) for c in range(3)]
    assert meta["chunks"][0]["reference_latents"] == [] and meta["chunks"][1]["preceding_latents"] == [6, 7]
    assert all(c["seconds"]["total"] > 0 for c in meta["chunks"])
    mem = memory.load(out / "memory.npz")
    assert int(mem.count) == meta["memory"]["count"] == meta["chunks"][-1]["memory"]["count"] > 0
    # every cell of the 1 + 9 + 8 + 8 written latent frames (2 x 4 cells each) was stored or rejected
    assert meta["memory"]["written"] + meta["memory"]["rejected"] == 26 * 8
    header = (out / "memory.ply").read_bytes()[:400].decode("latin-1")
    assert f"element vertex {int(mem.count)}" in header
    # WorldScore layout
    assert read_video(out / "videos" / "output.mp4").shape == (n, *HW, 3)
    cams = geometry.read_worldscore_cameras(out / "camera_data.json", HW)
    np.testing.assert_allclose(cams["cam2world"], clip["cam2world"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "input_image.png")), clip["frames"][0])
    assert json.loads((out / "image_data.json").read_text())["prompt"] == "a room"


def _bad(argv, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_run", lambda *a: pytest.fail("computed despite a bad input"))
    assert cli.main(argv + ["--checkpoint", "random:tiny", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mirage-jax generate: error: ")
    return err[0]


def test_bad_inputs_exit_2_before_compute(geo_path, tmp_path, capsys, monkeypatch):
    path, clip = geo_path
    img = tmp_path / "img.png"
    Image.fromarray(clip["frames"][0]).save(img)
    odd = tmp_path / "odd.png"
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(odd)
    assert "not a preset" in _bad(["--image", str(img), "--trajectory", "spiral_in", "--depth", "file",
                                   "--depth-file", "x.npy"], capsys, monkeypatch)
    short = tmp_path / "short.npz"
    geometry.write_geometry_npz(short, clip["depth"][:40], clip["intrinsics"][:40], clip["cam2world"][:40])
    assert "40 cameras, but 2 chunks need 65" in _bad(["--image", str(img), "--trajectory", str(short), "--chunks", "2",
                                                       "--depth", "file", "--depth-file", "x.npy"], capsys, monkeypatch)
    assert "not divisible by 16" in _bad(["--image", str(odd), "--trajectory", "push_in"], capsys, monkeypatch)
    assert "--depth-file PATH" in _bad(["--image", str(img), "--trajectory", "push_in", "--depth", "file"],
                                       capsys, monkeypatch)
    assert "no such file" in _bad(["--image", str(img), "--trajectory", "push_in", "--depth", "file",
                                   "--depth-file", str(tmp_path / "nope.npy")], capsys, monkeypatch)
    np.save(tmp_path / "d.npy", clip["depth"][:20])
    assert "depth for 20 frames" in _bad(["--image", str(img), "--trajectory", "push_in", "--depth", "file",
                                          "--depth-file", str(tmp_path / "d.npy")], capsys, monkeypatch)
