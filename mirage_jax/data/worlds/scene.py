"""Scenes as pytrees of fixed-size arrays, their motion, their signed distance, and the sampler.

World convention
----------------
The world is **y-down** like OpenCV camera axes: gravity points along +y, the floor / ground is the
plane y = 0 and everything above it has y < 0 (a ceiling 3 m high is at y = -3). x and z span the
horizontal plane. ``mirage_jax.geometry.cameras.look_at(eye, target)`` with its default
``up=(0, -1, 0)`` therefore gives level cameras. Units are metres, times are seconds.

Layout
------
A ``Scene`` holds one ``Primitives`` table per primitive type (``GROUPS``), each padded to a fixed
capacity with a ``mask``; every field is an array, so a Scene is a pytree that ``jax.jit`` compiles
once per capacity / atlas shape, that ``jax.vmap`` maps over (stack scenes with ``stack_scenes``),
and that host code (captions, trajectories) reads with NumPy.

Every primitive has a local frame ``rotation`` f32[3, 3] (columns = local x, y, z axes in world)
and ``center`` f32[3]; ``size`` f32[3] depends on the type:

  planes     one-sided planes through ``center``; local z (``rotation[:, 2]``) is the direction
             a viewer looks *into* the surface, the visible side is the -z side. Room walls /
             floor / ceiling (infinite: size[0] = 0) and the outdoor ground (a disc of radius
             size[0] = GROUND_RADIUS, so sky starts at the horizon and depth stays finite).
  quads      two-sided rectangles in the local x-y plane, half extents size[:2] (posters). A
             camera with c2w rotation equal to the quad's rotation sees it upright and unmirrored:
             local x = image columns, local y = image rows.
  boxes      oriented boxes with half extents size.
  spheres    radius size[0].
  cylinders  capped cylinders along local y, radius size[0], half height size[1].

Motion: the pose at time t is ``center(t) = center + velocity t + amplitude * sin(2 pi frequency t +
phase)`` (per axis) and ``rotation(t) = R_y(spin t) @ rotation``. A primitive with any non-zero
motion parameter is *dynamic*: the renderer's dynamic mask marks pixels where it is the nearest
surface.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.data.worlds import textures
from mirage_jax.data.worlds.textures import PATTERN_IDS

__all__ = [
    "GROUPS",
    "DEFAULT_CAPACITY",
    "KINDS",
    "CLASSES",
    "COLOR_NAMES",
    "Primitives",
    "Scene",
    "sample_scene",
    "stack_scenes",
    "primitive_poses",
    "is_dynamic",
    "scene_sdf",
    "point_inside_solids",
    "Material",
    "SceneBuilder",
]

GROUPS = ("planes", "quads", "boxes", "spheres", "cylinders")
DEFAULT_CAPACITY = {"planes": 6, "quads": 3, "boxes": 12, "spheres": 5, "cylinders": 6}
KINDS = ("indoor", "outdoor")
GROUND_RADIUS = 400.0  # metres: extent of the outdoor ground disc

CLASSES = (
    "floor",
    "ceiling",
    "wall",
    "ground",
    "poster",
    "table",
    "cabinet",
    "sofa",
    "stool",
    "lamp",
    "ball",
    "pillar",
    "crate",
    "bookshelf",
    "tree",
    "house",
    "rock",
    "post",
    "fence",
    "cube",
    "barrel",
)
CLASS_IDS = {name: i for i, name in enumerate(CLASSES)}
STRUCTURAL_CLASSES = ("floor", "ceiling", "wall", "ground")

# Named colours (linear-ish RGB albedo). The name is stored per primitive for captions.
COLORS = {
    "red": (0.78, 0.13, 0.11),
    "orange": (0.90, 0.48, 0.10),
    "yellow": (0.90, 0.78, 0.18),
    "green": (0.20, 0.58, 0.24),
    "blue": (0.15, 0.30, 0.80),
    "purple": (0.50, 0.25, 0.65),
    "pink": (0.90, 0.52, 0.62),
    "teal": (0.10, 0.55, 0.55),
    "white": (0.88, 0.88, 0.85),
    "gray": (0.50, 0.50, 0.50),
    "dark gray": (0.22, 0.22, 0.23),
    "black": (0.07, 0.07, 0.08),
    "brown": (0.45, 0.28, 0.15),
    "beige": (0.84, 0.77, 0.62),
    "cream": (0.93, 0.89, 0.78),
    "light blue": (0.62, 0.74, 0.88),
    "sage": (0.62, 0.70, 0.56),
    "brick red": (0.62, 0.24, 0.16),
    "dark green": (0.12, 0.36, 0.14),
    "sand": (0.76, 0.68, 0.50),
}
COLOR_NAMES = tuple(COLORS)
COLOR_IDS = {name: i for i, name in enumerate(COLOR_NAMES)}
BRIGHT = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "teal")


# --------------------------------------------------------------------------------------------
# Pytrees.
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Primitives:
    """One padded table of primitives of a single type (P = capacity of the group).

    mask bool[P]; center f32[P, 3]; rotation f32[P, 3, 3] (local-to-world, columns = local
    axes); size f32[P, 3]; pattern int32[P] (``textures.PATTERNS``); color_a, color_b f32[P, 3];
    tex_scale f32[P] (pattern period, metres); tex_slot int32[P] (atlas slot, -1 none);
    tex_offset f32[P, 2]; velocity, amplitude, phase f32[P, 3]; frequency f32[P] (Hz);
    spin f32[P] (rad/s about world y); object_index int32[P] (instance id, -1 padding);
    object_class int32[P] (``CLASSES``); color_name int32[P] (``COLOR_NAMES``).
    """

    mask: jax.Array
    center: jax.Array
    rotation: jax.Array
    size: jax.Array
    pattern: jax.Array
    color_a: jax.Array
    color_b: jax.Array
    tex_scale: jax.Array
    tex_slot: jax.Array
    tex_offset: jax.Array
    velocity: jax.Array
    amplitude: jax.Array
    phase: jax.Array
    frequency: jax.Array
    spin: jax.Array
    object_index: jax.Array
    object_class: jax.Array
    color_name: jax.Array

    @property
    def capacity(self) -> int:
        return self.mask.shape[-1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scene:
    """A procedural world: primitive tables, light, sky and image atlas (all arrays).

    planes, quads, boxes, spheres, cylinders: ``Primitives`` (see module docstring).
    kind int32[] (0 indoor, 1 outdoor); seed int32[] (sampling seed);
    light f32[4]: (x, y, z, w); w = 1: point light at xyz; w = 0: directional light, xyz = unit
    direction *towards* the light; light_color f32[3]; light_falloff f32[] (point light
    attenuation 1 / (1 + falloff * distance^2)); ambient f32[3];
    sky_zenith, sky_horizon f32[3]: sky gradient (rays that hit nothing);
    fade f32[2]: texture contrast fades to the mean colour between these distances from the
    world origin (view-independent anti-aliasing for far outdoor ground);
    atlas uint8[A, S, S, 3] images; atlas_image int32[A] (``textures.IMAGE_NAMES``
    index, -1 empty); bounds f32[2, 3]: min / max corner of the region cameras may occupy.
    """

    planes: Primitives
    quads: Primitives
    boxes: Primitives
    spheres: Primitives
    cylinders: Primitives
    kind: jax.Array
    seed: jax.Array
    light: jax.Array
    light_color: jax.Array
    light_falloff: jax.Array
    ambient: jax.Array
    sky_zenith: jax.Array
    sky_horizon: jax.Array
    fade: jax.Array
    atlas: jax.Array
    atlas_image: jax.Array
    bounds: jax.Array

    def group(self, name: str) -> Primitives:
        return getattr(self, name)

    @property
    def capacity(self) -> dict:
        return {g: self.group(g).mask.shape[-1] for g in GROUPS}


def stack_scenes(scenes) -> Scene:
    """Stacks scenes with identical capacities / atlas shapes along a new leading axis (for vmap)."""
    scenes = list(scenes)
    if not scenes:
        raise ValueError("stack_scenes: no scenes given")
    shapes = [jax.tree.map(np.shape, s) for s in scenes]
    for i, sh in enumerate(shapes[1:], 1):
        if sh != shapes[0]:
            raise ValueError(
                f"stack_scenes: scene {i} has different capacities / atlas shape than scene 0 "
                f"({scenes[i].capacity} vs {scenes[0].capacity}); sample them with the same options"
            )
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *scenes)


# --------------------------------------------------------------------------------------------
# Motion (works with NumPy or jax.numpy arrays; ``xp`` picks the module).
# --------------------------------------------------------------------------------------------


def _rot_y(angle, xp):
    c = xp.cos(angle)
    s = xp.sin(angle)
    z = xp.zeros_like(c)
    o = xp.ones_like(c)
    return xp.stack(
        [xp.stack([c, z, s], -1), xp.stack([z, o, z], -1), xp.stack([-s, z, c], -1)], -2
    )


def primitive_poses(prims: Primitives, t, xp=jnp):
    """(center f32[P, 3], rotation f32[P, 3, 3]) of a group at time t (scalar seconds)."""
    t = xp.asarray(t, dtype=prims.center.dtype)
    arg = 2.0 * math.pi * prims.frequency[..., None] * t + prims.phase
    center = prims.center + prims.velocity * t + prims.amplitude * xp.sin(arg)
    # Elementwise product-sum rather than a matmul: exact float32 on every backend (a GPU
    # matmul may round through TF32).
    Ry = _rot_y(prims.spin * t, xp)
    rotation = (Ry[..., :, :, None] * prims.rotation[..., None, :, :]).sum(-2)
    return center, rotation


def is_dynamic(prims: Primitives, xp=jnp):
    """bool[P]: primitives whose pose changes over time (and that exist)."""
    moving = (
        xp.any(prims.velocity != 0, axis=-1)
        | xp.any(prims.amplitude != 0, axis=-1)
        | (prims.spin != 0)
    )
    return prims.mask & moving


# --------------------------------------------------------------------------------------------
# Signed distance (host side, NumPy float64): clearance checks for cameras.
# --------------------------------------------------------------------------------------------


def _np_group(scene: Scene, name: str) -> Primitives:
    def conv(a):
        a = np.asarray(a)
        return a.astype(np.float64) if a.dtype.kind == "f" else a

    return jax.tree.map(conv, scene.group(name))


def scene_sdf(scene: Scene, points, t=0.0, include_planes: bool = True) -> np.ndarray:
    """Signed distance f64[...] from points [..., 3] to the scene's surfaces at time t.

    Positive in free space (in front of planes, outside solids), negative inside solids or behind
    a plane (outside the room / under the ground). Exact for planes, boxes, spheres, capped
    cylinders and quads (quads are thin: their distance is never negative). ``t`` is a scalar or
    an array broadcastable to points.shape[:-1] (one time per point).
    """
    if np.ndim(scene.kind) != 0:
        raise ValueError("scene_sdf expects a single scene, not a stacked batch")
    points = np.asarray(points, np.float64)
    if points.shape[-1] != 3:
        raise ValueError(f"scene_sdf: points must have shape [..., 3], got {points.shape}")
    t = np.broadcast_to(np.asarray(t, np.float64), points.shape[:-1])
    best = np.full(points.shape[:-1], np.inf)
    for name in GROUPS:
        if name == "planes" and not include_planes:
            continue
        g = _np_group(scene, name)
        if not g.mask.any():
            continue
        keep = np.nonzero(g.mask)[0]
        g = jax.tree.map(lambda a: a[keep], g)
        tt = t[..., None]  # [..., 1] -> broadcast over primitives
        arg = 2.0 * math.pi * g.frequency[:, None] * tt[..., None] + g.phase
        center = g.center + g.velocity * tt[..., None] + g.amplitude * np.sin(arg)  # [..., P, 3]
        ang = g.spin * tt  # [..., P]
        c, s = np.cos(ang), np.sin(ang)
        Ry = np.zeros(ang.shape + (3, 3))
        Ry[..., 0, 0] = c
        Ry[..., 0, 2] = s
        Ry[..., 1, 1] = 1.0
        Ry[..., 2, 0] = -s
        Ry[..., 2, 2] = c
        R = Ry @ g.rotation  # [..., P, 3, 3]
        q = np.einsum("...pji,...pj->...pi", R, points[..., None, :] - center)
        if name == "planes":
            d = -q[..., 2]
        elif name == "quads":
            dx = np.maximum(np.abs(q[..., 0]) - g.size[:, 0], 0.0)
            dy = np.maximum(np.abs(q[..., 1]) - g.size[:, 1], 0.0)
            d = np.sqrt(dx * dx + dy * dy + q[..., 2] ** 2)
        elif name == "boxes":
            e = np.abs(q) - g.size
            outside = np.linalg.norm(np.maximum(e, 0.0), axis=-1)
            inside = np.minimum(e.max(-1), 0.0)
            d = outside + inside
        elif name == "spheres":
            d = np.linalg.norm(q, axis=-1) - g.size[:, 0]
        else:  # cylinders
            rho = np.hypot(q[..., 0], q[..., 2]) - g.size[:, 0]
            h = np.abs(q[..., 1]) - g.size[:, 1]
            outside = np.hypot(np.maximum(rho, 0.0), np.maximum(h, 0.0))
            d = outside + np.minimum(np.maximum(rho, h), 0.0)
        best = np.minimum(best, d.min(-1))
    return best


def point_inside_solids(scene: Scene, points, t=0.0) -> np.ndarray:
    """bool[...]: points strictly inside a box, sphere or cylinder, or behind a plane."""
    return scene_sdf(scene, points, t) < 0.0


# --------------------------------------------------------------------------------------------
# Host-side builder.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Material:
    pattern: str = "plain"
    color_a: str = "white"
    color_b: str = "gray"
    tex_scale: float = 1.0
    tex_slot: int = -1
    # Name used for the colour in captions (defaults to color_a).
    color_name: str | None = None
    # Raw RGB overrides for colour a / b (otherwise looked up by name).
    rgb_a: tuple | None = None
    rgb_b: tuple | None = None


def frame(forward, right=None) -> np.ndarray:
    """Rotation [3, 3] with columns (right, down, forward), a proper rotation.

    Without ``right`` the surface is vertical: down = world +y and right = down x forward.
    """
    f = np.asarray(forward, np.float64)
    f = f / np.linalg.norm(f)
    if right is None:
        down = np.array([0.0, 1.0, 0.0])
        r = np.cross(down, f)
        r = r / np.linalg.norm(r)
        down = np.cross(f, r)
    else:
        r = np.asarray(right, np.float64)
        r = r - f * (r @ f)
        r = r / np.linalg.norm(r)
        down = np.cross(f, r)
    return np.stack([r, down, f], axis=1)


def rot_y(angle: float) -> np.ndarray:
    return _rot_y(np.asarray(angle, np.float64), np)


class SceneBuilder:
    """Accumulates primitives on the host and pads them into a ``Scene``."""

    def __init__(self, capacity: Mapping[str, int], rng: np.random.Generator):
        self.capacity = dict(capacity)
        self.rng = rng
        self.items = {g: [] for g in GROUPS}
        self.next_object = 0

    def free(self, group: str) -> int:
        return self.capacity[group] - len(self.items[group])

    def fits(self, needs: Mapping[str, int]) -> bool:
        return all(self.free(g) >= n for g, n in needs.items())

    def new_object(self) -> int:
        self.next_object += 1
        return self.next_object - 1

    def add(
        self,
        group: str,
        center,
        size,
        material: Material,
        object_index: int,
        object_class: str,
        rotation=None,
        velocity=(0.0, 0.0, 0.0),
        amplitude=(0.0, 0.0, 0.0),
        phase=(0.0, 0.0, 0.0),
        frequency: float = 0.0,
        spin: float = 0.0,
    ) -> None:
        if group not in GROUPS:
            raise ValueError(f"unknown primitive group {group!r}; expected one of {GROUPS}")
        if self.free(group) <= 0:
            raise ValueError(f"capacity of {group!r} ({self.capacity[group]}) exceeded")
        rgb_a = material.rgb_a if material.rgb_a is not None else COLORS[material.color_a]
        rgb_b = material.rgb_b if material.rgb_b is not None else COLORS[material.color_b]
        cname = material.color_name or material.color_a
        self.items[group].append(
            dict(
                center=np.asarray(center, np.float64),
                rotation=np.eye(3) if rotation is None else np.asarray(rotation, np.float64),
                size=np.broadcast_to(np.asarray(size, np.float64), (3,)).copy(),
                pattern=PATTERN_IDS[material.pattern],
                color_a=np.asarray(rgb_a, np.float64),
                color_b=np.asarray(rgb_b, np.float64),
                tex_scale=float(material.tex_scale),
                tex_slot=int(material.tex_slot),
                tex_offset=self.rng.uniform(-50.0, 50.0, size=2),
                velocity=np.asarray(velocity, np.float64),
                amplitude=np.asarray(amplitude, np.float64),
                phase=np.asarray(phase, np.float64),
                frequency=float(frequency),
                spin=float(spin),
                object_index=int(object_index),
                object_class=CLASS_IDS[object_class],
                color_name=COLOR_IDS[cname],
            )
        )

    def primitives(self, group: str) -> Primitives:
        P = self.capacity[group]
        items = self.items[group]
        n = len(items)

        def field(key, shape, dtype, fill):
            out = np.full((P,) + shape, fill, dtype)
            for i, it in enumerate(items):
                out[i] = it[key]
            return out

        rot = np.broadcast_to(np.eye(3, dtype=np.float32), (P, 3, 3)).copy()
        for i, it in enumerate(items):
            rot[i] = it["rotation"]
        return Primitives(
            mask=np.arange(P) < n,
            center=field("center", (3,), np.float32, 0.0),
            rotation=rot,
            size=field("size", (3,), np.float32, 0.0),
            pattern=field("pattern", (), np.int32, 0),
            color_a=field("color_a", (3,), np.float32, 0.0),
            color_b=field("color_b", (3,), np.float32, 0.0),
            tex_scale=field("tex_scale", (), np.float32, 1.0),
            tex_slot=field("tex_slot", (), np.int32, -1),
            tex_offset=field("tex_offset", (2,), np.float32, 0.0),
            velocity=field("velocity", (3,), np.float32, 0.0),
            amplitude=field("amplitude", (3,), np.float32, 0.0),
            phase=field("phase", (3,), np.float32, 0.0),
            frequency=field("frequency", (), np.float32, 0.0),
            spin=field("spin", (), np.float32, 0.0),
            object_index=field("object_index", (), np.int32, -1),
            object_class=field("object_class", (), np.int32, -1),
            color_name=field("color_name", (), np.int32, -1),
        )


    def to_scene(
        self,
        kind: str = "indoor",
        *,
        seed: int = 0,
        light=(0.0, -2.5, 0.0, 1.0),
        light_color=(0.8, 0.8, 0.8),
        light_falloff: float = 0.0,
        ambient=(0.3, 0.3, 0.3),
        sky_zenith=(0.2, 0.4, 0.8),
        sky_horizon=(0.8, 0.85, 0.9),
        fade=(1e6, 2e6),
        bounds=((-1.0, -2.0, -1.0), (1.0, -1.0, 1.0)),
        atlas=None,
        atlas_image=None,
        atlas_slots: int = 4,
        atlas_size: int = 128,
    ) -> Scene:
        """Pads the accumulated primitives into a ``Scene`` (see ``Scene`` for the fields).

        Custom scenes built with the default capacity and atlas shape share the compiled
        renderer of ``sample_scene``'s scenes.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if atlas is None:
            atlas = np.zeros((atlas_slots, atlas_size, atlas_size, 3), np.uint8)
        atlas = np.asarray(atlas)
        if atlas.ndim != 4 or atlas.shape[1] != atlas.shape[2] or atlas.shape[3] != 3 or atlas.dtype != np.uint8:
            raise ValueError(f"atlas must be uint8 [A, S, S, 3], got {atlas.dtype} {atlas.shape}")
        if atlas_image is None:
            atlas_image = np.full((atlas.shape[0],), -1, np.int32)
        f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
        return Scene(
            planes=self.primitives("planes"),
            quads=self.primitives("quads"),
            boxes=self.primitives("boxes"),
            spheres=self.primitives("spheres"),
            cylinders=self.primitives("cylinders"),
            kind=np.asarray(KINDS.index(kind), np.int32),
            seed=np.asarray(int(seed), np.int32),
            light=f32(light),
            light_color=f32(light_color),
            light_falloff=f32(light_falloff),
            ambient=f32(ambient),
            sky_zenith=f32(sky_zenith),
            sky_horizon=f32(sky_horizon),
            fade=f32(fade),
            atlas=atlas,
            atlas_image=np.asarray(atlas_image, np.int32),
            bounds=f32(bounds),
        )


