"""What a rollout needs besides the cameras: the Mirage model, the VAE and a text encoder.

A checkpoint directory (``--checkpoint DIR``) holds::

    DIR/orbax/              the whole Mirage model (mirage_jax.convert.save_mirage_reference; the
                            control / lora files it writes beside it are then not read), or
    DIR/transformer/ | DIR/dit.safetensors   the backbone (diffusers directory / original Wan file)
      + DIR/control.safetensors (optional)   the reference's control branch (VACE) file
      + DIR/lora.safetensors (optional)      the reference's LoRA file (fused, its inference)
    DIR/vae/ | DIR/vae.pth  the Wan2.2 VAE (orbax, diffusers directory or original Wan file)
    DIR/text_encoder/       the umT5 encoder (transformers directory)
    DIR/tokenizer/          tokenizer.json or spiece.model (or inside text_encoder/)

(the layout of a diffusers Wan pipeline plus the reference's Mirage files); everything goes
through the loaders of :mod:`mirage_jax.convert`. A small-model bundle directory (``config.json``
written by :func:`mirage_jax.small.save_bundle`, e.g. ``weights/small``) is loaded by
:func:`mirage_jax.small.load_bundle` instead: its text encoder reads the prompt's bytes (no
tokenizer), and its depth model becomes :attr:`Pipeline.depth_model`. :func:`check_checkpoint`
checks the layout without reading weights (the CLIs call it before any compute).

``load_pipeline("random:tiny")`` builds test-sized models with random weights (seeded): the tiny
Mirage model, a tiny Wan2.2-style VAE with the same latent channels and a tiny umT5 encoder fed
with the prompt's UTF-8 bytes as token ids (no tokenizer files needed). It exercises every code
path of the real pipeline at a size that runs in seconds on a CPU; its videos are noise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import ConfigError

__all__ = ["Pipeline", "check_checkpoint", "load_pipeline", "tiny_pipeline"]

TINY_TEXT_LEN = 16


@dataclasses.dataclass
class Pipeline:
    """model: MirageModel; vae: WanVAE; encode_text: ``texts -> [B, L, text_dim]``; name: a label;
    text_encoder: the UMT5Encoder behind ``encode_text`` (None for a small-model bundle, whose
    byte-level encoder is ``small.load_bundle(...).text_encoder``); depth_model: the checkpoint's own depth
    model for generated frames, ``fn(images f32[n, H, W, 3] in [0, 1], K f32[n, 3, 3]) ->
    f32[n, H, W]`` z-depth (a small-model bundle's DepthNet), or None; control_source: the
    readout the model was trained on, "latent" (Mirage) or "rgb" (the explicit RGB-cache variant,
    a bundle's ``config.json`` ``control_source``): the rollout's ``memory_kind``
    (:meth:`rollout_config`)."""

    model: object
    vae: object
    encode_text: Callable
    name: str
    text_encoder: object = None
    depth_model: Callable | None = None
    control_source: str = "latent"

    def __post_init__(self):
        from mirage_jax.generate.rollout import MEMORY_KINDS

        if self.control_source not in MEMORY_KINDS:
            raise ConfigError(f"{self.name}: control_source must be one of {MEMORY_KINDS}, got {self.control_source!r}")

    def rollout_config(self, **options):
        """``RolloutConfig(**options)`` for this model: ``memory_kind`` is its ``control_source``;
        an explicit different ``memory_kind`` raises ConfigError (the model would read a control
        input it was not trained on)."""
        from mirage_jax.generate.rollout import RolloutConfig

        kind = options.setdefault("memory_kind", self.control_source)
        if kind != self.control_source:
            raise ConfigError(f"{self.name} was trained with control_source {self.control_source!r}; a rollout "
                              f"with memory_kind {kind!r} would feed it the wrong control input")
        return RolloutConfig(**options)


def _tiny_models(seed: int):
    from mirage_jax.models.mirage import MirageConfig, MirageModel
    from mirage_jax.models.umt5 import UMT5Config, UMT5Encoder
    from mirage_jax.models.wan.dit import WanDiTConfig
    from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig

    tcfg = UMT5Config.tiny()
    dit = dataclasses.replace(WanDiTConfig.tiny(), text_dim=tcfg.d_model)
    rngs = lambda k: nnx.Rngs(jax.random.key(seed * 3 + k, impl="rbg"))  # noqa: E731
    return (MirageModel(MirageConfig.tiny(dit=dit), rngs=rngs(0)),
            WanVAE(WanVAEConfig.tiny(z_dim=dit.in_channels), rngs=rngs(1)), UMT5Encoder(tcfg, rngs=rngs(2)))


# Built inside one jit (compiled once per seed) with "rbg" keys: eager threefry initialisation
# compiles one program per parameter shape, and a jitted threefry initialiser is a large program
# (the tiny VAE alone: ~60 s of compilation on a busy 2-core CPU, against ~5 s with rbg keys).
_tiny_models_jit = nnx.jit(_tiny_models, static_argnums=0)


def tiny_pipeline(seed: int = 0) -> Pipeline:
    """Random tiny models (see the module docstring); new modules on every call."""
    model, vae, encoder = _tiny_models_jit(int(seed))
    tcfg = encoder.config
    # after_proj is zero-initialised (training starts from the plain backbone); a random
    # pipeline gives it small weights so the memory readout reaches the output.
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model.control.after_proj, nnx.Param)):
        var.set_value(0.02 * rng.standard_normal(var.get_value().shape).astype(np.float32))

    def encode_text(texts):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.zeros((len(texts), TINY_TEXT_LEN), np.int32)
        mask = np.zeros_like(ids)
        for b, t in enumerate(texts):
            raw = list(t.encode("utf-8"))[: TINY_TEXT_LEN - 1] + [1]  # 1 plays </s>
            ids[b, : len(raw)] = np.asarray(raw) % tcfg.vocab_size
            mask[b, : len(raw)] = 1
        return encoder(jnp.asarray(ids), jnp.asarray(mask))

    return Pipeline(model, vae, encode_text, f"random:tiny (seed {seed})", encoder)


def _first(d: Path, names) -> Path | None:
    return next((d / n for n in names if (d / n).exists()), None)


def check_checkpoint(spec: str) -> dict:
    """The files :func:`load_pipeline` would read for ``spec`` ({} for ``random:tiny``; for a
    small-model bundle ``bundle`` = its config.json and ``depth_model`` = its depth checkpoint);
    raises ConfigError naming what is missing (nothing is loaded)."""
    from mirage_jax.small import CONFIG_FILE, PARTS

    if spec == "random:tiny":
        return {}
    d = Path(spec)
    if not d.is_dir():
        raise ConfigError(f"--checkpoint {spec!r}: not 'random:tiny' and not a directory")
    if (d / CONFIG_FILE).is_file():
        missing = [p for p in PARTS if not (d / p).is_dir()]
        if missing:
            raise ConfigError(f"--checkpoint {d}: a small-model bundle ({CONFIG_FILE}) without "
                              f"{', '.join(p + '/' for p in missing)}")
        return dict(bundle=d / CONFIG_FILE, depth_model=d / "depth")
    files = dict(
        model=_first(d, ("orbax", "transformer", "dit.safetensors")),
        control=_first(d, ("control.safetensors",)),
        lora=_first(d, ("lora.safetensors",)),
        vae=_first(d, ("vae", "vae.pth")),
        text_encoder=_first(d, ("text_encoder",)),
        tokenizer=_first(d, ("tokenizer", "text_encoder")),
    )
    missing = [k for k in ("model", "vae", "text_encoder") if files[k] is None]
    if missing:
        raise ConfigError(
            f"--checkpoint {d}: no {', '.join(missing)} (expected orbax/ or transformer/ or dit.safetensors; "
            "vae/ or vae.pth; text_encoder/ and tokenizer/)")
    if files["model"].name == "orbax":  # the whole model; the reference-format files beside it are copies
        files["control"] = files["lora"] = None
    return files


def load_pipeline(spec: str, seed: int = 0, *, runtime=None, text_len: int = 512) -> Pipeline:
    """``"random:tiny"`` -> :func:`tiny_pipeline`; a directory -> the models of the layout above
    (``runtime``: dtypes / scanned layers of the DiT and the VAE; ``text_len``: prompt tokens);
    a small-model bundle -> ``small.load_bundle(spec).pipeline`` (its config fixes the runtime
    and the prompt length, so ``runtime`` must be None and ``text_len`` is not used)."""
    if spec == "random:tiny":
        return tiny_pipeline(seed)
    from mirage_jax.convert import load_umt5, load_vae
    from mirage_jax.convert.mirage import load_mirage
    from mirage_jax.models.umt5 import encode_prompts, load_tokenizer

    f = check_checkpoint(spec)
    if "bundle" in f:
        from mirage_jax.small import load_bundle

        if runtime is not None:
            raise ConfigError(f"--checkpoint {spec}: a small-model bundle loads with its own runtime; "
                              f"got runtime={runtime!r}")
        return load_bundle(spec).pipeline
    single = f["model"].suffix == ".safetensors"
    _, model = load_mirage(f["model"], f["control"], f["lora"], config="wan22_ti2v_5b" if single else None,
                           runtime=runtime, seed=seed)
    _, vae = load_vae(f["vae"], runtime=runtime)
    _, encoder = load_umt5(f["text_encoder"])
    tokenizer = load_tokenizer(f["tokenizer"])

    def encode_text(texts):
        texts = (texts,) if isinstance(texts, str) else tuple(texts)
        return encode_prompts(texts, tokenizer, encoder, text_len)

    return Pipeline(model, vae, encode_text, str(Path(spec).resolve()), encoder)
