"""Nearest-neighbour search by inner product: exact blocked top-k and faiss approximate indexes.

``knn`` is exact and never holds the full (nq, N) score matrix: it walks over the blocks of a
:class:`Database` (one array, or several parts never concatenated) with a running top-k (one
torch.mm per block into a reused buffer; only the groups of scores that beat each query's running
k-th score are read twice and merged). ``benchmarks/search.py`` times it against the matmul peak and
faiss ``IndexFlatIP`` at equal threads.

Tie rule (deterministic): on equal scores the lower database index comes first, i.e. the order of
``np.argsort(-scores, kind="stable")`` on the full score row.

Approximate search (faiss, inner-product metric): ``build_index`` (flat, flat_fp16, ivfpq, hnsw),
``search_index``, ``save_index`` / ``load_index``, ``recall_at_k``, ``index_bytes``.
"""
from __future__ import annotations

import functools
import os

import faiss
import numpy as np
import torch

from ._checks import check_int, check_real

INDEX_KINDS = ("flat", "flat_fp16", "ivfpq", "hnsw")


class IndexFileError(ValueError):
    """A faiss index file is missing, unreadable or corrupt."""


# ----------------------------------------------------------------------------------------- exact top-k


def _torch_dtype(a, name: str) -> torch.dtype:
    """The torch dtype of a 2-D floating tensor or numpy array (np.memmap included), checked."""
    if isinstance(a, torch.Tensor):
        dtype = a.dtype
    elif isinstance(a, np.ndarray):
        dtype = torch.from_numpy(np.empty(0, a.dtype)).dtype if a.dtype.kind == "f" else None
    else:
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(a).__name__}")
    if dtype is None or not dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating dtype, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected 2 dimensions, got shape {tuple(a.shape)}")
    return dtype


