"""Is SuperGlobal reranking likely to help on these vectors? A check without labels.

Reranking (spec section 5) averages each candidate with its K nearest candidates and expands the query with its
first K + 1. That helps when the query's first K are mostly true matches that also resemble each other, and hurts
when they are not (few positives per query, un-whitened vectors): the measured gain follows the base ranking's
mP@10. :func:`gain_signals` measures, per query and from the vectors alone, how much the first K look like such a
group; :func:`rerank_gain_check` turns their mean into a verdict and a plain sentence.

The signals (per query, over the first M of the initial ranking, candidates ``c_1 .. c_M``, ``s_i = q . c_i``):

* ``sig_top_z``: ``(mean(s_1..s_K) - mean(s_1..s_M)) / std(s_1..s_M)``: how far the first K stand above the
  shortlist.
* ``sig_reciprocal``: the fraction of the first K whose own K nearest candidates (other than themselves) would
  include the query: ``s_i >=`` the K-th largest ``c_i . c_j``, ``j != i``.
* ``sig_coherence``: the fraction of ordered pairs (i, j), both among the first K, i != j, with ``c_j`` among the
  K nearest candidates of ``c_i`` (other than itself); 0 when K = 1.
* ``sig_expansion``: the cosine between ``q`` and the element-wise max of the first K + 1 candidates (the
  expanded query without refinement): low when the expansion drifts away from the query.

How well they predict the measured gain (and where they fail) is measured in
:mod:`sglib.experiments.gain_check_validation` (``results/rerank_gain_check.json``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

SIGNALS = ("sig_top_z", "sig_reciprocal", "sig_coherence", "sig_expansion")
# The signal behind the verdict and its "help" threshold: the best signal and threshold on the fitting half of the
# validation points (results/rerank_gain_check.json, "split"); "hurt" below a round number about 10% lower, the
# band between being "unclear". The z-score grows with the shortlist (about sqrt(M / K) at most): the thresholds
# hold for M = 400, K = 9 on databases of a few hundred images or more.
SCORE_SIGNAL = "sig_top_z"
HELP_AT, HURT_BELOW = 3.86, 3.5


@dataclasses.dataclass(frozen=True)
class GainCheck:
    """``verdict``: ``"help"``, ``"hurt"`` or ``"unclear"``; ``message``: one plain sentence with the reason and
    the numbers; ``signals``: each signal's mean over the queries (``SIGNALS``, plus ``"queries"``, ``"M"``, ``"K"``)."""

    verdict: str
    message: str
    signals: dict


