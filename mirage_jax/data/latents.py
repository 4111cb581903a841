"""Preprocessing: clips -> latent clip records, and the ``latent_clips`` dataset that training reads.

Each clip of a source dataset is encoded ONCE with the causal Wan VAE and stored with its
latent-aligned geometry and text embedding, so training at scale never runs the VAE or the text
encoder. One record per clip (the schema shared with training; F latent frames; the clip's first
4(F-1)+1 pixel frames are encoded, latent i covers pixel frames 4i-3..4i, latent 0 is frame 0):

  ``latents``       float32 | bfloat16 [F, h, w, C]  normalised: vae.normalize(vae.encode(video)),
                    video in [-1, 1], channels-last
  ``depth``         float16 [F, H, W]   z-depth of pixel frame 4i (0 / non-finite = invalid)
  ``exclude``       bool    [F, H, W]   True = dynamic / sky / not-keep / invalid depth: never
                    written to the memory
  ``intrinsics``    float32 [F, 3, 3]   pixels of the H x W frames
  ``cam2world``     float32 [F, 4, 4]   OpenCV
  ``text``          float32 | bfloat16 [L, D]  ``text_encoder([caption])[0]`` (padded tail zero)
  ``caption``, ``scene_id``: Text; ``image_hw`` int32 [2] = (H, W);
  ``frame_indices`` int64 [F] (pixel frames 0, 4, 8, ... of the clip);
  ``source_index`` int64 (the clip's index in the source split);
  ``rgb_control``   (only when written with ``rgb_control=``) [J, T + P_max, h, w, C] in the
                    latents' dtype: the explicit RGB-cache variant's control per target start
                    (:class:`RGBControlEncoder`)

Storage: a TFDS dataset written directly as array_record shards
(``latent_clips-<split>.array_record-0000s-of-0000n``) with TFDS's own example serialisation and
metadata (``tfds.folder_dataset.write_metadata``), so :func:`open_latent_clips` /
``tfds.builder_from_directory(out).as_data_source(split)`` give a random-access source for grain
without TensorFlow. Written by hand rather than by a ``GeneratorBasedBuilder`` because a builder
generates in one pass in one process: here the VAE runs batched and sharded over devices, and the
run must survive being killed (a builder restarts from nothing).

Resumable: clip ``i`` of the split goes to shard ``i // clips_per_shard``; a shard is written to a
temporary file and renamed when complete, then recorded in ``manifest.json`` (source range,
records, rejected clips, bytes). A restarted run checks that the manifest was written with the
same settings, skips the recorded shards and redoes the rest; encoding is deterministic, so a run
killed mid-way and restarted gives the same files as an uninterrupted one.

Device sharding: a batch of ``batch_size`` clips (a multiple of the mesh's ``data`` axis) is
sharded over that axis and encoded by one jitted function (compiled once per clip shape); a
short last batch is padded with copies of its last clip, which are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mirage_jax.errors import ConfigError, FileFormatError, InputError, file_error

LATENT_STRIDE = 4
DATASET_NAME = "latent_clips"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)

TextEncoder = Callable[[Sequence[str]], Any]  # texts -> [B, L, D]


# --------------------------------------------------------------------------------------------
# Pure NumPy pieces: frames used, latent-aligned geometry, the record
# --------------------------------------------------------------------------------------------


def usable_frames(num_frames: int, stride: int = LATENT_STRIDE) -> int:
    """The most pixel frames 1 + stride k <= num_frames the causal VAE takes (0 for an empty clip)."""
    return 0 if num_frames < 1 else 1 + stride * ((num_frames - 1) // stride)


def exclusion_mask(clip: Mapping[str, Any], positions: np.ndarray) -> np.ndarray:
    """bool [F, H, W] at ``positions``: invalid depth (0, negative, non-finite) OR dynamic OR sky
    OR NOT keep, from whichever of ``dynamic_mask`` / ``sky_mask`` / ``keep_mask`` the clip has."""
    depth = np.asarray(clip["depth"])[positions].astype(np.float32)
    exclude = ~np.isfinite(depth) | (depth <= 0)
    for key, flip in (("dynamic_mask", False), ("sky_mask", False), ("keep_mask", True)):
        if key in clip and clip[key] is not None:
            m = np.asarray(clip[key], bool)[positions]
            exclude |= ~m if flip else m
    return exclude


def latent_geometry(clip: Mapping[str, Any], stride: int = LATENT_STRIDE) -> dict[str, np.ndarray]:
    """The latent-aligned geometry of a clip: entry i belongs to pixel frame ``stride * i``.

    ``clip``: ``depth`` [T, H, W], ``intrinsics`` [T, 3, 3], ``cam2world`` [T, 4, 4] and optional
    masks [T, H, W]. Returns ``depth`` float16, ``exclude`` bool, ``intrinsics`` float32,
    ``cam2world`` float32 and ``frame_indices`` int64, each with F = ``(usable_frames(T) - 1) //
    stride + 1`` entries. Finite depth beyond the float16 range raises (it would become inf).
    """
    T = int(np.asarray(clip["depth"]).shape[0])
    positions = np.arange(0, usable_frames(T, stride), stride)
    depth = np.asarray(clip["depth"])[positions]
    finite = np.isfinite(depth)
    if depth.dtype != np.float16 and finite.any() and float(np.abs(depth[finite]).max()) > FLOAT16_MAX:
        raise InputError(f"depth: finite value {float(np.abs(depth[finite]).max()):.4g} exceeds the float16 range of the record")
    return {
        "depth": depth.astype(np.float16),
        "exclude": exclusion_mask(clip, positions),
        "intrinsics": np.asarray(clip["intrinsics"], np.float32)[positions],
        "cam2world": np.asarray(clip["cam2world"], np.float32)[positions],
        "frame_indices": positions.astype(np.int64),
    }


def latent_features(latents_dtype: str = "float32", text_dtype: str = "float32", rgb_control: bool = False):
    """The TFDS ``FeaturesDict`` of a latent clip record (module docstring); ``rgb_control``
    adds that key (the latents' dtype)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    extra = {}
    if rgb_control:
        extra["rgb_control"] = f.Tensor(shape=(None,) * 5, dtype=_dtype(latents_dtype), encoding="bytes")
    return f.FeaturesDict(
        {
            **extra,
            # bfloat16 only serialises as raw bytes in TFDS without TensorFlow.
            "latents": f.Tensor(shape=(None, None, None, None), dtype=_dtype(latents_dtype), encoding="bytes"),
            "depth": f.Tensor(shape=(None, None, None), dtype=np.float16, encoding="zlib"),
            "exclude": f.Tensor(shape=(None, None, None), dtype=np.bool_, encoding="zlib"),
            "intrinsics": f.Tensor(shape=(None, 3, 3), dtype=np.float32),
            "cam2world": f.Tensor(shape=(None, 4, 4), dtype=np.float32),
            "text": f.Tensor(shape=(None, None), dtype=_dtype(text_dtype), encoding="bytes"),
            "frame_indices": f.Tensor(shape=(None,), dtype=np.int64),
            "image_hw": f.Tensor(shape=(2,), dtype=np.int32),
            "source_index": f.Scalar(dtype=np.int64),
            "caption": f.Text(),
            "scene_id": f.Text(),
        }
    )


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name in ("float32", "float16"):
        return np.dtype(name)
    raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {name!r}")


def latent_record(clip: Mapping[str, Any], latents, text, *, source_index: int, latents_dtype="float32",
                  text_dtype="float32", stride: int = LATENT_STRIDE, rgb_control=None) -> dict[str, Any]:
    """One record (module docstring) from a clip, its encoded ``latents`` [F, h, w, C] and ``text`` [L, D]
    (and ``rgb_control`` [J, T + P_max, h, w, C] when given)."""
    geo = latent_geometry(clip, stride)
    latents = np.asarray(latents)
    F = geo["frame_indices"].shape[0]
    if latents.ndim != 4 or latents.shape[0] != F:
        raise InputError(f"latents: expected [{F}, h, w, C] for a clip of {np.asarray(clip['depth']).shape[0]} frames, got {latents.shape}")
    text = np.asarray(text)
    if text.ndim != 2:
        raise InputError(f"text: expected one embedding [L, D], got shape {text.shape}")
    H, W = geo["depth"].shape[1:]
    extra = {}
    if rgb_control is not None:
        rgb_control = np.asarray(rgb_control)
        if rgb_control.ndim != 5 or rgb_control.shape[2:] != latents.shape[1:]:
            raise InputError(f"rgb_control: expected [J, T + P_max, {', '.join(map(str, latents.shape[1:]))}] "
                             f"like the latents' frames, got {rgb_control.shape}")
        extra["rgb_control"] = rgb_control.astype(_dtype(latents_dtype))
    return {
        **geo,
        **extra,
        "latents": latents.astype(_dtype(latents_dtype)),
        "text": text.astype(_dtype(text_dtype)),
        "image_hw": np.array([H, W], np.int32),
        "source_index": np.int64(source_index),
        "caption": _text(clip.get("caption", "")),
        "scene_id": _text(clip.get("scene_id", f"clip{source_index}")),
    }


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


# --------------------------------------------------------------------------------------------
# Text encoder stand-in
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HashedTextEncoder:
    """PLACEHOLDER text encoder: NOT a language model (for real records pass a callable around
    :func:`mirage_jax.models.umt5.tokenizer.encode_prompts` and a converted umT5).

    Lower-cased word / punctuation tokens, each mapped to a fixed unit-variance Gaussian vector
    seeded by SHA-256 of (seed, token); up to ``max_length`` tokens, the padded tail zero.
    Deterministic across processes and platforms, so it exercises the storage and training
    plumbing with embeddings that depend on the caption; swap in the real encoder (any callable
    ``texts -> [B, L, D]``) for real training. ``__call__(texts) -> float32 [B, max_length, dim]``.
    """

    dim: int = 4096
    max_length: int = 512
    seed: int = 0

    @property
    def name(self) -> str:
        return f"hashed-placeholder(dim={self.dim},max_length={self.max_length},seed={self.seed})"

    def _token(self, token: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}/{token}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(self.dim, dtype=np.float32)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.max_length, self.dim), np.float32)
        for b, text in enumerate(texts):
            for i, tok in enumerate(re.findall(r"\w+|[^\w\s]", _text(text).lower())[: self.max_length]):
                out[b, i] = self._token(tok)
        return out


