"""Reranking a user's own vectors: load, check, first stage, rerank, score, write (``python -m sglib rerank``).

Inputs are plain files: query and database vectors as ``.npy`` (float, one row per image, unit rows: a
reranker compares inner products, so rows of other norms are refused, with the one line that
normalises them), optionally a first-stage ranking (``.npy``, (nq, L) database row numbers) or a faiss
index file written by :func:`sglib.search.save_index` that produces it; without either, exact search.
A ground truth is a revisitop ``gnd_NAME.pkl`` or a CSV of relevant pairs (``query,database`` row
numbers, one pair a line, with that header).

Example:
    >>> import numpy as np
    >>> x = np.eye(50, 16, dtype=np.float32) + 0.1; x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> initial = first_stage(x[:3], x, M=20)
    >>> rerank_own(x[:3], x, initial, M=20, method="superglobal", K=3).shape
    (3, 20)
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .._checks import check_int
from ..data.revisitop import read_revisitop_gnd
from ..evaluate.protocol import nan_to_none
from ..method.rerank import DEFAULT_K
from ..rerankers import RERANKERS
from ..search import knn, load_index, search_index

NORMALISE = "x = x / np.linalg.norm(x, axis=1, keepdims=True)"
UNIT_TOLERANCE = 1e-2   # as the rerankers' own check: a norm off by more than 1 %


def load_vectors(path, name: str) -> np.ndarray:
    """(N, D) float32 unit rows from a ``.npy`` file; ValueError naming ``name`` and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: file not found: {path}")
    try:
        v = np.load(path, allow_pickle=False)
    except Exception as exc:   # numpy's messages for a wrong file are about pickles and magic strings
        raise ValueError(f"{name}: {path} is not a numpy .npy array file ({type(exc).__name__})") from None
    if not isinstance(v, np.ndarray) or v.ndim != 2 or v.dtype.kind != "f" or 0 in v.shape:
        raise ValueError(f"{name}: expected a non-empty 2-D float array (rows = images) in {path}, got "
                         f"{getattr(v, 'dtype', type(v).__name__)} of shape {getattr(v, 'shape', None)}")
    v = np.ascontiguousarray(v, np.float32)
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad.size:
        raise ValueError(f"{name}: row(s) {bad[:5].tolist()} of {path} hold NaN or infinite values (failed images?): "
                         "drop them")
    norms = np.linalg.norm(v, axis=1)
    off = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
    if off.size:
        raise ValueError(f"{name}: {off.size} of {len(v)} rows of {path} are not unit rows (e.g. row {off[0]}, "
                         f"norm {norms[off[0]]:.4g}); rerankers compare inner products: normalise them first "
                         f"({NORMALISE})")
    return v


