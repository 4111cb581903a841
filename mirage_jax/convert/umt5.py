"""umT5 text encoder checkpoints: transformers and original Wan naming <-> :class:`UMT5Encoder`.

Name tables (source regex -> NNX path; Linear weights ``[out, in]`` become kernels ``[in, out]``):

  ====================================================================  ===============================  ==============================
  transformers (``UMT5EncoderModel``, diffusers ``text_encoder/``)      original Wan (``T5Encoder``)     ours
  ====================================================================  ===============================  ==============================
  shared.weight (or encoder.embed_tokens.weight)                        token_embedding.weight           token_embedding
  encoder.block.N.layer.0.layer_norm.weight                             blocks.N.norm1.weight            blocks.N.norm1.scale
  encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight                blocks.N.attn.{q,k,v,o}.weight   blocks.N.attn.{q,k,v,o}.kernel
  encoder.block.N.layer.0.SelfAttention.relative_attention_bias.weight  blocks.N.pos_embedding.          blocks.N.attn.
                                                                        embedding.weight                 relative_attention_bias
  encoder.block.N.layer.1.layer_norm.weight                             blocks.N.norm2.weight            blocks.N.norm2.scale
  encoder.block.N.layer.1.DenseReluDense.wi_0.weight (GELU branch)      blocks.N.ffn.gate.0.weight       blocks.N.ffn.wi_0.kernel
  encoder.block.N.layer.1.DenseReluDense.wi_1.weight (linear branch)    blocks.N.ffn.fc1.weight          blocks.N.ffn.wi_1.kernel
  encoder.block.N.layer.1.DenseReluDense.wo.weight                      blocks.N.ffn.fc2.weight          blocks.N.ffn.wo.kernel
  encoder.final_layer_norm.weight                                       norm.weight                      final_norm.scale
  ====================================================================  ===============================  ==============================

transformers ties ``encoder.embed_tokens.weight`` to ``shared.weight``; when both are stored the
shared one is read (as transformers does). The encoder half of a full umT5 checkpoint loads too:
``decoder.*`` and ``lm_head.weight`` are skipped by name.

Loading streams as the Wan DiT loader does: names and shapes are checked against the model first
(nothing read), then :func:`mirage_jax.convert.place.place` converts one tensor at a time into
its target sharding. The original Wan file (``models_t5_umt5-xxl-enc-bf16.pth``) is a torch
pickle and is read only through ``torch.load(weights_only=True)``; its configuration is read from
the tensor shapes (heads and buckets from the position bias tables), with Wan's fixed maximum
distance 128.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mirage_jax.convert.place import place
from mirage_jax.convert.safetensors_io import open_safetensors, save_sharded_safetensors
from mirage_jax.convert.table import LINEAR, ConversionError, Rule, convert, export, read_config_json
from mirage_jax.convert.wan_dit import canonical_arrays, canonical_shapes
from mirage_jax.errors import file_error
from mirage_jax.models.umt5.model import UMT5Config, UMT5Encoder
from mirage_jax.models.wan.layers import WanRuntime

__all__ = [
    "TRANSFORMERS_RULES",
    "WAN_RULES",
    "FORMATS",
    "config_from_wan_state",
    "detect_format",
    "encoder_from_state",
    "export_state",
    "load_umt5",
    "load_umt5_config",
    "load_wan_original_umt5",
    "save_umt5",
]

_N = r"(?P<i>\d+)"


def _rules(embedding: str, norm1: str, attn: str, bias: str, norm2: str, ffn: Mapping[str, str], final: str) -> tuple[Rule, ...]:
    rules = [Rule(embedding, "token_embedding")]
    rules.append(Rule(rf"{norm1}\.weight", "blocks.{i}.norm1.scale"))
    rules += [Rule(rf"{attn}\.{p}\.weight", f"blocks.{{i}}.attn.{p}.kernel", LINEAR) for p in "qkvo"]
    rules.append(Rule(bias, "blocks.{i}.attn.relative_attention_bias"))
    rules.append(Rule(rf"{norm2}\.weight", "blocks.{i}.norm2.scale"))
    rules += [Rule(rf"{src}\.weight", f"blocks.{{i}}.ffn.{ours}.kernel", LINEAR) for ours, src in ffn.items()]
    rules.append(Rule(rf"{final}\.weight", "final_norm.scale"))
    return tuple(rules)


_B = rf"encoder\.block\.{_N}\.layer"
TRANSFORMERS_RULES: tuple[Rule, ...] = _rules(
    r"shared\.weight",
    rf"{_B}\.0\.layer_norm",
    rf"{_B}\.0\.SelfAttention",
    rf"{_B}\.0\.SelfAttention\.relative_attention_bias\.weight",
    rf"{_B}\.1\.layer_norm",
    {n: rf"{_B}\.1\.DenseReluDense\.{n}" for n in ("wi_0", "wi_1", "wo")},
    r"encoder\.final_layer_norm",
)
# A checkpoint that stores the tied embedding under the encoder's name only.
_TRANSFORMERS_ENCODER_EMBEDDING = (Rule(r"encoder\.embed_tokens\.weight", "token_embedding"),) + TRANSFORMERS_RULES[1:]
# Not part of the encoder: the tied copy (when shared.weight is there) and a full model's decoder.
_TRANSFORMERS_IGNORE = (r"encoder\.embed_tokens\.weight", r"decoder\..*", r"lm_head\.weight")

WAN_RULES: tuple[Rule, ...] = _rules(
    r"token_embedding\.weight",
    rf"blocks\.{_N}\.norm1",
    rf"blocks\.{_N}\.attn",
    rf"blocks\.{_N}\.pos_embedding\.embedding\.weight",
    rf"blocks\.{_N}\.norm2",
    {"wi_0": rf"blocks\.{_N}\.ffn\.gate\.0", "wi_1": rf"blocks\.{_N}\.ffn\.fc1", "wo": rf"blocks\.{_N}\.ffn\.fc2"},
    r"norm",
)

FORMATS = ("transformers", "wan")
CONFIG_NAME = "config.json"
WEIGHTS_PREFIX = "model"  # model.safetensors / model.safetensors.index.json (transformers)


def _table(format: str, keys) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    if format == "wan":
        return WAN_RULES, ()
    if format != "transformers":
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if "shared.weight" not in keys and "encoder.embed_tokens.weight" in keys:
        return _TRANSFORMERS_ENCODER_EMBEDDING, _TRANSFORMERS_IGNORE[1:]
    return TRANSFORMERS_RULES, _TRANSFORMERS_IGNORE


def detect_format(keys) -> str:
    """``"transformers"`` or ``"wan"`` from checkpoint key names (raises when neither fits)."""
    keys = list(keys)
    if any(k.startswith("encoder.block.") or k == "shared.weight" for k in keys):
        return "transformers"
    if any(k == "token_embedding.weight" or k.startswith("blocks.") and ".pos_embedding." in k for k in keys):
        return "wan"
    raise ConversionError(f"cannot tell the umT5 checkpoint naming from keys like {sorted(keys)[:5]}")


# ------------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------------


def _encoder_dir(path: Path) -> Path:
    """A diffusers pipeline directory -> its ``text_encoder`` subfolder; other paths unchanged."""
    if path.is_dir() and not (path / CONFIG_NAME).exists() and (path / "text_encoder" / CONFIG_NAME).exists():
        return path / "text_encoder"
    return path


def load_umt5_config(path: str | os.PathLike) -> UMT5Config:
    """:class:`UMT5Config` of a transformers directory (or its ``config.json``)."""
    path = _encoder_dir(Path(path))
    cfg_path = path / CONFIG_NAME if path.is_dir() else path
    if not cfg_path.is_file():
        raise file_error(cfg_path, "no transformers config.json there")
    return read_config_json(cfg_path, UMT5Config.from_transformers)


def config_from_wan_state(state: Mapping[str, Any], what: str = "original Wan umT5") -> UMT5Config:
    """The :class:`UMT5Config` an original Wan ``T5Encoder`` state dict describes (every size
    from the shapes; ``relative_attention_max_distance`` is Wan's fixed 128)."""

    def shape(key):
        if key not in state:
            raise ConversionError(f"{what}: no {key!r}; not an original Wan umT5 encoder (keys like {sorted(state)[:5]})")
        return tuple(np.shape(state[key]))

    vocab, d_model = shape("token_embedding.weight")
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    if layers != list(range(len(layers))):
        raise ConversionError(f"{what}: block indices {layers} are not 0..{len(layers) - 1}")
    buckets, heads = shape("blocks.0.pos_embedding.embedding.weight")
    inner = shape("blocks.0.attn.q.weight")[0]
    if inner % heads:
        raise ConversionError(f"{what}: attention width {inner} is not divisible by the {heads} heads of the position bias")
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=shape("blocks.0.ffn.fc1.weight")[0],
                      num_layers=len(layers), num_heads=heads, relative_attention_num_buckets=buckets)


