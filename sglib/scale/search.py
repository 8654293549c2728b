"""Nearest-neighbour search by inner product: exact blocked top-k and faiss approximate indexes.

``knn`` is exact and never holds the full (nq, N) score matrix: it walks over the blocks of a
:class:`Database` (one array, or several parts never concatenated) with a running top-k
(torch.mm + topk per block, merged). ``benchmarks/search.py`` times it against faiss.

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


def _block(a, start: int, stop: int, device, dtype) -> torch.Tensor:
    """Rows start..stop-1 of a numpy array/memmap or tensor as a ``dtype`` tensor on ``device``."""
    if isinstance(a, torch.Tensor):
        b = a[start:stop]
    else:
        b = a[start:stop]
        # a read-only memmap is read into memory here anyway; torch wants a writable buffer
        b = torch.from_numpy(np.ascontiguousarray(b) if b.flags.writeable else np.array(b))
    return b.to(device=device, dtype=dtype, non_blocking=True)


def _check_finite(b: torch.Tensor, name: str, offset: int) -> None:
    if bool(torch.isfinite(b.sum())):  # a sum is ~5x cheaper than isfinite; NaN/inf always spoil it
        return
    bad = ~torch.isfinite(b)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0]) + offset
        raise ValueError(f"{name}: row {row} contains NaN or infinite values")


def _merge_topk(vals: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k best (value, id) pairs ordered by value descending, then id ascending."""
    by_id = torch.sort(ids, dim=1, stable=True).indices
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    by_val = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, by_val), ids.gather(1, by_val)


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

    def rows(self, start: int, stop: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """Rows ``[start, stop)`` as one ``dtype`` tensor on ``device`` (default: the parts' device)."""
        if not 0 <= start < stop <= self.shape[0]:
            raise ValueError(f"rows: expected 0 <= start < stop <= N={self.shape[0]}, got [{start}, {stop})")
        device = self.device if device is None else device
        pieces = []
        for p, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append(_block(p, int(a - lo), int(b - lo), device, dtype))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def blocks(self, block_size: int, device=None, dtype=torch.float32):
        """``(start, rows)`` for consecutive blocks of ``block_size`` rows; the last one may be shorter."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        for start in range(0, self.shape[0], block_size):
            yield start, self.rows(start, min(start + block_size, self.shape[0]), device, dtype)

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


def knn(q, x, k: int, block_size: int | None = None, query_block: int = 4096):
    """Exact inner-product k nearest neighbours, best first.

    Args:
        q: (nq, D) queries; numpy array or torch tensor (CPU or CUDA).
        x: (N, D) database: a numpy array (np.memmap welcome: read block by block), a torch tensor, a
            list of such parts (searched as their concatenation, never built) or a :class:`Database`.
            float16/bfloat16 storage is computed in float32 blocks; float64 stays float64.
        k: neighbours per query, 1 <= k <= N.
        block_size: database rows per block (default: about 64 MiB of scores per block).
        query_block: queries per block.

    Returns:
        (scores, ids), each (nq, k): scores descending; equal scores ordered by lower database index.
        numpy in -> numpy out; if q or x is a tensor -> tensors on q's device (else x's).
        A CPU/numpy x with CUDA q is moved to the GPU block by block.

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
    use_torch = isinstance(q, torch.Tensor) or db.is_torch
    device = q.device if isinstance(q, torch.Tensor) else db.device
    if block_size is None:
        block_size = max(k + 1, min(n, (64 << 20) // (4 * max(1, min(nq, query_block)))))  # ~64 MiB of scores
    if block_size < 1 or query_block < 1:
        raise ValueError(f"block_size and query_block must be >= 1, got {block_size}, {query_block}")

    out_s = torch.empty((nq, k), dtype=dtype, device=device)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=device)
    qq = _block(q, 0, nq, device, dtype)
    _check_finite(qq, "q", 0)
    x_checked = False
    for q0 in range(0, nq, query_block):
        qb = qq[q0:q0 + query_block]
        best_s = best_i = None
        for x0, xb in db.blocks(block_size, device, dtype):
            if not x_checked:
                _check_finite(xb, "x", x0)
            s = torch.mm(qb, xb.T)
            vals, idx = _block_topk(s, min(k, s.shape[1]))
            idx += x0
            if best_s is not None:
                vals, idx = torch.cat([best_s, vals], 1), torch.cat([best_i, idx], 1)
            best_s, best_i = _merge_topk(vals, idx, k)  # topk leaves equal values in any order
        x_checked = True
        out_s[q0:q0 + query_block], out_i[q0:q0 + query_block] = best_s, best_i
    if use_torch:
        return out_s, out_i
    return out_s.numpy(), out_i.numpy()


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
                max_train: int | None = None, seed: int = 0, add_block: int = 65536):
    """Build a faiss inner-product index over the rows of x.

    Args:
        x: (N, D) database (numpy, memmap or CPU tensor; float16 is read in float32 chunks).
        kind: "flat" (exact, float32, D*4 bytes per vector), "flat_fp16" (exact up to float16 rounding,
            IndexScalarQuantizer fp16: D*2 bytes per vector), "ivfpq" (IVF with ``nlist`` lists and a
            product quantiser of ``m`` sub-vectors x ``nbits``; ``refine`` "flat" | "fp16" | None
            re-scores the ``k_factor * k`` best PQ candidates exactly, at D*4 / D*2 extra bytes per
            vector), "hnsw" (HNSW graph, ``hnsw_m`` links, float32 vectors).
        m: PQ sub-vectors (default D // 8, must divide D).
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
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, ip)  # keeps the quantiser alive
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
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    if ef_search is not None:
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)
    if k_factor is not None:
        faiss.downcast_index(index).k_factor = float(k_factor)
    scores, ids = index.search(qn, int(k))
    if isinstance(q, torch.Tensor):
        return torch.from_numpy(scores).to(q.device), torch.from_numpy(ids).to(q.device)
    return scores, ids


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
