"""Wan2.1 / Wan2.2 diffusion transformer and VAE in Flax NNX (diffusers-equivalent)."""
