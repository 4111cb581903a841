"""The small Mirage of ``make train-small`` as one bundle: save, load, its text encoder and worlds.

A bundle directory (``weights/small``) holds orbax checkpoints written by
:func:`mirage_jax.checkpoint.save_model` (no pickles): ``vae/``, ``mirage/`` (backbone, control
branch and LoRA), ``depth/``, ``text_encoder/``, plus ``config.json`` (every config and the
parameter counts), ``report.json`` (training report) and ``MODEL_CARD.md``.

    bundle = load_bundle("weights/small")
    bundle.pipeline       # mirage_jax.generate.pipeline.Pipeline (model, vae, encode_text)
    bundle.depth          # DepthNet (depth of generated frames for the memory write-back)

The text encoder is a PLACEHOLDER-scale umT5 (``UMT5Config.tiny``, random weights from a fixed
seed, frozen): captions are fed as UTF-8 bytes (no tokenizer files), so the embedding depends on
the caption but carries no pretrained language knowledge.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError, file_error
from mirage_jax.models.wan.dit import count_params as param_count

__all__ = ["ByteTextEncoder", "SmallBundle", "bundle_control_source", "save_bundle", "load_bundle", "param_count",
           "world_clip", "PARTS"]

PARTS = ("vae", "mirage", "depth", "text_encoder")
CONFIG_FILE = "config.json"


class ByteTextEncoder:
    """texts -> f32 [B, max_length, d_model]: UTF-8 bytes (mod vocab) + ``</s>`` (id 1) as token ids
    through a frozen umT5 encoder; positions after ``</s>`` are zero (as Wan's padded prompts)."""

    def __init__(self, encoder, max_length: int):
        self.encoder, self.max_length = encoder, int(max_length)
        self._fn = nnx.jit(lambda enc, ids, mask: enc(ids, mask) * mask[..., None].astype(jnp.float32))

    @property
    def name(self) -> str:
        return f"umt5-tiny-bytes(max_length={self.max_length})"

    def __call__(self, texts) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        vocab = self.encoder.config.vocab_size
        ids = np.zeros((len(texts), self.max_length), np.int32)
        mask = np.zeros_like(ids)
        for b, t in enumerate(texts):
            raw = [2 + (x % (vocab - 2)) for x in t.encode("utf-8")][: self.max_length - 1] + [1]
            ids[b, : len(raw)] = raw
            mask[b, : len(raw)] = 1
        return np.asarray(self._fn(self.encoder, jnp.asarray(ids), jnp.asarray(mask)), np.float32)


def world_clip(seed: int, data) -> dict:
    """The training / evaluation clip of scene ``seed`` (``make_clip`` with the config's data
    section; the trajectory kind alternates with the seed)."""
    from mirage_jax.data.worlds import make_clip

    kinds = tuple(data.trajectories)
    return make_clip(int(seed), tuple(data.image_hw), int(data.num_frames), data.kind, fov_deg=float(data.fov_deg),
                     trajectory=kinds[int(seed) % len(kinds)], fps=float(data.fps))


def _configs(raw: dict):
    from mirage_jax.models.depth import DepthConfig
    from mirage_jax.models.mirage import MirageConfig
    from mirage_jax.models.umt5 import UMT5Config
    from mirage_jax.models.wan.dit import WanDiTConfig
    from mirage_jax.models.wan.vae import WanVAEConfig

    m = dict(raw["mirage"])
    m["dit"] = WanDiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in m["dit"].items()})
    m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
    vae = WanVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["vae"].items()})
    return (vae, MirageConfig(**m), DepthConfig(**raw["depth"]), UMT5Config(**raw["text_encoder"]))


def _asdict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_bundle(out, *, vae, model, depth, text_encoder, text_max_length: int, extra: dict | None = None,
                force: bool = True) -> dict:
    """Writes the four checkpoints and ``config.json``; returns the config dict (with parameter counts)."""
    from mirage_jax.checkpoint import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    modules = dict(vae=vae, mirage=model, depth=depth, text_encoder=text_encoder)
    for name, module in modules.items():
        save_model(out / name, module, force=force)
    cfg = dict(
        vae=_asdict(vae.config), mirage=_asdict(model.config), depth=_asdict(depth.config),
        text_encoder=_asdict(text_encoder.config), text_max_length=int(text_max_length),
        params={name: param_count(m) for name, m in modules.items()}, **(extra or {}),
    )
    cfg["params"]["total"] = sum(cfg["params"][p] for p in PARTS)
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    return cfg


def _control_source(raw: dict, cfg_path) -> str:
    from mirage_jax.generate.rollout import MEMORY_KINDS

    source = raw.get("control_source", "latent")  # bundles written before the RGB-cache variant: latent
    if source not in MEMORY_KINDS:
        raise file_error(cfg_path, f"must be one of {MEMORY_KINDS}, got {source!r}", key="control_source")
    return source


def bundle_control_source(path) -> str:
    """The readout a bundle's model was trained on, from its ``config.json`` alone (no weights
    read): "latent" (Mirage; also bundles that predate the key) or "rgb" (the RGB-cache variant);
    its :class:`~mirage_jax.generate.pipeline.Pipeline` carries it as ``control_source``."""
    cfg_path = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise file_error(cfg_path, f"unreadable bundle config: {err}") from err
    return _control_source(raw, cfg_path)


@dataclasses.dataclass
class SmallBundle:
    pipeline: object  # mirage_jax.generate.pipeline.Pipeline
    depth: object  # DepthNet
    text_encoder: ByteTextEncoder
    config: dict


def load_bundle(path) -> SmallBundle:
    """Loads a bundle written by :func:`save_bundle` (parameter counts checked against config.json)."""
    from mirage_jax.checkpoint import restore_model
    from mirage_jax.generate.pipeline import Pipeline
    from mirage_jax.models.depth import DepthNet
    from mirage_jax.models.mirage import MirageModel
    from mirage_jax.models.umt5 import UMT5Encoder
    from mirage_jax.models.wan.vae import WanVAE

    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise file_error(cfg_path, "no small-model bundle here (run `make train-small`)")
    try:
        raw = json.loads(cfg_path.read_text())
        vae_cfg, mirage_cfg, depth_cfg, text_cfg = _configs(raw)
    except (ValueError, KeyError, TypeError) as err:
        raise file_error(cfg_path, f"unreadable bundle config: {err}") from err
    source = _control_source(raw, cfg_path)
    # Factories (built abstractly, nothing initialised just to be overwritten: the eager VAE init
    # alone took ~28 s on the 2-core CPU); the Mirage model is built for real, as its LoRA index
    # variables are state that restore_model does not restore.
    modules = dict(
        vae=restore_model(path / "vae", lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(0))),
        mirage=restore_model(path / "mirage", MirageModel(mirage_cfg, rngs=nnx.Rngs(0))),
        depth=restore_model(path / "depth", lambda: DepthNet(depth_cfg, rngs=nnx.Rngs(0))),
        text_encoder=restore_model(path / "text_encoder", lambda: UMT5Encoder(text_cfg, rngs=nnx.Rngs(0))),
    )
    for name, module in modules.items():
        if (n := param_count(module)) != raw["params"][name]:
            raise ConfigError(f"{path / name}: {n} parameters, config.json says {raw['params'][name]}")
    text = ByteTextEncoder(modules["text_encoder"], raw["text_max_length"])
    pipe = Pipeline(modules["mirage"], modules["vae"], lambda t: jnp.asarray(text(t)), f"small ({path})",
                    depth_model=lambda images, K: modules["depth"](images), control_source=source)
    return SmallBundle(pipe, modules["depth"], text, raw)
