"""SuperGlobal reranking (spec section 5): database-side and query-side refinement of the top-M.

Batched over queries with no Python loop per query or candidate. The refined database
descriptors ``x'_i = sum_j w_ij x_j / sum_j w_ij`` are never materialised for all M
candidates: only their dot products are needed, and ``q . x'_i`` is the same weighted
average of the ``q . x_j``. The cost is therefore dominated by the M x M similarity product.
A straightforward per-query version that materialises everything lives in
:mod:`sglib.method.rerank_reference` (the readable statement of the spec, and the test oracle).

The database may also be any object with ``shape`` (N, D) and ``take(ids) -> (len(ids), D)`` rows
(e.g. :class:`sglib.scale.search.Database`, several parts that are never concatenated): only the
top-M rows of each query are read.
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import check_tensor, to_tensor

DEFAULT_M, DEFAULT_K, DEFAULT_BETA = 400, 9, 0.15


def superglobal_scores(q: torch.Tensor, cands: torch.Tensor, K: int = DEFAULT_K,
                       beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Final SuperGlobal scores of each query's M candidates.

    Args:
        q: (nq, D) query descriptors.
        cands: (nq, M, D) each query's candidates, in initial rank order; M >= K + 1.
        K: neighbours used by both refinements; beta: weight scale of the K neighbours.

    Returns:
        (nq, M) scores ``(s1 + s2) / 2``; sort them descending for the new order.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
        >>> c = torch.nn.functional.normalize(torch.randn(2, 20, 8), dim=2)
        >>> superglobal_scores(q, c, K=3).shape
        torch.Size([2, 20])
    """
    nq, m, _ = cands.shape
    sim = torch.bmm(cands, cands.transpose(1, 2))                      # (nq, M, M)
    top_sim, nbr = sim.topk(K + 1, dim=-1)                             # (nq, M, K+1)
    w = torch.cat([torch.ones_like(top_sim[..., :1]), beta * top_sim[..., 1:]], dim=-1)
    w = w / w.sum(-1, keepdim=True)                                    # rows of x' = w @ x_nbr

    def refined_dot(v):                                                # v (nq, D) -> (nq, M): v . x'_i
        vc = torch.bmm(cands, v.unsqueeze(-1)).squeeze(-1)             # (nq, M)
        return (w * torch.gather(vc, 1, nbr.reshape(nq, -1)).reshape(nq, m, K + 1)).sum(-1)

    s1 = refined_dot(q)
    first = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, : K + 1]   # (nq, K+1)
    # materialise x' only for the K+1 best candidates: their element-wise max is q'
    nbr_first = torch.gather(nbr, 1, first.unsqueeze(-1).expand(-1, -1, K + 1))      # (nq, K+1, K+1)
    w_first = torch.gather(w, 1, first.unsqueeze(-1).expand(-1, -1, K + 1))
    rows = torch.arange(nq, device=cands.device).view(nq, 1, 1)
    refined_first = (w_first.unsqueeze(-1) * cands[rows, nbr_first]).sum(2)           # (nq, K+1, D)
    q_prime = refined_first.amax(dim=1)
    s2 = refined_dot(q_prime)
    return (s1 + s2) / 2


def _query_chunk(m: int, d: int, budget_bytes: int = 64 * 2**20) -> int:
    # small chunks keep the gathered candidates cache-friendly and bound peak memory
    per_query = 4 * (m * m * 3 + m * d * 2)
    return max(1, budget_bytes // per_query)


def superglobal(q, x, ranks, M: int = DEFAULT_M, K: int = DEFAULT_K, beta: float = DEFAULT_BETA):
    """Rerank the top-M of each query's ranking with SuperGlobal.

    Args:
        q: (nq, D) unit-norm query descriptors.
        x: (N, D) unit-norm database descriptors (array or tensor), or an object with ``shape`` and
            ``take(ids)`` returning those rows (a database kept in parts).
        ranks: (nq, L) int, L >= M: row i = database indices for query i, best first.
        M: shortlist size; K: neighbours; beta: neighbour weight scale.

    Returns:
        (nq, L) ranks: the first M reordered, the rest unchanged. numpy in -> numpy out,
        torch in -> torch out (on the inputs' device).

    Example:
        >>> x = np.eye(12, dtype=np.float32); q = x[:2]
        >>> superglobal(q, x, np.argsort(-q @ x.T, axis=1), M=10, K=2).shape
        (2, 12)
    """
    numpy_out = isinstance(ranks, np.ndarray)
    qt, rt = to_tensor(q, "q"), to_tensor(ranks, "ranks")
    if hasattr(x, "take") and not isinstance(x, (np.ndarray, torch.Tensor)):
        n, d = x.shape
        device = qt.device

        def rows(ids: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x.take(ids.cpu().numpy()), np.float32)).to(device)
    else:
        xt = to_tensor(x, "x")
        check_tensor(xt, "x", ndim=2)
        n, d = xt.shape
        device = xt.device
        xt = xt.to(dtype=torch.float32)

        def rows(ids: torch.Tensor) -> torch.Tensor:
            return torch.index_select(xt, 0, ids)
    _check(qt, n, d, rt, M, K, beta)
    qt = qt.to(device=device, dtype=torch.float32)
    head = rt.to(device=device, dtype=torch.long)[:, :M]
    new_head = torch.empty_like(head)
    step = _query_chunk(M, d)
    for s in range(0, head.shape[0], step):
        top = head[s:s + step]
        cands = rows(top.reshape(-1)).view(top.shape[0], M, d)
        scores = superglobal_scores(qt[s:s + step], cands, K, beta)
        if not bool(torch.isfinite(scores).all()):
            _raise_non_finite(cands, top)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        new_head[s:s + step] = torch.gather(top, 1, order)
    out = torch.cat([new_head.to(rt.device, rt.dtype), rt[:, M:]], dim=1)
    return out.numpy() if numpy_out else out


