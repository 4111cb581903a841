"""Wan VAE checkpoints <-> :class:`mirage_jax.models.wan.vae.WanVAE`.

Two source namings are supported, each as a declarative :class:`~mirage_jax.convert.table.Rule`
table (exactly invertible, so export reproduces the source bit for bit):

* **diffusers** (``AutoencoderKLWan``; a directory with ``config.json`` and
  ``diffusion_pytorch_model*.safetensors``, sharded index included). Our NNX tree mirrors
  diffusers' module names, so the table only renames leaves (``weight`` -> ``kernel`` with a
  layout transform, ``gamma`` -> ``scale`` squeezed) and the resample ``Sequential`` index
  (``resample.1`` -> ``conv``).
* **original Wan-AI release** (``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth``): ``encoder.conv1``,
  ``downsamples``, ``residual.{0,2,3,6}``, ``middle.{0,1,2}``, ``head.{0,2}``, ``conv1``/``conv2``
  for the quant convs. The table depends on the config (flat block indices of Wan2.1's decoder).
  ``.pth`` files are read with ``torch.load(weights_only=True)`` only, and only when torch is
  installed; the same naming stored as ``.safetensors`` needs no torch.

Public API: :func:`load_diffusers_vae`, :func:`load_wan_original_vae`, :func:`save_diffusers_vae`,
:func:`convert_diffusers_state`, :func:`convert_original_state`, :func:`export_diffusers_state`,
:func:`export_original_state`, :func:`diffusers_rules`, :func:`original_rules`.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mirage_jax.convert.place import place
from mirage_jax.convert.safetensors_io import open_safetensors, save_safetensors
from mirage_jax.convert.table import (
    CONV,
    IDENTITY,
    ConversionError,
    Rule,
    Transform,
    convert,
    export,
    flat_state_arrays,
    flat_state_shapes,
    read_config_json,
)
from mirage_jax.errors import ConfigError, file_error

Array = np.ndarray

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_NAME = "config.json"


def _squeeze_gamma(ndim: int) -> Transform:
    """diffusers' RMS gamma [C, 1, ..., 1] (``ndim`` dims) <-> our scale [C]."""
    return Transform(
        f"gamma{ndim}d",
        lambda x: np.ascontiguousarray(x.reshape(x.shape[0])),
        lambda x: np.ascontiguousarray(x.reshape((x.shape[0],) + (1,) * (ndim - 1))),
        lambda s: (s[0],) if len(s) == ndim and all(d == 1 for d in s[1:]) else tuple(s),
    )


GAMMA_3D = _squeeze_gamma(4)  # WanRMS_norm(images=False): [C, 1, 1, 1]
GAMMA_2D = _squeeze_gamma(3)  # WanRMS_norm(images=True) (attention): [C, 1, 1]


# ----------------------------------------------------------------------------------------------
# Rule tables. Each table is built from (source prefix, target prefix) pairs times the leaves of
# the component found there; prefixes are regexes whose named groups each match one path part.
# ----------------------------------------------------------------------------------------------


def _conv_leaves(src: str, dst: str) -> list[Rule]:
    return [Rule(src + r"\.weight", dst + ".kernel", CONV), Rule(src + r"\.bias", dst + ".bias", IDENTITY)]