# --------------------------------------------------------------------------------------------
# The sampler.
# --------------------------------------------------------------------------------------------


class _Footprints:
    """Discs on the ground plane (x, z, radius) used to place objects without overlap."""

    def __init__(self):
        self.discs: list[tuple[float, float, float]] = []

    def clear(self, x, z, r, gap=0.08) -> bool:
        return all(math.hypot(x - a, z - b) >= r + c + gap for a, b, c in self.discs)

    def add(self, x, z, r):
        self.discs.append((float(x), float(z), float(r)))


def _choice(rng, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _motion(rng, speed_scale=1.0):
    """A bounded periodic motion: back-and-forth along a line or around a circle (horizontal)."""
    kind = _choice(rng, ("line", "circle", "line"))
    ang = rng.uniform(0.0, 2.0 * math.pi)
    freq = rng.uniform(0.12, 0.3) * speed_scale
    phase0 = rng.uniform(0.0, 2.0 * math.pi)
    if kind == "line":
        a = rng.uniform(0.5, 1.1)
        amplitude = (a * math.cos(ang), 0.0, a * math.sin(ang))
        phase = (phase0, 0.0, phase0)
    else:
        a = rng.uniform(0.4, 0.8)
        amplitude = (a, 0.0, a)
        phase = (phase0, 0.0, phase0 + 0.5 * math.pi)
    return dict(amplitude=amplitude, phase=phase, frequency=freq)


def _swept_positions(x, z, motion, n=48):
    """Ground-plane positions of a periodic motion over one period."""
    f = motion["frequency"]
    ts = np.linspace(0.0, 1.0 / f, n, endpoint=False)
    amp = np.asarray(motion["amplitude"])
    ph = np.asarray(motion["phase"])
    pos = np.asarray([x, 0.0, z]) + amp * np.sin(2 * math.pi * f * ts[:, None] + ph)
    return pos[:, 0], pos[:, 2]


def _place(rng, fp: _Footprints, r, xlim, zlim, tries=40, reserve=None, motion=None):
    """Finds (x, z) for a disc of radius r inside the limits, clear of footprints (and of the
    reserved disc); with a motion, the whole swept path must be clear. Returns None on failure."""
    for _ in range(tries):
        x = rng.uniform(xlim[0] + r, xlim[1] - r)
        z = rng.uniform(zlim[0] + r, zlim[1] - r)
        if motion is None:
            xs, zs = np.array([x]), np.array([z])
        else:
            xs, zs = _swept_positions(x, z, motion)
            if xs.min() - r < xlim[0] or xs.max() + r > xlim[1] or zs.min() - r < zlim[0] or zs.max() + r > zlim[1]:
                continue
        ok = all(fp.clear(a, b, r) for a, b in zip(xs, zs))
        if ok and reserve is not None:
            rx, rz, rr = reserve
            ok = all(math.hypot(a - rx, b - rz) >= rr + r for a, b in zip(xs, zs))
        if ok:
            for a, b in zip(xs, zs):
                fp.add(a, b, r)
            return float(x), float(z)
    return None


# Object catalogue: each entry (class, needs per group, radius function, adder).


def _wood(rng):
    light = _choice(rng, ("beige", "sand"))
    return Material("wood", light, "brown", tex_scale=rng.uniform(0.12, 0.2), color_name="brown")


def _painted(rng, names=BRIGHT):
    return Material("plain", _choice(rng, names))


def _add_table(b, rng, x, z, yaw, mat=None):
    obj = b.new_object()
    mat = mat or _wood(rng)
    w, d, h = rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.55), rng.uniform(0.7, 0.8)
    R = rot_y(yaw)
    top = 0.03
    b.add("boxes", (x, -h + top, z), (w, top, d), mat, obj, "table", rotation=R)
    leg = 0.035
    for sx in (-1, 1):
        for sz in (-1, 1):
            off = R @ np.array([sx * (w - leg - 0.02), 0.0, sz * (d - leg - 0.02)])
            half = (h - 2 * top) / 2
            b.add("boxes", (x + off[0], -half, z + off[2]), (leg, half, leg), mat, obj, "table", rotation=R)
    return obj


