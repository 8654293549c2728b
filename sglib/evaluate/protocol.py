"""Revisited Oxford / Paris evaluation (Radenovic et al., CVPR 2018): spec section 6.

Vectorised over all queries at once: positives and junk of every query are flattened into
one array keyed by ``query * N + position``, so junk counting is one ``searchsorted``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

PROTOCOLS = ("easy", "medium", "hard")


def protocol_sets(g: dict, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(positives, junk) index arrays of one query's gnd dict under a protocol (spec table)."""
    easy = np.asarray(g.get("easy", []), dtype=np.int64)
    hard = np.asarray(g.get("hard", []), dtype=np.int64)
    junk = np.asarray(g.get("junk", []), dtype=np.int64)
    if protocol == "easy":
        return easy, np.concatenate([junk, hard])
    if protocol == "medium":
        return np.concatenate([easy, hard]), junk
    if protocol == "hard":
        return hard, np.concatenate([junk, easy])
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _check_inputs(ranks, gnd):
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks: expected (n_queries, N) database indices, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks: expected an integer array of database indices, got dtype {ranks.dtype}")
    if not isinstance(gnd, (list, tuple)) or not all(isinstance(g, dict) for g in gnd):
        raise ValueError("gnd: expected a list of per-query dicts with 'easy', 'hard', 'junk'")
    if len(gnd) != ranks.shape[0]:
        raise ValueError(f"ranks has {ranks.shape[0]} rows (queries) but gnd has {len(gnd)} queries; "
                         "pass ranks as (n_queries, N), not the revisitop (N, n_queries) layout")
    for i, g in enumerate(gnd):
        missing = [k for k in ("easy", "hard", "junk") if k not in g]
        if missing:
            raise ValueError(f"gnd[{i}] lacks key(s) {missing}")
        for k in ("easy", "hard", "junk"):
            ids = np.asarray(g[k])
            if ids.ndim > 1:
                raise ValueError(f"gnd[{i}]['{k}']: expected a flat list of database indices, got an array of "
                                 f"shape {ids.shape}")
            if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
                raise ValueError(f"gnd[{i}]['{k}']: expected non-negative integer database indices, got {g[k]!r}")
    if 0 in ranks.shape:
        raise ValueError(f"ranks: empty, shape {ranks.shape} (no queries or no database images); nothing to evaluate")
    if ranks.min() < 0:
        q = int(np.argwhere(ranks < 0)[0, 0])
        raise ValueError(f"ranks: row {q} holds a negative database index ({int(ranks[q].min())}); a faiss "
                         "search pads missing results with -1: search with k <= N or drop those entries")
    srt = np.sort(ranks, axis=1)
    dup = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup.size:
        raise ValueError(f"ranks: row {int(dup[0])} repeats a database index; a ranking lists each image once")
    return ranks


def check_ks(ks) -> tuple:
    """``ks`` as a tuple of integers >= 1 (the cut-offs of precision at k); ValueError otherwise."""
    try:
        out = tuple(ks)
    except TypeError:
        raise ValueError(f"ks: expected a sequence of integers >= 1, got {ks!r}") from None
    if not out or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in out):
        raise ValueError(f"ks: expected a non-empty sequence of integers >= 1, got {ks!r}")
    return tuple(int(k) for k in out)


