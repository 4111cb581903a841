"""grain input pipelines over the TFDS data sources (array_record, random access, no TensorFlow).

Pipeline (all steps index-based, hence deterministic and exactly resumable)::

    tfds data source (random access)
      -> MapDataset.source
      -> shard for this process          ds[index::count] (after an optional even truncation)
      -> shuffle(seed)                    global index shuffle, reshuffled every epoch
      -> repeat(num_epochs)               None = forever
      -> temporal sampling                seeded by (seed, shard, position in the stream)
      -> conversion                       frames uint8 -> float in [-1, 1], depth -> float32, ...
      -> to_iter_dataset(ReadOptions)     threaded reads
      -> batch(per-process batch, drop_remainder)
      -> mp_prefetch (worker_count > 0)   multiprocess workers
      -> put_on_mesh (optional)           global jax.Array sharded along the batch axis

The sampler's random numbers are a pure function of ``(seed, shard_index, index)`` where
``index`` is the element's position in the shuffled, repeated stream of this shard; the epoch is
part of that position, so the same clip gets a different window in every epoch, and resuming
from a saved iterator state (``get_state`` / ``set_state``, JSON-serialisable; or grain's orbax
handler ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``) yields bit-identical
batches.

Sampling modes (``PipelineConfig.sampling``):

* ``"window"``: a random window of ``num_frames`` frames with ``frame_stride`` from each clip.
  Per-frame keys (:data:`mirage_jax.data.builders.PER_FRAME_KEYS`) are sliced;
  ``clip_indices`` int32 [num_frames] gives the positions in the stored clip.
* ``"mirage"``: the training sample construction of spec section 4. A random ``t0`` in
  ``[num_preceding_frames, T - num_target_frames]``; ``target`` = frames ``t0 .. t0 + N - 1``
  (N = ``num_target_frames`` = 4k + 1, default 33 -> 9 latent frames), ``preceding`` = the
  ``P`` frames before ``t0`` (default 8 -> 2 latent frames). Each group carries its
  per-frame data, ``clip_indices``, and the latent-frame cameras: ``latent_positions`` (every
  ``latent_stride``-th frame of the group: 0, 4, ..., N - 1 for the target; 0, 4, ... for the
  preceding frames), ``latent_clip_indices`` (the same in clip positions), ``latent_intrinsics``
  [L, 3, 3] and ``latent_cam2world`` [L, 4, 4]. The memory is built from ``target`` frame 0
  (= clip frame ``t0``). With ``num_reference_frames = R > 0``, ``references`` holds R frames
  drawn without replacement from the rest of the clip on the same latent grid
  (``(p - t0) % latent_stride == 0``), sorted, with ``valid`` bool [R] (False for padding when
  the clip has fewer candidates; padded slots repeat a valid frame). ``t0`` is returned.
* ``"full"``: whole clips, no temporal sampling (clips must have equal length to be batched).

Conversion (``normalize=True``): ``frames`` -> float32 (or ``frames_dtype``) in [-1, 1]
(x / 127.5 - 1, the Wan VAE's input range); ``depth`` -> float32; ``keep_mask`` = NOT dynamic
AND NOT sky is added when the source has ``dynamic_mask`` / ``sky_mask`` but no ``keep_mask``;
Text (bytes) -> ``str`` (NumPy unicode after batching); Python scalars from TFDS -> int64 /
float32 / bool. Integer metadata stays integer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from mirage_jax.data.builders import PER_FRAME_KEYS
from mirage_jax.errors import ConfigError, InputError

SAMPLING_MODES = ("window", "mirage", "full")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Arguments of :func:`make_dataset` (ml_collections-compatible, see :meth:`from_config`).

    Attributes:
      dataset: TFDS name with config, e.g. ``"synthetic_worlds/tiny"`` (ignored when a
        ``source`` is passed to :func:`make_dataset`).
      split: TFDS split (``"train"``, ``"test"``, ``"train[:80%]"``...).
      data_dir: TFDS data directory (None: TFDS's default / ``$TFDS_DATA_DIR``).
      batch_size: GLOBAL batch size; each of the ``shard_count`` processes produces
        ``batch_size // shard_count`` examples per batch.
      seed: seed of the shuffle and of the temporal sampling.
      shuffle: shuffle clips (a fresh permutation every epoch).
      num_epochs: passes over the data; None = repeat forever.
      sampling: ``"window"``, ``"mirage"`` or ``"full"`` (module docstring).
      num_frames, frame_stride: window length and stride of ``"window"`` sampling.
      num_target_frames, num_preceding_frames, latent_stride, num_reference_frames: the
        ``"mirage"`` sample construction (spec section 4: 33, 8, 4).
      normalize: convert to float arrays (module docstring); False keeps uint8 frames.
      frames_dtype: dtype of normalised frames (``"float32"`` or ``"bfloat16"``).
      keys: keep only these top-level keys after sampling (None = all).
      drop_remainder: drop the last incomplete batch.
      shard_drop_remainder: truncate the source to a multiple of the shard count so every
        process sees the same number of clips (needed for a finite multi-host epoch).
      worker_count, worker_buffer_size: grain multiprocessing (0 = in-process). Each worker
        batches its own slice of the stream, so the batch stream depends on ``worker_count``
        (deterministically); resume with the same ``worker_count``, and ``close()`` iterators
        that have workers.
      read_threads, read_buffer_size: grain ReadOptions.
    """

    dataset: str = "synthetic_worlds/tiny"
    split: str = "train"
    data_dir: str | None = None
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    sampling: str = "window"
    num_frames: int = 9
    frame_stride: int = 1
    num_target_frames: int = 33
    num_preceding_frames: int = 8
    latent_stride: int = 4
    num_reference_frames: int = 0
    normalize: bool = True
    frames_dtype: str = "float32"
    keys: tuple[str, ...] | None = None
    drop_remainder: bool = True
    shard_drop_remainder: bool = True
    worker_count: int = 0
    worker_buffer_size: int = 1
    read_threads: int = 2
    read_buffer_size: int = 16

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ConfigError(f"num_frames and frame_stride must be >= 1, got {self.num_frames}, {self.frame_stride}")
        if self.latent_stride < 1:
            raise ConfigError(f"latent_stride must be >= 1, got {self.latent_stride}")
        if self.sampling == "mirage":
            if self.num_target_frames < 1 or (self.num_target_frames - 1) % self.latent_stride:
                raise ConfigError(
                    f"num_target_frames must be {self.latent_stride}k + 1 (causal VAE), got {self.num_target_frames}"
                )
            if self.num_preceding_frames < 0 or self.num_preceding_frames % self.latent_stride:
                raise ConfigError(
                    f"num_preceding_frames must be a multiple of latent_stride={self.latent_stride}, "
                    f"got {self.num_preceding_frames}"
                )
            if self.num_reference_frames < 0:
                raise ConfigError(f"num_reference_frames must be >= 0, got {self.num_reference_frames}")
        if self.frames_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"frames_dtype must be float32, bfloat16 or float16, got {self.frames_dtype!r}")
        if self.worker_count < 0 or self.read_threads < 0:
            raise ConfigError("worker_count and read_threads must be >= 0")
        if self.keys is not None:
            object.__setattr__(self, "keys", tuple(self.keys))
            if not self.keys:
                raise ConfigError("keys: an empty tuple would keep nothing of each example; None keeps all keys")

    @classmethod
    def from_config(cls, config: Any = None, **overrides: Any) -> PipelineConfig:
        """From an ``ml_collections.ConfigDict``, a mapping or a PipelineConfig, plus overrides.

        Unknown keys raise (a typo must not silently fall back to a default).
        """
        values: dict[str, Any] = {}
        if isinstance(config, PipelineConfig):
            values = dataclasses.asdict(config)
        elif config is not None:
            if hasattr(config, "to_dict"):
                config = config.to_dict()
            values = dict(config)
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown PipelineConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def to_config_dict(self):
        """An ``ml_collections.ConfigDict`` of these fields (``keys=None`` kept as a placeholder)."""
        import ml_collections

        d = dataclasses.asdict(self)
        cd = ml_collections.ConfigDict()
        for k, v in d.items():
            if v is None:
                typ = int if k == "num_epochs" else (tuple if k == "keys" else str)
                setattr(cd, k, ml_collections.config_dict.placeholder(typ))
            else:
                setattr(cd, k, v)
        return cd


