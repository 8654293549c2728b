"""Reranking experiments for notebooks 03 and 05 and ``benchmarks/rerankers.py``: every reranker on the same
descriptors, evaluator and machine; a validation / test split of the queries for tuning; protocol switches.

All numbers come from cached descriptors (:func:`benchmark_descriptors`), so sliders re-score in seconds.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pandas as pd

from .._checks import check_int
from ..evaluate.retrieval import evaluate_reranker, evaluate_retrieval, rank_database
from ..method.rerank import DEFAULT_BETA, DEFAULT_K
from ..method.rerank_reference import superglobal_steps
from ..rerankers import RERANKERS, DatabaseGraph, check_methods, database_graph, graph_neighbours, rerank
from ..timing import measure

DESCRIPTOR_ROW = "+ Scale-GeM"      # the paper's global descriptor: GeM+, Regional-GeM and Scale-GeM
DEFAULT_M = 400
# each method's main parameters; SuperGlobal's M is the shortlist of every method and is swept alone
TUNING_GRID = {
    "superglobal": {"K": [3, 5, 9, 15], "beta": [0.0, 0.15, 0.5, 1.0]},
    "alpha_qe": {"n": [1, 2, 5, 10, 20], "alpha": [0.0, 3.0]},
    "alpha_dba": {"k": [2, 5, 10, 20], "alpha": [0.0, 3.0]},
    "k_reciprocal": {"k1": [10, 20, 30], "k2": [1, 3, 6], "lam": [0.1, 0.3, 0.6]},
    "diffusion": {"k": [10, 25, 50], "alpha": [0.5, 0.8, 0.99], "query_k": [5, None]},
}


def benchmark_descriptors(data_root, name: str = "synthetic_views", backbone: str = "efficientnet_lite0",
                          crop_queries: bool = True, progress: bool = False, **benchmark_kwargs):
    """The bundled benchmark ``name`` and its descriptors for every module row and pooling setting, cached.

    The same extraction as ``make demo`` and notebooks 00/01 (their cache is reused): the backbone with the
    training-split whitening, every pooling setting from one pass.

    Returns:
        ``(dataset, features)``: features ``{setting: (q (nq, D), x (N, D))}``, e.g. ``features[DESCRIPTOR_ROW]``.
    """
    from ..data.revisitop import load_revisitop
    from ..bundled import build_all
    from ..models import load_backbone
    from .ablations import grid_features, pooling_grid
    from .tables import MODULE_SETTINGS, with_rows
    from ..bundled.whitening import fit_training_whitening

    build_all(data_root, progress=progress, **benchmark_kwargs)
    dataset = load_revisitop(data_root, name, require_images=True)
    cache = os.path.join(data_root, "cache")
    model = load_backbone(backbone)
    model.head = fit_training_whitening(model, data_root, cache, progress)
    features = grid_features(model, dataset, cache, with_rows(pooling_grid(), MODULE_SETTINGS), progress=progress,
                             crop_queries=crop_queries)
    return dataset, features


def method_rerank_fn(method: str, params: dict | None = None, graph: DatabaseGraph | None = None):
    """``(q, x, ranks, M) -> ranks`` for :func:`sglib.evaluate.retrieval.evaluate_reranker`."""
    params = dict(params or {})
    graph = graph if RERANKERS[check_methods([method])[0]].uses_graph else None
    return lambda q, x, ranks, m: rerank(method, q, x, ranks, m, graph=graph, **params)


def compare_rerankers(q, x, gnd, methods=None, M: int = DEFAULT_M, params: dict | None = None,
                      graph: DatabaseGraph | None = None, shortlist: str = "shared", repeats: int = 3) -> pd.DataFrame:
    """Every method on the same descriptors: E/M/H mAP, rerank time per query and bytes stored per image.

    Args:
        q, x: (nq, D), (N, D) unit descriptors; gnd: their ground truth.
        methods: keys of :data:`sglib.rerankers.RERANKERS` (default all); params: ``{method: {param: value}}``.
        graph: the database graph for DBA / diffusion (built here when None; its time is offline, not per query).
        repeats: timed runs of each method over all queries (interleaved, :func:`sglib.timing.measure`).

    Returns:
        rows ``"no rerank"`` then each method's label; columns ``easy``, ``medium``, ``hard`` (mAP %),
        ``rerank ms`` (per query: median over repeats of the whole batch, divided by nq) and ``bytes/image``
        (descriptor, plus the graph's ids and similarities for the methods that read it).
    """
    methods = check_methods(list(RERANKERS) if methods is None else methods, params)
    params = params or {}
    m = min(M, x.shape[0])
    k = graph_neighbours(methods, params)
    if graph is None and k:
        graph = database_graph(x, k)
    ranks = rank_database(q, x)
    rows = {"no rerank": {**evaluate_retrieval(q, x, gnd).summary(), "rerank ms": 0.0,
                          "bytes/image": float(4 * x.shape[1])}}
    fns = {name: method_rerank_fn(name, params.get(name), graph) for name in methods}
    times = measure({name: (lambda fn=fn: fn(q, x, ranks, m)) for name, fn in fns.items()}, repeats=repeats)
    for name in methods:
        res = evaluate_reranker(q, x, gnd, fns[name], m, shortlist, ranks=ranks).summary()
        extra = 0
        if RERANKERS[name].uses_graph:
            extra = 12 * {**RERANKERS[name].defaults, **params.get(name, {})}["k"]   # int64 id + float32 sim
        rows[RERANKERS[name].label] = {**res, "rerank ms": 1000 * times[name].median / len(q),
                                       "bytes/image": float(4 * x.shape[1] + extra)}
    return pd.DataFrame.from_dict(rows, orient="index").round({"rerank ms": 3})


def rerank_story(q, x, gnd, qi: int, M: int = DEFAULT_M, K: int = DEFAULT_K, beta: float = DEFAULT_BETA) -> dict:
    """What SuperGlobal does to one query, step by step (from the readable reference implementation).

    Returns:
        ``{"before": (N,) ranking, "after": (N,) ranking, "top": (M,) shortlist ids in initial order,
        "steps": superglobal_steps(...) (positions index "top"), "positives": DataFrame (one row per positive:
        ``db``, ``label``, ``before``, ``after`` 0-based ranks, ``moved`` = before - after), "mover": position in
        "top" of the shortlisted positive that moved up most (None if no positive is shortlisted)}``.
    """
    qi = check_int(qi, "qi", 0, len(q) - 1, what="(a query index)")
    m = min(M, x.shape[0])
    before = rank_database(q[qi:qi + 1], x)[0]
    top = before[:m]
    steps = superglobal_steps(q[qi], x[top], K, beta)
    after = np.concatenate([top[np.argsort(-steps["final"], kind="stable")], before[m:]])
    pos_before, pos_after = np.argsort(before), np.argsort(after)
    g = gnd[qi]
    rows = [{"db": int(d), "label": label, "before": int(pos_before[d]), "after": int(pos_after[d])}
            for label in ("easy", "hard") for d in g[label]]
    positives = pd.DataFrame(rows, columns=["db", "label", "before", "after"])
    positives["moved"] = positives.before - positives.after
    shortlisted = positives[positives.before < m]
    mover = None
    if len(shortlisted):
        mover = int(shortlisted.loc[shortlisted.moved.idxmax(), "before"])
    return {"before": before, "after": after, "top": top, "steps": steps,
            "positives": positives.sort_values("before").reset_index(drop=True), "mover": mover}


def per_query_gain(q, x, gnd, method: str = "superglobal", M: int = DEFAULT_M, params: dict | None = None,
                   protocol: str = "medium") -> pd.DataFrame:
    """Per query: its number of positives under ``protocol``, AP (%) before and after reranking, and the gain."""
    from ..evaluate.protocol import PROTOCOLS, protocol_sets
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    before = evaluate_retrieval(q, x, gnd)[protocol]["aps"]
    after = evaluate_reranker(q, x, gnd, method_rerank_fn(method, params), M)[protocol]["aps"]
    positives = [len(protocol_sets(g, protocol)[0]) for g in gnd]
    frame = pd.DataFrame({"positives": positives, "ap_before": 100 * before, "ap_after": 100 * after})
    frame["gain"] = frame.ap_after - frame.ap_before
    return frame.dropna()


def query_split(gnd: list, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test query indices, disjoint by landmark.

    Queries whose positives overlap belong to one landmark (connected components of "share a positive");
    the landmarks are shuffled with ``seed`` and dealt alternately, so tuning never sees a test landmark.

    Returns:
        ``(validation, test)`` sorted index arrays, both non-empty.
    """
    positives = [set(g["easy"]) | set(g["hard"]) for g in gnd]
    parent = list(range(len(gnd)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, j in itertools.combinations(range(len(gnd)), 2):
        if positives[i] & positives[j]:
            parent[root(i)] = root(j)
    groups = sorted({root(i) for i in range(len(gnd))})
    if len(groups) < 2:
        raise ValueError("query_split: every query shares positives with the others (one landmark): nothing to split")
    order = np.random.default_rng(seed).permutation(len(groups))
    val_roots = {groups[i] for i in order[::2]}
    val = np.array([i for i in range(len(gnd)) if root(i) in val_roots])
    test = np.array([i for i in range(len(gnd)) if root(i) not in val_roots])
    return val, test


def _grid_settings(grid: dict) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def tuning_table(q, x, gnd, split: tuple, grid: dict = TUNING_GRID, M: int = DEFAULT_M,
                 graph: DatabaseGraph | None = None) -> pd.DataFrame:
    """Every method at every grid setting, scored on the validation and on the test queries.

    Returns:
        one row per (method, setting): ``method``, ``params`` (JSON), ``default`` (the method's defaults),
        ``val_medium``, ``val_hard``, ``test_easy``, ``test_medium``, ``test_hard`` (mAP %).
    """
    val, test = split
    k = graph_neighbours(list(grid), grid)
    if graph is None and k:
        graph = database_graph(x, k)
    m = min(M, x.shape[0])
    ranks = rank_database(q, x)
    rows = []
    for method, method_grid in grid.items():
        defaults = {key: RERANKERS[method].defaults[key] for key in method_grid}
        for setting in _grid_settings(method_grid):
            fn = method_rerank_fn(method, setting, graph)
            scores = {}
            for part, idx in (("val", val), ("test", test)):
                res = evaluate_reranker(q[idx], x, [gnd[i] for i in idx], fn, m, ranks=ranks[idx]).summary()
                scores.update({f"{part}_{p}": v for p, v in res.items()})
            rows.append({"method": method, "params": json.dumps(setting), "default": setting == defaults,
                         **{key: scores[key] for key in ("val_medium", "val_hard", "test_easy", "test_medium",
                                                         "test_hard")}})
    return pd.DataFrame(rows)


def chosen_settings(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, the setting with the best validation (Medium + Hard) mean beside the defaults, both on test.

    Returns:
        one row per method: ``chosen`` params, ``val`` score, its ``test_medium`` / ``test_hard``, and the
        defaults' ``default_test_medium`` / ``default_test_hard``.
    """
    out = {}
    for method, rows in table.groupby("method", sort=False):
        score = (rows.val_medium + rows.val_hard) / 2
        best = rows.loc[score.idxmax()]
        default = rows[rows["default"]]
        out[RERANKERS[method].label] = {
            "chosen": best.params, "val (M+H)/2": round(float(score.max()), 2),
            "test_medium": best.test_medium, "test_hard": best.test_hard,
            "default_test_medium": float(default.test_medium.iloc[0]) if len(default) else np.nan,
            "default_test_hard": float(default.test_hard.iloc[0]) if len(default) else np.nan}
    return pd.DataFrame.from_dict(out, orient="index")


def protocol_table(features_cropped: tuple, features_whole: tuple, gnd, M: int = DEFAULT_M) -> pd.DataFrame:
    """SuperGlobal (defaults) under the protocol switches: shared or per-protocol shortlist x cropped or whole queries.

    Args:
        features_cropped / features_whole: ``(q, x)`` with queries cropped to their box / described whole.

    Returns:
        rows ``"shortlist=..., queries=..."``; columns E/M/H mAP (%) without and with reranking.
    """
    rows = {}
    fn = method_rerank_fn("superglobal")
    for crop, (q, x) in (("cropped", features_cropped), ("whole", features_whole)):
        plain = evaluate_retrieval(q, x, gnd).summary()
        for policy in ("shared", "per_protocol"):
            res = evaluate_reranker(q, x, gnd, fn, M, policy).summary()
            rows[f"shortlist={policy}, queries={crop}"] = {
                **{f"{p} (no rerank)": v for p, v in plain.items()}, **{f"{p} (rerank)": v for p, v in res.items()}}
    return pd.DataFrame.from_dict(rows, orient="index").round(2)


def reranker_study(data_root, progress: bool = True) -> dict:
    """The reranker comparison and tuning the README reports, as a JSON-ready dict (``python -m sglib rerankers``).

    On the :data:`DESCRIPTOR_ROW` descriptors of the default builds: every method at its defaults on
    ``synthetic_views`` and ``multiview_real`` (E/M/H mAP %), and on ``synthetic_views`` the setting each method
    picks on validation queries, scored on disjoint test queries (:func:`query_split`, :data:`TUNING_GRID`).
    """
    out = {"descriptor": DESCRIPTOR_ROW, "M": DEFAULT_M, "defaults": {}, "tuning": None}
    for name in ("synthetic_views", "multiview_real"):
        dataset, features = benchmark_descriptors(data_root, name, progress=progress)
        q, x = features[DESCRIPTOR_ROW]
        table = compare_rerankers(q, x, dataset.gnd, repeats=1)
        out["defaults"][name] = table[["easy", "medium", "hard"]].to_dict(orient="index")
        if name == "synthetic_views":
            split = query_split(dataset.gnd)
            chosen = chosen_settings(tuning_table(q, x, dataset.gnd, split))
            out["tuning"] = {"validation_queries": len(split[0]), "test_queries": len(split[1]),
                             "methods": chosen.to_dict(orient="index")}
    return out


__all__ = ["DESCRIPTOR_ROW", "TUNING_GRID", "benchmark_descriptors", "method_rerank_fn", "compare_rerankers",
           "rerank_story", "per_query_gain", "query_split", "tuning_table", "chosen_settings", "protocol_table",
           "reranker_study"]