# ------------------------------------------------------------------------------------------------
# Loading.
# ------------------------------------------------------------------------------------------------


def encoder_from_state(
    config: UMT5Config,
    source: Mapping[str, Any],
    *,
    format: str = "transformers",
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
    what: str = "checkpoint",
) -> UMT5Encoder:
    """A :class:`UMT5Encoder` holding a flat ``{name: array}`` checkpoint (``format`` naming),
    never randomly initialised: names and shapes are checked first (full coverage, nothing read),
    then each tensor is converted and placed (``mesh`` + logical ``rules``, or the default device).

    Raises :class:`ConversionError` listing missing / unexpected / mis-shaped keys.
    """
    table, ignore = _table(format, source.keys())
    runtime = runtime or WanRuntime()
    abstract = nnx.eval_shape(lambda: UMT5Encoder(config, runtime))
    arrays = convert(source, table, canonical_shapes(abstract), ignore=ignore, what=what, lazy=True)
    return place(abstract, arrays, mesh=mesh, rules=rules, what=what)


def load_wan_original_umt5(
    path: str | os.PathLike,
    config: UMT5Config | None = None,
    *,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[UMT5Config, UMT5Encoder]:
    """Loads Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (``torch.load(weights_only=True)``; needs
    torch) or a ``.safetensors`` file with the same names (no torch). ``config`` defaults to the
    one the shapes describe (:func:`config_from_wan_state`); a given one must fit the shapes."""
    from mirage_jax.convert.wan_vae import read_torch_checkpoint

    path = Path(path)
    if not path.is_file():
        raise file_error(path, "no such file (expected Wan's models_t5_umt5-xxl-enc-bf16.pth or a .safetensors file)")
    state = open_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)
    config = config or config_from_wan_state(state, what=str(path))
    return config, encoder_from_state(config, state, format="wan", runtime=runtime, mesh=mesh, rules=rules, what=str(path))


