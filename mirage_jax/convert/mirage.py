"""Mirage weights: the reference release's files (spec 10.1, 10.3, 10.4) <-> :class:`MirageModel`.

    config, model = load_mirage("wan22_5b_dit.safetensors", "vace.safetensors", "lora.safetensors",
                                config="wan22_ti2v_5b", lora_alpha=1.0, mesh=mesh)
    save_mirage_reference(model, "out/")   # control.safetensors, lora.safetensors, orbax/

Sources:

* ``dit``: the backbone, in the original Wan naming (one ``.safetensors`` file, usually without a
  ``config.json``: the head count cannot be read from the shapes, so ``config`` is required: a
  :class:`MirageConfig`, a :class:`WanDiTConfig` or a preset name such as ``"wan22_ti2v_5b"``), a
  diffusers transformer directory (config from its ``config.json``), or our orbax checkpoint
  written by :func:`save_mirage_reference` (config and LoRA rank / alpha from its metadata).
* ``control``: the control branch (VACE) file, keys ``vace_patch_embedding.*``,
  ``vace_blocks.n.<block keys in the original naming>``, ``vace_blocks.0.before_proj.*``,
  ``vace_blocks.n.after_proj.*``, ``n`` the position in ``control_layers`` (the layer list itself
  is not stored: :func:`~mirage_jax.models.mirage.default_control_layers`, or the config's; our
  own files store it in their metadata). Prefixes ``module.``, ``model.``, ``pipe.vace.``,
  ``vace.`` and nestings under ``vace``, ``generator.vace``, ``state_dict`` are accepted
  (dotted prefixes in safetensors; real nested dicts in torch files, read only with
  ``torch.load(weights_only=True)``). Without ``control`` the branch is initialised as the
  config's ``control_init`` says (``"copy"``: from the loaded backbone blocks).
* ``lora``: the LoRA file, keys ``pipe.dit.blocks.N.<module>.lora_A.weight [r, in]`` and
  ``lora_B.weight [out, r]`` (prefixes ``module.``, ``model.``, ``dit.``, ``base_model.model.``;
  peft's ``.lora_A.default.weight``). No rank or alpha is stored by the reference: the rank comes
  from the shapes, alpha from the caller (or from our files' safetensors metadata).

LoRA conventions (spec 10.4, 10.8): the reference *trains* with ``W x + alpha / r * B A x`` but
its inference fuses ``W += alpha * B @ A`` with a command-line alpha (default 1.0) and no division
by r; the two agree only when the training alpha equals r and the inference alpha is 1 (in
general: inference alpha = training alpha / r). ``load_mirage(lora_alpha=a)`` means what the
reference means in each mode: ``fuse_lora=True`` reproduces its inference exactly,
``W += a * B @ A`` (float32 arithmetic in the torch layout, then cast to the parameter dtype; the
returned config has ``lora_rank=0``); ``fuse_lora=False`` keeps the factors as :data:`LoRAParam`
with its training scale ``a / r`` (``config.lora_alpha = a``, ``config.lora_rank = r``). So
``fuse_lora=True, lora_alpha=1`` and ``fuse_lora=False, lora_alpha=r`` give the same model.
``lora_alpha=None`` (default): our files store the training alpha (metadata ``lora_alpha``), used
as is unfused and as ``alpha / r`` fused (the trained model either way); for the reference's files
(no metadata) the reference's defaults, training alpha = r and inference alpha 1 (scale 1 both).

Every source goes through a name table (:mod:`mirage_jax.convert.table`, built from the
backbone's tables in :mod:`mirage_jax.models.mirage.names`) with its coverage check (every
parameter filled once, every source key used; missing and unexpected keys named), then through
:func:`mirage_jax.convert.place.place`, which creates each parameter directly in its target
sharding. What no file provides (a fresh control branch or LoRA factors, and the constant LoRA
layer indices) comes from the model's own initialiser, jitted so that only those parts are
computed, created in their target shardings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mirage_jax.convert.place import Lazy, flat_variables, place, target_shardings, unstack_layers
from mirage_jax.convert.table import LINEAR, ConversionError, Rule, convert, export
from mirage_jax.convert.wan_dit import DIFFUSERS_IGNORE, PRESETS, resolve_config
from mirage_jax.errors import ConfigError, file_error
from mirage_jax.models.mirage import (
    REFERENCE_TARGET_NAMES,
    LoRADense,
    MirageConfig,
    MirageModel,
)
from mirage_jax.models.mirage.names import backbone_rules, control_rules
from mirage_jax.models.wan.dit import WanDiTConfig
from mirage_jax.models.wan.layers import WanRuntime

__all__ = [
    "LORA_RULES",
    "CONTROL_PREFIXES",
    "LORA_PREFIXES",
    "load_mirage",
    "save_mirage_reference",
    "read_control_file",
    "read_lora_file",
    "export_control",
    "export_lora",
    "config_to_dict",
    "config_from_dict",
]

_N = r"(?P<i>\d+)"
# LoRA file keys after prefix stripping: ``blocks.N.<original module>.lora_{A,B}.weight``;
# A [r, in] -> lora_a [in, r], B [out, r] -> lora_b [r, out] (both LINEAR transposes).
LORA_RULES: tuple[Rule, ...] = tuple(
    Rule(rf"blocks\.{_N}\.{re.escape(orig)}\.lora_{src}\.weight", f"dit.blocks.{{i}}.{ours}.lora_{dst}", LINEAR)
    for ours, orig in REFERENCE_TARGET_NAMES.items()
    for src, dst in (("A", "a"), ("B", "b"))
)
CONTROL_PREFIXES = ("module.", "model.", "state_dict.", "generator.vace.", "pipe.vace.", "vace.")
LORA_PREFIXES = ("module.", "base_model.model.", "model.", "state_dict.", "pipe.dit.", "dit.")
# The prefix our LoRA files use (the reference's own).
LORA_WRITE_PREFIX = "pipe.dit."
_LORA_KEY = re.compile(r"blocks\.(?P<i>\d+)\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
_LAYER_PREFIXES = ("dit.blocks", "control.blocks", "control.after_proj")
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


# ------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------


def config_to_dict(config: MirageConfig) -> dict[str, Any]:
    """A JSON-able dict of a :class:`MirageConfig` (the backbone in the diffusers config naming)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "dit"}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
    return {"dit": config.dit.to_diffusers(), **out}