# --------------------------------------------------------------------------------------------
# Sources and sharding
# --------------------------------------------------------------------------------------------


def make_data_source(name: str, split: str = "train", data_dir: str | None = None, **builder_kwargs: Any):
    """The TFDS random-access data source of a prepared dataset (array_record; no TensorFlow).

    ``name`` is ``"dataset/config"``; the dataset must have been prepared in ``data_dir``
    (``tfds.builder(name, data_dir=...).download_and_prepare()``).
    """
    import tensorflow_datasets as tfds

    import mirage_jax.data  # noqa: F401  (registers the builders)

    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared in {builder.data_dir}; run "
            f"tfds.builder({name!r}, data_dir=...).download_and_prepare() first"
        )
    return builder.as_data_source(split=split)


def resolve_shard(shard_options: grain.sharding.ShardOptions | None, drop_remainder: bool) -> grain.sharding.ShardOptions:
    """``shard_options`` or, by default, one shard per JAX process (``jax.process_index()``)."""
    if shard_options is not None:
        return shard_options
    return grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)


def shard_dataset(ds: grain.MapDataset, shard: grain.sharding.ShardOptions) -> grain.MapDataset:
    """This process's part of ``ds``: elements ``shard_index, shard_index + count, ...``.

    With ``shard.drop_remainder`` the dataset is first truncated to a multiple of the shard
    count so all processes get the same number of elements; otherwise the shards partition
    all elements (disjoint and covering).
    """
    n = len(ds)
    if shard.shard_count == 1:
        return ds
    if shard.drop_remainder:
        ds = ds[: n - n % shard.shard_count]
    return ds[shard.shard_index :: shard.shard_count]


