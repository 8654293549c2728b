"""Revisited E/M/H evaluation straight from scores, for databases of a million images or more.

:func:`sglib.evaluate.protocol.revisited` needs the full ranking: an (nq, N) arg-sort plus (nq * N) sort keys.
Only the rank positions of each query's positives and junk enter the metrics, and each one is a count:

    position(t) = #{l : s_l > s_t} + #{l < t : s_l == s_t}

which is its place in ``np.argsort(-scores, kind="stable")`` (the tie rule: equal scores keep the
lower database index first). These counts are accumulated in one pass over database blocks: per
query, the scores of its targets (positives + junk) are sorted once, and every database score at or
above the lowest target score is located among them by ``np.searchsorted``; a histogram of those
locations, cumulated, gives all positions. Memory: O(nq * block + total targets); no (nq, N) array
beyond the scores themselves, which may be a memmap or be produced block by block by a callable.

:func:`evaluate_with_distractors` evaluates a benchmark whose database is extended by distractors
(any number of parts, never concatenated): exact top-M by :func:`sglib.search.knn`, SuperGlobal
reranking of it, then the streaming count over the whole database.

With ``head_ranks`` (nq, L) the evaluated ranking is the given head (e.g. a reranked shortlist)
followed by the other database items in the order above, exactly ``np.concatenate([head, rest])``.

The numbers equal ``sglib.evaluate.protocol.revisited`` on that full ranking (tested to 1e-12; in practice
bit for bit, as the metric arithmetic below is the same sequence of numpy operations).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..method.rerank import superglobal
from ..search import Database, knn
from .retrieval import RetrievalResult, check_retrieval_inputs
from .protocol import PROTOCOLS, check_ks, protocol_sets, protocol_summary, scores_from_positions

ScoreBlocks = Callable[[int, int], "np.ndarray | torch.Tensor"]


# ------------------------------------------------------------------------------------ score access


def _to_numpy(block, start: int, stop: int, nq: int) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()  # exact and order-preserving
        block = block.cpu().numpy()
    block = np.asarray(block)
    if block.shape != (nq, stop - start):
        raise ValueError(f"score block for database items [{start}, {stop}) has shape {block.shape}, "
                         f"expected {(nq, stop - start)}")
    if block.dtype.kind != "f":
        raise ValueError(f"scores: expected floating values, got dtype {block.dtype}")
    if np.isnan(block).any():
        raise ValueError(f"scores: NaN in the block of database items [{start}, {stop})")
    return block


def _score_source(scores, n_db: int | None, nq: int) -> tuple[ScoreBlocks, int]:
    """(block(start, stop) -> (nq, stop - start) numpy scores, N) for an array or a callable."""
    if callable(scores):
        if n_db is None or int(n_db) < 1:
            raise ValueError("n_db (database size N) is required when scores is a callable")
        fn = scores
        return (lambda a, b: _to_numpy(fn(a, b), a, b, nq)), int(n_db)
    if not isinstance(scores, (np.ndarray, torch.Tensor)) or scores.ndim != 2:
        raise ValueError("scores: expected an (nq, N) array/tensor or a callable (start, stop) -> block, "
                         f"got {getattr(scores, 'shape', type(scores).__name__)}")
    if scores.shape[0] != nq:
        raise ValueError(f"scores has {scores.shape[0]} rows (queries) but gnd has {nq} queries")
    if n_db is not None and int(n_db) != scores.shape[1]:
        raise ValueError(f"n_db={n_db} disagrees with scores.shape[1]={scores.shape[1]}")
    return (lambda a, b: _to_numpy(scores[:, a:b], a, b, nq)), int(scores.shape[1])


def _gather(block: ScoreBlocks, n: int, wanted: list[np.ndarray], block_size: int) -> list[np.ndarray]:
    """Scores of items ``wanted[i]`` for query i, computing only the blocks that hold any of them."""
    out = [np.empty(w.size) for w in wanted]
    allw = np.unique(np.concatenate(wanted)) if wanted else np.empty(0, np.int64)
    for start in np.unique(allw // block_size) * block_size:  # the same block grid as the main pass
        start = int(start)
        stop = min(n, start + block_size)
        s = block(start, stop)
        for i, w in enumerate(wanted):
            inside = (w >= start) & (w < stop)
            out[i][inside] = s[i, w[inside] - start]
    return out


# -------------------------------------------------------------------------------- position counting


class _Counter:
    """Counts, for the targets of one query, the items ranked before each (stable descending order)."""

    def __init__(self, ids: np.ndarray, scores: np.ndarray, n_db: int):
        order = np.lexsort((ids, -scores))               # targets by ranking key (-score, id)
        self.order = order
        self.neg = (-scores)[order]
        self.ids = ids[order]
        group = np.concatenate([[0], np.cumsum(self.neg[1:] != self.neg[:-1])]) if ids.size else ids
        self.stride = n_db + 1
        self.group = group
        self.group_key = group * self.stride + self.ids  # ascending: ties ordered by id
        self.lowest = -self.neg[-1] if ids.size else np.inf
        self.hist = np.zeros(ids.size + 1, dtype=np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray, sign: int = 1) -> None:
        """Add (or with ``sign=-1`` remove) items with these scores and ids to the counts."""
        if self.ids.size == 0:
            return
        keep = scores >= self.lowest                     # items below every target precede none
        scores, ids = scores[keep], ids[keep]
        neg = -scores
        r = np.searchsorted(self.neg, neg, side="left")  # targets with a strictly higher score
        at = np.minimum(r, self.neg.size - 1)
        tie = np.flatnonzero(self.neg[at] == neg)
        if tie.size:  # equal score: targets with id <= the item's id are not after it
            key = self.group[at[tie]] * self.stride + ids[tie]
            r[tie] = np.searchsorted(self.group_key, key, side="right")
        self.hist += sign * np.bincount(r, minlength=self.hist.size)

    def positions(self) -> np.ndarray:
        """0-based positions of the targets, in the order of the ids given at construction."""
        pos = np.empty(self.ids.size, dtype=np.int64)
        pos[self.order] = np.cumsum(self.hist)[:-1]
        return pos


def target_positions(scores, targets: list, head_ranks=None, n_db: int | None = None,
                     block_size: int = 65536, progress: bool | None = None) -> list[np.ndarray]:
    """0-based rank positions of given database items under each query's score ranking.

    Args:
        scores: (nq, N) numpy array / memmap / torch tensor, or a callable ``(start, stop) ->
            (nq, stop - start)`` score block (deterministic: it is called twice for some blocks) with
            ``n_db=N``.
        targets: per query, an int array of distinct database indices in [0, N).
        head_ranks: optional (nq, L) int, distinct per row: the ranking starts with these.
        block_size: database items per block.

    Returns:
        per query, an int64 array aligned with ``targets[i]``: the item's index in
        ``np.argsort(-scores[i], kind="stable")`` (or in ``[head, rest in that order]``).

    Example:
        >>> target_positions(np.array([[0.1, 0.9, 0.5, 0.9]]), [np.array([0, 3])])[0].tolist()
        [3, 1]
    """
    nq = len(targets)
    block, n = _score_source(scores, n_db, nq)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    targets = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
    for i, t in enumerate(targets):
        if t.size and (t.min() < 0 or t.max() >= n or np.unique(t).size != t.size):
            raise ValueError(f"targets[{i}]: expected distinct database indices in [0, {n})")
    head = _check_head(head_ranks, nq, n)
    wanted = targets if head is None else [np.concatenate([t, h]) for t, h in zip(targets, head)]
    known = _gather(block, n, wanted, block_size)
    counters = [_Counter(t, s[:t.size], n) for t, s in zip(targets, known)]
    for start in tqdm(range(0, n, block_size), desc="positions", unit="block", disable=_disable(progress)):
        stop = min(n, start + block_size)
        s = block(start, stop)
        ids = np.arange(start, stop)
        for i, c in enumerate(counters):
            c.add(s[i], ids)
    out = []
    for i, c in enumerate(counters):
        pos = None
        if head is not None:
            t, h = targets[i], head[i]
            c.add(known[i][t.size:], h, sign=-1)         # head items no longer compete in the rest
            pos = c.positions() + h.size
            in_head = np.flatnonzero(np.isin(t, h))
            where = {int(v): p for p, v in enumerate(h)}
            pos[in_head] = [where[int(v)] for v in t[in_head]]
        out.append(c.positions() if pos is None else pos)
    return out


def _disable(progress):
    return None if progress is None else not progress


def _check_head(head_ranks, nq: int, n: int):
    if head_ranks is None:
        return None
    if isinstance(head_ranks, torch.Tensor):
        head_ranks = head_ranks.detach().cpu().numpy()
    head = np.asarray(head_ranks)
    if head.ndim != 2 or head.shape[0] != nq or not np.issubdtype(head.dtype, np.integer):
        raise ValueError(f"head_ranks: expected an (nq={nq}, L) integer array, got shape {head.shape} "
                         f"dtype {head.dtype}")
    if head.size and (head.min() < 0 or head.max() >= n):
        raise ValueError(f"head_ranks: database indices must lie in [0, {n})")
    srt = np.sort(head, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        raise ValueError("head_ranks: a row repeats a database index; expected distinct indices per row")
    return [row.astype(np.int64) for row in head]


# ----------------------------------------------------------------------------------------- metrics


def _protocol_scores(positions: list[dict], gnd, protocol: str, ks, n: int):
    """APs and precisions from positions, with :func:`sglib.evaluate.protocol.scores_from_positions`."""
    sets = [protocol_sets(g, protocol) for g in gnd]
    n_pos = np.array([len(p) for p, _ in sets])  # as the reference: duplicates would count

    def flat(which):
        qs, ps = [], []
        for i, s in enumerate(sets):
            items = np.unique(s[which])
            items = items[items < n]  # absent from the ranking: never retrieved
            qs.append(np.full(items.size, i, dtype=np.int64))
            ps.append(np.array([positions[i][int(v)] for v in items], dtype=np.int64))
        return np.concatenate(qs), np.concatenate(ps)

    pq, ppos = flat(0)
    jq, jpos = flat(1)
    return scores_from_positions(pq, ppos, jq, jpos, n_pos, ks, n)


def revisited_from_scores(scores, gnd, ks=(1, 5, 10), head_ranks=None, n_db: int | None = None,
                          block_size: int = 65536, progress: bool | None = None) -> dict:
    """Revisited E/M/H evaluation of the score ranking, without sorting the database.

    Args:
        scores: (nq, N) numpy array / memmap / torch tensor of query-database scores (higher is
            better), or a callable ``(start, stop) -> (nq, stop - start)`` block with ``n_db=N``.
        gnd: list of nq per-query dicts with 'easy', 'hard', 'junk' (a gnd_*.pkl's ``gnd``).
        ks: cut-offs of precision at k.
        head_ranks: optional (nq, L) int, distinct per row: the ranking is this head, then the other
            items by descending score.
        block_size: database items per block (memory ~ nq * block_size scores).

    Returns:
        the dict of :func:`sglib.evaluate.protocol.revisited` for the ranking
        ``np.argsort(-scores, axis=1, kind="stable")`` (equal scores: lower index first), or
        ``np.concatenate([head_ranks, rest of that ranking], 1)``.

    Example:
        >>> gnd = [{"easy": [1], "hard": [], "junk": [0]}]
        >>> revisited_from_scores(np.array([[0.9, 0.8, 0.1]]), gnd, ks=(1,))["easy"]["map"]
        1.0
    """
    if not isinstance(gnd, (list, tuple)) or not all(isinstance(g, dict) for g in gnd):
        raise ValueError("gnd: expected a list of per-query dicts with 'easy', 'hard', 'junk'")
    for i, g in enumerate(gnd):
        missing = [k for k in ("easy", "hard", "junk") if k not in g]
        if missing:
            raise ValueError(f"gnd[{i}] lacks key(s) {missing}")
    ks = check_ks(ks)
    n = n_db if callable(scores) else getattr(scores, "shape", (0, None))[1]
    if n is None:
        raise ValueError("n_db (database size N) is required when scores is a callable")
    targets = []
    for i, g in enumerate(gnd):
        ids = [np.asarray(g[k]).ravel() for k in ("easy", "hard", "junk")]
        if any(a.size and not np.issubdtype(a.dtype, np.integer) for a in ids):
            raise ValueError(f"gnd[{i}]: database indices must be integers, got {g!r}")
        t = np.unique(np.concatenate(ids).astype(np.int64))
        if t.size and t.min() < 0:
            raise ValueError(f"gnd[{i}] holds a negative database index")
        targets.append(t[t < n])   # as revisited() on a truncated ranking: beyond N, never retrieved
    pos = target_positions(scores, targets, head_ranks, n_db, block_size, progress)
    positions = [dict(zip(t.tolist(), p.tolist())) for t, p in zip(targets, pos)]
    return {p: protocol_summary(*_protocol_scores(positions, gnd, p, ks, int(n)), len(ks)) for p in PROTOCOLS}


def revisited_from_features(q, x, gnd, ks=(1, 5, 10), head_ranks=None, block_size: int = 65536,
                            progress: bool | None = None) -> dict:
    """:func:`revisited_from_scores` with scores ``q @ x.T`` computed block by block (float32).

    Args:
        q: (nq, D) query descriptors (numpy or CPU tensor).
        x: (N, D) database descriptors: numpy (np.memmap welcome, float16 storage is computed in
            float32), a CPU tensor, a list of such parts or a :class:`sglib.search.Database`.
            Only ``block_size`` rows of x are in memory at a time.

    Returns:
        the :func:`sglib.evaluate.protocol.revisited` dict for the ranking by these scores (equal
        scores: lower index first), with ``head_ranks`` first if given.
    """
    if isinstance(q, torch.Tensor):
        q = q.detach().cpu().numpy()
    if not isinstance(q, np.ndarray) or q.ndim != 2 or q.dtype.kind != "f":
        raise ValueError(f"q: expected a 2-D floating array, got {getattr(q, 'shape', type(q))}")
    q32 = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    db = Database(x)
    if q32.shape[1] != db.shape[1]:
        raise ValueError(f"q has dimension {q32.shape[1]} but x has dimension {db.shape[1]}")
    if q32.shape[0] != len(gnd):
        raise ValueError(f"q has {q32.shape[0]} queries but gnd has {len(gnd)}")

    def block(start, stop):  # same (start, stop) -> same BLAS call -> same values
        return (q32 @ db.rows(start, stop, "cpu").T).numpy()

    return revisited_from_scores(block, gnd, ks, head_ranks, n_db=db.shape[0], block_size=block_size,
                                 progress=progress)


def evaluate_with_distractors(q, db, distractors, gnd, rerank=None, ks=(1, 5, 10), block_size: int = 65536,
                              progress: bool | None = False):
    """Revisited E/M/H of queries against ``db`` followed by ``distractors`` (indices n_db, n_db + 1, ...).

    Args:
        q: (nq, D) query descriptors; db: (N, D) benchmark database (gnd indexes its rows).
        distractors: None, an (n, D) array / memmap (float16 fine), or a list of them (appended in order).
        gnd: the benchmark's ground truth (distractors are negatives of every query).
        rerank: :class:`sglib.evaluate.retrieval.RerankSettings`: rerank each query's exact top-M over
            the whole extended database with SuperGlobal (shared shortlist); None: plain ranking.

    Returns:
        :class:`sglib.evaluate.retrieval.RetrievalResult` for that ranking (top-M reranked, then the
        rest by score).
    """
    extra = ([] if distractors is None else list(distractors) if isinstance(distractors, (list, tuple))
        else [distractors])
    database = Database([db, *extra])
    q = np.ascontiguousarray(q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else q, np.float32)
    check_retrieval_inputs(q, database, gnd, rerank)
    ks = check_ks(ks)
    n = database.shape[0]
    head, m = None, None
    if rerank is not None:
        m = min(int(rerank.M), n)
        _, top = knn(q, database, m)
        head = superglobal(q, database, top, m, int(rerank.K), float(rerank.beta))
    protocols = revisited_from_features(q, database, list(gnd), ks, head_ranks=head, block_size=block_size,
                                        progress=progress)
    return RetrievalResult(protocols, n, m, None if m is None else "shared", ks)
