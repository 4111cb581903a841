"""The chunked rollout with the latent memory (spec 5, 10.7): one image, a camera path and a prompt in;
a video out, the memory read before each chunk and written after it.

    result = rollout(model, vae, image, intrinsics, cam2world, text, first_depth=d0,
                     depth=GeometryDepth(geo), config=RolloutConfig(num_chunks=5))
    result.video          # uint8 [33 + 32 (N - 1), H, W, 3]
    result.memory         # the final LatentMemory; result.chunks: per-chunk records

Chunk plan: chunk ``c`` covers pixel frames ``32 c .. 32 c + 32`` (33 frames, 9 latents); latent
``i`` of the chunk is the video's latent ``g = 8 c + i`` and uses the camera of pixel frame
``32 c + 4 i = 4 g``. Chunk 0's clean frame is VAE(first image); chunk ``c > 0`` reuses the last
latent of chunk ``c - 1``. The camera path must have at least ``33 + 32 (N - 1)`` poses.

Per chunk (the reference's loop, spec 10.7):

1. read the memory at the 9 target and the 2 preceding latent poses (``memory.read_many``);
   control = readout || score latent (zero readouts for absent preceding frames);
2. preceding = the 2 latents before the last generated latent (none in chunk 0);
   references = up to 4 earlier latents whose visible voxel set has IoU >= 0.04 (voxel 0.1) with
   the union of the memory points inside the chunk's target frusta, by IoU descending (ties: the
   more recent). Candidates are the video's latents before the preceding ones: the clean frame
   and the preceding frames are in the model input already (as in training's sample
   construction, :mod:`mirage_jax.train.sample`);
3. :func:`~mirage_jax.generate.denoise.denoise_chunk_pure` with one seeded key (``seed``, folded
   with the chunk index);
4. decode the 9 latents (33 frames; tiled on request);
5. depth (and optionally exclusion masks) for every 4th decoded frame from a provider
   (:mod:`mirage_jax.generate.providers`), on the host;
6. write the new latents into the memory (all 9 in chunk 0 with ``rewrite_first_frame=True``, the
   reference's behaviour, which re-adds frame 0's points; ``[1:]`` otherwise), then record each
   new latent's visible voxel set (memory points inside its frustum after the write) for later
   retrieval. Visible sets are stored as exact voxel sets, so they stay valid when a bounded
   memory evicts the points they were computed from.

State between chunks is a pytree (:class:`RolloutState`: memory, generated latents, visible voxel
sets, count, key) of fixed shapes, so steps 1-4 are one compiled program and step 6 another, both
traced once and reused for every chunk (``TRACE_COUNTS``). References and preceding frames use
fixed slots (4 and 2) with a frame mask, so chunk 0 (none of either) runs the same program.

Beyond the reference, as options (the reference's behaviour is the default): a bounded memory
(``memory_capacity``, ring or voxel fusion), exclusion masks on write-back (a mask provider), and
no double write of frame 0 (``rewrite_first_frame=False``).

``memory_kind="rgb"`` runs the paper's explicit baseline (issue 10 section 4; a model trained with
``SampleConfig(control_source="rgb")``): the memory is an RGB point-cloud cache at pixel
resolution (:mod:`mirage_jax.memory.rgb_cache`, uint8, capacity = every pixel written) written
with the same frames as the latent path (the first image, then every 4th decoded frame with the
provider's depth and masks); step 1 renders the chunk's 33 pixel cameras and VAE-encodes them as
one video (the 9 target readouts), and each preceding latent's camera as a 1-frame video
(:func:`mirage_jax.models.mirage.rgb_control.encode_views`, the function that built the training
control). References are retrieved from the cache's points in the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax import memory
from mirage_jax.diffusion import FlowUniPC
from mirage_jax.errors import ConfigError, InputError, check_hw
from mirage_jax.generate.denoise import TRACE_COUNTS, denoise_chunk_pure
from mirage_jax.geometry.cameras import check_intrinsics, check_pose
from mirage_jax.geometry.trajectories import CHUNK_FRAMES, NEW_FRAMES_PER_CHUNK, num_frames_for_chunks
from mirage_jax.models.mirage import rgb_control, score_latent

__all__ = [
    "RolloutConfig",
    "RolloutState",
    "RolloutResult",
    "ChunkOutput",
    "Rollout",
    "rollout",
    "chunk_plan",
    "chunk_memory_analysis",
    "memory_bytes",
    "set_step_hook",
]

LATENTS_PER_CHUNK = (CHUNK_FRAMES - 1) // 4 + 1  # 9
NEW_LATENTS_PER_CHUNK = NEW_FRAMES_PER_CHUNK // 4  # 8
# "IoU >= 0.04" (spec 10.7) with memory.retrieve_references' strict "> threshold": the largest
# float32 below the threshold makes the comparison inclusive on float32 IoUs.
_INCLUSIVE = lambda x: float(np.nextafter(np.float32(x), np.float32(0)))  # noqa: E731
MEMORY_KINDS = rgb_control.CONTROL_SOURCES


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static options of a rollout (hashable).

    Attributes:
      num_chunks: N; the video has ``33 + 32 (N - 1)`` frames.
      image_hw: (H, W) pixels (multiples of the VAE's 16 and of 16 x the DiT patch).
      seed: the one random seed of the whole video (the reference's 42).
      max_reference, max_preceding: reference (4) and preceding (2) slots.
      reference_threshold, reference_voxel: IoU >= threshold (0.04) with voxel edge 0.1.
      memory_capacity: point slots; None = enough for the whole rollout (nothing is ever evicted:
        the reference's unbounded memory).
      memory_policy: "ring" or "fuse" (voxel fusion with ``memory_voxel``, ``fuse_mode``).
      memory_convention, depth_resize: memory options (:class:`mirage_jax.memory.MemoryConfig`).
      rewrite_first_frame: chunk 0 writes all 9 latents, re-adding frame 0's points (the
        reference); False writes only the new latents.
      tiled_decode: decode with overlapping tiles (large frames).
      memory_kind: "latent" (Mirage's latent memory) or "rgb" (the explicit baseline: an RGB
        point-cloud cache rendered at pixel resolution and VAE-encoded; module docstring).
      read_memory: False switches the memory off for the model: the readout half of the control
        input is zeroed at every chunk (the score half kept, as when training drops a sample's
        readout); the memory is still written and references are still retrieved
        (``max_reference=0`` turns those off).
    """

    num_chunks: int = 5
    image_hw: tuple[int, int] = (704, 1280)
    seed: int = 42
    max_reference: int = 4
    max_preceding: int = 2
    reference_threshold: float = 0.04
    reference_voxel: float = 0.1
    memory_capacity: int | None = None
    memory_policy: str = "ring"
    memory_voxel: float = 0.05
    fuse_mode: str = "average"
    memory_convention: str = "reference"
    depth_resize: str = "bilinear"
    rewrite_first_frame: bool = True
    tiled_decode: bool = False
    read_memory: bool = True
    memory_kind: str = "latent"

    def __post_init__(self):
        object.__setattr__(self, "image_hw", check_hw(tuple(self.image_hw), "image_hw", ConfigError))
        for name, lo in (("num_chunks", 1), ("max_reference", 0), ("max_preceding", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.memory_capacity is not None and (
            isinstance(self.memory_capacity, bool) or not isinstance(self.memory_capacity, (int, np.integer))
            or self.memory_capacity < 1
        ):
            raise ConfigError(f"memory_capacity must be None or a positive int, got {self.memory_capacity!r}")
        if self.memory_kind not in MEMORY_KINDS:
            raise ConfigError(f"memory_kind must be one of {MEMORY_KINDS}, got {self.memory_kind!r}")
        if not isinstance(self.read_memory, (bool, np.bool_)):
            raise ConfigError(f"read_memory must be a bool, got {self.read_memory!r}")
        if not 0 <= float(self.reference_threshold) <= 1 or not float(self.reference_voxel) > 0:
            raise ConfigError("reference_threshold must be in [0, 1] and reference_voxel > 0")
        memory.MemoryConfig(convention=self.memory_convention, depth_resize=self.depth_resize,
                            policy=self.memory_policy, voxel_size=float(self.memory_voxel), fuse_mode=self.fuse_mode)

    @property
    def num_frames(self) -> int:
        return num_frames_for_chunks(self.num_chunks)

    @property
    def num_latents(self) -> int:
        """Latent frames of the whole video: 1 + 8 N."""
        return 1 + NEW_LATENTS_PER_CHUNK * self.num_chunks

    def latent_hw(self, spatial_ratio: int = 16) -> tuple[int, int]:
        return self.image_hw[0] // spatial_ratio, self.image_hw[1] // spatial_ratio

    def capacity(self, cells: int) -> int:
        """Slots of the memory: ``memory_capacity`` or everything the rollout writes (``cells``
        per written frame: latent cells, or pixels for the RGB cache)."""
        if self.memory_capacity is not None:
            return int(self.memory_capacity)
        frames = 1 + NEW_LATENTS_PER_CHUNK * self.num_chunks + (1 if self.rewrite_first_frame else 0)
        return frames * cells


def chunk_plan(num_chunks: int) -> list[dict]:
    """Per chunk: pixel frames ``[start, end]`` and the pixel frame of each of its 9 latents."""
    out = []
    for c in range(num_chunks):
        start = NEW_FRAMES_PER_CHUNK * c
        out.append(dict(chunk=c, frames=[start, start + CHUNK_FRAMES - 1],
                        latent_frames=[start + 4 * i for i in range(LATENTS_PER_CHUNK)],
                        latents=[NEW_LATENTS_PER_CHUNK * c + i for i in range(LATENTS_PER_CHUNK)]))
    return out


class RolloutState(NamedTuple):
    """Everything carried from one chunk to the next (fixed shapes; F = 1 + 8 N latents).

    memory: the LatentMemory. latents: f32[F, h, w, C] the video's latents so far (zeros beyond
    ``count``). visible: VoxelSet [F] each latent's visible voxel set (recorded after its write).
    count: int32[] latents generated so far (1 after initialisation). key: the rollout's PRNG key.
    """

    memory: Any
    latents: jax.Array
    visible: Any
    count: jax.Array
    key: jax.Array


class ChunkOutput(NamedTuple):
    """What the chunk program returns (device arrays)."""

    latents: jax.Array  # f32[9, h, w, C]
    video: jax.Array  # f32[33, H, W, 3] in [-1, 1]
    reference_index: jax.Array  # int32[R_max] latent index of each slot, -1 = padding (right-aligned)
    reference_iou: jax.Array  # f32[R_max]
    preceding_index: jax.Array  # int32[P_max], -1 = absent
    readout_hit: jax.Array  # f32[] fraction of the target cells the memory covered


@dataclasses.dataclass
class RolloutResult:
    """video uint8 [F_pix, H, W, 3]; latents f32[1 + 8 N, h, w, C]; memory; chunks: list of
    per-chunk dicts (pixel frames, latent poses, reference / preceding latents, IoUs, readout
    coverage, memory counters, timings in seconds)."""

    video: np.ndarray
    latents: np.ndarray
    memory: Any
    chunks: list
    state: RolloutState


_STEP_HOOK: list = [None]


def set_step_hook(fn: Callable[[int], None] | None) -> None:
    """Called on the host after every sampler step of the chunk program (progress bars)."""
    _STEP_HOOK[0] = fn


def _on_step(i):
    if _STEP_HOOK[0] is not None:
        _STEP_HOOK[0](int(i))


class _SteppedSampler:
    """Wraps a sampler so that every ``step`` reports to the host hook (static, hashable)."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __getattr__(self, name):
        return getattr(self.sampler, name)

    def step(self, state, x, v):
        out = self.sampler.step(state, x, v)
        jax.debug.callback(_on_step, state.step)
        return out

    def __hash__(self):
        return hash(("stepped", self.sampler))

    def __eq__(self, other):
        return isinstance(other, _SteppedSampler) and other.sampler == self.sampler


def _voxel_sets(mem, K, poses, image_hw, voxel):
    """VoxelSet [V] of the memory points inside each camera's frustum."""
    vis = memory.frustum_visible(mem, K, poses, image_hw, validate=False)
    return memory.frame_voxel_sets(mem, vis, voxel)


def _init_impl(vae_graphdef, vae_state, image, depth, exclude, K, pose, latent_poses, cfg: RolloutConfig, key):
    TRACE_COUNTS["rollout_init"] += 1
    vae = nnx.merge(vae_graphdef, vae_state)
    lat0 = vae.normalize(vae.encode(image[None, None]))[0, 0].astype(jnp.float32)
    h, w, c = lat0.shape
    options = dict(convention=cfg.memory_convention, depth_resize=cfg.depth_resize, policy=cfg.memory_policy,
                   voxel_size=float(cfg.memory_voxel), fuse_mode=cfg.fuse_mode)
    if cfg.memory_kind == "rgb":
        mem = memory.rgb_cache.empty(cfg.capacity(image.shape[0] * image.shape[1]), **options)
        mem = memory.rgb_cache.write(mem, rgb_control.to_uint8(image), depth, K, pose, exclude, validate=False)
    else:
        mem = memory.empty(cfg.capacity(h * w), c, jnp.float32, **options)
        mem = memory.write(mem, lat0, depth, K, pose, exclude=exclude, validate=False)
    F = cfg.num_latents
    latents = jnp.zeros((F, h, w, c), jnp.float32).at[0].set(lat0)
    sets = _voxel_sets(mem, K, latent_poses[:1], cfg.image_hw, cfg.reference_voxel)
    n = mem.capacity
    visible = memory.VoxelSet(
        keys=jnp.zeros((F, n, 3), jnp.int32).at[:1].set(sets.keys),
        count=jnp.zeros((F,), jnp.int32).at[:1].set(sets.count),
    )
    return RolloutState(mem, latents, visible, jnp.ones((), jnp.int32), key)


def _chunk_impl(graphdef, model_state, vae_graphdef, vae_state, sampler, cfg: RolloutConfig, state: RolloutState,
                text, K, cam2world, score):
    """One chunk up to the decoded video (steps 1-4 of the module docstring); ``cam2world``: the
    pixel frames' cameras [33 + 32 (N - 1), 4, 4]."""
    TRACE_COUNTS["rollout_chunk"] += 1
    model = nnx.merge(graphdef, model_state)
    vae = nnx.merge(vae_graphdef, vae_state)
    T, R, P = LATENTS_PER_CHUNK, cfg.max_reference, cfg.max_preceding
    mem, n = state.memory, state.count
    F, h, w, c = state.latents.shape
    start = n - 1  # latent index of the clean frame 0
    tgt = start + jnp.arange(T)
    pre = start - P + jnp.arange(P)
    pre_ok = pre >= 0
    pre_c = jnp.maximum(pre, 0)
    latent_poses = cam2world[::4]
    if cfg.memory_kind == "rgb":  # render the chunk's 33 pixel cameras + each preceding camera, encode
        pixels = jax.lax.dynamic_slice_in_dim(cam2world, 4 * start, CHUNK_FRAMES)
        features, rendered = rgb_control.encode_views(vae, mem, K, pixels, latent_poses[pre_c], cfg.image_hw)
        hit = jnp.mean(rendered[:CHUNK_FRAMES].astype(jnp.float32))
    else:
        out = memory.read_many(mem, K, latent_poses[jnp.concatenate([tgt, pre_c])], cfg.image_hw, (h, w),
                               validate=False)
        features, hit = out.features, jnp.mean(out.hit[:T].astype(jnp.float32))
    keep = jnp.concatenate([jnp.ones((T,), bool), pre_ok])
    keep = keep & cfg.read_memory  # read_memory=False: zero readout, the score half kept
    readout = jnp.where(keep[:, None, None, None], features.astype(jnp.float32), 0.0)
    control = jnp.concatenate([readout, score.astype(jnp.float32)], axis=-1)

    if R > 0:
        target_vis = memory.frustum_visible(mem, K, latent_poses[tgt], cfg.image_hw, validate=False)
        frames = jnp.arange(F)
        eligible = frames < start - P
        refs = memory.retrieve_references(
            mem, state.visible, target_vis, k=R, threshold=_INCLUSIVE(cfg.reference_threshold),
            voxel_size=cfg.reference_voxel, frame_valid=eligible)
        num = jnp.sum(refs.found.astype(jnp.int32))
        rank = jnp.arange(R) - (R - num)  # right-aligned: real references in the last slots
        slot_ok = rank >= 0
        rank_c = jnp.clip(rank, 0, R - 1)
        ref_index = jnp.where(slot_ok, refs.indices[rank_c], -1)
        ref_iou = jnp.where(slot_ok, refs.iou[rank_c], 0.0)
    else:
        ref_index = jnp.zeros((0,), jnp.int32)
        ref_iou = jnp.zeros((0,), jnp.float32)
        slot_ok = jnp.zeros((0,), bool)
    reference = state.latents[jnp.maximum(ref_index, 0)]
    preceding = state.latents[pre_c]
    first = state.latents[start]
    noise = jax.random.normal(jax.random.fold_in(state.key, n), (1, T, h, w, c), jnp.float32)
    x = denoise_chunk_pure(model, sampler, noise, first[None], control[None].astype(noise.dtype), text,
                           reference[None], preceding[None], slot_ok[None], pre_ok[None])[0].astype(jnp.float32)
    video = vae.decode(vae.denormalize(x)[None], tiled=cfg.tiled_decode)[0].astype(jnp.float32)
    return ChunkOutput(x, video, ref_index.astype(jnp.int32), ref_iou, jnp.where(pre_ok, pre, -1).astype(jnp.int32), hit)


def _write_impl(cfg: RolloutConfig, state: RolloutState, x, images, depths, exclude, K, latent_poses):
    """Step 6: write the chunk's new latents (or, for the RGB cache, ``images`` uint8 [9, H, W, 3]:
    every 4th decoded frame) and record their visible voxel sets."""
    TRACE_COUNTS["rollout_write"] += 1
    mem, n = state.memory, state.count
    start = n - 1
    tgt = start + jnp.arange(LATENTS_PER_CHUNK)
    poses = latent_poses[tgt]
    mem = memory.write_frames(mem, x[1:] if images is None else images[1:], depths[1:], K, poses[1:],
                              exclude=None if exclude is None else exclude[1:], validate=False)
    sets = _voxel_sets(mem, K, poses, cfg.image_hw, cfg.reference_voxel)
    # the clean frame's set is (re-)recorded only in chunk 0, where the reference calls it new
    upd = jnp.concatenate([(start == 0)[None], jnp.ones((LATENTS_PER_CHUNK - 1,), bool)])
    old = jax.tree.map(lambda a: a[tgt], state.visible)
    sets = jax.tree.map(lambda new, o: jnp.where(upd.reshape((-1,) + (1,) * (new.ndim - 1)), new, o), sets, old)
    visible = jax.tree.map(lambda a, s: a.at[tgt].set(s), state.visible, sets)
    latents = state.latents.at[tgt].set(x)
    return RolloutState(mem, latents, visible, n + NEW_LATENTS_PER_CHUNK, state.key)


def _write_first_impl(state: RolloutState, x0, depth0, exclude0, K, pose0):
    """The reference re-adds chunk 0's frame 0 before its other latents (rewrite_first_frame);
    ``x0``: the latent, or the first image (uint8) for the RGB cache."""
    TRACE_COUNTS["rollout_write_first"] += 1
    mem = memory.write(state.memory, x0, depth0, K, pose0, exclude=exclude0, validate=False)
    return state._replace(memory=mem)


_init_jit = jax.jit(_init_impl, static_argnums=(0, 8))
_chunk_jit = jax.jit(_chunk_impl, static_argnums=(0, 2, 4, 5))
_write_jit = jax.jit(_write_impl, static_argnums=(0,), donate_argnums=(1,))
_write_first_jit = jax.jit(_write_first_impl)


def memory_bytes(mem) -> dict:
    """Bytes of the memory: ``held`` = valid entries x (point + feature + bookkeeping) bytes,
    ``allocated`` = the same for every slot."""
    per = 3 * 4 + mem.channels * jnp.dtype(mem.dtype).itemsize + 1 + 4 + 4  # points, features, valid, step, weight
    return dict(held=int(mem.count) * per, allocated=mem.capacity * per, per_entry=per)


def _to_uint8(video) -> np.ndarray:
    """:func:`rgb_control.to_uint8` as a host array (the first image written to an RGB cache
    inside ``_init_impl`` and again by ``_write_first_impl`` must be the same pixels)."""
    return np.asarray(rgb_control.to_uint8(jnp.asarray(video)))


def _check_provider_output(a, shape, dtype_kind, name):
    a = np.asarray(a)
    if a.shape != shape:
        raise InputError(f"{name} provider returned shape {a.shape}, expected {shape}")
    if dtype_kind == "f":
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"{name} provider returned dtype {a.dtype}, expected float z-depth")
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name} provider returned non-finite depth (use 0 for unknown)")
        return a.astype(np.float32)
    if a.dtype != np.bool_:
        raise InputError(f"{name} provider returned dtype {a.dtype}, expected bool (True = exclude)")
    return a