# --------------------------------------------------------------------------------------------
# Temporal sampling
# --------------------------------------------------------------------------------------------


def _num_frames(element: Mapping[str, Any]) -> int:
    for key in ("frames", "cam2world", "intrinsics"):
        if key in element:
            return int(np.shape(element[key])[0])
    raise InputError(f"element has no per-frame key (frames / cam2world / intrinsics); keys: {sorted(element)}")


def _scene(element: Mapping[str, Any]) -> str:
    sid = element.get("scene_id", "?")
    return sid.decode() if isinstance(sid, bytes) else str(sid)


def _take(element: Mapping[str, Any], positions: np.ndarray) -> dict[str, Any]:
    return {k: np.asarray(v)[positions] for k, v in element.items() if k in PER_FRAME_KEYS}


def _latent_group(element, positions: np.ndarray, latent_stride: int) -> dict[str, Any]:
    group = _take(element, positions)
    group["clip_indices"] = positions.astype(np.int32)
    latent_pos = np.arange(0, len(positions), latent_stride, dtype=np.int32)
    group["latent_positions"] = latent_pos
    group["latent_clip_indices"] = positions[latent_pos].astype(np.int32)
    if "intrinsics" in element:
        group["latent_intrinsics"] = np.asarray(element["intrinsics"])[positions[latent_pos]]
    if "cam2world" in element:
        group["latent_cam2world"] = np.asarray(element["cam2world"])[positions[latent_pos]]
    return group


