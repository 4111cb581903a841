"""TensorFlow-Datasets builders for mirage_jax, written as array_record without TensorFlow.

Three builders, all ``tfds.core.GeneratorBasedBuilder`` subclasses that default to
``file_format="array_record"`` (TFDS serialises, writes and reads array_record with NumPy only:
TensorFlow is never imported). They are registered with TFDS when :mod:`mirage_jax.data` is
imported, so ``tfds.builder("synthetic_worlds/tiny", data_dir=...)`` and
``tfds.data_source("synthetic_worlds/tiny", split="train", data_dir=...)`` work.

* ``synthetic_worlds``: clips rendered by the JAX ray-caster
  (:func:`mirage_jax.data.worlds.make_clip`). Example ``i`` of split ``s`` of config ``c`` is
  rendered from the seed :func:`derive_seed` ``("synthetic_worlds", c, s, i)``, with the scene
  kind, trajectory, field of view and shadows drawn from a NumPy generator seeded the same way
  (:func:`synthetic_clip_params`), so every example is reproducible on its own. Records are
  written in generation order (``disable_shuffling``): record ``i`` of a split is example ``i``.
* ``geometry_npz``: a directory of the reference's ``geometry.npz`` inference samples (spec
  section 8), one example per file, validated with
  :func:`mirage_jax.geometry.formats.read_geometry_npz`.
* ``re10k_clips``: RealEstate10K-format camera txt files (one per clip) with the clip's frames in
  a folder named after the clip (frame files named by timestamp), resized and centre-cropped to
  the config resolution with intrinsics adjusted exactly.

The manual builders read from ``source_dir=...`` (a builder argument) or, when it is not given,
from TFDS's manual directory (``download_config=tfds.download.DownloadConfig(manual_dir=...)``).
A source directory holding ``train/`` / ``validation/`` / ``test/`` subdirectories gives those
splits; otherwise everything under it is the ``train`` split.

Feature schema (channels-last; T frames of H x W pixels). Every builder uses the same names so
the grain pipeline treats them alike:

  ``frames``        uint8   [T, H, W, 3]
  ``depth``         float16 [T, H, W] (synthetic) / float32 (geometry_npz); z-depth; absent in
                    ``re10k_clips`` (RE10K has no depth)
  ``dynamic_mask``  bool    [T, H, W] True = moving object (synthetic)
  ``sky_mask``      bool    [T, H, W] True = sky (synthetic)
  ``keep_mask``     bool    [T, H, W] True = static / keep (geometry_npz; all True when the npz
                    has no masks, see ``has_masks``)
  ``intrinsics``    float32 [T, 3, 3] pixels of the stored frames
  ``cam2world``     float32 [T, 4, 4] OpenCV camera-to-world
  ``times``         float32 [T] seconds (synthetic; moving objects follow them)
  ``scene_id``, ``caption``: Text (read back as ``bytes``)
plus per-builder metadata (seeds, timestamps, frame indices, sizes) listed on each builder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mirage_jax.errors import ConfigError, FileFormatError, check_hw

FILE_FORMAT = "array_record"

# Keys whose leading axis is time; every other key describes the whole clip.
PER_FRAME_KEYS = (
    "frames",
    "depth",
    "dynamic_mask",
    "sky_mask",
    "keep_mask",
    "intrinsics",
    "cam2world",
    "timestamps",
    "frame_indices",
    "times",
)

SPLIT_NAMES = ("train", "validation", "test")
FLOAT16_MAX = float(np.finfo(np.float16).max)


class DataFileError(FileFormatError):
    """A source file (npz, camera txt, frame image) is missing or malformed; names the file."""


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from ``parts`` (e.g. builder, config, split, index) by SHA-256.

    Stable across processes, platforms and Python versions (unlike ``hash``).
    """
    text = "/".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resize_crop_geometry(src_hw, dst_hw) -> tuple[tuple[int, int], tuple[int, int], float, float]:
    """The resize-then-centre-crop that maps an image of ``src_hw`` onto exactly ``dst_hw``.

    The image is scaled by the smallest uniform factor that covers ``dst_hw`` (aspect ratio
    kept), then centre-cropped. Returns ``(resized_hw, (y0, x0), sy, sx)`` where ``sy, sx`` are
    the exact per-axis scale factors after rounding the resized size to whole pixels and
    ``(y0, x0)`` is the crop origin in the resized image.
    """
    H, W = check_hw(src_hw, "src_hw")
    h, w = check_hw(dst_hw, "dst_hw")
    s = max(h / H, w / W)
    rh = max(h, int(round(H * s)))
    rw = max(w, int(round(W * s)))
    y0 = (rh - h) // 2
    x0 = (rw - w) // 2
    return (rh, rw), (y0, x0), rh / H, rw / W