def gain_signals(q: np.ndarray, x: np.ndarray, ranks: np.ndarray, M: int = 400, K: int = 9) -> dict:
    """Per-query label-free signals (see the module doc).

    Args:
        q: (nq, D) query and x: (N, D) database descriptors, unit rows.
        ranks: (nq, >= M) database indices of each query's initial ranking, best first (e.g. descending ``q @ x.T``).
        M: shortlist size (capped at N and at the ranking's width); K: neighbours, 1 <= K < M.

    Returns:
        ``{signal: (nq,) float64 array}`` for each name in :data:`SIGNALS`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(50, 8)); x /= np.linalg.norm(x, axis=1, keepdims=True)
        >>> q = x[:3] + 0.1; q /= np.linalg.norm(q, axis=1, keepdims=True)
        >>> s = gain_signals(q, x, np.argsort(-q @ x.T, axis=1), M=20, K=3)
        >>> sorted(s), s["sig_reciprocal"].shape
        (['sig_coherence', 'sig_expansion', 'sig_reciprocal', 'sig_top_z'], (3,))
    """
    q, x, ranks = np.asarray(q, np.float64), np.asarray(x, np.float64), np.asarray(ranks)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"gain_signals: expected q (nq, D) and x (N, D), got {q.shape} and {x.shape}")
    if ranks.ndim != 2 or ranks.shape[0] != q.shape[0]:
        raise ValueError(f"gain_signals: expected ranks ({q.shape[0]}, >= M), got {ranks.shape}")
    m = signals_m(M, x, ranks)
    if not 1 <= K < m:
        raise ValueError(f"gain_signals: expected 1 <= K < M (M capped at {m}), got K={K}")
    cands = x[ranks[:, :m]]                                          # (nq, m, D)
    s = np.einsum("bmd,bd->bm", cands, q)
    top_z = (s[:, :K].mean(1) - s.mean(1)) / np.maximum(s.std(1), 1e-12)
    gram = np.einsum("bid,bjd->bij", cands, cands)
    idx = np.arange(m)
    gram[:, idx, idx] = -np.inf                                      # "other than itself"
    kth = -np.partition(-gram, K - 1, axis=2)[:, :, K - 1]           # (nq, m) K-th largest of each row
    reciprocal = (s[:, :K] >= kth[:, :K]).mean(1)
    first = gram[:, :K, :K]
    pairs = (first >= kth[:, :K, None]) & np.isfinite(first)
    coherence = pairs.sum((1, 2)) / max(K * (K - 1), 1)
    expanded = cands[:, : K + 1].max(1)
    expansion = np.einsum("bd,bd->b", expanded, q) / np.maximum(np.linalg.norm(expanded, axis=1), 1e-12)
    return {"sig_top_z": top_z, "sig_reciprocal": reciprocal, "sig_coherence": coherence, "sig_expansion": expansion}


def score_verdict(score: float, help_at: float = HELP_AT, hurt_below: float = HURT_BELOW) -> str:
    """``"help"`` when ``score >= help_at``, ``"hurt"`` when ``score < hurt_below``, else ``"unclear"``."""
    if score >= help_at:
        return "help"
    return "hurt" if score < hurt_below else "unclear"


def signals_m(M: int, x: np.ndarray, ranks: np.ndarray) -> int:
    """The shortlist size the signals use: ``M`` capped at the database size and the ranking's width."""
    return int(min(M, np.shape(x)[0], np.shape(ranks)[1]))


def rerank_gain_check(q: np.ndarray, x: np.ndarray, ranks: np.ndarray, M: int = 400, K: int = 9) -> GainCheck:
    """Whether SuperGlobal reranking (top-M, K neighbours) is likely to help these vectors, without labels.

    Args: as :func:`gain_signals`.

    Returns:
        :class:`GainCheck`; the verdict is :func:`score_verdict` of the mean of :data:`SCORE_SIGNAL` over the queries.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
        >>> centre = unit(rng.normal(size=16))
        >>> x = unit(np.concatenate([centre + 0.05 * rng.normal(size=(3, 16)), rng.normal(size=(300, 16))]))
        >>> rerank_gain_check(centre[None], x, np.argsort(-centre @ x.T)[None], M=200, K=3).verdict
        'help'
        >>> q = unit(rng.normal(size=(4, 16)))                # no group of matches: nothing stands out
        >>> rerank_gain_check(q, x, np.argsort(-q @ x.T, axis=1), M=200, K=3).verdict
        'hurt'
    """
    per_query = gain_signals(q, x, ranks, M, K)
    means = {k: float(v.mean()) for k, v in per_query.items()}
    score = means[SCORE_SIGNAL]
    verdict = score_verdict(score)
    said = {"help": "likely to help", "hurt": "likely to hurt", "unclear": "uncertain to help or hurt"}[verdict]
    reason = (f"each query's first {K} results stand on average {score:.2f} standard deviations above the mean "
              f"similarity of its first {signals_m(M, x, ranks)} (help at >= {HELP_AT}, hurt below {HURT_BELOW}; "
              f"{means['sig_reciprocal']:.2f} of them have the query among their own {K} nearest)")
    message = f"Reranking is {said} here, because {reason}."
    signals = {**means, "queries": int(q.shape[0]), "M": signals_m(M, x, ranks), "K": int(K)}
    return GainCheck(verdict, message, signals)
