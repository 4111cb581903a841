"""Metrics in JAX: images (MSE, PSNR optionally over a pixel mask, SSIM), depth (AbsRel), revisits
(closed-loop PSNR) and 3D consistency (warping with ground-truth depth and poses).

Images are channels-last ``[..., H, W, C]`` with any leading batch axes; every metric returns
one value per image, float32 ``[...]``. Integer images (uint8 photos) are compared exactly in
float32; give ``max_val`` in their units (255 for uint8, 1 for images in [0, 1]).

SSIM is ``dm_pix.ssim`` (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03: Wang et al. 2004).
MSE and PSNR are written here because ``dm_pix.psnr`` has no mask and assumes ``max_val`` 1;
without a mask and with ``max_val=1`` they equal ``dm_pix.psnr`` (tested).

Validation happens on concrete inputs: shapes always, and an empty mask (no pixel to average,
i.e. a 0 / 0) raises :class:`~mirage_jax.errors.InputError`. Under ``jax.jit`` the mask's
values cannot be inspected: an image whose mask selects nothing then gets NaN.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mirage_jax.errors import InputError
from mirage_jax.memory import rgb_cache

__all__ = ["mse", "psnr", "ssim", "abs_rel", "pose_distance", "revisit_pairs", "closed_loop_psnr", "warp_consistency"]


def _pair(a, b, name: str) -> tuple[jax.Array, jax.Array]:
    """Both images as float32 arrays [..., H, W, C] of the same shape; else InputError."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{name}: image shapes differ, {a.shape} vs {b.shape}")
    if a.ndim < 3:
        raise InputError(f"{name}: expected images [..., H, W, C], got shape {a.shape}")
    for label, x in (("a", a), ("b", b)):
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise InputError(f"{name}: {label} has dtype {x.dtype}; expected an integer or float image")
    return a.astype(jnp.float32), b.astype(jnp.float32)


def _check_max_val(max_val, name: str) -> float:
    if not (np.isscalar(max_val) and np.isfinite(max_val) and max_val > 0):
        raise InputError(f"{name}: max_val must be a positive finite number, got {max_val!r}")
    return float(max_val)


def mse(a, b, mask=None) -> jax.Array:
    """Mean squared error per image: images [..., H, W, C] -> float32 [...].

    With ``mask`` bool [..., H, W] (or [H, W], broadcast over the leading axes) the mean runs
    over all channels of the pixels where it is True (module docstring for an empty mask).
    """
    a, b = _pair(a, b, "mse")
    sq = jnp.square(a - b)
    if mask is None:
        return jnp.mean(sq, axis=(-3, -2, -1))
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise InputError(f"mse: mask must be bool [..., H, W], got dtype {mask.dtype}")
    try:
        mask = jnp.broadcast_to(mask, a.shape[:-1])
    except ValueError as err:
        raise InputError(f"mse: mask shape {mask.shape} does not match images {a.shape[:-1]} (+ channels)") from err
    try:
        empty = ~np.asarray(mask).any(axis=(-2, -1))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):  # traced: see the docstring
        empty = None
    if empty is not None and empty.any():
        where = "" if empty.ndim == 0 else f" for image(s) {np.argwhere(empty).tolist()}"
        raise InputError(f"mse: the mask selects no pixel{where}")
    m = mask[..., None].astype(jnp.float32)
    return jnp.sum(sq * m, axis=(-3, -2, -1)) / (jnp.sum(m, axis=(-3, -2, -1)) * a.shape[-1])