def text_encoder_name(encoder: TextEncoder) -> str:
    """What identifies a text encoder in the manifest: its ``name`` attribute, else its qualified name."""
    name = getattr(encoder, "name", None)
    if isinstance(name, str):
        return name
    return f"{getattr(encoder, '__module__', '?')}.{getattr(encoder, '__qualname__', type(encoder).__qualname__)}"


# --------------------------------------------------------------------------------------------
# The sharded VAE encoder
# --------------------------------------------------------------------------------------------


class LatentEncoder:
    """uint8 videos [B, T, H, W, 3] -> normalised latents float32 [B, F, h, w, C], sharded over devices.

    ``vae``: a :class:`~mirage_jax.models.wan.vae.WanVAE`; its state is replicated on ``mesh``
    (the VAE is small next to the DiT: a copy per device costs less than gathering weights for
    every layer). ``mesh``: a mesh with a ``data`` axis (default: every device on it).
    ``batch_size``: clips per call (default: the ``data`` axis size; must be a multiple of it).
    ``tiled``: the VAE's spatially tiled encode (large frames on small memory).
    ``compiler_options``: passed to ``jax.jit`` (e.g. a lower XLA optimisation level).
    The jitted function is compiled once per video shape.
    """

    def __init__(self, vae, *, mesh=None, batch_size: int | None = None, tiled: bool = False,
                 compiler_options: Mapping[str, Any] | None = None):
        import jax
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec

        from mirage_jax.sharding import make_mesh

        if mesh is None:
            mesh = make_mesh((jax.device_count(),), ("data",))
        if "data" not in mesh.axis_names:
            raise ConfigError(f"the mesh needs a 'data' axis, it has {mesh.axis_names}")
        n = int(mesh.shape["data"])
        self.batch_size = n if batch_size is None else int(batch_size)
        if self.batch_size < 1 or self.batch_size % n:
            raise ConfigError(f"batch_size {self.batch_size} must be a positive multiple of the data axis size {n}")
        self.mesh, self.config, self.tiled = mesh, vae.config, tiled
        graphdef, state = nnx.split(vae)
        self._state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        self._in = NamedSharding(mesh, PartitionSpec("data"))

        def encode(state, video):
            model = nnx.merge(graphdef, state)
            return model.normalize(model.encode(video, tiled=tiled)).astype(jax.numpy.float32)

        self._fn = jax.jit(encode, out_shardings=self._in, compiler_options=dict(compiler_options or {}) or None)

    @property
    def name(self) -> str:
        return f"wan_vae({json.dumps(self.config.to_diffusers(), sort_keys=True, default=str)})"

    def __call__(self, videos) -> np.ndarray:
        import jax

        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.dtype != np.uint8 or videos.shape[-1] != 3:
            raise InputError(f"videos: expected uint8 [B, T, H, W, 3], got {videos.dtype} {videos.shape}")
        B = videos.shape[0]
        if not 1 <= B <= self.batch_size:
            raise InputError(f"videos: batch of {B}, this encoder takes 1..{self.batch_size}")
        if B < self.batch_size:
            videos = np.concatenate([videos, np.repeat(videos[-1:], self.batch_size - B, axis=0)])
        x = videos.astype(np.float32) / 127.5 - 1.0  # mirage_jax.data.pipeline.normalize_frames
        out = self._fn(self._state, jax.device_put(x, self._in))
        return np.asarray(out)[:B]


