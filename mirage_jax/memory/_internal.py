"""Memory internals shared by the memory modules: the pytree, its options, its errors and the
host-side validators (core, io, retrieval, references and rgb_cache import them from here).

The public names (``LatentMemory``, ``MemoryConfig``, ``LatentMemoryError``, ...) are re-exported
by :mod:`mirage_jax.memory.core` and :mod:`mirage_jax.memory`; import them from there.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mirage_jax.errors import FileFormatError, InputError
from mirage_jax.geometry.cameras import CONVENTIONS, CameraError, check_intrinsics, check_pose
from mirage_jax.memory.projection import DEPTH_RESIZES

POLICIES = ("ring", "fuse")
FUSE_MODES = ("average", "replace")
COUNTERS = ("written", "rejected", "inserted", "fused", "dropped", "evicted")

# Number of times each jitted implementation has been traced (tests use it to prove that calls
# with the same shapes and options do not retrace).
TRACE_COUNTS: collections.Counter = collections.Counter()


class LatentMemoryError(InputError):
    """Bad input to the memory: wrong shape / dtype, non-finite values, unknown option, bad file."""


class MemoryFileError(LatentMemoryError, FileFormatError):
    """A memory file that cannot be loaded (missing, corrupt, inconsistent); names the file."""


class MemoryOverflowError(LatentMemoryError):
    """Raised by ``strict=True`` writes that would evict or drop points."""


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """Options of a memory (hashable; static under jit). See the module docstring.

    convention: "reference" | "centred" intrinsics scaling to the latent grid (write and read).
    depth_resize: "bilinear" (reference) | "edge_safe" (validity-weighted, no half-depth points).
    policy: "ring" | "fuse" capacity policy.
    voxel_size: fusion voxel edge (world units), > 0; used by policy="fuse".
    fuse_mode: "average" | "replace".
    strict: raise MemoryOverflowError instead of evicting or dropping (host-side check).
    """

    convention: str = "reference"
    depth_resize: str = "bilinear"
    policy: str = "ring"
    voxel_size: float = 0.05
    fuse_mode: str = "average"
    strict: bool = False

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise LatentMemoryError(f"convention must be one of {CONVENTIONS}, got {self.convention!r}")
        if self.depth_resize not in DEPTH_RESIZES:
            raise LatentMemoryError(
                f"depth_resize must be one of {DEPTH_RESIZES}, got {self.depth_resize!r}"
            )
        if self.policy not in POLICIES:
            raise LatentMemoryError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.fuse_mode not in FUSE_MODES:
            raise LatentMemoryError(f"fuse_mode must be one of {FUSE_MODES}, got {self.fuse_mode!r}")
        if isinstance(self.voxel_size, bool) or not isinstance(self.voxel_size, (int, float)):
            raise LatentMemoryError(f"voxel_size must be a Python float, got {type(self.voxel_size).__name__}")
        if not (math.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise LatentMemoryError(f"voxel_size must be finite and > 0, got {self.voxel_size}")
        if not isinstance(self.strict, bool):
            raise LatentMemoryError(f"strict must be a bool, got {self.strict!r}")
        object.__setattr__(self, "voxel_size", float(self.voxel_size))

    @staticmethod
    def option_names() -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(MemoryConfig))

    def with_options(self, **options) -> "MemoryConfig":
        """Returns a copy with ``options`` overridden; unknown names raise LatentMemoryError."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise LatentMemoryError(
                f"unknown memory option(s) {unknown}; known options: {list(self.option_names())}"
            )
        options = {k: v for k, v in options.items() if v is not None}
        return dataclasses.replace(self, **options) if options else self


@struct.dataclass
class LatentMemory:
    """Fixed-capacity latent spatial memory (a pytree; ``config`` is static metadata).

    Per slot (N = capacity):
      points: f32[N, 3] world positions (OpenCV world of the poses written).
      features: [N, C] normalised latents (dtype chosen at ``empty``; float32 by default).
      valid: bool[N] slot holds an entry.
      step: int32[N] frame index of the entry's last write (-1: never written).
      weight: f32[N] number of observations fused into the entry (1 for ring writes, 0 if empty).
    Scalars (int32[]):
      cursor: next ring slot; count: valid entries; frames: frames written so far;
      written, rejected, inserted, fused, dropped, evicted: see the module docstring.
    """

    points: jax.Array
    features: jax.Array
    valid: jax.Array
    step: jax.Array
    weight: jax.Array
    cursor: jax.Array
    count: jax.Array
    frames: jax.Array
    written: jax.Array
    rejected: jax.Array
    inserted: jax.Array
    fused: jax.Array
    dropped: jax.Array
    evicted: jax.Array
    config: MemoryConfig = struct.field(pytree_node=False, default=MemoryConfig())

    @property
    def capacity(self) -> int:
        return self.points.shape[-2]

    @property
    def channels(self) -> int:
        return self.features.shape[-1]

    @property
    def dtype(self):
        return self.features.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (all slots, used or not)."""
        return int(sum(np.dtype(x.dtype).itemsize * math.prod(x.shape) for x in jax.tree.leaves(self)))


def is_traced(*xs) -> bool:
    """True if any argument is an abstract tracer (values unknown: inside jit / vmap / grad)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