def adjust_intrinsics(K, src_hw, dst_hw) -> np.ndarray:
    """Intrinsics [..., 3, 3] of an image of ``src_hw`` after :func:`resize_crop_geometry`.

    Pixel-centre (OpenCV) convention, exact for a resize that maps pixel areas (PIL): a point at
    continuous pixel x goes to (x + 0.5) s - 0.5 - x0. So fx' = fx sx, cx' = (cx + 0.5) sx - 0.5
    - x0, and likewise for y (the ``centred`` convention of
    :func:`mirage_jax.geometry.cameras.scale_intrinsics`, plus the crop offset).
    Returns float32.
    """
    K = np.asarray(K, np.float64)
    _, (y0, x0), sy, sx = resize_crop_geometry(src_hw, dst_hw)
    out = K.copy()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5 - x0
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5 - y0
    return out.astype(np.float32)


def resize_crop_image(image: np.ndarray, dst_hw, *, nearest: bool = False) -> np.ndarray:
    """Resizes (antialiased bicubic, or nearest) and centre-crops one image to ``dst_hw``.

    ``image``: uint8 [H, W, 3] or [H, W], float [H, W] (depth; always nearest so no depth is
    invented across edges) or bool [H, W] (masks; nearest). Returns the same dtype at ``dst_hw``.
    """
    from PIL import Image

    image = np.asarray(image)
    src_hw = image.shape[:2]
    (rh, rw), (y0, x0), _, _ = resize_crop_geometry(src_hw, dst_hw)
    h, w = check_hw(dst_hw, "dst_hw")
    if (rh, rw) != tuple(src_hw):
        if image.dtype == np.bool_:
            pil = Image.fromarray(image.astype(np.uint8) * 255)
            resized = np.asarray(pil.resize((rw, rh), Image.Resampling.NEAREST)) > 127
        elif np.issubdtype(image.dtype, np.floating):
            pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))  # mode "F"
            resized = np.asarray(pil.resize((rw, rh), Image.Resampling.NEAREST)).astype(image.dtype)
        elif image.dtype == np.uint8:
            method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
            resized = np.asarray(Image.fromarray(image).resize((rw, rh), method))
        else:
            raise TypeError(f"resize_crop_image: unsupported dtype {image.dtype}")
    else:
        resized = image
    return np.ascontiguousarray(resized[y0 : y0 + h, x0 : x0 + w])


def resize_crop_clip(clip: Mapping[str, Any], dst_hw) -> dict[str, Any]:
    """Resizes and centre-crops every per-frame image of a clip to ``dst_hw``; adjusts intrinsics.

    ``clip`` holds ``frames`` uint8 [T, H, W, 3] and ``intrinsics`` [T, 3, 3] and optionally
    ``depth`` [T, H, W] and boolean masks [T, H, W]; other keys are copied unchanged.
    """
    out = dict(clip)
    frames = np.asarray(clip["frames"])
    src_hw = frames.shape[1:3]
    dst_hw = check_hw(dst_hw, "dst_hw")
    if tuple(src_hw) == dst_hw:
        return out
    out["frames"] = np.stack([resize_crop_image(f, dst_hw) for f in frames])
    for key in ("depth", "dynamic_mask", "sky_mask", "keep_mask"):
        if key in clip and clip[key] is not None:
            out[key] = np.stack([resize_crop_image(m, dst_hw, nearest=True) for m in np.asarray(clip[key])])
    out["intrinsics"] = adjust_intrinsics(clip["intrinsics"], src_hw, dst_hw)
    return out


