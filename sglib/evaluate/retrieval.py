"""Retrieval evaluated: rank -> shortlist -> rerank -> revisited, on descriptors already extracted.

Shared by the command line (``python -m sglib evaluate``), ``make demo`` and the notebooks, so all
of them compute the same numbers from the same cached features.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from .._checks import check_int, check_real
from .._settings import setting
from ..method.rerank import DEFAULT_BETA, DEFAULT_K, DEFAULT_M, superglobal
from .protocol import PROTOCOLS, check_ks, results_table, revisited, summary
from .shortlist import shortlists


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    """SuperGlobal reranking parameters: shortlist size M, neighbours K, neighbour weight beta."""

    M: int = setting(DEFAULT_M, "shortlist size: the top-M of each query are reranked", flag="--M")
    K: int = setting(DEFAULT_K, "neighbours each descriptor is refined with", flag="--K")
    beta: float = setting(DEFAULT_BETA, "weight scale of the K neighbours (each item itself weighs 1)")

    def __post_init__(self):
        for name in ("M", "K"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"RerankSettings.{name}: expected an integer, got {v!r}")
        if not 0 <= self.K < self.M:
            raise ValueError(f"RerankSettings: need 0 <= K < M, got K={self.K}, M={self.M}")
        check_real(self.beta, "RerankSettings.beta", lo=0)


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """What :func:`evaluate_retrieval` measured.

    Attributes:
        protocols: ``{"easy"|"medium"|"hard": {"map", "aps", "mp", "prs"}}``
            (:func:`sglib.evaluate.protocol.revisited`'s dict; also reachable as ``result["easy"]``).
        N: database size. M: shortlist size used for reranking (capped at N), None without reranking.
        shortlist: the shortlist policy (:mod:`sglib.evaluate.shortlist`), None without reranking.
        ks: the cut-offs of the precisions ``mp`` / ``prs``.
    """

    protocols: dict
    N: int
    M: int | None = None
    shortlist: str | None = None
    ks: tuple = (1, 5, 10)

    def __getitem__(self, protocol: str) -> dict:
        return self.protocols[protocol]

    def summary(self) -> dict:
        """``{"easy", "medium", "hard"}`` mAP in percent."""
        return summary(self.protocols)

    def table(self) -> pd.DataFrame:
        """mAP and mP@k (at the evaluation's ``ks``) in percent, one row per protocol."""
        return results_table(self.protocols, self.ks)


def check_retrieval_inputs(q, x, gnd, rerank=None) -> None:
    """ValueError unless q (nq, D) and x (N, D) are 2-D with one D, gnd has nq entries whose ids are integers
    in [0, N) (the whole database is ranked, so a larger id means gnd and features do not match), and
    ``rerank`` is None or a :class:`RerankSettings`."""
    for name, a in (("q", q), ("x", x)):
        if getattr(a, "ndim", None) != 2:
            raise ValueError(f"{name}: expected a 2-D (rows, D) array of descriptors, got {getattr(a, 'shape', type(a))}")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"q has dimension {q.shape[1]} but x has {x.shape[1]}")
    if not isinstance(gnd, (list, tuple)) or len(gnd) != q.shape[0]:
        raise ValueError(f"gnd: expected a list of {q.shape[0]} per-query dicts (q has {q.shape[0]} queries), "
                         f"got {type(gnd).__name__} of length {len(gnd) if hasattr(gnd, '__len__') else '?'}")
    for i, g in enumerate(gnd):
        for key in ("easy", "hard", "junk"):
            ids = np.asarray(g.get(key, []) if isinstance(g, dict) else None)
            if not isinstance(g, dict) or (ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0
                                                         or ids.max() >= x.shape[0])):
                raise ValueError(f"gnd[{i}]['{key}']: expected integer database indices in [0, N={x.shape[0]}), got "
                                 f"{g.get(key) if isinstance(g, dict) else g!r}: do the ground truth and the "
                                 "descriptors come from the same dataset?")
    if rerank is not None and not isinstance(rerank, RerankSettings):
        raise ValueError(f"rerank: expected RerankSettings(M=..., K=..., beta=...) or None, got {rerank!r}")


