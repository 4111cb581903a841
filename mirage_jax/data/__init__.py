"""Datasets and input pipelines.

Importing this package registers the TFDS builders ``synthetic_worlds``, ``geometry_npz``,
``re10k_clips`` (:mod:`mirage_jax.data.builders`) and ``vipe_clips`` (:mod:`mirage_jax.data.vipe`;
array_record, no TensorFlow). Everything else
is imported lazily on first attribute access, so ``import mirage_jax.data`` stays cheap (no
JAX, no grain):

  * :mod:`mirage_jax.data.pipeline`: grain pipelines (``PipelineConfig``, ``make_dataset``,
    ``make_iterator``, ``put_on_mesh``, iterator-state helpers);
  * :mod:`mirage_jax.data.export`: clips -> geometry.npz / WorldScore camera_data.json;
  * :mod:`mirage_jax.data.worlds`: the JAX ray-caster (``make_clip``);
  * :mod:`mirage_jax.data.real`: the Middlebury stereo pair.
"""

from __future__ import annotations

import importlib
from typing import Any

from mirage_jax.data import builders  # noqa: F401  (registers the TFDS builders)
from mirage_jax.data import vipe  # noqa: F401  (registers vipe_clips)
from mirage_jax.data.builders import (  # noqa: F401
    DataFileError,
    GeometryNpz,
    GeometryNpzConfig,
    Re10kClips,
    Re10kConfig,
    SyntheticWorlds,
    SyntheticWorldsConfig,
)

_LAZY_MODULES = ("pipeline", "export", "worlds", "real")
_LAZY_ATTRS = {
    "PipelineConfig": "pipeline",
    "make_dataset": "pipeline",
    "make_iterator": "pipeline",
    "make_data_source": "pipeline",
    "put_on_mesh": "pipeline",
    "iterator_state_to_bytes": "pipeline",
    "restore_iterator_state": "pipeline",
    "export_clip": "export",
    "export_geometry_npz": "export",
    "export_worldscore": "export",
    "make_clip": "worlds",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"mirage_jax.data.{name}")
    if name in _LAZY_ATTRS:
        module = importlib.import_module(f"mirage_jax.data.{_LAZY_ATTRS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'mirage_jax.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_ATTRS))
