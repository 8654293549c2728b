"""The row format of ``results/bench.json`` (issue 19), shared by the benchmarks' ``--json`` modes.

A row: ``stage``, ``threads``, ``device``, ``time_s``, ``bound`` (in words), ``bound_s``, ``ratio`` (time / bound,
or a fraction where the target says so), ``target``, ``status`` (PASS/MISS); optional extra keys (``recall``,
``peak_mib`` / ``bound_peak_mib``) become columns of the table (``benchmarks/bench_table.py``).
"""
import json


def bench_row(stage, threads, device, time_s, bound, bound_s, target, passed, **extra) -> dict:
    """One row; ``ratio`` is ``time_s / bound_s``."""
    return {"stage": stage, "threads": int(threads), "device": str(device), "time_s": float(time_s),
            "bound": bound, "bound_s": float(bound_s), "ratio": float(time_s) / float(bound_s), "target": target,
            "status": "PASS" if passed else "MISS", **extra}


def append_rows(path, rows) -> None:
    """Append ``rows`` to the JSON list in ``path`` (created if missing)."""
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = []
    with open(path, "w") as f:
        json.dump(old + list(rows), f, indent=1)
