"""Wan DiT checkpoints: diffusers and original Wan-AI naming <-> :class:`WanDiT`, torch-free.

Name tables (source regex -> NNX path, with exact inverse transforms):

  ======================================================  ==========================================
  diffusers (``WanTransformer3DModel``)                   original Wan release (``WanModel``)
  ======================================================  ==========================================
  patch_embedding.{weight,bias}                            patch_embedding.{weight,bias}
  condition_embedder.time_embedder.linear_{1,2}            time_embedding.{0,2}
  condition_embedder.time_proj                             time_projection.1
  condition_embedder.text_embedder.linear_{1,2}            text_embedding.{0,2}
  blocks.N.scale_shift_table                               blocks.N.modulation
  blocks.N.attn1.{to_q,to_k,to_v,to_out.0}                 blocks.N.self_attn.{q,k,v,o}
  blocks.N.attn{1,2}.norm_{q,k}                            blocks.N.{self,cross}_attn.norm_{q,k}
  blocks.N.attn2.*                                         blocks.N.cross_attn.*
  blocks.N.norm2 (cross-attention norm)                    blocks.N.norm3 (the original order)
  blocks.N.ffn.net.0.proj / blocks.N.ffn.net.2             blocks.N.ffn.0 / blocks.N.ffn.2
  scale_shift_table / proj_out                             head.modulation / head.head
  ======================================================  ==========================================

Linear weights ``[out, in]`` become kernels ``[in, out]`` (LINEAR); the Conv3d patch embedding
``[dim, C, pt, ph, pw]`` becomes ``[pt, ph, pw, C, dim]`` (CONV).

Loading streams: the checkpoint is memory-mapped, names and shapes are checked against the model
first (the full coverage check of :func:`mirage_jax.convert.table.convert`, nothing read), then
:func:`mirage_jax.convert.place.place` converts one tensor at a time and puts it straight into
its target sharding (scanned layouts are stacked on device from per-layer pieces), so no device
ever holds a full copy and the host holds one tensor at a time.

Every loader has the signature ``(path, *, runtime=None, mesh=None, rules=None)`` (plus the
config of an original release, which ships without one) and returns ``(config, model)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mirage_jax.convert.place import flat_variables, place, unstack_layers
from mirage_jax.convert.safetensors_io import open_safetensors, save_sharded_safetensors
from mirage_jax.convert.table import (
    CONV,
    LINEAR,
    ConversionError,
    Rule,
    check_config_types,
    convert,
    export,
    read_config_json,
)
from mirage_jax.errors import ConfigError, file_error
from mirage_jax.models.wan.dit import WanDiT, WanDiTConfig, WanRuntime

__all__ = [
    "DIFFUSERS_RULES",
    "WAN_RULES",
    "DIFFUSERS_IGNORE",
    "config_from_wan_original",
    "detect_format",
    "load_diffusers_config",
    "load_diffusers_transformer",
    "load_wan_original_transformer",
    "load_transformer",
    "transformer_from_state",
    "PRESETS",
    "export_state",
    "save_diffusers_transformer",
    "save_wan_original_transformer",
    "canonical_shapes",
    "canonical_arrays",
]

_N = r"(?P<i>\d+)"


def _linear(src: str, dst: str) -> list[Rule]:
    return [Rule(src + r"\.weight", dst + ".kernel", LINEAR), Rule(src + r"\.bias", dst + ".bias")]


def _norm(src: str, dst: str, bias: bool) -> list[Rule]:
    rules = [Rule(src + r"\.weight", dst + ".scale")]
    return rules + ([Rule(src + r"\.bias", dst + ".bias")] if bias else [])


def _diffusers_rules() -> list[Rule]:
    # Every rule names its modules literally (no alternation groups besides the block index):
    # table.export matches target paths with generic groups, so literal names keep the inverse
    # mapping unambiguous.
    rules = [
        Rule(r"patch_embedding\.weight", "patch_embedding.kernel", CONV),
        Rule(r"patch_embedding\.bias", "patch_embedding.bias"),
    ]
    for m in ("time_embedder", "text_embedder"):
        for lin in ("linear_1", "linear_2"):
            rules += _linear(rf"condition_embedder\.{m}\.{lin}", f"condition_embedder.{m}.{lin}")
    rules += _linear(r"condition_embedder\.time_proj", "condition_embedder.time_proj")
    rules.append(Rule(rf"blocks\.{_N}\.scale_shift_table", "blocks.{i}.scale_shift_table"))
    for a in ("attn1", "attn2"):
        for proj in ("to_q", "to_k", "to_v"):
            rules += _linear(rf"blocks\.{_N}\.{a}\.{proj}", f"blocks.{{i}}.{a}.{proj}")
        rules += _linear(rf"blocks\.{_N}\.{a}\.to_out\.0", f"blocks.{{i}}.{a}.to_out")
        for n in ("norm_q", "norm_k"):
            rules += _norm(rf"blocks\.{_N}\.{a}\.{n}", f"blocks.{{i}}.{a}.{n}", bias=False)
    rules += _norm(rf"blocks\.{_N}\.norm2", "blocks.{i}.norm2", bias=True)
    rules += _linear(rf"blocks\.{_N}\.ffn\.net\.0\.proj", "blocks.{i}.ffn.proj_in")
    rules += _linear(rf"blocks\.{_N}\.ffn\.net\.2", "blocks.{i}.ffn.proj_out")
    rules.append(Rule(r"scale_shift_table", "scale_shift_table"))
    rules += _linear(r"proj_out", "proj_out")
    return rules


DIFFUSERS_RULES: tuple[Rule, ...] = tuple(_diffusers_rules())
# diffusers itself ignores these on load (``_keys_to_ignore_on_load_unexpected``).
DIFFUSERS_IGNORE: tuple[str, ...] = (r"blocks\.\d+\.attn2\.norm_added_q\.weight",)


def _wan_attention_rules() -> list[Rule]:
    rules = []
    for orig, ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        for o, d in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out")):
            rules += _linear(rf"blocks\.{_N}\.{orig}\.{o}", f"blocks.{{i}}.{ours}.{d}")
        for n in ("norm_q", "norm_k"):
            rules += _norm(rf"blocks\.{_N}\.{orig}\.{n}", f"blocks.{{i}}.{ours}.{n}", bias=False)
    return rules


WAN_RULES: tuple[Rule, ...] = tuple(
    [
        Rule(r"patch_embedding\.weight", "patch_embedding.kernel", CONV),
        Rule(r"patch_embedding\.bias", "patch_embedding.bias"),
        *_linear(r"time_embedding\.0", "condition_embedder.time_embedder.linear_1"),
        *_linear(r"time_embedding\.2", "condition_embedder.time_embedder.linear_2"),
        *_linear(r"time_projection\.1", "condition_embedder.time_proj"),
        *_linear(r"text_embedding\.0", "condition_embedder.text_embedder.linear_1"),
        *_linear(r"text_embedding\.2", "condition_embedder.text_embedder.linear_2"),
        Rule(rf"blocks\.{_N}\.modulation", "blocks.{i}.scale_shift_table"),
        *_wan_attention_rules(),
        # The original block applies norm1 (self-attn), norm3 (cross-attn), norm2 (FFN);
        # only the cross-attention norm has parameters: original norm3 == diffusers norm2.
        *_norm(rf"blocks\.{_N}\.norm3", "blocks.{i}.norm2", bias=True),
        *_linear(rf"blocks\.{_N}\.ffn\.0", "blocks.{i}.ffn.proj_in"),
        *_linear(rf"blocks\.{_N}\.ffn\.2", "blocks.{i}.ffn.proj_out"),
        Rule(r"head\.modulation", "scale_shift_table"),
        *_linear(r"head\.head", "proj_out"),
    ]
)

FORMATS = {"diffusers": (DIFFUSERS_RULES, DIFFUSERS_IGNORE), "wan": (WAN_RULES, ())}

# ------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------


def _transformer_dir(path: Path) -> Path:
    """A diffusers pipeline directory -> its ``transformer`` subfolder; other paths unchanged."""
    if path.is_dir() and not (path / "config.json").exists() and (path / "transformer" / "config.json").exists():
        return path / "transformer"
    return path


def load_diffusers_config(path: str | os.PathLike) -> WanDiTConfig:
    """:class:`WanDiTConfig` from a diffusers transformer directory (or its ``config.json``)."""
    path = _transformer_dir(Path(path))
    cfg_path = path / "config.json" if path.is_dir() else path
    if not cfg_path.exists():
        raise file_error(cfg_path, "no diffusers config.json there")
    return read_config_json(cfg_path, WanDiTConfig.from_diffusers, WanDiTConfig)


PRESETS = ("wan22_ti2v_5b", "wan21_t2v_1_3b", "small", "tiny")


def resolve_config(config: WanDiTConfig | Mapping[str, Any] | str | os.PathLike) -> WanDiTConfig:
    """A :class:`WanDiTConfig` from itself, a preset name (:data:`PRESETS`), a config dict in the
    original (``dim``, ``num_heads``, ...) or diffusers naming, or the path of such a JSON file."""
    if isinstance(config, WanDiTConfig):
        return config
    if isinstance(config, str) and config in PRESETS:
        return getattr(WanDiTConfig, config)()
    if isinstance(config, Mapping):
        return config_from_wan_original(config) if "dim" in config else WanDiTConfig.from_diffusers(config)
    if isinstance(config, (str, os.PathLike)):
        if not Path(config).is_file():
            raise file_error(config, f"config is neither a preset {PRESETS} nor an existing JSON file")
        return read_config_json(config, resolve_config)
    raise TypeError(f"config must be a WanDiTConfig, a preset name, a dict or a JSON path; got {type(config).__name__}")


_WAN_ORIGINAL_IGNORED = {"text_len", "model_type", "__name__"}


def config_from_wan_original(config: Mapping[str, Any]) -> WanDiTConfig:
    """:class:`WanDiTConfig` from an original Wan ``config.json`` (``WanModel`` arguments:
    dim, num_heads, in_dim, out_dim, ffn_dim, freq_dim, text_dim, num_layers, patch_size,
    window_size, qk_norm, cross_attn_norm, eps, model_type, text_len)."""
    check_config_types(config, {"dim": 0, "num_heads": 0, "in_dim": 0, "out_dim": 0, "ffn_dim": 0, "freq_dim": 0,
                                "text_dim": 0, "num_layers": 0, "eps": 0.0, "cross_attn_norm": True,
                                "qk_norm": True, "patch_size": (0,), "window_size": (0,)})
    model_type = config.get("model_type", "t2v")
    if model_type not in ("t2v", "ti2v"):
        raise NotImplementedError(f"original Wan model_type {model_type!r}: only 't2v' and 'ti2v' are supported")
    if tuple(config.get("window_size", (-1, -1))) != (-1, -1):
        raise NotImplementedError(f"window_size={config['window_size']!r}: only global attention (-1, -1) is supported")
    if not config.get("qk_norm", True):
        raise NotImplementedError("qk_norm=false: the Wan DiT always normalises q and k")
    known = {"dim", "num_heads", "in_dim", "out_dim", "ffn_dim", "freq_dim", "text_dim", "num_layers",
             "patch_size", "window_size", "qk_norm", "cross_attn_norm", "eps"} | _WAN_ORIGINAL_IGNORED
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ConfigError(f"unknown original Wan config keys {unknown}")
    missing = [k for k in ("dim", "num_heads", "in_dim", "ffn_dim", "num_layers") if k not in config]
    if missing:
        raise ConfigError(f"original Wan config lacks {missing}")
    dim, heads = int(config["dim"]), int(config["num_heads"])
    if dim % heads:
        raise ConfigError(f"dim {dim} is not divisible by num_heads {heads}")
    return WanDiTConfig(
        patch_size=tuple(config.get("patch_size", (1, 2, 2))),
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=int(config["in_dim"]),
        out_channels=int(config.get("out_dim", config["in_dim"])),
        text_dim=int(config.get("text_dim", 4096)),
        freq_dim=int(config.get("freq_dim", 256)),
        ffn_dim=int(config["ffn_dim"]),
        num_layers=int(config["num_layers"]),
        cross_attn_norm=bool(config.get("cross_attn_norm", True)),
        eps=float(config.get("eps", 1e-6)),
    )


def detect_format(keys) -> str:
    """``"diffusers"`` or ``"wan"`` from checkpoint key names (raises when neither fits)."""
    keys = list(keys)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return "diffusers"
    if any(k.startswith("time_embedding.") or ".self_attn." in k for k in keys):
        return "wan"
    raise ConversionError(f"cannot tell the checkpoint naming from keys like {sorted(keys)[:5]}")


# ------------------------------------------------------------------------------------------------
# Canonical (per-layer) flat views of a model.
# ------------------------------------------------------------------------------------------------


def canonical_shapes(model) -> dict[str, tuple]:
    """``{per-layer NNX path: shape}`` of a (possibly abstract) WanDiT, looped or scanned."""
    shapes = {k: tuple(v.get_value().shape) for k, v in flat_variables(model).items()}
    return unstack_layers(shapes) if model.runtime.scan_layers else shapes


def canonical_arrays(model, dtype=None) -> dict[str, np.ndarray]:
    """``{per-layer NNX path: host array}`` of a WanDiT (gathers sharded parameters)."""
    arrays = {}
    for k, v in flat_variables(model).items():
        a = np.asarray(jax.device_get(v.get_value()))
        arrays[k] = a.astype(jnp.dtype(dtype)) if dtype is not None else a
    return unstack_layers(arrays) if model.runtime.scan_layers else arrays


# ------------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------------


def transformer_from_state(
    config: WanDiTConfig,
    source: Mapping[str, np.ndarray],
    *,
    format: str = "diffusers",
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
    what: str = "checkpoint",
) -> WanDiT:
    """A :class:`WanDiT` whose parameters come from a flat ``{name: array}`` checkpoint
    (diffusers or original ``format`` naming; arrays may be memory-mapped), never randomly
    initialised: the names and shapes are checked first (nothing read), then
    :func:`mirage_jax.convert.place.place` converts each tensor and puts it in its target
    sharding (``mesh`` + logical ``rules``) or on the default device.

    Raises :class:`ConversionError` with the missing / unexpected / mis-shaped keys.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    table, ignore = FORMATS[format]
    runtime = runtime or WanRuntime()
    abstract = nnx.eval_shape(lambda: WanDiT(config, runtime))
    arrays = convert(source, table, canonical_shapes(abstract), ignore=ignore, what=what, lazy=True)
    return place(abstract, arrays, mesh=mesh, rules=rules, what=what)