def clip_features(
    T: int | None,
    H: int | None,
    W: int | None,
    *,
    depth_dtype=None,
    masks: tuple[str, ...] = (),
    per_frame: Mapping[str, Any] | None = None,
    clip: Mapping[str, Any] | None = None,
) -> tfds.features.FeaturesDict:
    """The one feature schema of every builder (module docstring), for T frames of H x W
    (None = varies between examples).

    Always ``frames`` uint8 [T, H, W, 3], ``intrinsics`` float32 [T, 3, 3], ``cam2world``
    float32 [T, 4, 4], ``scene_id`` and ``caption`` Text; plus ``depth`` [T, H, W] of
    ``depth_dtype`` (None: no depth), the boolean [T, H, W] ``masks`` named, the [T] vectors of
    ``per_frame`` (name -> dtype) and the per-clip ``clip`` features (name -> tfds feature).
    Images are zlib-compressed.
    """
    feats = tfds.features
    spec: dict[str, Any] = {"frames": feats.Tensor(shape=(T, H, W, 3), dtype=np.uint8, encoding="zlib")}
    if depth_dtype is not None:
        spec["depth"] = feats.Tensor(shape=(T, H, W), dtype=depth_dtype, encoding="zlib")
    for name in masks:
        spec[name] = feats.Tensor(shape=(T, H, W), dtype=np.bool_, encoding="zlib")
    spec["intrinsics"] = feats.Tensor(shape=(T, 3, 3), dtype=np.float32)
    spec["cam2world"] = feats.Tensor(shape=(T, 4, 4), dtype=np.float32)
    for name, dtype in (per_frame or {}).items():
        spec[name] = feats.Tensor(shape=(T,), dtype=dtype)
    spec["scene_id"] = feats.Text()
    spec["caption"] = feats.Text()
    spec.update(clip or {})
    return feats.FeaturesDict(spec)


def _find_files(directory: epath.Path, suffix: str, recursive: bool) -> list[epath.Path]:
    """Files ending with ``suffix`` in ``directory`` (and its subdirectories when recursive).

    Uses ``iterdir`` only (epath's GCS-safe subset: no ``**`` globbing).
    """
    found: list[epath.Path] = []
    stack = [directory]
    while stack:
        d = stack.pop()
        for p in d.iterdir():
            if p.is_dir():
                if recursive:
                    stack.append(p)
            elif p.name.endswith(suffix):
                found.append(p)
    return sorted(found, key=os.fspath)


def _discover_splits(root: epath.Path, suffix: str, builder: str, *, recursive: bool) -> dict[str, list[epath.Path]]:
    """Maps split name -> sorted files ending with ``suffix`` under ``root`` (see module doc)."""
    if not root.exists() or not root.is_dir():
        raise FileNotFoundError(f"{builder}: source directory {root} does not exist")
    splits: dict[str, list[epath.Path]] = {}
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    for name in present:
        files = _find_files(root / name, suffix, recursive)
        if files:
            splits[name] = files
    if not present:
        files = _find_files(root, suffix, recursive)
        if files:
            splits["train"] = files
    if not splits:
        raise FileNotFoundError(f"{builder}: no *{suffix} files under {root}")
    return splits


def _split_root(root: epath.Path, split: str) -> epath.Path:
    d = root / split
    return d if d.is_dir() else root


def _named(path, err: BaseException) -> DataFileError:
    msg = str(err)
    if str(path) not in msg:
        msg = f"{path}: {msg}"
    return DataFileError(msg)


class _ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose default file format is array_record (works without TF)."""

    def __init__(self, *, file_format: str | None = None, **kwargs: Any):
        super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)

    # TFDS 4.9.10 resolves ``code_path`` through ``importlib_resources`` (a backport it only
    # installs on Python < 3.9) for builders defined in packages; the file of the class is all
    # it needs (checksums / metadata lookup), so give it directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None


class _ManualDirBuilder(_ArrayRecordBuilder, skip_registration=True):
    """Reads its source from ``source_dir`` (builder argument) or TFDS's manual directory."""

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs: Any):
        self._source_dir = epath.Path(source_dir) if source_dir is not None else None
        super().__init__(**kwargs)
        self._original_state["source_dir"] = source_dir

    def _source_root(self, dl_manager) -> epath.Path:
        if self._source_dir is not None:
            return self._source_dir
        return epath.Path(dl_manager.manual_dir)