def _add_cabinet(b, rng, x, z, yaw):
    obj = b.new_object()
    w, d, h = rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.3), rng.uniform(0.5, 1.0)
    mat = _choice(rng, (_wood(rng), _painted(rng, ("white", "gray", "blue", "green", "dark gray"))))
    b.add("boxes", (x, -h, z), (w, h, d), mat, obj, "cabinet", rotation=rot_y(yaw))
    return obj


def _add_bookshelf(b, rng, x, z, yaw):
    obj = b.new_object()
    w, d, h = rng.uniform(0.35, 0.6), 0.18, rng.uniform(0.8, 1.0)
    col = _choice(rng, ("red", "blue", "green", "yellow", "purple"))
    mat = Material("stripes", col, "beige", tex_scale=rng.uniform(0.05, 0.09), color_name=col)
    b.add("boxes", (x, -h, z), (w, h, d), mat, obj, "bookshelf", rotation=rot_y(yaw))
    return obj


def _add_sofa(b, rng, x, z, yaw):
    obj = b.new_object()
    col = _choice(rng, ("red", "blue", "green", "gray", "beige", "teal", "purple"))
    mat = Material("noise", col, "dark gray", tex_scale=0.6, color_name=col)
    mat = dataclasses.replace(mat, rgb_b=tuple(0.7 * np.asarray(COLORS[col])))
    w, d = rng.uniform(0.7, 1.0), 0.4
    R = rot_y(yaw)
    b.add("boxes", (x, -0.22, z), (w, 0.22, d), mat, obj, "sofa", rotation=R)
    off = R @ np.array([0.0, 0.0, d - 0.1])
    b.add("boxes", (x + off[0], -0.5, z + off[2]), (w, 0.3, 0.1), mat, obj, "sofa", rotation=R)
    return obj


