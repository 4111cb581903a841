"""Declarative checkpoint conversion: a name table of rules plus small per-pattern transforms.

A :class:`Rule` maps source keys (a regex with named groups, matched in full) to a target path
template (``str.format`` with the same groups), with a :class:`Transform` that is exactly
invertible so that export back to the source naming round-trips bit for bit.

:func:`convert` applies a rule list to a flat ``{source_key: array}`` mapping and checks
coverage against the target's flat ``{path: shape}``: every target parameter filled exactly
once, every source key used or matched by an explicit ``ignore`` pattern. Any violation raises
:class:`ConversionError` listing the missing, unexpected, duplicated and mis-shaped keys.
:func:`export` applies the same table backwards.

Target paths are NNX state paths joined with dots (``blocks.3.attn1.to_q.kernel``); see
:func:`flat_state_shapes`, :func:`flat_state_arrays` and :func:`load_flat_into`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Array = np.ndarray


class ConversionError(ValueError):
    """Coverage or shape mismatch between a checkpoint and a model."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible array transform: ``forward`` source -> target, ``inverse`` target -> source."""

    name: str
    forward: Callable[[Array], Array]
    inverse: Callable[[Array], Array]


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
# torch Linear weight [out, in] -> flax kernel [in, out].
LINEAR = Transform("linear", lambda x: np.ascontiguousarray(x.T), lambda x: np.ascontiguousarray(x.T))
# torch ConvNd weight [out, in, *k] -> flax kernel [*k, in, out].
CONV = Transform(
    "conv",
    lambda x: np.ascontiguousarray(np.moveaxis(x, (0, 1), (-1, -2))),
    lambda x: np.ascontiguousarray(np.moveaxis(x, (-1, -2), (0, 1))),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str  # regex over source keys with named groups, full match
    target: str  # target path template using the same group names
    transform: Transform = IDENTITY

    def _source_re(self) -> re.Pattern:
        return re.compile(self.source)

    def _target_re(self) -> re.Pattern:
        # Turn the target template into a regex: {name} -> (?P<name>[^.]+), the rest escaped.
        parts = re.split(r"\{(\w+)\}", self.target)
        out = []
        for i, part in enumerate(parts):
            out.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^.]+)")
        return re.compile("".join(out))

    def source_key(self, groups: Mapping[str, str]) -> str:
        # Replace each named group in the source regex by its value; the regex must be simple
        # (literal text with escaped dots and named groups), which every table here is.
        key = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: groups[m.group(1)], self.source)
        return key.replace("\\.", ".")


def _first_match(key: str, patterns: Sequence[tuple[re.Pattern, object]]):
    for pat, item in patterns:
        m = pat.fullmatch(key)
        if m is not None:
            return m, item
    return None, None


