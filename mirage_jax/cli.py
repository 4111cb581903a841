"""The ``mirage-jax`` command: ``mirage-jax <subcommand> [args]``.

Each subcommand lives in its own module with a ``main(argv)`` function; this file only
dispatches, so importing the CLI does not import jax, torch or tensorflow-datasets.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "convert": ("mirage_jax.convert.cli", "convert diffusers / Wan checkpoints to orbax"),
    "preprocess": ("mirage_jax.preprocess", "encode clips once to latent clip records (VAE + text), resumable"),
    "generate": ("mirage_jax.generate.cli", "image + camera path + prompt -> video, memory and metadata"),
    "evaluate": ("mirage_jax.eval.cli", "a checkpoint on the held-out suite -> results.json / results.md"),
    "train": ("mirage_jax.train.trainer", "two-stage Mirage training (--config configs/train_*.py, --config.key=value)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:10s} {doc}" for name, (_, doc) in SUBCOMMANDS.items()]
        print("usage: mirage-jax <subcommand> [args]\n\nsubcommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
