"""Evaluation: image metrics (:mod:`mirage_jax.eval.metrics`: PSNR, masked PSNR, SSIM)."""

from mirage_jax.eval.metrics import mse, psnr, ssim

__all__ = ["mse", "psnr", "ssim"]