class RGBControlEncoder:
    """clip -> the explicit (RGB-cache) variant's stored control, float32 [J, T + P_max, h, w, C].

    Per target start ``j`` a training sample can draw (:func:`mirage_jax.train.sample.target_starts`:
    J starts): an RGB cache holding pixel frame ``4 j`` alone (its colours with the record's
    float16 depth, exclusion mask, intrinsics and pose: what the latent path writes for latent
    ``j``) is rendered at the target's pixel cameras ``4 j .. 4 j + 4 (T - 1)`` and at the
    ``P_max`` preceding latents' cameras ``4 (j - P_max) .. 4 (j - 1)`` and encoded by
    :func:`mirage_jax.models.mirage.rgb_control.encode_views` (the rollout's own readout);
    entries of preceding latents before the clip's start (``j - p < 0``, never drawn) are zero.
    Training then needs no VAE (:mod:`mirage_jax.train.sample`, ``control_source="rgb"``).

    ``vae``: the :class:`~mirage_jax.models.wan.vae.WanVAE` of the latents; one jitted program
    per frame shape, one call per start ``j`` (the cache holds one frame: ``H W`` points).
    """

    def __init__(self, vae, *, num_target: int = 9, max_preceding: int = 2,
                 compiler_options: Mapping[str, Any] | None = None):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from mirage_jax.memory import rgb_cache
        from mirage_jax.models.mirage.rgb_control import encode_views

        if vae.config.temporal_ratio != LATENT_STRIDE:
            raise ConfigError(
                f"the VAE's temporal ratio {vae.config.temporal_ratio} is not the records' {LATENT_STRIDE}")
        self.num_target, self.max_preceding = int(num_target), int(max_preceding)
        graphdef, self._state = nnx.split(vae)
        T = self.num_target

        def fn(state, image, depth, exclude, K, c2w, view_K, target_c2w, preceding_c2w, preceding_ok):
            cache = rgb_cache.empty(image.shape[0] * image.shape[1])
            cache = rgb_cache.write(cache, image, depth, K, c2w, exclude, validate=False)
            feats, _ = encode_views(nnx.merge(graphdef, state), cache, view_K, target_c2w, preceding_c2w,
                                    image.shape[:2])
            keep = jnp.concatenate([jnp.ones((T,), bool), preceding_ok])
            return jnp.where(keep[:, None, None, None], feats, 0.0)

        self._fn = jax.jit(fn, compiler_options=dict(compiler_options or {}) or None)

    @property
    def name(self) -> str:
        return f"rgb_control(num_target={self.num_target},max_preceding={self.max_preceding})"

    def __call__(self, clip: Mapping[str, Any]) -> np.ndarray:
        from mirage_jax.train.sample import target_starts

        geo = latent_geometry(clip)
        frames = np.asarray(clip["frames"])
        if frames.ndim != 4 or frames.dtype != np.uint8 or frames.shape[-1] != 3:
            raise InputError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        F, T, P = geo["frame_indices"].shape[0], self.num_target, self.max_preceding
        if F < T:
            raise InputError(f"the clip has {F} latent frames; num_target = {T} needs at least that many")
        K = np.broadcast_to(np.asarray(clip["intrinsics"], np.float32), (frames.shape[0], 3, 3))
        c2w = np.asarray(clip["cam2world"], np.float32)
        n = LATENT_STRIDE * (T - 1) + 1
        out = []
        for j in target_starts(F, T, P):
            pre = np.arange(j - P, j)
            pre_px = LATENT_STRIDE * np.maximum(pre, 0)
            tgt = slice(LATENT_STRIDE * j, LATENT_STRIDE * j + n)
            out.append(np.asarray(self._fn(
                self._state, frames[LATENT_STRIDE * j], geo["depth"][j].astype(np.float32), geo["exclude"][j],
                geo["intrinsics"][j], geo["cam2world"][j], np.concatenate([K[tgt], K[pre_px]]), c2w[tgt], c2w[pre_px],
                pre >= 0)))
        return np.stack(out)