def load_ranking(path, n_queries: int, n_db: int, M: int) -> np.ndarray:
    """(n_queries, L) int64 first-stage ranking from a ``.npy`` file, L >= M, ids in [0, n_db), distinct per row."""
    path = Path(path)
    try:
        r = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"ranking: {path} is not a readable .npy array file ({type(exc).__name__})") from None
    if r.ndim != 2 or r.dtype.kind not in "iu":
        raise ValueError(f"ranking: expected a 2-D integer array (one row of database row numbers per query) in "
                         f"{path}, got {r.dtype} of shape {r.shape}")
    if r.shape[0] != n_queries or r.shape[1] < M:
        raise ValueError(f"ranking: shape {r.shape} in {path}; expected {n_queries} rows (one per query) of at "
                         f"least M={M} ids")
    if r.size and (r.min() < 0 or r.max() >= n_db):
        raise ValueError(f"ranking: ids from {r.min()} to {r.max()} in {path}, but the database has {n_db} rows: "
                         "is it a ranking of another database?")
    srt = np.sort(r, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup.size:
        raise ValueError(f"ranking: row {dup[0]} of {path} lists a database id twice")
    return r.astype(np.int64)


def first_stage(q: np.ndarray, x: np.ndarray, M: int, index=None) -> np.ndarray:
    """(nq, M) database ids, best first: exact inner-product search, or ``index`` (a faiss index or the
    path of one saved by :func:`sglib.search.save_index`) searched for M neighbours."""
    if index is None:
        return knn(q, x, M)[1].astype(np.int64)
    if isinstance(index, (str, os.PathLike)):
        index = load_index(index)
    if index.ntotal != len(x) or index.d != x.shape[1]:
        raise ValueError(f"index: it holds {index.ntotal} vectors of {index.d} dims; the database has {len(x)} of "
                         f"{x.shape[1]}: is it an index of another database?")
    ids = search_index(index, q, M)[1]
    if (ids < 0).any():
        raise ValueError(f"index: returned fewer than M={M} neighbours for some queries (-1 ids): raise nprobe or "
                         "lower M")
    return ids.astype(np.int64)


def rerank_own(q: np.ndarray, x: np.ndarray, ranking: np.ndarray, M: int, method: str = "superglobal",
               graph=None, **params) -> np.ndarray:
    """``ranking`` (nq, L) with each row's first M reordered by ``method`` (a key of
    :data:`sglib.rerankers.RERANKERS`, its parameters in ``params``); the rest unchanged."""
    if method not in RERANKERS:
        raise ValueError(f"method: unknown reranker {method!r}; known: {', '.join(RERANKERS)}")
    _check_same_model(q, x)
    return np.asarray(RERANKERS[method](q, x, ranking, M, graph=graph, **params))


def _check_same_model(q: np.ndarray, x: np.ndarray) -> None:
    """ValueError unless queries and database have one dimension."""
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dims, the database {x.shape[1]}: both must come from one model")


def read_relevance(path, n_queries: int, n_db: int) -> list[dict]:
    """Per-query ``{"easy", "hard", "junk"}`` from a revisitop ``gnd`` pickle, or from a CSV of relevant
    ``query,database`` pairs (every pair "easy": the Easy and Medium figures are then the plain mAP)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground truth: file not found: {path}")
    if path.suffix == ".pkl":
        data = read_revisitop_gnd(path)
        gnd = data["gnd"]
        if len(gnd) != n_queries or len(data["imlist"]) != n_db:
            raise ValueError(f"ground truth {path}: {len(gnd)} queries and {len(data['imlist'])} database images; "
                             f"the vectors have {n_queries} and {n_db}")
        return gnd
    gnd = [{"easy": [], "hard": [], "junk": []} for _ in range(n_queries)]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:   # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            if not {"query", "database"} <= set(reader.fieldnames or ()):
                raise ValueError(f"ground truth {path}: expected a CSV with the header query,database")
            for line, row in enumerate(reader, 2):
                try:
                    qi, di = int(row["query"]), int(row["database"])
                except (TypeError, ValueError):
                    raise ValueError(f"ground truth {path}:{line}: expected two row numbers, got {dict(row)}") from None
                if not (0 <= qi < n_queries and 0 <= di < n_db):
                    raise ValueError(f"ground truth {path}:{line}: pair ({qi}, {di}) outside {n_queries} queries x "
                                     f"{n_db} database rows")
                gnd[qi]["easy"].append(di)
    except UnicodeDecodeError:
        raise ValueError(f"ground truth {path}: not UTF-8 text: expected a CSV (query,database) or a .pkl") from None
    return [{k: sorted(set(v)) for k, v in g.items()} for g in gnd]


def write_ranking(path, ranking: np.ndarray, meta: dict) -> Path:
    """Write ``ranking`` to ``.npy`` (the array) or ``.json`` (``meta`` and the ranking as lists); returns the path."""
    path = Path(path)
    if path.suffix not in (".npy", ".json"):
        raise ValueError(f"out: expected a .npy or .json file name, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, ranking)
    else:
        tmp.write_text(json.dumps({**nan_to_none(meta), "ranking": ranking.tolist()}, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def rerank_files(queries, database, out, method: str = "superglobal", M: int = 400, params: dict | None = None,
                 ranking=None, index=None, qdrant: str | None = None, qdrant_url: str | None = None,
                 ground_truth=None) -> dict:
    """The ``python -m sglib rerank`` job: read the files, first stage, rerank the top-M, write ``out``.

    The first stage is ``ranking`` (a .npy), else ``index`` (a faiss index file), else a Qdrant collection
    (``qdrant``: ":memory:" or a folder, ``qdrant_url``: a server; the database is uploaded when the
    collection is empty), else exact search. Returns the record written beside ``out`` (method, sizes,
    seconds, and with ``ground_truth`` the mAP before and after, in percent, over each query's top-M).
    """
    import time

    from ..evaluate.protocol import revisited
    from .vectordb import QdrantStage, rerank_returned

    params = dict(params or {})
    q, x = load_vectors(queries, "queries"), load_vectors(database, "database")
    _check_same_model(q, x)
    gnd = read_relevance(ground_truth, len(q), len(x)) if ground_truth is not None else None
    M = min(check_int(M, "--M", 1, what="(the shortlist size)"), len(x))   # capped at N, as everywhere
    t0 = time.perf_counter()
    vectors = None   # the candidates' vectors when a vector database returned them
    if ranking is not None:
        initial, stage = load_ranking(ranking, len(q), len(x), M)[:, :M], f"ranking {ranking}"
    elif index is not None:
        initial, stage = first_stage(q, x, M, index=index), f"faiss index {index}"
    elif qdrant is not None or qdrant_url is not None:
        db = QdrantStage(qdrant or ":memory:", url=qdrant_url)
        try:
            if len(db) == 0:
                db.add(x, progress=True)
            elif len(db) != len(x):
                raise ValueError(f"the Qdrant collection holds {len(db)} vectors, the database {len(x)}: is it "
                                 "another database's collection?")
            ids, vectors = db.search(q, M)
        finally:
            db.close()
        initial, stage = ids, f"Qdrant ({qdrant_url or qdrant})"
    else:
        initial, stage = first_stage(q, x, M), "exact search"
    t1 = time.perf_counter()
    if vectors is not None:
        after = rerank_returned(q, initial, vectors, method, **params)
    else:
        after = rerank_own(q, x, initial, M, method, **params)
    t2 = time.perf_counter()
    check = None
    if method.startswith("superglobal"):   # the label-free check is validated for SuperGlobal only
        from ..rerankers.gain_check import rerank_gain_check
        check = rerank_gain_check(q, x, initial, M=M, K=params.get("K", DEFAULT_K))
    record = {"method": method, "params": params, "M": int(M), "queries": len(q), "database": len(x),
              "dim": int(x.shape[1]), "first_stage": stage,
              "seconds": {"first_stage": round(t1 - t0, 3), "rerank": round(t2 - t1, 3)}}
    if check is not None:
        record["gain_check"] = {"verdict": check.verdict, "message": check.message}
    if gnd is not None:
        record["map_top_m"] = {when: {p: round(100 * r[p]["map"], 2) for p in ("easy", "medium", "hard")}
                               for when, r in (("before", revisited(initial, gnd)), ("after", revisited(after, gnd)))}
    write_ranking(out, after, record)
    return record


def shortlist_costs(q: np.ndarray, x: np.ndarray, Ms, method: str = "superglobal", repeats: int = 3) -> "pd.DataFrame":
    """Per shortlist size M (capped at N): rerank time per query (median of ``repeats``, all queries in one
    call, exact first stage not included) and the arrays the reranker holds per query in float32 (its M
    candidate vectors and their M x M similarities).

    Returns:
        one row per M: ``M``, ``ms_per_query``, ``MB_per_query``.
    """
    import pandas as pd

    from ..timing import measure

    longest = min(max(Ms), len(x))
    initial = first_stage(q, x, longest)
    rows = []
    for M in Ms:
        m = min(int(M), len(x))
        t = measure({"rerank": lambda: rerank_own(q, x, initial[:, :m], m, method)}, repeats=repeats)["rerank"]
        rows.append({"M": m, "ms_per_query": 1e3 * t.median / len(q),
                     "MB_per_query": (m * x.shape[1] + m * m) * 4 / 2**20})
    return pd.DataFrame(rows)


def choose_k_beta(q: np.ndarray, x: np.ndarray, gnd: list, labelled, M: int = 400, Ks=(1, 3, 5, 9, 15),
                  betas=(0.0, 0.15, 0.5, 1.0)) -> tuple[dict, "pd.DataFrame", "pd.DataFrame"]:
    """SuperGlobal's K and beta chosen on a few labelled queries (best mean of Medium and Hard mAP there), then
    checked on every other query against the paper's defaults and no reranking: what a user with few labels can do.

    Args:
        labelled: indices of the queries whose labels are used to choose (the others are held out).

    Returns:
        ``(chosen, tried, held_out)``: ``chosen`` ``{"K", "beta"}``; ``tried`` one row per setting (``K``,
        ``beta``, ``labelled_mAP``: mean of Medium and Hard mAP %); ``held_out`` Medium and Hard mAP % on the
        held-out queries for "no reranking", "paper defaults" and "chosen on the labelled queries".
    """
    import pandas as pd

    from ..evaluate.protocol import revisited
    from ..method.rerank import DEFAULT_BETA, DEFAULT_K

    labelled = np.unique(np.asarray(labelled, dtype=np.int64))
    if labelled.size == 0 or labelled.min() < 0 or labelled.max() >= len(q) or labelled.size == len(q):
        raise ValueError(f"labelled: expected some but not all query indices in [0, {len(q)}), got {labelled}")
    held = np.setdiff1d(np.arange(len(q)), labelled)
    m = min(int(M), len(x))
    initial = first_stage(q, x, m)

    def maps(idx, K=None, beta=None):
        ranks = initial[idx] if K is None else rerank_own(q[idx], x, initial[idx], m, "superglobal", K=K, beta=beta)
        res = revisited(ranks, [gnd[i] for i in idx])
        return 100 * res["medium"]["map"], 100 * res["hard"]["map"]

    tried = pd.DataFrame([{"K": K, "beta": beta, "labelled_mAP": float(np.nanmean(maps(labelled, K, beta)))}
                          for K in Ks if K < m for beta in betas])
    best = tried.loc[tried.labelled_mAP.idxmax()]
    chosen = {"K": int(best.K), "beta": float(best.beta)}
    held_out = pd.DataFrame({name: dict(zip(("medium", "hard"), maps(held, *setting))) for name, setting in (
        ("no reranking", ()), (f"paper defaults (K={DEFAULT_K}, beta={DEFAULT_BETA})", (DEFAULT_K, DEFAULT_BETA)),
        (f"chosen (K={chosen['K']}, beta={chosen['beta']:g})", (chosen["K"], chosen["beta"])))}).T
    return chosen, tried, held_out