def psnr(a, b, *, max_val: float = 1.0, mask=None) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(max_val**2 / mse)``.

    Images [..., H, W, C] -> float32 [...]; identical images give +inf. ``mask`` bool
    [..., H, W] restricts the error to those pixels (:func:`mse`).
    """
    max_val = _check_max_val(max_val, "psnr")
    err = mse(a, b, mask)
    return 10.0 * jnp.log10(jnp.float32(max_val * max_val) / err)


def ssim(a, b, *, max_val: float = 1.0) -> jax.Array:
    """Structural similarity per image (``dm_pix.ssim``, standard parameters): images
    [..., H, W, C] -> float32 [...] (mean of the SSIM map over pixels and channels).

    H and W must be at least the window size 11 (a smaller image has no valid window).
    """
    max_val = _check_max_val(max_val, "ssim")
    a, b = _pair(a, b, "ssim")
    if min(a.shape[-3:-1]) < 11:
        raise InputError(f"ssim: images must be at least 11 x 11 (the Gaussian window), got {a.shape[-3:-1]}")
    lead = a.shape[:-3]
    flat = (-1,) + a.shape[-3:]
    out = dm_pix.ssim(a.reshape(flat), b.reshape(flat), max_val=max_val)
    return out.reshape(lead)


# --------------------------------------------------------------------------------------------
# Depth, revisits (closed loops) and 3D consistency.
# --------------------------------------------------------------------------------------------


def abs_rel(pred, target, mask=None) -> jax.Array:
    """Depth AbsRel per map: the mean of ``|d - d*| / d*`` over valid pixels.

    pred, target: z-depth [..., H, W] (pred the model's, target the ground truth); mask:
    optional bool [..., H, W] (or [H, W]) of pixels to count. A pixel is valid where the target
    is finite and > 0 (0 marks unknown depth, e.g. the renderer's sky) and the mask is True.
    Returns float32 [...]. A non-finite prediction on a valid pixel gives NaN (never skipped);
    a map without a valid pixel raises InputError (NaN under jit, as :func:`mse`).
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape or pred.ndim < 2:
        raise InputError(f"abs_rel: expected depth maps [..., H, W] of one shape, got {pred.shape} and {target.shape}")
    for label, x in (("pred", pred), ("target", target)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise InputError(f"abs_rel: {label} has dtype {x.dtype}; expected float z-depth")
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    valid = jnp.isfinite(target) & (target > 0)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise InputError(f"abs_rel: mask must be bool [..., H, W], got dtype {mask.dtype}")
        try:
            valid = valid & jnp.broadcast_to(mask, valid.shape)
        except ValueError as err:
            raise InputError(f"abs_rel: mask shape {mask.shape} does not match depth {target.shape}") from err
    try:
        empty = ~np.asarray(valid).any(axis=(-2, -1))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        empty = None
    if empty is not None and empty.any():
        where = "" if empty.ndim == 0 else f" for map(s) {np.argwhere(empty).tolist()}"
        raise InputError(f"abs_rel: no valid ground-truth depth (finite, > 0, in the mask){where}")
    safe = jnp.where(valid, target, 1.0)
    err = jnp.where(valid, jnp.abs(pred - target) / safe, 0.0)
    return jnp.sum(err, axis=(-2, -1)) / jnp.sum(valid, axis=(-2, -1))


def pose_distance(c2w_a, c2w_b) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (degrees) and translation (world units) between camera-to-world poses.

    c2w_a, c2w_b: [..., 4, 4] (broadcasting). The rotation is the angle of ``R_a^T R_b``,
    ``arccos((trace - 1) / 2)``; the translation is ``|t_a - t_b|`` between the camera centres.
    Host-side float64 NumPy: it selects frames, it is not a traced computation.
    """
    a = np.asarray(c2w_a, np.float64)
    b = np.asarray(c2w_b, np.float64)
    if a.shape[-2:] != (4, 4) or b.shape[-2:] != (4, 4):
        raise InputError(f"pose_distance: expected poses [..., 4, 4], got {a.shape} and {b.shape}")
    rel = np.swapaxes(a[..., :3, :3], -1, -2) @ b[..., :3, :3]
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos)), np.linalg.norm(a[..., :3, 3] - b[..., :3, 3], axis=-1)


def revisit_pairs(c2w, *, max_rotation_deg: float = 5.0, max_translation: float = 0.1,
                  leave_factor: float = 2.0) -> np.ndarray:
    """Frames where the camera returns to a pose seen earlier: int64 [P, 2] rows (i, j), i < j.

    c2w: [T, 4, 4] camera-to-world. With ``score(a, b) = max(rotation / max_rotation_deg,
    translation / max_translation)`` (:func:`pose_distance`), frame j *returns* to an earlier
    frame i when

    * ``score(i, j) <= 1``: the same view within the thresholds (defaults 5 degrees and 0.1
      world units, i.e. 10 cm in the procedural worlds, whose unit is the metre), and
    * the camera left in between: some frame k with i < k < j has ``score(k, j) > leave_factor``
      (a camera that merely moves slowly is not returning).

    Each returning j appears once, paired with the qualifying i of the smallest score (ties: the
    earliest). An out-and-back path of T frames pairs frame T - 1 - k with frame k once the far
    end is more than ``leave_factor`` thresholds away; a full orbit pairs its last frame with
    the first (the paper's closed loop, "return to start").
    """
    P = np.asarray(c2w, np.float64)
    if P.ndim != 3 or P.shape[1:] != (4, 4):
        raise InputError(f"revisit_pairs: c2w must be [T, 4, 4], got shape {P.shape}")
    for name, v in (("max_rotation_deg", max_rotation_deg), ("max_translation", max_translation),
                    ("leave_factor", leave_factor)):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"revisit_pairs: {name} must be a positive number, got {v!r}")
    if leave_factor < 1:
        raise InputError(f"revisit_pairs: leave_factor must be >= 1 (leaving means farther than returning), got {leave_factor}")
    rot, trans = pose_distance(P[:, None], P[None, :])
    score = np.maximum(rot / max_rotation_deg, trans / max_translation)  # [T, T], symmetric
    pairs = []
    for j in range(2, P.shape[0]):
        # left[i] = max over i < k < j of score(k, j): a running maximum from j - 1 down.
        s = score[:j, j]
        left = np.concatenate([np.maximum.accumulate(s[::-1])[::-1][1:], [-np.inf]])
        ok = (s <= 1.0) & (left > leave_factor)
        if ok.any():
            cand = np.flatnonzero(ok)
            pairs.append((int(cand[np.argmin(s[cand])]), j))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def closed_loop_psnr(generated, ground_truth, c2w, *, max_val: float = 255.0, mask=None, **criteria) -> dict:
    """Closed-loop PSNR (the paper's PSNRc) over the frames where the camera returns.

    generated, ground_truth: videos [T, H, W, C] (uint8 with ``max_val`` 255, or floats);
    c2w: [T, 4, 4]; mask: optional bool [T, H, W] of pixels to count (e.g. NOT dynamic: moving
    objects are not expected to be where they were); a pair (i, j) counts the pixels kept in
    both frames. ``criteria``: :func:`revisit_pairs`' thresholds.

    Returns dict(pairs int64 [P, 2] (earlier i, later j), psnr_vs_earlier float32 [P]: generated
    frame j against the earlier *generated* frame i (does the model show the place it showed
    before?), psnr_vs_gt float32 [P]: generated frame j against the ground truth at j, and their
    means ``mean_vs_earlier`` / ``mean_vs_gt`` (None when the path has no revisit)).
    """
    gen, gt = _pair(generated, ground_truth, "closed_loop_psnr")
    if gen.ndim != 4:
        raise InputError(f"closed_loop_psnr: expected videos [T, H, W, C], got shape {gen.shape}")
    T = gen.shape[0]
    if np.shape(c2w) != (T, 4, 4):
        raise InputError(f"closed_loop_psnr: c2w must be [{T}, 4, 4] (one pose per frame), got {np.shape(c2w)}")
    pairs = revisit_pairs(c2w, **criteria)
    out = dict(pairs=pairs, psnr_vs_earlier=np.zeros((0,), np.float32), psnr_vs_gt=np.zeros((0,), np.float32),
               mean_vs_earlier=None, mean_vs_gt=None)
    if len(pairs) == 0:
        return out
    i, j = pairs[:, 0], pairs[:, 1]
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != gen.shape[:3] or m.dtype != np.bool_:
            raise InputError(f"closed_loop_psnr: mask must be bool {list(gen.shape[:3])}, got {m.dtype} {list(m.shape)}")
        m = m[i] & m[j]
    out["psnr_vs_earlier"] = np.asarray(psnr(gen[j], gen[i], max_val=max_val, mask=m))
    out["psnr_vs_gt"] = np.asarray(psnr(gen[j], gt[j], max_val=max_val, mask=None if m is None else np.asarray(mask)[j]))
    out["mean_vs_earlier"] = float(np.mean(out["psnr_vs_earlier"]))
    out["mean_vs_gt"] = float(np.mean(out["psnr_vs_gt"]))
    return out


@jax.jit
def _warp_pairs(frames, depth, keep, K, c2w, src, dst, occlusion_tol):
    T, H, W, _ = frames.shape

    def one(pair):
        a, b = pair
        cache = rgb_cache.empty(H * W, jnp.float32)
        cache = rgb_cache.write(cache, frames[a], depth[a], K[a], c2w[a], ~keep[a], validate=False)
        r = rgb_cache.render(cache, K[b], c2w[b], (H, W), validate=False)
        d_b = depth[b]
        agree = (d_b > 0) & (jnp.abs(r.depth - d_b) <= occlusion_tol * d_b)
        hit = r.hit & keep[b] & jnp.where(occlusion_tol >= 0, agree, True)
        m = hit[..., None].astype(jnp.float32)
        sq = jnp.sum(jnp.square(r.image - frames[b]) * m)
        n = jnp.sum(m)
        return sq / (n * frames.shape[-1]), n / (H * W)

    return jax.lax.map(one, (src, dst))


def warp_consistency(frames, depth, intrinsics, cam2world, pairs, *, keep=None, max_val: float = 255.0,
                     occlusion_tol: float | None = 0.05) -> dict:
    """3D-consistency error: frame a warped into frame b with ground-truth depth and poses,
    compared with frame b on the pixels the warp reaches.

    Frame a is written as one point per pixel (its depth, ``intrinsics`` and ``cam2world``) into
    an RGB point cache and rendered at camera b, nearest point winning
    (:mod:`mirage_jax.memory.rgb_cache`: the memory's own back-projection, projection and
    deterministic z-buffer, rounded to the nearest pixel, no splat radius). A pixel counts when
    the warp hits it, both ends are kept (``keep``) and, unless ``occlusion_tol`` is None, the
    warped point's depth agrees with frame b's ground-truth depth within ``occlusion_tol``
    relative (the point is visible in b, not hidden behind something a cannot see).

    Args:
      frames: [T, H, W, 3] the video to check (uint8 with ``max_val`` 255, or float).
      depth: f32[T, H, W] ground-truth z-depth (0 = unknown, never warped).
      intrinsics: [3, 3] or [T, 3, 3] pixels; cam2world: [T, 4, 4] OpenCV.
      pairs: int [P, 2] rows (a, b).
      keep: optional bool [T, H, W] pixels to use (e.g. NOT dynamic).

    Returns dict(mse float32 [P] in ``max_val`` = 1 units (squared error / max_val**2, NaN
    where nothing is hit), psnr float32 [P] in dB, coverage float32 [P] (fraction of frame b's
    pixels counted), mean_mse / mean_psnr / mean_coverage over pairs with a hit).
    Identical views of a static scene give 0 (tests); on the renderer's ground truth the
    error is the resampling error of nearest-pixel warping.
    """
    max_val = _check_max_val(max_val, "warp_consistency")
    frames = jnp.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"warp_consistency: frames must be [T, H, W, 3], got shape {frames.shape}")
    T, H, W = frames.shape[:3]
    depth = np.asarray(depth)
    if depth.shape != (T, H, W) or not np.issubdtype(depth.dtype, np.floating):
        raise InputError(f"warp_consistency: depth must be float [{T}, {H}, {W}], got {depth.dtype} {list(depth.shape)}")
    K = np.asarray(intrinsics, np.float32)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (T, 3, 3))
    if K.shape != (T, 3, 3):
        raise InputError(f"warp_consistency: intrinsics must be [3, 3] or [{T}, 3, 3], got {list(K.shape)}")
    P = np.asarray(cam2world, np.float32)
    if P.shape != (T, 4, 4):
        raise InputError(f"warp_consistency: cam2world must be [{T}, 4, 4], got {list(P.shape)}")
    keep = np.ones((T, H, W), bool) if keep is None else np.asarray(keep)
    if keep.shape != (T, H, W) or keep.dtype != np.bool_:
        raise InputError(f"warp_consistency: keep must be bool [{T}, {H}, {W}], got {keep.dtype} {list(keep.shape)}")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise InputError(f"warp_consistency: pairs must be int [P, 2], got {pairs.dtype} {list(pairs.shape)}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= T):
        raise InputError(f"warp_consistency: pair frame indices must be in [0, {T}), got {pairs.min()}..{pairs.max()}")
    if occlusion_tol is not None and not (np.isfinite(occlusion_tol) and occlusion_tol >= 0):
        raise InputError(f"warp_consistency: occlusion_tol must be None or >= 0, got {occlusion_tol!r}")
    depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)  # inf (sky) = unknown, as 0
    if len(pairs) == 0:
        e = np.zeros((0,), np.float32)
        return dict(mse=e, psnr=e, coverage=e, mean_mse=None, mean_psnr=None, mean_coverage=None)
    scaled = frames.astype(jnp.float32) / max_val
    mse_, cov = _warp_pairs(scaled, jnp.asarray(depth), jnp.asarray(keep), jnp.asarray(K), jnp.asarray(P),
                            jnp.asarray(pairs[:, 0], jnp.int32), jnp.asarray(pairs[:, 1], jnp.int32),
                            jnp.float32(-1.0 if occlusion_tol is None else occlusion_tol))
    mse_, cov = np.asarray(mse_), np.asarray(cov)
    with np.errstate(divide="ignore"):  # an exact warp has MSE 0: PSNR +inf, as psnr()
        ps = (10.0 * np.log10(1.0 / mse_.astype(np.float64))).astype(np.float32)
    hit = cov > 0
    mean = lambda x: float(np.mean(x[hit])) if hit.any() else None  # noqa: E731
    return dict(mse=mse_, psnr=ps, coverage=cov, mean_mse=mean(mse_), mean_psnr=mean(ps), mean_coverage=mean(cov))
