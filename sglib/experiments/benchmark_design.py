"""Is the bundled benchmark measuring landmarks, or its own rendering? Checks of a ``synthetic_views`` build.

Every view is pasted into context cut from a small set of background photos, so two unrelated images can be
similar because they share a context photo, a similarity no real landmark collection has. A whitening or a
network fitted on the same context photos learns to remove it, which is why the training split must have its
own (:func:`sglib.bundled.synthetic_views.assign_roles`). :func:`context_sharing` measures how much the shared
context drives a ranking; :func:`design_report` puts it beside the numbers it can distort (the whitening's
effect, reranking with and without it, every ladder row), the side-by-side table of two builds.

Example::

    meta = json.loads(Path("data/datasets/synthetic_views/meta_synthetic_views.json").read_text())
    context_sharing(meta, rank_database(q, x), dataset.gnd)["top"]   # mean share of top-10 negatives
"""
from __future__ import annotations

import numpy as np

from ..evaluate.retrieval import RerankSettings, evaluate_retrieval, rank_database


def context_sharing(meta: dict, ranks: np.ndarray, gnd: list, top: int = 10) -> dict:
    """How often a query's highest-ranked negatives share its context photo, against chance.

    Args:
        meta: a build's ``meta_<name>.json`` (queries and database images with their ``background`` photo).
        ranks: (nq, N) database ids, best first.
        gnd: revisitop ground truth; negatives are database images in none of easy / hard / junk.
        top: how many of each query's first negatives are looked at.

    Returns:
        ``{"top": mean over queries of the share of the first ``top`` negatives whose context photo is the
        query's, "chance": mean share among all of each query's negatives, "lift": top / chance}``.
    """
    ranks = np.asarray(ranks)
    queries, database = meta["queries"], meta["database"]
    if ranks.shape != (len(queries), len(database)) or len(gnd) != len(queries):
        raise ValueError(f"context_sharing: ranks {ranks.shape}, {len(gnd)} gnd entries, meta with "
                         f"{len(queries)} queries and {len(database)} images do not match")
    if any("background" not in m for m in (*queries, *database)):
        raise ValueError("context_sharing: meta has no 'background' per image (a build older than format 3?)")
    for i, g in enumerate(gnd):
        ids = np.concatenate([np.asarray(g[key], dtype=np.int64).ravel() for key in ("easy", "hard", "junk")])
        if ids.size and (ids.min() < 0 or ids.max() >= len(database)):
            raise ValueError(f"context_sharing: gnd[{i}] names database ids outside [0, {len(database)})")
    backgrounds = np.array([m["background"] for m in database])
    top_shares, chances = [], []
    for i, g in enumerate(gnd):
        labelled = np.zeros(len(database), bool)
        for key in ("easy", "hard", "junk"):
            labelled[np.asarray(g[key], dtype=int)] = True
        negatives = ranks[i][~labelled[ranks[i]]]
        same = backgrounds[negatives] == queries[i]["background"]
        top_shares.append(same[:top].mean())
        chances.append(same.mean())
    share, chance = float(np.mean(top_shares)), float(np.mean(chances))
    return {"top": round(share, 4), "chance": round(chance, 4), "lift": round(share / chance, 2) if chance else None}


def design_report(q_raw, x_raw, q_white, x_white, gnd: list, meta: dict, ladder: dict,
                  rerank: RerankSettings = RerankSettings()) -> dict:
    """The numbers a context shortcut can distort, for one build.

    Args:
        q_raw, x_raw: single-scale GeM (p = 3) descriptors without any head; q_white, x_white: the same after
            the training split's whitening.
        ladder: ``{row: (q, x)}`` of the module table (:data:`sglib.experiments.tables.MODULE_SETTINGS`), whitened.
        meta: the build's metadata (see :func:`context_sharing`).

    Returns:
        a JSON-ready dict: ``context`` (:func:`context_sharing` of the raw and whitened rankings), ``maps``
        (E/M/H of raw GeM, whitened GeM, each ladder row and each of those reranked) and ``effects`` (the
        whitening's, reranking's on raw and whitened GeM and on the last ladder row, each ladder step's).
    """
    maps, context = {}, {}
    for name, (q, x) in {"raw GeM": (q_raw, x_raw), "whitened GeM": (q_white, x_white), **ladder}.items():
        maps[name] = evaluate_retrieval(q, x, gnd).summary()
        maps[f"{name} + rerank"] = evaluate_retrieval(q, x, gnd, rerank).summary()
    for name, (q, x) in {"raw GeM": (q_raw, x_raw), "whitened GeM": (q_white, x_white)}.items():
        context[name] = context_sharing(meta, rank_database(q, x), gnd)

    def diff(a, b):
        return {p: round(maps[a][p] - maps[b][p], 2) for p in ("easy", "medium", "hard")}

    rows = list(ladder)
    effects = {"whitening": diff("whitened GeM", "raw GeM"),
               "rerank on raw GeM": diff("raw GeM + rerank", "raw GeM"),
               "rerank on whitened GeM": diff("whitened GeM + rerank", "whitened GeM"),
               **{row: diff(row, prev) for prev, row in zip(rows, rows[1:])},
               "rerank on " + rows[-1]: diff(rows[-1] + " + rerank", rows[-1])}
    return {"context": context, "maps": maps, "effects": effects, "rerank": vars(rerank)}


def measure_design(data_root, name: str = "synthetic_views", backbone: str = "efficientnet_lite0",
                   rows: dict | None = None, rerank: RerankSettings = RerankSettings(), progress: bool = True) -> dict:
    """:func:`design_report` of the build ``data_root/datasets/<name>`` (training split ``<name>_train``),
    with ``backbone`` and the whitening fitted on that training split; ``rows`` defaults to the module table.
    Features are cached under ``data_root/cache``."""
    import json
    from pathlib import Path
    from ..data.revisitop import load_revisitop
    from ..models import load_backbone
    from .ablations import grid_features
    from .tables import MODULE_SETTINGS
    from ..bundled.whitening import WHITENING_SETTINGS, fit_training_whitening
    data_root = Path(data_root)
    cache = data_root / "cache"
    dataset = load_revisitop(data_root, name, require_images=True)
    meta = json.loads((data_root / "datasets" / name / f"meta_{name}.json").read_text())
    model = load_backbone(backbone)
    raw = grid_features(model.with_head(None), dataset, cache, {"gem": ({}, WHITENING_SETTINGS)}, progress=progress)
    model.head = fit_training_whitening(model, data_root, cache, progress, split=f"{name}_train")
    rows = MODULE_SETTINGS if rows is None else rows
    # the whitened GeM and every ladder row from one pass over the images
    feats = grid_features(model, dataset, cache, {"whitened gem": ({}, WHITENING_SETTINGS),
                                                  **{row: ({}, st) for row, st in rows.items()}}, progress=progress)
    white = feats.pop("whitened gem")
    report = design_report(*raw["gem"], *white, dataset.gnd, meta, feats, rerank)
    report["build"] = {"name": name, "queries": dataset.n_queries, "database": dataset.n_db, "backbone": backbone}
    return report


__all__ = ["context_sharing", "design_report", "measure_design"]
