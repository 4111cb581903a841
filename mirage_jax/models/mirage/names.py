"""Name tables of the Mirage model's parameters in the two checkpoint namings (for the loaders).

Target paths are per-layer NNX paths of a looped :class:`MirageModel` (``dit.blocks.3...``,
``control.blocks.0...``, ``control.after_proj.0...``); a scanned model's stacked layout is the
loader's business (as for the backbone). Built from the backbone's tables in
:mod:`mirage_jax.convert.wan_dit` so the block naming exists once:

* ``"diffusers"``: ``WanVACETransformer3DModel`` (backbone keys as ``WanTransformer3DModel``;
  ``vace_patch_embedding``, ``vace_blocks.n.<block keys>``, ``vace_blocks.0.proj_in``
  (before_proj), ``vace_blocks.n.proj_out`` (after_proj)).
* ``"wan"``: the reference release (spec 10.1, 10.3): original Wan naming for the backbone,
  ``vace_patch_embedding``, ``vace_blocks.n.<original block keys>``, ``vace_blocks.0.before_proj``,
  ``vace_blocks.n.after_proj``. In both, ``n`` is the position in ``control_layers``.
"""

from __future__ import annotations

from mirage_jax.convert.table import CONV, LINEAR, Rule
from mirage_jax.convert.wan_dit import DIFFUSERS_IGNORE, DIFFUSERS_RULES, WAN_RULES
from mirage_jax.errors import ConfigError

__all__ = ["backbone_rules", "control_rules", "mirage_rules", "mirage_ignore"]

_N = r"(?P<i>\d+)"
_FORMATS = {"diffusers": (DIFFUSERS_RULES, "proj_in", "proj_out"), "wan": (WAN_RULES, "before_proj", "after_proj")}


def _check(format: str):
    if format not in _FORMATS:
        raise ConfigError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
    return _FORMATS[format]


def backbone_rules(format: str = "diffusers") -> tuple[Rule, ...]:
    """The backbone's rules with targets under ``dit.``."""
    table, _, _ = _check(format)
    return tuple(Rule(r.source, "dit." + r.target, r.transform) for r in table)


def control_rules(format: str = "diffusers") -> tuple[Rule, ...]:
    """The control branch's rules (targets under ``control.``)."""
    table, before, after = _check(format)
    rules = [
        Rule(r"vace_patch_embedding\.weight", "control.patch_embedding.kernel", CONV),
        Rule(r"vace_patch_embedding\.bias", "control.patch_embedding.bias"),
        Rule(rf"vace_blocks\.0\.{before}\.weight", "control.before_proj.kernel", LINEAR),
        Rule(rf"vace_blocks\.0\.{before}\.bias", "control.before_proj.bias"),
        Rule(rf"vace_blocks\.{_N}\.{after}\.weight", "control.after_proj.{i}.kernel", LINEAR),
        Rule(rf"vace_blocks\.{_N}\.{after}\.bias", "control.after_proj.{i}.bias"),
    ]
    # Every per-block rule of the backbone, re-rooted at vace_blocks / control.blocks.
    rules += [Rule("vace_" + r.source, "control." + r.target, r.transform) for r in table if r.source.startswith(r"blocks\.")]
    return tuple(rules)


def mirage_rules(format: str = "diffusers") -> tuple[Rule, ...]:
    """Backbone + control branch."""
    return backbone_rules(format) + control_rules(format)


def mirage_ignore(format: str = "diffusers") -> tuple[str, ...]:
    """Source keys the format's own loader ignores (diffusers' unused ``attn2.norm_added_q``)."""
    _check(format)
    if format != "diffusers":
        return ()
    return DIFFUSERS_IGNORE + tuple("vace_" + p for p in DIFFUSERS_IGNORE)
