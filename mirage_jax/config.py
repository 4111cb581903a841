"""Turning ml_collections configs (configs/*.py) into the typed objects the code uses."""

from __future__ import annotations

import importlib
import importlib.util
import os

import ml_collections


def load_config(name_or_path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``"tiny"`` / ``"wan22_ti2v_5b"`` (modules of configs/) or a path to a .py with get_config.

    ``"name:arg"`` passes ``arg`` to ``get_config`` (big_vision style).
    """
    if arg is None and ":" in name_or_path and not os.path.exists(name_or_path):
        name_or_path, arg = name_or_path.split(":", 1)
    if name_or_path.endswith(".py"):
        if not os.path.exists(name_or_path):
            raise FileNotFoundError(f"config file {name_or_path} does not exist")
        spec = importlib.util.spec_from_file_location("_mirage_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(f"configs.{name_or_path}")
        except ModuleNotFoundError as e:
            raise ValueError(f"unknown config {name_or_path!r} (no module configs/{name_or_path}.py)") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {name_or_path} has no get_config()")
    return module.get_config(arg)


def _plain(d) -> dict:
    d = d.to_dict() if isinstance(d, ml_collections.ConfigDict) else dict(d)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def dit_config(cfg: ml_collections.ConfigDict):
    from mirage_jax.models.wan.dit import WanDiTConfig

    return WanDiTConfig(**_plain(cfg.dit))


def vae_config(cfg: ml_collections.ConfigDict):
    from mirage_jax.models.wan.vae import WanVAEConfig

    return WanVAEConfig(**_plain(cfg.vae))


def dit_runtime(cfg: ml_collections.ConfigDict):
    from mirage_jax.models.wan.layers import WanRuntime

    return WanRuntime(**_plain(cfg.runtime))
