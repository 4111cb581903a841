"""Logical axis names -> mesh axes.

Every parameter carries logical axis names in its ``out_sharding`` metadata, set with
:func:`mirage_jax.models.params.param` (metadata only: building a model never shards it).
A *rules table* maps each logical name to a mesh axis (or None = replicated). The presets:

  * ``fsdp``:    parameters sharded over the ``fsdp`` axis along their ``embed`` dimension
                 (or the channel dimension of convolutions), activations along the batch.
  * ``fsdp_tp``: as ``fsdp`` plus tensor parallelism over ``tp`` for attention heads and MLP
                 hidden units (Megatron layout: column-parallel in, row-parallel out).

Logical vocabulary used by the models: ``embed`` (model width), ``heads`` (heads x head_dim),
``mlp`` (FFN hidden), ``text_embed`` (text encoder width), ``freq`` (sinusoid width),
``conv_in`` / ``conv_out`` (convolution channels), ``latent`` (latent channels), ``lora``
(LoRA rank), ``vocab`` (token embedding rows), ``norm`` (norm scales), ``batch`` / ``seq``
(activations).
A dimension whose size the mesh axis does not divide is replicated (instead of failing deep
inside XLA), with a logged warning; :func:`state_shardings` (``report=True``) returns the list.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mirage_jax.errors import ConfigError

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

FSDP_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("heads", None),
    ("mlp", None),
    ("text_embed", None),
    ("freq", None),
    ("conv_in", None),
    ("latent", None),
    ("lora", None),
    ("vocab", None),
    ("norm", None),
    ("seq", None),
)

FSDP_TP_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("heads", "tp"),
    ("mlp", "tp"),
    ("text_embed", None),
    ("freq", None),
    ("conv_in", None),
    ("latent", None),
    ("lora", None),
    ("vocab", None),
    ("norm", None),
    ("seq", None),
)

PRESETS: Mapping[str, Rules] = {"fsdp": FSDP_RULES, "fsdp_tp": FSDP_TP_RULES}


def get_rules(rules: str | Rules) -> Rules:
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ConfigError(f"unknown sharding preset {rules!r}; choose from {sorted(PRESETS)}")
        return PRESETS[rules]
    return tuple(rules)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str], devices=None) -> Mesh:
    """A device mesh with Auto axis types (classic GSPMD sharding in current JAX)."""
    axis_types = (jax.sharding.AxisType.Auto,) * len(axis_names)
    if devices is not None:
        return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types, devices=devices)
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types)


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules: str | Rules,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
    dropped: list | None = None,
) -> P:
    """Maps logical axis names to a PartitionSpec with the rules table.

    Mesh axes absent from ``mesh``, already used by an earlier dimension, or not dividing the
    dimension's size are left out (that dimension is replicated); each such case is appended
    to ``dropped`` as a readable string when a list is given.
    """
    if names is None:
        return P()
    table = dict(get_rules(rules))
    used: set[str] = set()
    out = []
    for dim, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ConfigError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept = []
        for ax in axes:
            if mesh is not None and ax not in mesh.shape:
                continue
            if ax in used:
                continue
            kept.append(ax)
        if mesh is not None and shape is not None and kept:
            size = int(np.prod([mesh.shape[a] for a in kept]))
            if shape[dim] % size != 0:
                if dropped is not None:
                    dropped.append(f"dim {dim} ({name}, size {shape[dim]}) not divisible by {kept} ({size})")
                kept = []
        used.update(kept)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def _names_of(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


def state_shardings(state, mesh: Mesh, rules: str | Rules, report: bool = False):
    """NamedShardings for every variable of an nnx State (or abstract state), from its names.

    Returns a pytree of the same structure as ``state`` with NamedSharding leaves; with
    ``report=True`` also a dict path -> list of replicated-instead-of-sharded notes.
    """
    notes: dict[str, list[str]] = {}

    def one(path, var):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        dropped: list[str] = []
        spec = logical_to_spec(_names_of(var), rules, mesh, getattr(value, "shape", None), dropped)
        if dropped:
            notes[".".join(str(p) for p in path)] = dropped
        sharding = NamedSharding(mesh, spec)
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

    out = jax.tree_util.tree_map_with_path(
        lambda path, var: one(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path), var),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    if notes and not report:
        shown = "; ".join(f"{k}: {', '.join(v)}" for k, v in list(notes.items())[:5])
        logging.warning(
            "sharding: %d parameters keep a dimension replicated because the mesh axis does not divide it "
            "(%s%s); pass report=True to get the full list", len(notes), shown, " ..." if len(notes) > 5 else "")
    return (out, notes) if report else out


def create_sharded(
    factory: Callable[[], nnx.Module], mesh: Mesh | None = None, rules: str | Rules | None = None
) -> nnx.Module:
    """Builds ``factory()`` with one jitted initialiser, every parameter created directly in its
    target sharding (``mesh`` + logical ``rules``, default ``"fsdp"``) or on the default device
    (no mesh).

    The model is traced abstractly first (no memory); the initialiser is jitted with
    ``out_shardings``, so no full copy is ever materialised on one device. Jitting is also much
    faster than eager construction, which dispatches hundreds of small ops.
    """
    graphdef, abs_state = nnx.split(nnx.eval_shape(factory))
    init = lambda: nnx.state(factory())  # noqa: E731
    if mesh is None:
        state = jax.jit(init)()
    else:
        shardings = state_shardings(abs_state, mesh, "fsdp" if rules is None else rules)
        with jax.set_mesh(mesh):
            state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
