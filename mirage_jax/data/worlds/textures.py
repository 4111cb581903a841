"""Procedural textures evaluated in JAX from surface coordinates, and the image atlas.

Every texture is a pure function of the surface point (its 2D surface coordinates in metres, or
[0, 1]^2 coordinates for posters) and the primitive's material parameters. Nothing depends on the
camera, so a surface point has the same albedo in every view: this is what makes the rendered
worlds exactly 3D-consistent.

All patterns are *continuous* in the surface coordinates (edges of bricks, tiles, checkers and
stripes are smooth ramps, image textures are sampled bilinearly with mirrored or clamped
wrapping). A point reprojected from another view with float32 round-off therefore gets an albedo
within ~1e-4 of the original, instead of flipping across a hard edge.

Patterns (``PATTERNS``; a primitive's ``pattern`` indexes this tuple):

  plain        colour_a with a faint noise (paint)
  noise        value-noise fBm blend of colour_a and colour_b (plaster, foliage, dirt, stone)
  wood         planks along u with grain rings and per-plank tint
  brick        running-bond bricks (colour_a) and mortar (colour_b)
  tiles        square tiles (colour_a, per-tile tint) and grout (colour_b)
  checker      checkerboard of colour_a and colour_b
  stripes      stripes along u (wallpaper, books)
  image        a photo from the atlas mapped once over a quad (posters), uv in [0, 1]^2
  image_tiled  a grayscale atlas texture (brick, grass, gravel) tiled every ``tex_scale`` metres,
               mapping gray 0 -> colour_b and 1 -> colour_a

The atlas (``make_atlas``: uint8 [slots, S, S, 3]) holds crops of the CC0 / public-domain photos
and textures shipped with scikit-image (``IMAGE_NAMES``); scikit-image is only imported when a
scene uses images.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

__all__ = [
    "PATTERNS",
    "PATTERN_IDS",
    "IMAGE_NAMES",
    "PHOTO_NAMES",
    "GRAY_TEXTURE_NAMES",
    "value_noise",
    "fbm",
    "evaluate_albedo",
    "load_image",
    "make_atlas",
    "pack_atlas",
]

PATTERNS = (
    "plain",
    "noise",
    "wood",
    "brick",
    "tiles",
    "checker",
    "stripes",
    "image",
    "image_tiled",
)
PATTERN_IDS = {name: i for i, name in enumerate(PATTERNS)}

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera")
GRAY_TEXTURE_NAMES = ("brick", "grass", "gravel")
IMAGE_NAMES = PHOTO_NAMES + GRAY_TEXTURE_NAMES

# Width (in pattern units) of the smooth ramps that replace hard edges.
_EDGE = 0.04


# --------------------------------------------------------------------------------------------
# Hash-based value noise.
# --------------------------------------------------------------------------------------------


def _hash2(ix, iy, salt):
    """Integer lattice hash (ix, iy int32 arrays, salt uint32) -> float32 in [0, 1)."""
    h = ix.astype(jnp.uint32) * jnp.uint32(0x8DA6B343)
    h = h ^ (iy.astype(jnp.uint32) * jnp.uint32(0xD8163841))
    h = h ^ salt
    h = (h ^ (h >> 15)) * jnp.uint32(0x2C1B3C6D)
    h = (h ^ (h >> 12)) * jnp.uint32(0x297A2D39)
    h = h ^ (h >> 15)
    return (h >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))


def value_noise(x, y, salt=0):
    """2D value noise in [0, 1]: random values on the integer lattice, quintic interpolation.

    x, y: float32 arrays of any (broadcastable) shape; salt: uint32 (scalar or broadcastable)
    selecting an independent noise field. C2-continuous in (x, y).
    """
    salt = jnp.asarray(salt, jnp.uint32)
    fx = jnp.floor(x)
    fy = jnp.floor(y)
    ix = fx.astype(jnp.int32)
    iy = fy.astype(jnp.int32)
    tx = x - fx
    ty = y - fy
    sx = tx * tx * tx * (tx * (tx * 6.0 - 15.0) + 10.0)
    sy = ty * ty * ty * (ty * (ty * 6.0 - 15.0) + 10.0)
    v00 = _hash2(ix, iy, salt)
    v10 = _hash2(ix + 1, iy, salt)
    v01 = _hash2(ix, iy + 1, salt)
    v11 = _hash2(ix + 1, iy + 1, salt)
    a = v00 + (v10 - v00) * sx
    b = v01 + (v11 - v01) * sx
    return a + (b - a) * sy


def fbm(x, y, octaves: int = 3, salt=0):
    """Fractal sum of ``octaves`` value-noise octaves (gain 1/2, lacunarity ~2), in [0, 1]."""
    total = 0.0
    amp = 1.0
    norm = 0.0
    salt = jnp.asarray(salt, jnp.uint32)
    for o in range(octaves):
        total = total + amp * value_noise(x, y, salt + jnp.uint32(0x9E3779B9 * (o + 1) & 0xFFFFFFFF))
        norm += amp
        # Rotate and scale between octaves so lattice artefacts do not line up.
        x, y = 1.6 * x + 1.2 * y + 17.3, -1.2 * x + 1.6 * y + 5.1
        amp *= 0.5
    return total / norm


# --------------------------------------------------------------------------------------------
# Pattern helpers (all continuous).
# --------------------------------------------------------------------------------------------


def _smoothstep(e0, e1, x):
    t = jnp.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _edge_distance(x):
    """Distance of x to the nearest integer (0 at integers, 0.5 half way): continuous."""
    return jnp.abs(x - jnp.round(x))


def _triangle(x):
    """Triangle wave with period 1 in [0, 1] (continuous)."""
    return jnp.abs(2.0 * (x - jnp.floor(x)) - 1.0)


def _wave(x):
    """Triangle wave with the sign, extremes and period (2) of sin(pi x); no transcendental."""
    h = 0.5 * (x - 0.5)
    return 2.0 * jnp.abs(2.0 * (h - jnp.floor(h)) - 1.0) - 1.0


def _cell_random(ix, iy, salt):
    return _hash2(ix.astype(jnp.int32), iy.astype(jnp.int32), salt)


# --------------------------------------------------------------------------------------------
# The albedo of a surface point. Arrays are component-first ([3, N] colours, [2, N]
# coordinates) so that every elementwise op runs along the long, contiguous N axis.
# --------------------------------------------------------------------------------------------


def pack_atlas(atlas):
    """uint8 atlas [A, S, S, 3] -> int32 [A * S * S] with r | g << 8 | b << 16 (one gather/tap)."""
    a = jnp.asarray(atlas).astype(jnp.int32)
    return (a[..., 0] | (a[..., 1] << 8) | (a[..., 2] << 16)).reshape(-1)


def _sample_atlas(packed, size, slot, px, py, mode_mirror):
    """Bilinear sample of a packed atlas (``pack_atlas``) at continuous texel coordinates.

    packed int32[A * S * S] with S = size; slot int32[N] (clamped into range); px / py f32[N]
    texel coordinates (texel centres at integers); mode_mirror bool[N]: mirrored repeat (tiled
    textures) versus clamp to the edge (posters). Returns f32[3, N] in [0, 1].
    """
    S = size
    A = packed.shape[0] // (S * S)
    period = 2.0 * S

    def wrap(p):
        # Mirrored repeat with period 2S in texel-centre coordinates, continuous everywhere.
        q = jnp.mod(p + 0.5, period)
        q = jnp.where(q >= S, period - q, q) - 0.5
        return jnp.clip(jnp.where(mode_mirror, q, p), 0.0, S - 1.0)

    px = wrap(px)
    py = wrap(py)
    x0 = jnp.floor(px)
    y0 = jnp.floor(py)
    wx = px - x0
    wy = py - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, S - 1)
    y1 = jnp.minimum(y0 + 1, S - 1)
    base = jnp.clip(slot, 0, A - 1) * (S * S)

    def tap(yy, xx, w):
        v = jnp.take(packed, base + yy * S + xx, mode="clip")
        return [((v >> (8 * c)) & 255).astype(jnp.float32) * w for c in range(3)]

    w00 = (1.0 - wx) * (1.0 - wy)
    w10 = wx * (1.0 - wy)
    w01 = (1.0 - wx) * wy
    w11 = wx * wy
    taps = [tap(y0, x0, w00), tap(y0, x1, w10), tap(y1, x0, w01), tap(y1, x1, w11)]
    return jnp.stack([(taps[0][c] + taps[1][c] + taps[2][c] + taps[3][c]) * (1.0 / 255.0) for c in range(3)])


def evaluate_albedo(uv, uv01, pattern, color_a, color_b, tex_scale, tex_slot, tex_offset, atlas):
    """Albedo f32[3, N] in [0, 1] of N surface points (component-first layout).

    uv: f32[2, N] surface coordinates in metres; uv01: f32[2, N] in [0, 1]^2 over a quad
    (posters: column, row of the photo); pattern: int32[N] (see ``PATTERNS``); color_a,
    color_b: f32[3, N]; tex_scale: f32[N] pattern period in metres; tex_slot: int32[N] atlas slot
    (image patterns); tex_offset: f32[2, N] per-primitive offset decorrelating the noise of
    different primitives; atlas: uint8[A, S, S, 3].

    Every pattern is written as ``k_a * color_a + k_b * color_b`` with scalar weights (posters
    add ``k_img * image * color_a``), so the per-pattern work is scalar and the colour is
    assembled once.
    """
    inv_scale = 1.0 / tex_scale
    sx = (uv[0] + tex_offset[0]) * inv_scale
    sy = (uv[1] + tex_offset[1]) * inv_scale
    # One shared fBm per point drives every pattern's variation.
    n = fbm(4.0 * sx, 4.0 * sy, octaves=3)
    zero = jnp.zeros_like(n)
    weights = {}  # pattern -> (k_a, k_b)
    # plain: paint with a faint mottle.
    weights["plain"] = (0.93 + 0.14 * n, zero)
    # noise: fBm blend.
    w = _smoothstep(0.25, 0.75, n)
    weights["noise"] = (w, 1.0 - w)
    # wood: planks of width 1 along v, grain rings driven by noise, per-plank tint; the seams
    # between planks are a dark ramp so the per-plank terms never jump.
    row = jnp.floor(sy)
    rings = 0.35 + 0.65 * _triangle(4.0 * (0.35 * sx + 2.5 * n + 0.37 * row))
    tint = 0.85 + 0.3 * _cell_random(row, jnp.full_like(row, 7.0), jnp.uint32(11))
    seam = _smoothstep(0.3 * _EDGE, _EDGE, _edge_distance(sy))
    weights["wood"] = (seam * tint * rings, 0.5 * (1.0 - seam) + seam * tint * (1.0 - rings))
    # brick: bricks of 2 x 1 units in running bond (colour a); mortar (colour b) near edges.
    bx = 0.5 * sx + 0.5 * jnp.mod(row, 2.0)
    d_edge = jnp.minimum(2.0 * _edge_distance(bx), _edge_distance(sy))
    mortar = _smoothstep(0.5 * _EDGE, 2.0 * _EDGE, d_edge)  # 0 in mortar, 1 inside a brick
    brick_tint = (0.75 + 0.4 * _cell_random(jnp.floor(bx), row, jnp.uint32(23))) * (0.85 + 0.3 * n)
    weights["brick"] = (mortar * brick_tint, (1.0 - mortar) * (0.9 + 0.2 * n))
    # tiles: square tiles (colour a, per-tile tint) and grout (colour b).
    t_edge = jnp.minimum(_edge_distance(sx), _edge_distance(sy))
    grout = _smoothstep(0.5 * _EDGE, 1.5 * _EDGE, t_edge)
    tile_tint = (0.85 + 0.3 * _cell_random(jnp.floor(sx), row, jnp.uint32(37))) * (0.95 + 0.1 * n)
    weights["tiles"] = (grout * tile_tint, 1.0 - grout)
    # checker: a continuous checkerboard (steep but finite ramps at the edges).
    m = 0.95 + 0.1 * n
    chk = jnp.clip(8.0 * _wave(sx) * _wave(sy), -1.0, 1.0) * 0.5 + 0.5
    weights["checker"] = (chk * m, (1.0 - chk) * m)
    # stripes along u.
    stp = jnp.clip(6.0 * _wave(2.0 * sx), -1.0, 1.0) * 0.5 + 0.5
    weights["stripes"] = (stp * m, (1.0 - stp) * m)

    # Images: one bilinear lookup serves posters (clamped) and tiled textures (mirrored).
    packed = pack_atlas(atlas)
    S = atlas.shape[1]
    is_tiled = pattern == PATTERN_IDS["image_tiled"]
    is_poster = pattern == PATTERN_IDS["image"]
    px = jnp.where(is_tiled, sx, uv01[0]) * S - 0.5
    py = jnp.where(is_tiled, sy, uv01[1]) * S - 0.5
    img = _sample_atlas(packed, S, tex_slot, px, py, is_tiled)
    weights["image"] = (zero, zero)
    weights["image_tiled"] = (img[0], 1.0 - img[0])

    ka, kb = weights["plain"]
    for name in PATTERNS[1:]:
        sel = pattern == PATTERN_IDS[name]
        ka = jnp.where(sel, weights[name][0], ka)
        kb = jnp.where(sel, weights[name][1], kb)
    out = ka * color_a + kb * color_b + jnp.where(is_poster, 1.0, 0.0) * img * color_a
    return jnp.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Host side: the image atlas (scikit-image's CC0 / public-domain data, imported lazily).
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def load_image(name: str) -> np.ndarray:
    """One of ``IMAGE_NAMES`` from ``skimage.data`` as float32 [H, W, 3] in [0, 1] (read-only).

    Grayscale images are repeated over the three channels. Raises ImportError with a clear
    message when scikit-image is not installed, ValueError for an unknown name.
    """
    if name not in IMAGE_NAMES:
        raise ValueError(f"unknown image {name!r}; expected one of {IMAGE_NAMES}")
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "procedural worlds with images (posters, photo textures) need scikit-image, which ships "
            "the CC0 photos; install scikit-image or pass images=False to sample_scene / make_clip"
        ) from e
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.float32) / 255.0
    img.setflags(write=False)
    return img


def _resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Square crop already done; area-resize float [h, w, 3] to [size, size, 3] via Pillow."""
    from PIL import Image

    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], np.float32)).resize((size, size), Image.BOX))
        for c in range(3)
    ]
    return np.stack(chans, axis=-1).astype(np.float32)


def make_atlas(entries, size: int, slots: int) -> np.ndarray:
    """Builds an atlas uint8[slots, size, size, 3] from ``entries``: (name, crop) pairs.

    crop = (top, left, height, width) as fractions of the image in [0, 1] (a crop window); the
    window is area-resized to size x size. Unused slots are zeros. Deterministic.
    """
    if len(entries) > slots:
        raise ValueError(f"make_atlas: {len(entries)} images do not fit in {slots} slots")
    atlas = np.zeros((slots, size, size, 3), np.uint8)
    for i, (name, crop) in enumerate(entries):
        img = load_image(name)
        H, W = img.shape[:2]
        top, left, h, w = crop
        y0 = int(round(top * H))
        x0 = int(round(left * W))
        y1 = max(y0 + 1, min(H, int(round((top + h) * H))))
        x1 = max(x0 + 1, min(W, int(round((left + w) * W))))
        atlas[i] = np.round(np.clip(_resize_area(img[y0:y1, x0:x1], size), 0.0, 1.0) * 255.0).astype(np.uint8)
    return atlas
