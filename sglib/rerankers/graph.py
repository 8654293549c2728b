"""The offline database k-nearest-neighbour graph that DBA and diffusion read.

Built once per database by exact search (:func:`sglib.search.knn`), each node's own entry removed, and
optionally cached on disk under a key of the database's bytes and ``k``: a changed database or ``k`` is a
different file, so a cached graph is never served for other vectors, and a cached file that does not hold a
valid graph is computed again. A graph passed to a reranker is checked against the database it is used with
(:func:`graph_for`): its similarities must be those of the database's rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int
from ..search import knn

SPOT_CHECK_NODES = 64          # rows whose stored similarities are recomputed when a graph meets a database


@dataclasses.dataclass(frozen=True)
class DatabaseGraph:
    """Each database item's k nearest other items, best first.

    Attributes:
        ids: (N, k) int64 neighbour indices in [0, N) (never the item itself).
        sims: (N, k) float32 (or float64) inner products with them, finite.
    """

    ids: torch.Tensor
    sims: torch.Tensor

    def __post_init__(self):
        ids, sims = self.ids, self.sims
        if not isinstance(ids, torch.Tensor) or not isinstance(sims, torch.Tensor):
            raise ValueError("DatabaseGraph: ids and sims must be torch tensors (use database_graph(x, k))")
        if ids.dtype != torch.int64 or sims.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"DatabaseGraph: expected int64 ids and float32 (or float64) sims, got {ids.dtype} and "
                             f"{sims.dtype}")
        if ids.ndim != 2 or sims.shape != ids.shape or ids.shape[1] < 1:
            raise ValueError(f"DatabaseGraph: ids and sims must both be (N, k), k >= 1; got {tuple(ids.shape)} and "
                             f"{tuple(sims.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= ids.shape[0]):
            raise ValueError(f"DatabaseGraph: neighbour ids must lie in [0, N={ids.shape[0]}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        if not bool(torch.isfinite(sims).all()):
            raise ValueError("DatabaseGraph: similarities contain NaN or inf")

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def truncated(self, k: int) -> "DatabaseGraph":
        """The same graph with each node's first ``k`` neighbours (``k <= self.k``)."""
        k = check_int(k, "k", 1, self.k, what=f"(the graph holds {self.k} neighbours per node; build it with a "
                                              "larger k)")
        return self._derived(self.ids[:, :k], self.sims[:, :k])

    def to(self, device) -> "DatabaseGraph":
        return self._derived(self.ids.to(device), self.sims.to(device))

    @classmethod
    def _derived(cls, ids: torch.Tensor, sims: torch.Tensor) -> "DatabaseGraph":
        # a slice or copy of a checked graph: not checked again (a pass over N x k per rerank call)
        graph = object.__new__(cls)
        object.__setattr__(graph, "ids", ids)
        object.__setattr__(graph, "sims", sims)
        return graph

    def nbytes(self) -> int:
        return self.ids.numel() * 8 + self.sims.numel() * 4


