"""Search and large-scale evaluation benchmark, measured side by side in one run.

    .venv/bin/python benchmarks/search.py [--n 1000000] [--quick] [--threads 2]

Prints:
  1. the machine's float32 matrix-multiply peak (torch.mm, same threads) and exact ``sglib.search.knn``
     throughput as a fraction of it (2 * nq * N * D flops / time), float32 and float16 storage;
  2. IVF-PQ (+ fp16 refine) speed-up over exact search at the first nprobe reaching recall@100 >= 0.95;
  3. memory-light ``sglib.evaluation.streaming.revisited_from_scores`` vs full arg-sort + ``sglib.evaluate.revisited``
     at N database items and the 70 revisited-Oxford queries, asserting identical numbers;
  with the peak resident-memory increase of each step (RSS sampled every 5 ms).

All vectors and scores are SIMULATED (not image descriptors): unit-normalised clustered Gaussian
vectors whose per-dimension variances fall off as 1/i (a power-law spectrum like that of real global
descriptors), D=256 float32 by default (D=2048 at 1M would need 8 GB). The evaluation uses the real
revisited-Oxford ground truth (``../shared/revisitop/gnd_roxford5k.pkl`` beside the repository, or
``$SGLIB_SHARED/revisitop``) with simulated scores; without it, step 3 says so and is not run.
How fast IVF-PQ reaches a recall depends on the data: the figure is for this simulation only.
"""
from __future__ import annotations

import argparse
import os
import sys

_THREADS = "2"
for _i, _a in enumerate(sys.argv):  # BLAS/OpenMP read these at import time
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = _THREADS
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch and faiss OpenMP pools must not spin against each other

import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglib.data.revisitop import read_revisitop_gnd  # noqa: E402
from sglib import evaluate  # noqa: E402
from sglib.evaluation import streaming  # noqa: E402
from sglib.scale import search  # noqa: E402

