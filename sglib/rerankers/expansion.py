"""Query and database expansion on the shortlist: alpha-QE and (alpha-)DBA.

* **alpha-QE** (Radenovic, Tolias and Chum, TPAMI 2018): the query is replaced by
  ``q' = normalise(q + sum_{i <= n} max(0, q . x_i)^alpha x_i)`` over its ``n`` best candidates, and the
  shortlist is re-scored by ``q' . x``. ``alpha = 0`` is plain average query expansion (Chum et al. 2007).
* **alpha-DBA** (database-side augmentation, Arandjelovic and Zisserman 2012; alpha-weighted by Radenovic
  et al.): each database vector becomes ``normalise(x + sum_{j <= k} max(0, x . n_j)^alpha n_j)`` over its
  ``k`` nearest database neighbours (the offline graph, :mod:`sglib.rerankers.graph`), and the shortlist is
  re-scored by ``q . x~``. ``alpha = 0`` weighs the neighbours equally (plain DBA).

Both follow the calling convention of :func:`sglib.rerank.superglobal`: the first M of each ranking
re-ordered, the rest unchanged. Only the shortlisted rows are augmented (the graph gives their neighbours),
so a query costs ``M * k`` row reads, not a pass over the database.
"""
from __future__ import annotations

import torch

from .._checks import check_int, check_real
from ..method.rerank import batched_mv, check_shortlist_size, rerank_shortlist, shortlist_inputs
from .graph import DatabaseGraph, graph_for

QE_DEFAULTS = {"n": 10, "alpha": 3.0}
DBA_DEFAULTS = {"k": 10, "alpha": 3.0}


def _check_alpha(alpha) -> float:
    return check_real(alpha, "alpha", lo=0)


def _weights(sims: torch.Tensor, alpha: float) -> torch.Tensor:
    # negative similarities would give complex powers for fractional alpha: they count for nothing
    return torch.ones_like(sims) if alpha == 0 else sims.clamp_min(0) ** alpha


def alpha_qe_scores(q: torch.Tensor, cands: torch.Tensor, n: int = 10, alpha: float = 3.0) -> torch.Tensor:
    """(nq, D), (nq, M, D) candidates in initial order -> (nq, M) scores ``q' . x``.

    Example:
        >>> c = torch.nn.functional.normalize(torch.randn(1, 6, 4), dim=2)
        >>> alpha_qe_scores(c[:, 0], c, n=2).shape
        torch.Size([1, 6])
    """
    sims = batched_mv(cands[:, :n], q)                                             # (nq, n)
    expanded = q + (_weights(sims, alpha).unsqueeze(-1) * cands[:, :n]).sum(1)
    expanded = torch.nn.functional.normalize(expanded, dim=1)
    return batched_mv(cands, expanded)


def alpha_qe(q, x, ranks, M: int, n: int = QE_DEFAULTS["n"], alpha: float = QE_DEFAULTS["alpha"]):
    """Rerank the top-M of each ranking by alpha-weighted query expansion over the first ``n``.

    Args:
        q: (nq, D), x: (N, D) unit rows (or a database with ``take``); ranks: (nq, L) int, L >= M.
        n: candidates added to the query (1 <= n <= M); alpha: weight exponent (0: plain average).

    Returns:
        (nq, L) ranks, the first M re-ordered. numpy in -> numpy out, torch in -> torch out.
    """
    check_shortlist_size(M)
    n = check_int(n, "n", 1, M, what="(candidates added to the query)")
    alpha = _check_alpha(alpha)
    return rerank_shortlist(q, x, ranks, M, lambda qc, cands, top, rows: alpha_qe_scores(qc, cands, n, alpha),
                            method="alpha-QE")


def dba_vectors(cands: torch.Tensor, nbrs: torch.Tensor, nbr_sims: torch.Tensor, alpha: float) -> torch.Tensor:
    """Augmented rows: (b, M, D) rows, (b, M, k, D) their neighbours, (b, M, k) similarities -> (b, M, D).

    ``normalize(x_i + sum_t w_it x_n(i,t))`` as one batched (1 x k) @ (k x D) product per row added to ``x_i``
    (``torch.baddbmm``): no (b, M, k, D) weighted copy of the neighbours is made."""
    b, m, k, d = nbrs.shape
    w = _weights(nbr_sims, alpha).reshape(b * m, 1, k)
    augmented = torch.baddbmm(cands.reshape(b * m, 1, d), w, nbrs.reshape(b * m, k, d))
    return torch.nn.functional.normalize(augmented.view(b, m, d), dim=-1)


def alpha_dba(q, x, ranks, M: int, k: int = DBA_DEFAULTS["k"], alpha: float = DBA_DEFAULTS["alpha"],
              graph: DatabaseGraph | None = None):
    """Rerank the top-M of each ranking by ``q . x~`` with database-side augmented candidates.

    Args:
        q, x, ranks, M: as :func:`alpha_qe`.
        k: neighbours merged into each database vector; alpha: weight exponent (0: plain DBA).
        graph: the database's neighbour graph with at least ``k`` neighbours per node (built when None:
            pass one to keep its offline cost out of the per-query time).

    Returns:
        (nq, L) ranks, the first M re-ordered.
    """
    alpha = _check_alpha(alpha)
    qt, _, _, _, device = shortlist_inputs(q, x, ranks, M)        # refuse bad inputs before building a graph
    graph = graph_for(x, k, graph, device)

    # the gathered neighbours dominate memory: about 64 MiB of them per call, in one buffer reused by every call
    chunk = max(1, (64 << 20) // (4 * M * (graph.k + 1) * qt.shape[1]))
    buffer = torch.empty(min(chunk, qt.shape[0]) * M * graph.k * qt.shape[1], dtype=torch.float32, device=device)

    def scores(qc, cands, top, rows):
        ids, sims = graph.ids[top], graph.sims[top].to(cands.dtype)                             # (b, M, k)
        nbrs = rows(ids.reshape(-1), out=buffer[:ids.numel() * cands.shape[-1]].view(ids.numel(), -1))
        return batched_mv(dba_vectors(cands, nbrs.view(*ids.shape, -1), sims, alpha), qc)
    return rerank_shortlist(q, x, ranks, M, scores, chunk=chunk, method="DBA")