# --------------------------------------------------------------------------------------------
# Clip sources
# --------------------------------------------------------------------------------------------


class VipeFolderSource:
    """ViPE clip folders under ``root`` (read directly, no intermediate dataset) as a clip source.

    ``__getitem__`` returns the clip dict of :func:`mirage_jax.data.vipe.vipe_example`, or raises
    :class:`~mirage_jax.data.vipe.RejectedClip` for a clip whose dynamic mask covers too much
    of a frame.
    """

    def __init__(self, root, config=None):
        from mirage_jax.data.vipe import VIPE_CONFIGS, find_clip_folders

        self.root = os.fspath(root)
        self.config = config if config is not None else VIPE_CONFIGS[0]
        self.folders = find_clip_folders(self.root)

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from mirage_jax.data.vipe import vipe_example

        folder = self.folders[i]
        return vipe_example(folder, self.config, scene_id=os.path.relpath(folder, self.root).replace(os.sep, "/"))


def open_clip_source(dataset: str, *, split: str = "train", data_dir=None, source_dir=None):
    """A random-access clip source: ``len`` and ``[i]`` -> clip dict.

    ``vipe_clips[/config]`` with ``source_dir``: the folders are read directly
    (:class:`VipeFolderSource`; ``source_dir/<split>`` when it exists). Any other TFDS name
    (``synthetic_worlds/tiny``, ``geometry_npz``, ``vipe_clips`` without ``source_dir``...):
    prepared once in ``data_dir`` and read as a TFDS data source.
    """
    name, _, config = dataset.partition("/")
    if name == "vipe_clips" and source_dir is not None:
        from mirage_jax.data.vipe import VIPE_CONFIGS

        configs = {c.name: c for c in VIPE_CONFIGS}
        if config and config not in configs:
            raise ConfigError(f"vipe_clips has no config {config!r}; choose from {sorted(configs)}")
        root = os.path.join(os.fspath(source_dir), split)
        return VipeFolderSource(root if os.path.isdir(root) else source_dir, configs.get(config))
    from mirage_jax.data.builders import prepare

    import mirage_jax.data  # noqa: F401  (registers the builders)

    return prepare(dataset, data_dir=data_dir, source_dir=source_dir).as_data_source(split=split)


