"""CPU thread settings, applied the same way by the CLI, ``make`` and the notebooks.

Two things keep a run from crawling when it shares the CPU with another busy process:

* ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import sglib`` unless already set, and by the Makefile):
  OpenMP threads that wait for work sleep instead of spinning, so a thread that lost its core to
  another process does not hold up the others' barrier while they burn the remaining core.
  It must be in the environment before torch loads its OpenMP runtime: import ``sglib`` first.
* :func:`configure_threads`: one thread count for torch, the BLAS under numpy, and faiss; by
  default ``$SGLIB_THREADS`` if set, else the CPUs this process may use minus those that other
  processes keep busy (sampled for 0.2 s). The CLI (``--threads``), the Makefile and the notebooks (``THREADS``)
  all go through it.

Measured on the 2-core development machine (MobileNetV2 at 384 px, ms per image): alone, 1 thread 80-86,
2 threads 66 (spinning) / 70 (passive); beside one CPU-bound process, 2 threads 261 (spinning) / 104
(passive), 1 thread 85-91.

The printed numbers (mAP) and the feature-cache keys do not depend on the thread count: the one
computation whose result did (the whitening's eigenbasis) is made canonical in
:mod:`sglib.models.whitening`. Descriptors themselves can differ in their last bits (about 1e-8)
between thread counts, as convolutions sum in another order.
"""
from __future__ import annotations

import os
import time
import warnings


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus) -> dict:
    """``{cpu: (busy, total)}`` jiffies from /proc/stat for the given CPU numbers."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields[:8]]
                idle = values[3] + values[4]                      # idle + iowait
                times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_cpus(interval: float = 0.2) -> float:
    """How many of this process's CPUs other work keeps busy, measured over ``interval`` seconds.

    Sampled while this process waits, so it counts other processes only (a load average would also count
    the run that just finished before this one). 0.0 where /proc/stat cannot be read.
    """
    try:
        cpus = os.sched_getaffinity(0)
        before = _cpu_times(cpus)
        time.sleep(interval)
        after = _cpu_times(cpus)
    except (AttributeError, OSError, ValueError):
        return 0.0
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        busy += (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def free_cpus() -> int:
    """:func:`available_cpus` minus those :func:`busy_cpus` finds busy (rounded), at least 1."""
    cpus = available_cpus()
    return max(1, min(cpus, cpus - round(busy_cpus())))


def configure_threads(n: int | None = None) -> int:
    """Use ``n`` threads in torch, numpy's BLAS and faiss; returns ``n``.

    ``n=None``: ``$SGLIB_THREADS`` when set (an integer >= 1), else :func:`free_cpus`.
    """
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    if n is None:
        env = os.environ.get("SGLIB_THREADS", "").strip()
        if env and (not env.isdigit() or int(env) < 1):
            raise ValueError(f"SGLIB_THREADS: expected an integer >= 1, got {env!r}")
        n = int(env) if env else free_cpus()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {n!r}")
    usable = available_cpus()
    if n > usable:   # more threads than CPUs only makes them wait for each other
        warnings.warn(f"{n} threads asked for, but this process may use {usable} CPU(s): using {usable}",
                      stacklevel=2)
        n = usable
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
    faiss.omp_set_num_threads(n)
    return n


def process_runs(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (as any user); False for pid <= 0."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it runs, as another user
        return True
    return True
