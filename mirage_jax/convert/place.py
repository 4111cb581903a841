"""One weight-placement module: host arrays (or lazy readers) -> (sharded) NNX parameters.

:func:`place` is the only way the project puts weights into a model: the checkpoint loaders
(diffusers / original Wan DiT and VAE), the orbax restore (:mod:`mirage_jax.checkpoint`, which
keeps orbax's own sharded read but uses :func:`plan_layout`, :func:`target_shardings` and the
device restack / slice here) and everything that comes next (control branch, LoRA, text
encoder)::

    abstract = nnx.eval_shape(lambda: MyModel(config, runtime))      # no memory
    model = place(abstract, {"blocks.0.attn1.to_q.kernel": array_or_lazy, ...}, mesh=mesh, rules="fsdp")

Every parameter is created directly in its target sharding (from its logical axis names,
:mod:`mirage_jax.sharding`) with ``jax.make_array_from_callback``: each device receives only its
slice of the host array, so no device ever holds a full copy, and values are cast to the target
dtype slice by slice on the host.

Layer layouts: a stack of layers is stored either per layer (``blocks.<i>.X``) or stacked
(``blocks.X`` with a leading layer axis, the ``scan_layers`` layout); :func:`plan_layout` maps
any source layout onto any target layout for every prefix (``blocks``, ``control.blocks``,
LoRA weights ...), and :func:`stack_layers` / :func:`unstack_layers` convert host dicts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from mirage_jax.convert.table import ConversionError

__all__ = [
    "Lazy",
    "place",
    "plan_layout",
    "target_shardings",
    "layer_sharding",
    "stack_on_device",
    "slice_on_device",
    "stack_layers",
    "unstack_layers",
    "flat_variables",
]


@dataclasses.dataclass(frozen=True)
class Lazy:
    """A host array read on demand: ``shape`` is known up front, ``read()`` returns the array
    (e.g. a checkpoint tensor converted to the model's layout). :func:`place` reads each one once."""

    shape: tuple[int, ...]
    read: Callable[[], Any]


def path_str(path) -> str:
    return ".".join(str(p) for p in path)


def flat_variables(model_or_state, filter=nnx.Param) -> dict[str, nnx.Variable]:
    """``{dotted NNX path: Variable}`` of a (possibly abstract) model or state."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, filter)
    return {path_str(p): v for p, v in nnx.to_flat_state(state)}


# ------------------------------------------------------------------------------------------------
# Layer layouts (generic over the prefix).
# ------------------------------------------------------------------------------------------------


def _layer_splits(key: str) -> list[tuple[str, int, str]]:
    """Every way to read ``key`` as ``prefix.<int>.rest`` -> [(prefix, i, rest)]."""
    parts = key.split(".")
    return [(".".join(parts[:j]), int(parts[j]), ".".join(parts[j + 1 :]))
            for j in range(1, len(parts) - 1) if parts[j].isdigit()]


def unstack_layers(flat: Mapping[str, Any], prefix: str = "blocks") -> dict[str, Any]:
    """Stacked ``{prefix}.X`` ``[L, ...]`` -> per-layer ``{prefix}.<i>.X`` (other keys unchanged).

    Values are arrays (sliced with ``value[i]``) or shapes (tuples, giving per-layer shapes).
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "."):
            out[key] = value
            continue
        rest = key[len(prefix) + 1 :]
        if isinstance(value, tuple):
            out.update({f"{prefix}.{i}.{rest}": tuple(value[1:]) for i in range(value[0])})
        else:
            out.update({f"{prefix}.{i}.{rest}": value[i] for i in range(value.shape[0])})
    return out