class Rollout:
    """A rollout in steps (``init`` then ``chunk`` N times); :func:`rollout` runs all of it.

    Args:
      model: MirageModel; vae: WanVAE (the same latent channels).
      text: ``[1, L, text_dim]`` the prompt's embedding.
      intrinsics: f32[3, 3] (pixels of ``config.image_hw``; shared by all frames).
      cam2world: f32[>= 33 + 32 (N - 1), 4, 4] OpenCV camera-to-world per pixel frame.
      depth: provider ``(frames uint8 [n, H, W, 3], K [n, 3, 3], c2w [n, 4, 4], frame_index int[n])
        -> f32[n, H, W]`` (:mod:`mirage_jax.generate.providers`).
      mask: optional provider with the same arguments -> bool[n, H, W] (True = exclude).
      sampler: FlowUniPC (default: 20 steps, shift 5) or FlowEuler.
      config: :class:`RolloutConfig`.
    """

    def __init__(self, model, vae, text, intrinsics, cam2world, *, depth, mask=None, sampler=None,
                 config: RolloutConfig = RolloutConfig()):
        self.config = cfg = config
        self.sampler = sampler if sampler is not None else FlowUniPC()
        H, W = cfg.image_hw
        s = vae.config.spatial_ratio
        if H % s or W % s:
            raise InputError(f"image size {H}x{W} must be a multiple of the VAE's {s} pixels")
        ph, pw = model.config.dit.patch_size[1:]
        if (H // s) % ph or (W // s) % pw:
            raise InputError(f"latent grid {H // s}x{W // s} must be a multiple of the DiT patch {ph}x{pw}")
        if vae.config.z_dim != model.config.dit.in_channels:
            raise ConfigError(f"the VAE has {vae.config.z_dim} latent channels, the DiT takes {model.config.dit.in_channels}")
        K = np.asarray(intrinsics, np.float32)
        if K.shape != (3, 3):
            raise InputError(f"intrinsics must be [3, 3] (pixels of {H}x{W}), got shape {K.shape}")
        P = np.asarray(cam2world, np.float32)
        need = cfg.num_frames
        if P.ndim != 3 or P.shape[1:] != (4, 4):
            raise InputError(f"cam2world must be [T, 4, 4], got shape {P.shape}")
        if P.shape[0] < need:
            raise InputError(f"the camera path has {P.shape[0]} poses; {cfg.num_chunks} chunks need {need} (33 + 32 (N - 1))")
        text = jnp.asarray(text)
        if text.ndim != 3 or text.shape[0] != 1 or text.shape[2] != model.config.dit.text_dim:
            raise InputError(f"text must be [1, L, {model.config.dit.text_dim}], got shape {tuple(text.shape)}")
        # values checked here: inside the programs the memory cannot check traced cameras
        K = check_intrinsics(K, "intrinsics")
        P = check_pose(P[:need], "cam2world")
        self.K, self.cam2world, self.text = K, P, text
        self.pixel_poses = jnp.asarray(P)  # [33 + 32 (N - 1), 4, 4]
        self.latent_poses = self.pixel_poses[::4]  # [1 + 8 N, 4, 4]: latent g at pixel frame 4 g
        self.depth, self.mask = depth, mask
        self.graphdef, self.model_state = nnx.split(model)
        self.vae_graphdef, self.vae_state = nnx.split(vae)
        self.score = score_latent(vae, LATENTS_PER_CHUNK + cfg.max_preceding, cfg.image_hw)
        self.stepped = _SteppedSampler(self.sampler)
        self.state = None
        self.chunks: list[dict] = []
        self.frames: list[np.ndarray] = []

    def init(self, image, first_depth, first_exclude=None) -> RolloutState:
        """Chunk 0's clean frame and the memory from the first image (uint8 [H, W, 3] or float
        in [-1, 1]), its depth f32[H, W] and an optional exclusion mask bool[H, W]."""
        H, W = self.config.image_hw
        image = np.asarray(image)
        if image.shape != (H, W, 3):
            raise InputError(f"image must be [{H}, {W}, 3], got shape {image.shape}")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 127.5 - 1.0
        elif not np.issubdtype(image.dtype, np.floating) or not np.all(np.abs(image) <= 1.0):
            raise InputError(f"image must be uint8 or float in [-1, 1], got {image.dtype} in "
                             f"[{np.nanmin(image)}, {np.nanmax(image)}]")
        depth = _check_provider_output(first_depth, (H, W), "f", "first frame depth")
        exclude = None if first_exclude is None else _check_provider_output(first_exclude, (H, W), "b", "first frame mask")
        key = jax.random.key(self.config.seed)
        self.state = _init_jit(self.vae_graphdef, self.vae_state, jnp.asarray(image, jnp.float32), jnp.asarray(depth),
                               None if exclude is None else jnp.asarray(exclude), jnp.asarray(self.K),
                               self.latent_poses[0], self.latent_poses, self.config, key)
        self._first = (depth, exclude, _to_uint8(image) if self.config.memory_kind == "rgb" else None)
        return self.state

    def chunk(self) -> dict:
        """Runs the next chunk; returns its record (also appended to ``self.chunks``)."""
        if self.state is None:
            raise InputError("call init(image, first_depth) before chunk()")
        cfg = self.config
        c = len(self.chunks)
        if c >= cfg.num_chunks:
            raise InputError(f"all {cfg.num_chunks} chunks are done")
        plan = chunk_plan(c + 1)[c]
        t0 = time.perf_counter()
        out = _chunk_jit(self.graphdef, self.model_state, self.vae_graphdef, self.vae_state, self.stepped, cfg,
                         self.state, self.text, jnp.asarray(self.K), self.pixel_poses, self.score)
        out = jax.block_until_ready(out)
        t1 = time.perf_counter()
        frames = _to_uint8(out.video)
        idx = np.asarray(plan["latent_frames"])
        sub = frames[::4]
        Ks = np.broadcast_to(self.K, (len(idx), 3, 3))
        poses = self.cam2world[idx]
        H, W = cfg.image_hw
        depths = _check_provider_output(self.depth(sub, Ks, poses, idx), (len(idx), H, W), "f", "depth")
        exclude = None
        if self.mask is not None:
            exclude = _check_provider_output(self.mask(sub, Ks, poses, idx), (len(idx), H, W), "b", "mask")
        t2 = time.perf_counter()
        state = self.state
        before = memory.counters(state.memory) if c == 0 else self.chunks[-1]["memory"]
        if c == 0 and cfg.rewrite_first_frame:
            d0, e0, image0 = self._first
            x0 = out.latents[0] if image0 is None else jnp.asarray(image0)
            state = _write_first_jit(state, x0, jnp.asarray(d0), None if e0 is None else jnp.asarray(e0),
                                     jnp.asarray(self.K), self.latent_poses[0])
        images = jnp.asarray(sub) if cfg.memory_kind == "rgb" else None
        self.state = _write_jit(cfg, state, out.latents, images, jnp.asarray(depths),
                                None if exclude is None else jnp.asarray(exclude), jnp.asarray(self.K), self.latent_poses)
        mem = jax.block_until_ready(self.state.memory)
        t3 = time.perf_counter()
        self.frames.append(frames if c == 0 else frames[1:])
        refs = [int(i) for i in np.asarray(out.reference_index) if i >= 0]
        ious = [float(v) for i, v in zip(np.asarray(out.reference_index), np.asarray(out.reference_iou)) if i >= 0]
        counters = memory.counters(mem)
        rec = dict(
            plan,
            reference_latents=refs,
            reference_frames=[4 * g for g in refs],
            reference_iou=ious,
            preceding_latents=[int(i) for i in np.asarray(out.preceding_index) if i >= 0],
            readout_coverage=float(out.readout_hit),
            memory=counters,
            memory_added=counters["count"] - before["count"],
            memory_bytes=memory_bytes(mem),
            seconds=dict(denoise_decode=t1 - t0, depth=t2 - t1, write=t3 - t2, total=t3 - t0),
            seconds_per_frame=(t3 - t0) / (CHUNK_FRAMES if c == 0 else NEW_FRAMES_PER_CHUNK),
        )
        self.chunks.append(rec)
        return rec

    def result(self) -> RolloutResult:
        n = int(self.state.count)
        return RolloutResult(video=np.concatenate(self.frames, axis=0), latents=np.asarray(self.state.latents[:n]),
                             memory=self.state.memory, chunks=list(self.chunks), state=self.state)


def rollout(model, vae, image, intrinsics, cam2world, text, *, first_depth, depth, first_exclude=None, mask=None,
            sampler=None, config: RolloutConfig = RolloutConfig(), on_chunk: Callable[[dict], None] | None = None
            ) -> RolloutResult:
    """The whole rollout (see the module docstring and :class:`Rollout` for the arguments)."""
    r = Rollout(model, vae, text, intrinsics, cam2world, depth=depth, mask=mask, sampler=sampler, config=config)
    r.init(image, first_depth, first_exclude)
    for _ in range(config.num_chunks):
        rec = r.chunk()
        if on_chunk is not None:
            on_chunk(rec)
    return r.result()


def chunk_memory_analysis(model_config, vae_config, *, runtime=None, vae_runtime=None, image_hw=(704, 1280),
                          text_len: int = 512, sampler=None, config: RolloutConfig | None = None) -> dict:
    """Peak memory of the compiled chunk program (steps 1-4) from XLA's memory analysis, with
    abstract inputs only (nothing is allocated; works on CPU for the 5B config).

    Returns a dict of bytes: arguments, outputs, temporaries, generated code, aliased, and
    ``peak`` = arguments + outputs + temporaries - aliased (the analysis' live-buffer total),
    plus the parameter bytes of the model and the VAE.

    Measured on CPU for the 5B model + its 15-block branch at 1280 x 704 (scanned layers, chunked
    attention, tiled decode, 5 chunks; experiments/bench_rollout.py --peak-5b): bf16 51.3 GiB
    (arguments 15.3, temporaries 35.6, of which ~28 are the CPU backend's f32 copies of the bf16
    weights), f32 38.2 GiB (arguments 30.5, temporaries 7.3); the "xla" attention (scores
    materialised) needs 95.2 GiB in bf16.
    """
    from mirage_jax.models.mirage import MirageModel
    from mirage_jax.models.wan.vae import WanVAE

    cfg = config or RolloutConfig(num_chunks=5, image_hw=image_hw)
    sampler = sampler or FlowUniPC()
    model = nnx.eval_shape(lambda: MirageModel(model_config, runtime, rngs=nnx.Rngs(0)))
    vae = nnx.eval_shape(lambda: WanVAE(vae_config, vae_runtime, rngs=nnx.Rngs(0)))
    graphdef, mstate = nnx.split(model)
    vgraphdef, vstate = nnx.split(vae)
    H, W = cfg.image_hw
    s = vae_config.spatial_ratio
    h, w, c = H // s, W // s, vae_config.z_dim
    sds = jax.ShapeDtypeStruct
    state = jax.eval_shape(
        functools.partial(_init_impl, vgraphdef, cfg=cfg),
        vstate, sds((H, W, 3), jnp.float32), sds((H, W), jnp.float32), None, sds((3, 3), jnp.float32),
        sds((4, 4), jnp.float32), sds((cfg.num_latents, 4, 4), jnp.float32), key=jax.random.key(0))
    args = (state, sds((1, text_len, model_config.dit.text_dim), runtime.dtype if runtime else jnp.float32),
            sds((3, 3), jnp.float32), sds((cfg.num_frames, 4, 4), jnp.float32),
            sds((LATENTS_PER_CHUNK + cfg.max_preceding, h, w, c), jnp.float32))
    compiled = _chunk_jit.lower(graphdef, mstate, vgraphdef, vstate, sampler, cfg, *args).compile()
    ma = compiled.memory_analysis()
    nbytes = lambda tree: sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    out = dict(
        arguments=int(ma.argument_size_in_bytes),
        outputs=int(ma.output_size_in_bytes),
        temporaries=int(ma.temp_size_in_bytes),
        generated_code=int(ma.generated_code_size_in_bytes),
        aliased=int(ma.alias_size_in_bytes),
        model_parameters=nbytes(mstate),
        vae_parameters=nbytes(vstate),
        rollout_state=nbytes(state._replace(key=None)),
    )
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out
