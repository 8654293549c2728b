"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, CVPR 2017), applied to each query's shortlist.

The set is ``S = {q} + top-M`` (n = M + 1 members). With ``d`` the squared Euclidean distance of the unit
descriptors divided by its largest value in S (so ``d`` lies in [0, 1]), and ``N(i, k)`` the k + 1 members
nearest to ``i`` (``i`` itself first):

1. k-reciprocal set ``R(i, k) = {j in N(i, k) : i in N(j, k)}``;
2. expansion: ``R*(i) = R(i, k1)`` united with every ``R(c, round(k1 / 2))`` of a ``c in R(i, k1)`` that shares
   at least two thirds of its members with ``R(i, k1)``;
3. ``V_i,j = exp(-d_ij)`` for ``j in R*(i)``, else 0, each row scaled to sum 1 (as in the authors' release);
4. local query expansion: ``V_i`` replaced by the mean of ``V_j`` over the ``k2`` members nearest to ``i``
   (``i`` included);
5. Jaccard distance ``d_J(q, j) = 1 - sum_l min(V_ql, V_jl) / sum_l max(V_ql, V_jl)`` and final distance
   ``(1 - lambda) d_J + lambda d``; candidates are re-ordered by it, ascending.

Defaults ``k1 = 20, k2 = 6, lambda = 0.3`` are the paper's. The paper re-ranks the whole gallery with all
probes; restricted to one query's shortlist the cost is a few (M+1) x (M+1) products per query.
"""
from __future__ import annotations

import torch

from .._checks import check_int, check_real
from ..method.rerank import check_shortlist_size, rerank_shortlist

DEFAULTS = {"k1": 20, "k2": 6, "lam": 0.3}


def _nearest_mask(order: torch.Tensor, k: int) -> torch.Tensor:
    """(b, n, n) bool: ``[i, j]`` true when j is among the first ``k`` of row i's order."""
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(2, order[..., :k], True)


def k_reciprocal_distances(q: torch.Tensor, cands: torch.Tensor, k1: int = 20, k2: int = 6,
                           lam: float = 0.3) -> torch.Tensor:
    """(nq, D), (nq, M, D) candidates -> (nq, M) final distances of the candidates to the query (lower first).

    Example:
        >>> c = torch.nn.functional.normalize(torch.randn(1, 30, 8), dim=2)
        >>> k_reciprocal_distances(c[:, 0], c, k1=5, k2=2).shape
        torch.Size([1, 30])
    """
    members = torch.cat([q.unsqueeze(1), cands], dim=1)                       # (b, n, D)
    sq = (2 - 2 * torch.bmm(members, members.transpose(1, 2))).clamp_min(0)    # squared distances of unit rows
    dist = sq / sq.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    order = torch.sort(dist, dim=2, stable=True).indices
    near = _nearest_mask(order, k1 + 1)
    recip = near & near.transpose(1, 2)
    near_half = _nearest_mask(order, round(k1 / 2) + 1)
    recip_half = (near_half & near_half.transpose(1, 2)).float()
    shared = torch.bmm(recip.float(), recip_half.transpose(1, 2))              # |R(i) & R_half(c)|
    grows = recip & (3 * shared >= 2 * recip_half.sum(2).unsqueeze(1))        # c may extend R(i)
    expanded = recip | (torch.bmm(grows.float(), recip_half) > 0)
    v = torch.where(expanded, torch.exp(-dist), torch.zeros_like(dist))
    v = v / v.sum(2, keepdim=True)
    if k2 > 1:
        v = torch.bmm(_nearest_mask(order, k2).to(v.dtype), v) / k2
    common = torch.minimum(v[:, :1], v).sum(2)                                 # (b, n)
    jaccard = 1 - common / torch.maximum(v[:, :1], v).sum(2)
    return ((1 - lam) * jaccard + lam * dist[:, 0])[:, 1:]


def k_reciprocal(q, x, ranks, M: int, k1: int = DEFAULTS["k1"], k2: int = DEFAULTS["k2"], lam: float = DEFAULTS["lam"]):
    """Rerank the top-M of each ranking by k-reciprocal re-ranking within ``{q} + top-M``.

    Args:
        q: (nq, D), x: (N, D) unit rows (or a database with ``take``); ranks: (nq, L) int, L >= M.
        k1: reciprocal neighbourhood (k1 + 1 <= M + 1); k2: local query expansion (1 <= k2 <= M + 1);
        lam: weight of the original distance, in [0, 1].

    Returns:
        (nq, L) ranks, the first M re-ordered. numpy in -> numpy out, torch in -> torch out.
    """
    check_shortlist_size(M)
    k1 = check_int(k1, "k1", 1, M, what=f"for a shortlist of M={M}")
    k2 = check_int(k2, "k2", 1, M + 1, what=f"for a shortlist of M={M}")
    lam = check_real(lam, "lam", 0, 1)
    return rerank_shortlist(q, x, ranks, M, lambda qc, cands, top, rows: -k_reciprocal_distances(qc, cands, k1, k2, lam),
                            chunk=max(1, (64 << 20) // (4 * 6 * (M + 1) ** 2)), method="k-reciprocal")
