"""How far a run's module table may sit from the committed ``results/demo.json``, and why.

The same build and settings give the same table on one kind of CPU, but not to the last bit on another: torch's
convolutions (oneDNN) and BLAS pick their kernels and blockings by instruction set and cache sizes, so the
descriptors differ in their last bits, and a near-tie in SuperGlobal's top-(K+1) or in a ranking can then go the
other way. ``make demo`` records the CPU it ran on (``demo_machine.json``, :func:`cpu_fingerprint`). A run on that
same CPU must match the committed table within rounding (:data:`SAME_CPU_TOLERANCE`); a run on another CPU within
the spread measured between CPUs (``demo_cpu_spread.json``, written by ``python -m sglib cpu-spread`` from demo runs
on different CPUs), times :data:`SPREAD_MARGIN`.

Example:
    >>> cmp = CommittedComparison(gap=0.05, tolerance=0.1, same_cpu=True, reason="the CPU that wrote it")
    >>> cmp.holds
    True
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
from pathlib import Path

import pandas as pd

from .tables import committed_table

MACHINE_FILE = "demo_machine.json"
SPREAD_FILE = "demo_cpu_spread.json"
SAME_CPU_TOLERANCE = 0.1   # mAP points: the committed table is rounded to 0.1 where the notebooks compare it
SPREAD_MARGIN = 1.5        # another CPU may land a little further than the CPUs measured


def cpu_fingerprint() -> dict:
    """What decides the last bits of the extracted descriptors: the CPU model, the instruction set torch's kernels
    use (and the variables that cap it), and the versions of the libraries that decode and compute."""
    import PIL
    import torch
    try:
        import cv2
        opencv = cv2.__version__
    except ImportError:   # not a dependency of the library itself; the bundled benchmarks need it
        opencv = None
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "machine": platform.machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "env": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")},
            "versions": {"torch": torch.__version__, "pillow": PIL.__version__, "opencv": opencv}}


def write_machine(results_dir) -> Path:
    """``results_dir/demo_machine.json``: this process's :func:`cpu_fingerprint` (``make demo`` writes it)."""
    path = Path(results_dir) / MACHINE_FILE
    path.write_text(json.dumps(cpu_fingerprint(), indent=2) + "\n")
    return path


def _demo_record(results_dir) -> dict:
    path = Path(results_dir) / "demo.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: run `python -m sglib demo --results {results_dir}` first")
    return json.loads(path.read_text())


def measure_spread(runs: dict) -> dict:
    """The largest difference (mAP points, any row and protocol) between any two of ``runs`` per benchmark.

    Args:
        runs: {label: results folder holding a ``demo.json`` (and, where ``make demo`` wrote one, a
            ``demo_machine.json``)}; at least two.

    Returns:
        {"runs": {label: fingerprint or None}, "spread": {benchmark: points}, "pairs": [...]}.
    """
    if len(runs) < 2:
        raise ValueError(f"measure_spread needs two or more demo runs, got {len(runs)}")
    records = {label: _demo_record(d) for label, d in runs.items()}
    machines = {}
    for label, d in runs.items():
        m = Path(d) / MACHINE_FILE
        machines[label] = json.loads(m.read_text()) if m.is_file() else None
    benchmarks = sorted(set.intersection(*(set(r) for r in records.values())))
    if not benchmarks:
        raise ValueError(f"the runs {sorted(runs)} share no benchmark")
    spread, pairs = {}, []
    for b in benchmarks:
        spread[b] = 0.0
        for (la, a), (lb, c) in itertools.combinations(records.items(), 2):
            if set(a[b]) != set(c[b]):
                raise ValueError(f"{la} and {lb} have other rows for {b}: {sorted(a[b])} vs {sorted(c[b])}")
            gap = max(abs(a[b][row][p] - c[b][row][p]) for row in a[b] for p in a[b][row])
            pairs.append({"benchmark": b, "a": la, "b": lb, "largest_difference": round(gap, 4)})
            spread[b] = max(spread[b], round(gap, 4))
    return {"runs": machines, "spread": spread, "pairs": pairs}


@dataclasses.dataclass(frozen=True)
class CommittedComparison:
    """A run's table against the committed one: the largest difference ``gap`` and the ``tolerance`` it is held
    to (mAP points); ``same_cpu``: the committed table was written on this CPU; ``reason``: where the tolerance
    comes from, for the reader."""
    gap: float
    tolerance: float
    same_cpu: bool
    reason: str

    @property
    def holds(self) -> bool:
        return self.gap <= self.tolerance + 1e-9


def compare_with_committed(table: pd.DataFrame, results_dir, benchmark: str) -> CommittedComparison:
    """Compare ``table`` (rows x Easy/Medium/Hard, as :func:`sglib.experiments.tables.map_table` gives per
    benchmark) with ``results_dir/demo.json`` (rounded to 0.1, as the notebooks show it).

    Raises ValueError when the rows differ, or when the committed table comes from another CPU and no spread
    between CPUs was measured (``python -m sglib cpu-spread``).
    """
    committed = committed_table(results_dir, benchmark).round(1)
    if list(table.index) != list(committed.index):
        raise ValueError(f"{benchmark}: rows {list(table.index)} differ from results/demo.json's "
                         f"{list(committed.index)}: re-run `make demo`")
    gap = float((table[committed.columns].astype(float) - committed).abs().max().max())
    machine = Path(results_dir) / MACHINE_FILE
    if machine.is_file() and json.loads(machine.read_text()) == cpu_fingerprint():
        return CommittedComparison(gap, SAME_CPU_TOLERANCE, True, "the committed table was written on this CPU "
                                   "with these libraries: equal within rounding")
    spread_path = Path(results_dir) / SPREAD_FILE
    if not spread_path.is_file():
        raise ValueError(f"results/demo.json was written on another CPU (or one not recorded) and {spread_path} "
                         "is missing: measure the spread between CPUs with `python -m sglib cpu-spread`")
    spread = json.loads(spread_path.read_text())["spread"]
    if benchmark not in spread:
        raise ValueError(f"{spread_path} has no spread for {benchmark!r}: re-run `python -m sglib cpu-spread`")
    # up to the next 0.1 (rounded first, so that 1.5 x 0.4 stays 0.6 despite the binary floats)
    tolerance = max(SAME_CPU_TOLERANCE, math.ceil(round(10 * SPREAD_MARGIN * spread[benchmark], 6)) / 10)
    return CommittedComparison(gap, tolerance, False,
                               f"results/demo.json comes from another CPU (or one not recorded); demo runs on "
                               f"different CPUs differed by up to {spread[benchmark]:.2f} points "
                               f"({SPREAD_FILE}), allowed x{SPREAD_MARGIN}")


__all__ = ["MACHINE_FILE", "SPREAD_FILE", "SAME_CPU_TOLERANCE", "SPREAD_MARGIN", "cpu_fingerprint",
           "write_machine", "measure_spread", "CommittedComparison", "compare_with_committed"]
