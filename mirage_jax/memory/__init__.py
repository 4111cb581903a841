"""The functional latent spatial memory (spec sections 1-2), the RGB cache baseline and retrieval.

Pure functions on a fixed-capacity pytree, channels-last arrays in and out::

    from mirage_jax import memory
    mem = memory.empty(capacity=1_000_000, channels=48)            # options: policy="fuse", ...
    mem = memory.write(mem, latent, depth, K, c2w, exclude=mask)    # latent [h,w,C], depth [H,W]
    out = memory.read(mem, K, c2w, image_hw=(H, W), latent_hw=(h, w))
    out.features, out.hit, out.depth                                # [h,w,C], [h,w], [h,w]

Modules: :mod:`.core` (pytree, write, capacity policies, counters), :mod:`.projection` (depth
resize, back-projection, projection, deterministic z-buffer), :mod:`.retrieval` (read,
read_many, frustum_visible), :mod:`.references` (voxel IoU, reference-frame retrieval),
:mod:`.io` (save / load / export_ply), :mod:`.rgb_cache` (the RGB point-cloud baseline),
:mod:`.voxels` (exact voxel keys and order-independent primitives).
"""

from mirage_jax.memory import rgb_cache  # noqa: F401
from mirage_jax.memory.core import (  # noqa: F401
    COUNTERS,
    FUSE_MODES,
    POLICIES,
    LatentMemory,
    LatentMemoryError,
    MemoryConfig,
    MemoryFileError,
    MemoryOverflowError,
    counters,
    empty,
    size,
    write,
    write_frames,
)
from mirage_jax.memory.io import export_ply, load, save  # noqa: F401
from mirage_jax.memory.projection import DEPTH_RESIZES, resize_depth, resize_mask_nearest  # noqa: F401
from mirage_jax.memory.references import (  # noqa: F401
    References,
    VoxelSet,
    frame_voxel_sets,
    retrieve_references,
    voxel_iou,
    voxel_set,
    voxel_set_iou,
)
from mirage_jax.memory.retrieval import Readout, frustum_visible, read, read_many  # noqa: F401