# --------------------------------------------------------------------------------------------
# synthetic_worlds
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticWorldsConfig(tfds.core.BuilderConfig):
    """Resolution, clip length, split sizes and scene distribution of ``synthetic_worlds``.

    Per example, ``kind`` and ``trajectory`` are drawn uniformly from ``kinds`` /
    ``trajectories``, the horizontal field of view uniformly from ``fov_range_deg`` and shadows
    with probability ``shadows_probability`` (see :func:`synthetic_clip_params`).
    """

    image_hw: tuple[int, int] = (64, 64)
    num_frames: int = 9
    num_train: int = 6
    num_test: int = 2
    kinds: tuple[str, ...] = ("indoor",)
    trajectories: tuple[str, ...] = ("walk",)
    fov_range_deg: tuple[float, float] = (55.0, 65.0)
    shadows_probability: float = 0.0
    fps: int = 16

    def __post_init__(self):
        check_hw(self.image_hw, f"{self.name}.image_hw", cls=ConfigError)
        if self.num_frames < 1:
            raise ConfigError(f"{self.name}.num_frames must be >= 1, got {self.num_frames}")
        if self.num_train < 0 or self.num_test < 0:
            raise ConfigError(f"{self.name}: split sizes must be >= 0")
        if not self.kinds or not self.trajectories:
            raise ConfigError(f"{self.name}: kinds and trajectories must be non-empty")
        lo, hi = self.fov_range_deg
        if not 0.0 < lo <= hi < 180.0:
            raise ConfigError(f"{self.name}.fov_range_deg must satisfy 0 < lo <= hi < 180, got {self.fov_range_deg}")
        if not 0.0 <= self.shadows_probability <= 1.0:
            raise ConfigError(f"{self.name}.shadows_probability must be in [0, 1]")

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test}


_ALL_KINDS = ("indoor", "outdoor")
_ALL_TRAJECTORIES = ("walk", "loop")

SYNTHETIC_WORLDS_CONFIGS = (
    SyntheticWorldsConfig(
        name="tiny",
        description="64 x 64, 9 frames, 6 train / 2 test scenes: tests and demos.",
        image_hw=(64, 64),
        num_frames=9,
        num_train=6,
        num_test=2,
    ),
    SyntheticWorldsConfig(
        name="small_128",
        description="128 x 128, 33 frames (one Mirage chunk, 9 latent frames), 256 / 16 scenes.",
        image_hw=(128, 128),
        num_frames=33,
        num_train=256,
        num_test=16,
        kinds=_ALL_KINDS,
        trajectories=_ALL_TRAJECTORIES,
        fov_range_deg=(50.0, 75.0),
        shadows_probability=0.5,
    ),
    SyntheticWorldsConfig(
        name="chunk_256",
        description=(
            "256 x 256, 81 frames at 16 fps: the clips of the training sample construction "
            "(spec section 4: 8 preceding + 33 target frames from a random t0), 2048 / 64 scenes."
        ),
        image_hw=(256, 256),
        num_frames=81,
        num_train=2048,
        num_test=64,
        kinds=_ALL_KINDS,
        trajectories=_ALL_TRAJECTORIES,
        fov_range_deg=(50.0, 75.0),
        shadows_probability=0.5,
    ),
)


def synthetic_clip_params(config: SyntheticWorldsConfig, split: str, index: int) -> dict[str, Any]:
    """The exact keyword arguments of ``make_clip`` for example ``index`` of ``split``.

    ``fov_deg`` is rounded to float32 so the value stored in the dataset reproduces the clip.
    """
    seed = derive_seed("synthetic_worlds", config.name, split, int(index))
    rng = np.random.default_rng(seed)
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    trajectory = config.trajectories[int(rng.integers(len(config.trajectories)))]
    lo, hi = config.fov_range_deg
    fov = float(np.float32(rng.uniform(lo, hi) if hi > lo else lo))
    shadows = bool(rng.random() < config.shadows_probability)
    return dict(
        seed=seed,
        image_hw=tuple(config.image_hw),
        num_frames=int(config.num_frames),
        kind=kind,
        fov_deg=fov,
        trajectory=trajectory,
        shadows=shadows,
        fps=int(config.fps),
    )