SHARED = Path(os.environ.get("SGLIB_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
GND = SHARED / "revisitop" / "gnd_roxford5k.pkl"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Peak memory increase over the block: resident memory sampled every 5 ms by a thread (``mib``;
    blind to memory the allocator reuses), and the tracemalloc peak of numpy/Python allocations
    (``traced_mib``; blind to torch and faiss buffers)."""

    def __enter__(self):
        tracemalloc.start()
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.mib = (self.peak - self.base) / 2**20
        self.traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


def simulated_vectors(n, d, centres, seed, chunk=200_000):
    """Simulated unit vectors: a random centre plus as much noise (variances ~ 1/i per dimension, a
    power-law spectrum), so clusters overlap and a query's 100 neighbours span several IVF lists."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        v = centres[rng.integers(0, len(centres), m)] + 1.0 * rng.standard_normal((m, d), dtype=np.float32) * scale
        out[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def sgemm_gflops(size, repeats=3):
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="database size (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--nq", type=int, default=None, help="search queries (default 1000; 200 with --quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pq-m", type=int, default=None, help="PQ sub-vectors (default D // 4: 4 dimensions, 1 byte each)")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)
    nq = args.nq or (200 if args.quick else 1000)
    d, k = args.dim, 100
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"# sglib search benchmark: N={n:,}, D={d}, {nq} queries, k={k}, {args.threads} threads "
          f"(the machine may be shared: timings are noisy)")

    size = 2048 if args.quick else 4096
    peak_before = sgemm_gflops(size)
    print(f"matmul peak (torch.mm float32, {size}^3): {peak_before:.1f} GFLOP/s")

    # ---- simulated data
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(100, n // 1000), d)).astype(np.float32) / np.sqrt(np.arange(1, d + 1))
    t = time.perf_counter()
    x = simulated_vectors(n, d, centres, seed=1)
    q = simulated_vectors(nq, d, centres, seed=2)
    print(f"simulated clustered vectors: x {x.shape} float32 {x.nbytes / 2**20:.0f} MiB "
          f"({time.perf_counter() - t:.1f} s to generate)")

    # ---- 1. exact search
    flops = 2 * nq * n * d
    with PeakRSS() as m_exact:
        _, exact_i = search.knn(q, x, k)
    qt, xt, block = torch.from_numpy(q), torch.from_numpy(x), 16384
    mm_s = _timed(lambda: [torch.mm(qt, xt[s:s + block].T) for s in range(0, n, block)])
    peak_after = sgemm_gflops(size)
    peak = max(peak_before, peak_after)
    gf = flops / m_exact.seconds / 1e9
    print(f"matmul peak measured again after the search: {peak_after:.1f} GFLOP/s; using the larger, {peak:.1f}")
    print(f"exact knn float32: {m_exact.seconds:.2f} s, {gf:.1f} GFLOP/s = {gf / peak:.0%} of matmul peak, "
          f"peak RSS +{m_exact.mib:.0f} MiB (database {x.nbytes / 2**20:.0f} MiB); its block matmuls alone "
          f"{mm_s:.2f} s = {flops / mm_s / 1e9 / peak:.0%} of peak, the rest is top-k selection")
    x16 = x.astype(np.float16)
    with PeakRSS() as m_16:
        _, ids16 = search.knn(q, x16, k)
    gf16 = flops / m_16.seconds / 1e9
    print(f"exact knn float16 storage (float32 blocks): {m_16.seconds:.2f} s, {gf16:.1f} GFLOP/s = "
          f"{gf16 / peak:.0%} of peak, database {x16.nbytes / 2**20:.0f} MiB, peak RSS +{m_16.mib:.0f} MiB, "
          f"recall@{k} vs float32 {search.recall_at_k(ids16, exact_i, k):.4f}")
    del x16

    # ---- 2. IVF-PQ
    nlist = 256 if args.quick else 1024
    pq_m = args.pq_m or d // 4
    with PeakRSS() as m_build:
        index = search.build_index(x, "ivfpq", nlist=nlist, m=pq_m, nbits=8, refine="fp16", seed=0)
    print(f"IVF{nlist},PQ{pq_m}x8 + fp16 refine: build {m_build.seconds:.1f} s, peak RSS +{m_build.mib:.0f} MiB, "
          f"index {search.index_bytes(index) / 2**20:.0f} MiB (flat float32 would be {x.nbytes / 2**20:.0f} MiB)")
    print(f"  {'nprobe':>6} {'k_factor':>8} {'recall@100':>10} {'time s':>8} {'speed-up':>8}")
    reached = None
    for k_factor in (4, 8, 16, 32):
        for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
            with PeakRSS() as m_ivf:
                _, ids = search.search_index(index, q, k, nprobe=nprobe, k_factor=k_factor)
            rec = search.recall_at_k(ids, exact_i, k)
            print(f"  {nprobe:>6} {k_factor:>8} {rec:>10.4f} {m_ivf.seconds:>8.3f} "
                  f"{m_exact.seconds / m_ivf.seconds:>7.1f}x")
            if rec >= 0.95:
                reached = (nprobe, k_factor, rec, m_ivf.seconds, m_ivf.mib)
                break
        if reached:
            break
    if reached:
        nprobe, k_factor, rec, secs, mib = reached
        print(f"IVF-PQ first reaching recall@100 >= 0.95: nprobe={nprobe}, k_factor={k_factor}: recall {rec:.4f}, "
              f"{secs:.3f} s vs exact {m_exact.seconds:.2f} s = {m_exact.seconds / secs:.1f}x faster, "
              f"search peak RSS +{mib:.0f} MiB")
    else:
        print("IVF-PQ did not reach recall@100 >= 0.95 in the sweep")
    del index, x, q

    # ---- 3. memory-light revisited evaluation vs full arg-sort
    if not GND.is_file():
        print(f"step 3 not run: the revisited-Oxford ground truth is not at {GND} (put ../shared beside the "
              "repository or set SGLIB_SHARED)")
        return
    gnd = read_revisitop_gnd(GND)["gnd"]
    srng = np.random.default_rng(3)
    sim_scores = (0.1 * srng.standard_normal((len(gnd), n), dtype=np.float32))
    for i, g in enumerate(gnd):  # simulated: positives score higher on average
        sim_scores[i, g["easy"]] += 0.3
        sim_scores[i, g["hard"]] += 0.15
    with PeakRSS() as m_light:
        light = streaming.revisited_from_scores(sim_scores, gnd, progress=False)
    with PeakRSS() as m_full:
        full = evaluate.revisited(np.argsort(-sim_scores, axis=1, kind="stable"), gnd)
    for p in evaluate.PROTOCOLS:
        for key in ("aps", "prs", "mp"):
            np.testing.assert_array_equal(light[p][key], full[p][key])
        assert light[p]["map"] == full[p]["map"] or np.isnan(full[p]["map"])
    print(f"revisited evaluation, {len(gnd)} queries x N={n:,} simulated scores "
          f"({sim_scores.nbytes / 2**20:.0f} MiB): mAP E/M/H = "
          + "/".join(f"{100 * light[p]['map']:.2f}" for p in evaluate.PROTOCOLS) + " (identical: asserted)")
    print(f"  full arg-sort + evaluate.revisited: {m_full.seconds:.2f} s, "
          f"peak numpy memory +{m_full.traced_mib:.0f} MiB (RSS +{m_full.mib:.0f} MiB)")
    print(f"  streaming.revisited_from_scores: {m_light.seconds:.2f} s, "
          f"peak numpy memory +{m_light.traced_mib:.0f} MiB (RSS +{m_light.mib:.0f} MiB)")
    print(f"  speed-up {m_full.seconds / m_light.seconds:.1f}x, "
          f"peak memory {m_full.traced_mib / m_light.traced_mib:.0f}x less")


if __name__ == "__main__":
    main()
