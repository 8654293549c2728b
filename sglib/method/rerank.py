"""SuperGlobal reranking (spec section 5): database-side and query-side refinement of the top-M.

Batched over queries with no Python loop per query or candidate. The refined database
descriptors ``x'_i = sum_j w_ij x_j / sum_j w_ij`` are never materialised for all M
candidates: only their dot products are needed, and ``q . x'_i`` is the same weighted
average of the ``q . x_j``. The cost is therefore dominated by the M x M similarity product.
A straightforward per-query version that materialises everything lives in
:mod:`sglib.method.rerank_reference` (the readable statement of the spec, and the test oracle).

The database may also be any object with ``shape`` (N, D) and ``take(ids) -> (len(ids), D)`` rows
(e.g. :class:`sglib.search.Database`, several parts that are never concatenated): only the
top-M rows of each query are read.
"""
from __future__ import annotations

import functools
import glob

import numpy as np
import torch

from .._checks import check_int, check_real, check_tensor, to_tensor

DEFAULT_M, DEFAULT_K, DEFAULT_BETA = 400, 9, 0.15
SIDES = ("both", "database", "query")


def superglobal_scores(q: torch.Tensor, cands: torch.Tensor, K: int = DEFAULT_K,
                       beta: float = DEFAULT_BETA, sides: str = "both") -> torch.Tensor:
    """Final SuperGlobal scores of each query's M candidates.

    Args:
        q: (nq, D) query descriptors.
        cands: (nq, M, D) each query's candidates, in initial rank order; M >= K + 1.
        K: neighbours used by both refinements; beta: weight scale of the K neighbours.
        sides: ``"both"``: ``(s1 + s2) / 2``; ``"database"``: ``s1 = q . x'`` alone; ``"query"``: the
            candidates are not refined (``x' = x``) and the expanded query is the max over the first K + 1.

    Returns:
        (nq, M) scores; sort them descending for the new order.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
        >>> c = torch.nn.functional.normalize(torch.randn(2, 20, 8), dim=2)
        >>> superglobal_scores(q, c, K=3).shape
        torch.Size([2, 20])
    """
    nbr, w = neighbour_weights(cands, K, beta, sides)
    s1 = refined_dot(cands, q, nbr, w)
    if sides == "database":
        return s1
    s2 = refined_dot(cands, expanded_query(cands, s1, nbr, w, K), nbr, w)
    return (s1 + s2) / 2


def neighbour_weights(cands: torch.Tensor, K: int, beta: float, sides: str = "both"):
    """``(nbr, w)``, each (nq, M, width): candidate i's refined descriptor is ``x'_i = sum_t w[i, t] x_nbr[i, t]``.

    ``"query"`` keeps the candidates (width 1: each is its own neighbour, weight 1); otherwise width K + 1:
    the K + 1 most similar candidates of each (the M x M product, :func:`gram`, then :func:`top_neighbours`),
    weights 1 for the most similar and ``beta * similarity`` for the others, normalised to sum 1."""
    nq, m, _ = cands.shape
    if sides == "query":
        nbr = torch.arange(m, device=cands.device).view(1, m, 1).expand(nq, m, 1)
        return nbr, torch.ones(nq, m, 1, dtype=cands.dtype, device=cands.device)
    top_sim, nbr = top_neighbours(gram(cands), K + 1)
    w = top_sim.mul_(beta)
    w[..., 0] = 1
    return nbr, w.div_(w.sum(-1, keepdim=True))


def gram(cands: torch.Tensor) -> torch.Tensor:
    """(nq, M, D) -> (nq, M, M) similarities ``cands[b] @ cands[b].T``: the product reranking cannot avoid."""
    return torch.bmm(cands, cands.transpose(1, 2))


def top_neighbours(sim: torch.Tensor, width: int):
    """``(values, columns)`` (nq, M, width) of the ``width`` largest entries of each row of ``sim`` (nq, M, M),
    values descending.

    On CPU one compiled pass per row (:func:`_row_top_cpu`: equal values keep the lower column), about four times
    cheaper than ``torch.topk``, whose per-row cost would otherwise rival the M x M product at D = 512. Elsewhere
    (CUDA) the grouped selection of :func:`_top_neighbours_grouped` (equal values: either column, as ``torch.topk``).
    """
    if sim.device.type == "cpu" and sim.dtype == torch.float32:
        nq, m, _ = sim.shape
        vals, cols = _row_top_cpu(sim.reshape(nq * m, m), width)
        return vals.view(nq, m, width), cols.view(nq, m, width)
    return _top_neighbours_grouped(sim, width)


