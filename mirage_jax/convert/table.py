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
:func:`flat_state_shapes` and :func:`flat_state_arrays`. With ``lazy=True`` :func:`convert`
checks coverage and shapes without reading any data and returns
:class:`mirage_jax.convert.place.Lazy` readers, which :func:`mirage_jax.convert.place.place`
reads one parameter at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mirage_jax.errors import ConfigError, FileFormatError, file_error

Array = np.ndarray


class ConversionError(FileFormatError):
    """Coverage or shape mismatch between a checkpoint (or a flat array mapping) and a model."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible array transform: ``forward`` source -> target, ``inverse`` target -> source."""

    name: str
    forward: Callable[[Array], Array]
    inverse: Callable[[Array], Array]
    shape: Callable[[tuple], tuple]  # source shape -> target shape (what ``forward`` gives)


IDENTITY = Transform("identity", lambda x: x, lambda x: x, lambda s: tuple(s))
# torch Linear weight [out, in] -> flax kernel [in, out].
LINEAR = Transform("linear", lambda x: np.ascontiguousarray(x.T), lambda x: np.ascontiguousarray(x.T),
                   lambda s: tuple(s)[::-1])
# torch ConvNd weight [out, in, *k] -> flax kernel [*k, in, out].
CONV = Transform(
    "conv",
    lambda x: np.ascontiguousarray(np.moveaxis(x, (0, 1), (-1, -2))),
    lambda x: np.ascontiguousarray(np.moveaxis(x, (-1, -2), (0, 1))),
    lambda s: tuple(s[2:]) + (s[1], s[0]) if len(s) >= 2 else tuple(s),
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
    lazy: bool = False,
) -> dict[str, Any]:
    """Converts a flat source mapping to flat target arrays, with a full coverage check.

    ``lazy``: check names and shapes only (``Transform.shape``) and return
    :class:`~mirage_jax.convert.place.Lazy` readers instead of arrays (nothing is read).
    """
    from mirage_jax.convert.place import Lazy

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
        if lazy:
            got = tuple(rule.transform.shape(tuple(np.shape(value))))
            arr = Lazy(got, functools.partial(_forward, rule.transform, source, key))
        else:
            arr = rule.transform.forward(np.asarray(value))
            got = tuple(arr.shape)
        if got != tuple(target_shapes[tkey]):
            misshaped.append(f"{key} {tuple(np.shape(value))} -> {tkey}: got {got}, model wants {tuple(target_shapes[tkey])}")
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


def _forward(transform: Transform, source: Mapping[str, Array], key: str) -> Array:
    return transform.forward(np.asarray(source[key]))


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


def flat_state_shapes(model_or_state, filter=None) -> dict[str, tuple]:
    """{dotted path: shape} of a model's (or abstract model's) variables (Params by default)."""
    from mirage_jax.convert.place import flat_variables

    return {k: tuple(v.get_value().shape) for k, v in flat_variables(model_or_state, *([filter] if filter else [])).items()}


def flat_state_arrays(model, filter=None) -> dict[str, Array]:
    """{dotted path: NumPy array} of a model's variables (Params by default; gathers shards)."""
    from mirage_jax.convert.place import flat_variables

    return {k: np.asarray(v.get_value()) for k, v in flat_variables(model, *([filter] if filter else [])).items()}


# --------------------------------------------------------------------------------------------
# config.json files.
# --------------------------------------------------------------------------------------------


def _type_problem(value, default) -> str | None:
    """Why ``value`` cannot stand for a field whose default is ``default`` (None: it can)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
        return None if math.isfinite(value) else "expected a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, tuple):
        if not isinstance(value, list):
            return "expected a list"
        for item in value:
            why = _type_problem(item, default[0]) if default else None
            if why:
                return f"{why} in the list, got {item!r}"
    return None


def check_config_types(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Raises :class:`~mirage_jax.errors.ConfigError` naming the key when a value of ``config``
    does not have the type of ``defaults[key]`` (int, finite float, bool, str, or a list of
    those; None values and keys without a default are left to the caller)."""
    for key, default in defaults.items():
        if config.get(key) is not None:
            why = _type_problem(config[key], default)
            if why:
                raise ConfigError(f"key {key!r}: {why}, got {config[key]!r}")


def read_config_json(path: str | os.PathLike, parse: Callable[[dict], Any], fields: Any = None) -> Any:
    """``parse(json dict)`` of a ``config.json``; every problem is a :class:`FileFormatError`
    naming the file (and the key): unreadable or non-JSON text, a top level that is not an
    object, a value of the wrong type for ``fields`` (a dataclass whose defaults give the
    types: int, finite float, bool, str, lists of those), or anything ``parse`` refuses."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise file_error(path, f"not valid JSON ({e})") from e
    except OSError as e:
        raise file_error(path, f"cannot be read ({e.strerror or e})") from e
    if not isinstance(config, dict):
        raise file_error(path, f"expected a JSON object of config keys, got {type(config).__name__}")
    try:
        if fields is not None:
            check_config_types(config, {f.name: f.default for f in dataclasses.fields(fields)
                                        if f.default is not dataclasses.MISSING})
        return parse(config)
    except FileFormatError:
        raise
    except (TypeError, ValueError, NotImplementedError) as e:
        raise file_error(path, str(e)) from e
