"""Timing harness: methods timed side by side in one run, with warm-up, repeats, median and minimum.

Machines are noisy, so every comparison is measured in one process and interleaved: repeat ``r`` runs
each method once before repeat ``r + 1`` starts, and a ratio is taken between medians of the same run.
CUDA work is synchronised before and after every call, so a time is the work's, not the launch's.

Example:
    >>> t = measure({"sum": lambda: sum(range(1000))}, repeats=3)
    >>> t["sum"].median > 0 and len(t["sum"].seconds) == 3
    True
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ._checks import check_int


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each repeat of one call."""

    seconds: tuple

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)


def _sync(device) -> Callable[[], None]:
    if device is not None and torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available on this machine (time on the CPU: device=None)")
        return torch.cuda.synchronize
    return lambda: None


def measure(fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device=None) -> dict:
    """Time each zero-argument callable, interleaved.

    Args:
        fns: ``{name: fn}``; each fn does the whole piece of work once.
        repeats: timed calls per fn (>= 1); warmup: untimed calls per fn first (caches, lazy init, CUDA kernels).
        device: ``"cuda"`` to synchronise around each call.

    Returns:
        ``{name: Timing}``.
    """
    repeats = check_int(repeats, "repeats", 1)
    warmup = check_int(warmup, "warmup", 0)
    if not fns or not all(callable(fn) for fn in fns.values()):
        raise ValueError("fns: expected a non-empty {name: zero-argument callable} mapping")
    sync = _sync(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(t)) for name, t in times.items()}


def loglog_slope(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(size): 1 for linear growth, 2 for quadratic."""
    sizes, seconds = np.asarray(sizes, float), np.asarray(seconds, float)
    if (len(sizes) != len(seconds) or len(np.unique(sizes)) < 2 or not (np.isfinite(sizes).all() and
                                                                       np.isfinite(seconds).all())
            or (sizes <= 0).any() or (seconds <= 0).any()):
        raise ValueError(f"loglog_slope: need >= 2 distinct positive finite sizes and as many positive finite times, "
                         f"got {sizes.tolist()}, {seconds.tolist()}")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def growth(make_fn: Callable[[int], Callable[[], object]], sizes: Sequence[int], repeats: int = 3, warmup: int = 1,
           device=None) -> tuple[pd.DataFrame, float]:
    """How one cost grows with a size: ``make_fn(size)`` returns the call to time at that size.

    Returns:
        ``(table, slope)``: one row per size (``size``, ``median_ms``, ``min_ms``) and the log-log slope of the medians.
    """
    sizes = list(sizes)
    if len(set(sizes)) != len(sizes) or len(sizes) < 2:
        raise ValueError(f"sizes: expected at least 2 distinct sizes, got {sizes}")
    fns = {size: make_fn(size) for size in sizes}
    timed = measure(fns, repeats, warmup, device)
    table = pd.DataFrame({"size": list(sizes), "median_ms": [1000 * timed[s].median for s in sizes],
                          "min_ms": [1000 * timed[s].min for s in sizes]})
    return table, loglog_slope(table["size"], table["median_ms"])


__all__ = ["Timing", "measure", "loglog_slope", "growth"]