# --------------------------------------------------------------------------------------------
# Writing: shards, manifest, metadata
# --------------------------------------------------------------------------------------------


def _write_json_atomic(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _shard_template(out_dir: str, split: str):
    import tensorflow_datasets as tfds

    return tfds.core.ShardedFileTemplate(
        data_dir=out_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=DATASET_NAME, split=split, filetype_suffix="array_record",
    )


def _read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return {"version": MANIFEST_VERSION, "features": None, "splits": {}}
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise file_error(path, f"unreadable manifest ({err}); remove the output directory to start over") from err
    if manifest.get("version") != MANIFEST_VERSION:
        raise file_error(path, f"manifest version {manifest.get('version')!r}, this code writes {MANIFEST_VERSION}")
    return manifest


def _write_metadata(out_dir: str, manifest: Mapping[str, Any], features) -> None:
    import tensorflow_datasets as tfds

    infos = []
    for split, s in sorted(manifest["splits"].items()):
        if not s.get("complete"):
            continue
        shards = [s["shards"][str(k)] for k in range(s["num_shards"])]
        infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[sh["records"] for sh in shards], num_bytes=sum(sh["bytes"] for sh in shards),
            filename_template=_shard_template(out_dir, split),
        ))
    tfds.folder_dataset.write_metadata(
        data_dir=out_dir, features=features, split_infos=infos, filename_template=_shard_template(out_dir, "train"),
        check_data=False, version="1.0.0",
        description="Latent clip records written by `mirage-jax preprocess` (mirage_jax.data.latents).",
    )


