"""Training-sample construction inside the jitted step (spec sections 4 and 10.5), pure JAX.

Each step turns a batch of whole latent clips (the latent clip record of the preprocessing,
``F`` latent frames each, geometry latent-aligned) into the model's fixed-shape inputs. Every
random choice comes from the step's key, so it changes every step and is reproducible:

* ``j`` (the target start, latent frame ``t0 / 4``) uniform in ``[min(P_max, F - T), F - T]``
  (the reference's ``t0 >= 8`` pixel frames, i.e. room for two preceding latents, when the clip
  allows it); target = latents ``j .. j + T - 1``, frame ``j`` is the clean frame;
* ``P`` uniform in ``0 .. min(P_max, j)``: preceding latents ``j - P .. j - 1``;
* ``R`` uniform in ``0 .. R_max``, capped by the number of eligible candidates: the ``R``
  frames outside ``[j - P, j + T)`` with the highest voxel IoU against the target views,
  above ``reference_threshold`` (see below);
* the memory is built from latent frame ``j`` alone (its depth, exclusion mask, intrinsics and
  pose; :func:`mirage_jax.memory.write`) and read at the ``T`` target and ``P`` preceding poses
  (:func:`mirage_jax.memory.read_many`); with probability ``readout_dropout`` a sample's whole
  readout is zeroed (the model must then rely on the clean frame and the references);
* with ``control_source = "rgb"`` (the paper's explicit RGB-cache variant, issue 10 section 4)
  the readout is instead the record's precomputed ``rgb_control[j - j_lo]``: frame ``4 j``'s RGB
  point cloud rendered at the target's pixel cameras and at each preceding latent's camera and
  VAE-encoded (:class:`mirage_jax.data.latents.RGBControlEncoder`); the same keep mask and
  readout dropout apply, and ``readout_hit`` still reports frame ``j``'s latent-grid coverage;
* with probability ``text_drop`` the text is replaced by the empty-prompt embedding.

Fixed layout (``frame_mask`` marks the real frames; padding frames repeat frame ``j`` and are
masked out as attention keys by the model)::

    [ reference slots (R_max) | target (T) | preceding slots (P_max) ]
      padding..., refs (IoU desc)             preceding j-P..j-1, padding...

References are right-aligned so that the ``R`` real ones get the temporal RoPE positions
``-R .. -1`` of the reference (positions are per slot, ``-R_max .. -1``); preceding frames are
left-aligned so the ``P`` real ones sit at ``T .. T + P - 1`` (spec 10.2).

Reference choice: each candidate frame's cells are back-projected with its own depth (valid =
finite, > 0, not excluded) and reduced to an exact voxel set (``voxel_size``, default 0.1,
:func:`mirage_jax.memory.voxel_set`); the target set is the union of the ``T`` target frames'
cells. Training has the ground-truth depth of every frame, so this is the voxel IoU of what the
frames see (at inference, :func:`mirage_jax.memory.retrieve_references` compares frustum-visible
memory points instead). The cost is one sort of ``(T + 1) h w`` keys per candidate frame.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mirage_jax import memory
from mirage_jax.errors import ConfigError, InputError, check_hw
from mirage_jax.memory.projection import cells_to_points, resize_depth, resize_mask_nearest
from mirage_jax.models.mirage.rgb_control import CONTROL_SOURCES

__all__ = ["CLIP_KEYS", "CONTROL_SOURCES", "RGB_CONTROL_KEY", "SampleConfig", "ModelInputs", "build_inputs",
           "check_clip_batch", "target_starts"]

# The arrays of a latent clip record the step uses (strings stay on the host).
CLIP_KEYS = ("latents", "depth", "exclude", "intrinsics", "cam2world", "text")
# control_source "rgb" also reads this key: f32|bf16 [J, T + P_max, h, w, C] (see target_starts).
RGB_CONTROL_KEY = "rgb_control"


def target_starts(num_frames: int, num_target: int, max_preceding: int) -> range:
    """The target starts ``j`` a sample draws from a clip of ``num_frames`` latents:
    ``[min(P_max, F - T), F - T]`` (room for ``P_max`` preceding latents when the clip allows it).
    Entry ``j - start`` of a record's ``rgb_control`` belongs to start ``j``."""
    lo = min(max_preceding, num_frames - num_target)
    return range(lo, num_frames - num_target + 1)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How a training sample is built from a latent clip (hashable: static under jit).

    Attributes:
      num_target: T, target latent frames (9 = 33 pixel frames in the reference).
      max_reference: R_max, reference slots (4); the count is drawn in 0..R_max per sample.
      max_preceding: P_max, preceding slots (2); the count is drawn in 0..min(P_max, j).
      image_hw: (H, W) of the depth maps / intrinsics (pixels).
      shift: flow time shift s (5).
      text_drop: probability of the empty prompt per sample (0.1).
      readout_dropout: probability of zeroing a sample's whole memory readout (0 = never).
      reference_threshold: a candidate needs voxel IoU > this with the target views (0.04).
      voxel_size: voxel edge for the IoU (0.1, world units).
      memory_convention, depth_resize: memory options (see :class:`mirage_jax.memory.MemoryConfig`).
      control_source: "latent" (the latent memory's readout, Mirage) or "rgb" (the record's
        precomputed ``rgb_control``: the explicit RGB point-cloud cache variant).
    """

    num_target: int = 9
    max_reference: int = 4
    max_preceding: int = 2
    image_hw: tuple[int, int] = (704, 1280)
    shift: float = 5.0
    text_drop: float = 0.1
    readout_dropout: float = 0.0
    reference_threshold: float = 0.04
    voxel_size: float = 0.1
    memory_convention: str = "reference"
    depth_resize: str = "bilinear"
    control_source: str = "latent"

    def __post_init__(self):
        object.__setattr__(self, "image_hw", check_hw(tuple(self.image_hw), "sample.image_hw", ConfigError))
        if self.control_source not in CONTROL_SOURCES:
            raise ConfigError(f"sample.control_source must be one of {CONTROL_SOURCES}, got {self.control_source!r}")
        for name, lo in (("num_target", 2), ("max_reference", 0), ("max_preceding", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"sample.{name} must be an int >= {lo}, got {v!r}")
        for name in ("text_drop", "readout_dropout"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"sample.{name} must be a probability in [0, 1], got {v!r}")
        if not float(self.shift) > 0:
            raise ConfigError(f"sample.shift must be > 0, got {self.shift!r}")
        if not float(self.voxel_size) > 0:
            raise ConfigError(f"sample.voxel_size must be > 0, got {self.voxel_size!r}")
        # Fail here (not inside the jitted step) on unknown memory options.
        memory.MemoryConfig(convention=self.memory_convention, depth_resize=self.depth_resize)

    @property
    def num_frames(self) -> int:
        """R_max + T + P_max: frames of the model input."""
        return self.max_reference + self.num_target + self.max_preceding

    @property
    def num_control(self) -> int:
        """T + P_max: frames of the control input (and of the score latent)."""
        return self.num_target + self.max_preceding

    @property
    def clip_keys(self) -> tuple[str, ...]:
        """The record keys a step reads: CLIP_KEYS, plus ``rgb_control`` for control_source "rgb"."""
        return CLIP_KEYS + ((RGB_CONTROL_KEY,) if self.control_source == "rgb" else ())


class ModelInputs(NamedTuple):
    """One batch of model inputs before noising (fixed shapes).

    latents: f32[B, R_max + T + P_max, h, w, C] clean latents in the model's frame order.
    frame_mask: bool[B, R_max + T + P_max] real frames.
    control: f32[B, T + P_max, h, w, 2C] readout || score latent.
    text: [B, L, D] text embeddings (the empty prompt where dropped).
    start, num_reference, num_preceding: int32[B] j, R, P.
    reference_index: int32[B, R_max] clip frame of each reference slot (-1 = padding).
    readout_hit: f32[B] fraction of target cells the memory covers (a metric).
    """

    latents: jax.Array
    frame_mask: jax.Array
    control: jax.Array
    text: jax.Array
    start: jax.Array
    num_reference: jax.Array
    num_preceding: jax.Array
    reference_index: jax.Array
    readout_hit: jax.Array


def check_clip_batch(batch, cfg: SampleConfig, score, empty_text) -> None:
    """Shape / dtype checks of a batch of latent clips (host side, before jit), naming the key."""
    missing = [k for k in CLIP_KEYS if k not in batch]
    if missing:
        raise InputError(f"training batch lacks keys {missing}; it has {sorted(batch)} (latent clip record)")
    if cfg.control_source == "rgb" and RGB_CONTROL_KEY not in batch:
        raise InputError(
            f"sample.control_source 'rgb' reads the record key {RGB_CONTROL_KEY!r}, which this batch lacks (it has "
            f"{sorted(batch)}): write the dataset with preprocess(..., rgb_control=RGBControlEncoder(...)) "
            "(experiments/train_rgb_ablation.py)"
        )
    lat = batch["latents"]
    if lat.ndim != 5:
        raise InputError(f"latents: expected [B, F, h, w, C], got shape {tuple(lat.shape)}")
    B, F, h, w, C = lat.shape
    H, W = cfg.image_hw
    want = {
        "depth": (B, F, H, W),
        "exclude": (B, F, H, W),
        "intrinsics": (B, F, 3, 3),
        "cam2world": (B, F, 4, 4),
    }
    for k, shape in want.items():
        if tuple(batch[k].shape) != shape:
            raise InputError(f"{k}: expected shape {list(shape)} (image_hw {cfg.image_hw}), got {list(batch[k].shape)}")
    if batch["exclude"].dtype != jnp.bool_:
        raise InputError(f"exclude: expected dtype bool, got {batch['exclude'].dtype}")
    if H % h or W % w:
        raise InputError(f"image_hw {cfg.image_hw} is not an integer multiple of the latent grid {(h, w)}")
    if F < cfg.num_target:
        raise InputError(f"clips have {F} latent frames; sample.num_target = {cfg.num_target} needs at least that many")
    text = batch["text"]
    if text.ndim != 3 or text.shape[0] != B:
        raise InputError(f"text: expected [B={B}, L, D], got shape {tuple(text.shape)}")
    if tuple(empty_text.shape) != tuple(text.shape[1:]):
        raise InputError(f"empty_text: expected shape {list(text.shape[1:])} like one text, got {list(empty_text.shape)}")
    if tuple(score.shape) != (cfg.num_control, h, w, C):
        raise InputError(
            f"score latent: expected [T + P_max = {cfg.num_control}, {h}, {w}, {C}], got {list(score.shape)}"
        )
    if cfg.control_source == "rgb":
        J = len(target_starts(F, cfg.num_target, cfg.max_preceding))
        want_rgb = (B, J, cfg.num_control, h, w, C)
        if tuple(batch[RGB_CONTROL_KEY].shape) != want_rgb:
            raise InputError(
                f"{RGB_CONTROL_KEY}: expected [B, J = {J} target starts, T + P_max = {cfg.num_control}, h, w, C] = "
                f"{list(want_rgb)}, got {list(batch[RGB_CONTROL_KEY].shape)}"
            )


def _frame_voxel_sets(depth, exclude, intrinsics, cam2world, grid_hw, cfg: SampleConfig):
    """Voxel sets of each frame's valid cells: [F, H, W] inputs -> VoxelSet [F] of h w keys."""
    d = resize_depth(depth, grid_hw, cfg.depth_resize, exclude)
    ok = jnp.isfinite(d) & (d > 0) & ~resize_mask_nearest(exclude, grid_hw)
    pts = cells_to_points(jnp.where(ok, d, 1.0), intrinsics, cam2world, cfg.image_hw, cfg.memory_convention)
    F = d.shape[0]
    return pts.reshape(F, -1, 3), ok.reshape(F, -1)


