"""TFDS builders: array_record without TensorFlow, schemas, determinism, manual-dir builders."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import mirage_jax.data  # noqa: F401  (registers the builders)
from mirage_jax.data import builders as B
from mirage_jax.geometry import cameras, formats

FLOAT16_RTOL = 2.0**-11  # half a unit in the last place of float16's 10-bit mantissa


def _text(x):
    return x.decode() if isinstance(x, bytes) else str(x)


# --------------------------------------------------------------------------------------------
# synthetic_worlds
# --------------------------------------------------------------------------------------------


def test_builders_registered_and_default_to_array_record(tfds_data_dir):
    names = set(tfds.core.registered.list_imported_builders())
    assert {"synthetic_worlds", "geometry_npz", "re10k_clips"} <= names
    b = tfds.builder("synthetic_worlds/small_128", data_dir=str(tfds_data_dir))
    assert b.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD
    cfg = b.builder_config
    assert (cfg.image_hw, cfg.num_frames) == ((128, 128), 33)
    assert tfds.builder("synthetic_worlds/chunk_256", data_dir=str(tfds_data_dir)).builder_config.num_frames == 81


def test_tiny_written_as_array_record_without_tensorflow(tiny_builder, tiny_source):
    files = sorted(os.listdir(tiny_builder.data_dir))
    assert any(".array_record-" in f and "-train." in f for f in files), files
    assert not any("tfrecord" in f for f in files), files
    assert tiny_builder.info.splits["train"].num_examples == 6
    assert tiny_builder.info.splits["test"].num_examples == 2
    assert len(tiny_source) == 6
    _ = tiny_source[0]
    assert importlib.util.find_spec("tensorflow") is None
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)


def test_tiny_features_dtypes_and_shapes(tiny_source):
    ex = tiny_source[3]
    T, H, W = 9, 64, 64
    expect = {
        "frames": ((T, H, W, 3), np.uint8),
        "depth": ((T, H, W), np.float16),
        "dynamic_mask": ((T, H, W), np.bool_),
        "sky_mask": ((T, H, W), np.bool_),
        "intrinsics": ((T, 3, 3), np.float32),
        "cam2world": ((T, 4, 4), np.float32),
        "times": ((T,), np.float32),
    }
    for key, (shape, dtype) in expect.items():
        assert ex[key].shape == shape, key
        assert ex[key].dtype == dtype, key
    for key in ("scene_id", "caption", "kind", "trajectory"):
        assert isinstance(ex[key], bytes), key
    cameras.check_intrinsics(ex["intrinsics"])
    cameras.check_pose(ex["cam2world"])


@pytest.mark.parametrize("split, index", [("train", 0), ("train", 5), ("test", 1)])
def test_examples_equal_make_clip_for_their_seed(tiny_builder, split, index):
    from mirage_jax.data.worlds import make_clip

    cfg = tiny_builder.builder_config
    ex = tiny_builder.as_data_source(split=split)[index]
    params = B.synthetic_clip_params(cfg, split, index)
    # Record i of a split is example i: its stored parameters are those derived for (config, split, i).
    assert ex["seed"] == params["seed"] == B.derive_seed("synthetic_worlds", "tiny", split, index)
    assert _text(ex["kind"]) == params["kind"] and _text(ex["trajectory"]) == params["trajectory"]
    assert np.float32(ex["fov_deg"]) == np.float32(params["fov_deg"])
    assert bool(ex["shadows"]) == params["shadows"] and int(ex["fps"]) == params["fps"]
    clip = make_clip(**params)
    np.testing.assert_array_equal(ex["frames"], np.asarray(clip["frames"]))
    np.testing.assert_array_equal(ex["dynamic_mask"], np.asarray(clip["dynamic_mask"]))
    np.testing.assert_array_equal(ex["sky_mask"], np.asarray(clip["sky_mask"]))
    np.testing.assert_array_equal(ex["intrinsics"], np.asarray(clip["intrinsics"], np.float32))
    np.testing.assert_array_equal(ex["cam2world"], np.asarray(clip["cam2world"], np.float32))
    np.testing.assert_array_equal(ex["times"], np.asarray(clip["times"], np.float32))
    depth = np.asarray(clip["depth"], np.float32)
    stored = ex["depth"].astype(np.float32)
    np.testing.assert_array_equal(np.isfinite(stored), np.isfinite(depth))
    fin = np.isfinite(depth)
    np.testing.assert_allclose(stored[fin], depth[fin], rtol=FLOAT16_RTOL, atol=0)
    assert _text(ex["scene_id"]) == str(clip["scene_id"])
    assert _text(ex["caption"]) == str(clip["caption"])


def test_seeds_depend_on_config_split_and_index():
    seeds = {
        B.derive_seed("synthetic_worlds", c, s, i) for c in ("tiny", "small_128") for s in ("train", "test") for i in range(50)
    }
    assert len(seeds) == 200
    assert all(0 <= s < 2**31 for s in seeds)
    assert B.derive_seed("synthetic_worlds", "tiny", "train", 3) == B.derive_seed("synthetic_worlds", "tiny", "train", 3)
    cfg = B.SyntheticWorldsConfig(name="mix", kinds=("indoor", "outdoor"), shadows_probability=0.5, fov_range_deg=(40.0, 80.0))
    params = [B.synthetic_clip_params(cfg, "train", i) for i in range(40)]
    assert {p["kind"] for p in params} == {"indoor", "outdoor"}
    assert {p["shadows"] for p in params} == {False, True}
    assert all(40.0 <= p["fov_deg"] <= 80.0 for p in params)
    assert params[7] == B.synthetic_clip_params(cfg, "train", 7)


def test_config_validation():
    with pytest.raises(ValueError, match="image_hw"):
        B.SyntheticWorldsConfig(name="bad", image_hw=(0, 64))
    with pytest.raises(ValueError, match="fov_range_deg"):
        B.SyntheticWorldsConfig(name="bad", fov_range_deg=(70.0, 60.0))
    with pytest.raises(ValueError, match="frame_stride"):
        B.Re10kConfig(name="bad", frame_stride=0)


def test_synthetic_example_rejects_bad_clip():
    params = dict(seed=1, image_hw=(4, 4), num_frames=2, kind="indoor", trajectory="walk", fov_deg=60.0, shadows=False, fps=16)
    clip = dict(
        frames=np.zeros((2, 4, 4, 3), np.uint8), depth=np.ones((2, 4, 4), np.float32),
        dynamic_mask=np.zeros((2, 4, 4), bool), sky_mask=np.zeros((2, 4, 4), bool),
        intrinsics=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)), cam2world=np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
        times=np.arange(2, dtype=np.float32) / 16,
    )
    assert B.synthetic_example(clip, params)["depth"].dtype == np.float16
    with pytest.raises(ValueError, match="frames has shape"):
        B.synthetic_example({**clip, "frames": np.zeros((2, 4, 5, 3), np.uint8)}, params)
    with pytest.raises(ValueError, match="float16 range"):
        B.synthetic_example({**clip, "depth": np.full((2, 4, 4), 1e6, np.float32)}, params)


# --------------------------------------------------------------------------------------------
# resize / crop geometry
# --------------------------------------------------------------------------------------------


def test_adjust_intrinsics_maps_projected_points_exactly():
    rng = np.random.default_rng(0)
    src_hw, dst_hw = (48, 80), (32, 32)
    K = np.array([[70.0, 0.0, 41.3], [0.0, 66.0, 22.9], [0.0, 0.0, 1.0]])
    (rh, rw), (y0, x0), sy, sx = B.resize_crop_geometry(src_hw, dst_hw)
    assert (rh, rw) == (32, 53) and (y0, x0) == (0, 10)
    K2 = B.adjust_intrinsics(K, src_hw, dst_hw).astype(np.float64)
    X = rng.uniform([-1, -1, 2], [1, 1, 5], (100, 3))
    uv = (X @ K.T)[:, :2] / X[:, 2:]
    uv2 = (X @ K2.T)[:, :2] / X[:, 2:]
    # Pixel-centre convention: x -> (x + 0.5) s - 0.5 - offset.
    np.testing.assert_allclose(uv2[:, 0], (uv[:, 0] + 0.5) * sx - 0.5 - x0, atol=1e-4)
    np.testing.assert_allclose(uv2[:, 1], (uv[:, 1] + 0.5) * sy - 0.5 - y0, atol=1e-4)
    img = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert B.resize_crop_image(img, dst_hw).shape == (32, 32, 3)
    mask = rng.random((48, 80)) > 0.5
    out = B.resize_crop_image(mask, dst_hw)
    assert out.dtype == np.bool_ and out.shape == (32, 32)


# --------------------------------------------------------------------------------------------
# geometry_npz
# --------------------------------------------------------------------------------------------


def _geometry_sample(rng, T, H, W, *, masks: bool):
    K = np.tile(np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]], np.float32), (T, 1, 1))
    c2w = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    c2w[:, 2, 3] = np.linspace(0, 1, T)
    return dict(
        frames=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
        depths=rng.uniform(0.5, 4.0, (T, H, W)).astype(np.float32),
        intrinsics=K,
        poses_c2w=c2w,
        masks=(rng.random((T, H, W)) > 0.3) if masks else None,
        frame_indices=np.arange(0, 4 * T, 4),
        original_size=(2 * H, 2 * W),
    )


def test_geometry_npz_builder(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    samples = {
        "train/a": _geometry_sample(rng, 3, 8, 12, masks=True),
        "train/b": _geometry_sample(rng, 2, 8, 12, masks=False),
        "test/c": _geometry_sample(rng, 4, 6, 10, masks=True),
    }
    for name, s in samples.items():
        formats.write_geometry_npz(src / name / "geometry.npz", **s)
    (src / "train" / "a" / "caption.txt").write_text("a red room\n")
    b = B.GeometryNpz(source_dir=str(src), data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    assert b.info.splits["train"].num_examples == 2 and b.info.splits["test"].num_examples == 1
    got = {}
    for split in ("train", "test"):
        for ex in b.as_data_source(split=split):
            got[f"{split}/{_text(ex['scene_id'])}"] = ex
    assert set(got) == set(samples)
    for name, s in samples.items():
        ex = got[name]
        np.testing.assert_array_equal(ex["frames"], s["frames"])
        np.testing.assert_array_equal(ex["depth"], s["depths"])
        np.testing.assert_array_equal(ex["intrinsics"], s["intrinsics"])
        np.testing.assert_array_equal(ex["cam2world"], s["poses_c2w"])
        np.testing.assert_array_equal(ex["frame_indices"], s["frame_indices"])
        np.testing.assert_array_equal(ex["original_size"], s["original_size"])
        np.testing.assert_array_equal(ex["processed_size"], s["frames"].shape[1:3])
        assert bool(ex["has_masks"]) == (s["masks"] is not None)
        expect_mask = s["masks"] if s["masks"] is not None else np.ones(s["depths"].shape, bool)
        np.testing.assert_array_equal(ex["keep_mask"], expect_mask)
    assert _text(got["train/a"]["caption"]) == "a red room"


def test_geometry_npz_builder_broken_file_names_it(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    formats.write_geometry_npz(src / "good.npz", **_geometry_sample(rng, 2, 4, 4, masks=False))
    bad = _geometry_sample(rng, 2, 4, 4, masks=False)
    bad_path = src / "zz_bad.npz"
    np.savez(bad_path, depths=bad["depths"], intrinsics=bad["intrinsics"][:1], poses_c2w=bad["poses_c2w"], frames=bad["frames"])
    b = B.GeometryNpz(source_dir=str(src), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="zz_bad.npz") as info:
        b.download_and_prepare()
    assert "intrinsics" in str(info.value)
    with pytest.raises(ValueError, match="not_an_npz.npz"):
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "not_an_npz.npz").write_bytes(b"this is not a zip archive")
        B.geometry_npz_example(tmp_path / "junk" / "not_an_npz.npz")


# --------------------------------------------------------------------------------------------
# re10k_clips
# --------------------------------------------------------------------------------------------


def _write_re10k_clip(root, name, *, T, hw, rng, ext=".png", skip_frame=None):
    from PIL import Image

    H, W = hw
    ts = 1_000_000 + 33_366 * np.arange(T, dtype=np.int64)
    c2w = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 0.5, T)
    ang = np.linspace(0, 0.3, T)
    c2w[:, 0, 0] = np.cos(ang)
    c2w[:, 0, 2] = np.sin(ang)
    c2w[:, 2, 0] = -np.sin(ang)
    c2w[:, 2, 2] = np.cos(ang)
    norm = np.tile(np.array([0.9, 1.4, 0.52, 0.47], np.float32), (T, 1))
    cams = formats.Re10kCameras(f"https://www.youtube.com/watch?v={name}", ts, norm, c2w)
    root.mkdir(parents=True, exist_ok=True)
    formats.write_re10k(root / f"{name}.txt", cams)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    (root / name).mkdir(exist_ok=True)
    for j in range(T):
        if j != skip_frame:
            Image.fromarray(frames[j]).save(root / name / f"{ts[j]}{ext}")
    return cams, frames


def test_re10k_builder_resizes_crops_and_chunks(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "re10k"
    cams_a, frames_a = _write_re10k_clip(src / "train", "clipA", T=11, hw=(24, 40), rng=rng)
    _write_re10k_clip(src / "train", "clipB", T=5, hw=(30, 30), rng=rng, ext=".jpg")
    _write_re10k_clip(src / "test", "clipC", T=8, hw=(24, 40), rng=rng)
    cfg = B.Re10kConfig(name="t16", image_hw=(16, 16), num_frames=4, frame_stride=2)
    b = B.Re10kClips(config=cfg, source_dir=str(src), data_dir=str(tmp_path / "tfds"))
    b.download_and_prepare()
    train = list(b.as_data_source(split="train"))
    # clipA: 11 frames, stride 2 -> 6 frames -> one chunk of 4 (2 left over); clipB: 5 -> 3 -> none.
    assert [(_text(e["scene_id"]), list(e["frame_indices"])) for e in train] == [("clipA", [0, 2, 4, 6])]
    test = list(b.as_data_source(split="test"))
    assert [(_text(e["scene_id"]), list(e["frame_indices"])) for e in test] == [("clipC", [0, 2, 4, 6])]
    ex = train[0]
    assert ex["frames"].shape == (4, 16, 16, 3) and ex["frames"].dtype == np.uint8
    np.testing.assert_array_equal(ex["timestamps"], cams_a.timestamps[[0, 2, 4, 6]])
    np.testing.assert_allclose(ex["cam2world"], cams_a.cam2world[[0, 2, 4, 6]], atol=1e-6)
    assert _text(ex["url"]) == cams_a.url
    for k, j in enumerate([0, 2, 4, 6]):
        np.testing.assert_array_equal(ex["frames"][k], B.resize_crop_image(frames_a[j], (16, 16)))
    K_native = cams_a.intrinsics((24, 40))[[0, 2, 4, 6]]
    np.testing.assert_allclose(ex["intrinsics"], B.adjust_intrinsics(K_native, (24, 40), (16, 16)), rtol=1e-6)
    # Consistency: a 3D point lands on the same image content before and after.
    (_, _), (y0, x0), sy, sx = B.resize_crop_geometry((24, 40), (16, 16))
    X = np.array([0.1, -0.05, 2.0])
    u = K_native[0] @ X
    u2 = ex["intrinsics"][0].astype(np.float64) @ X
    np.testing.assert_allclose(u2[0] / u2[2], (u[0] / u[2] + 0.5) * sx - 0.5 - x0, atol=1e-4)
    np.testing.assert_allclose(u2[1] / u2[2], (u[1] / u[2] + 0.5) * sy - 0.5 - y0, atol=1e-4)


def test_re10k_split_without_full_chunk_raises(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / "re10k"
    _write_re10k_clip(src, "short", T=3, hw=(8, 8), rng=rng)
    cfg = B.Re10kConfig(name="t8", image_hw=(8, 8), num_frames=4)
    b = B.Re10kClips(config=cfg, source_dir=str(src), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="none of the 1 clips"):
        b.download_and_prepare()


def test_re10k_malformed_camera_line_names_file_and_line(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "re10k"
    _write_re10k_clip(src, "clip", T=3, hw=(8, 8), rng=rng)
    txt = src / "clip.txt"
    lines = txt.read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:-1])  # line 3: one column short
    txt.write_text("\n".join(lines) + "\n")
    cfg = B.Re10kConfig(name="t8", image_hw=(8, 8), num_frames=None)
    b = B.Re10kClips(config=cfg, source_dir=str(src), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError) as info:
        b.download_and_prepare()
    assert f"{txt}:3" in str(info.value)
    lines[2] = lines[1].replace(lines[1].split()[1], "abc", 1)  # a non-number on line 3
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        list(B.re10k_clip_examples(txt, cfg))
    assert f"{txt}:3" in str(info.value)


def test_re10k_missing_frame_names_file(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "re10k"
    cams, _ = _write_re10k_clip(src, "clip", T=3, hw=(8, 8), rng=rng, skip_frame=1)
    cfg = B.Re10kConfig(name="t8", image_hw=(8, 8), num_frames=None)
    with pytest.raises(B.DataFileError) as info:
        list(B.re10k_clip_examples(src / "clip.txt", cfg))
    msg = str(info.value)
    assert str(src / "clip" / f"{cams.timestamps[1]}.png") in msg
    assert "line 3" in msg
