"""Straightforward per-query SuperGlobal reranking, written as the spec reads (section 5).

Materialises the M x M similarities and every refined descriptor, one query at a time. Ties between
equal similarities go to the lower position (a stable sort); the batched version uses ``torch.topk``, which
may take either, so the two agree exactly only without ties. It is
the readable oracle the tests compare :func:`sglib.rerank.superglobal` with, the baseline
``benchmarks/rerank.py`` times, and the step-by-step record notebook 03 draws
(:func:`superglobal_steps`). Use :mod:`sglib.rerank` for real work.
"""
from __future__ import annotations

import numpy as np

from .rerank import check_superglobal_params


def superglobal_steps(q: np.ndarray, cands: np.ndarray, K: int = 9, beta: float = 0.15, sides: str = "both") -> dict:
    """Every intermediate of SuperGlobal for one query.

    Args:
        q: (D,) query; cands: (M, D) its candidates in initial order; sides: see :func:`sglib.rerank.superglobal`.

    Returns:
        ``{"neighbours": (M, K+1) positions into cands (each row's own first), "weights": (M, K+1) normalised,
        "refined": (M, D) x', "s1": (M,), "expansion": (K+1,) positions whose x' make q', "q_prime": (D,),
        "s2": (M,), "final": (M,)}``; for ``sides="database"`` the last four are absent and ``final`` is ``s1``.
    """
    check_superglobal_params(len(cands), K, beta, sides)
    sim = cands @ cands.T
    m = len(cands)
    refined = cands.copy()
    neighbours = np.arange(m)[:, None]
    weights = np.ones((m, 1))
    if sides != "query":
        neighbours = np.empty((m, K + 1), np.int64)
        weights = np.empty((m, K + 1))
        for i in range(m):
            neighbours[i] = np.argsort(-sim[i], kind="stable")[: K + 1]
            w = np.concatenate([[1.0], beta * sim[i, neighbours[i, 1:]]])
            weights[i] = w / w.sum()
            refined[i] = (weights[i][:, None] * cands[neighbours[i]]).sum(0)
    s1 = refined @ q
    steps = {"neighbours": neighbours, "weights": weights, "refined": refined, "s1": s1}
    if sides == "database":
        return {**steps, "final": s1}
    expansion = np.argsort(-s1, kind="stable")[: K + 1]
    q_prime = refined[expansion].max(axis=0)
    s2 = refined @ q_prime
    return {**steps, "expansion": expansion, "q_prime": q_prime, "s2": s2, "final": (s1 + s2) / 2}


def superglobal_one_query(q: np.ndarray, cands: np.ndarray, K: int = 9, beta: float = 0.15,
                          sides: str = "both") -> np.ndarray:
    """q (D,), cands (M, D) in initial order -> (M,) final scores ``(s1 + s2) / 2`` (``s1`` alone for
    ``sides="database"``; unrefined candidates for ``sides="query"``)."""
    return superglobal_steps(q, cands, K, beta, sides)["final"]


def superglobal_per_query(q: np.ndarray, x: np.ndarray, ranks: np.ndarray, M: int = 400, K: int = 9,
                          beta: float = 0.15, sides: str = "both") -> np.ndarray:
    """Same contract as :func:`sglib.rerank.superglobal` for numpy inputs, one query at a time."""
    out = ranks.copy()
    for i in range(len(q)):
        top = ranks[i, :M]
        scores = superglobal_one_query(q[i], x[top], K, beta, sides)
        out[i, :M] = top[np.argsort(-scores, kind="stable")]
    return out
