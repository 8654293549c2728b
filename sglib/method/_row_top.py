"""The per-row top-``width`` selection behind :func:`sglib.method.rerank.top_neighbours` on CPU, compiled by numba.

Per row, three passes that branch little: a lower bound ``tau`` of the row's ``width``-th largest value (the
smallest of the maxima of ``width`` disjoint segments: ``width`` entries are at least that large), the entries at
least ``tau`` copied out in column order (about 3 x ``width`` of them at M = 400), then ``width`` rounds of "take
the largest" over those few (the first of equal values, so ties keep the lower column). Rows are independent, so
the result does not depend on the thread count.
"""
import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _row_top(rows, vals, cols):
    n, length = rows.shape
    width = vals.shape[1]
    seg = length // width
    for r in numba.prange(n):
        row, v, c = rows[r], vals[r], cols[r]
        tau = np.inf
        for s in range(width):
            m = row[s * seg]
            for j in range(s * seg + 1, (s + 1) * seg):
                m = max(m, row[j])
            tau = min(tau, m)
        cand_v = np.empty(length, np.float32)
        cand_c = np.empty(length, np.int64)
        count = 0
        for j in range(length):      # branch-free copy: the slot is kept only when the entry reaches tau
            x = row[j]
            cand_v[count] = x
            cand_c[count] = j
            count += x >= tau        # NaN never does
        for t in range(width):
            if t >= count:           # a row with NaN entries may hold fewer: marked
                v[t] = np.nan
                c[t] = -1
                continue
            best, best_v = 0, cand_v[0]
            for i in range(1, count):
                if cand_v[i] > best_v:
                    best, best_v = i, cand_v[i]
            v[t] = best_v
            c[t] = cand_c[best]
            cand_v[best] = -np.inf


def row_top(rows: np.ndarray, vals: np.ndarray, cols: np.ndarray, threads: int) -> None:
    """Fill ``vals`` (n, width) float32 and ``cols`` (n, width) int64 with the largest entries of ``rows`` (n, L)
    float32, finite, descending, ties by lower column; on ``threads`` numba threads (capped at numba's pool)."""
    if not 1 <= vals.shape[1] <= rows.shape[1]:
        raise ValueError(f"width must lie in [1, {rows.shape[1]}], got {vals.shape[1]}")
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _row_top(rows, vals, cols)
