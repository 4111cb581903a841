"""The ViPE-layout reader and the ``vipe_clips`` builder, on a miniature clip the test writes itself."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest

from mirage_jax.data import vipe
from mirage_jax.errors import FileFormatError

# imageio-ffmpeg starts ffmpeg with subprocess (fork + exec at once), which JAX warns about.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
T, H, W = 5, 64, 64


def _clip_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.stack(
        [np.stack([(2 * xx + 9 * t) % 256, (3 * yy) % 256, (xx + yy) % 256], -1) for t in range(T)]
    ).astype(np.uint8)
    depth = rng.uniform(0.1, 30.0, (T, H, W)).astype(np.float16)
    depth[0, 0, 0], depth[1, 2, 3], depth[2, 4, 5] = 0.0, np.inf, np.nan  # invalid pixels survive as they are
    angles = rng.uniform(-0.3, 0.3, T)
    c2w = np.tile(np.eye(4, dtype=np.float32), (T, 1, 1))
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = np.cos(angles), np.sin(angles), -np.sin(angles), np.cos(angles)
    c2w[:, :3, 3] = rng.normal(size=(T, 3))
    K = np.tile(np.array([[55.5, 0, 31.25], [0, 56.0, 32.75], [0, 0, 1]], np.float32), (T, 1, 1))
    K[:, 0, 0] += np.arange(T, dtype=np.float32)
    mask = rng.random((T, H, W)) < 0.3
    return dict(frames=frames, depth=depth, cam2world=c2w, intrinsics=K, dynamic_mask=mask)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    arrays = _clip_arrays()
    folder = vipe.write_vipe_clip(tmp_path_factory.mktemp("vipe") / "clip", **arrays, caption="a small room", lossless=True)
    return folder, arrays


@pytest.fixture
def copy(clip_dir, tmp_path):
    def make(name="c"):
        return shutil.copytree(clip_dir[0], tmp_path / name)

    return make


def _rewrite_member(zip_path, member: str, data: bytes | None):
    """Replaces (or with ``data=None`` drops) one member of a zip."""
    with zipfile.ZipFile(zip_path) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name, blob in items:
            if name != member:
                zf.writestr(name, blob)
            elif data is not None:
                zf.writestr(name, data)


def test_round_trip(clip_dir):
    folder, a = clip_dir
    clip = vipe.read_vipe_clip(folder)
    # Depth bit-exact at float16 (0 / inf / NaN included), masks, poses and intrinsics exact.
    np.testing.assert_array_equal(clip["depth"].view(np.uint16), a["depth"].view(np.uint16))
    np.testing.assert_array_equal(clip["dynamic_mask"], a["dynamic_mask"])
    np.testing.assert_array_equal(clip["cam2world"], a["cam2world"])
    np.testing.assert_array_equal(clip["intrinsics"], a["intrinsics"])
    # H.264 lossless in 4:4:4 still converts RGB <-> YUV: a level or two.
    err = np.abs(clip["frames"].astype(int) - a["frames"])
    assert clip["frames"].shape == (T, H, W, 3) and err.max() <= 3 and err.mean() < 1.0
    assert clip["caption"] == "a small room" and clip["has_masks"]
    np.testing.assert_allclose(clip["mask_fraction"], a["dynamic_mask"].reshape(T, -1).mean(1), rtol=1e-6)


def test_builder_writes_clips_and_rejects_masked_ones(clip_dir, tmp_path):
    import tensorflow_datasets as tfds

    from mirage_jax.data.builders import prepare

    src = tmp_path / "src"
    shutil.copytree(clip_dir[0], src / "train" / "scene_a" / "c0")
    shutil.copytree(clip_dir[0], src / "train" / "scene_b")
    full = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((H, W), 7, np.uint8)).save(full, format="PNG")
    _rewrite_member(src / "train" / "scene_b" / "mask.zip", "00002.png", full.getvalue())  # 100 % dynamic
    tfds.disable_progress_bar()
    builder = prepare("vipe_clips/native", data_dir=tmp_path / "tfds", source_dir=src)
    ds = builder.as_data_source(split="train")
    assert len(ds) == 1
    ex = ds[0]
    direct = vipe.read_vipe_clip(clip_dir[0])
    assert ex["scene_id"] == b"scene_a/c0" and ex["caption"] == b"a small room"
    np.testing.assert_array_equal(ex["depth"].view(np.uint16), direct["depth"].view(np.uint16))
    np.testing.assert_array_equal(ex["frames"], direct["frames"])
    np.testing.assert_array_equal(ex["cam2world"], direct["cam2world"])
    assert builder.info.metadata["rejected"] == {"train": [["scene_b", 2, 1.0]]}


def test_bad_exr_member_raises_naming_zip_and_member(copy):
    folder = copy()
    _rewrite_member(folder / "depth.zip", "00003.exr", b"not an exr at all")
    with pytest.raises(FileFormatError, match=r"depth\.zip \(member '00003\.exr'\).*cannot decode"):
        vipe.read_vipe_clip(folder)


def test_missing_depth_frame_raises(copy):
    folder = copy()
    _rewrite_member(folder / "depth.zip", "00004.exr", None)
    with pytest.raises(FileFormatError, match=r"depth\.zip.*missing \[4\]"):
        vipe.read_vipe_clip(folder)


def test_exr_without_float16_z_raises(copy):
    import OpenEXR

    folder = copy()
    path = str(folder / "float32.exr")
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION}, {"Z": np.ones((H, W), np.float32)}) as f:
        f.write(path)
    _rewrite_member(folder / "depth.zip", "00001.exr", open(path, "rb").read())
    with pytest.raises(FileFormatError, match=r"member '00001\.exr'.*float32.*expected float16"):
        vipe.read_vipe_clip(folder)


def test_pose_inds_must_cover_the_video(copy):
    folder = copy()
    a = _clip_arrays()
    np.savez(folder / "pose.npz", inds=np.array([0, 1, 2, 3, 3]), data=a["cam2world"])
    with pytest.raises(FileFormatError, match=r"pose\.npz \(key 'inds'\): repeats"):
        vipe.read_vipe_clip(folder)
    np.savez(folder / "pose.npz", inds=np.arange(4), data=a["cam2world"][:4])
    with pytest.raises(FileFormatError, match=r"pose\.npz \(key 'inds'\).*missing \[4\]"):
        vipe.read_vipe_clip(folder)


def test_reflected_pose_and_pickles_raise(copy):
    folder = copy()
    a = _clip_arrays()
    bad = a["cam2world"].copy()
    bad[2, :3, 0] *= -1  # a reflection
    np.savez(folder / "pose.npz", inds=np.arange(T), data=bad)
    with pytest.raises(FileFormatError, match=r"pose\.npz \(key 'data'\).*determinant"):
        vipe.read_vipe_clip(folder)
    obj = np.empty(T, object)
    np.savez(folder / "intrinsics.npz", inds=obj, data=np.zeros((T, 4)))
    with pytest.raises(FileFormatError, match=r"intrinsics\.npz \(key 'inds'\).*pickle"):
        vipe.read_indexed_npz(folder / "intrinsics.npz", (4,), T)


def test_mask_of_wrong_size_and_missing_caption_raise(copy):
    from PIL import Image

    folder = copy()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W // 2), np.uint8)).save(buf, format="PNG")
    _rewrite_member(folder / "mask.zip", "00000.png", buf.getvalue())
    with pytest.raises(FileFormatError, match=r"mask\.zip \(member '00000\.png'\).*shape"):
        vipe.read_vipe_clip(folder)
    folder = copy("d")
    (folder / "clip.txt").unlink()
    with pytest.raises(FileFormatError, match="no caption"):
        vipe.read_vipe_clip(folder)
    assert vipe.read_vipe_clip(folder, require_caption=False)["caption"] == ""