def config_from_dict(d: Mapping[str, Any]) -> MirageConfig:
    """Inverse of :func:`config_to_dict`."""
    d = dict(d)
    dit = WanDiTConfig.from_diffusers(d.pop("dit"))
    return MirageConfig(dit=dit, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _dit_config(config) -> WanDiTConfig | None:
    if config is None:
        return None
    if isinstance(config, MirageConfig):
        return config.dit
    return resolve_config(config)


# ------------------------------------------------------------------------------------------------
# Reading the reference's files.
# ------------------------------------------------------------------------------------------------


class _Renamed(Mapping):
    """A lazy view of ``source`` under new names (``names``: new -> original key)."""

    def __init__(self, source: Mapping, names: Mapping[str, str]):
        self.source, self.names = source, dict(names)

    def __getitem__(self, key):
        return self.source[self.names[key]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    """A torch state dict (nesting flattened to dotted keys), via ``torch.load(weights_only=True)``."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - only without torch
        raise ImportError(f"{path}: reading a torch file needs PyTorch; or convert it to safetensors once") from e
    from mirage_jax.convert.wan_vae import _torch_to_numpy

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad / unsafe file
        raise file_error(path, f"cannot be read with torch.load(weights_only=True): {e}") from e
    if not isinstance(state, Mapping):
        raise file_error(path, f"expected a state dict (name -> tensor), got {type(state).__name__}")
    flat = _flatten(state)
    bad = [k for k, v in flat.items() if not hasattr(v, "detach")]
    if bad:
        raise file_error(path, f"entries that are not tensors: {bad[:10]}")
    return {k: _torch_to_numpy(v) for k, v in flat.items()}


def _open(path) -> tuple[Mapping[str, Any], dict[str, str]]:
    """``(flat {key: array}, safetensors metadata)`` of a safetensors or torch file."""
    from mirage_jax.convert.safetensors_io import open_safetensors

    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such file")
    if path.suffix in _TORCH_SUFFIXES:
        return _read_torch(path), {}
    ckpt = open_safetensors(path)
    return ckpt, dict(ckpt.files[0].metadata or {})


def _strip(source: Mapping, prefixes: tuple[str, ...], start: str, path, what: str) -> _Renamed:
    """Removes known prefixes from every key until it starts with ``start``; any other key, and
    two keys that become the same name, are errors naming them."""
    names: dict[str, str] = {}
    unexpected = []
    for key in source:
        name = key
        while not name.startswith(start):
            prefix = next((p for p in prefixes if name.startswith(p)), None)
            if prefix is None:
                break
            name = name[len(prefix):]
        if not name.startswith(start):
            unexpected.append(key)
        elif name in names:
            raise file_error(path, f"keys {names[name]!r} and {key!r} both name {name!r}")
        else:
            names[name] = key
    if unexpected:
        raise file_error(
            path, f"{what}: {len(unexpected)} keys are not {start}* under the known prefixes {list(prefixes)}: "
            f"{sorted(unexpected)[:10]}"
        )
    return _Renamed(source, names)


def read_control_file(path) -> tuple[Mapping[str, Any], dict[str, str]]:
    """The control branch file as ``{vace_* key: array}`` (prefixes and nestings removed) and its
    safetensors metadata."""
    source, meta = _open(path)
    return _strip(source, CONTROL_PREFIXES, "vace_", path, "control branch file"), meta


def read_lora_file(path) -> tuple[Mapping[str, Any], dict[str, str]]:
    """The LoRA file as ``{blocks.N.<module>.lora_{A,B}.weight: array}`` and its metadata."""
    source, meta = _open(path)
    renamed = _strip(source, LORA_PREFIXES, "blocks.", path, "LoRA file")
    names = {k.replace(".default.weight", ".weight") if re.search(r"\.lora_[AB]\.default\.weight$", k) else k: v
             for k, v in renamed.names.items()}
    if len(names) != len(renamed.names):
        raise file_error(path, "LoRA file holds both '.lora_X.weight' and '.lora_X.default.weight' for one module")
    return _Renamed(source, names), meta


def _num_vace_blocks(source: Mapping) -> int:
    found = {int(m.group(1)) for k in source for m in [re.match(r"vace_blocks\.(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def _lora_layout(source: Mapping, num_layers: int, path) -> tuple[int, tuple[str, ...]]:
    """``(rank, targets)`` of a LoRA file; errors name unknown modules, blocks outside the
    backbone, unpaired factors and mixed ranks."""
    inverse = {orig: ours for ours, orig in REFERENCE_TARGET_NAMES.items()}
    found: dict[str, set[tuple[int, str]]] = {}
    ranks, errors = set(), []
    for key in source:
        m = _LORA_KEY.fullmatch(key)
        if m is None:
            errors.append(f"{key}: not blocks.N.<module>.lora_A/B.weight")
            continue
        i, module = int(m["i"]), m["module"]
        if module not in inverse:
            errors.append(f"{key}: LoRA target {module!r} is no Dense of a block (targets: {sorted(inverse)})")
        elif i >= num_layers:
            errors.append(f"{key}: block {i} does not exist (the backbone has {num_layers} blocks)")
        found.setdefault(module, set()).add((i, m["ab"]))
        shape = tuple(np.shape(source[key]))
        if len(shape) != 2:
            errors.append(f"{key}: expected a matrix, got shape {shape}")
        else:
            ranks.add(shape[0] if m["ab"] == "A" else shape[1])
    if errors:
        raise file_error(path, "LoRA file does not fit the model:\n  " + "\n  ".join(errors[:20]))
    for module, entries in found.items():
        unpaired = sorted({(i, "B" if ab == "A" else "A") for i, ab in entries} - entries)
        if unpaired:
            raise file_error(path, f"LoRA {module!r}: factors missing for (block, factor) {unpaired[:10]}")
    if len(ranks) > 1:
        raise file_error(path, f"LoRA file mixes ranks {sorted(ranks)}")
    if not ranks:
        raise file_error(path, "LoRA file holds no LoRA factors")
    targets = tuple(t for t, orig in REFERENCE_TARGET_NAMES.items() if orig in found)
    return ranks.pop(), targets


def _meta_float(meta, key, path):
    if key not in meta:
        return None
    try:
        return float(meta[key])
    except ValueError as e:
        raise file_error(path, f"metadata {key}={meta[key]!r} is not a number", key=key) from e


# ------------------------------------------------------------------------------------------------
# Model layouts.
# ------------------------------------------------------------------------------------------------


def _canonical(flat: Mapping[str, Any], scanned: bool) -> dict[str, Any]:
    """Per-layer (``dit.blocks.<i>.X``) names of a flat mapping in a scanned or looped layout."""
    if not scanned:
        return dict(flat)
    out = dict(flat)
    for prefix in _LAYER_PREFIXES:
        out = unstack_layers(out, prefix)
    return out


@functools.lru_cache(maxsize=8)
def _initializer(config: MirageConfig, runtime: WanRuntime, keys: tuple[str, ...], shardings: tuple, seed: int):
    def init():
        model = MirageModel(config, runtime, rngs=nnx.Rngs(seed))
        flat = flat_variables(nnx.state(model))
        return {k: flat[k].get_value() for k in keys}

    return jax.jit(init, out_shardings=dict(zip(keys, shardings)))


def _fresh(config: MirageConfig, runtime: WanRuntime, keys, shardings, seed: int) -> dict[str, jax.Array]:
    """The model initialiser's values of ``keys`` (native NNX paths, any variable type), computed
    under jit (XLA drops the rest of the initialisation) directly into ``shardings``."""
    keys = tuple(sorted(keys))
    if not keys:
        return {}
    return _initializer(config, runtime, keys, tuple(shardings[k] for k in keys), seed)()


def _fused_kernel(kernel: Any, a: Any, b: Any, alpha: float, shape: tuple) -> Lazy:
    """``W + alpha * B @ A`` as the reference's inference computes it (torch layout, float32),
    returned as a kernel ``[in, out]``; ``kernel`` is the backbone's converted kernel."""

    def read():
        w = np.asarray(kernel.read() if isinstance(kernel, Lazy) else kernel, np.float32)
        bb = np.ascontiguousarray(np.asarray(b, np.float32))
        aa = np.ascontiguousarray(np.asarray(a, np.float32))
        return (w.T + np.float32(alpha) * (bb @ aa)).T

    return Lazy(tuple(shape), read)


# ------------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------------


def _load_orbax(path: Path, config, runtime, mesh, rules) -> tuple[MirageConfig, MirageModel]:
    from mirage_jax import checkpoint as ckpt

    meta = ckpt.read_metadata(path)
    if meta.get("kind") != "mirage":
        raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a Mirage model")
    stored = config_from_dict(meta["config"])
    if config is not None and _dit_config(config) != stored.dit:
        raise ConfigError(f"{path}: the checkpoint's backbone config {stored.dit} differs from the given {config!r}")
    abstract = nnx.eval_shape(lambda: MirageModel(stored, runtime))
    state = nnx.state(abstract)
    every = flat_variables(state)
    params = flat_variables(abstract)
    non_params = [k for k in every if k not in params]
    if non_params:
        fresh = _fresh(stored, runtime, non_params, target_shardings(state, mesh, rules), 0)
        for k in non_params:
            every[k].set_value(fresh[k])
    return stored, ckpt.restore_model(path, abstract, mesh=mesh, rules=rules)


def load_mirage(
    dit,
    control=None,
    lora=None,
    *,
    config: MirageConfig | WanDiTConfig | str | None = None,
    lora_alpha: float | None = None,
    fuse_lora: bool = True,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
    seed: int = 0,
) -> tuple[MirageConfig, MirageModel]:
    """Loads the reference's files (see the module docstring) into a :class:`MirageModel`.

    Args:
      dit: the backbone: an original-naming ``.safetensors`` file, a diffusers transformer
        directory, our orbax checkpoint of a backbone (``mirage-jax convert``), or our orbax
        checkpoint of a whole Mirage model (:func:`save_mirage_reference`; then ``control``
        and ``lora`` must be None).
      control: the control branch file (``.safetensors``, or a torch ``.pth/.pt/.ckpt/.bin``);
        None: a fresh branch (``config.control_init``).
      lora: the LoRA file; None: no LoRA (or fresh factors when ``config`` is a MirageConfig
        with ``lora_rank > 0``).
      config: :class:`MirageConfig` (its layer list, control channels and LoRA settings are
        used), :class:`WanDiTConfig`, a preset name (:data:`mirage_jax.convert.wan_dit.PRESETS`)
        or None (only for a diffusers directory or an orbax checkpoint).
      lora_alpha: the LoRA alpha in the reference's meaning for the mode (module docstring):
        fused ``W += lora_alpha * B @ A``, unfused scale ``lora_alpha / r``. None: our files'
        stored alpha, or the reference's defaults (scale 1) for its own files.
      fuse_lora: True: fuse into the kernels (the reference's inference; the returned config has
        ``lora_rank=0``); False: LoRA parameters (:data:`LoRAParam`: trainable, unmergeable).
      runtime, mesh, rules: as every loader (dtypes, scanned layers; sharding).
      seed: seed of the initialiser for what no file provides.
    Returns:
      ``(config, model)``: the config describes the returned model.
    Raises:
      ConfigError: no head count for a single-file backbone, a layer list that does not fit
        the control file's number of blocks.
      ConversionError / FileFormatError: missing, unexpected or mis-shaped keys (named).
    """
    from mirage_jax import checkpoint as ckpt
    from mirage_jax.convert.safetensors_io import open_safetensors
    from mirage_jax.convert.wan_dit import _transformer_dir, load_diffusers_config

    runtime = runtime or WanRuntime()
    dit_path = _transformer_dir(Path(dit))
    kind = ckpt.read_metadata(dit_path).get("kind") if ckpt.is_checkpoint(dit_path) else None
    if kind == "mirage":
        if control is not None or lora is not None:
            raise ConfigError(f"{dit_path} is a whole-model orbax checkpoint; pass no control / lora file with it")
        return _load_orbax(dit_path, config, runtime, mesh, rules)
    if kind is not None:  # a backbone written by `mirage-jax convert`, restored (sharded) per layer
        from mirage_jax.convert.wan_dit import load_transformer

        dit_cfg, backbone = load_transformer(dit_path, format="orbax", runtime=dataclasses.replace(runtime, scan_layers=False),
                                             mesh=mesh, rules=rules)
        dit_source, fmt = {"dit." + k: v.get_value() for k, v in flat_variables(backbone).items()}, "orbax"
    elif dit_path.is_dir():
        dit_cfg, fmt = load_diffusers_config(dit_path), "diffusers"
    else:
        dit_cfg, fmt = _dit_config(config), "wan"
        if dit_cfg is None:
            raise ConfigError(
                f"{dit_path}: a backbone file in the original Wan naming does not store the head count; pass "
                f"config= (a MirageConfig, a WanDiTConfig or a preset of {PRESETS}, e.g. 'wan22_ti2v_5b')"
            )
    given = _dit_config(config)
    if fmt != "wan" and given is not None and given != dit_cfg:
        raise ConfigError(f"{dit_path} holds a backbone {dit_cfg}, which differs from the given config {given}")
    if fmt != "orbax":
        dit_source = open_safetensors(dit_path)

    control_source, control_meta = read_control_file(control) if control is not None else ({}, {})
    if isinstance(config, MirageConfig):
        cfg = dataclasses.replace(config, dit=dit_cfg)
    else:
        kw: dict[str, Any] = {}
        if "control_layers" in control_meta:
            kw["control_layers"] = tuple(json.loads(control_meta["control_layers"]))
        if "vace_patch_embedding.weight" in control_source:
            kw["control_in_channels"] = int(np.shape(control_source["vace_patch_embedding.weight"])[1])
        cfg = MirageConfig(dit=dit_cfg, **kw)
    if control is not None:
        k = _num_vace_blocks(control_source)
        if k != cfg.num_control_blocks:
            raise ConfigError(
                f"{control}: the control file has {k} vace_blocks but the layer list {list(cfg.control_layers)} "
                f"has {cfg.num_control_blocks} entries (the file does not store the list; pass "
                f"config=MirageConfig(control_layers=...) with {k} layers)"
            )

    lora_source: Mapping = {}
    if lora is not None:
        lora_source, lora_meta = read_lora_file(lora)
        rank, targets = _lora_layout(lora_source, dit_cfg.num_layers, lora)
        stored_rank = _meta_float(lora_meta, "lora_rank", lora)
        if stored_rank is not None and stored_rank != rank:
            raise file_error(lora, f"metadata lora_rank={stored_rank:g} but the factors have rank {rank}", key="lora_rank")
        stored_alpha = _meta_float(lora_meta, "lora_alpha", lora)
        if lora_alpha is not None:  # the reference's meaning in each mode
            train_alpha, fuse_alpha = float(lora_alpha), float(lora_alpha)
        elif stored_alpha is not None:  # our file: trained with alpha / r
            train_alpha, fuse_alpha = stored_alpha, stored_alpha / rank
        else:  # the reference's defaults: training alpha = r, inference alpha 1 (both scale 1)
            train_alpha, fuse_alpha = float(rank), 1.0
        lora_cfg = dataclasses.replace(cfg, lora_rank=rank, lora_alpha=train_alpha, lora_targets=targets)
        cfg = dataclasses.replace(cfg, lora_rank=0) if fuse_lora else lora_cfg

    abstract = nnx.eval_shape(lambda: MirageModel(cfg, runtime))
    all_vars = flat_variables(nnx.state(abstract))
    params = flat_variables(abstract)
    canon = _canonical({k: tuple(v.get_value().shape) for k, v in params.items()}, runtime.scan_layers)
    is_lora = re.compile(r".*\.lora_[ab]$")

    # Backbone, then the control branch and LoRA, each with its table's coverage check.
    dit_wanted = {k: s for k, s in canon.items() if k.startswith("dit.") and not is_lora.match(k)}
    if fmt == "orbax":  # already our names and layout (place checks the shapes)
        if set(dit_source) != set(dit_wanted):
            raise ConversionError(f"{dit_path}: backbone parameters missing {sorted(set(dit_wanted) - set(dit_source))[:10]}, "
                                  f"unexpected {sorted(set(dit_source) - set(dit_wanted))[:10]}")
        arrays: dict[str, Any] = dict(dit_source)
    else:
        arrays = convert(dit_source, backbone_rules(fmt), dit_wanted, what=str(dit_path), lazy=True,
                         ignore=DIFFUSERS_IGNORE if fmt == "diffusers" else ())
    control_wanted = {k: s for k, s in canon.items() if k.startswith("control.")}
    if control is not None:
        arrays.update(convert(control_source, control_rules("wan"), control_wanted, what=str(control), lazy=True))
    elif cfg.control_init == "copy":
        for k in control_wanted:
            m = re.fullmatch(r"control\.blocks\.(\d+)\.(.+)", k)
            if m:
                arrays[k] = arrays[f"dit.blocks.{cfg.control_layers[int(m[1])]}.{m[2]}"]
    if lora is not None:
        abstract_lora = abstract if not fuse_lora else nnx.eval_shape(lambda: MirageModel(lora_cfg, runtime))
        lora_canon = _canonical({k: tuple(v.get_value().shape) for k, v in flat_variables(abstract_lora).items()},
                                runtime.scan_layers)
        factors = convert(lora_source, LORA_RULES, {k: s for k, s in lora_canon.items() if is_lora.match(k)},
                          what=str(lora), lazy=True)
        if not fuse_lora:
            arrays.update(factors)
        else:
            for key in factors:
                if key.endswith(".lora_a"):
                    base = key[: -len(".lora_a")]
                    i, t = re.fullmatch(r"dit\.blocks\.(\d+)\.(.+)", base).groups()
                    orig = f"blocks.{i}.{REFERENCE_TARGET_NAMES[t]}"
                    a, b = lora_source[orig + ".lora_A.weight"], lora_source[orig + ".lora_B.weight"]
                    arrays[base + ".kernel"] = _fused_kernel(arrays[base + ".kernel"], a, b, fuse_alpha, canon[base + ".kernel"])

    # Whatever no file provides, from the initialiser (native layout paths).
    provided_prefixes = ["dit."] + (["control."] if control is not None else []) + (
        ["control.blocks."] if control is None and cfg.control_init == "copy" else [])
    missing = [
        k for k in all_vars
        if k not in params
        or (is_lora.match(k) and lora is None)
        or (not is_lora.match(k) and not any(k.startswith(p) for p in provided_prefixes))
    ]
    if missing:
        arrays.update(_fresh(cfg, runtime, missing, target_shardings(nnx.state(abstract), mesh, rules), seed))
    model = place(abstract, arrays, mesh=mesh, rules=rules, what=f"Mirage weights from {dit_path}")
    return cfg, model


# ------------------------------------------------------------------------------------------------
# Export.
# ------------------------------------------------------------------------------------------------


def _model_arrays(model: MirageModel, prefix: str) -> dict[str, np.ndarray]:
    flat = {k: np.asarray(jax.device_get(v.get_value())) for k, v in flat_variables(model).items() if k.startswith(prefix)}
    return _canonical(flat, model.runtime.scan_layers)


def _check_unmerged(model: MirageModel) -> None:
    merged = [".".join(map(str, p)) for p, m in nnx.iter_graph(model) if isinstance(m, LoRADense) and m.merged]
    if merged:
        raise ConfigError(f"LoRA is merged into the kernels of {merged[:3]}...; call unmerge_lora(model) before saving")


def export_control(model: MirageModel) -> dict[str, np.ndarray]:
    """The control branch in the reference's naming (``vace_*``)."""
    return export(_model_arrays(model, "control."), control_rules("wan"), what="control branch")


def export_lora(model: MirageModel) -> dict[str, np.ndarray]:
    """The LoRA factors in the reference's naming (``pipe.dit.blocks.N.<module>.lora_{A,B}.weight``)."""
    _check_unmerged(model)
    flat = {k: v for k, v in _model_arrays(model, "dit.").items() if re.search(r"\.lora_[ab]$", k)}
    return {LORA_WRITE_PREFIX + k: v for k, v in export(flat, LORA_RULES, what="LoRA").items()}


def save_mirage_reference(model: MirageModel, out_dir: str | os.PathLike, *, force: bool = False) -> dict[str, Path]:
    """Writes ``out_dir/control.safetensors`` (reference naming; metadata ``control_layers``),
    ``out_dir/lora.safetensors`` (reference naming; metadata ``lora_rank`` / ``lora_alpha``;
    only for a model with LoRA parameters) and ``out_dir/orbax`` (the whole model,
    :func:`mirage_jax.checkpoint.save_model`, metadata ``kind="mirage"``, the config, LoRA rank and
    alpha). The reference reads the first two (its loader ignores the metadata); :func:`load_mirage`
    reads all three back. Returns ``{"control": path, "lora": path, "orbax": path}``."""
    from mirage_jax import checkpoint as ckpt
    from mirage_jax.convert.safetensors_io import save_safetensors

    cfg = model.config
    _check_unmerged(model)
    out = Path(out_dir)
    if (out / "orbax").exists() and not force:
        raise ckpt.CheckpointError(f"{out / 'orbax'} exists; pass force=True to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"control": out / "control.safetensors"}
    save_safetensors(paths["control"], export_control(model),
                     metadata={"format": "pt", "control_layers": json.dumps(list(cfg.control_layers))})
    if cfg.lora_rank > 0:
        paths["lora"] = out / "lora.safetensors"
        save_safetensors(paths["lora"], export_lora(model), metadata={
            "format": "pt", "lora_rank": str(cfg.lora_rank), "lora_alpha": repr(float(cfg.lora_alpha))})
    paths["orbax"] = ckpt.save_model(out / "orbax", model, force=force, metadata={
        "kind": "mirage", "config": config_to_dict(cfg), "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha})
    return paths
