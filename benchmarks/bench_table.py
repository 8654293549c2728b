"""One table of every timed stage against its bound, from the rows the benchmarks append (``--json``).

    .venv/bin/python benchmarks/bench_table.py ROWS.json results/bench.json

Each row (``benchmarks/_rows.py``): the stage, its time and its bound's time (both measured in the same run,
interleaved), the ratio, the target and PASS/MISS, the threads and the device; some rows add ``recall`` (IVF-PQ's
recall@100 against exact search) or ``peak_mib`` / ``bound_peak_mib`` (peak memory of the stage and of its bound).
Each stage that can run on a GPU and has no CUDA row gets one row saying why it was not measured (no GPU lent to
the run, or no CUDA row written). Prints the table and writes it to the output file (``make bench`` does both),
with the device and the time it was written.
"""
import datetime
import json
import platform
import sys

import torch

# stages that can run on a GPU: (row prefix the benchmarks write, the stage's name in a "not measured" row)
GPU_STAGES = (("extraction", "extraction (backbone forward + pooling) on CUDA"),
              ("knn", "exact knn on CUDA"),
              ("rerank", "reranking, every method, on CUDA"),
              ("training step", "training steps on CUDA (float32 and mixed precision)"))


def gpu_rows(rows: list, cuda: bool) -> list:
    """One "not measured" row per GPU-capable stage without a CUDA row."""
    why = "not measured: no CUDA row written by its benchmark" if cuda else "not measured: no GPU lent to this run"
    return [{"stage": name, "device": "cuda", "status": why} for prefix, name in GPU_STAGES
            if not any(r.get("device", "").startswith("cuda") and r["stage"].startswith(prefix) for r in rows)]


def main(rows_path: str, out_path: str) -> None:
    with open(rows_path) as f:
        rows = json.load(f)
    cuda = torch.cuda.is_available()
    rows += gpu_rows(rows, cuda)
    device = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu")
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(out_path, "w") as f:
        json.dump({"device": device, "written": written, "rows": rows}, f, indent=1)
    print(f"{'stage':70s} {'thr':>3s} {'time s':>8s} {'bound s':>8s} {'ratio':>6s} {'target':>15s} status")
    for r in rows:
        if r.get("time_s") is None:
            print(f"{r['stage']:70s} {'':>3s} {'':>8s} {'':>8s} {'':>6s} {r.get('target', ''):>15s} {r['status']}")
            continue
        print(f"{r['stage']:70s} {r['threads']:>3d} {r['time_s']:8.3f} {r['bound_s']:8.3f} {r['ratio']:6.3f} "
              f"{r['target']:>15s} {r['status']}")
    print(f"written to {out_path} (device: {device}, {written})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