@dataclasses.dataclass(frozen=True)
class ClipSampler(grain.transforms.MapWithIndex):
    """Temporal sampling of one clip as ``config`` says (``sampling`` and its frame counts);
    random numbers from ``(config.seed, shard_index, index)``."""

    config: PipelineConfig
    shard_index: int = 0

    def rng(self, index: int) -> np.random.Generator:
        seq = np.random.SeedSequence([self.config.seed, self.shard_index, int(index)])
        return np.random.Generator(np.random.Philox(seq))

    def map_with_index(self, index: int, element: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config
        if cfg.sampling == "full":
            return dict(element)
        rng = self.rng(index)
        T = _num_frames(element)
        meta = {k: v for k, v in element.items() if k not in PER_FRAME_KEYS}
        if cfg.sampling == "window":
            span = (cfg.num_frames - 1) * cfg.frame_stride + 1
            if T < span:
                raise InputError(
                    f"clip {_scene(element)!r} has {T} frames; a window of {cfg.num_frames} frames "
                    f"with stride {cfg.frame_stride} needs {span}"
                )
            start = int(rng.integers(0, T - span + 1))
            positions = start + cfg.frame_stride * np.arange(cfg.num_frames)
            out = _take(element, positions)
            out["clip_indices"] = positions.astype(np.int32)
            out.update(meta)
            return out
        return self._mirage(element, T, rng, meta)

    def _mirage(self, element, T: int, rng: np.random.Generator, meta) -> dict[str, Any]:
        cfg = self.config
        N, P, s = cfg.num_target_frames, cfg.num_preceding_frames, cfg.latent_stride
        if T < N + P:
            raise InputError(
                f"clip {_scene(element)!r} has {T} frames; the Mirage sample needs "
                f"{P} preceding + {N} target = {N + P}"
            )
        t0 = int(rng.integers(P, T - N + 1))
        out: dict[str, Any] = dict(meta)
        out["t0"] = np.int32(t0)
        out["target"] = _latent_group(element, np.arange(t0, t0 + N), s)
        if P > 0:
            out["preceding"] = _latent_group(element, np.arange(t0 - P, t0), s)
        R = cfg.num_reference_frames
        if R > 0:
            candidates = np.array(
                [p for p in range(T) if not (t0 - P <= p < t0 + N) and (p - t0) % s == 0], dtype=np.int64
            )
            if len(candidates) >= R:
                chosen = np.sort(rng.choice(candidates, size=R, replace=False))
                valid = np.ones(R, bool)
            else:
                fill = candidates[0] if len(candidates) else t0
                chosen = np.concatenate([candidates, np.full(R - len(candidates), fill, np.int64)])
                valid = np.arange(R) < len(candidates)
            refs = _take(element, chosen)
            refs["clip_indices"] = chosen.astype(np.int32)
            refs["valid"] = valid
            out["references"] = refs
        return out


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def normalize_frames(frames: np.ndarray, dtype="float32") -> np.ndarray:
    """uint8 [..., 3] in [0, 255] -> ``dtype`` in [-1, 1] (x / 127.5 - 1)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 to normalise, got {frames.dtype}")
    return (frames.astype(np.float32) / 127.5 - 1.0).astype(_np_dtype(dtype) if isinstance(dtype, str) else dtype)


def denormalize_frames(frames: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8 (round to nearest); inverse of :func:`normalize_frames`.

    Values outside [-1, 1] raise rather than being clipped silently.
    """
    x = np.asarray(frames, np.float32)
    if x.size and (x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3):
        raise InputError(f"frames must be in [-1, 1], got range [{x.min():.4g}, {x.max():.4g}]")
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ToArrays(grain.transforms.Map):
    """Converts one (sampled) example to arrays ready for the model (module docstring)."""

    normalize: bool = True
    frames_dtype: str = "float32"
    keys: tuple[str, ...] | None = None

    def _convert(self, d: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out[k] = self._convert(v)
            elif isinstance(v, (bytes, np.bytes_)):
                out[k] = np.asarray(v.decode("utf-8"))
            elif isinstance(v, str):
                out[k] = np.asarray(v)
            elif isinstance(v, (bool, np.bool_)):
                out[k] = np.bool_(v)
            elif isinstance(v, int):  # TFDS decodes int scalars to Python ints
                out[k] = np.int64(v)
            elif isinstance(v, float):  # ... and float32 scalars to Python floats
                out[k] = np.float32(v)
            elif k == "frames" and self.normalize:
                out[k] = normalize_frames(v, self.frames_dtype)
            elif k == "depth" and self.normalize:
                out[k] = np.asarray(v, np.float32)
            else:
                out[k] = np.asarray(v)
        if "keep_mask" not in out and ("dynamic_mask" in out or "sky_mask" in out):
            ref = out.get("dynamic_mask", out.get("sky_mask"))
            keep = np.ones(ref.shape, bool)
            for m in ("dynamic_mask", "sky_mask"):
                if m in out:
                    keep &= ~out[m].astype(bool)
            out["keep_mask"] = keep
        return out

    def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
        out = self._convert(element)
        if self.keys is not None:
            missing = [k for k in self.keys if k not in out]
            if missing:
                raise InputError(f"keys {missing} not in the example; available: {sorted(out)}")
            out = {k: out[k] for k in self.keys}
        return out


# --------------------------------------------------------------------------------------------
# Datasets, iterators, devices
# --------------------------------------------------------------------------------------------


def make_dataset(
    config: PipelineConfig | Mapping[str, Any] | Any = None,
    *,
    source: Sequence[Any] | None = None,
    shard_options: grain.sharding.ShardOptions | None = None,
    mesh=None,
    spec=None,
    **overrides: Any,
) -> grain.IterDataset:
    """A grain dataset of batches (pytrees of NumPy arrays [B_local, ...]).

    Args:
      config: a :class:`PipelineConfig`, an ``ml_collections.ConfigDict`` or a mapping of its
        fields (``overrides`` are applied on top).
      source: any random-access sequence of examples (default: the TFDS data source of
        ``config.dataset`` / ``config.split`` in ``config.data_dir``).
      shard_options: which part of the data this process reads (default: one shard per JAX
        process, ``grain.sharding.ShardByJaxProcess``).
      mesh, spec: when given, every batch is placed on ``mesh`` as global ``jax.Array``s
        [batch_size, ...] sharded by ``spec`` along the batch axis (:func:`put_on_mesh`);
        the shard count must then be ``jax.process_count()`` or 1.

    Returns a ``grain.IterDataset``; ``iter()`` it (or use :func:`make_iterator`) for a
    checkpointable ``grain.DatasetIterator``.
    """
    cfg = PipelineConfig.from_config(config, **overrides)
    source_given = source is not None
    if source is None:
        source = make_data_source(cfg.dataset, cfg.split, cfg.data_dir)
    shard = resolve_shard(shard_options, cfg.shard_drop_remainder)
    if cfg.batch_size % shard.shard_count:
        raise ConfigError(
            f"batch_size={cfg.batch_size} (global) is not divisible by the shard count {shard.shard_count}"
        )
    local_batch = cfg.batch_size // shard.shard_count
    if mesh is not None:
        import jax

        if shard.shard_count not in (1, jax.process_count()):
            raise ConfigError(
                f"placing batches on a mesh needs one shard per process (shard_count = "
                f"jax.process_count() = {jax.process_count()}) or one shard for all (1); got {shard.shard_count}"
            )
    ds = grain.MapDataset.source(source)
    what = "the source" if source_given else f"{cfg.dataset}:{cfg.split}"
    if len(ds) == 0:
        raise InputError(f"{what} has no examples; nothing to iterate")
    num_examples = len(ds)
    ds = shard_dataset(ds, shard)
    if len(ds) == 0:
        raise InputError(
            f"shard {shard.shard_index} of {shard.shard_count} of {what} is empty: {num_examples} examples "
            f"{'truncated to a multiple of' if shard.drop_remainder else 'split over'} {shard.shard_count} shards"
            + (" (shard_drop_remainder=True)" if shard.drop_remainder else "")
        )
    _check_yields_a_batch(cfg, len(ds), local_batch, what)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map_with_index(ClipSampler(cfg, shard_index=shard.shard_index))
    ds = ds.map(ToArrays(normalize=cfg.normalize, frames_dtype=cfg.frames_dtype, keys=cfg.keys))
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_buffer_size)
    )
    it_ds = it_ds.batch(local_batch, drop_remainder=cfg.drop_remainder)
    if cfg.worker_count > 0:
        from absl import flags

        # grain 0.2.18 reads an absl flag (worker profiling) unguarded when it starts workers;
        # programs not run through absl.app have not parsed flags: use the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size)
        )
    if mesh is not None:
        it_ds = it_ds.map(_PutOnMesh(mesh, spec, num_batch_shards=shard.shard_count))
    return it_ds


