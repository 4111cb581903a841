"""What the package imports: never torch / diffusers / transformers; the declared dependencies
match the third-party imports; test modules reach torch only through skipping ``parity`` tests."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mirage_jax"
FORBIDDEN = ("torch", "diffusers", "transformers")


def _norm(dist: str) -> str:
    """PEP 503 normalised distribution name, without extras or version."""
    name = re.split(r"[\s\[<>=!~;]", dist.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(files) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level, inside-a-function-or-block) third-party top-level import names -> files."""
    top: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root in ("mirage_jax", "__future__"):
                    continue
                (top if id(node) in module_level else lazy).setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return top, lazy


def test_importing_every_module_never_imports_torch():
    """A fresh interpreter imports every mirage_jax module (pkgutil walk); none of FORBIDDEN loads."""
    code = f"""
import importlib, json, pkgutil, sys
import mirage_jax
names = sorted(m.name for m in pkgutil.walk_packages(mirage_jax.__path__, "mirage_jax."))
for name in names:
    importlib.import_module(name)
print(json.dumps({{"modules": names, "loaded": [m for m in {FORBIDDEN!r} if m in sys.modules]}}))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        ".".join(("mirage_jax",) + p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    }
    assert expected - {"mirage_jax"} <= set(result["modules"])  # the walk saw every module file
    assert result["loaded"] == [], f"importing mirage_jax loads {result['loaded']}"


def test_declared_dependencies_match_the_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_norm(d) for d in project["dependencies"]}
    extras = {_norm(d) for deps in project.get("optional-dependencies", {}).values() for d in deps}
    top, lazy = _third_party_imports(PACKAGE.rglob("*.py"))
    dists = md.packages_distributions()

    def providers(module: str) -> set[str]:
        found = {_norm(d) for d in dists.get(module, [])}
        if not found:  # Python 3.11 misses top-level extension modules ("OpenEXR.cpython-311-...so")
            found = {
                _norm(d.metadata["Name"])
                for d in md.distributions()
                if any(len(f.parts) == 1 and f.name.split(".")[0] == module for f in d.files or ())
            }
        assert found, f"{module} (imported by {sorted((top | lazy).get(module, ()))}) is not installed"
        return found

    used: set[str] = set()
    for module, files in top.items():
        p = providers(module)
        assert p & runtime, f"{module} is imported at module level by {sorted(files)} but none of {p} is a dependency"
        used |= p & runtime
    for module, files in lazy.items():
        p = providers(module)
        assert p & (runtime | extras), f"{module} is imported by {sorted(files)} but none of {p} is declared"
        used |= p & runtime
    assert runtime - used == set(), f"declared but never imported by mirage_jax: {sorted(runtime - used)}"
    # The parity tests compare against this exact torch.
    assert "torch==2.13.0" in [d.replace(" ", "") for d in project["optional-dependencies"]["test"]]


def test_test_modules_reach_torch_only_in_skipping_parity_tests():
    """No test module imports torch / diffusers / transformers at module level (collecting the
    suite without them must work); a module that uses them anywhere carries the ``parity``
    marker, which tests/conftest.py skips when torch or diffusers is missing. Module-level
    ``pytest.importorskip("torch")`` is allowed (it skips the module cleanly)."""
    bad_top, unmarked = [], []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "conftest.py" or path == Path(__file__).resolve():
            continue
        source = path.read_text()
        top, lazy = _third_party_imports([path])
        skipped = set(re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", source))
        uses = {m for m in FORBIDDEN if m in top or m in lazy or any(s.split(".")[0] == m for s in skipped)}
        rel = str(path.relative_to(ROOT))
        bad_top += [f"{rel}: import {m}" for m in FORBIDDEN if m in top]
        if uses and "mark.parity" not in source:
            unmarked.append(f"{rel} ({', '.join(sorted(uses))})")
    assert not bad_top, f"module-level imports of torch/diffusers (use pytest.importorskip): {bad_top}"
    assert not unmarked, f"test modules using torch/diffusers without @pytest.mark.parity: {unmarked}"


@pytest.mark.parametrize("text, name", [("torch==2.13.0", "torch"), ("etils[epath]>=1.9", "etils"), ("ml_dtypes", "ml-dtypes")])
def test_norm(text, name):
    assert _norm(text) == name
