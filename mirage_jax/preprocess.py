"""``mirage-jax preprocess``: encode a clip dataset once into latent clip records (resumable).

Examples::

    # tiny random-weight VAE on the synthetic worlds (a pipeline check, not a real encoding)
    mirage-jax preprocess --dataset synthetic_worlds/tiny --vae-config tiny --out /data/latents/tiny

    # the reference's ViPE folders with a converted Wan2.2 VAE, 8 clips per step over 8 devices
    mirage-jax preprocess --dataset vipe_clips/native --source-dir /data/vipe --vae /ckpt/wan22_vae \\
        --dtype bfloat16 --latents-dtype bfloat16 --text-dtype bfloat16 --batch-size 8 --out /data/latents/vipe

Run it again with the same arguments to resume after an interruption. The text encoder is
``hashed`` (:class:`mirage_jax.data.latents.HashedTextEncoder`, a deterministic PLACEHOLDER,
``hashed:DIM:LEN`` to size it), or ``package.module:factory`` for a callable
``factory() -> (texts -> [B, L, D])`` (e.g. around :func:`mirage_jax.models.umt5.tokenizer.encode_prompts`
and a converted umT5). See :mod:`mirage_jax.data.latents`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import numpy as np

from mirage_jax.errors import ConfigError, MirageError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mirage-jax preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="TFDS name, e.g. synthetic_worlds/tiny or vipe_clips/native")
    p.add_argument("--split", default="train")
    p.add_argument("--data-dir", help="TFDS data_dir of the source dataset")
    p.add_argument("--source-dir", help="manual source directory (vipe_clips folders are read directly)")
    p.add_argument("--out", required=True, help="output directory of the latent_clips dataset")
    vae = p.add_mutually_exclusive_group(required=True)
    vae.add_argument("--vae", help="VAE checkpoint: orbax (mirage-jax convert), diffusers directory or original Wan file")
    vae.add_argument("--vae-config", choices=("tiny", "tiny-wan2.1"), help="random-weight VAE (pipeline checks only)")
    p.add_argument("--vae-seed", type=int, default=0, help="seed of --vae-config weights")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="VAE compute dtype")
    p.add_argument("--tiled", action="store_true", help="spatially tiled VAE encode")
    p.add_argument("--text-encoder", default="hashed", help="hashed[:DIM:LEN] (placeholder) or module:factory")
    p.add_argument("--devices", type=int, help="devices on the data axis (default: all)")
    p.add_argument("--batch-size", type=int, help="clips per encoder call (default: the number of devices)")
    p.add_argument("--clips-per-shard", type=int, default=64)
    p.add_argument("--latents-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--text-dtype", choices=("float32", "bfloat16"), default="float32")
    return p


def make_text_encoder(spec: str):
    """``hashed[:DIM:LEN]`` -> :class:`HashedTextEncoder`; ``module:factory`` -> ``factory()``."""
    from mirage_jax.data.latents import HashedTextEncoder

    if spec == "hashed" or spec.startswith("hashed:"):
        parts = spec.split(":")[1:]
        try:
            sizes = [int(v) for v in parts]
        except ValueError:
            sizes = []
        if len(parts) not in (0, 2) or len(sizes) != len(parts) or any(v < 1 for v in sizes):
            raise ConfigError(f"--text-encoder {spec!r}: expected hashed or hashed:DIM:LEN with positive ints")
        return HashedTextEncoder(*sizes)
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"--text-encoder {spec!r}: expected hashed[:DIM:LEN] or package.module:factory")
    return getattr(importlib.import_module(module), attr)()


def _vae(args):
    from mirage_jax.models.wan import WanRuntime
    from mirage_jax.models.wan.vae import WanVAEConfig

    runtime = WanRuntime(dtype=args.dtype)
    if args.vae is not None:
        from mirage_jax.convert.wan_vae import load_vae

        return load_vae(args.vae, runtime=runtime)[1]
    variant = "wan2.1" if args.vae_config == "tiny-wan2.1" else "wan2.2"
    print(f"preprocess: a RANDOM-weight tiny {variant} VAE (seed {args.vae_seed}): for pipeline checks only", file=sys.stderr)
    return random_vae(WanVAEConfig.tiny(variant), args.vae_seed, runtime)


def random_vae(config, seed: int = 0, runtime=None):
    """A WanVAE with random weights filled from NumPy (kernels N(0, 1/fan_in), norm scales 1,
    biases 0), deterministic in ``seed``. Built abstractly and filled on the host: the eager or
    jitted initialisers take minutes of dispatch / compile for the ~2M-parameter tiny config on
    a busy 2-core machine, this takes seconds. For pipeline checks only."""
    import jax
    from flax import nnx

    from mirage_jax.models.wan.vae import WanVAE

    abstract = nnx.eval_shape(lambda: WanVAE(config, runtime, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(state):
        shape, dtype = var.get_value().shape, var.get_value().dtype
        if len(shape) > 1:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = np.ones(shape) if path[-1] in ("scale", "gamma") else np.zeros(shape)
        var.set_value(jax.numpy.asarray(value, dtype))
    return nnx.merge(graphdef, state)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except MirageError as err:
        print(f"mirage-jax preprocess: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import jax

    from mirage_jax.data.latents import LatentEncoder, open_clip_source, preprocess
    from mirage_jax.sharding import make_mesh

    n = args.devices or jax.device_count()
    if not 1 <= n <= jax.device_count():
        raise ConfigError(f"--devices {n}: this process sees {jax.device_count()} devices")
    text_encoder = make_text_encoder(args.text_encoder)
    source = open_clip_source(args.dataset, split=args.split, data_dir=args.data_dir, source_dir=args.source_dir)
    mesh = make_mesh((n,), ("data",), devices=jax.devices()[:n])
    encoder = LatentEncoder(_vae(args), mesh=mesh, batch_size=args.batch_size, tiled=args.tiled)
    settings = {
        "dataset": args.dataset, "source_dir": args.source_dir, "vae": args.vae or f"random:{args.vae_config}:{args.vae_seed}",
        "vae_dtype": args.dtype, "tiled": args.tiled,
    }
    entry = preprocess(
        source, args.out, encoder=encoder, text_encoder=text_encoder, split=args.split,
        clips_per_shard=args.clips_per_shard, latents_dtype=args.latents_dtype, text_dtype=args.text_dtype,
        settings=settings, progress=True,
    )
    shards = entry["shards"].values()
    summary = {
        "out": args.out, "split": args.split, "clips": entry["num_clips"], "shards": entry["num_shards"],
        "records": sum(s["records"] for s in shards), "rejected": sum(len(s["rejected"]) for s in shards),
        "tail_frames_dropped": sum(s["tail_frames_dropped"] for s in shards),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
