"""Straightforward per-query SuperGlobal reranking, written as the spec reads (section 5).

Materialises the M x M similarities and every refined descriptor, one query at a time. It is
the readable oracle the tests compare :func:`sglib.rerank.superglobal` with, and the baseline
``benchmarks/rerank.py`` times. Use :mod:`sglib.rerank` for real work.
"""
from __future__ import annotations

import numpy as np


def superglobal_one_query(q: np.ndarray, cands: np.ndarray, K: int = 9, beta: float = 0.15) -> np.ndarray:
    """q (D,), cands (M, D) in initial order -> (M,) final scores ``(s1 + s2) / 2``."""
    sim = cands @ cands.T
    refined = np.empty_like(cands)
    for i in range(len(cands)):
        nbr = np.argsort(-sim[i], kind="stable")[: K + 1]
        w = np.concatenate([[1.0], beta * sim[i, nbr[1:]]])
        refined[i] = (w[:, None] * cands[nbr]).sum(0) / w.sum()
    s1 = refined @ q
    first = np.argsort(-s1, kind="stable")[: K + 1]
    q_prime = refined[first].max(axis=0)
    s2 = refined @ q_prime
    return (s1 + s2) / 2


def superglobal_per_query(q: np.ndarray, x: np.ndarray, ranks: np.ndarray, M: int = 400, K: int = 9,
                          beta: float = 0.15) -> np.ndarray:
    """Same contract as :func:`sglib.rerank.superglobal` for numpy inputs, one query at a time."""
    out = ranks.copy()
    for i in range(len(q)):
        top = ranks[i, :M]
        scores = superglobal_one_query(q[i], x[top], K, beta)
        out[i, :M] = top[np.argsort(-scores, kind="stable")]
    return out
