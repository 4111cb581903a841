"""``mirage-jax convert``: diffusers / original Wan checkpoints -> orbax checkpoints.

    mirage-jax convert --transformer DIR_OR_FILE [--vae PATH] --out ORBAX_DIR
                       [--format auto|diffusers|wan] [--config JSON|PRESET] [--param-dtype float32]
                       [--mesh 1,8 --rules fsdp] [--force]

Writes ``ORBAX_DIR/transformer`` and/or ``ORBAX_DIR/vae`` (see :mod:`mirage_jax.checkpoint`),
each with metadata ``{"kind": ..., "config": ..., "source": ..., "format": ...}`` so that
``mirage_jax.convert.load_transformer(ORBAX_DIR / "transformer")`` and
``mirage_jax.convert.load_vae(ORBAX_DIR / "vae")`` rebuild the models.
With ``--mesh`` the weights are loaded sharded over the local devices (mesh axes
``fsdp, tp``), never materialised whole on one device.

Exit status: 0 on success; 2 for a user error (bad arguments, a mesh larger than the devices,
``--out`` naming a file, missing or malformed inputs, a checkpoint that does not fit the model),
reported as ``mirage-jax convert: error: <problem>`` on stderr; 1 for an unexpected failure
(e.g. the disk filling up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """A bad command line (exit 2)."""


def _parser() -> argparse.ArgumentParser:
    from mirage_jax.convert.wan_dit import PRESETS

    p = argparse.ArgumentParser(prog="mirage-jax convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--transformer", help="diffusers transformer dir (or pipeline dir), original Wan DiT "
                   "safetensors file / index / dir")
    p.add_argument("--vae", help="VAE checkpoint: diffusers AutoencoderKLWan dir or original Wan .pth")
    p.add_argument("--out", required=True, help="output directory (orbax checkpoints go in transformer/ and vae/)")
    p.add_argument("--format", default="auto", choices=("auto", "diffusers", "wan"),
                   help="checkpoint naming (auto: detected from the tensor names)")
    p.add_argument("--config", help="DiT config for the original format when no config.json sits next to the "
                   f"weights: a JSON file (original or diffusers keys) or a preset {PRESETS}")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the stored parameters")
    p.add_argument("--mesh", help="load sharded over a device mesh 'FSDP,TP' (e.g. 1,8); default: one device")
    p.add_argument("--rules", default="fsdp", choices=("fsdp", "fsdp_tp"), help="sharding rules with --mesh")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return p


def _convert_transformer(args, out: Path, mesh) -> None:
    from mirage_jax import checkpoint as ckpt
    from mirage_jax.convert import wan_dit
    from mirage_jax.convert.safetensors_io import open_safetensors
    from mirage_jax.models.wan.dit import WanRuntime

    src = Path(args.transformer)
    fmt = args.format
    if fmt == "auto":
        fmt = wan_dit.detect_format(open_safetensors(wan_dit._transformer_dir(src)).keys())
    runtime = WanRuntime(param_dtype=args.param_dtype)
    t0 = time.perf_counter()
    kw = dict(runtime=runtime, mesh=mesh, rules=args.rules)
    if fmt == "diffusers":
        if args.config:
            raise UsageError("--config is for the original Wan format; a diffusers directory has its config.json")
        config, model = wan_dit.load_diffusers_transformer(src, **kw)
    else:
        config, model = wan_dit.load_wan_original_transformer(src, args.config, **kw)
    t1 = time.perf_counter()
    meta = {"kind": "wan_dit", "config": config.to_diffusers(), "source": str(src.absolute()), "format": fmt}
    ckpt.save_model(out, model, metadata=meta, force=args.force)
    from mirage_jax.models.wan.dit import count_params

    print(f"transformer: {fmt} {src} -> {out} ({count_params(model):,} parameters, "
          f"load {t1 - t0:.1f} s, save {time.perf_counter() - t1:.1f} s)")


def _convert_vae(args, out: Path, mesh=None) -> None:
    from mirage_jax import checkpoint as ckpt
    from mirage_jax.convert import wan_vae
    from mirage_jax.models.wan import WanRuntime

    src = Path(args.vae)
    fmt = args.format
    if fmt == "auto":
        # The original release ships one file (.pth, or the same names as .safetensors);
        # diffusers ships a directory.
        fmt = "wan" if src.is_file() else "diffusers"
    loader = wan_vae.load_diffusers_vae if fmt == "diffusers" else wan_vae.load_wan_original_vae
    t0 = time.perf_counter()
    config, model = loader(src, runtime=WanRuntime(param_dtype=args.param_dtype), mesh=mesh, rules=args.rules)
    t1 = time.perf_counter()
    meta = {"kind": "wan_vae", "config": config.to_diffusers(), "source": str(src.absolute()), "format": fmt}
    ckpt.save_model(out, model, metadata=meta, force=args.force)
    print(f"vae: {fmt} {src} -> {out} (load {t1 - t0:.1f} s, save {time.perf_counter() - t1:.1f} s)")


def _check_args(args) -> tuple[Path, object]:
    """Validates the command line before any work -> (output dir, mesh or None); UsageError."""
    if not args.transformer and not args.vae:
        raise UsageError("give --transformer and/or --vae")
    for flag, value in (("--transformer", args.transformer), ("--vae", args.vae)):
        if value and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or directory")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is an existing file; give a directory")
    targets = ([out / "transformer"] if args.transformer else []) + ([out / "vae"] if args.vae else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise UsageError(f"{', '.join(existing)} exist; pass --force to overwrite")
    mesh = None
    if args.mesh:
        try:
            shape = tuple(int(x) for x in args.mesh.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 2 or min(shape) < 1:
            raise UsageError(f"--mesh wants two positive ints 'FSDP,TP' (e.g. 1,8), got {args.mesh!r}")
        import jax

        from mirage_jax.sharding import make_mesh

        if shape[0] * shape[1] > jax.device_count():
            raise UsageError(f"--mesh {args.mesh} needs {shape[0] * shape[1]} devices, this machine has {jax.device_count()}")
        mesh = make_mesh(shape, ("fsdp", "tp"))
    return out, mesh


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from mirage_jax.errors import MirageError

    try:
        out, mesh = _check_args(args)
        out.mkdir(parents=True, exist_ok=True)
        if args.transformer:
            _convert_transformer(args, out / "transformer", mesh)
        if args.vae:
            _convert_vae(args, out / "vae", mesh)
    except (UsageError, MirageError, FileNotFoundError, NotImplementedError) as e:
        print(f"mirage-jax convert: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"mirage-jax convert: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