def _add_stool(b, rng, x, z, yaw):
    obj = b.new_object()
    r, hh = rng.uniform(0.15, 0.25), rng.uniform(0.2, 0.3)
    mat = _choice(rng, (_wood(rng), _painted(rng)))
    b.add("cylinders", (x, -hh, z), (r, hh, r), mat, obj, "stool", rotation=rot_y(yaw))
    return obj


def _add_lamp(b, rng, x, z, yaw):
    obj = b.new_object()
    h = rng.uniform(1.2, 1.6)
    shade = rng.uniform(0.15, 0.22)
    col = _choice(rng, ("white", "cream", "yellow", "orange"))
    b.add("spheres", (x, -h - shade * 0.8, z), shade, Material("plain", col), obj, "lamp")
    b.add("cylinders", (x, -h / 2, z), (0.025, h / 2, 0.025), Material("plain", "black"), obj, "lamp")
    return obj


def _add_ball(b, rng, x, z, yaw, material=None, motion=None, r=None, y_center=None):
    obj = b.new_object()
    r = r if r is not None else rng.uniform(0.15, 0.35)
    if material is None:
        col = _choice(rng, BRIGHT)
        material = _choice(
            rng,
            (Material("plain", col), Material("checker", col, "white", tex_scale=r * 0.8, color_name=col),
             Material("stripes", col, "white", tex_scale=r * 0.7, color_name=col)),
        )
    y = -r if y_center is None else y_center
    b.add("spheres", (x, y, z), r, material, obj, "ball", rotation=rot_y(yaw), **(motion or {}))
    return obj


