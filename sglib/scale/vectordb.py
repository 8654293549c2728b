"""A vector database as the first stage, SuperGlobal as the second: rerank only what the database returns.

The database holds the collection and answers each query with its top-M: ids and stored vectors. Every
shortlist reranker of :data:`sglib.rerankers.RERANKERS` (SuperGlobal included) needs nothing more: the
candidates' neighbours are taken within the top-M (spec section 5), so the result equals the in-memory
path at the same M (tested), and the rest of the collection is never read. The methods that read the
offline database graph (DBA, diffusion) cannot run on a top-M alone and are refused.

Why Qdrant: its Python client runs one API both in-process (local mode: a folder, or ``":memory:"``,
nothing to install or start) and against a Qdrant server (``url=``), so the code tried here is the code
deployed; it returns each hit's vector (``with_vectors=True``) and its score. Vectors are stored with the
dot-product distance, unchanged (Qdrant's cosine distance would re-normalise them and change their last
bits): the rows given must be unit rows, which is checked. The embedded on-disk mode commits point by point and
is slow to fill beyond a few thousand vectors: use ``":memory:"`` (filled again each run) or a server for more.

Example:
    >>> import numpy as np
    >>> x = np.eye(40, 8, dtype=np.float32) + 0.05; x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> db = QdrantStage(":memory:")
    >>> db.add(x)
    >>> ids, vectors = db.search(x[:2], M=20)
    >>> rerank_returned(x[:2], ids, vectors, "superglobal", K=3).shape
    (2, 20)
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .._checks import check_int, check_tensor
from ..method.rerank import check_unit_rows
from ..rerankers import RERANKERS

DEFAULT_COLLECTION = "sglib"
_UPLOAD_BATCH = 1024


def _unit_rows(v, name: str, ndim: int = 2) -> np.ndarray:
    """``v`` as C-contiguous float32 after the library's checks (floating, ``ndim``, finite, unit rows)."""
    if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating numpy array, got "
                         f"{v.dtype if isinstance(v, np.ndarray) else type(v).__name__}")
    t = torch.from_numpy(np.ascontiguousarray(v, np.float32))
    check_tensor(t, name, ndim=ndim, finite=True)
    check_unit_rows(t.reshape(-1, t.shape[-1]), name)
    return t.numpy()