def _row_top_cpu(rows: torch.Tensor, width: int):
    """(n, L) float32 CPU rows -> their ``width`` largest ``(values, columns)``, (n, width) each, values descending and
    equal values by lower column; rows run in parallel on torch's thread count. NaN entries are never selected
    (callers check finiteness first)."""
    from ._row_top import row_top
    rows = rows.contiguous()
    vals = torch.empty((rows.shape[0], width), dtype=torch.float32)
    cols = torch.empty((rows.shape[0], width), dtype=torch.int64)
    row_top(rows.numpy(), vals.numpy(), cols.numpy(), torch.get_num_threads())
    return vals, cols


def _top_neighbours_grouped(sim: torch.Tensor, width: int):
    """:func:`top_neighbours` from ``torch`` operations (any device).

    ``torch.topk`` costs about 4 us a row on CPU whatever the width. Instead the columns are split into groups
    (group g: columns g, g + G, g + 2G, ...; the maxima of all groups are one pass vectorised along the rows), the
    ``width`` groups with the largest maxima are kept and the answer is read from their ``width * M / G``
    entries: any entry of the top ``width`` lies in one of them, since otherwise ``width`` groups would each hold
    a larger entry."""
    nq, m, _ = sim.shape
    size = _group_size(m, width)
    if size == 1:
        return sim.topk(width, dim=-1)
    n, groups = nq * m, m // size
    rows = sim.reshape(n, size, groups)                       # [r, a, g] = column g + groups * a
    best = rows.amax(1).topk(width, dim=1).indices            # (n, width) groups holding the answer
    cols = (best.unsqueeze(-1) + groups * torch.arange(size, device=sim.device)).view(n, width * size)
    vals, at = sim.reshape(n, m).gather(1, cols).topk(width, dim=1)
    return vals.view(nq, m, width), cols.gather(1, at).view(nq, m, width)


