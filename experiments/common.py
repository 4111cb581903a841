"""Shared pieces of the experiment scripts (they are scripts: run them as
``python experiments/<name>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_calls(
    fn: Callable[[], Any],
    *,
    repeats: int,
    warmup: int = 1,
    budget_s: float | None = None,
    max_repeats: int | None = None,
) -> dict:
    """Wall-clock timing of ``fn()``, each call waited for with ``jax.block_until_ready``.

    The first of ``warmup`` untimed calls is measured as ``first_call_s`` (compilation plus one
    run when ``fn`` is a fresh jitted call). Then ``repeats`` timed calls; with ``budget_s``,
    more calls follow until ``budget_s`` seconds of timed calls have passed or ``max_repeats``
    calls were made. Returns ``first_call_s`` (None without warm-up), ``times_s``, ``cpu_s``
    (process CPU seconds per call: CPU / wall = cores in use), ``median_s``, ``min_s`` and ``reps``.
    """
    import jax

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    first_call_s = None
    for i in range(warmup):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        if i == 0:
            first_call_s = time.perf_counter() - t0
    limit = max(repeats, max_repeats or repeats)
    times: list[float] = []
    cpus: list[float] = []
    start = time.perf_counter()
    while len(times) < limit and (
        len(times) < repeats or (budget_s is not None and time.perf_counter() - start < budget_s)
    ):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "first_call_s": first_call_s,
        "times_s": times,
        "cpu_s": cpus,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "reps": len(times),
    }
