"""Orbax save / restore of NNX model parameters, restoring straight into sharded arrays.

A checkpoint directory holds two orbax items: ``state`` (the parameters as a nested dict with
string keys, one per NNX path component) and ``metadata`` (JSON: the caller's metadata, e.g.
``{"kind": "wan_dit", "config": {...}}``, plus every parameter's path, shape and dtype).

:func:`restore_model` builds the target model abstractly (``nnx.eval_shape``), derives every
parameter's target sharding from its logical axis names (:func:`mirage_jax.sharding.state_shardings`)
and asks orbax to read each array directly into that sharding: no device ever holds a full
copy. Stored dtypes are cast to the target model's dtypes (e.g. float32 -> bfloat16).

Layouts: a model saved with its blocks in a Python list (``blocks.<i>.X``) restores into a
model with stacked (scanned) blocks (``blocks.X [L, ...]``) and vice versa; the arrays are read
in the stored layout with matching shardings and restacked / sliced on device. The layout plan,
the shardings and the device restack / slice are those of :mod:`mirage_jax.convert.place`, the
one weight-placement module; only the read itself is orbax's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from mirage_jax.convert.place import flat_variables, layer_sharding, plan_layout, slice_on_device, stack_on_device, target_shardings
from mirage_jax.errors import FileFormatError

FORMAT_VERSION = 1

__all__ = ["save_model", "restore_model", "read_metadata", "is_checkpoint", "CheckpointError"]


class CheckpointError(FileFormatError):
    """A checkpoint that does not fit the target model (paths, shapes) or is malformed."""


def _nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def _unnest(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_unnest(v, key))
        else:
            out[key] = v
    return out


def _checkpointer() -> ocp.Checkpointer:
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def is_checkpoint(path) -> bool:
    """True when ``path`` is a directory written by :func:`save_model`."""
    path = Path(path)
    return path.is_dir() and (path / "state").is_dir() and (path / "metadata").exists()


def save_model(
    directory,
    model: nnx.Module,
    *,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
    filter=nnx.Param,
) -> Path:
    """Saves the ``filter`` variables (parameters) of ``model`` (sharded or not) to ``directory``.

    ``metadata`` must be JSON-serialisable. An existing directory is an error unless ``force``.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not force:
        raise CheckpointError(f"{directory} exists; pass force=True to overwrite")
    flat = {k: v.get_value() for k, v in flat_variables(nnx.state(model, filter)).items()}
    bad = [k for k in flat if any(c in k for c in "/\\")]
    if bad:
        raise CheckpointError(f"parameter paths with path separators cannot be saved: {bad}")
    meta = {
        "format_version": FORMAT_VERSION,
        "user": dict(metadata or {}),
        "params": {k: {"shape": list(np.shape(v)), "dtype": str(jnp.dtype(v.dtype))} for k, v in flat.items()},
    }
    json.dumps(meta)  # fail early, with a clear error, on non-JSON metadata
    _checkpointer().save(
        directory,
        args=ocp.args.Composite(state=ocp.args.StandardSave(_nest(flat)), metadata=ocp.args.JsonSave(meta)),
        force=force,
    )
    return directory


def _read_raw_metadata(directory: Path) -> dict:
    if not is_checkpoint(directory):
        raise CheckpointError(f"{directory} is not a mirage_jax orbax checkpoint (needs state/ and metadata)")
    out = _checkpointer().restore(directory, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    meta = out["metadata"]
    if not isinstance(meta, Mapping) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory}: unsupported checkpoint metadata (format_version {meta.get('format_version')!r})")
    return meta


def read_metadata(directory) -> dict:
    """The ``metadata`` given to :func:`save_model`."""
    return dict(_read_raw_metadata(Path(directory).absolute())["user"])


def restore_model(
    directory,
    model: nnx.Module | Callable[[], nnx.Module],
    *,
    mesh: Mesh | None = None,
    rules=None,
    filter=nnx.Param,
) -> nnx.Module:
    """Restores parameters into a new model built like ``model`` (a factory, or an abstract /
    concrete module used only for its structure), sharded over ``mesh`` with the logical
    ``rules`` (default ``"fsdp"``; or on the default device without a mesh). Raises :class:`CheckpointError` when
    paths or shapes do not fit."""
    directory = Path(directory).absolute()
    meta = _read_raw_metadata(directory)
    stored = meta["params"]
    abstract = nnx.eval_shape(model) if callable(model) and not isinstance(model, nnx.Module) else model
    graphdef, params, rest = nnx.split(abstract, filter, ...)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(rest)):
        raise CheckpointError("the model holds non-parameter state without values; restore_model restores "
                              "parameters only (give a model whose other variables hold values)")
    flat = flat_variables(params)
    shardings = target_shardings(params, mesh, rules)
    targets = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    dtypes = {k: v.get_value().dtype for k, v in flat.items()}
    plan, errors = plan_layout({k: tuple(v["shape"]) for k, v in stored.items()}, targets)
    if errors:
        raise CheckpointError(f"{directory} does not fit the model:\n  " + "\n  ".join(errors))

    # What to read, in the stored layout, with shardings matching the targets.
    read: dict[str, jax.ShapeDtypeStruct] = {}
    for key, step in plan.items():
        if step[0] == "direct":
            read[key] = jax.ShapeDtypeStruct(targets[key], dtypes[key], sharding=shardings[key])
        elif step[0] == "stack":
            for skey in step[1]:
                read[skey] = jax.ShapeDtypeStruct(targets[key][1:], dtypes[key], sharding=layer_sharding(shardings[key], True))
        else:
            skey = step[1]
            read.setdefault(skey, jax.ShapeDtypeStruct(tuple(stored[skey]["shape"]), dtypes[key],
                                                        sharding=layer_sharding(shardings[key], False)))
    restored = _checkpointer().restore(
        directory, args=ocp.args.Composite(state=ocp.args.StandardRestore(_nest(read)))
    )
    arrays = _unnest(restored["state"])

    for key, var in flat.items():
        step = plan[key]
        if step[0] == "direct":
            value = arrays[key]
        elif step[0] == "stack":
            value = stack_on_device([arrays[k] for k in step[1]], shardings[key])
        else:
            value = slice_on_device(arrays[step[1]], step[2], shardings[key])
        var.set_value(value)
    del arrays, restored
    return nnx.merge(graphdef, params, rest)
