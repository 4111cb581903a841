"""The mirage-jax command dispatcher."""

import subprocess
import sys

from mirage_jax import cli


def test_help_lists_subcommands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_fails_with_message(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


def test_importing_cli_is_light():
    code = "import sys, mirage_jax.cli; print(any(m in sys.modules for m in ('jax', 'torch', 'tensorflow_datasets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