def _check_yields_a_batch(cfg: PipelineConfig, local_examples: int, local_batch: int, what: str) -> None:
    """InputError when a finite pipeline (``num_epochs`` set) with ``drop_remainder`` would
    yield no batch at all: the examples this process reads over all epochs (each grain worker
    batches its own interleaved slice of them) never fill one batch of ``local_batch``."""
    if cfg.num_epochs is None or not cfg.drop_remainder:
        return
    total = local_examples * cfg.num_epochs
    per_worker = -(-total // cfg.worker_count) if cfg.worker_count > 0 else total
    if per_worker < local_batch:
        workers = f", split over worker_count={cfg.worker_count} workers ({per_worker} at most each)" if cfg.worker_count else ""
        raise InputError(
            f"{what}: batch_size={cfg.batch_size} ({local_batch} per process) exceeds the {total} examples this "
            f"process reads in num_epochs={cfg.num_epochs}{workers}; with drop_remainder=True the pipeline would "
            "yield no batch. Lower batch_size, raise num_epochs (None repeats forever) or set drop_remainder=False"
        )


def make_iterator(config: PipelineConfig | Mapping[str, Any] | Any = None, **kwargs: Any) -> grain.DatasetIterator:
    """``iter(make_dataset(config, **kwargs))``: a ``grain.DatasetIterator`` with
    ``get_state()`` / ``set_state(state)`` for checkpointing."""
    return iter(make_dataset(config, **kwargs))


def default_batch_spec(mesh):
    """PartitionSpec sharding the leading (batch) axis over the mesh's data-parallel axes
    (``data`` and ``fsdp``, as the ``batch`` rule of :mod:`mirage_jax.sharding`), or over the
    first mesh axis when it has neither."""
    from jax.sharding import PartitionSpec

    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    if not axes:
        axes = (mesh.axis_names[0],)
    return PartitionSpec(axes if len(axes) > 1 else axes[0])


def put_on_mesh(batch: Any, mesh, spec=None, *, num_batch_shards: int | None = None) -> Any:
    """Places a per-process batch on ``mesh`` as global ``jax.Array``s.

    Every numeric/bool leaf [B_local, ...] becomes a global array [B_local * num_batch_shards,
    ...] sharded by ``spec`` (a ``PartitionSpec`` for the leading axes; default
    :func:`default_batch_spec`) via ``jax.make_array_from_process_local_data`` with that global
    shape given explicitly. String leaves (scene ids, captions) stay host NumPy arrays of this
    process's examples.

    Args:
      num_batch_shards: how many processes hold distinct slices of the batch:
        ``jax.process_count()`` (None, the default: each process read its own shard, as
        :func:`make_dataset` does by default) or 1 (every process holds the same, whole
        global batch and keeps the rows its devices need).

    Raises InputError when the mesh cannot hold the data that way, e.g. a spec whose batch
    axes do not span the processes while every process holds different examples (inferring
    the global shape would silently give a smaller batch with inconsistent replicas).
    """
    import jax
    from jax.sharding import NamedSharding

    process_count = jax.process_count()
    shards = process_count if num_batch_shards is None else int(num_batch_shards)
    if shards not in (1, process_count):
        raise InputError(
            f"put_on_mesh: num_batch_shards must be 1 or jax.process_count()={process_count}, got {num_batch_shards}"
        )
    sharding = NamedSharding(mesh, spec if spec is not None else default_batch_spec(mesh))
    x64 = bool(jax.config.jax_enable_x64)

    def place(path, x):
        x = np.asarray(x)
        if x.dtype.kind in "USO":
            return x
        if not x64 and x.dtype.itemsize == 8 and x.dtype.kind in "iuf":
            # Without x64 JAX would narrow silently; narrow here and refuse to overflow.
            narrow = {"i": np.int32, "u": np.uint32, "f": np.float32}[x.dtype.kind]
            if x.dtype.kind in "iu" and x.size:
                info = np.iinfo(narrow)
                if x.min() < info.min or x.max() > info.max:
                    raise OverflowError(
                        f"put_on_mesh: {jax.tree_util.keystr(path)} ({x.dtype}) does not fit {np.dtype(narrow).name} "
                        "and jax_enable_x64 is off; drop it with PipelineConfig.keys or enable x64"
                    )
            x = x.astype(narrow)
        if x.ndim == 0:
            raise InputError(f"put_on_mesh: {jax.tree_util.keystr(path)} has no batch axis (a scalar)")
        global_shape = (x.shape[0] * shards,) + x.shape[1:]
        try:
            return jax.make_array_from_process_local_data(sharding, x, global_shape)
        except ValueError as err:
            raise InputError(
                f"put_on_mesh: {jax.tree_util.keystr(path)} [{x.shape[0]} local rows x {shards} process shard(s)] "
                f"cannot be placed as {global_shape} with {sharding.spec} on mesh {dict(mesh.shape)}: {err}"
            ) from err

    return jax.tree_util.tree_map_with_path(place, batch)


@dataclasses.dataclass(frozen=True)
class _PutOnMesh(grain.transforms.Map):
    mesh: Any
    spec: Any = None
    num_batch_shards: int | None = None

    def map(self, batch):
        return put_on_mesh(batch, self.mesh, self.spec, num_batch_shards=self.num_batch_shards)


def iterator_state_to_bytes(iterator: grain.DatasetIterator) -> bytes:
    """The iterator's state as JSON bytes (store it next to the model checkpoint)."""
    return json.dumps(iterator.get_state(), sort_keys=True).encode("utf-8")


def restore_iterator_state(iterator: grain.DatasetIterator, state: bytes | str | Mapping[str, Any]) -> grain.DatasetIterator:
    """Sets ``iterator`` to a state from :func:`iterator_state_to_bytes` (or a state dict)."""
    if isinstance(state, (bytes, bytearray)):
        state = state.decode("utf-8")
    if isinstance(state, str):
        state = json.loads(state)
    iterator.set_state(dict(state))
    return iterator


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1, *, drop_remainder: bool = True) -> int:
    """Batches per epoch for each process (global ``batch_size``; sharding with truncation)."""
    per_shard = num_examples // shard_count
    local = batch_size // shard_count
    return per_shard // local if drop_remainder else math.ceil(per_shard / local)


__all__ = [
    "PipelineConfig",
    "ClipSampler",
    "ToArrays",
    "make_data_source",
    "make_dataset",
    "make_iterator",
    "put_on_mesh",
    "default_batch_spec",
    "shard_dataset",
    "resolve_shard",
    "normalize_frames",
    "denormalize_frames",
    "iterator_state_to_bytes",
    "restore_iterator_state",
    "steps_per_epoch",
]