def _choose_references(key, pts, ok, j, P, cfg: SampleConfig):
    """(index int32[R_max] right-aligned, -1 = padding; R int32[]) by voxel IoU with the targets."""
    F, n, _ = pts.shape
    T, R_max = cfg.num_target, cfg.max_reference
    frames = jnp.arange(F)
    in_target = (frames >= j) & (frames < j + T)
    tgt_pts = jnp.take(pts, j + jnp.arange(T), axis=0).reshape(T * n, 3)
    tgt_ok = jnp.take(ok, j + jnp.arange(T), axis=0).reshape(T * n)
    target = memory.voxel_set(tgt_pts, tgt_ok, cfg.voxel_size)
    sets = jax.vmap(lambda p, m: memory.voxel_set(p, m, cfg.voxel_size))(pts, ok)
    iou = memory.voxel_set_iou(sets, target)
    eligible = ~in_target & ~((frames >= j - P) & (frames < j)) & (iou > cfg.reference_threshold)
    score = jnp.where(eligible, iou, -1.0)
    k = min(R_max, F)
    top, idx = jax.lax.top_k(score, k)
    found = top >= 0
    R = jnp.minimum(jax.random.randint(key, (), 0, R_max + 1), jnp.sum(found.astype(jnp.int32)))
    # Top-R in IoU order, right-aligned in the R_max slots: slot s holds rank s - (R_max - R).
    rank = jnp.arange(R_max) - (R_max - R)
    idx = jnp.concatenate([idx, jnp.zeros((R_max - k,), idx.dtype)])
    index = jnp.where(rank >= 0, idx[jnp.clip(rank, 0, R_max - 1)], -1)
    return index.astype(jnp.int32), R.astype(jnp.int32)


