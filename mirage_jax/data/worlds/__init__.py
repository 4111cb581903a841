"""Procedural 3D worlds rendered by a JAX ray caster, with exact depth, poses and masks.

Everything needed to train and check 3D consistency against exact ground truth on any machine,
without downloading a dataset:

* ``sample_scene(seed, kind="indoor" | "outdoor", **options) -> Scene``: rooms (floor, ceiling,
  walls, posters of CC0 photos, furniture-like boxes, spheres, cylinders, a point light) and
  outdoor scenes (ground plane, trees, houses, rocks, ..., a sun, a sky at infinity), with
  procedural textures (value noise, wood, brick, tiles, checker, stripes) and moving objects.
* ``render(scene, K, c2w, image_hw, t=0.0, shadows=False)`` and the batched
  ``render_frames(scene, K[T], c2w[T], image_hw, times[T])``: rgb, exact z-depth (0 = sky /
  invalid, as the memory's "d > 0 is valid"), dynamic and sky masks, normals, instance ids.
* ``random_trajectory(scene, seed, num_frames, kind="walk" | "loop" | <preset>)``: camera paths
  that never enter geometry; loops end exactly at the start pose.
* ``make_clip(seed, image_hw, num_frames, kind, ...)``: all of the above as one training clip.
* ``caption(scene)``: a text description of the scene.

Conventions: OpenCV cameras (x right, y down, z forward), intrinsics in pixels with integer
pixel centres, camera-to-world poses, and a **y-down world** (floor / ground at y = 0, things
above it at y < 0) so ``mirage_jax.geometry.cameras.look_at``'s default up gives level cameras.
Metres and seconds. Scenes are pytrees of fixed-size arrays (padded primitive tables): rendering
compiles once per (image size, capacities, atlas shape, shadows), and ``jax.vmap`` maps over
frames and over scenes stacked with ``stack_scenes``.
"""

from mirage_jax.data.worlds.captions import caption, scene_objects
from mirage_jax.data.worlds.clip import make_clip, scene_id
from mirage_jax.data.worlds.paths import TRAJECTORY_KINDS, random_trajectory
from mirage_jax.data.worlds.render import (
    OUTPUT_KEYS,
    camera_rays,
    intrinsics_from_fov,
    pixel_grid,
    render,
    render_frames,
    render_pixels,
)
from mirage_jax.data.worlds.scene import (
    CLASSES,
    DEFAULT_CAPACITY,
    GROUPS,
    KINDS,
    Material,
    Primitives,
    Scene,
    SceneBuilder,
    is_dynamic,
    primitive_poses,
    sample_scene,
    scene_sdf,
    stack_scenes,
)
from mirage_jax.data.worlds.textures import IMAGE_NAMES, PATTERNS

__all__ = [
    "CLASSES",
    "DEFAULT_CAPACITY",
    "GROUPS",
    "IMAGE_NAMES",
    "KINDS",
    "Material",
    "OUTPUT_KEYS",
    "PATTERNS",
    "Primitives",
    "Scene",
    "SceneBuilder",
    "TRAJECTORY_KINDS",
    "camera_rays",
    "caption",
    "intrinsics_from_fov",
    "is_dynamic",
    "make_clip",
    "pixel_grid",
    "primitive_poses",
    "random_trajectory",
    "render",
    "render_frames",
    "render_pixels",
    "sample_scene",
    "scene_id",
    "scene_objects",
    "scene_sdf",
    "stack_scenes",
]
