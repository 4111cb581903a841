"""The project's error types: every public reader and entry point raises one of these.

All are ``ValueError`` subclasses, so callers that already catch ``ValueError`` keep working,
and ``except MirageError`` catches exactly what mirage_jax raises on purpose (a traceback of any
other type from a public entry point is a bug). Messages name the problem and where it is: the
argument, the file, the line or key, the expected and the actual shape / dtype / range.

Module-specific errors subclass these (``SafetensorsError(FileFormatError)``,
``LatentMemoryError(InputError)``, ...), so they can be caught broadly or narrowly.
"""

from __future__ import annotations

import numbers
import os

__all__ = ["MirageError", "InputError", "FileFormatError", "ConfigError", "file_error", "check_hw"]


class MirageError(ValueError):
    """Base of every error mirage_jax raises on purpose."""


class InputError(MirageError):
    """A bad argument value: shape, dtype, range, convention or an inconsistent combination."""


class ConfigError(MirageError):
    """A configuration (dataclass, ml_collections config, command line) that cannot work."""


class FileFormatError(MirageError):
    """A file that cannot be read correctly: missing, truncated, corrupt, inconsistent, or of
    another format. The message names the file (and the line or key where one applies)."""


def file_error(path: str | os.PathLike, what: str, *, line: int | None = None, key: str | None = None,
               cls: type[FileFormatError] = FileFormatError) -> FileFormatError:
    """``cls("<path>[:<line>][ (key <key>)]: <what>")``, the one message layout for file errors."""
    where = os.fspath(path)
    if line is not None:
        where += f":{line}"
    if key is not None:
        where += f" (key {key!r})"
    return cls(f"{where}: {what}")


def check_hw(hw, name: str = "image_hw", cls: type[MirageError] = InputError) -> tuple[int, int]:
    """``(height, width)`` of two positive Python / NumPy ints (bools and floats refused, so
    ``(704.5, 1280)`` is not silently truncated) -> ``tuple[int, int]``; else ``cls`` naming ``name``."""
    ok = (
        isinstance(hw, (tuple, list))
        and len(hw) == 2
        and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and int(x) > 0 for x in hw)
    )
    if not ok:
        raise cls(f"{name}: expected (height, width) of two positive ints, got {hw!r}")
    return int(hw[0]), int(hw[1])
