"""Export: clips -> geometry.npz and WorldScore camera_data.json, read back with the readers."""

from __future__ import annotations

import json

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
    paths = E.export_clip(clip, tmp_path / "sample", shift_principal_point=True)
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
    T, H, W = clip["frames"].shape[:3]
    # The ray-caster's principal point is ((W - 1) / 2, (H - 1) / 2): camera_data.json can only
    # imply (W / 2, H / 2), so the half-pixel shift must be asked for explicitly.
    np.testing.assert_array_equal(clip["intrinsics"][:, 0, 2], (W - 1) / 2)
    with pytest.raises(CameraError, match="shift_principal_point=True"):
        E.export_worldscore(clip, tmp_path / "refused")
    assert not (tmp_path / "refused" / "camera_data.json").exists()
    with pytest.raises(CameraError, match="shift_principal_point=True"):
        E.export_clip(clip, tmp_path / "refused_clip")
    paths = E.export_worldscore(clip, tmp_path / "ws", shift_principal_point=True)
    cams = formats.read_worldscore_cameras(paths["camera_data"])
    assert cams["image_hw"] == (H, W)
    np.testing.assert_allclose(cams["cam2world"], clip["cam2world"], atol=1e-6)
    # One focal length is stored exactly; the principal point WorldScore implies is the centre
    # in the pixel-corner convention, exactly half a pixel from the clip's ...
    np.testing.assert_allclose(cams["intrinsics"][:, :2, :2], clip["intrinsics"][:, :2, :2], rtol=1e-6)
    np.testing.assert_allclose(cams["intrinsics"][:, :2, 2], clip["intrinsics"][:, :2, 2] + 0.5, atol=1e-5)
    # ... and the exact intrinsics travel in the same file.
    data = json.loads(paths["camera_data"].read_text())
    np.testing.assert_allclose(np.asarray(data["intrinsics_exact"]), clip["intrinsics"], rtol=0, atol=1e-6)
    pngs = sorted(paths["frames"].glob("*.png"))
    assert len(pngs) == T
    for i, p in enumerate(pngs):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), clip["frames"][i])
    np.testing.assert_array_equal(np.asarray(Image.open(paths["input_image"])), clip["frames"][0])
    # A principal point already at (W / 2, H / 2) is written as is: no shift, no extra key.
    K = clip["intrinsics"].copy()
    K[:, 0, 2], K[:, 1, 2] = W / 2, H / 2
    exact = E.export_worldscore({**clip, "intrinsics": K}, tmp_path / "centred")
    np.testing.assert_allclose(formats.read_worldscore_cameras(exact["camera_data"])["intrinsics"], K, atol=1e-6)
    assert "intrinsics_exact" not in json.loads(exact["camera_data"].read_text())


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
    E.export_worldscore(no_depth, tmp_path / "ok", shift_principal_point=True)  # fine without depth
    K = clip["intrinsics"].copy()
    K[:, 0, 2] += 3.0  # off-centre principal point: WorldScore cannot represent it
    with pytest.raises(CameraError, match="no principal point"):
        E.export_worldscore({**clip, "intrinsics": K}, tmp_path / "c", shift_principal_point=True)
    # A focal length that differs between frames (or fx != fy) by less than half a pixel must
    # not be rounded away either: WorldScore stores one focal length.
    for i, j in ((0, 0), (1, 1)):
        K = clip["intrinsics"].copy()
        K[-1, i, j] += 0.25
        with pytest.raises(CameraError, match="one focal length"):
            E.export_worldscore({**clip, "intrinsics": K}, tmp_path / f"f{i}", shift_principal_point=True)
    with pytest.raises(ValueError, match="intrinsics must be"):
        E.as_clip({**clip, "intrinsics": K[:2]})
    assert E.keep_mask({"frames": clip["frames"]}) is None