def _add_cube(b, rng, x, z, yaw, motion=None, s=None, y_center=None):
    obj = b.new_object()
    s = s if s is not None else rng.uniform(0.15, 0.3)
    col = _choice(rng, BRIGHT)
    mat = _choice(rng, (Material("plain", col), Material("tiles", col, "white", tex_scale=s, color_name=col)))
    y = -s if y_center is None else y_center
    b.add("boxes", (x, y, z), s, mat, obj, "cube", rotation=rot_y(yaw), **(motion or {}))
    return obj


def _add_pillar(b, rng, x, z, yaw, height):
    obj = b.new_object()
    r = rng.uniform(0.15, 0.25)
    mat = _choice(rng, (Material("plain", "white"), Material("noise", "gray", "white", 0.8, color_name="gray"),
                        Material("brick", "brick red", "cream", 0.08, color_name="brick red")))
    b.add("cylinders", (x, -height / 2, z), (r, height / 2, r), mat, obj, "pillar", rotation=rot_y(yaw))
    return obj


def _add_crate(b, rng, x, z, yaw):
    obj = b.new_object()
    s = rng.uniform(0.2, 0.4)
    b.add("boxes", (x, -s, z), s, _wood(rng), obj, "crate", rotation=rot_y(yaw))
    return obj


def _add_barrel(b, rng, x, z, yaw):
    obj = b.new_object()
    r, hh = rng.uniform(0.2, 0.3), rng.uniform(0.3, 0.45)
    col = _choice(rng, ("red", "blue", "green", "yellow", "gray"))
    mat = Material("stripes", col, "dark gray", tex_scale=0.25, color_name=col)
    b.add("cylinders", (x, -hh, z), (r, hh, r), mat, obj, "barrel", rotation=rot_y(yaw))
    return obj


def _add_tree(b, rng, x, z, yaw):
    obj = b.new_object()
    trunk_h = rng.uniform(1.8, 2.6)
    canopy = rng.uniform(0.9, 1.4)
    green = _choice(rng, ("green", "dark green", "sage"))
    leaves = Material("noise", green, "dark green", tex_scale=0.8, color_name=green)
    b.add("spheres", (x, -trunk_h - canopy * 0.6, z), canopy, leaves, obj, "tree", rotation=rot_y(yaw))
    bark = Material("noise", "brown", "dark gray", tex_scale=0.3, color_name="brown")
    b.add("cylinders", (x, -trunk_h / 2, z), (0.15, trunk_h / 2, 0.15), bark, obj, "tree", rotation=rot_y(yaw))
    return obj


def _add_house(b, rng, x, z, yaw, wall_mat):
    obj = b.new_object()
    w, d, h = rng.uniform(1.5, 2.5), rng.uniform(1.5, 2.5), rng.uniform(1.3, 2.0)
    R = rot_y(yaw)
    b.add("boxes", (x, -h, z), (w, h, d), wall_mat, obj, "house", rotation=R)
    roof = _choice(rng, ("dark gray", "brick red", "brown"))
    roof_mat = Material("tiles", roof, "black", 0.3, color_name=roof)
    b.add("boxes", (x, -2 * h - 0.15, z), (w + 0.2, 0.15, d + 0.2), roof_mat, obj, "house", rotation=R)
    return obj


def _add_rock(b, rng, x, z, yaw):
    obj = b.new_object()
    r = rng.uniform(0.3, 0.7)
    mat = Material("noise", _choice(rng, ("gray", "dark gray", "sand")), "dark gray", tex_scale=0.5)
    b.add("spheres", (x, -0.5 * r, z), r, mat, obj, "rock", rotation=rot_y(yaw))
    return obj