def _block(a, start: int, stop: int, device, dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows start..stop-1 of a numpy array/memmap or tensor as a ``dtype`` tensor on ``device``.

    Rows already in ``dtype`` on ``device`` come back as a view (no copy); others are converted into
    ``out`` (a ``(stop - start, D)`` buffer of that dtype and device) when it is given, so a scan
    that reuses one buffer allocates nothing per block.
    """
    b = a[start:stop]
    if isinstance(b, np.ndarray) and not b.flags.writeable:  # torch wants a writable buffer
        if out is not None and out.device.type == "cpu":
            out.numpy()[...] = b  # one read of the (memmap) rows, converted on the way
            return out
        b = np.array(b)
    if isinstance(b, np.ndarray):
        b = torch.from_numpy(np.ascontiguousarray(b))
    if out is None or (b.dtype == dtype and b.device == torch.device(device)):
        return b.to(device=device, dtype=dtype, non_blocking=True)
    return out.copy_(b, non_blocking=True)


def _check_finite(b: torch.Tensor, name: str, offset: int) -> None:
    if bool(torch.isfinite(b.sum())):  # a sum is ~5x cheaper than isfinite; NaN/inf always spoil it
        return
    bad = ~torch.isfinite(b)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0]) + offset
        raise ValueError(f"{name}: row {row} contains NaN or infinite values")


def _block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, column indices) of each row of ``s``; equal values at the cut keep the lowest columns.

    ``torch.topk`` picks arbitrarily among values tied at the k-th place, so rows where the (k+1)-th
    value equals the k-th are redone with a stable sort. (Pre-selecting the best groups of 32 columns
    by their maximum was tried: not faster on CPU.)
    """
    width = s.shape[1]
    if k >= width:
        order = torch.sort(s, dim=1, descending=True, stable=True).indices
        return s.gather(1, order), order
    vals, idx = torch.topk(s, k + 1, dim=1)
    tied = (vals[:, k] == vals[:, k - 1]).nonzero().flatten()
    vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
    for r in tied.tolist():
        order = torch.sort(s[r], descending=True, stable=True).indices[:k]
        vals[r], idx[r] = s[r, order], order
    return vals, idx


class Database:
    """Database rows held in one or more parts, addressed as their row-wise concatenation (never built).

    Every exact search and streaming evaluation reads the database through this one class: contiguous
    row ranges (:meth:`rows`, :meth:`blocks`) for scans, scattered rows (:meth:`take`) for reranking.
    A part is a 2-D floating numpy array (``np.memmap`` welcome: only the rows asked for are read) or a
    torch tensor; float16 storage is read as float32.

    Example:
        >>> db = Database([np.zeros((2, 4), np.float32), np.ones((3, 4), np.float16)])
        >>> db.shape, db.take(np.array([4, 0]))[:, 0].tolist()
        ((5, 4), [1.0, 0.0])
    """

    def __init__(self, parts):
        parts = list(parts.parts if isinstance(parts, Database) else
                     parts if isinstance(parts, (list, tuple)) else [parts])
        if not parts:
            raise ValueError("database: no parts given")
        dim = None
        for i, p in enumerate(parts):
            _torch_dtype(p, f"database part {i}")
            if dim is not None and p.shape[1] != dim:
                raise ValueError(f"database part {i} has dimension {p.shape[1]}, the first part has {dim}")
            dim = p.shape[1]
        self.ndim = 2
        self.parts = [p for p in parts if p.shape[0]] or parts[:1]
        self.bounds = np.cumsum([0] + [p.shape[0] for p in self.parts])
        self.shape = (int(self.bounds[-1]), int(dim))
        self.dtype = functools.reduce(torch.promote_types, (_torch_dtype(p, "x") for p in self.parts))
        tensors = [p for p in self.parts if isinstance(p, torch.Tensor)]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self.is_torch = bool(tensors)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int, device=None, dtype=torch.float32, out=None) -> torch.Tensor:
        """Rows ``[start, stop)`` as one ``dtype`` tensor on ``device`` (default: the parts' device).

        ``out``: optional buffer of at least ``stop - start`` rows (``dtype``, on ``device``) that rows
        needing a conversion or spanning several parts are written into; the result may then be a view
        of it, valid until the buffer is reused.
        """
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"rows: expected 0 <= start < stop <= N={self.shape[0]}, got [{start}, {stop})")
        device = self.device if device is None else device
        if out is not None:
            out = out[:stop - start]
        pieces = []
        for p, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append((p, int(a - lo), int(b - lo), int(a - start)))
        if len(pieces) == 1:
            p, a, b, _ = pieces[0]
            return _block(p, a, b, device, dtype, out)
        if out is None:
            return torch.cat([_block(p, a, b, device, dtype) for p, a, b, _ in pieces])
        for p, a, b, at in pieces:
            dst = out[at:at + b - a]
            got = _block(p, a, b, device, dtype, dst)
            if got.data_ptr() != dst.data_ptr():
                dst.copy_(got)
        return out

    def is_view(self, device=None, dtype=torch.float32) -> bool:
        """True when every row range comes back as a view of the storage: one part, already ``dtype`` on
        ``device`` (and writable, if numpy), so a scan copies nothing whatever its block size."""
        device = torch.device(self.device if device is None else device)
        if len(self.parts) != 1:
            return False
        p = self.parts[0]
        if isinstance(p, torch.Tensor):
            return p.dtype == dtype and p.device == device
        return device.type == "cpu" and p.flags.writeable and p.flags.c_contiguous and _torch_dtype(p, "x") == dtype

    def blocks(self, block_size: int, device=None, dtype=torch.float32, reuse: bool = False):
        """``(start, rows)`` for consecutive blocks of ``block_size`` rows; the last one may be shorter.

        ``reuse=True``: rows that need a conversion (float16 storage, another device) or that span
        several parts are written into one buffer reused by every block (each block is valid only
        until the next one is asked for); no allocation per block.
        """
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        buf = None
        if reuse and not self.is_view(device, dtype):
            device = self.device if device is None else device
            buf = torch.empty((min(block_size, self.shape[0]), self.shape[1]), dtype=dtype, device=device)
        for start in range(0, self.shape[0], block_size):
            yield start, self.rows(start, min(start + block_size, self.shape[0]), device, dtype, buf)

    def take(self, ids) -> np.ndarray:
        """(len(ids), D) float32 rows at database indices ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"take: expected integer database indices, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise ValueError(f"database indices must lie in [0, {self.shape[0]}), got [{ids.min()}, {ids.max()}]")
        out = np.empty((ids.size, self.shape[1]), np.float32)
        part = np.searchsorted(self.bounds, ids, side="right") - 1
        for j in np.unique(part):
            at = np.flatnonzero(part == j)
            local = ids[at] - self.bounds[j]
            p = self.parts[j]
            rows = p[torch.from_numpy(local).to(p.device)] if isinstance(p, torch.Tensor) else p[local]
            out[at] = rows.detach().float().cpu().numpy() if isinstance(rows, torch.Tensor) else rows
        return out


_GROUP = 256  # columns per group whose maximum is compared with the running k-th score


class _RunningTopK:
    """Exact running top-k of score blocks that arrive in database order (see :func:`knn`).

    ``best_s``/``best_i`` (nq, k) hold each query's best merged so far (scores descending, equal
    scores by lower id; unfilled slots -inf / -1) and ``kth`` (nq,) its k-th score. Every earlier
    row has a lower id than a new block's, so a new score equal to the k-th loses the tie: only
    scores strictly above ``kth`` can enter. :meth:`add` reads a block once (the maximum of each group
    of ``_GROUP`` columns), reads again only the groups that beat ``kth`` (few once the first blocks
    are in) and keeps their entries above ``kth`` as pending; :meth:`flush` merges the pending
    entries (about ``flush_every`` per query at a time, so the merge cost is shared by many blocks;
    ``kth`` meanwhile stays a valid, lower bound) with one stable sort per row, which keeps the tie
    rule: running entries first, pending ones after them in id order. Where most groups pass (the
    first blocks) or a row has more than k entries above ``kth`` (e.g. a database sorted by score),
    each such row's top k of the block is merged instead (ties at the cut by lower column).
    """

    def __init__(self, nq: int, k: int, dtype, device, flush_every: int = 8):
        self.k = k
        self.best_s = torch.full((nq, k), float("-inf"), dtype=dtype, device=device)
        self.best_i = torch.full((nq, k), -1, dtype=torch.int64, device=device)
        self.kth = torch.full((nq,), float("-inf"), dtype=dtype, device=device)
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, scores, ids)
        self.n_pending = 0
        self.flush_at = flush_every * nq

    def add(self, s: torch.Tensor, x0: int, q0: int = 0) -> bool:
        """Scores for queries ``q0...``: a block ``s`` (nq, B) whose column j is database row ``x0 + j``, or a
        stack of them ``s`` (S, nq, B) whose slab t holds rows ``x0 + t * B...`` (one call for S blocks: the
        fixed cost of a call is paid once).

        Returns False when a score is NaN or infinite (read from the group maxima and minima; such scores never
        enter): with finite queries every score of a non-finite database row is."""
        slabs, nq, width = s.shape if s.ndim == 3 else (1, *s.shape)
        flat = s.reshape(slabs * nq, width)                  # row v: slab v // nq, query v % nq
        kth = self.kth[q0:q0 + nq].repeat(slabs)
        group = _GROUP if width % _GROUP == 0 else width
        groups = flat.view(slabs * nq, width // group, group)
        maxima = groups.amax(2)
        # -inf hides below a group's maximum: the minima too (torch.aminmax was 30x slower than both passes)
        finite = bool(torch.isfinite(maxima.sum() - groups.amin(2).sum()))
        if bool(torch.isneginf(kth).all()):                 # nothing merged yet: every entry would pass
            self._merge_rows_topk(s.view(slabs, nq, width), x0, q0)
            return finite
        r, g = (maxima > kth[:, None]).nonzero(as_tuple=True)
        if r.numel() == 0:
            return finite
        if 4 * r.numel() > maxima.numel():                   # most groups pass: one pass over the scores instead
            r, c = (flat > kth[:, None]).nonzero(as_tuple=True)
            v = flat[r, c]
        else:
            cand = groups[r, g]                              # (pairs, group), in row then column order
            p, j = (cand > kth[r, None]).nonzero(as_tuple=True)
            r, c, v = r[p], g[p] * group + j, cand[p, j]     # the entries above kth, row-major order
        query, slab = r % nq, r // nq                        # per query: slab by slab, so in id order
        if 2 * r.numel() > flat.numel():                     # e.g. a database sorted by score: a top-k is cheaper
            self._merge_rows_topk(s.view(slabs, nq, width), x0, q0, query)
            return finite
        self.pending.append((query + q0, v, slab * width + c + x0))
        self.n_pending += r.numel()
        if self.n_pending >= self.flush_at:
            self.flush()
        return finite

    def _merge_rows_topk(self, s, x0, q0, r=None):
        """Merge the pending entries, then the top k of the slabs ``s`` (S, nq, B) of each query in ``r`` (all if
        None): cheaper than all their entries."""
        self.flush()
        nq = s.shape[1]
        rows = (torch.arange(nq, device=s.device) if r is None else
                torch.bincount(r, minlength=nq).nonzero().flatten())
        sub = (s if r is None else s.index_select(1, rows)).transpose(0, 1).reshape(rows.numel(), -1)  # id order
        vals, cols = _block_topk(sub, self.k)
        cols = torch.sort(cols, dim=1).values
        self._merge(rows + q0, sub.gather(1, cols), cols + x0)

    def flush(self) -> None:
        """Merge the pending entries into ``best_s``/``best_i`` and update ``kth``."""
        if not self.pending:
            return
        r, v, i = (torch.cat(t) for t in zip(*self.pending))
        self.pending, self.n_pending = [], 0
        r, by_row = torch.sort(r, stable=True)               # per row, pending entries stay in id order
        v, i = v[by_row], i[by_row]
        rows, counts = torch.unique_consecutive(r, return_counts=True)
        local = torch.repeat_interleave(torch.arange(rows.numel(), device=r.device), counts)
        pos = torch.arange(r.numel(), device=r.device) - (torch.cumsum(counts, 0) - counts)[local]
        vals = torch.full((rows.numel(), int(counts.max())), float("-inf"), dtype=v.dtype, device=v.device)
        ids = torch.full(vals.shape, -1, dtype=torch.int64, device=v.device)
        vals[local, pos], ids[local, pos] = v, i
        self._merge(rows, vals, ids)

    def _merge(self, rows, vals, ids):
        """Merge (len(rows), w) new entries, in id order per row and after all running ids, into ``rows``."""
        cand_s = torch.cat([self.best_s.index_select(0, rows), vals], 1)
        cand_i = torch.cat([self.best_i.index_select(0, rows), ids], 1)
        order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :self.k]
        new_s = cand_s.gather(1, order)
        self.best_s.index_copy_(0, rows, new_s)
        self.best_i.index_copy_(0, rows, cand_i.gather(1, order))
        self.kth.index_copy_(0, rows, new_s[:, -1].contiguous())


def default_block_size(nq: int, query_block: int = 4096, d: int | None = None, resident: bool = False) -> int:
    """Database rows per block that :func:`knn` uses by default for ``nq`` queries of dimension ``d``.

    About 8 MiB of float32 scores per (query block x database block) product, so they are still in
    cache when scanned, at most 2048 rows (measured best on a 2-core AVX-512 CPU for 70 to 1000
    queries), at least 512 rows (the product stays efficient), a multiple of ``_GROUP``. Under 16 queries the
    products are matrix-vector ones, bound by reading the database, and the scores are few: a database
    already in memory as float32 (``resident``: its blocks are views) is read in blocks of up to 64 MiB of
    scores, as one product when it fits (the fixed cost per block then vanishes, as in ``(q @ x.T).topk``);
    others in blocks of up to 65536 rows (64 MiB of converted float32 rows at most, given ``d``).
    """
    qn = max(1, min(nq, query_block))
    if qn < 16:
        if resident:
            return max(_GROUP, (64 << 20) // (4 * qn) // _GROUP * _GROUP)
        rows = 65536 if d is None else min(65536, (64 << 20) // (4 * max(d, 1)))
        return max(_GROUP, rows // _GROUP * _GROUP)
    return max(512, min(2048, (8 << 20) // (4 * qn)) // _GROUP * _GROUP)


_STACK_BYTES = 8 << 20   # scores scanned per call of _RunningTopK.add when they are stacked (still in cache)
_STACK_ROWS = 1 << 16    # and at most this many database rows (one query: a stack of blocks, not 8 MiB of rows)


def _product(q: torch.Tensor, xb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = q @ xb.T`` (nq, B). One float32 query on CPU through faiss's SIMD inner products
    (:func:`_one_query_products`): torch's matrix-vector product ran on one thread and below the speed of a read
    of the rows (benchmarks/search.py --skinny). Otherwise ``torch.mm`` (numpy's BLAS was faster at two threads
    but changed the last bits of 70-query products between one and two threads, where torch's did not)."""
    if (out.device.type == "cpu" and q.shape[0] == 1 and q.dtype == xb.dtype == torch.float32
            and xb.is_contiguous() and out.is_contiguous()):
        _one_query_products(q.numpy()[0], xb.numpy(), out.numpy()[0])
        return out
    return torch.mm(q, xb.T, out=out)