def shape_dtype(x, name):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    return tuple(x.shape), jnp.dtype(x.dtype)


def check_memory(mem, name="mem"):
    if not isinstance(mem, LatentMemory):
        raise LatentMemoryError(f"{name}: expected a LatentMemory, got {type(mem).__name__}")
    # A stacked batch of memories (leading axis on every leaf) is not one memory: the kernels
    # would broadcast the per-memory scalars against the slots (an obscure error, or a wrong
    # result when the sizes happen to line up). Under jax.vmap the leaves are per-memory.
    if np.ndim(mem.points) != 2 or np.ndim(mem.cursor) != 0:
        raise LatentMemoryError(
            f"{name}: expected a single memory (points [N, 3]), got points of shape "
            f"{list(np.shape(mem.points))}; for a batch of memories map over it with jax.vmap"
        )


DEFAULT_CONFIG = MemoryConfig()


def without_config(mem: LatentMemory) -> LatentMemory:
    """The same arrays with the default (static) config: functions that do not depend on the
    options then share one compilation across memories with different options."""
    return mem if mem.config == DEFAULT_CONFIG else mem.replace(config=DEFAULT_CONFIG)


def check_camera(K, c2w, lead: tuple, validate: bool, k_name="intrinsics", p_name="cam2world", image_hw=None):
    """Checks K [*lead, 3, 3] (or [3, 3]) and c2w [*lead, 4, 4]; validates values when concrete.

    With ``image_hw`` = (H, W), the size of the image the intrinsics must belong to, concrete K
    must also pass :func:`check_principal_point`. Traced values (inside the caller's jit / vmap
    / scan) are never checked: shapes and dtypes only.
    """
    k_shape, k_dtype = shape_dtype(K, k_name)
    p_shape, p_dtype = shape_dtype(c2w, p_name)
    if k_shape not in ((3, 3), lead + (3, 3)):
        want = "[3, 3]" if not lead else f"[3, 3] or {list(lead) + [3, 3]}"
        raise CameraError(f"{k_name}: expected shape {want}, got {list(k_shape)}")
    if p_shape not in (lead + (4, 4),):
        raise CameraError(f"{p_name}: expected shape {list(lead) + [4, 4]}, got {list(p_shape)}")
    for nm, dt in ((k_name, k_dtype), (p_name, p_dtype)):
        if not jnp.issubdtype(dt, jnp.floating):
            raise CameraError(f"{nm}: expected a float dtype, got {dt}")
    if validate and not is_traced(K):
        K = check_intrinsics(np.asarray(K), k_name)
        if image_hw is not None:
            check_principal_point(K, image_hw, k_name)
    if validate and not is_traced(c2w):
        c2w = check_pose(np.asarray(c2w), p_name)
    return K, c2w


def check_principal_point(K: np.ndarray, image_hw, name: str) -> None:
    """Intrinsics must belong to the image they are used with: the principal point lies within
    one image size around the image, cx in [-W, 2W] and cy in [-H, 2H] (pixels of (H, W)).

    This catches intrinsics of another resolution used with a smaller image (K of 1280 x 704
    with a depth map of 80 x 44 puts cx 8x outside), which would store misplaced points or read
    no hits without a word. K of a *smaller* image used with a larger one cannot be told apart
    from an off-centre camera and is not caught.
    """
    H, W = image_hw
    cx, cy = np.asarray(K)[..., 0, 2], np.asarray(K)[..., 1, 2]
    bad = (cx < -W) | (cx > 2 * W) | (cy < -H) | (cy > 2 * H)
    if np.any(bad):
        i = int(np.flatnonzero(np.ravel(bad))[0])
        raise CameraError(
            f"{name}: principal point (cx, cy) = ({np.ravel(cx)[i]:.6g}, {np.ravel(cy)[i]:.6g}) at index {i} "
            f"is far outside the {H} x {W} image it must belong to (accepted: cx in [-W, 2W], "
            f"cy in [-H, 2H]); were these intrinsics made for another resolution?"
        )


def check_finite(x, name):
    a = np.asarray(x)
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise LatentMemoryError(
            f"{name}: {int(bad.sum())} non-finite value(s) (first at index {first}, value "
            f"{a[first]}); mark unknown depth with 0 (or exclude=True) before writing"
        )
