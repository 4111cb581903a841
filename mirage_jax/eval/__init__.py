"""Evaluation: metrics (:mod:`.metrics`: PSNR, masked PSNR, SSIM, depth AbsRel, closed-loop PSNR,
3D-consistency warp), the held-out suite and :func:`evaluate` (:mod:`.suite`), the WorldScore
instance layout (:mod:`.worldscore`) and the ``mirage-jax evaluate`` command (:mod:`.cli`)."""

from mirage_jax.eval.metrics import (
    abs_rel,
    closed_loop_psnr,
    mse,
    pose_distance,
    psnr,
    revisit_pairs,
    ssim,
    warp_consistency,
)

__all__ = ["abs_rel", "closed_loop_psnr", "mse", "pose_distance", "psnr", "revisit_pairs", "ssim", "warp_consistency"]