def _group_size(m: int, width: int) -> int:
    """Columns per group for :func:`_top_neighbours_grouped`: the divisor of ``m`` nearest ``sqrt(m / width)`` (the
    two selections then have about equal widths) that leaves at least ``width`` groups; 1 (no grouping) if none."""
    sizes = [s for s in range(2, m // width + 1) if m % s == 0 and m // s >= width]
    return min(sizes, key=lambda s: abs(s * s * width - m), default=1)


def refined_dot(cands: torch.Tensor, v: torch.Tensor, nbr: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(nq, M) products ``v . x'_i`` of the vectors ``v`` (nq, D) with the refined candidates (``nbr``, ``w`` from
    :func:`neighbour_weights`): the same weighted sums of the ``v . x_j``, so no ``x'`` is built."""
    nq, m, width = nbr.shape
    vc = batched_mv(cands, v)
    return (w * torch.gather(vc, 1, nbr.reshape(nq, -1)).view(nq, m, width)).sum(-1)


def expanded_query(cands: torch.Tensor, s1: torch.Tensor, nbr: torch.Tensor, w: torch.Tensor, K: int) -> torch.Tensor:
    """(nq, D) expanded queries ``q'``: the element-wise max of the refined descriptors of the K + 1 candidates
    first by ``s1`` (nq, M) (ties: lower position), built only for those K + 1."""
    nq, m, width = nbr.shape
    first = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, : K + 1]        # (nq, K+1)
    nbr_first = torch.gather(nbr, 1, first.unsqueeze(-1).expand(-1, -1, width))        # (nq, K+1, width)
    w_first = torch.gather(w, 1, first.unsqueeze(-1).expand(-1, -1, width))
    flat = (torch.arange(nq, device=cands.device).view(nq, 1, 1) * m + nbr_first).reshape(-1)
    nbr_vectors = cands.reshape(nq * m, -1).index_select(0, flat).view(nq * (K + 1), width, -1)
    refined_first = torch.bmm(w_first.reshape(nq * (K + 1), 1, width), nbr_vectors).view(nq, K + 1, -1)
    return refined_first.amax(dim=1)


def batched_mv(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(b, M, D) @ (b, D) -> (b, M). One matrix-vector product per batch entry: on CPU ``torch.bmm`` with a
    single column runs several times slower than the same products made one by one (measured in
    benchmarks/rerank.py's setting)."""
    return torch.stack([torch.mv(a[i], v[i]) for i in range(a.shape[0])])


def _query_chunk(m: int, d: int, budget_bytes: int = 256 * 2**20) -> int:
    """Queries per chunk: as many as keep one chunk's candidates and M x M similarities (4 * (M*D + M*M) bytes a
    query) within the last-level cache, where the passes after the product then read them (8 queries at
    M = 400, D = 2048 in 32 MiB: measured best in benchmarks/rerank.py); at most ``budget_bytes``."""
    per_query = 4 * (m * m + m * d)
    return max(1, min(_last_level_cache(), budget_bytes) // per_query)


@functools.lru_cache(maxsize=1)
def _last_level_cache(default: int = 32 * 2**20) -> int:
    """Bytes of the CPU's largest cache (Linux sysfs), ``default`` where it cannot be read."""
    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(f) as fh:
                text = fh.read().strip().upper()
            sizes.append(int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1))
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


UNIT_NORM_TOLERANCE = 1e-2    # float16 storage and whitening round-off stay far inside it


def database_rows(x):
    """``(rows(ids, out=None) -> (len(ids), D) float32 tensor, N, D, device)`` for a database given as an array, a
    tensor or an object with ``shape`` and ``take(ids)`` (a database kept in parts). Only the rows asked for are
    read and converted, so a float16 or non-contiguous database is never copied whole; ``out`` (a contiguous
    float32 tensor of the result's size) is filled instead of allocating, where the storage allows it."""
    if hasattr(x, "take") and not isinstance(x, (np.ndarray, torch.Tensor)):
        n, d = x.shape

        def rows(ids: torch.Tensor, out=None) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x.take(ids.cpu().numpy()), np.float32)).to(ids.device)
        return rows, n, d, None
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ValueError(f"x: expected a torch.Tensor, numpy array or database with take(), got {type(x).__name__}")
    check_floating(x, "x")
    check_tensor(x, "x", ndim=2)
    if isinstance(x, np.ndarray):
        def rows(ids: torch.Tensor, out=None) -> torch.Tensor:
            if out is not None and x.dtype == np.float32:
                np.take(x, ids.cpu().numpy(), axis=0, out=out.numpy())
                return out
            return torch.from_numpy(np.ascontiguousarray(x[ids.cpu().numpy()], np.float32)).to(ids.device)
        return rows, x.shape[0], x.shape[1], torch.device("cpu")

    def rows(ids: torch.Tensor, out=None) -> torch.Tensor:
        if out is not None and x.dtype == torch.float32:
            return torch.index_select(x, 0, ids.to(x.device), out=out)
        return torch.index_select(x, 0, ids.to(x.device)).float()
    return rows, x.shape[0], x.shape[1], x.device


def check_floating(a, name: str) -> None:
    """ValueError unless ``a`` (array or tensor) holds real floating values (float16/32/64, bfloat16)."""
    floating = a.dtype.is_floating_point if isinstance(a, torch.Tensor) else np.asarray(a).dtype.kind == "f"
    if not floating:
        raise ValueError(f"{name}: expected floating descriptors (float32, float16 or float64), got dtype {a.dtype}")


def check_unit_rows(v: torch.Tensor, name: str, ids: torch.Tensor | None = None) -> None:
    """ValueError unless every row of ``v`` (..., D) has L2 norm 1 within :data:`UNIT_NORM_TOLERANCE`; ``ids``
    names the database rows of ``v`` in the message."""
    bad = ((v.norm(dim=-1) - 1).abs() > UNIT_NORM_TOLERANCE) & torch.isfinite(v).all(-1)
    if bool(bad.any()):
        which = (f"database row(s) {torch.unique(ids[bad])[:10].tolist()}" if ids is not None else
            f"row(s) {torch.nonzero(bad.reshape(-1)).flatten()[:10].tolist()}")
        norm = float(v.norm(dim=-1)[bad].flatten()[0])
        raise ValueError(f"{name}: {which} have L2 norm {norm:.4g}, not 1: rerankers expect L2-normalised descriptors "
                         f"(normalise them first, e.g. torch.nn.functional.normalize(v, dim=1))")


def shortlist_inputs(q, x, ranks, M: int):
    """Validated inputs of a shortlist reranker: ``(q (nq, D) float32, rows, head (nq, M) int64, ranks, device)``;
    ``rows`` as in :func:`database_rows`. Raises ValueError for anything :func:`check_shortlist` refuses."""
    check_shortlist_size(M)
    qt, rt = to_tensor(q, "q"), to_tensor(ranks, "ranks")
    check_floating(qt, "q")
    if rt.dtype in (torch.uint16, torch.uint32, torch.uint64):
        rt = rt.to(torch.int64)           # values past int64 wrap negative and are refused by the range check
    rows, n, d, device = database_rows(x)
    device = qt.device if device is None else device
    check_shortlist(qt, n, d, rt, M)
    qt = qt.to(device=device, dtype=torch.float32)
    check_unit_rows(qt, "q")
    return qt, rows, rt.to(device=device, dtype=torch.long)[:, :M], rt, device


def rerank_shortlist(q, x, ranks, M: int, scores_fn, chunk: int | None = None, method: str = "reranker"):
    """Reorder the first M of each query's ranking by ``scores_fn``: the driver every shortlist reranker shares.

    Args:
        q: (nq, D) unit query descriptors; x: (N, D) unit database rows (see :func:`database_rows`);
            ranks: (nq, L) int, L >= M.
        scores_fn: ``(q (b, D), cands (b, M, D), top (b, M) database ids, rows) -> (b, M)`` scores, higher first;
            ``rows(ids)`` reads database rows (for methods that look beyond the shortlist).
        chunk: queries per call of ``scores_fn`` (default: bounded by memory, :func:`_query_chunk`).
        method: the method's name, for error messages.

    Returns:
        (nq, L) ranks, the first M stably sorted by score, the rest unchanged; numpy in -> numpy out,
        torch in -> torch out (on the ranks' device).
    """
    numpy_out = isinstance(ranks, np.ndarray)
    qt, rows, head, rt, _ = shortlist_inputs(q, x, ranks, M)
    d = qt.shape[1]
    new_head = torch.empty_like(head)
    step = chunk or _query_chunk(M, d)
    # one buffer for every chunk's candidates: a fresh allocation per chunk costs page faults
    buffer = torch.empty(min(step, head.shape[0]) * M * d, dtype=torch.float32, device=qt.device)
    for s in range(0, head.shape[0], step):
        top = head[s:s + step]
        cands = rows(top.reshape(-1), out=buffer[:top.numel() * d].view(-1, d)).view(top.shape[0], M, d)
        _check_candidates(cands, top)
        scores = scores_fn(qt[s:s + step], cands, top, rows)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"{method}: scores are not finite although the query and its shortlisted candidates are: "
                             "a value read beyond the shortlist (a graph neighbour's descriptor or similarity) "
                             "holds NaN or inf")
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        new_head[s:s + step] = torch.gather(top, 1, order)
    out = torch.cat([new_head.to(rt.device, rt.dtype), rt[:, M:]], dim=1)
    return out.numpy() if numpy_out else out


