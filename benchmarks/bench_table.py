"""One table of every timed stage against its bound, from the rows the benchmarks append (``--json``).

    .venv/bin/python benchmarks/bench_table.py ROWS.json results/bench.json

Each row: the stage, its time and its bound's time (both measured in the same run, interleaved), the ratio,
the target and PASS/MISS, the threads and the device. GPU rows are listed as not measured when no GPU was
lent to the run. Prints the table and writes it to the output file (``make bench`` does both).
"""
import json
import platform
import sys

import torch


def main(rows_path: str, out_path: str) -> None:
    with open(rows_path) as f:
        rows = json.load(f)
    if not torch.cuda.is_available():
        rows.append({"stage": "rerank and knn on CUDA", "device": "cuda",
                     "status": "not measured: no GPU lent to this run"})
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "cpu")
    with open(out_path, "w") as f:
        json.dump({"device": device, "rows": rows}, f, indent=1)
    print(f"{'stage':55s} {'thr':>3s} {'time s':>8s} {'bound s':>8s} {'ratio':>6s} {'target':>15s} status")
    for r in rows:
        if "ratio" not in r:
            print(f"{r['stage']:55s} {'':>3s} {'':>8s} {'':>8s} {'':>6s} {'':>15s} {r['status']}")
            continue
        print(f"{r['stage']:55s} {r['threads']:>3d} {r['time_s']:8.3f} {r['bound_s']:8.3f} {r['ratio']:6.2f} "
              f"{r['target']:>15s} {r['status']}")
    print(f"written to {out_path} (device: {device})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
