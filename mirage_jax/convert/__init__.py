"""Checkpoint conversion (diffusers / original Wan naming <-> mirage_jax NNX state).

Declarative name tables (:mod:`.table`) with a coverage check; one weight-placement module,
:mod:`.place` (``from mirage_jax.convert.place import place``: the package does not re-export
the function, so ``mirage_jax.convert.place`` stays the module); loaders
``(path, *, runtime=None, mesh=None, rules=None)`` return ``(config, model)``.
"""

from mirage_jax.convert.table import ConversionError  # noqa: F401
from mirage_jax.convert.umt5 import load_umt5, load_wan_original_umt5, save_umt5  # noqa: F401
from mirage_jax.convert.wan_dit import (  # noqa: F401
    load_diffusers_transformer,
    load_transformer,
    load_wan_original_transformer,
    save_diffusers_transformer,
    transformer_from_state,
)
from mirage_jax.convert.wan_vae import (  # noqa: F401
    load_diffusers_vae,
    load_vae,
    load_wan_original_vae,
    save_diffusers_vae,
    vae_from_state,
)
from mirage_jax.convert.mirage import load_mirage, save_mirage_reference  # noqa: F401,E402