def _add_post(b, rng, x, z, yaw):
    obj = b.new_object()
    hh = rng.uniform(0.5, 1.0)
    col = _choice(rng, ("white", "red", "yellow", "gray"))
    mat = Material("stripes", col, "dark gray", 0.3, color_name=col)
    b.add("cylinders", (x, -hh, z), (0.08, hh, 0.08), mat, obj, "post", rotation=rot_y(yaw))
    return obj


def _add_fence(b, rng, x, z, yaw):
    obj = b.new_object()
    half = rng.uniform(1.0, 2.0)
    b.add("boxes", (x, -0.45, z), (half, 0.45, 0.05), _wood(rng), obj, "fence", rotation=rot_y(yaw))
    return obj


# (class, needs, footprint radius (given rng draws are made inside the adder: a bound), adder)
_INDOOR_CATALOGUE = (
    ("table", {"boxes": 5}, 0.9, _add_table),
    ("cabinet", {"boxes": 1}, 0.6, _add_cabinet),
    ("bookshelf", {"boxes": 1}, 0.65, _add_bookshelf),
    ("sofa", {"boxes": 2}, 1.1, _add_sofa),
    ("stool", {"cylinders": 1}, 0.3, _add_stool),
    ("lamp", {"spheres": 1, "cylinders": 1}, 0.25, _add_lamp),
    ("ball", {"spheres": 1}, 0.35, _add_ball),
    ("crate", {"boxes": 1}, 0.58, _add_crate),
    ("barrel", {"cylinders": 1}, 0.32, _add_barrel),
    ("pillar", {"cylinders": 1}, 0.27, None),
)
_OUTDOOR_CATALOGUE = (
    ("tree", {"spheres": 1, "cylinders": 1}, 1.4, _add_tree),
    ("rock", {"spheres": 1}, 0.7, _add_rock),
    ("post", {"cylinders": 1}, 0.1, _add_post),
    ("crate", {"boxes": 1}, 0.58, _add_crate),
    ("barrel", {"cylinders": 1}, 0.32, _add_barrel),
    ("fence", {"boxes": 1}, 2.05, _add_fence),
    ("ball", {"spheres": 1}, 0.35, _add_ball),
)


def _atlas_entry(rng, name, aspect=None):
    """A random crop window (top, left, h, w) of image ``name`` with height/width ``aspect``."""
    H, W = textures.load_image(name).shape[:2]
    if aspect is None:
        return (name, (0.0, 0.0, 1.0, 1.0))
    # largest crop with this aspect, then a random shrink and offset
    ch, cw = H, int(round(H / aspect))
    if cw > W:
        cw, ch = W, int(round(W * aspect))
    s = rng.uniform(0.75, 1.0)
    ch, cw = ch * s, cw * s
    top = rng.uniform(0.0, H - ch) / H
    left = rng.uniform(0.0, W - cw) / W
    return (name, (top, left, ch / H, cw / W))


def _validate_capacity(capacity):
    cap = dict(DEFAULT_CAPACITY)
    if capacity is not None:
        for k, v in capacity.items():
            if k not in GROUPS:
                raise ValueError(f"capacity: unknown primitive group {k!r}; expected keys from {GROUPS}")
            if int(v) != v or v < 0:
                raise ValueError(f"capacity[{k!r}] must be a non-negative integer, got {v!r}")
            cap[k] = int(v)
    if cap["planes"] < 6:
        raise ValueError(f"capacity['planes'] must be >= 6 (a room has 6 planes), got {cap['planes']}")
    for g in ("boxes", "spheres", "cylinders", "quads"):
        cap[g] = max(cap[g], 1)  # XLA-friendly: never a zero-size table
    return cap