def rank_database(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Full ranking by descending inner product, ties by lower index: (nq, D), (N, D) -> (nq, N)."""
    for name, v in (("q", q), ("x", x)):
        if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype.kind != "f" or 0 in v.shape:
            raise ValueError(f"{name}: expected a non-empty 2-D floating numpy array (one descriptor per row), got "
                             f"{getattr(v, 'dtype', type(v).__name__)} of shape {getattr(v, 'shape', None)}")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"q has {q.shape[1]} dims, x {x.shape[1]}: descriptors of one model are needed")
    q32, x32 = np.ascontiguousarray(q, np.float32), np.ascontiguousarray(x, np.float32)
    for name, v in (("q", q32), ("x", x32)):
        norms = np.linalg.norm(v, axis=1)
        # far from unit rows, float32 scores underflow to ties (1e-30 rows) or overflow (1e30 rows): never a ranking
        tiny = np.flatnonzero(np.isfinite(norms) & (norms < 1e-6))
        if tiny.size:
            raise ValueError(f"{name}: row(s) {tiny[:5].tolist()} have L2 norm {norms[tiny[0]]:.3g}: their scores "
                             "vanish in float32 (all ties); expected L2-normalised descriptors")
    scores = torch.from_numpy(q32) @ torch.from_numpy(x32).T
    if not bool(torch.isfinite(scores).all()):
        rows = torch.nonzero(~torch.isfinite(scores))
        qi, xi = int(rows[0, 0]), int(rows[0, 1])
        if np.isfinite(q32[qi]).all() and np.isfinite(x32[xi]).all():
            norms = (float(np.linalg.norm(q[qi])), float(np.linalg.norm(x[xi])))
            raise ValueError(f"descriptors: the score of query {qi} and database row {xi} overflows float32 (L2 "
                             f"norms {norms[0]:.3g} and {norms[1]:.3g}): expected L2-normalised descriptors")
        which = f"query {qi}" if not np.isfinite(q32[qi]).all() else f"database row {xi}"
        raise ValueError(f"descriptors: {which} holds NaN or infinite values (in float32); a failed image cannot be "
                         "ranked (drop it, or fix the image and extract again)")
    return torch.sort(scores, dim=1, descending=True, stable=True).indices.numpy()


def retrieve(q: np.ndarray, x: np.ndarray, rerank: RerankSettings | None = None) -> np.ndarray:
    """Full rankings (nq, N), the top-M reranked with SuperGlobal when ``rerank`` is given (shared shortlist).

    ``rerank.M`` larger than the database is capped at its size.
    """
    ranks = rank_database(q, x)
    if rerank is None:
        return ranks
    return superglobal(q, x, ranks, min(rerank.M, x.shape[0]), rerank.K, rerank.beta)


def evaluate_retrieval(q: np.ndarray, x: np.ndarray, gnd: list, rerank: RerankSettings | None = None,
                       shortlist: str = "shared", ks=(1, 5, 10)) -> RetrievalResult:
    """Rank the database, take each protocol's shortlist, rerank it with SuperGlobal, evaluate.

    Args:
        q: (nq, D) query and x: (N, D) database descriptors, unit rows.
        gnd: the dataset's per-query ground truth.
        rerank: None evaluates the plain ranking. ``rerank.M`` larger than N is capped at N.
        shortlist: ``"shared"`` (the reference's) or ``"per_protocol"``: see :mod:`sglib.evaluate.shortlist`.

    Returns:
        :class:`RetrievalResult`.
    """
    check_retrieval_inputs(q, x, gnd, rerank)
    if rerank is None:
        return RetrievalResult(revisited(rank_database(q, x), gnd, check_ks(ks)), x.shape[0], ks=check_ks(ks))
    if rerank.K >= min(rerank.M, x.shape[0]):
        raise ValueError(f"K={rerank.K} needs more than K database images, got N={x.shape[0]}")
    return evaluate_reranker(q, x, gnd, lambda qq, xx, r, m: superglobal(qq, xx, r, m, rerank.K, rerank.beta),
                             rerank.M, shortlist, ks)


def evaluate_reranker(q: np.ndarray, x: np.ndarray, gnd: list, rerank_fn, M: int, shortlist: str = "shared",
                      ks=(1, 5, 10), ranks: np.ndarray | None = None) -> RetrievalResult:
    """Rank the database, rerank each protocol's shortlist with any reranker, evaluate.

    Args:
        q, x, gnd, shortlist, ks: as :func:`evaluate_retrieval`.
        rerank_fn: ``(q, x, ranks (nq, N), M) -> ranks``, e.g. ``lambda q, x, r, m: sglib.rerankers.rerank(
            "alpha_qe", q, x, r, m)``.
        M: shortlist size, capped at N.
        ranks: the initial full ranking when already computed (:func:`rank_database`), else computed here.

    Returns:
        :class:`RetrievalResult`.
    """
    check_retrieval_inputs(q, x, gnd)
    ks = check_ks(ks)
    check_int(M, "M", 1, what="(the shortlist size)")
    ranks = rank_database(q, x) if ranks is None else np.asarray(ranks)
    if ranks.shape != (q.shape[0], x.shape[0]):
        raise ValueError(f"ranks: expected the full ranking ({q.shape[0]}, {x.shape[0]}), got {ranks.shape}")
    m = min(M, x.shape[0])
    protocols = {}
    for names, head in shortlists(ranks, gnd, shortlist):
        out = np.asarray(rerank_fn(q, x, head, m))
        # a reranker may only reorder the shortlist: anything else would be scored without a word
        if (out.shape != head.shape or not np.array_equal(out[:, m:], head[:, m:]) or
                not np.array_equal(np.sort(out[:, :m], axis=1), np.sort(head[:, :m], axis=1))):
            raise ValueError(f"rerank_fn: must return the (nq, N) = {head.shape} ranking with only its first M={m} "
                             f"reordered; got shape {out.shape} or other ids")
        res = revisited(out, gnd, ks)
        protocols.update({p: res[p] for p in names})
    return RetrievalResult({p: protocols[p] for p in PROTOCOLS}, x.shape[0], m, shortlist, ks)
