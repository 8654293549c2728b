"""Diffusion on the truncated k-nearest-neighbour graph (Iscen, Tolias, Avrithis, Furon and Chum, CVPR 2017).

For one query and its top-M candidates ``c_1 .. c_M``:

1. affinity ``a_ij = max(0, c_i . c_j)^gamma`` when ``c_i`` and ``c_j`` are each among the other's ``k``
   nearest database items (the offline graph, :mod:`sglib.rerankers.graph`), else 0: the database graph
   truncated to the shortlist;
2. ``S = D^-1/2 A D^-1/2`` with ``D`` the row sums (an isolated node keeps a zero row);
3. ``y_i = max(0, q . c_i)^gamma`` for the ``query_k`` first candidates, else 0;
4. ``f`` solves ``(I - alpha S) f = y`` by conjugate gradient (``iterations`` steps at most, stopping once
   ``|r| <= tol |y|``), and the candidates are re-ordered by ``f`` (unreached ones keep their order, last).

Defaults ``k = 50, gamma = 3, alpha = 0.99`` and about 20 conjugate-gradient steps are those of the paper
for global descriptors; ``query_k`` defaults to ``k``. Truncating to the shortlist (M) is the paper's
truncated variant, with the shortlist as its truncation size.
"""
from __future__ import annotations

import torch

from .._checks import check_int, check_real
from ..method.rerank import batched_mv, check_shortlist_size, rerank_shortlist, shortlist_inputs
from .graph import DatabaseGraph, graph_for

DEFAULTS = {"k": 50, "gamma": 3.0, "alpha": 0.99, "iterations": 20, "query_k": None}


def shortlist_affinity(top: torch.Tensor, graph: DatabaseGraph, gamma: float, dtype=torch.float32) -> torch.Tensor:
    """(b, M) shortlisted database ids -> (b, M, M) mutual-neighbour affinities ``max(0, s)^gamma``."""
    b, m = top.shape
    ids, sims = graph.ids[top], graph.sims[top]                                               # (b, M, k)
    # position of each neighbour id in its query's shortlist (m when outside it), by binary search
    sorted_top, perm = top.sort(dim=1)
    flat = ids.reshape(b, -1)
    at = torch.searchsorted(sorted_top, flat).clamp_max(m - 1)
    found = torch.gather(sorted_top, 1, at) == flat
    pos = torch.where(found, torch.gather(perm, 1, at), torch.full_like(at, m)).view(b, m, -1)
    a = torch.zeros(b, m, m + 1, dtype=dtype, device=top.device)
    a.scatter_(2, pos, sims.to(dtype).clamp_min(0) ** gamma)
    a = a[..., :m]
    return torch.minimum(a, a.transpose(1, 2))          # zero unless each is in the other's k nearest


def conjugate_gradient(matvec, y: torch.Tensor, iterations: int, tol: float = 1e-6) -> torch.Tensor:
    """Solve ``A f = y`` for a batch of symmetric positive definite systems: y (b, M) -> f (b, M)."""
    f = torch.zeros_like(y)
    r = y.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    stop = (tol * y.norm(dim=1)) ** 2
    for _ in range(iterations):
        active = rs > stop
        if not bool(active.any()):
            break
        ap = matvec(p)
        step = torch.where(active, rs / (p * ap).sum(1).clamp_min(1e-30), torch.zeros_like(rs))
        f = f + step.unsqueeze(1) * p
        r = r - step.unsqueeze(1) * ap
        rs_new = (r * r).sum(1)
        p = torch.where(active.unsqueeze(1), r + (rs_new / rs.clamp_min(1e-30)).unsqueeze(1) * p, p)
        rs = torch.where(active, rs_new, rs)
    return f


def diffusion_scores(q: torch.Tensor, cands: torch.Tensor, top: torch.Tensor, graph: DatabaseGraph,
                     gamma: float = 3.0, alpha: float = 0.99, iterations: int = 20, query_k: int | None = None,
                     tol: float = 1e-6) -> torch.Tensor:
    """(nq, D), (nq, M, D) candidates, (nq, M) their ids -> (nq, M) diffusion scores ``f`` (higher first)."""
    a = shortlist_affinity(top, graph, gamma, cands.dtype)
    inv_sqrt = a.sum(2).rsqrt().nan_to_num(posinf=0.0)                       # isolated node: zero row
    s = inv_sqrt.unsqueeze(2) * a * inv_sqrt.unsqueeze(1)
    y = batched_mv(cands, q).clamp_min(0) ** gamma
    y[:, graph.k if query_k is None else query_k:] = 0
    return conjugate_gradient(lambda v: v - alpha * torch.bmm(s, v.unsqueeze(-1)).squeeze(-1), y, iterations, tol)


def diffusion(q, x, ranks, M: int, k: int = DEFAULTS["k"], gamma: float = DEFAULTS["gamma"],
              alpha: float = DEFAULTS["alpha"], iterations: int = DEFAULTS["iterations"], query_k: int | None = None,
              graph: DatabaseGraph | None = None):
    """Rerank the top-M of each ranking by diffusion on the database graph truncated to the shortlist.

    Args:
        q: (nq, D), x: (N, D) unit rows (or a database with ``take``, then ``graph`` is required);
            ranks: (nq, L) int, L >= M.
        k: graph neighbours; gamma: affinity exponent; alpha: in (0, 1), the walk's continuation probability;
        iterations: conjugate-gradient steps; query_k: candidates seeding ``y`` (default k, at most M).
        graph: the database graph with >= k neighbours per node (built when None; pass it to keep its
            offline cost out of the per-query time).

    Returns:
        (nq, L) ranks, the first M re-ordered.
    """
    check_shortlist_size(M)
    alpha = check_real(alpha, "alpha", 0, 1, open_lo=True, open_hi=True)
    gamma = check_real(gamma, "gamma", 0, open_lo=True)
    iterations = check_int(iterations, "iterations", 1)
    k = check_int(k, "k", 1, what="(graph neighbours)")
    seeds = min(k, M) if query_k is None else check_int(query_k, "query_k", 1, M, what="(candidates seeding y)")
    _, _, _, _, device = shortlist_inputs(q, x, ranks, M)          # refuse bad inputs before building a graph
    graph = graph_for(x, k, graph, device)
    return rerank_shortlist(q, x, ranks, M,
                            lambda qc, cands, top, rows: diffusion_scores(qc, cands, top, graph, gamma, alpha,
                                                                           iterations, seeds),
                            chunk=max(1, (64 << 20) // (16 * M * M)), method="diffusion")