def load_diffusers_transformer(
    path: str | os.PathLike,
    *,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[WanDiTConfig, WanDiT]:
    """Loads a diffusers ``WanTransformer3DModel`` directory (``config.json`` plus
    ``diffusion_pytorch_model.safetensors`` or a sharded ``*.safetensors.index.json``; a
    pipeline directory with a ``transformer/`` subfolder also works)."""
    path = _transformer_dir(Path(path))
    if not path.is_dir():
        raise file_error(path, "not a directory (a diffusers transformer is a directory with config.json and safetensors)")
    config = load_diffusers_config(path)
    source = open_safetensors(path)
    model = transformer_from_state(config, source, format="diffusers", runtime=runtime, mesh=mesh, rules=rules, what=str(path))
    return config, model


def load_wan_original_transformer(
    path: str | os.PathLike,
    config: WanDiTConfig | Mapping[str, Any] | str | None = None,
    *,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[WanDiTConfig, WanDiT]:
    """Loads an original Wan-AI DiT release (safetensors file, index or directory).

    ``config``: the release ships weights only, and the head count cannot be read from the
    shapes (spec 10.1), so give a :class:`WanDiTConfig`, a preset name (:data:`PRESETS`, e.g.
    ``"wan22_ti2v_5b"``), an original (``dim``, ``num_heads``, ...) or diffusers config dict or
    JSON path; None reads ``config.json`` next to the weights and fails naming the fix without one.
    """
    path = Path(path)
    if config is None:
        cfg_path = (path if path.is_dir() else path.parent) / "config.json"
        if not cfg_path.is_file():
            raise file_error(
                path, f"no config given and no config.json at {cfg_path}; pass config='wan22_ti2v_5b' (a preset "
                f"of {PRESETS}), a WanDiTConfig or the release's config.json",
            )
        config = cfg_path
    config = resolve_config(config)
    source = open_safetensors(path)
    model = transformer_from_state(config, source, format="wan", runtime=runtime, mesh=mesh, rules=rules, what=str(path))
    return config, model


def load_transformer(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    config: WanDiTConfig | Mapping[str, Any] | str | None = None,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[WanDiTConfig, WanDiT]:
    """One entry point: a diffusers directory, an original Wan release (``config`` as for
    :func:`load_wan_original_transformer`) or an orbax checkpoint written by ``mirage-jax
    convert`` (``format``: auto | diffusers | wan | orbax)."""
    path = _transformer_dir(Path(path))
    from mirage_jax import checkpoint as ckpt

    if format == "auto":
        if ckpt.is_checkpoint(path):
            format = "orbax"
        else:
            format = detect_format(open_safetensors(path).keys())
    if format == "orbax":
        meta = ckpt.read_metadata(path)
        if meta.get("kind") != "wan_dit":
            raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a Wan DiT")
        cfg = WanDiTConfig.from_diffusers(meta["config"])
        runtime = runtime or WanRuntime()
        return cfg, ckpt.restore_model(path, lambda: WanDiT(cfg, runtime), mesh=mesh, rules=rules)
    if format == "diffusers":
        return load_diffusers_transformer(path, runtime=runtime, mesh=mesh, rules=rules)
    if format == "wan":
        return load_wan_original_transformer(path, config, runtime=runtime, mesh=mesh, rules=rules)
    raise ConfigError(f"format must be auto, diffusers, wan or orbax; got {format!r}")


# ------------------------------------------------------------------------------------------------
# Export.
# ------------------------------------------------------------------------------------------------


def export_state(model: WanDiT, format: str = "diffusers", dtype=None) -> dict[str, np.ndarray]:
    """The model's parameters as a flat ``{checkpoint name: np.ndarray}`` in ``format``."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    return export(canonical_arrays(model, dtype), FORMATS[format][0], what="WanDiT")


def save_diffusers_transformer(
    model: WanDiT,
    config: WanDiTConfig | None,
    directory: str | os.PathLike,
    dtype=None,
    max_shard_bytes: int = 10 * 2**30,
) -> Path:
    """Writes ``config.json`` + safetensors loadable by ``WanTransformer3DModel.from_pretrained``."""
    config = config or model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = export_state(model, "diffusers", dtype)
    save_sharded_safetensors(directory, state, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
    cfg = config.to_diffusers()
    cfg["_diffusers_version"] = _diffusers_version()
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def save_wan_original_transformer(model: WanDiT, path: str | os.PathLike, dtype=None) -> Path:
    """Writes the parameters in the original Wan naming to one ``.safetensors`` file."""
    from mirage_jax.convert.safetensors_io import save_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, export_state(model, "wan", dtype), metadata={"format": "pt"})
    return path


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # diffusers is optional; the field is informational
        return "0.35.0"