def _fmt(keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    head = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n    {head}{more}" if keys else " none"


def convert(
    source: Mapping[str, Array],
    rules: Sequence[Rule],
    target_shapes: Mapping[str, tuple],
    ignore: Sequence[str] = (),
    what: str = "checkpoint",
) -> dict[str, Array]:
    """Converts a flat source mapping to flat target arrays, with a full coverage check."""
    compiled = [(r._source_re(), r) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    out: dict[str, Array] = {}
    sources_of: dict[str, str] = {}
    unexpected, duplicated, misshaped, unknown_target = [], [], [], []
    for key, value in source.items():
        m, rule = _first_match(key, compiled)
        if m is None:
            if not any(p.fullmatch(key) for p in ignored):
                unexpected.append(key)
            continue
        tkey = rule.target.format(**m.groupdict())
        if tkey not in target_shapes:
            unknown_target.append(f"{key} -> {tkey}")
            continue
        if tkey in out:
            duplicated.append(f"{tkey} <- {sources_of[tkey]} and {key}")
            continue
        arr = rule.transform.forward(np.asarray(value))
        if tuple(arr.shape) != tuple(target_shapes[tkey]):
            misshaped.append(f"{key} {tuple(np.shape(value))} -> {tkey}: got {tuple(arr.shape)}, model wants {tuple(target_shapes[tkey])}")
            continue
        out[tkey] = arr
        sources_of[tkey] = key
    missing = [k for k in target_shapes if k not in out]
    if missing or unexpected or duplicated or misshaped or unknown_target:
        raise ConversionError(
            f"{what}: conversion coverage failed\n"
            f"  model parameters not filled ({len(missing)}):{_fmt(missing)}\n"
            f"  unexpected source keys ({len(unexpected)}):{_fmt(unexpected)}\n"
            f"  source keys mapped to no model parameter ({len(unknown_target)}):{_fmt(unknown_target)}\n"
            f"  parameters filled twice ({len(duplicated)}):{_fmt(duplicated)}\n"
            f"  shape mismatches ({len(misshaped)}):{_fmt(misshaped)}"
        )
    return out


def export(target: Mapping[str, Array], rules: Sequence[Rule], what: str = "model") -> dict[str, Array]:
    """The inverse of :func:`convert`: flat target arrays -> flat source-named arrays."""
    compiled = [(r._target_re(), r._source_re(), r) for r in rules]
    out: dict[str, Array] = {}
    unmapped = []
    for tkey, value in target.items():
        # The first rule whose target template matches AND whose rebuilt source key matches
        # its own source pattern (a wide group such as {name} may match another rule's target).
        rule, skey = None, None
        for target_re, source_re, candidate in compiled:
            m = target_re.fullmatch(tkey)
            if m is None:
                continue
            key = candidate.source_key(m.groupdict())
            if source_re.fullmatch(key):
                rule, skey = candidate, key
                break
        if rule is None:
            unmapped.append(tkey)
            continue
        if skey in out:
            raise ConversionError(f"{what}: export maps two parameters to {skey}")
        out[skey] = rule.transform.inverse(np.asarray(value))
    if unmapped:
        raise ConversionError(f"{what}: export has no rule for ({len(unmapped)}):{_fmt(unmapped)}")
    return out


# --------------------------------------------------------------------------------------------
# NNX state <-> flat dicts.
# --------------------------------------------------------------------------------------------


def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


def flat_state_shapes(model_or_state, filter=None) -> dict[str, tuple]:
    """{dotted path: shape} of a model's (or abstract model's) variables (Params by default)."""
    from flax import nnx

    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(
        model_or_state, filter or nnx.Param
    )
    return {_path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}


def flat_state_arrays(model, filter=None) -> dict[str, Array]:
    """{dotted path: NumPy array} of a model's variables (Params by default)."""
    from flax import nnx

    state = nnx.state(model, filter or nnx.Param)
    return {_path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def load_flat_into(model, arrays: Mapping[str, Array], filter=None, dtype=None) -> None:
    """Writes a complete flat {path: array} mapping into a model's variables in place.

    Every variable of the filter must be present (ConversionError otherwise). Values are cast to
    each variable's dtype (or ``dtype``) and keep the variable's sharding when it has one.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, filter or nnx.Param)
    flat = nnx.to_flat_state(state)
    missing = [_path_str(p) for p, _ in flat if _path_str(p) not in arrays]
    if missing:
        raise ConversionError(f"load: values missing for ({len(missing)}):{_fmt(missing)}")
    for path, var in flat:
        cur = var.get_value()
        new = jnp.asarray(arrays[_path_str(path)], dtype=dtype or cur.dtype)
        if new.shape != cur.shape:
            raise ConversionError(f"load: {_path_str(path)} has shape {new.shape}, model wants {cur.shape}")
        sharding = getattr(cur, "sharding", None)
        if sharding is not None and not isinstance(cur, jax.ShapeDtypeStruct):
            new = jax.device_put(new, sharding)
        var.set_value(new)
    nnx.update(model, state)