def sample_scene(
    seed: int,
    kind: str = "indoor",
    *,
    images: bool = True,
    num_objects: int | None = None,
    num_dynamic: int | None = None,
    num_posters: int | None = None,
    capacity: Mapping[str, int] | None = None,
    atlas_size: int = 128,
    atlas_slots: int = 4,
) -> Scene:
    """Samples a procedural world, deterministically from (seed, kind, options).

    seed: non-negative int < 2**31. kind: "indoor" (a room: floor, ceiling, 4 walls, posters,
    furniture-like boxes, spheres, cylinders, a point light under the ceiling) or "outdoor"
    (ground plane, trees, houses, rocks, fences, ..., a sun and a sky at infinity).
    images: use the scikit-image CC0 photos as posters and its gray textures (brick, grass,
    gravel) on walls / ground (needs scikit-image; False uses procedural textures only).
    num_objects: static objects to try to place (default: random); num_dynamic: moving objects
    (default: random 0..2); num_posters: indoor posters (default: random, at most
    capacity['quads']). capacity: per-group maximum primitive counts (``DEFAULT_CAPACITY``);
    atlas_size / atlas_slots: image atlas shape [atlas_slots, atlas_size, atlas_size, 3].
    Scenes sampled with the same capacity / atlas options share one compiled renderer and can be
    stacked for vmap. Returns a ``Scene`` of NumPy arrays.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}")
    for name, v in (("num_objects", num_objects), ("num_dynamic", num_dynamic), ("num_posters", num_posters)):
        if v is not None and (int(v) != v or v < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {v!r}")
    if int(atlas_size) < 2 or int(atlas_slots) < 1:
        raise ValueError(f"atlas_size must be >= 2 and atlas_slots >= 1, got {atlas_size}, {atlas_slots}")
    cap = _validate_capacity(capacity)
    rng = np.random.default_rng([int(seed), KINDS.index(kind), 0x5EED])
    b = SceneBuilder(cap, rng)
    atlas_entries: list = []

    def add_image(name, aspect=None):
        if len(atlas_entries) >= atlas_slots:
            return -1
        atlas_entries.append(_atlas_entry(rng, name, aspect))
        return len(atlas_entries) - 1

    if kind == "indoor":
        extra = _build_indoor(b, rng, images, num_objects, num_dynamic, num_posters, add_image)
    else:
        extra = _build_outdoor(b, rng, images, num_objects, num_dynamic, add_image)

    atlas = textures.make_atlas(atlas_entries, int(atlas_size), int(atlas_slots)) if atlas_entries else np.zeros(
        (int(atlas_slots), int(atlas_size), int(atlas_size), 3), np.uint8
    )
    atlas_image = np.full((int(atlas_slots),), -1, np.int32)
    for i, (name, _) in enumerate(atlas_entries):
        atlas_image[i] = textures.IMAGE_NAMES.index(name)
    return b.to_scene(kind, seed=int(seed), atlas=atlas, atlas_image=atlas_image, **extra)


def _build_indoor(b, rng, images, num_objects, num_dynamic, num_posters, add_image):
    W = rng.uniform(4.0, 6.5)
    D = rng.uniform(4.0, 7.0)
    H = rng.uniform(2.5, 3.1)
    hx, hz = W / 2, D / 2

    # Surfaces.
    wall_opts = [
        Material("plain", _choice(rng, ("white", "cream", "beige", "light blue", "sage", "pink"))),
        Material("noise", "cream", "beige", tex_scale=1.5, color_name="cream"),
        Material("brick", "brick red", "cream", tex_scale=rng.uniform(0.07, 0.1), color_name="brick red"),
        Material("stripes", _choice(rng, ("light blue", "sage", "beige", "pink")), "cream", tex_scale=0.15),
        Material("tiles", "white", "gray", tex_scale=0.25),
    ]
    if images:
        wall_opts.append(("image", "brick"))
    wall = _choice(rng, wall_opts, p=[0.3, 0.15, 0.15, 0.15, 0.1, 0.15] if images else [0.35, 0.2, 0.15, 0.18, 0.12])
    if isinstance(wall, tuple):
        slot = add_image("brick")
        wall = Material("image_tiled", "brick red", "dark gray", tex_scale=rng.uniform(1.2, 1.8), tex_slot=slot,
                        color_name="brick red", rgb_a=(0.75, 0.35, 0.25), rgb_b=(0.25, 0.12, 0.1))
    accent = _choice(rng, wall_opts[:4]) if rng.uniform() < 0.3 else None
    if isinstance(accent, tuple):
        accent = None
    floor_opts = [
        Material("wood", "sand", "brown", tex_scale=rng.uniform(0.15, 0.25), color_name="brown"),
        Material(
            "tiles", _choice(rng, ("white", "beige", "gray", "sand")), "dark gray", tex_scale=rng.uniform(0.3, 0.5)
        ),
        Material("checker", "white", "black", tex_scale=rng.uniform(0.3, 0.5), color_name="white"),
        Material("noise", "gray", "dark gray", tex_scale=1.0, color_name="gray"),
    ]
    floor = _choice(rng, floor_opts, p=[0.45, 0.25, 0.15, 0.15])
    ceiling = Material("plain", _choice(rng, ("white", "cream")))

    b.add("planes", (0, 0, 0), 0, floor, b.new_object(), "floor", rotation=frame((0, 1, 0), right=(1, 0, 0)))
    b.add("planes", (0, -H, 0), 0, ceiling, b.new_object(), "ceiling", rotation=frame((0, -1, 0), right=(1, 0, 0)))
    walls = [
        ((hx, 0, 0), (1, 0, 0), D),
        ((-hx, 0, 0), (-1, 0, 0), D),
        ((0, 0, hz), (0, 0, 1), W),
        ((0, 0, -hz), (0, 0, -1), W),
    ]
    accent_wall = int(rng.integers(4))
    wall_obj = b.new_object()
    for i, (c, f, _) in enumerate(walls):
        mat = accent if (accent is not None and i == accent_wall) else wall
        b.add("planes", c, 0, mat, wall_obj, "wall", rotation=frame(f))

    # Posters on walls (quads 2 cm in front of a wall).
    max_posters = min(b.free("quads"), 3) if images else 0
    n_posters = int(rng.integers(0, max_posters + 1)) if num_posters is None else min(int(num_posters), max_posters)
    if num_posters is not None and num_posters > max_posters:
        raise ValueError(
            f"num_posters={num_posters} but at most {max_posters} fit (images={images}, "
            f"capacity['quads']={b.capacity['quads']})"
        )
    placed = {i: [] for i in range(4)}
    photos = list(textures.PHOTO_NAMES)
    rng.shuffle(photos)
    for k in range(n_posters):
        for _ in range(20):
            wi = int(rng.integers(4))
            c, f, length = walls[wi]
            pw = rng.uniform(0.3, 0.6)
            aspect = rng.uniform(0.7, 1.4)
            ph = pw * aspect
            along = rng.uniform(-length / 2 + pw + 0.2, length / 2 - pw - 0.2)
            if all(abs(along - a) > pw + w2 + 0.1 for a, w2 in placed[wi]):
                break
        else:
            continue
        placed[wi].append((along, pw))
        R = frame(f)
        center = np.asarray(c, np.float64) + R[:, 0] * along - R[:, 2] * 0.02
        center[1] = -rng.uniform(1.4, 1.7)
        slot = add_image(photos[k % len(photos)], aspect)
        if slot < 0:
            break
        photo = Material("image", "white", "white", tex_slot=slot)
        b.add("quads", center, (pw, ph, 0.0), photo, b.new_object(), "poster", rotation=R)

    # A free disc around the room centre keeps space for cameras (and the light) at all times.
    fp = _Footprints()
    reserve = (0.0, 0.0, 0.6)
    xlim, zlim = (-hx + 0.05, hx - 0.05), (-hz + 0.05, hz - 0.05)

    # Moving objects first, so static objects avoid their whole swept path.
    n_dyn = int(_choice(rng, (0, 1, 1, 2))) if num_dynamic is None else int(num_dynamic)
    for k in range(n_dyn):
        motion = _motion(rng)
        if rng.uniform() < 0.6 and b.fits({"spheres": 1}):
            r = rng.uniform(0.18, 0.3)
            pos = _place(rng, fp, r, xlim, zlim, reserve=reserve, motion=motion)
            if pos is not None:
                _add_ball(b, rng, pos[0], pos[1], 0.0, motion=dict(motion, spin=rng.uniform(-1.5, 1.5)), r=r)
                continue
        if b.fits({"boxes": 1}):
            s = rng.uniform(0.15, 0.25)
            pos = _place(rng, fp, s * math.sqrt(2), xlim, zlim, reserve=reserve, motion=motion)
            if pos is not None:
                y = -s if rng.uniform() < 0.5 else -rng.uniform(0.8, 1.6)
                _add_cube(b, rng, pos[0], pos[1], rng.uniform(0, 2 * math.pi), s=s, y_center=y,
                          motion=dict(motion, spin=rng.uniform(-1.0, 1.0)))
                continue
        if num_dynamic is not None:
            raise ValueError(f"could not place {num_dynamic} moving objects (placed {k}); lower num_dynamic")

    n_obj = int(rng.integers(3, 8)) if num_objects is None else int(num_objects)
    for _ in range(n_obj):
        cls, needs, radius, adder = _INDOOR_CATALOGUE[int(rng.integers(len(_INDOOR_CATALOGUE)))]
        if not b.fits(needs):
            continue
        pos = _place(rng, fp, radius, xlim, zlim, reserve=reserve)
        if pos is None:
            continue
        yaw = rng.uniform(0, 2 * math.pi)
        if cls == "pillar":
            _add_pillar(b, rng, pos[0], pos[1], yaw, H)
        else:
            adder(b, rng, pos[0], pos[1], yaw)

    light = (rng.uniform(-0.3, 0.3), -H + 0.3, rng.uniform(-0.3, 0.3), 1.0)
    warm = rng.uniform(0.0, 0.12)
    return dict(
        light=light,
        light_color=(0.85 + warm * 0.5, 0.82, 0.78 - warm),
        light_falloff=0.04,
        ambient=(0.32, 0.32, 0.34),
        sky_zenith=(0.0, 0.0, 0.0),
        sky_horizon=(0.0, 0.0, 0.0),
        fade=(1e6, 2e6),
        bounds=((-hx + 0.35, -1.8, -hz + 0.35), (hx - 0.35, -1.0, hz - 0.35)),
    )


def _build_outdoor(b, rng, images, num_objects, num_dynamic, add_image):
    ground_opts = [
        Material("noise", "green", "dark green", tex_scale=2.0, color_name="green"),
        Material("noise", "sand", "brown", tex_scale=2.0, color_name="sand"),
        Material("tiles", "gray", "dark gray", tex_scale=0.6, color_name="gray"),
        Material("checker", "white", "gray", tex_scale=1.0, color_name="white"),
    ]
    if images:
        ground_opts += [("image", "grass"), ("image", "gravel")]
    ground = _choice(rng, ground_opts)
    if isinstance(ground, tuple):
        name = ground[1]
        slot = add_image(name)
        if name == "grass":
            ground = Material("image_tiled", "green", "dark green", tex_scale=rng.uniform(1.5, 2.5), tex_slot=slot,
                              rgb_a=(0.45, 0.7, 0.3), rgb_b=(0.08, 0.22, 0.06))
        else:
            ground = Material("image_tiled", "gray", "dark gray", tex_scale=rng.uniform(1.0, 2.0), tex_slot=slot,
                              rgb_a=(0.75, 0.72, 0.68), rgb_b=(0.2, 0.19, 0.18))
    # A disc of radius GROUND_RADIUS: beyond it is sky, so depth stays finite (< ~GROUND_RADIUS).
    up = frame((0, 1, 0), right=(1, 0, 0))
    b.add("planes", (0, 0, 0), (GROUND_RADIUS, 0, 0), ground, b.new_object(), "ground", rotation=up)

    fp = _Footprints()
    reserve = (0.0, 0.0, 1.0)
    R_cam = 6.0

    n_dyn = int(_choice(rng, (0, 1, 1, 2))) if num_dynamic is None else int(num_dynamic)
    for k in range(n_dyn):
        motion = _motion(rng, speed_scale=1.3)
        motion["amplitude"] = tuple(1.6 * np.asarray(motion["amplitude"]))
        ok = False
        if rng.uniform() < 0.6 and b.fits({"spheres": 1}):
            r = rng.uniform(0.2, 0.4)
            pos = _place(rng, fp, r, (-R_cam, R_cam), (-R_cam, R_cam), reserve=reserve, motion=motion)
            if pos is not None:
                _add_ball(b, rng, pos[0], pos[1], 0.0, motion=dict(motion, spin=rng.uniform(-2, 2)), r=r)
                ok = True
        if not ok and b.fits({"boxes": 1}):
            s = rng.uniform(0.2, 0.35)
            pos = _place(rng, fp, s * math.sqrt(2), (-R_cam, R_cam), (-R_cam, R_cam), reserve=reserve, motion=motion)
            if pos is not None:
                _add_cube(b, rng, pos[0], pos[1], rng.uniform(0, 2 * math.pi), s=s,
                          motion=dict(motion, spin=rng.uniform(-1.0, 1.0)))
                ok = True
        if not ok and num_dynamic is not None:
            raise ValueError(f"could not place {num_dynamic} moving objects (placed {k}); lower num_dynamic")

    # Houses in a far ring.
    house_walls = [
        Material("plain", _choice(rng, ("white", "cream", "beige", "light blue", "pink"))),
        Material("brick", "brick red", "cream", tex_scale=0.1, color_name="brick red"),
        Material("stripes", _choice(rng, ("white", "light blue", "yellow")), "gray", tex_scale=0.25),
    ]
    n_houses = int(rng.integers(1, 3))
    for _ in range(n_houses):
        if not b.fits({"boxes": 2}):
            break
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(9.0, 16.0)
        x, z = dist * math.cos(ang), dist * math.sin(ang)
        if fp.clear(x, z, 3.6):
            fp.add(x, z, 3.6)
            _add_house(b, rng, x, z, rng.uniform(0, 2 * math.pi), _choice(rng, house_walls))

    n_obj = int(rng.integers(4, 9)) if num_objects is None else int(num_objects)
    for _ in range(n_obj):
        cls, needs, radius, adder = _OUTDOOR_CATALOGUE[int(rng.integers(len(_OUTDOOR_CATALOGUE)))]
        if not b.fits(needs):
            continue
        lim = 12.0 if cls == "tree" else 8.0
        pos = _place(rng, fp, radius, (-lim, lim), (-lim, lim), reserve=reserve)
        if pos is None:
            continue
        adder(b, rng, pos[0], pos[1], rng.uniform(0, 2 * math.pi))

    elev = rng.uniform(math.radians(25), math.radians(65))
    azim = rng.uniform(0, 2 * math.pi)
    sun = (math.cos(elev) * math.cos(azim), -math.sin(elev), math.cos(elev) * math.sin(azim), 0.0)
    zenith = np.array([0.18, 0.38, 0.78]) * rng.uniform(0.85, 1.1)
    return dict(
        light=sun,
        light_color=(0.95, 0.9, 0.8),
        light_falloff=0.0,
        ambient=(0.3, 0.33, 0.38),
        sky_zenith=np.clip(zenith, 0, 1),
        sky_horizon=(0.78, 0.85, 0.93),
        fade=(25.0, 80.0),
        bounds=((-R_cam, -2.0, -R_cam), (R_cam, -1.3, R_cam)),
    )
