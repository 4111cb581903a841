"""Checkpoint conversion (diffusers / original Wan naming <-> mirage_jax NNX state)."""
