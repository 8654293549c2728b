"""CPU thread settings, applied the same way by the CLI, ``make`` and the notebooks.

Two things keep a run from crawling when it shares the CPU with another busy process:

* ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import sglib`` unless already set, and by the Makefile):
  OpenMP threads that wait for work sleep instead of spinning, so a thread that lost its core to
  another process does not hold up the others' barrier while they burn the remaining core.
  It must be in the environment before torch loads its OpenMP runtime: import ``sglib`` first.
* :func:`configure_threads`: one thread count for torch, the BLAS under numpy, and faiss; by
  default the CPUs this process may use minus those the 1-minute load average says are busy.

The numbers do not depend on the thread count: the one computation whose result did (the
whitening's eigenbasis) is made canonical in :mod:`sglib.models.whitening`.
"""
from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def free_cpus() -> int:
    """:func:`available_cpus` minus the busy ones (1-minute load average, rounded), at least 1."""
    cpus = available_cpus()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cpus, cpus - busy))


def configure_threads(n: int | None = None) -> int:
    """Use ``n`` threads (None: :func:`free_cpus`) in torch, numpy's BLAS and faiss; returns ``n``."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    if n is None:
        n = free_cpus()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
    faiss.omp_set_num_threads(n)
    return n