class QdrantStage:
    """A Qdrant collection of unit vectors answering top-M queries (ids and vectors).

    Args:
        location: ``":memory:"`` (default) or a folder: Qdrant's embedded local mode, no server;
            ignored when ``url`` is given.
        url: a Qdrant server (``http://host:6333``); the same calls then run there.
        collection: the collection's name.
        api_key: for a server that asks for one.
    """

    def __init__(self, location: str = ":memory:", url: str | None = None, collection: str = DEFAULT_COLLECTION,
                 api_key: str | None = None):
        from qdrant_client import QdrantClient
        if not isinstance(collection, str) or not collection:
            raise ValueError(f"collection: expected a non-empty name, got {collection!r}")
        self.collection = collection
        try:
            self.client = (QdrantClient(url=url, api_key=api_key) if url else QdrantClient(location=":memory:")
                           if location == ":memory:" else QdrantClient(path=os.fspath(location)))
        except RuntimeError as exc:   # the embedded mode's folder lock: one client per folder
            raise RuntimeError(f"{location}: {exc}; close() the other QdrantStage first") from None
        self.dim = None
        if self.client.collection_exists(collection):
            self.dim = self.client.get_collection(collection).config.params.vectors.size

    def close(self) -> None:
        """Release the collection (the embedded mode's folder lock, a server connection)."""
        self.client.close()

    def __len__(self) -> int:
        if self.dim is None:
            return 0
        return self.client.count(self.collection, exact=True).count

    def add(self, x: np.ndarray, ids=None, progress: bool = False) -> None:
        """Store unit rows ``x`` (N, D) under ``ids`` (N distinct integers >= 0; default the row numbers
        after those already stored). Creates the collection (dot-product distance) on first use."""
        from qdrant_client import models
        from tqdm.auto import tqdm
        x = _unit_rows(x, "x")
        if ids is None:   # after the largest id stored, so that no stored point is replaced
            start = 0 if len(self) == 0 else 1 + max(int(p.id) for p in self._all_points())
            ids = np.arange(start, start + len(x))
        ids = np.asarray(ids)
        if ids.shape != (len(x),) or ids.dtype.kind not in "iu" or (ids < 0).any() or len(np.unique(ids)) != len(ids):
            raise ValueError(f"ids: expected {len(x)} distinct integers >= 0, one per row of x")
        if len(self):
            taken = self.client.retrieve(self.collection, [int(i) for i in ids], with_vectors=False)
            if taken:
                raise ValueError(f"ids: {len(taken)} already stored (e.g. {taken[0].id}); adding would replace them: "
                                 "give new ids, or leave ids out")
        if self.dim is None:
            self.client.create_collection(self.collection, vectors_config=models.VectorParams(
                size=x.shape[1], distance=models.Distance.DOT))
            self.dim = x.shape[1]
        elif x.shape[1] != self.dim:
            raise ValueError(f"x: {x.shape[1]}-dimensional rows for a collection of {self.dim}-dimensional vectors")
        for lo in tqdm(range(0, len(x), _UPLOAD_BATCH), desc="upload", disable=not progress):
            hi = lo + _UPLOAD_BATCH
            self.client.upload_collection(self.collection, vectors=x[lo:hi], ids=[int(i) for i in ids[lo:hi]],
                                          wait=True)

    def _all_points(self):
        """Every stored point's record (ids only), page by page."""
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=10_000, offset=offset, with_vectors=False,
                                                with_payload=False)
            yield from points
            if offset is None:
                return

    def search(self, q: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-``M`` of each query by inner product: ``(ids (nq, M) int64, vectors (nq, M, D) float32)``,
        best first, equal scores in increasing id order (as :func:`sglib.search.knn` orders them)."""
        q = _unit_rows(q, "q")
        n = len(self)
        if not n:
            raise ValueError("the collection is empty: add() the database vectors first")
        M = check_int(M, "M", 1, n, f"(the shortlist size; the collection holds {n} vectors)")
        if q.shape[1] != self.dim:
            raise ValueError(f"q: {q.shape[1]}-dimensional queries for a collection of {self.dim}-dimensional vectors")
        ids = np.empty((len(q), M), np.int64)
        vectors = np.empty((len(q), M, self.dim), np.float32)
        for i, row in enumerate(q):
            hits = self.client.query_points(self.collection, query=row, limit=M, with_vectors=True).points
            if len(hits) != M:
                raise RuntimeError(f"query {i}: the database returned {len(hits)} of the {M} hits asked for")
            hits = sorted(hits, key=lambda h: (-h.score, h.id))
            ids[i] = [h.id for h in hits]
            vectors[i] = [h.vector for h in hits]
        return ids, vectors


def rerank_returned(q: np.ndarray, ids: np.ndarray, vectors: np.ndarray, method: str = "superglobal",
                    **params) -> np.ndarray:
    """Rerank each query's returned top-M with a shortlist method of :data:`sglib.rerankers.RERANKERS`.

    Args:
        q: (nq, D) unit query rows.
        ids: (nq, M) database ids as returned, best first.
        vectors: (nq, M, D) their unit vectors.
        params: the method's parameters (e.g. ``K``, ``beta``); its defaults otherwise.

    Returns:
        (nq, M) the same ids, reordered.
    """
    if method not in RERANKERS:
        raise ValueError(f"method: unknown reranker {method!r}; known: {', '.join(RERANKERS)}")
    if RERANKERS[method].uses_graph:
        raise ValueError(f"{method} reads the offline kNN graph of the whole database, which a top-M from a vector "
                         f"database does not give: use a shortlist method ("
                         f"{', '.join(k for k, r in RERANKERS.items() if not r.uses_graph)})")
    q = _unit_rows(q, "q")
    vectors = _unit_rows(vectors, "vectors", ndim=3)
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected integer database ids, got {ids.dtype}")
    nq, M, D = vectors.shape
    if ids.shape != (nq, M) or q.shape != (nq, D):
        raise ValueError(f"q {q.shape}, ids {ids.shape}, vectors {vectors.shape}: expected (nq, D), (nq, M), "
                         "(nq, M, D) for one and the same nq, M and D")
    # the returned vectors as one small database, query i's candidates at rows i*M .. i*M+M-1
    local = np.arange(nq * M).reshape(nq, M)
    order = RERANKERS[method](q, vectors.reshape(nq * M, D), local, M, **params)
    return np.take_along_axis(ids, np.asarray(order) - local[:, :1], axis=1)