def superglobal_candidates(q, cands, K: int = DEFAULT_K, beta: float = DEFAULT_BETA):
    """Rerank one query's candidate vectors, e.g. the top-M returned by a vector database.

    Args:
        q: (D,) query vector (or (1, D)), unit norm.
        cands: (M, D) its candidates in the initial order, unit rows; M >= K + 1.

    Returns:
        ``(order, scores)``: ``order`` (M,) positions into ``cands``, best first, and
        ``scores`` (M,) the SuperGlobal score of each candidate (in the input order).
        numpy in -> numpy out, torch in -> torch out.

    Example:
        >>> c = np.eye(6, dtype=np.float32)
        >>> order, scores = superglobal_candidates(c[0], c, K=2)
        >>> int(order[0])
        0
    """
    numpy_out = isinstance(cands, np.ndarray)
    qt, ct = to_tensor(q, "q"), to_tensor(cands, "cands")
    if qt.ndim == 1:
        qt = qt.unsqueeze(0)
    check_tensor(ct, "cands", ndim=2, finite=True)
    check_tensor(qt, "q", ndim=2, finite=True)
    if qt.shape != (1, ct.shape[1]):
        raise ValueError(f"q: expected ({ct.shape[1]},) to match cands' dimension, got {tuple(qt.shape)}")
    if ct.shape[0] < K + 1:
        raise ValueError(f"cands: need at least K + 1 = {K + 1} candidates, got {ct.shape[0]}")
    ct = ct.float()
    scores = superglobal_scores(qt.to(ct.device, torch.float32), ct.unsqueeze(0), K, beta)[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    return (order.cpu().numpy(), scores.cpu().numpy()) if numpy_out else (order, scores)


def _check(q, n, d, ranks, M, K, beta):
    check_tensor(q, "q", ndim=2)
    if q.shape[1] != d:
        raise ValueError(f"q has dimension {q.shape[1]} but x has {d}")
    if ranks.ndim != 2 or ranks.shape[0] != q.shape[0]:
        raise ValueError(f"ranks: expected ({q.shape[0]}, L) (one row per query), got {tuple(ranks.shape)}")
    if ranks.dtype.is_floating_point or ranks.dtype == torch.bool:
        raise ValueError(f"ranks: expected integer database indices, got dtype {ranks.dtype}")
    for name, v in (("M", M), ("K", K)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name}: expected an integer, got {v!r}")
    if not (0 < K + 1 <= M):
        raise ValueError(f"need 0 <= K < M, got K={K}, M={M}")
    if not (isinstance(beta, (int, float, np.floating)) and np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
    if M > ranks.shape[1]:
        raise ValueError(f"M={M} is larger than the ranking length L={ranks.shape[1]}")
    if M > n:
        raise ValueError(f"M={M} is larger than the database size N={n}")
    head = ranks[:, :M]
    if head.numel() and (int(head.min()) < 0 or int(head.max()) >= n):
        raise ValueError(f"ranks: indices must lie in [0, {n}), got [{int(head.min())}, {int(head.max())}]")
    if head.numel() and bool((torch.sort(head, dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("ranks: a row repeats a database index among its first M; expected distinct indices")
    check_tensor(q, "q", finite=True)
    # the candidates are checked through the scores (a NaN spreads into them): cheaper than a pass over them


def _raise_non_finite(cands, top):
    bad = ~torch.isfinite(cands).all(-1)
    if bool(bad.any()):
        raise ValueError(f"x: database descriptor(s) {torch.unique(top[bad])[:10].tolist()} among the top-M "
                         "candidates contain NaN or infinite values")
    big = torch.unique(top[cands.abs().amax(-1) > 1e15])
    raise ValueError(f"x: the similarities of database descriptor(s) {big[:10].tolist()} overflow float32: "
                     "SuperGlobal expects L2-normalised descriptors (unit rows)")
