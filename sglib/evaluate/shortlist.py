"""Which database images a reranker sees: the shortlist policy of an evaluation.

* ``"shared"`` (the reference's): one top-M per query, the same for the three protocols; junk
  images take shortlist places although evaluation ignores them.
* ``"per_protocol"`` (DELG / CVNet / AMES practice): per protocol, that protocol's junk moved
  behind the ranking first, so the top-M holds M images that count.
"""
from __future__ import annotations

import numpy as np

from .protocol import PROTOCOLS, protocol_sets

SHORTLIST_POLICIES = ("shared", "per_protocol")


def junk_to_end(ranks: np.ndarray, gnd: list, protocol: str) -> np.ndarray:
    """Move each query's junk images (under ``protocol``) to the end of its ranking, order kept.

    Evaluation ignores junk wherever it sits, so this changes no score by itself.

    Args:
        ranks: (nq, N) int. Returns (nq, N).
    """
    ranks = np.asarray(ranks)
    out = np.empty_like(ranks)
    for i, g in enumerate(gnd):
        _, junk = protocol_sets(g, protocol)
        is_junk = np.isin(ranks[i], junk)
        out[i] = np.concatenate([ranks[i][~is_junk], ranks[i][is_junk]])
    return out


def shortlists(ranks: np.ndarray, gnd: list, policy: str = "shared") -> list[tuple[tuple[str, ...], np.ndarray]]:
    """``[(protocols, ranks to rerank for them), ...]`` under a shortlist ``policy``.

    Example:
        >>> gnd = [{"easy": [1], "hard": [], "junk": [0]}]
        >>> [(p, r.tolist()) for p, r in shortlists(np.array([[0, 1]]), gnd, "per_protocol")][1]
        (('medium',), [[1, 0]])
    """
    if policy not in SHORTLIST_POLICIES:
        raise ValueError(f"shortlist policy must be one of {SHORTLIST_POLICIES}, got {policy!r}")
    if policy == "shared":
        return [(PROTOCOLS, ranks)]
    return [((p,), junk_to_end(ranks, gnd, p)) for p in PROTOCOLS]
