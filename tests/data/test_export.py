"""Export: clips -> geometry.npz and WorldScore camera_data.json, read back with the readers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mirage_jax.data import builders as B
from mirage_jax.data import export as E
from mirage_jax.geometry import formats
from mirage_jax.geometry.cameras import CameraError


@pytest.fixture(scope="module")
def clip(tiny_builder):
    """A make_clip clip (the same call the tiny builder made for train example 0)."""
    from mirage_jax.data.worlds import make_clip

    params = B.synthetic_clip_params(tiny_builder.builder_config, "train", 0)
    return {k: (np.asarray(v) if not isinstance(v, str) else v) for k, v in make_clip(**params).items()}


def test_geometry_npz_round_trip(clip, tmp_path):
    paths = E.export_clip(clip, tmp_path / "sample")
    g = formats.read_geometry_npz(paths["geometry"])
    T, H, W = clip["frames"].shape[:3]
    np.testing.assert_array_equal(g.frames, clip["frames"])
    depth = np.asarray(clip["depth"], np.float32)
    fin = np.isfinite(depth)
    np.testing.assert_array_equal(g.depths[fin], depth[fin])
    np.testing.assert_array_equal(g.depths[~fin], 0.0)  # invalid (e.g. sky at infinity) -> 0
    np.testing.assert_array_equal(g.intrinsics, clip["intrinsics"])
    np.testing.assert_array_equal(g.poses_c2w, clip["cam2world"])
    np.testing.assert_array_equal(g.masks, ~clip["dynamic_mask"] & ~clip["sky_mask"])
    np.testing.assert_array_equal(g.frame_indices, np.arange(T))
    assert g.processed_size == (H, W) and g.original_size == (H, W)
    assert (tmp_path / "sample" / "caption.txt").read_text().strip() == clip["caption"]


def test_worldscore_round_trip(clip, tmp_path):
    paths = E.export_worldscore(clip, tmp_path / "ws")
    cams = formats.read_worldscore_cameras(paths["camera_data"])
    T, H, W = clip["frames"].shape[:3]
    assert cams["image_hw"] == (H, W)
    np.testing.assert_allclose(cams["cam2world"], clip["cam2world"], atol=1e-6)
    # One focal length is stored exactly; the principal point is implicit (the image centre),
    # in the reader's pixel convention, i.e. within half a pixel of the clip's.
    np.testing.assert_allclose(cams["intrinsics"][:, :2, :2], clip["intrinsics"][:, :2, :2], rtol=1e-6)
    np.testing.assert_allclose(cams["intrinsics"][:, :2, 2], clip["intrinsics"][:, :2, 2], atol=0.5 + 1e-4)
    pngs = sorted(paths["frames"].glob("*.png"))
    assert len(pngs) == T
    for i, p in enumerate(pngs):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), clip["frames"][i])
    np.testing.assert_array_equal(np.asarray(Image.open(paths["input_image"])), clip["frames"][0])


def test_builder_example_exports_and_reads_back_through_geometry_builder(tiny_source, tmp_path):
    """A stored example (bytes text, float16 depth) -> export -> geometry_npz builder -> same data."""
    examples = [tiny_source[i] for i in (1, 4)]
    for ex in examples:
        E.export_clip(ex, tmp_path / "src" / ex["scene_id"].decode(), worldscore=False)
    b = B.prepare("geometry_npz/native", data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")
    back = {e["scene_id"].decode(): e for e in b.as_data_source(split="train")}
    for ex in examples:
        got = back[ex["scene_id"].decode()]
        np.testing.assert_array_equal(got["frames"], ex["frames"])
        d = ex["depth"].astype(np.float32)
        np.testing.assert_array_equal(got["depth"], np.where(np.isfinite(d), d, 0.0))
        np.testing.assert_array_equal(got["keep_mask"], ~ex["dynamic_mask"] & ~ex["sky_mask"])
        np.testing.assert_array_equal(got["cam2world"], ex["cam2world"])
        np.testing.assert_array_equal(got["intrinsics"], ex["intrinsics"])
        assert got["caption"] == ex["caption"]
        assert bool(got["has_masks"])


def test_export_errors(clip, tmp_path):
    with pytest.raises(TypeError, match="denormalize_frames"):
        E.export_geometry_npz({**clip, "frames": clip["frames"].astype(np.float32) / 127.5 - 1}, tmp_path / "a.npz")
    no_depth = {k: v for k, v in clip.items() if k != "depth"}
    with pytest.raises(ValueError, match="needs 'depth'"):
        E.export_geometry_npz(no_depth, tmp_path / "b.npz")
    E.export_worldscore(no_depth, tmp_path / "ok")  # cameras and frames only: fine without depth
    K = clip["intrinsics"].copy()
    K[:, 0, 2] += 3.0  # off-centre principal point: WorldScore cannot represent it
    with pytest.raises(CameraError, match="no principal point"):
        E.export_worldscore({**clip, "intrinsics": K}, tmp_path / "c")
    with pytest.raises(ValueError, match="intrinsics must be"):
        E.as_clip({**clip, "intrinsics": K[:2]})
    assert E.keep_mask({"frames": clip["frames"]}) is None