def stack_layers(flat: Mapping[str, Any], prefix: str = "blocks", stack: Callable = np.stack) -> dict[str, Any]:
    """Per-layer ``{prefix}.<i>.X`` -> stacked ``{prefix}.X`` ``[L, ...]`` (layers 0..L-1 required)."""
    out: dict[str, Any] = {}
    groups: dict[str, dict[int, Any]] = {}
    for key, value in flat.items():
        split = [s for s in _layer_splits(key) if s[0] == prefix]
        if split:
            groups.setdefault(split[0][2], {})[split[0][1]] = value
        else:
            out[key] = value
    for rest, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ConversionError(f"{prefix}.*.{rest}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
        out[f"{prefix}.{rest}"] = stack([layers[i] for i in range(len(layers))])
    return out


def plan_layout(available: Mapping[str, tuple], wanted: Mapping[str, tuple]) -> tuple[dict[str, tuple], list[str]]:
    """How to build each wanted ``{key: shape}`` from the available ``{key: shape}``.

    Returns ``(plan, errors)``; ``plan[key]`` is ``("direct", key)``, ``("stack", [k_0, ...,
    k_{L-1}])`` (target stacked, source per layer) or ``("slice", k, i)`` (target per layer,
    source stacked). ``errors`` lists missing, mis-shaped and unused source keys.
    """
    plan: dict[str, tuple] = {}
    used: set[str] = set()
    errors: list[str] = []
    per_layer: dict[str, list[tuple[int, str]]] = {}
    for key in available:
        for prefix, i, rest in _layer_splits(key):
            per_layer.setdefault(f"{prefix}.{rest}", []).append((i, key))
    for key, shape in wanted.items():
        shape = tuple(shape)
        if key in available:
            if tuple(available[key]) != shape:
                errors.append(f"{key}: source {tuple(available[key])}, model wants {shape}")
            plan[key] = ("direct", key)
            used.add(key)
            continue
        found = False
        if key in per_layer and shape:
            indexed = sorted(per_layer[key])
            layers = [k for _, k in indexed]
            if [i for i, _ in indexed] == list(range(shape[0])) and all(tuple(available[k]) == shape[1:] for k in layers):
                plan[key] = ("stack", layers)
                used.update(layers)
                found = True
        if not found:
            for prefix, i, rest in _layer_splits(key):
                skey = f"{prefix}.{rest}"
                if skey in available and tuple(available[skey])[1:] == shape and i < available[skey][0]:
                    plan[key] = ("slice", skey, i)
                    used.add(skey)
                    found = True
                    break
        if not found:
            errors.append(f"{key} {shape}: missing from the source")
    unexpected = sorted(set(available) - used)
    if unexpected:
        errors.append(f"source entries the model does not have: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    return plan, errors


# ------------------------------------------------------------------------------------------------
# Shardings and device-side layout changes.
# ------------------------------------------------------------------------------------------------


def target_shardings(abstract_state, mesh: Mesh | None, rules=None) -> dict[str, jax.sharding.Sharding]:
    """``{dotted path: Sharding}`` of every variable: from its logical names over ``mesh``
    (``rules`` default ``"fsdp"``), or the default device without a mesh."""
    if mesh is None:
        device = SingleDeviceSharding(jax.devices()[0])
        return {k: device for k in flat_variables(abstract_state)}
    from mirage_jax.sharding import state_shardings

    shardings = state_shardings(abstract_state, mesh, "fsdp" if rules is None else rules)
    return {k: v.get_value() for k, v in flat_variables(shardings).items()}


def layer_sharding(sharding, drop_leading: bool):
    """The sharding of one layer of a stacked array (``drop_leading``) or of a stack of
    per-layer arrays (leading layer axis replicated)."""
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = tuple(sharding.spec)
    return NamedSharding(sharding.mesh, P(*(spec[1:] if drop_leading else (None,) + spec)))


_DEVICE_FNS: dict = {}


def _device_fn(kind: str, sharding):
    key = (kind, sharding)
    if key not in _DEVICE_FNS:
        fn = (lambda *xs: jnp.stack(xs)) if kind == "stack" else (
            lambda s, i: jax.lax.dynamic_index_in_dim(s, i, 0, keepdims=False))
        _DEVICE_FNS[key] = jax.jit(fn, out_shardings=sharding)
    return _DEVICE_FNS[key]


def stack_on_device(layers, sharding) -> jax.Array:
    """``[L, ...]`` from L device arrays, created in ``sharding``."""
    return _device_fn("stack", sharding)(*layers)


def slice_on_device(stacked: jax.Array, i: int, sharding) -> jax.Array:
    """Layer ``i`` of a stacked device array, created in ``sharding``."""
    return _device_fn("slice", sharding)(stacked, jnp.int32(i))


# ------------------------------------------------------------------------------------------------
# Placement.
# ------------------------------------------------------------------------------------------------


def _read(value, key: str, shape: tuple):
    """The host array of a source value (a :class:`Lazy` is read here), shape-checked."""
    host = value.read() if isinstance(value, Lazy) else value
    if tuple(np.shape(host)) != tuple(shape):
        raise ConversionError(f"{key}: source gives shape {tuple(np.shape(host))}, expected {tuple(shape)}")
    return host


def _put(host, shape: tuple, dtype, sharding) -> jax.Array:
    """``host`` as a jax.Array in ``sharding``; each device gets (and casts) only its slice."""

    def piece(index):
        a = np.asarray(host[index])
        return a if a.dtype == dtype else a.astype(dtype)

    return jax.make_array_from_callback(tuple(shape), sharding, piece)


def place(
    abstract: nnx.Module,
    arrays: Mapping[str, Any],
    *,
    mesh: Mesh | None = None,
    rules=None,
    dtype=None,
    what: str = "checkpoint",
) -> nnx.Module:
    """The model ``abstract`` describes, holding ``arrays``, every parameter in its target sharding.

    Args:
      abstract: the model from ``nnx.eval_shape(lambda: Model(...))`` (a concrete model works
        too; only its structure, shapes, dtypes and logical axis names are used).
      arrays: ``{dotted NNX path: value}`` for every variable; a value is a host array
        (NumPy, memory-mapped, anything sliceable with ``.shape``) or a :class:`Lazy` reader.
        Per-layer (``blocks.<i>.X``) and stacked (``blocks.X``) layouts are both accepted
        whatever the model's own layout (:func:`plan_layout`).
      mesh, rules: shard over ``mesh`` with the logical ``rules`` (preset name or table,
        default ``"fsdp"``); without a mesh, everything goes to the default device.
      dtype: store every parameter in this dtype (default: each variable's own dtype).
      what: names the source in error messages.

    Raises:
      ConversionError: a missing, mis-shaped or unused entry (all listed).
    """
    graphdef, state = nnx.split(abstract)
    flat = flat_variables(state)
    targets = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    dtypes = {k: np.dtype(dtype if dtype is not None else v.get_value().dtype) for k, v in flat.items()}
    plan, errors = plan_layout({k: tuple(np.shape(v) if not isinstance(v, Lazy) else v.shape) for k, v in arrays.items()}, targets)
    if errors:
        raise ConversionError(f"{what} does not fit the model:\n  " + "\n  ".join(errors))
    shardings = target_shardings(state, mesh, rules)
    cached: tuple[str | None, Any] = (None, None)  # the last stacked source read for slicing
    for key, var in flat.items():
        step, shape, dt, sh = plan[key], targets[key], dtypes[key], shardings[key]
        if step[0] == "direct":
            value = _put(_read(arrays[key], key, shape), shape, dt, sh)
        elif step[0] == "stack":
            layer_sh = layer_sharding(sh, True)
            value = stack_on_device([_put(_read(arrays[k], k, shape[1:]), shape[1:], dt, layer_sh) for k in step[1]], sh)
        else:
            skey, i = step[1], step[2]
            if cached[0] != skey:
                src = arrays[skey]
                cached = (skey, _read(src, skey, src.shape if isinstance(src, Lazy) else np.shape(src)))
            value = _put(cached[1][i], shape, dt, sh)
        var.set_value(value)
    return nnx.merge(graphdef, state)