def _positions(ranks: np.ndarray, items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (query id, 0-based rank position) of each item found in its query's ranking.

    Items absent from a truncated ranking are dropped (as the reference's ``in1d`` does).
    """
    nq, length = ranks.shape
    qid = np.repeat(np.arange(nq), [len(a) for a in items])
    flat = np.concatenate(items) if items else np.empty(0, np.int64)
    if flat.size == 0:
        return qid, flat
    # position of each database index in its query's ranking, via a sort of (query, index) keys
    n_db = int(max(ranks.max(), flat.max())) + 1
    keys = (np.arange(nq)[:, None] * n_db + ranks).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    want = qid * n_db + flat
    at = np.searchsorted(sorted_keys, want)
    found = (at < sorted_keys.size) & (sorted_keys[np.minimum(at, sorted_keys.size - 1)] == want)
    return qid[found], (order[at[found]] % length)


def _protocol_scores(ranks, gnd, protocol, ks):
    sets = [protocol_sets(g, protocol) for g in gnd]
    n_pos = np.array([len(p) for p, _ in sets])  # as the reference: duplicates would count
    pq, ppos = _positions(ranks, [np.unique(p) for p, _ in sets])
    jq, jpos = _positions(ranks, [np.unique(j) for _, j in sets])
    return scores_from_positions(pq, ppos, jq, jpos, n_pos, ks, ranks.shape[1])


def scores_from_positions(pq, ppos, jq, jpos, n_pos, ks, length: int):
    """Per-query AP and precision at ``ks`` from the 0-based rank positions of positives and junk.

    Args:
        pq, ppos: query id and position of every retrieved positive (any order).
        jq, jpos: the same for junk images.
        n_pos: (nq,) number of positives of each query (retrieved or not).
        length: ranking length (positions are < length).

    Returns:
        ``(aps (nq,), prs (nq, len(ks)))``, NaN for queries without positives.
    """
    nq = len(n_pos)
    stride = length + 1
    pkey = np.sort(pq * stride + ppos)                        # positives and junk by (query, position)
    jkey = np.sort(jq * stride + jpos)
    pq, ppos = pkey // stride, pkey % stride
    junk_before = np.searchsorted(jkey, pkey) - np.searchsorted(jkey, pq * stride)
    r = ppos - junk_before                                   # adjusted 0-based positions
    first = np.searchsorted(pq, np.arange(nq))               # start of each query's group
    j = np.arange(pq.size) - first[pq]                       # index of the positive within its query
    p0 = np.where(r == 0, 1.0, j / np.maximum(r, 1))
    p1 = (j + 1) / (r + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        aps = np.bincount(pq, weights=(p0 + p1), minlength=nq) / (2.0 * n_pos)
    pos1 = r + 1                                              # 1-based adjusted positions
    max_pos = np.zeros(nq, dtype=np.int64)
    np.maximum.at(max_pos, pq, pos1)
    prs = np.zeros((nq, len(ks)))
    for c, k in enumerate(ks):
        kq = np.minimum(max_pos, k)
        hits = np.bincount(pq, weights=(pos1 <= kq[pq]).astype(float), minlength=nq)
        with np.errstate(invalid="ignore", divide="ignore"):
            prs[:, c] = np.where(kq > 0, hits / np.maximum(kq, 1), 0.0)
    empty = n_pos == 0
    aps[empty] = np.nan
    prs[empty] = np.nan
    return aps, prs


def protocol_summary(aps: np.ndarray, prs: np.ndarray, n_ks: int) -> dict:
    """``{"map", "aps", "mp", "prs"}`` of one protocol; the means leave NaN queries out."""
    valid = ~np.isnan(aps)
    return {
        "map": float(aps[valid].mean()) if valid.any() else float("nan"),
        "aps": aps,
        "mp": prs[valid].mean(axis=0) if valid.any() else np.full(n_ks, np.nan),
        "prs": prs,
    }


def revisited(ranks, gnd, ks=(1, 5, 10)) -> dict:
    """Revisited E/M/H evaluation of full rankings.

    Args:
        ranks: (n_queries, N) int, row i = database indices for query i, best first
            (a truncated ranking is allowed: positives beyond it count as not retrieved).
        gnd: list of per-query dicts with 'easy', 'hard', 'junk' index lists.
        ks: cut-offs of precision at k.

    Returns:
        ``{"easy"|"medium"|"hard": {"map": float, "aps": (nq,), "mp": (len(ks),), "prs": (nq, len(ks))}}``
        as fractions in [0, 1]; NaN in aps/prs for queries without positives under that protocol,
        which the means leave out.

    Example:
        >>> gnd = [{"easy": [0], "hard": [], "junk": []}]
        >>> revisited(np.array([[0, 1]]), gnd, ks=(1,))["easy"]["map"]
        1.0
    """
    ranks = _check_inputs(ranks, gnd)
    ks = check_ks(ks)
    return {p: protocol_summary(*_protocol_scores(ranks, gnd, p, ks), len(ks)) for p in PROTOCOLS}


def nan_to_none(obj):
    """``obj`` (dicts, lists, floats) with every non-finite float replaced by None: JSON null for a protocol
    without positives, never the non-standard NaN.

    Example:
        >>> nan_to_none({"easy": float("nan"), "medium": [0.5]})
        {'easy': None, 'medium': [0.5]}
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def results_table(results: dict, ks=(1, 5, 10)) -> pd.DataFrame:
    """One row per protocol: mAP and mP@k in percent, from :func:`revisited`'s output (computed with ``ks``)."""
    ks = check_ks(ks)
    rows = {}
    for protocol in PROTOCOLS:
        r = results[protocol]
        if len(r["mp"]) != len(ks):
            raise ValueError(f"ks={ks} but the results hold precision at {len(r['mp'])} cut-off(s): pass the ks "
                             "they were computed with")
        row = {"mAP": 100 * r["map"]}
        row.update({f"mP@{k}": 100 * v for k, v in zip(ks, r["mp"])})
        rows[protocol.capitalize()] = row
    return pd.DataFrame.from_dict(rows, orient="index").round(2)


def summary(results: dict) -> dict:
    """``{"easy": mAP, "medium": mAP, "hard": mAP}`` in percent."""
    return {p: round(100 * results[p]["map"], 2) for p in PROTOCOLS}
