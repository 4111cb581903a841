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
in the stored layout with matching shardings and restacked / sliced on device.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

FORMAT_VERSION = 1

__all__ = ["save_model", "restore_model", "read_metadata", "is_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the target model (paths, shapes) or is malformed."""


def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


def _flat_vars(state) -> dict[str, nnx.Variable]:
    return {_path_str(p): v for p, v in nnx.to_flat_state(state)}


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
        raise FileExistsError(f"{directory} exists; pass force=True to overwrite")
    flat = {k: v.get_value() for k, v in _flat_vars(nnx.state(model, filter)).items()}
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


def _layer_split(key: str):
    """All ways to write ``key`` as ``prefix.<int>.rest`` -> list of (prefix, i, rest)."""
    parts = key.split(".")
    return [(".".join(parts[:j]), int(parts[j]), ".".join(parts[j + 1 :]))
            for j in range(1, len(parts) - 1) if re.fullmatch(r"\d+", parts[j])]


def _plan(stored: Mapping[str, dict], targets: Mapping[str, tuple]):
    """Maps target keys to stored keys: ``direct``, ``stack`` (per-layer -> stacked) or
    ``slice`` (stacked -> per-layer). Returns (plan, errors)."""
    plan: dict[str, tuple] = {}
    used: set[str] = set()
    errors: list[str] = []
    stacked_groups: dict[str, list[tuple[int, str]]] = {}
    for key in stored:
        for prefix, i, rest in _layer_split(key):
            stacked_groups.setdefault(f"{prefix}.{rest}", []).append((i, key))
    for key, shape in targets.items():
        if key in stored:
            if tuple(stored[key]["shape"]) != tuple(shape):
                errors.append(f"{key}: stored {tuple(stored[key]['shape'])}, model wants {tuple(shape)}")
            plan[key] = ("direct", key)
            used.add(key)
            continue
        # Target stacked, stored per layer?
        found = False
        if key in stacked_groups:
            indexed = sorted(stacked_groups[key])
            layers = [k for _, k in indexed]
            if [i for i, _ in indexed] == list(range(shape[0])) and all(tuple(stored[k]["shape"]) == tuple(shape[1:]) for k in layers):
                plan[key] = ("stack", layers)
                used.update(layers)
                found = True
        # Target per layer, stored stacked?
        if not found:
            for prefix, i, rest in _layer_split(key):
                skey = f"{prefix}.{rest}"
                if skey in stored and tuple(stored[skey]["shape"])[1:] == tuple(shape) and i < stored[skey]["shape"][0]:
                    plan[key] = ("slice", skey, i)
                    used.add(skey)
                    found = True
                    break
        if not found:
            errors.append(f"{key} {tuple(shape)}: not in the checkpoint")
    unexpected = sorted(set(stored) - used)
    if unexpected:
        errors.append(f"checkpoint parameters the model does not have: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    return plan, errors


def _layer_sharding(sharding, drop_leading: bool):
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = tuple(sharding.spec)
    spec = spec[1:] if drop_leading else (None,) + spec
    return NamedSharding(sharding.mesh, P(*spec))


_DEVICE_FNS: dict = {}


def _stack(*xs):
    return jnp.stack(xs)


def _slice(s, i):
    return jax.lax.dynamic_index_in_dim(s, i, 0, keepdims=False)


def _device_fn(kind: str, sharding):
    """Jitted restack / slice with the target sharding, cached (one compile per shape)."""
    key = (kind, sharding)
    if key not in _DEVICE_FNS:
        _DEVICE_FNS[key] = jax.jit(_stack if kind == "stack" else _slice, out_shardings=sharding)
    return _DEVICE_FNS[key]


def restore_model(
    directory,
    model: nnx.Module | Callable[[], nnx.Module],
    *,
    mesh: Mesh | None = None,
    rules="fsdp",
    filter=nnx.Param,
) -> nnx.Module:
    """Restores parameters into a new model built like ``model`` (a factory, or an abstract /
    concrete module used only for its structure), sharded over ``mesh`` with the logical
    ``rules`` (or on the default device without a mesh). Raises :class:`CheckpointError` when
    paths or shapes do not fit."""
    directory = Path(directory).absolute()
    meta = _read_raw_metadata(directory)
    stored = meta["params"]
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(model) if callable(model) and not isinstance(model, nnx.Module) else model
        graphdef, params, rest = nnx.split(abstract, filter, ...)
    if jax.tree.leaves(rest):
        raise CheckpointError("the model holds non-parameter state; restore_model restores parameters only")
    flat = _flat_vars(params)
    if mesh is not None:
        from mirage_jax.sharding import state_shardings

        shardings = {k: v.get_value() for k, v in _flat_vars(state_shardings(params, mesh, rules)).items()}
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = {k: device for k in flat}
    targets = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    dtypes = {k: v.get_value().dtype for k, v in flat.items()}
    plan, errors = _plan(stored, targets)
    if errors:
        raise CheckpointError(f"{directory} does not fit the model:\n  " + "\n  ".join(errors))

    # What to read, in the stored layout, with shardings matching the targets.
    read: dict[str, jax.ShapeDtypeStruct] = {}
    for key, step in plan.items():
        if step[0] == "direct":
            read[key] = jax.ShapeDtypeStruct(targets[key], dtypes[key], sharding=shardings[key])
        elif step[0] == "stack":
            for skey in step[1]:
                read[skey] = jax.ShapeDtypeStruct(targets[key][1:], dtypes[key], sharding=_layer_sharding(shardings[key], True))
        else:
            skey = step[1]
            read.setdefault(skey, jax.ShapeDtypeStruct(tuple(stored[skey]["shape"]), dtypes[key],
                                                        sharding=_layer_sharding(shardings[key], False)))
    restored = _checkpointer().restore(
        directory, args=ocp.args.Composite(state=ocp.args.StandardRestore(_nest(read)))
    )
    arrays = _unnest(restored["state"])

    for key, var in flat.items():
        step = plan[key]
        if step[0] == "direct":
            value = arrays[key]
        elif step[0] == "stack":
            value = _device_fn("stack", shardings[key])(*[arrays[k] for k in step[1]])
        else:
            value = _device_fn("slice", shardings[key])(arrays[step[1]], jnp.int32(step[2]))
        var.set_value(value)
    del arrays, restored
    return nnx.merge(graphdef, params)