def _resnet_leaves(src: str, dst: str, original: bool) -> list[Rule]:
    """WanResidualBlock. diffusers: norm1/conv1/norm2/conv2/conv_shortcut; original:
    residual.0 (norm) .2 (conv) .3 (norm) .6 (conv) and shortcut."""
    names = (
        {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6", "conv_shortcut": "shortcut"}
        if original
        else {k: k for k in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut")}
    )
    rules = []
    for ours, theirs in names.items():
        s = src + r"\." + re.escape(theirs)
        if ours.startswith("norm"):
            rules.append(Rule(s + r"\.gamma", f"{dst}.{ours}.scale", GAMMA_3D))
        else:
            rules += _conv_leaves(s, f"{dst}.{ours}")
    return rules


def _attention_leaves(src: str, dst: str) -> list[Rule]:
    """WanAttentionBlock (same leaf names in both namings)."""
    return [
        Rule(src + r"\.norm\.gamma", dst + ".norm.scale", GAMMA_2D),
        *_conv_leaves(src + r"\.to_qkv", dst + ".to_qkv"),
        *_conv_leaves(src + r"\.proj", dst + ".proj"),
    ]


def _resample_leaves(src: str, dst: str) -> list[Rule]:
    """WanResample: the 2D conv is index 1 of the ``resample`` Sequential; optional time_conv."""
    return [*_conv_leaves(src + r"\.resample\.1", dst + ".conv"), *_conv_leaves(src + r"\.time_conv", dst + ".time_conv")]


def diffusers_rules() -> list[Rule]:
    """diffusers ``AutoencoderKLWan`` state-dict names -> WanVAE paths (both Wan2.1 and Wan2.2)."""
    side = r"(?P<s>encoder|decoder)"
    rules: list[Rule] = []
    rules += _conv_leaves(r"(?P<q>quant_conv|post_quant_conv)", "{q}")
    rules += _conv_leaves(side + r"\.(?P<c>conv_in|conv_out)", "{s}.{c}")
    rules.append(Rule(side + r"\.norm_out\.gamma", "{s}.norm_out.scale", GAMMA_3D))
    rules += _resnet_leaves(side + r"\.mid_block\.resnets\.(?P<j>\d+)", "{s}.mid_block.resnets.{j}", False)
    rules += _attention_leaves(side + r"\.mid_block\.attentions\.(?P<j>\d+)", "{s}.mid_block.attentions.{j}")
    # Wan2.2 (is_residual): nested blocks.
    rules += _resnet_leaves(r"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)", "encoder.down_blocks.{i}.resnets.{j}", False)
    rules += _resample_leaves(r"encoder\.down_blocks\.(?P<i>\d+)\.downsampler", "encoder.down_blocks.{i}.downsampler")
    rules += _resnet_leaves(r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)", "decoder.up_blocks.{i}.resnets.{j}", False)
    rules += _resample_leaves(r"decoder\.up_blocks\.(?P<i>\d+)\.upsampler", "decoder.up_blocks.{i}.upsampler")
    # Wan2.1: a flat encoder list of resnets / attentions / resamples; decoder upsamplers.0.
    rules += _resnet_leaves(r"encoder\.down_blocks\.(?P<i>\d+)", "encoder.down_blocks.{i}", False)
    rules += _attention_leaves(r"encoder\.down_blocks\.(?P<i>\d+)", "encoder.down_blocks.{i}")
    rules += _resample_leaves(r"encoder\.down_blocks\.(?P<i>\d+)", "encoder.down_blocks.{i}")
    rules += _resample_leaves(r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0", "decoder.up_blocks.{i}.upsamplers.0")
    return rules


def original_rules(config) -> list[Rule]:
    """Original Wan-AI VAE names (``Wan2.x_VAE.pth``) -> WanVAE paths, for ``config``."""
    rules: list[Rule] = []
    rules += _conv_leaves(r"conv1", "quant_conv")
    rules += _conv_leaves(r"conv2", "post_quant_conv")
    side = r"(?P<s>encoder|decoder)"
    rules += _conv_leaves(side + r"\.conv1", "{s}.conv_in")
    rules += _conv_leaves(side + r"\.head\.2", "{s}.conv_out")
    rules.append(Rule(side + r"\.head\.0\.gamma", "{s}.norm_out.scale", GAMMA_3D))
    rules += _resnet_leaves(side + r"\.middle\.0", "{s}.mid_block.resnets.0", True)
    rules += _attention_leaves(side + r"\.middle\.1", "{s}.mid_block.attentions.0")
    rules += _resnet_leaves(side + r"\.middle\.2", "{s}.mid_block.resnets.1", True)
    n_res = config.num_res_blocks
    if config.is_residual:
        # Down_ResidualBlock / Up_ResidualBlock: one nn.Sequential each, resample last.
        rules += _resample_leaves(rf"encoder\.downsamples\.(?P<i>\d+)\.downsamples\.{n_res}", "encoder.down_blocks.{i}.downsampler")
        rules += _resnet_leaves(r"encoder\.downsamples\.(?P<i>\d+)\.downsamples\.(?P<j>\d+)", "encoder.down_blocks.{i}.resnets.{j}", True)
        rules += _resample_leaves(rf"decoder\.upsamples\.(?P<i>\d+)\.upsamples\.{n_res + 1}", "decoder.up_blocks.{i}.upsampler")
        rules += _resnet_leaves(r"decoder\.upsamples\.(?P<i>\d+)\.upsamples\.(?P<j>\d+)", "decoder.up_blocks.{i}.resnets.{j}", True)
    else:
        # The encoder list is flat in both namings (same indices).
        rules += _resnet_leaves(r"encoder\.downsamples\.(?P<i>\d+)", "encoder.down_blocks.{i}", True)
        rules += _attention_leaves(r"encoder\.downsamples\.(?P<i>\d+)", "encoder.down_blocks.{i}")
        rules += _resample_leaves(r"encoder\.downsamples\.(?P<i>\d+)", "encoder.down_blocks.{i}")
        # The original decoder list is flat too: per stage num_res_blocks + 1 resnets, then the
        # upsampler (all stages but the last); diffusers groups them in up_blocks.
        k = 0
        for i in range(len(config.dim_mult)):
            for j in range(n_res + 1):
                rules += _resnet_leaves(rf"decoder\.upsamples\.{k}", f"decoder.up_blocks.{i}.resnets.{j}", True)
                k += 1
            if i != len(config.dim_mult) - 1:
                rules += _resample_leaves(rf"decoder\.upsamples\.{k}", f"decoder.up_blocks.{i}.upsamplers.0")
                k += 1
    return rules


# ----------------------------------------------------------------------------------------------
# State conversion.
# ----------------------------------------------------------------------------------------------


def _abstract_model(config, runtime=None):
    from flax import nnx

    from mirage_jax.models.wan.vae import WanVAE

    return nnx.eval_shape(lambda: WanVAE(config, runtime))


def model_shapes(config) -> dict[str, tuple]:
    """{NNX path: shape} of every WanVAE parameter for ``config`` (no memory; cached per config)."""
    return dict(_model_shapes_cached(config))


@functools.lru_cache(maxsize=16)
def _model_shapes_cached(config) -> tuple:
    return tuple(flat_state_shapes(_abstract_model(config)).items())


def convert_diffusers_state(state: Mapping[str, Any], config, what: str = "diffusers AutoencoderKLWan", lazy: bool = False) -> dict[str, Any]:
    """diffusers-named arrays -> {WanVAE path: array} (``lazy``: :class:`~mirage_jax.convert.place.Lazy`
    readers); ConversionError lists any coverage problem."""
    return convert(_as_numpy(state), diffusers_rules(), model_shapes(config), what=what, lazy=lazy)


def convert_original_state(state: Mapping[str, Any], config, what: str = "original Wan VAE", lazy: bool = False) -> dict[str, Any]:
    """Original Wan-named arrays -> {WanVAE path: array}; ConversionError lists any coverage problem."""
    return convert(_as_numpy(state), original_rules(config), model_shapes(config), what=what, lazy=lazy)


def export_diffusers_state(model) -> dict[str, Array]:
    """WanVAE parameters -> diffusers ``AutoencoderKLWan`` state dict (NumPy, exact inverse)."""
    return export(flat_state_arrays(model), diffusers_rules(), what="WanVAE -> diffusers")


def export_original_state(model) -> dict[str, Array]:
    """WanVAE parameters -> original Wan-AI naming (NumPy, exact inverse)."""
    return export(flat_state_arrays(model), original_rules(model.config), what="WanVAE -> original Wan")


def vae_from_state(config, state: Mapping[str, Any], *, format: str = "diffusers", runtime=None, mesh=None, rules=None,
                   what: str | None = None):
    """A :class:`WanVAE` holding a flat checkpoint ``state`` (diffusers or original ``format``
    names; NumPy / memory-mapped / torch arrays), without a random init: names and shapes are
    checked first (ConversionError lists every problem), then each parameter is converted and
    placed by :func:`mirage_jax.convert.place.place` (sharded over ``mesh`` with ``rules``).
    ``runtime``: a :class:`~mirage_jax.models.wan.WanRuntime` (``param_dtype``, ``dtype``,
    ``precision``)."""
    if format == "diffusers":
        arrays = convert_diffusers_state(state, config, what=what or "diffusers AutoencoderKLWan", lazy=True)
    elif format == "wan":
        arrays = convert_original_state(state, config, what=what or "original Wan VAE", lazy=True)
    else:
        raise ConfigError(f"format must be 'diffusers' or 'wan', got {format!r}")
    return place(_abstract_model(config, runtime), arrays, mesh=mesh, rules=rules, what=what or "checkpoint")


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------


def _as_numpy(state: Mapping[str, Any]) -> dict[str, Array]:
    out = {}
    for k, v in state.items():
        if hasattr(v, "detach"):  # a torch tensor (only reached when the caller has torch)
            out[k] = _torch_to_numpy(v)
        else:
            out[k] = np.asarray(v)
    return out


def _torch_to_numpy(t) -> Array:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_diffusers_dir(path) -> tuple[Any, Mapping[str, Array]]:
    """(:class:`WanVAEConfig`, lazy state) of a diffusers AutoencoderKLWan directory (or of a
    pipeline directory's ``vae`` subfolder). Every problem is a FileFormatError naming the file.

    Weights are read through :func:`mirage_jax.convert.safetensors_io.open_safetensors`
    (single file or sharded index, checked against its shards); only safetensors are read.
    """
    from mirage_jax.models.wan.vae import WanVAEConfig

    path = Path(path)
    if not path.is_dir():
        raise file_error(path, f"not a directory (expected a diffusers VAE folder with {CONFIG_NAME})")
    if not (path / CONFIG_NAME).is_file() and (path / "vae" / CONFIG_NAME).is_file():
        path = path / "vae"  # a whole pipeline directory
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise file_error(path, f"no {CONFIG_NAME}")
    config = read_config_json(cfg_path, WanVAEConfig.from_diffusers, WanVAEConfig)
    if not (path / SAFETENSORS_INDEX).is_file() and not (path / SAFETENSORS_NAME).is_file():
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        raise file_error(
            path, f"neither {SAFETENSORS_NAME} nor {SAFETENSORS_INDEX} (weight files present: {others}); "
            "only safetensors are read from diffusers directories"
        )
    return config, open_safetensors(path)


def read_torch_checkpoint(path) -> dict[str, Array]:
    """A torch state dict saved with torch.save, read with ``torch.load(weights_only=True)``."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError(
            f"{path}: reading a .pth checkpoint needs PyTorch (pip install torch); alternatively "
            "convert it once to safetensors with the same key names and load that"
        ) from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and len(state) == 1:
        (key, inner), = state.items()
        if key in ("state_dict", "model") and isinstance(inner, Mapping):
            state = inner
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    bad = [k for k, v in state.items() if not hasattr(v, "detach")]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {bad[:10]}")
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def load_diffusers_vae(path, *, runtime=None, mesh=None, rules=None):
    """Loads a diffusers AutoencoderKLWan directory -> ``(WanVAEConfig, WanVAE)``.

    ``path``: the VAE folder (``config.json`` + ``diffusion_pytorch_model[-0000x-of-0000n].safetensors``
    with its index) or a pipeline folder with a ``vae`` subfolder. Safetensors only (no torch).
    ``runtime``: :class:`~mirage_jax.models.wan.WanRuntime` (``param_dtype`` stored, ``dtype``
    compute, ``precision``; float32 by default); ``mesh`` / ``rules``: shard the parameters.
    """
    config, state = read_diffusers_dir(path)
    model = vae_from_state(config, state, format="diffusers", runtime=runtime, mesh=mesh, rules=rules,
                           what=f"{path} (diffusers AutoencoderKLWan)")
    return config, model


def _original_config_for(state: Mapping[str, Array]):
    from mirage_jax.models.wan.vae import WanVAEConfig

    nested = any(re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in state)
    return WanVAEConfig.wan22() if nested else WanVAEConfig.wan21()


def load_wan_original_vae(path, config=None, *, runtime=None, mesh=None, rules=None):
    """Loads an original Wan-AI VAE checkpoint -> ``(WanVAEConfig, WanVAE)``.

    ``path``: ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` (read with ``torch.load(weights_only=True)``,
    requires torch) or a ``.safetensors`` file with the same key names (no torch needed).
    ``config``: defaults to :meth:`WanVAEConfig.wan22` when the keys have Wan2.2's nested
    ``downsamples.i.downsamples.j`` blocks and to :meth:`WanVAEConfig.wan21` otherwise; pass
    one explicitly for other sizes (a mismatch raises a ConversionError listing the shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such checkpoint file")
    state = open_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)
    if config is None:
        config = _original_config_for(state)
    model = vae_from_state(config, state, format="wan", runtime=runtime, mesh=mesh, rules=rules,
                           what=f"{path} (original Wan VAE)")
    return config, model


def save_diffusers_vae(model, config, directory, *, dtype=None) -> Path:
    """Writes ``config.json`` + ``diffusion_pytorch_model.safetensors`` loadable by diffusers'
    ``AutoencoderKLWan.from_pretrained(directory)``. ``dtype``: NumPy dtype to store (default:
    the parameters' own dtype)."""
    if config != model.config:
        raise ConfigError("save_diffusers_vae: config differs from the model's own config")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = export_diffusers_state(model)
    if dtype is not None:
        state = {k: v.astype(dtype) for k, v in state.items()}
    save_safetensors(directory / SAFETENSORS_NAME, state, metadata={"format": "pt"})
    cfg = config.to_diffusers()
    try:
        import diffusers

        cfg["_diffusers_version"] = diffusers.__version__
    except ImportError:
        pass
    with open(directory / CONFIG_NAME, "w") as f:
        json.dump(cfg, f, indent=2)
    return directory


__all__ = [
    "convert_diffusers_state",
    "convert_original_state",
    "diffusers_rules",
    "export_diffusers_state",
    "export_original_state",
    "load_diffusers_vae",
    "load_vae",
    "load_wan_original_vae",
    "vae_from_state",
    "model_shapes",
    "original_rules",
    "read_diffusers_dir",
    "read_torch_checkpoint",
    "save_diffusers_vae",
]


def load_vae(path, *, format: str = "auto", config=None, runtime=None, mesh=None, rules=None):
    """One entry point -> ``(WanVAEConfig, WanVAE)``: an orbax checkpoint written by
    ``mirage-jax convert``, a diffusers directory, or an original Wan file
    (``format``: auto | orbax | diffusers | wan; ``config`` only for the original naming)."""
    from mirage_jax import checkpoint as ckpt
    from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig

    path = Path(path)
    if format == "auto":
        format = "orbax" if ckpt.is_checkpoint(path) else ("wan" if path.is_file() else "diffusers")
    if format == "orbax":
        meta = ckpt.read_metadata(path)
        if meta.get("kind") != "wan_vae":
            raise ConversionError(f"{path} holds a {meta.get('kind')!r} checkpoint, not a Wan VAE")
        cfg = WanVAEConfig.from_diffusers(meta["config"])
        return cfg, ckpt.restore_model(path, lambda: WanVAE(cfg, runtime), mesh=mesh, rules=rules)
    if format == "diffusers":
        return load_diffusers_vae(path, runtime=runtime, mesh=mesh, rules=rules)
    if format == "wan":
        return load_wan_original_vae(path, config, runtime=runtime, mesh=mesh, rules=rules)
    raise ConfigError(f"format must be auto, orbax, diffusers or wan; got {format!r}")