def _one_sample(key, clip, score, empty_text, cfg: SampleConfig):
    lat = clip["latents"].astype(jnp.float32)
    F, h, w, C = lat.shape
    T, R_max, P_max = cfg.num_target, cfg.max_reference, cfg.max_preceding
    k_j, k_p, k_r, k_drop, k_text = jax.random.split(key, 5)
    starts = target_starts(F, T, P_max)
    j = jax.random.randint(k_j, (), starts.start, starts.stop)
    P = jax.random.randint(k_p, (), 0, jnp.minimum(P_max, j) + 1)
    depth = clip["depth"].astype(jnp.float32)
    K, c2w, exclude = clip["intrinsics"].astype(jnp.float32), clip["cam2world"].astype(jnp.float32), clip["exclude"]

    if R_max > 0:
        pts, ok = _frame_voxel_sets(depth, exclude, K, c2w, (h, w), cfg)
        ref_index, R = _choose_references(k_r, pts, ok, j, P, cfg)
    else:
        ref_index, R = jnp.zeros((0,), jnp.int32), jnp.zeros((), jnp.int32)
    pre_slot = jnp.arange(P_max)
    pre_valid = pre_slot < P
    pre_index = jnp.where(pre_valid, j - P + pre_slot, j)
    tgt_index = j + jnp.arange(T)
    ref_valid = ref_index >= 0
    frames = jnp.concatenate([jnp.where(ref_valid, ref_index, j), tgt_index, pre_index])
    mask = jnp.concatenate([ref_valid, jnp.ones((T,), bool), pre_valid])
    latents = jnp.where(mask[:, None, None, None], jnp.take(lat, frames, axis=0), 0.0)

    mem = memory.empty(h * w, C, jnp.float32, convention=cfg.memory_convention, depth_resize=cfg.depth_resize)
    mem = memory.write(mem, lat[j], depth[j], K[j], c2w[j], exclude=exclude[j])
    views = jnp.concatenate([tgt_index, pre_index])
    out = memory.read_many(mem, jnp.take(K, views, axis=0), jnp.take(c2w, views, axis=0), cfg.image_hw, (h, w))
    features = out.features
    if cfg.control_source == "rgb":
        # stored: T target latents, then the latents j - P_max .. j - 1; slot s < P holds j - P + s
        stored = jnp.take(clip[RGB_CONTROL_KEY], j - starts.start, axis=0)
        pre_src = T + jnp.clip(P_max - P + pre_slot, 0, max(P_max - 1, 0))
        features = jnp.take(stored, jnp.concatenate([jnp.arange(T), pre_src]), axis=0)
    keep = jnp.concatenate([jnp.ones((T,), bool), pre_valid])
    if cfg.readout_dropout > 0:
        keep = keep & ~jax.random.bernoulli(k_drop, cfg.readout_dropout)
    readout = jnp.where(keep[:, None, None, None], features.astype(jnp.float32), 0.0)
    control = jnp.concatenate([readout, jnp.asarray(score, jnp.float32)], axis=-1)
    text = clip["text"]
    if cfg.text_drop > 0:
        text = jnp.where(jax.random.bernoulli(k_text, cfg.text_drop), empty_text.astype(text.dtype), text)
    hit = jnp.mean(out.hit[:T].astype(jnp.float32))
    return ModelInputs(latents, mask, control, text, j.astype(jnp.int32), R, P.astype(jnp.int32), ref_index, hit)


def build_inputs(key: jax.Array, batch, score, empty_text, cfg: SampleConfig) -> ModelInputs:
    """Model inputs for a batch of latent clips (call inside jit; vmapped over the batch).

    Args:
      key: the step's PRNG key (one sub-key per sample).
      batch: dict with ``cfg.clip_keys``: latents [B, F, h, w, C], depth [B, F, H, W], exclude
        bool[B, F, H, W], intrinsics [B, F, 3, 3], cam2world [B, F, 4, 4], text [B, L, D]
        (and rgb_control [B, J, T + P_max, h, w, C] for control_source "rgb").
      score: [T + P_max, h, w, C] the score latent (constant; :func:`score_latent`).
      empty_text: [L, D] the empty prompt's embedding.
      cfg: the :class:`SampleConfig` (static).
    """
    B = batch["latents"].shape[0]
    clip = {k: batch[k] for k in cfg.clip_keys}
    keys = jax.random.split(key, B)
    return jax.vmap(lambda k, c: _one_sample(k, c, score, empty_text, cfg))(keys, clip)