def _graph_key(x: np.ndarray, k: int) -> str:
    h = hashlib.sha256(f"knn-graph/1 {x.shape} {x.dtype} k={k}".encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()[:24]


def _read_cached(path: Path, n: int, k: int) -> DatabaseGraph | None:
    """The graph in ``path`` when it holds a valid (n, k) graph, else None (missing, truncated, foreign)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            ids, sims = f["ids"], f["sims"]
        if ids.shape != (n, k) or ids.dtype != np.int64 or sims.dtype != np.float32:
            return None
        return DatabaseGraph(torch.from_numpy(ids), torch.from_numpy(sims))
    except Exception:   # noqa: BLE001  any unreadable copy (BadZipFile, EOFError, ValueError ...) is recomputed
        return None


def _write_cached(path: Path, ids: np.ndarray, sims: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, ids=ids, sims=sims)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # a shared cache stays readable (mkstemp creates 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def database_graph(x, k: int, cache_dir=None) -> DatabaseGraph:
    """The k-nearest-neighbour graph of the database ``x`` (inner product), itself excluded.

    Args:
        x: (N, D) database descriptors (numpy or torch, floating, finite), N > k.
        k: neighbours per node.
        cache_dir: folder for a cached copy (``graph-<key>.npz``); None computes it every time.

    Returns:
        :class:`DatabaseGraph` on x's device (CPU for numpy).

    Example:
        >>> g = database_graph(np.eye(4, dtype=np.float32) + 0.1, k=2)
        >>> g.ids.shape, bool((g.ids != torch.arange(4)[:, None]).all())
        (torch.Size([4, 2]), True)
    """
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise ValueError(f"x: expected an (N, D) numpy array or torch tensor, got {type(x).__name__} (a database kept "
                         "in parts: build the graph once from its rows, e.g. database_graph(db.take(np.arange(N)), k))")
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    if xa.ndim != 2 or xa.dtype.kind != "f":
        raise ValueError(f"x: expected a 2-D floating (N, D) array, got {xa.dtype} of shape {xa.shape}")
    k = check_int(k, "k", 1, xa.shape[0] - 1, what="(the graph leaves each item out of its own neighbours)")
    xa = np.ascontiguousarray(xa, np.float32)
    bad = np.flatnonzero(~np.isfinite(xa).all(1))
    if bad.size:
        raise ValueError(f"x: database row(s) {bad[:10].tolist()} contain NaN or inf; the graph cannot be built")
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    path = None
    if cache_dir is not None:
        if Path(cache_dir).exists() and not Path(cache_dir).is_dir():
            raise ValueError(f"cache_dir: {cache_dir} exists and is not a folder")
        path = Path(cache_dir) / f"graph-{_graph_key(xa, k)}.npz"
        cached = _read_cached(path, xa.shape[0], k) if path.is_file() else None
        if cached is not None:
            return cached.to(device)
    sims, ids = knn(xa, xa, k + 1)
    # drop each row's own entry; a row whose item is not among its k+1 (duplicates) drops its last one
    own = ids == np.arange(len(ids))[:, None]
    own[~own.any(1), -1] = True
    keep = ~own                          # knn's ids are distinct per row: exactly one entry dropped per row
    ids = np.ascontiguousarray(ids[keep].reshape(len(ids), k), np.int64)
    sims = np.ascontiguousarray(sims[keep].reshape(len(ids), k), np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_cached(path, ids, sims)
    return DatabaseGraph(torch.from_numpy(ids), torch.from_numpy(sims)).to(device)


def graph_for(x, k, graph: DatabaseGraph | None, device=None) -> DatabaseGraph:
    """``graph`` cut to ``k`` neighbours and checked against the database ``x``, or a new graph of x; on ``device``.

    The check recomputes the stored similarities of :data:`SPOT_CHECK_NODES` evenly spread nodes from x's rows:
    a graph built for another database (even of the same size) fails it.
    """
    k = check_int(k, "k", 1, what="(database neighbours per item)")
    if graph is None:
        graph = database_graph(x, k)
        return graph.to(device) if device is not None else graph
    if not isinstance(graph, DatabaseGraph):
        raise ValueError(f"graph: expected a DatabaseGraph (sglib.rerankers.graph.database_graph), got "
                         f"{type(graph).__name__}")
    if graph.n != x.shape[0]:
        raise ValueError(f"graph: built for {graph.n} database items but x has {x.shape[0]}: rebuild it for this "
                         "database")
    graph = graph.truncated(k)
    nodes = np.unique(np.linspace(0, graph.n - 1, min(SPOT_CHECK_NODES, graph.n)).astype(np.int64))
    ids = graph.ids[nodes].cpu().numpy()
    take = (x.take if hasattr(x, "take") and not isinstance(x, (np.ndarray, torch.Tensor)) else
        (lambda i: (x[torch.from_numpy(i).to(x.device)] if isinstance(x, torch.Tensor) else x[i])))
    rows = np.asarray(_as_numpy(take(nodes)), np.float64)
    nbrs = np.asarray(_as_numpy(take(ids.reshape(-1))), np.float64).reshape(len(nodes), graph.k, -1)
    expect = np.einsum("nd,nkd->nk", rows, nbrs)
    if not np.allclose(expect, graph.sims[nodes].cpu().numpy(), atol=1e-3):
        raise ValueError("graph: its similarities are not those of this database's rows: it was built for other "
                         "descriptors; rebuild it with database_graph(x, k)")
    return graph.to(device) if device is not None else graph


def _as_numpy(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