def synthetic_example(clip: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Converts ``make_clip``'s output (+ its parameters) to a ``synthetic_worlds`` example."""
    T = int(params["num_frames"])
    H, W = params["image_hw"]
    expect = {
        "frames": ((T, H, W, 3), np.uint8),
        "depth": ((T, H, W), None),
        "dynamic_mask": ((T, H, W), np.bool_),
        "sky_mask": ((T, H, W), np.bool_),
        "intrinsics": ((T, 3, 3), None),
        "cam2world": ((T, 4, 4), None),
        "times": ((T,), None),
    }
    out: dict[str, Any] = {}
    for key, (shape, dtype) in expect.items():
        if key not in clip:
            raise KeyError(f"make_clip(seed={params['seed']}) returned no {key!r}")
        value = np.asarray(clip[key])
        if value.shape != shape or (dtype is not None and value.dtype != dtype):
            raise ValueError(
                f"make_clip(seed={params['seed']}): {key} has shape {value.shape} dtype {value.dtype}, "
                f"expected {shape}{'' if dtype is None else ' ' + np.dtype(dtype).name}"
            )
        out[key] = value
    depth = out["depth"].astype(np.float32)
    finite = np.isfinite(depth)
    if finite.any() and float(np.abs(depth[finite]).max()) > FLOAT16_MAX:
        raise ValueError(
            f"make_clip(seed={params['seed']}): finite depth {float(np.abs(depth[finite]).max()):.4g} "
            "exceeds the float16 range of the stored depth"
        )
    out["depth"] = depth.astype(np.float16)
    out["times"] = out["times"].astype(np.float32)
    out["intrinsics"] = out["intrinsics"].astype(np.float32)
    out["cam2world"] = out["cam2world"].astype(np.float32)
    out["scene_id"] = str(clip.get("scene_id", f"seed{params['seed']}"))
    out["caption"] = str(clip.get("caption", ""))
    out["seed"] = int(params["seed"])
    out["kind"] = str(params["kind"])
    out["trajectory"] = str(params["trajectory"])
    out["fov_deg"] = np.float32(params["fov_deg"])
    out["shadows"] = bool(params["shadows"])
    out["fps"] = np.int32(params["fps"])
    return out


class SyntheticWorlds(_ArrayRecordBuilder):
    """Clips of procedurally generated worlds rendered by mirage_jax's JAX ray-caster.

    Features (T = config.num_frames, H x W = config.image_hw): ``frames`` uint8 [T,H,W,3],
    ``depth`` float16 [T,H,W], ``dynamic_mask`` / ``sky_mask`` bool [T,H,W], ``intrinsics``
    float32 [T,3,3], ``cam2world`` float32 [T,4,4] (OpenCV), ``times`` float32 [T] (seconds;
    moving objects follow them), ``scene_id`` / ``caption`` Text, and
    the generation parameters ``seed`` int64, ``kind`` / ``trajectory`` Text, ``fov_deg``
    float32, ``shadows`` bool, ``fps`` int32 (``make_clip(**params)`` reproduces the clip).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(SYNTHETIC_WORLDS_CONFIGS)
    DEFAULT_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: SyntheticWorldsConfig = self.builder_config
        T = cfg.num_frames
        H, W = cfg.image_hw
        feats = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic camera clips rendered by mirage_jax.data.worlds.make_clip: RGB, "
                "z-depth, dynamic and sky masks, pinhole intrinsics and OpenCV camera-to-world."
            ),
            features=clip_features(
                T,
                H,
                W,
                depth_dtype=np.float16,
                masks=("dynamic_mask", "sky_mask"),
                per_frame={"times": np.float32},
                clip={
                    "seed": feats.Scalar(dtype=np.int64),
                    "kind": feats.Text(),
                    "trajectory": feats.Text(),
                    "fov_deg": feats.Scalar(dtype=np.float32),
                    "shadows": feats.Scalar(dtype=np.bool_),
                    "fps": feats.Scalar(dtype=np.int32),
                },
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg: SyntheticWorldsConfig = self.builder_config
        return {split: self._generate_examples(split, n) for split, n in cfg.split_sizes.items() if n > 0}

    def _generate_examples(self, split: str, num_examples: int) -> Iterator[tuple[str, dict[str, Any]]]:
        from mirage_jax.data.worlds import make_clip

        cfg: SyntheticWorldsConfig = self.builder_config
        for i in range(num_examples):
            params = synthetic_clip_params(cfg, split, i)
            clip = make_clip(**params)
            yield f"{i:08d}", synthetic_example(clip, params)


# --------------------------------------------------------------------------------------------
# geometry_npz
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class GeometryNpzConfig(tfds.core.BuilderConfig):
    """``image_hw=None`` keeps each sample's own size (variable shapes); otherwise every sample
    is resized and centre-cropped to ``image_hw`` (depth and masks nearest, K adjusted)."""

    image_hw: tuple[int, int] | None = None

    def __post_init__(self):
        if self.image_hw is not None:
            check_hw(self.image_hw, f"{self.name}.image_hw", cls=ConfigError)


def _read_text_if_exists(path: epath.Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def geometry_npz_example(path, *, image_hw=None, scene_id: str | None = None) -> dict[str, Any]:
    """Reads and validates one geometry.npz (spec section 8) as a ``geometry_npz`` example.

    Validation is :func:`mirage_jax.geometry.formats.read_geometry_npz` (shapes, dtypes,
    finite depth, proper rotations, positive focal lengths); every error is a ``ValueError``
    naming the file. The npz must hold ``frames`` (a ``first_frame.png`` / ``clip.mp4`` next to
    it is not decoded here and raises). Missing ``masks`` give an all-True ``keep_mask`` with
    ``has_masks=False``; missing ``frame_indices`` give 0..T-1; a missing ``original_size``
    is stored as (0, 0) (= unknown); ``processed_size`` is the size of the stored frames. A ``caption.txt`` or ``prompt.txt`` next to the file
    becomes the caption.
    """
    from mirage_jax.geometry.formats import read_geometry_npz

    path = epath.Path(path)
    try:
        g = read_geometry_npz(os.fspath(path))
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise _named(path, err) from err
    if g.frames is None:
        extra = f" ({g.sidecar} next to it is not decoded by this builder)" if g.sidecar else ""
        raise DataFileError(f"{path}: frames: missing from the npz{extra}; store frames (T, H, W, 3) uint8 in it")
    T, H, W = g.depths.shape
    has_masks = g.masks is not None
    clip: dict[str, Any] = {
        "frames": np.asarray(g.frames, np.uint8),
        "depth": np.asarray(g.depths, np.float32),
        "keep_mask": np.asarray(g.masks, bool) if has_masks else np.ones((T, H, W), bool),
        "intrinsics": np.asarray(g.intrinsics, np.float32),
        "cam2world": np.asarray(g.poses_c2w, np.float32),
    }
    if image_hw is not None:
        clip = resize_crop_clip(clip, image_hw)
    caption = _read_text_if_exists(path.parent / "caption.txt") or _read_text_if_exists(path.parent / "prompt.txt")
    clip.update(
        scene_id=scene_id if scene_id is not None else path.stem,
        caption=caption,
        has_masks=bool(has_masks),
        frame_indices=(np.arange(T, dtype=np.int64) if g.frame_indices is None else np.asarray(g.frame_indices, np.int64)),
        original_size=np.asarray(g.original_size if g.original_size is not None else (0, 0), np.int32),
        processed_size=np.asarray(clip["frames"].shape[1:3], np.int32),
        source_file=os.fspath(path),
    )
    return clip


class GeometryNpz(_ManualDirBuilder):
    """A directory of the reference's geometry.npz inference samples, one example per file.

    Features: ``frames`` uint8 [T,H,W,3], ``depth`` float32 [T,H,W], ``keep_mask`` bool [T,H,W]
    (True = static/keep; all True when the file has no masks, see ``has_masks``),
    ``intrinsics`` float32 [T,3,3], ``cam2world`` float32 [T,4,4] (OpenCV), ``frame_indices``
    int64 [T], ``original_size`` int32 [2] (H, W) from the npz ((0, 0) when the file does not
    say), ``processed_size`` int32 [2] (H, W) of the stored frames, ``scene_id`` (path of
    the file relative to the split directory, without ``.npz``; the folder when the file is
    named ``geometry.npz``), ``caption``, ``source_file`` Text. T, H, W may differ between
    examples unless the config fixes ``image_hw``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [GeometryNpzConfig(name="native", description="Samples at their own resolution.")]
    DEFAULT_CONFIG_NAME = "native"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put geometry.npz files (frames, depths, intrinsics, poses_c2w, optional masks, "
        "frame_indices, original_size, processed_size) under the manual directory, or pass "
        "source_dir=... to the builder. Optional train/ validation/ test/ subdirectories give splits."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: GeometryNpzConfig = self.builder_config
        H, W = cfg.image_hw if cfg.image_hw is not None else (None, None)
        feats = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description="Reference geometry.npz samples (frames, depth, cameras, static masks).",
            features=clip_features(
                None,
                H,
                W,
                depth_dtype=np.float32,
                masks=("keep_mask",),
                per_frame={"frame_indices": np.int64},
                clip={
                    "original_size": feats.Tensor(shape=(2,), dtype=np.int32),
                    "processed_size": feats.Tensor(shape=(2,), dtype=np.int32),
                    "has_masks": feats.Scalar(dtype=np.bool_),
                    "source_file": feats.Text(),
                },
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        splits = _discover_splits(root, ".npz", self.name, recursive=True)
        return {
            split: self._generate_examples(_split_root(root, split), files)
            for split, files in splits.items()
        }

    def _generate_examples(self, split_root, files) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg: GeometryNpzConfig = self.builder_config
        for path in files:
            rel = os.path.relpath(os.fspath(path), os.fspath(split_root))
            stem = rel[: -len(".npz")]
            if os.path.basename(stem) == "geometry" and os.path.dirname(stem):
                stem = os.path.dirname(stem)
            scene_id = stem.replace(os.sep, "/")
            yield scene_id, geometry_npz_example(path, image_hw=cfg.image_hw, scene_id=scene_id)


# --------------------------------------------------------------------------------------------
# re10k_clips
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class Re10kConfig(tfds.core.BuilderConfig):
    """Resolution and chunking of ``re10k_clips``.

    Frames are resized and centre-cropped to ``image_hw``. Each clip's frames are first
    subsampled by ``frame_stride``; then, with ``num_frames`` set, cut into consecutive
    non-overlapping chunks of ``num_frames`` (one example each; a tail shorter than
    ``num_frames`` is not written and is logged), or kept whole with ``num_frames=None``.
    """

    image_hw: tuple[int, int] = (64, 64)
    num_frames: int | None = 9
    frame_stride: int = 1

    def __post_init__(self):
        check_hw(self.image_hw, f"{self.name}.image_hw", cls=ConfigError)
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"{self.name}.num_frames must be >= 1 or None")
        if self.frame_stride < 1:
            raise ConfigError(f"{self.name}.frame_stride must be >= 1")


RE10K_CONFIGS = (
    Re10kConfig(name="tiny", description="64 x 64, chunks of 9 frames.", image_hw=(64, 64), num_frames=9),
    Re10kConfig(name="small_128", description="128 x 128, chunks of 33 frames.", image_hw=(128, 128), num_frames=33),
    Re10kConfig(name="chunk_256", description="256 x 256, chunks of 81 frames.", image_hw=(256, 256), num_frames=81),
    Re10kConfig(name="full_256", description="256 x 256, whole clips.", image_hw=(256, 256), num_frames=None),
)

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def _index_frame_folder(folder: epath.Path) -> dict[str, epath.Path]:
    if not folder.is_dir():
        return {}
    index: dict[str, epath.Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in FRAME_EXTENSIONS:
            index.setdefault(p.stem, p)
    return index


def _load_frame(path: epath.Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise _named(path, err) from err


def re10k_clip_examples(txt_path, config: Re10kConfig, *, clip_name: str | None = None):
    """Yields ``(key, example)`` for one RealEstate10K camera txt and its frame folder.

    The frames live in ``<txt without .txt>/`` named ``<timestamp>.<png|jpg|jpeg|webp>``.
    Malformed camera lines raise naming the file and line (via
    :func:`mirage_jax.geometry.formats.read_re10k`); a missing frame raises
    :class:`DataFileError` naming the expected file and the camera line it belongs to.
    """
    from absl import logging

    from mirage_jax.geometry.formats import read_re10k

    txt_path = epath.Path(txt_path)
    name = clip_name if clip_name is not None else txt_path.stem
    try:
        cams = read_re10k(os.fspath(txt_path))
    except DataFileError:
        raise
    except (ValueError, OSError) as err:
        raise _named(txt_path, err) from err
    timestamps = np.asarray(cams.timestamps, np.int64)
    T = int(timestamps.shape[0])
    folder = txt_path.parent / txt_path.stem
    index = _index_frame_folder(folder)
    positions = np.arange(0, T, config.frame_stride)
    if config.num_frames is None:
        chunks = [positions]
    else:
        n = config.num_frames
        chunks = [positions[s : s + n] for s in range(0, len(positions) - n + 1, n)]
        tail = len(positions) - len(chunks) * n
        if tail:
            logging.info(
                "re10k_clips: %s: %d of %d (stride %d) frames do not fill a chunk of %d and are not written",
                txt_path, tail, len(positions), config.frame_stride, n,
            )
    for chunk in chunks:
        frames, Ks = [], []
        for j in chunk:
            ts = int(timestamps[j])
            path = index.get(str(ts))
            if path is None:
                raise DataFileError(
                    f"{folder / (str(ts) + '.png')}: frame for timestamp {ts} not found "
                    f"(camera line {int(j) + 2} of {txt_path}; looked for {'/'.join(FRAME_EXTENSIONS)})"
                )
            img = _load_frame(path)
            src_hw = img.shape[:2]
            K = np.asarray(cams.intrinsics(src_hw), np.float32)[j]
            frames.append(resize_crop_image(img, config.image_hw))
            Ks.append(adjust_intrinsics(K, src_hw, config.image_hw))
        start = int(chunk[0])
        key = name if config.num_frames is None else f"{name}/{start:06d}"
        yield key, {
            "frames": np.stack(frames),
            "intrinsics": np.stack(Ks).astype(np.float32),
            "cam2world": np.asarray(cams.cam2world, np.float32)[chunk],
            "timestamps": timestamps[chunk],
            "frame_indices": chunk.astype(np.int64),
            "scene_id": name,
            "caption": "",
            "url": str(cams.url),
        }


class Re10kClips(_ManualDirBuilder):
    """RealEstate10K-format clips from a manual directory.

    Layout: ``<split>/<clip>.txt`` (first line the video URL, then per frame ``timestamp fx fy
    cx cy 0 0`` + a row-major 3x4 world-to-camera matrix, fx/cx normalised by width, fy/cy by
    height) with the frames in ``<split>/<clip>/<timestamp>.png`` (or .jpg). Without split
    subdirectories everything is ``train``.

    Features (H x W = config.image_hw, T = config.num_frames or the clip length):
    ``frames`` uint8 [T,H,W,3], ``intrinsics`` float32 [T,3,3] (pixels of the stored frames),
    ``cam2world`` float32 [T,4,4] (OpenCV), ``timestamps`` int64 [T] (microseconds),
    ``frame_indices`` int64 [T] (line index of the frame in the camera file, 0-based),
    ``scene_id`` (clip name), ``caption`` (empty), ``url`` Text.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(RE10K_CONFIGS)
    DEFAULT_CONFIG_NAME = "tiny"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put RealEstate10K camera txt files under the manual directory (optionally in train/ and "
        "test/), each clip's frames in a folder next to it named like the txt without .txt, frame "
        "files named <timestamp>.png or .jpg; or pass source_dir=... to the builder."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: Re10kConfig = self.builder_config
        T = cfg.num_frames
        H, W = cfg.image_hw
        feats = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description="RealEstate10K-format clips: frames and cameras (no depth).",
            features=clip_features(
                T,
                H,
                W,
                per_frame={"timestamps": np.int64, "frame_indices": np.int64},
                clip={"url": feats.Text()},
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = self._source_root(dl_manager)
        splits = _discover_splits(root, ".txt", self.name, recursive=False)
        return {
            split: self._generate_examples(_split_root(root, split), files)
            for split, files in splits.items()
        }

    def _generate_examples(self, split_root, files) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg: Re10kConfig = self.builder_config
        count = 0
        for path in files:
            rel = os.path.relpath(os.fspath(path), os.fspath(split_root))[: -len(".txt")]
            for key, example in re10k_clip_examples(path, cfg, clip_name=rel.replace(os.sep, "/")):
                count += 1
                yield key, example
        if count == 0:
            raise ValueError(
                f"re10k_clips/{cfg.name}: none of the {len(files)} clips in {split_root} has "
                f"{cfg.num_frames} frames at stride {cfg.frame_stride}; nothing to write for this split"
            )


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    **builder_kwargs: Any,
) -> tfds.core.DatasetBuilder:
    """Builds (once) and returns ``name`` (``"dataset/config"``) in ``data_dir``, as array_record.

    ``source_dir`` is forwarded to the manual builders (``geometry_npz``, ``re10k_clips``).
    An already prepared dataset is reused, not rebuilt.
    """
    if source_dir is not None:
        builder_kwargs["source_dir"] = os.fspath(source_dir)
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir), **builder_kwargs)
    builder.download_and_prepare()
    return builder
