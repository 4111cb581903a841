"""Checkpoint conversion (diffusers / original Wan naming <-> mirage_jax NNX state).

Declarative name tables (:mod:`.table`) with a coverage check; loaders return ``(config, model)``.
"""

from mirage_jax.convert.table import ConversionError  # noqa: F401
from mirage_jax.convert.wan_dit import (  # noqa: F401
    load_diffusers_transformer,
    load_transformer,
    load_wan_original_transformer,
    save_diffusers_transformer,
)
from mirage_jax.convert.wan_vae import (  # noqa: F401
    load_diffusers_vae,
    load_vae,
    load_wan_original_vae,
    save_diffusers_vae,
)