def preprocess(
    source,
    out_dir,
    *,
    encoder: LatentEncoder | Callable[[np.ndarray], np.ndarray],
    text_encoder: TextEncoder,
    split: str = "train",
    clips_per_shard: int = 64,
    latents_dtype: str = "float32",
    text_dtype: str = "float32",
    settings: Mapping[str, Any] | None = None,
    progress: bool = False,
    rgb_control: Callable[[Mapping[str, Any]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Encodes every clip of ``source`` into ``out_dir`` (module docstring) -> this split's manifest entry.

    ``source``: ``len`` / ``[i]`` -> clip dict (:func:`open_clip_source`); ``[i]`` may raise
    :class:`~mirage_jax.data.vipe.RejectedClip` (counted and listed, not written). ``encoder``:
    uint8 videos [B, T, H, W, 3] -> latents [B, F, h, w, C] with a ``batch_size`` attribute
    (:class:`LatentEncoder`). ``text_encoder``: texts -> [B, L, D].
    ``settings``: what else identifies the run (dataset name, source...) in the manifest; a
    restart with different settings raises :class:`~mirage_jax.errors.ConfigError`.
    ``rgb_control``: clip -> [J, T + P_max, h, w, C] (:class:`RGBControlEncoder`) adds the
    record key ``rgb_control`` (the explicit RGB-cache variant's training control).

    Returns ``{run, num_clips, num_shards, complete, shards: {k: {source_range, records,
    rejected, tail_frames_dropped, bytes}}}``; every skipped or dropped thing is counted there.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if clips_per_shard < 1:
        raise ConfigError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    features = latent_features(latents_dtype, text_dtype, rgb_control is not None)
    batch_size = int(getattr(encoder, "batch_size", 1))
    num_clips = len(source)
    num_shards = max(1, math.ceil(num_clips / clips_per_shard))
    run = {
        "encoder": getattr(encoder, "name", type(encoder).__qualname__),
        "text_encoder": text_encoder_name(text_encoder),
        "latents_dtype": latents_dtype,
        "text_dtype": text_dtype,
        "clips_per_shard": clips_per_shard,
        "batch_size": batch_size,
        "num_clips": num_clips,
        "settings": dict(settings or {}),
    }
    if rgb_control is not None:
        run["rgb_control"] = getattr(rgb_control, "name", type(rgb_control).__qualname__)
    run = json.loads(json.dumps(run))  # as it reads back from the manifest (tuples -> lists)
    manifest = _read_manifest(out_dir)
    features_json = {"latents_dtype": latents_dtype, "text_dtype": text_dtype}
    if rgb_control is not None:
        features_json["rgb_control"] = True
    if manifest["features"] not in (None, features_json):
        raise ConfigError(f"{out_dir} holds records with {manifest['features']}, this run writes {features_json}")
    manifest["features"] = features_json
    entry = manifest["splits"].get(split)
    if entry is not None and entry["run"] != run:
        diff = sorted(k for k in run if entry["run"].get(k) != run[k])
        raise ConfigError(f"{out_dir}: split {split!r} was started with other settings ({', '.join(diff)} differ); "
                          "use another output directory or the same settings to resume")
    if entry is None:
        entry = {"run": run, "num_clips": num_clips, "num_shards": num_shards, "shards": {}, "complete": False}
        manifest["splits"][split] = entry
    template = _shard_template(out_dir, split)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_clips, desc=f"preprocess {split}", unit="clip")
    for shard in range(num_shards):
        lo, hi = shard * clips_per_shard, min(num_clips, (shard + 1) * clips_per_shard)
        path = os.fspath(template.sharded_filepath(shard_index=shard, num_shards=num_shards))
        done = entry["shards"].get(str(shard))
        if done is not None and os.path.isfile(path) and os.path.getsize(path) == done["bytes"]:
            if bar is not None:
                bar.update(hi - lo)
            continue
        tmp = f"{path}.incomplete"
        writer = ArrayRecordWriter(tmp, "group_size:1")
        records, rejected, dropped = 0, [], 0
        try:
            for batch in _batches(source, range(lo, hi), batch_size, rejected):
                dropped += sum(np.asarray(c["frames"]).shape[0] - _shape(c)[0] for _, c in batch)
                for record in _encode_batch(batch, encoder, text_encoder, latents_dtype, text_dtype, rgb_control):
                    writer.write(features.serialize_example(record))
                    records += 1
                if bar is not None:
                    bar.update(len(batch))
        finally:
            writer.close()
        os.replace(tmp, path)
        entry["shards"][str(shard)] = {
            "source_range": [lo, hi], "records": records, "rejected": rejected,
            "tail_frames_dropped": dropped, "bytes": os.path.getsize(path),
        }
        _write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    if bar is not None:
        bar.close()
    entry["complete"] = True
    _write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    _write_metadata(out_dir, manifest, features)
    return entry


def _batches(source, indices: Iterable[int], batch_size: int, rejected: list) -> Iterable[list[tuple[int, dict]]]:
    """Consecutive clips in batches of at most ``batch_size`` with one usable shape each."""
    from mirage_jax.data.vipe import RejectedClip

    batch: list[tuple[int, dict]] = []
    for i in indices:
        try:
            clip = source[i]
        except RejectedClip as r:
            rejected.append([i, r.scene_id, str(r)])
            continue
        frames = np.asarray(clip["frames"])
        if frames.ndim != 4 or frames.dtype != np.uint8:
            raise InputError(f"clip {i}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        shape = _shape(clip)
        if batch and (len(batch) == batch_size or _shape(batch[0][1]) != shape):
            yield batch
            batch = []
        batch.append((i, clip))
    if batch:
        yield batch


def _shape(clip) -> tuple:
    frames = np.asarray(clip["frames"])
    return (usable_frames(frames.shape[0]),) + frames.shape[1:]


def _encode_batch(batch, encoder, text_encoder, latents_dtype, text_dtype, rgb_control=None) -> list[dict[str, Any]]:
    T = _shape(batch[0][1])[0]
    videos = np.stack([np.asarray(c["frames"])[:T] for _, c in batch])
    latents = np.asarray(encoder(videos))
    texts = np.asarray(text_encoder([_text(c.get("caption", "")) for _, c in batch]))
    if texts.ndim != 3 or texts.shape[0] != len(batch):
        raise InputError(f"text_encoder returned shape {texts.shape} for {len(batch)} captions; expected [B, L, D]")
    return [
        latent_record(c, latents[b], texts[b], source_index=i, latents_dtype=latents_dtype, text_dtype=text_dtype,
                      rgb_control=None if rgb_control is None else rgb_control(c))
        for b, (i, c) in enumerate(batch)
    ]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def open_latent_clips(path, split: str = "train"):
    """The ``split`` of a latent_clips directory written by :func:`preprocess` as a TFDS
    random-access data source (array_record; ``len``, ``[i]`` -> record dict, grain-ready)."""
    import tensorflow_datasets as tfds

    path = os.fspath(path)
    manifest = _read_manifest(path)
    entry = manifest["splits"].get(split)
    if entry is None or not entry.get("complete"):
        state = "incomplete (resume `mirage-jax preprocess`)" if entry else f"absent (splits: {sorted(manifest['splits'])})"
        raise FileFormatError(f"{path}: split {split!r} is {state}")
    return tfds.builder_from_directory(path).as_data_source(split=split)


__all__ = [
    "HashedTextEncoder",
    "LatentEncoder",
    "RGBControlEncoder",
    "VipeFolderSource",
    "exclusion_mask",
    "latent_features",
    "latent_geometry",
    "latent_record",
    "open_clip_source",
    "open_latent_clips",
    "preprocess",
    "text_encoder_name",
    "usable_frames",
]