def _one_query_products(q: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out[j] = q . x[j]`` by faiss's SIMD kernel (0.9 of the speed of one read of ``x`` here, against 0.7 for
    BLAS), rows split over torch's thread count: each product is computed alike whatever the split."""
    n, d = x.shape
    ptr_q = faiss.swig_ptr(np.ascontiguousarray(q))

    def part(bounds):
        a, b = bounds
        if b > a:
            faiss.fvec_inner_products_ny(faiss.swig_ptr(out[a:b]), ptr_q, faiss.swig_ptr(x[a:b]), d, b - a)
    threads = max(1, min(torch.get_num_threads(), n // 4096))
    cuts = [n * i // threads for i in range(threads + 1)]
    if threads == 1:
        part((0, n))
    else:
        list(_thread_pool(threads).map(part, zip(cuts[:-1], cuts[1:])))


@functools.lru_cache(maxsize=4)
def _thread_pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(threads, thread_name_prefix="sglib-knn")


def _scan(top: _RunningTopK, s: torch.Tensor, x0: int, q0: int, db: Database) -> None:
    """``top.add(s, x0, q0)``; where a score is not finite, the database rows behind ``s`` are searched for a NaN
    or infinite value (ValueError naming the row); finite rows whose products overflow go on."""
    if not top.add(s, x0, q0):
        rows = s.shape[-1] * (s.shape[0] if s.ndim == 3 else 1)
        _check_finite(db.rows(x0, x0 + rows), "x", x0)


def knn(q, x, k: int, block_size: int | None = None, query_block: int = 4096):
    """Exact inner-product k nearest neighbours, best first.

    Args:
        q: (nq, D) queries; numpy array or torch tensor (CPU or CUDA).
        x: (N, D) database: a numpy array (np.memmap welcome: read block by block), a torch tensor, a
            list of such parts (searched as their concatenation, never built) or a :class:`Database`.
            float16/bfloat16 storage is computed in float32 blocks; float64 stays float64.
        k: neighbours per query, 1 <= k <= N.
        block_size: database rows per block (default :func:`default_block_size`: the scores of a
            block are still in cache when they are scanned).
        query_block: queries per block (the database is read once; each block of it meets every
            query block).

    Returns:
        (scores, ids), each (nq, k): scores descending; equal scores ordered by lower database index.
        numpy in -> numpy out; if q or x is a tensor -> tensors on q's device (else x's).
        A CPU/numpy x with CUDA q is moved to the GPU block by block.

    Cost: one matrix product per block into a reused buffer, then one pass over its scores (each
    group's maximum against its query's running k-th score, see :class:`_RunningTopK`): the (nq, N) scores are
    never held, and top-k selection touches only the few scores that beat the running k-th.

    Example:
        >>> s, i = knn(np.eye(2, dtype=np.float32), np.array([[1, 0], [0, 2], [1, 0]], np.float32), 2)
        >>> i.tolist()
        [[0, 2], [1, 0]]
    """
    db = Database(x)
    dtype = torch.promote_types(_torch_dtype(q, "q"), db.dtype)
    if dtype != torch.float64:
        dtype = torch.float32  # half-precision storage is computed in float32
    nq, d = q.shape
    n, dx = db.shape
    if d != dx:
        raise ValueError(f"q has dimension {d} but x has dimension {dx}; expected q (nq, D) and x (N, D)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, N={n}], got {k!r}")
    k = int(k)
    if block_size is not None and block_size < 1 or query_block < 1:
        raise ValueError(f"block_size and query_block must be >= 1, got {block_size}, {query_block}")
    use_torch = isinstance(q, torch.Tensor) or db.is_torch
    device = q.device if isinstance(q, torch.Tensor) else db.device
    qn = min(nq, query_block)
    if block_size is None:
        block_size = default_block_size(nq, query_block, d, resident=db.is_view(device, dtype))
    block_size = min(block_size, n)

    qq = _block(q, 0, nq, device, dtype)
    _check_finite(qq, "q", 0)
    top = _RunningTopK(nq, k, dtype, device)
    # one query block: the products of several database blocks are stacked and scanned together (fewer calls)
    slabs = max(1, min(_STACK_BYTES // (4 * max(qn, 1) * block_size), _STACK_ROWS // block_size)) if nq <= query_block else 1
    scores = torch.empty((slabs, qn, block_size), dtype=dtype, device=device)  # reused by every product
    stacked, stack_x0, limit = 0, 0, 1   # stacks grow 2, 4, 8...: the k-th scores are still weak early on
    for x0, xb in db.blocks(block_size, device, dtype, reuse=True):
        if slabs > 1 and xb.shape[0] == block_size and x0:   # the first block alone sets every k-th score
            _product(qq, xb, scores[stacked])
            stacked += 1
            if stacked == limit or x0 + block_size == n:
                _scan(top, scores[:stacked], stack_x0, 0, db)
                stacked, stack_x0, limit = 0, x0 + block_size, min(2 * limit, slabs)
            continue
        if stacked:
            _scan(top, scores[:stacked], stack_x0, 0, db)
            stacked = 0
        for q0 in range(0, nq, query_block):
            qb = qq[q0:q0 + query_block]
            out = scores.view(-1)[:qb.shape[0] * xb.shape[0]].view(qb.shape[0], xb.shape[0])
            _scan(top, _product(qb, xb, out), x0, q0, db)
        stack_x0 = x0 + xb.shape[0]
    top.flush()
    best_s, best_i = top.best_s, top.best_i
    if bool((best_i[:, -1] < 0).any()):  # finite inputs whose products overflow to -inf
        raise ValueError("knn: inner products overflow the float range (-inf); rescale q or x")
    if use_torch:
        return best_s, best_i
    return best_s.numpy(), best_i.numpy()


# ------------------------------------------------------------------------------------ faiss indexes


def _as_float32(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected 2 dimensions, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating dtype, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def build_index(x, kind: str = "ivfpq", *, nlist: int = 1024, m: int | None = None, nbits: int = 8,
                refine: str | None = "flat", hnsw_m: int = 32, ef_construction: int = 80,
                max_train: int | None = None, seed: int = 0, add_block: int = 65536,
                fast_scan: bool = False):
    """Build a faiss inner-product index over the rows of x.

    Args:
        x: (N, D) database (numpy, memmap or CPU tensor; float16 is read in float32 chunks).
        kind: "flat" (exact, float32, D*4 bytes per vector), "flat_fp16" (exact up to float16 rounding,
            IndexScalarQuantizer fp16: D*2 bytes per vector), "ivfpq" (IVF with ``nlist`` lists and a
            product quantiser of ``m`` sub-vectors x ``nbits``; ``refine`` "flat" | "fp16" | None
            re-scores the ``k_factor * k`` best PQ candidates exactly, at D*4 / D*2 extra bytes per
            vector), "hnsw" (HNSW graph, ``hnsw_m`` links, float32 vectors).
        m: PQ sub-vectors (default D // 8, must divide D).
        fast_scan: ivfpq with ``nbits=4`` only: faiss ``IndexIVFPQFastScan``, whose 4-bit codes are
            scanned with SIMD look-ups held in registers, many times faster per code than 8-bit PQ
            (coarser codes: pair it with a refine stage and a larger ``k_factor``).
        max_train: training sample size for IVF-PQ (default 64 * nlist, drawn with ``seed``).
        seed: seeds the training sample and faiss k-means (coarse quantiser and PQ).

    Returns:
        a trained faiss index holding all N vectors.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
        >>> build_index(x, "hnsw").ntotal
        500
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"x: expected a (N, D) numpy array or tensor, got {getattr(x, 'shape', type(x))}")
    n, d = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "flat_fp16":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
        index.hnsw.efConstruction = ef_construction
    else:
        m = d // 8 if m is None else m
        if m < 1 or d % m:
            raise ValueError(f"m (PQ sub-vectors) must divide D={d}, got {m}")
        if n < nlist:
            raise ValueError(f"ivfpq needs at least nlist={nlist} vectors to train, got N={n}")
        if refine not in (None, "flat", "fp16"):
            raise ValueError(f"refine must be None, 'flat' or 'fp16', got {refine!r}")
        if fast_scan and nbits != 4:
            raise ValueError(f"fast_scan needs nbits=4 (faiss IndexIVFPQFastScan), got nbits={nbits}")
        if fast_scan:  # the index keeps the quantiser alive
            ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(d), d, nlist, m, nbits, ip)
        else:
            ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, ip)
        ivf.cp.seed = seed
        ivf.pq.cp.seed = seed + 1
        ntrain = min(n, max_train or 64 * nlist)
        rows = np.sort(np.random.default_rng(seed).choice(n, ntrain, replace=False))
        ivf.train(_as_float32(x[rows], "x"))
        index = ivf
        if refine is not None:
            fine = (faiss.IndexFlatIP(d) if refine == "flat"
                    else faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip))
            index = faiss.IndexRefine(ivf, fine)
            index.k_factor = 4
    if not index.is_trained:
        index.train(_as_float32(x[:min(n, 65536)], "x"))
    for start in range(0, n, add_block):
        index.add(_as_float32(x[start:start + add_block], "x"))
    return index


def search_index(index, q, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
                 k_factor: int | None = None):
    """Search a faiss index built by :func:`build_index`.

    Args:
        q: (nq, D) queries (numpy or torch; torch in -> torch out on q's device).
        k: neighbours per query.
        nprobe: IVF lists visited (ivfpq); ef_search: HNSW beam width; k_factor: candidates re-scored
            per neighbour by a refine stage. Settings persist on the index.

    Returns:
        (scores (nq, k) float32, ids (nq, k) int64), best first; id -1 where fewer than k were found.
    """
    qn = _as_float32(q, "q")
    if qn.shape[1] != index.d:
        raise ValueError(f"q has dimension {qn.shape[1]} but the index has dimension {index.d}")
    if not 1 <= int(k) <= index.ntotal:
        raise ValueError(f"k must be in [1, ntotal={index.ntotal}], got {k}")
    if nprobe is not None:
        _index_part(index, "nprobe", lambda: faiss.extract_index_ivf(index)).nprobe = check_int(
            nprobe, "nprobe", 1, what="(IVF lists visited)")
    if ef_search is not None:
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        if hnsw is None:
            raise ValueError(f"ef_search is a setting of HNSW indexes; this index is {type(index).__name__}")
        hnsw.efSearch = check_int(ef_search, "ef_search", 1, what="(HNSW beam width)")
    if k_factor is not None:
        refine = faiss.downcast_index(index)
        if not hasattr(refine, "k_factor"):
            raise ValueError(f"k_factor is a setting of refined indexes; this index is {type(refine).__name__}")
        refine.k_factor = check_real(k_factor, "k_factor", lo=1)
    scores, ids = index.search(qn, int(k))
    if isinstance(q, torch.Tensor):
        return torch.from_numpy(scores).to(q.device), torch.from_numpy(ids).to(q.device)
    return scores, ids


def _index_part(index, setting: str, find):
    """The part of ``index`` that holds ``setting``, or a ValueError naming the setting and the index type."""
    try:
        return find()
    except RuntimeError:   # faiss: "not an IVF index"
        raise ValueError(f"{setting} is a setting of IVF indexes; this index is "
                         f"{type(faiss.downcast_index(index)).__name__}") from None


def _checksum_path(path: str) -> str:
    """The checksum record written next to an index file: ``PATH.sha256``."""
    return path + ".sha256"


def save_index(index, path) -> None:
    """Write a faiss index to ``path`` and its sha256 to ``path + ".sha256"`` (parent folders are created).

    The index is serialised in memory (one extra copy of its size), hashed, and written through a
    temporary file renamed into place; the record holds ``HEX  FILENAME`` (``sha256sum`` format),
    so ``sha256sum -c PATH.sha256`` run in the file's folder also checks it.
    """
    import hashlib

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = faiss.serialize_index(index)  # 1-D uint8 array: exactly the bytes load_index will read
    record = f"{hashlib.sha256(data).hexdigest()}  {os.path.basename(path)}\n".encode()
    for target, payload in ((path, data), (_checksum_path(path), record)):
        tmp = f"{target}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)


def _recorded_digest(path: str) -> str:
    """The sha256 hex digest recorded by :func:`save_index` for ``path``; IndexFileError if absent or malformed."""
    record = _checksum_path(path)
    resave = (f"if you trust the file, re-save it: save_index(faiss.read_index({path!r}), {path!r}); "
              f"otherwise rebuild it with build_index")
    if not os.path.isfile(record):
        raise IndexFileError(f"faiss index {path} has no checksum record {record} (written by save_index), so it "
                             f"cannot be checked for corruption or changes; {resave}")
    try:
        with open(record) as f:
            digest = f.read(200).split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        digest = ""
    if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise IndexFileError(f"checksum record {record} is unreadable (expected a 64-character sha256 hex digest "
                             f"first); {resave}")
    return digest


def load_index(path):
    """Read a faiss index written by :func:`save_index`, after checking its sha256 record.

    Raises:
        IndexFileError: the file is missing, its ``.sha256`` record is missing or malformed, the bytes
            changed after saving (checksum mismatch), or faiss cannot parse them.
    """
    import hashlib

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IndexFileError(f"faiss index file not found: {path}")
    expected = _recorded_digest(path)
    data = np.fromfile(path, dtype=np.uint8)
    if hashlib.sha256(data).hexdigest() != expected:
        raise IndexFileError(f"faiss index {path}: checksum mismatch: the file changed after it was saved "
                             f"(sha256 differs from {_checksum_path(path)}); rebuild it or restore the saved copy")
    try:
        return faiss.deserialize_index(data)
    except RuntimeError as e:
        raise IndexFileError(f"could not read faiss index {path} (corrupt or not a faiss index): "
                             f"{str(e).strip().splitlines()[-1]}") from None


def index_bytes(index) -> int:
    """Size of the index's serialised form, a close proxy for its memory footprint."""
    return int(faiss.serialize_index(index).nbytes)


def recall_at_k(approx_ids, exact_ids, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (ids -1 never match).

    Example:
        >>> recall_at_k(np.array([[1, 2]]), np.array([[2, 3]]), 2)
        0.5
    """
    a = np.asarray(approx_ids.cpu() if isinstance(approx_ids, torch.Tensor) else approx_ids)
    e = np.asarray(exact_ids.cpu() if isinstance(exact_ids, torch.Tensor) else exact_ids)
    if a.ndim != 2 or e.ndim != 2 or a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids and exact_ids must be (nq, >=k) with the same nq, got {a.shape}, {e.shape}")
    if not 1 <= k <= min(a.shape[1], e.shape[1]):
        raise ValueError(f"k must be in [1, {min(a.shape[1], e.shape[1])}], got {k}")
    a, e = a[:, :k].astype(np.int64), e[:, :k].astype(np.int64)
    stride = int(max(a.max(), e.max())) + 2
    rows = np.arange(a.shape[0])[:, None] * stride
    e_keys = np.sort((e + 1 + rows).ravel())
    a_keys = np.where(a >= 0, a + 1 + rows, -1).ravel()
    at = np.clip(np.searchsorted(e_keys, a_keys), 0, e_keys.size - 1)
    hits = (e_keys[at] == a_keys).sum()
    return float(hits / (a.shape[0] * k))