def superglobal(q, x, ranks, M: int = DEFAULT_M, K: int = DEFAULT_K, beta: float = DEFAULT_BETA, sides: str = "both"):
    """Rerank the top-M of each query's ranking with SuperGlobal.

    Args:
        q: (nq, D) unit-norm query descriptors.
        x: (N, D) unit-norm database descriptors (array or tensor), or an object with ``shape`` and
            ``take(ids)`` returning those rows (a database kept in parts).
        ranks: (nq, L) int, L >= M: row i = database indices for query i, best first.
        M: shortlist size; K: neighbours; beta: neighbour weight scale.
        sides: ``"both"`` (the paper's method), ``"database"`` (refined candidates, query kept: ``s1``) or
            ``"query"`` (candidates kept, expanded query): the paper's ablation of the two refinements.

    Returns:
        (nq, L) ranks: the first M reordered, the rest unchanged. numpy in -> numpy out,
        torch in -> torch out (on the inputs' device).

    Example:
        >>> x = np.eye(12, dtype=np.float32); q = x[:2]
        >>> superglobal(q, x, np.argsort(-q @ x.T, axis=1), M=10, K=2).shape
        (2, 12)
    """
    check_superglobal_params(M, K, beta, sides)
    return rerank_shortlist(q, x, ranks, M, lambda qc, cands, top, rows: superglobal_scores(qc, cands, K, beta, sides),
                            method="superglobal")