def load_umt5(
    path: str | os.PathLike,
    *,
    runtime: WanRuntime | None = None,
    mesh: Mesh | None = None,
    rules=None,
) -> tuple[UMT5Config, UMT5Encoder]:
    """Loads a umT5 text encoder -> ``(config, encoder)``.

    ``path``: a transformers directory (``config.json`` + ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``; a diffusers pipeline directory with ``text_encoder/``
    works too), or an original Wan file (``.pth`` / ``.safetensors`` in Wan naming, see
    :func:`load_wan_original_umt5`). ``runtime``: dtypes, attention, remat, scanned layers;
    ``mesh`` + ``rules``: parameters created directly in their shardings.
    """
    path = _encoder_dir(Path(path))
    if path.is_file():
        return load_wan_original_umt5(path, runtime=runtime, mesh=mesh, rules=rules)
    if not path.is_dir():
        raise file_error(path, "does not exist (expected a transformers umT5 directory or a Wan .pth file)")
    config = load_umt5_config(path)
    source = open_safetensors(path, prefer=WEIGHTS_PREFIX)
    encoder = encoder_from_state(config, source, format=detect_format(source.keys()), runtime=runtime, mesh=mesh,
                                 rules=rules, what=str(path))
    return config, encoder


# ------------------------------------------------------------------------------------------------
# Export.
# ------------------------------------------------------------------------------------------------


def export_state(encoder: UMT5Encoder, format: str = "transformers", dtype=None) -> dict[str, np.ndarray]:
    """The encoder's parameters as a flat ``{checkpoint name: np.ndarray}`` in ``format``
    (transformers: ``shared.weight`` holds the embedding, as ``save_pretrained`` writes it)."""
    table, _ = _table(format, ("shared.weight",))
    return export(canonical_arrays(encoder, dtype), table, what="UMT5Encoder")


def save_umt5(encoder: UMT5Encoder, directory: str | os.PathLike, *, dtype=None,
              max_shard_bytes: int = 10 * 2**30) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` (sharded with an index above
    ``max_shard_bytes``) that ``transformers.UMT5EncoderModel.from_pretrained`` and
    :func:`load_umt5` read."""
    directory = Path(directory)
    save_sharded_safetensors(directory, export_state(encoder, "transformers", dtype), prefix=WEIGHTS_PREFIX,
                             max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(encoder.config.to_transformers(), indent=2) + "\n")
    return directory
