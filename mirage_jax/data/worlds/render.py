"""A JAX ray caster for ``Scene``: exact z-depth, normals, instance ids, dynamic and sky masks.

Rays: pixel (u, v) (integer pixel centres; u = column, v = row) of a camera with intrinsics K
[3, 3] and OpenCV camera-to-world c2w [4, 4] is the ray ``o + s * D`` with o = c2w[:3, 3] and
``D = R @ ((u - cx - skew y) / fx, y, 1)``, y = (v - cy) / fy: D is *not* normalised, its
camera-z component is 1, so the ray parameter s of a hit is exactly the hit's z-depth (the
inverse of ``mirage_jax.geometry.cameras.unproject_grid``). Every ray-primitive intersection is
analytic (planes, quads, slabs for oriented boxes, numerically stable quadratics for spheres and
capped cylinders). Rays are processed component-first ([3, N]: every elementwise op runs along
the long ray axis); a ``lax.scan`` per primitive group keeps a running nearest hit (one fused
pass over the rays per primitive, no [P, N] intermediate); the nearest primitive's attributes
are fetched with an exact one-hot matmul. No per-pixel Python, one XLA program per (image size,
capacities, atlas shape, shadows).

Outputs (``render``; leading shape [H, W], or that of ``uv`` for ``render_pixels``):
  rgb        f32[..., 3] in [0, 1]: albedo * (ambient + light * max(n.l, 0) * attenuation *
             visibility), clipped to [0, 1]; rays that hit nothing show the sky gradient.
  depth      f32[...]: z-depth of the nearest surface; **0 where nothing is hit** (sky), matching
             the memory's "d > 0 is valid".
  dynamic    bool[...]: the nearest surface belongs to a moving primitive at time t.
  sky        bool[...]: nothing is hit (only happens outdoors for cameras inside the scene).
  normal     f32[..., 3]: world-space unit normal facing the camera; 0 for sky.
  object_id  int32[...]: instance id of the nearest surface (``Primitives.object_index``), -1 sky.
  moving_shadow bool[...]: (shadows=True only, else all False) a static or moving surface that
             would be lit but is in the shadow of a *moving* object: its colour changes over time
             although it is not itself dynamic.

Shading is view-independent (Lambert + ambient, no specular), so a surface point has exactly the
same colour in every view; hard shadows (``shadows=True``) cast one shadow ray per pixel towards
the light (a point light indoors, the sun outdoors).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.data.worlds import textures
from mirage_jax.data.worlds.scene import GROUPS, Scene, is_dynamic, primitive_poses
from mirage_jax.errors import check_hw
from mirage_jax.geometry.cameras import check_intrinsics, check_pose

__all__ = [
    "intrinsics_from_fov",
    "pixel_grid",
    "camera_rays",
    "render",
    "render_pixels",
    "render_frames",
    "OUTPUT_KEYS",
]

OUTPUT_KEYS = ("rgb", "depth", "dynamic", "sky", "normal", "object_id", "moving_shadow")

_T_MIN = 1e-4  # nearest accepted hit distance (in units of the ray parameter)
_SHADOW_OFFSET = 1e-3  # metres: shadow-ray origins are lifted off the surface along the normal
_TYPE_IDS = {g: i for i, g in enumerate(GROUPS)}


# --------------------------------------------------------------------------------------------
# Cameras.
# --------------------------------------------------------------------------------------------


def intrinsics_from_fov(image_hw, fov_deg: float = 60.0) -> np.ndarray:
    """Pinhole K f32[3, 3] for an image (H, W) with horizontal field of view ``fov_deg``.

    Square pixels (fy = fx = (W / 2) / tan(fov / 2)) and the principal point at the image centre
    in the integer-pixel-centre convention: cx = (W - 1) / 2, cy = (H - 1) / 2.
    """
    H, W = check_hw(image_hw, "image_hw")
    if not 0.0 < float(fov_deg) < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    f = (W / 2.0) / math.tan(math.radians(float(fov_deg)) / 2.0)
    return np.array([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]], np.float32)


def pixel_grid(image_hw) -> jax.Array:
    """Integer pixel centres f32[H, W, 2] as (u, v) = (column, row)."""
    H, W = image_hw
    u = jnp.broadcast_to(jnp.arange(W, dtype=jnp.float32)[None, :], (H, W))
    v = jnp.broadcast_to(jnp.arange(H, dtype=jnp.float32)[:, None], (H, W))
    return jnp.stack([u, v], axis=-1)


def camera_rays(K, c2w, uv):
    """Rays through pixel coordinates uv [..., 2]: (origin f32[3], directions f32[..., 3]).

    Directions are not normalised: their camera-z component is 1, so the ray parameter of a hit
    is its z-depth. (The renderer works component-first, see ``_camera_rays_cf``.)
    """
    K = jnp.asarray(K, jnp.float32)
    c2w = jnp.asarray(c2w, jnp.float32)
    uv = jnp.asarray(uv, jnp.float32)
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    x = (uv[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    R = c2w[:3, :3]
    d = x[..., None] * R[:, 0] + y[..., None] * R[:, 1] + R[:, 2]
    return c2w[:3, 3], d


# --------------------------------------------------------------------------------------------
# Intersections. Rays are component tuples of [1, N] arrays (origins may be [1, 1]); a group's
# parameters are [P, 1] columns; results are [P, N] with the long ray axis minor (vectorises).
# --------------------------------------------------------------------------------------------


def _col(x):
    return x[:, None]


def _local(vec, R):
    """Components of R^T vec: vec a tuple of three [1, N] arrays, R f32[P, 3, 3] -> 3 x [P, N]."""
    return tuple(
        vec[0] * _col(R[:, 0, k]) + vec[1] * _col(R[:, 1, k]) + vec[2] * _col(R[:, 2, k]) for k in range(3)
    )


def _sub(O, c):
    return (O[0] - _col(c[:, 0]), O[1] - _col(c[:, 1]), O[2] - _col(c[:, 2]))


def _isect_planes(O, D, c, R, size, mask, t_min):
    f = (_col(R[:, 0, 2]), _col(R[:, 1, 2]), _col(R[:, 2, 2]))
    denom = D[0] * f[0] + D[1] * f[1] + D[2] * f[2]
    oc = _sub(O, c)
    num = -(oc[0] * f[0] + oc[1] * f[1] + oc[2] * f[2])
    t = num / jnp.where(denom > 0, denom, 1.0)
    ok = _col(mask) & (denom > 0) & (t > t_min)
    # size[0] > 0 bounds the plane to a disc of that radius around its centre (outdoor ground:
    # keeps depth finite near the horizon); 0 means infinite.
    radius = _col(size[:, 0])
    px, py, pz = oc[0] + t * D[0], oc[1] + t * D[1], oc[2] + t * D[2]
    ok = ok & ((radius <= 0) | (px * px + py * py + pz * pz <= radius * radius))
    return jnp.where(ok, t, jnp.inf)


def _isect_quads(O, D, c, R, size, mask, t_min):
    ol = _local(_sub(O, c), R)
    dl = _local(D, R)
    ok = dl[2] != 0
    t = -ol[2] / jnp.where(ok, dl[2], 1.0)
    x = ol[0] + t * dl[0]
    y = ol[1] + t * dl[1]
    ok = ok & (jnp.abs(x) <= _col(size[:, 0])) & (jnp.abs(y) <= _col(size[:, 1])) & (t > t_min)
    return jnp.where(_col(mask) & ok, t, jnp.inf)


def _safe(x):
    return jnp.where(jnp.abs(x) < 1e-30, 1e-30, x)


def _isect_boxes(O, D, c, R, size, mask, t_min):
    ol = _local(_sub(O, c), R)
    dl = _local(D, R)
    near = -jnp.inf
    far = jnp.inf
    for k in range(3):
        inv = 1.0 / _safe(dl[k])
        h = _col(size[:, k])
        t1 = (-h - ol[k]) * inv
        t2 = (h - ol[k]) * inv
        near = jnp.maximum(near, jnp.minimum(t1, t2))
        far = jnp.minimum(far, jnp.maximum(t1, t2))
    ok = _col(mask) & (near <= far) & (near > t_min)
    return jnp.where(ok, near, jnp.inf)


def _isect_spheres(O, D, c, R, size, mask, t_min):
    oc = _sub(O, c)
    a = D[0] * D[0] + D[1] * D[1] + D[2] * D[2]
    inv_a = 1.0 / a
    b = D[0] * oc[0] + D[1] * oc[1] + D[2] * oc[2]
    t0 = -b * inv_a
    # Distance^2 from the centre to the ray's closest point: stable (no b^2 - ac cancellation).
    fx, fy, fz = oc[0] + t0 * D[0], oc[1] + t0 * D[1], oc[2] + t0 * D[2]
    r = _col(size[:, 0])
    h2 = r * r - (fx * fx + fy * fy + fz * fz)
    t = t0 - jnp.sqrt(jnp.maximum(h2, 0.0) * inv_a)
    return jnp.where(_col(mask) & (h2 >= 0) & (t > t_min), t, jnp.inf)


def _isect_cylinders(O, D, c, R, size, mask, t_min):
    ol = _local(_sub(O, c), R)
    dl = _local(D, R)
    r = _col(size[:, 0])
    hh = _col(size[:, 1])
    a = dl[0] * dl[0] + dl[2] * dl[2]
    a_ok = a > 0
    inv_a = 1.0 / jnp.where(a_ok, a, 1.0)
    t0 = -(dl[0] * ol[0] + dl[2] * ol[2]) * inv_a
    fx, fz = ol[0] + t0 * dl[0], ol[2] + t0 * dl[2]
    h2 = r * r - (fx * fx + fz * fz)
    ts = t0 - jnp.sqrt(jnp.maximum(h2, 0.0) * inv_a)
    side = a_ok & (h2 >= 0) & (jnp.abs(ol[1] + ts * dl[1]) <= hh) & (ts > t_min)
    y_cap = jnp.where(dl[1] > 0, -hh, hh)
    tc = (y_cap - ol[1]) / _safe(dl[1])
    cx, cz = ol[0] + tc * dl[0], ol[2] + tc * dl[2]
    cap = (cx * cx + cz * cz <= r * r) & (tc > t_min)
    t = jnp.minimum(jnp.where(side, ts, jnp.inf), jnp.where(cap, tc, jnp.inf))
    return jnp.where(_col(mask), t, jnp.inf)


_ISECT = {
    "planes": _isect_planes,
    "quads": _isect_quads,
    "boxes": _isect_boxes,
    "spheres": _isect_spheres,
    "cylinders": _isect_cylinders,
}


def _posed_groups(scene: Scene, t):
    """Per group: (center [P,3], rotation [P,3,3]) at time t."""
    return {g: primitive_poses(scene.group(g), t) for g in GROUPS}


def _group_scan(g, prims, posed_g, O, D, t_min, init, update):
    """Folds ``update(carry, t [1, N], j)`` over the primitives of group g with lax.scan.

    A scan (rather than a Python loop) keeps the program small, so compilation stays fast; each
    step is one fused pass over the rays.
    """
    c, R = posed_g
    xs = (c, R, prims.size, prims.mask, jnp.arange(prims.mask.shape[0], dtype=jnp.int32))

    def step(carry, x):
        cj, Rj, sj, mj, j = x
        t = _ISECT[g](O, D, cj[None], Rj[None], sj[None], mj[None], t_min)
        return update(carry, t, j), None

    return jax.lax.scan(step, init, xs)[0]


def _nearest_hit(scene: Scene, posed, O, D, t_min):
    """(t f32[N], index int32[N]) of the nearest hit over all primitives (t = +inf: none).

    Rays are component tuples of [1, N] arrays. Per group, a scan over its primitives keeps a
    running minimum (no [P, N] intermediate, no variadic arg-min reduction). Ties resolve to the
    lower index; indices count through ``GROUPS`` in order.
    """
    best = (jnp.full(D[0].shape, jnp.inf, jnp.float32), jnp.zeros(D[0].shape, jnp.int32))
    offset = 0
    for g in GROUPS:
        prims = scene.group(g)

        def update(carry, t, j, offset=offset):
            bt, bi = carry
            closer = t < bt
            return jnp.where(closer, t, bt), jnp.where(closer, j + offset, bi)

        best = _group_scan(g, prims, posed[g], O, D, t_min, best, update)
        offset += prims.mask.shape[0]
    return best[0][0], best[1][0]


def _any_hit_before(scene: Scene, posed, O, D, t_min, t_max):
    """(by_static, by_moving) bool[N]: a static / a moving primitive is hit at t_min < t < t_max
    (shadow rays)."""
    inf = jnp.full(D[0].shape, jnp.inf, jnp.float32)
    best = (inf, inf)
    for g in GROUPS:
        prims = scene.group(g)
        moving = is_dynamic(prims)

        def update(carry, t, j, moving=moving):
            ts, td = carry
            m = moving[j]
            return jnp.minimum(ts, jnp.where(m, jnp.inf, t)), jnp.minimum(td, jnp.where(m, t, jnp.inf))

        best = _group_scan(g, prims, posed[g], O, D, t_min, best, update)
    return best[0][0] < t_max, best[1][0] < t_max


def _rows(x):
    """[3, N] -> tuple of three [1, N] rows."""
    return (x[0:1], x[1:2], x[2:3])


# --------------------------------------------------------------------------------------------
# Shading (component-first: vectors are [3, N]).
# --------------------------------------------------------------------------------------------

# Rows of the per-primitive attribute table (integers are stored as exact small floats).
_F_CENTER, _F_ROT, _F_SIZE, _F_CA, _F_CB, _F_SCALE, _F_OFF, _F_INT, _F_ROWS = 0, 3, 12, 15, 18, 21, 22, 24, 29


def _flat_table(scene: Scene, posed):
    """Attributes of all primitives (groups concatenated) at time t: f32[_F_ROWS, P_total].

    Rows: center(3), rotation(9, row-major), size(3), color_a(3), color_b(3), tex_scale,
    tex_offset(2), then pattern, tex_slot, object_index, dynamic, type id.
    """
    cols = []
    for g in GROUPS:
        p = scene.group(g)
        c, R = posed[g]
        P = p.mask.shape[0]
        ints = jnp.stack(
            [
                p.pattern,
                p.tex_slot,
                p.object_index,
                is_dynamic(p).astype(jnp.int32),
                jnp.full((P,), _TYPE_IDS[g], jnp.int32),
            ],
            axis=-1,
        ).astype(jnp.float32)
        cols.append(
            jnp.concatenate(
                [c, R.reshape(P, 9), p.size, p.color_a, p.color_b, p.tex_scale[:, None], p.tex_offset, ints], axis=-1
            ).astype(jnp.float32)
        )
    return jnp.concatenate(cols, axis=0).T


def _smoothstep(e0, e1, x):
    s = jnp.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _atan2(y, x):
    """atan2 by a minimax polynomial (max error ~1e-5 rad): cheaper than the libm call on CPU."""
    ax = jnp.abs(x)
    ay = jnp.abs(y)
    mx = jnp.maximum(ax, ay)
    a = jnp.minimum(ax, ay) / jnp.where(mx > 0, mx, 1.0)
    s = a * a
    r = ((-0.0464964749 * s + 0.15931422) * s - 0.327622764) * s * a + a
    r = jnp.where(ay > ax, 0.5 * math.pi - r, r)
    r = jnp.where(x < 0, math.pi - r, r)
    return jnp.where(y < 0, -r, r)


def _surface(type_id, q, size):
    """Local normal [3, N], surface coordinates uv [2, N] (metres), uv01 [2, N] (quads)."""
    q0, q1, q2 = q
    s0, s1, s2 = size[0], size[1], size[2]
    zero = jnp.zeros_like(q0)
    is_plane = type_id <= _TYPE_IDS["quads"]
    is_box = type_id == _TYPE_IDS["boxes"]
    is_sphere = type_id == _TYPE_IDS["spheres"]
    inv0 = 1.0 / jnp.maximum(s0, 1e-12)
    inv1 = 1.0 / jnp.maximum(s1, 1e-12)
    # Boxes: the face is the axis where |q| / half-extent is largest.
    ex = jnp.abs(q0) * inv0
    ey = jnp.abs(q1) * inv1
    ez = jnp.abs(q2) / jnp.maximum(s2, 1e-12)
    fx = (ex >= ey) & (ex >= ez)
    fy = ~fx & (ey >= ez)
    fz = ~fx & ~fy
    box_n = (jnp.where(fx, jnp.sign(q0), zero), jnp.where(fy, jnp.sign(q1), zero), jnp.where(fz, jnp.sign(q2), zero))
    box_uv = (jnp.where(fx, q2, q0), jnp.where(fy, q2, q1))
    # Spheres and cylinder sides share the azimuth.
    azim = _atan2(q2, q0)
    sph_n = (q0 * inv0, q1 * inv0, q2 * inv0)
    sph_uv = (azim * s0, q1)
    rho = jnp.sqrt(q0 * q0 + q2 * q2)
    cap = jnp.abs(q1) * s0 > rho * s1
    inv_rho = 1.0 / jnp.maximum(rho, 1e-12)
    cyl_n = (jnp.where(cap, zero, q0 * inv_rho), jnp.where(cap, jnp.sign(q1), zero), jnp.where(cap, zero, q2 * inv_rho))
    cyl_uv = (jnp.where(cap, q0, azim * s0), jnp.where(cap, q2, q1))

    def pick(plane, box, sph, cyl):
        return jnp.where(is_plane, plane, jnp.where(is_box, box, jnp.where(is_sphere, sph, cyl)))

    n = (pick(zero, box_n[0], sph_n[0], cyl_n[0]), pick(zero, box_n[1], sph_n[1], cyl_n[1]),
         pick(zero - 1.0, box_n[2], sph_n[2], cyl_n[2]))
    uv = jnp.stack([pick(q0, box_uv[0], sph_uv[0], cyl_uv[0]), pick(q1, box_uv[1], sph_uv[1], cyl_uv[1])])
    uv01 = jnp.stack([q0 * inv0 * 0.5 + 0.5, q1 * inv1 * 0.5 + 0.5])
    return n, uv, uv01


def _sky(scene: Scene, D):
    """Sky colour [3, N] for ray directions D [3, N] (a function of direction only)."""
    dn = D * jax.lax.rsqrt(D[0] * D[0] + D[1] * D[1] + D[2] * D[2])
    s = _smoothstep(-0.05, 0.45, -dn[1])
    col = _col(scene.sky_horizon) + _col(scene.sky_zenith - scene.sky_horizon) * s
    glow = jnp.maximum(dn[0] * scene.light[0] + dn[1] * scene.light[1] + dn[2] * scene.light[2], 0.0)
    for _ in range(6):  # glow ** 64
        glow = glow * glow
    glow = glow * jnp.where(scene.light[3] == 0, 0.5, 0.0)
    return jnp.clip(col + glow * _col(scene.light_color), 0.0, 1.0)


def _trace(scene: Scene, O, D, t, shadows: bool):
    """Renders N rays: O f32[3, 1 or N], D f32[3, N] at time t -> dict of [N] / [3, N] arrays."""
    posed = _posed_groups(scene, t)
    depth, idx = _nearest_hit(scene, posed, _rows(O), _rows(D), _T_MIN)
    hit = jnp.isfinite(depth)
    s = jnp.where(hit, depth, 0.0)

    # Attributes of the nearest primitive: a one-hot matmul (exact: one product by 1 plus
    # zeros) instead of a gather, which XLA would fuse with the table's construction and
    # recompute per pixel.
    table = _flat_table(scene, posed)  # [_F_ROWS, P_total]
    onehot = (jnp.arange(table.shape[1], dtype=jnp.int32)[:, None] == idx[None, :]).astype(jnp.float32)
    F = jnp.matmul(table, onehot, precision=jax.lax.Precision.HIGHEST)  # [_F_ROWS, N]
    center, size = F[_F_CENTER:_F_CENTER + 3], F[_F_SIZE:_F_SIZE + 3]
    Rm = F[_F_ROT:_F_ROT + 9]  # row-major R[i, j] at row 3 i + j
    color_a, color_b = F[_F_CA:_F_CA + 3], F[_F_CB:_F_CB + 3]
    tex_scale, tex_offset = F[_F_SCALE], F[_F_OFF:_F_OFF + 2]
    pattern, tex_slot, object_index, dyn, type_id = (
        jnp.round(F[_F_INT + k]).astype(jnp.int32) for k in range(5)
    )

    p = O + s * D
    rel = p - center
    # Elementwise 3x3 products (a batched dot_general of tiny matrices is slow on CPU).
    q = tuple(Rm[i] * rel[0] + Rm[3 + i] * rel[1] + Rm[6 + i] * rel[2] for i in range(3))
    nl, uv, uv01 = _surface(type_id, q, size)
    n = jnp.stack([Rm[3 * i] * nl[0] + Rm[3 * i + 1] * nl[1] + Rm[3 * i + 2] * nl[2] for i in range(3)])
    n = n * jax.lax.rsqrt(jnp.maximum(n[0] * n[0] + n[1] * n[1] + n[2] * n[2], 1e-24))
    n = jnp.where(n[0] * D[0] + n[1] * D[1] + n[2] * D[2] > 0, -n, n)

    albedo = textures.evaluate_albedo(uv, uv01, pattern, color_a, color_b, tex_scale, tex_slot, tex_offset, scene.atlas)
    plain = pattern == textures.PATTERN_IDS["plain"]
    mean = jnp.where(plain, color_a, 0.5 * (color_a + color_b))
    fade = _smoothstep(scene.fade[0], scene.fade[1], jnp.sqrt(p[0] * p[0] + p[2] * p[2]))
    albedo = albedo + (mean - albedo) * fade

    w = scene.light[3]
    L = _col(scene.light[:3]) - w * p
    dist2 = L[0] * L[0] + L[1] * L[1] + L[2] * L[2]
    inv_len = jax.lax.rsqrt(jnp.maximum(dist2, 1e-20))
    ndl = jnp.maximum((n[0] * L[0] + n[1] * L[1] + n[2] * L[2]) * inv_len, 0.0)
    direct = ndl / (1.0 + scene.light_falloff * dist2 * w)
    if shadows:
        so = p + _SHADOW_OFFSET * n
        # Point light: the segment to the light is t in (0, 1); sun: the ray to infinity.
        sdir = jnp.where(w > 0, L, L * inv_len)
        t_max = jnp.where(w > 0, 1.0, jnp.inf)
        by_static, by_moving = _any_hit_before(scene, posed, _rows(so), _rows(sdir), _T_MIN, t_max)
        direct = jnp.where(by_static | by_moving, 0.0, direct)
        # Lit but for a moving object's shadow: the colour here changes with time.
        moving_shadow = hit & by_moving & ~by_static & (ndl > 0)
    else:
        moving_shadow = jnp.zeros_like(hit)
    rgb = albedo * (_col(scene.ambient) + _col(scene.light_color) * direct)
    rgb = jnp.where(hit, jnp.clip(rgb, 0.0, 1.0), _sky(scene, D))
    return {
        "rgb": rgb,
        "depth": s,
        "dynamic": hit & (dyn > 0),
        "sky": ~hit,
        "normal": jnp.where(hit, n, 0.0),
        "object_id": jnp.where(hit, object_index, -1),
        "moving_shadow": moving_shadow,
    }


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def _concrete(x) -> bool:
    """True for host / device values, False for tracers (inside a user's jit or vmap)."""
    try:
        np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return False
    return True


def _check_scene(scene, batched=False):
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a mirage_jax.data.worlds.Scene, got {type(scene).__name__}")
    if _concrete(scene.kind) and np.ndim(scene.kind) != (1 if batched else 0):
        raise ValueError(
            f"scene has batch shape {np.shape(scene.kind)}: render / render_frames take one scene "
            "(jax.vmap over a stacked scene for batches)"
        )


def _check_camera(K, c2w, lead=()):
    if _concrete(K):
        K = check_intrinsics(K, "intrinsics")
        if K.shape != tuple(lead) + (3, 3):
            raise ValueError(f"intrinsics: expected shape {tuple(lead) + (3, 3)}, got {K.shape}")
    if _concrete(c2w):
        c2w = check_pose(c2w, "cam2world")
        if c2w.shape != tuple(lead) + (4, 4):
            raise ValueError(f"cam2world: expected shape {tuple(lead) + (4, 4)}, got {c2w.shape}")
    return K, c2w


def _camera_rays_cf(K, c2w, u, v):
    """Component-first rays for pixel coordinates u, v f32[N]: (origin [3, 1], directions [3, N])."""
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    R = c2w[:3, :3]
    d = _col(R[:, 0]) * x + _col(R[:, 1]) * y + _col(R[:, 2])
    return _col(c2w[:3, 3]), d


@functools.partial(jax.jit, static_argnames=("shadows",))
def _render_pixels_jit(scene, K, c2w, uv, t, shadows):
    lead = uv.shape[:-1]
    uv = uv.reshape(-1, 2)
    o, d = _camera_rays_cf(jnp.asarray(K, jnp.float32), jnp.asarray(c2w, jnp.float32), uv[:, 0], uv[:, 1])
    out = _trace(scene, o, d, jnp.asarray(t, jnp.float32), shadows)
    # Back to channels-last: [N] -> lead, [3, N] -> lead + (3,).
    return {k: (v.T.reshape(lead + (3,)) if v.ndim == 2 else v.reshape(lead)) for k, v in out.items()}


def render_pixels(scene: Scene, intrinsics, cam2world, uv, t=0.0, shadows: bool = False) -> dict:
    """Renders rays through arbitrary (sub-)pixel coordinates uv f32[..., 2] = (column, row).

    Returns the ``OUTPUT_KEYS`` dict with leading shape uv.shape[:-1]. ``render`` is this
    function on the integer pixel grid.
    """
    _check_scene(scene)
    K, c2w = _check_camera(intrinsics, cam2world)
    uv = jnp.asarray(uv, jnp.float32)
    if uv.ndim < 1 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape [..., 2], got {uv.shape}")
    return _render_pixels_jit(scene, K, c2w, uv, t, shadows)


def render(scene: Scene, intrinsics, cam2world, image_hw, t=0.0, shadows: bool = False) -> dict:
    """Renders one view.

    scene: ``Scene``; intrinsics f32[3, 3] (pixels of this image); cam2world f32[4, 4] (OpenCV
    axes); image_hw (H, W); t: time in seconds (poses of moving objects); shadows: cast shadow
    rays. Returns dict(rgb f32[H, W, 3] in [0, 1], depth f32[H, W] (z-depth, 0 = sky / invalid),
    dynamic bool[H, W], sky bool[H, W], normal f32[H, W, 3], object_id int32[H, W]).
    Compiled once per (image_hw, capacities, atlas shape, shadows); works under jax.vmap.
    """
    _check_scene(scene)
    H, W = check_hw(image_hw, "image_hw")
    K, c2w = _check_camera(intrinsics, cam2world)
    # The same executable as render_pixels on a grid of this shape.
    return _render_pixels_jit(scene, K, c2w, pixel_grid((H, W)), t, bool(shadows))


@functools.partial(jax.jit, static_argnames=("image_hw", "shadows", "chunk"))
def _render_frames_jit(scene, Ks, c2ws, times, image_hw, shadows, chunk):
    grid = pixel_grid(image_hw)
    fn = jax.vmap(lambda K, P, t: _render_pixels_jit(scene, K, P, grid, t, shadows))  # noqa: E731
    T = Ks.shape[0]
    if chunk >= T:
        return fn(Ks, c2ws, times)
    # Bounded memory: render ``chunk`` frames at a time (a sequential loop inside the program);
    # the frame count is padded with copies of the last frame, then trimmed.
    n = -(-T // chunk)
    pad = n * chunk - T

    def batches(x):
        x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0) if pad else x
        return x.reshape((n, chunk) + x.shape[1:])

    out = jax.lax.map(lambda a: fn(*a), (batches(Ks), batches(c2ws), batches(times)))
    return jax.tree.map(lambda v: v.reshape((n * chunk,) + v.shape[2:])[:T], out)


def render_frames(
    scene: Scene, intrinsics, cam2world, image_hw, times=None, shadows: bool = False, max_rays: int = 1 << 20
) -> dict:
    """Renders T views of one scene in one batched program.

    intrinsics f32[T, 3, 3]; cam2world f32[T, 4, 4]; times f32[T] seconds (default zeros).
    max_rays bounds the rays traced at once (memory): frames are rendered in batches of
    max(1, max_rays // (H W)) inside the same program. Returns the ``render`` dict with a
    leading T axis ([T, H, W, ...]).
    """
    _check_scene(scene)
    H, W = check_hw(image_hw, "image_hw")
    if len(np.shape(intrinsics)) != 3:
        raise ValueError(f"intrinsics: expected shape [T, 3, 3], got {np.shape(intrinsics)}")
    T = np.shape(intrinsics)[0]
    K, c2w = _check_camera(intrinsics, cam2world, lead=(T,))
    if times is None:
        times = jnp.zeros((T,), jnp.float32)
    times = jnp.asarray(times, jnp.float32)
    if times.shape != (T,):
        raise ValueError(f"times: expected shape [{T}], got {times.shape}")
    if int(max_rays) < 1:
        raise ValueError(f"max_rays must be positive, got {max_rays}")
    chunk = max(1, int(max_rays) // (H * W))
    return _render_frames_jit(scene, K, c2w, times, (H, W), bool(shadows), min(chunk, T))