def superglobal_candidates(q, cands, K: int = DEFAULT_K, beta: float = DEFAULT_BETA, sides: str = "both"):
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
    check_floating(ct, "cands")
    check_floating(qt, "q")
    check_tensor(ct, "cands", ndim=2, finite=True)
    check_tensor(qt, "q", ndim=2, finite=True)
    if qt.shape != (1, ct.shape[1]):
        raise ValueError(f"q: expected ({ct.shape[1]},) to match cands' dimension, got {tuple(qt.shape)}")
    check_superglobal_params(ct.shape[0], K, beta, sides)
    ct = ct.float()
    check_unit_rows(qt.float(), "q")
    check_unit_rows(ct, "cands")
    scores = superglobal_scores(qt.to(ct.device, torch.float32), ct.unsqueeze(0), K, beta, sides)[0]
    order = torch.sort(scores, descending=True, stable=True).indices
    return (order.cpu().numpy(), scores.cpu().numpy()) if numpy_out else (order, scores)


def check_superglobal_params(M, K, beta, sides: str = "both") -> None:
    """ValueError unless M, K are integers with 0 <= K < M, beta a finite number >= 0 and ``sides`` known."""
    check_shortlist_size(M)
    check_int(K, "K")
    if not (0 < K + 1 <= M):
        raise ValueError(f"need 0 <= K < M (at least K + 1 candidates), got K={K}, M={M}")
    check_real(beta, "beta", lo=0)
    if sides not in SIDES:
        raise ValueError(f"sides: expected one of {SIDES}, got {sides!r}")


def check_shortlist_size(M) -> None:
    """ValueError unless the shortlist size M is an integer >= 1."""
    check_int(M, "M", lo=1, what="(the shortlist size)")


def check_shortlist(q: torch.Tensor, n: int, d: int, ranks: torch.Tensor, M) -> None:
    """ValueError unless q is (nq, d) finite, ranks (nq, L) integer with L >= M, and each row's first M are
    distinct ids in [0, n)."""
    check_tensor(q, "q", ndim=2)
    if q.shape[1] != d:
        raise ValueError(f"q has dimension {q.shape[1]} but x has {d}")
    if ranks.ndim != 2 or ranks.shape[0] != q.shape[0]:
        raise ValueError(f"ranks: expected ({q.shape[0]}, L) (one row per query), got {tuple(ranks.shape)}")
    if ranks.dtype.is_floating_point or ranks.dtype == torch.bool:
        raise ValueError(f"ranks: expected integer database indices, got dtype {ranks.dtype}")
    check_shortlist_size(M)
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


def _check_candidates(cands: torch.Tensor, top: torch.Tensor) -> None:
    """ValueError naming the shortlisted database rows that are not finite or not unit-norm.

    One pass computes the row norms (a NaN or inf makes its norm non-finite); the rows are searched for the
    reason only when a norm is off."""
    norms = cands.norm(dim=-1)
    if bool(((norms - 1).abs() <= UNIT_NORM_TOLERANCE).all()):
        return
    bad = ~torch.isfinite(cands).all(-1)
    if bool(bad.any()):
        raise ValueError(f"x: database descriptor(s) {torch.unique(top[bad])[:10].tolist()} among the top-M "
                         "candidates contain NaN or infinite values")
    check_unit_rows(cands, "x", top)
