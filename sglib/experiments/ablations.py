"""Pooling ablations: a grid of settings computed in one pass over the images, scored per setting.

The grid covers the GeM exponent (p sweep), Regional-GeM (kernel x exponent) and Scale-GeM (which
scales, max / mean / finite-p aggregation). The backbone runs once per scale; every setting
re-pools the same maps (:func:`sglib.scale.extract.build_extractor`), so a grid of 30
settings costs about what the 3-scale extraction costs, and the result is cached for sliders.
"""
from __future__ import annotations

import itertools

import pandas as pd

from ..evaluate.retrieval import RerankSettings, evaluate_retrieval
from ..method.descriptors import GEM_PLUS_P, SCALES, DescriptorSettings
from ..scale.extract import build_extractor, dataset_features, split_settings

GEM_PS = (1.0, 2.0, 3.0, 4.0, 4.6, 6.0, 8.0, 12.0)
REGIONAL_KERNELS = (3, 5, 7)
REGIONAL_PS = (1.5, 2.5, 4.0)
SCALE_SETS = {"1": (1.0,), "0.71+1": (0.7071, 1.0), "1+1.41": (1.0, 1.4142), "3 scales": SCALES[3]}
SCALE_AGGS = ("max", "mean", 10.0)


def pooling_grid(gem_ps=GEM_PS, kernels=REGIONAL_KERNELS, regional_ps=REGIONAL_PS, scale_sets=SCALE_SETS,
                 scale_aggs=SCALE_AGGS) -> dict[str, tuple[dict, DescriptorSettings]]:
    """``{key: (row description, DescriptorSettings)}`` for the three ablation families.

    * ``gem``: single scale, no Regional-GeM, GeM exponent p in ``gem_ps``;
    * ``regional``: single scale, GeM+, Regional-GeM with each kernel and exponent;
    * ``scale``: GeM+ and Regional-GeM (p 2.5, 5x5) on each set of scales with each aggregation.
    """
    grid = {}
    for p in gem_ps:
        grid[f"gem p={p:g}"] = ({"family": "gem", "gem_p": p},
                                DescriptorSettings(scales=(1.0,), gem_p=p, regional=False))
    for k, rp in itertools.product(kernels, regional_ps):
        grid[f"regional k={k} p={rp:g}"] = ({"family": "regional", "kernel": k, "regional_p": rp},
                                            DescriptorSettings(scales=(1.0,), gem_p=GEM_PLUS_P, regional=True,
                                                               regional_p=rp, regional_kernel=k))
    for (name, scales), agg in itertools.product(scale_sets.items(), scale_aggs):
        if len(scales) == 1 and agg != "max":
            continue                                # one scale: every aggregation is the same
        grid[f"scales {name} {agg}"] = ({"family": "scale", "scales": name, "agg": str(agg)},
                                        DescriptorSettings(scales=scales, gem_p=GEM_PLUS_P, regional=True,
                                                           scale_agg=agg))
    return grid


def grid_features(model, dataset, cache_root, grid: dict, max_side: int | None = None, progress: bool = True,
                  crop_queries: bool = True) -> dict:
    """``{key: (q (nq, D), x (N, D))}`` for every grid setting, from one cached extraction
    (``crop_queries=False``: queries described whole, see :func:`sglib.scale.extract.dataset_features`)."""
    settings = {key: st for key, (_, st) in grid.items()}
    q, x = dataset_features(dataset, build_extractor(model, settings, max_side=max_side), cache_root,
                            progress=progress, crop_queries=crop_queries)
    qs, xs = split_settings(q, list(settings)), split_settings(x, list(settings))
    return {key: (qs[key], xs[key]) for key in settings}


def score_grid(features: dict, grid: dict, gnd: list, rerank=None) -> pd.DataFrame:
    """One row per grid setting: its description and E/M/H mAP in percent."""
    rows = []
    for key, (q, x) in features.items():
        res = evaluate_retrieval(q, x, gnd, rerank).summary()
        rows.append({"key": key, **grid[key][0], "easy": res["easy"], "medium": res["medium"], "hard": res["hard"]})
    return pd.DataFrame(rows).set_index("key")


def rerank_grid(q, x, gnd, Ks=(1, 3, 5, 9, 15), betas=(0.0, 0.15, 0.5), M: int = 400) -> pd.DataFrame:
    """SuperGlobal reranking of one descriptor set at every (K, beta), after the unreranked baseline.

    Returns:
        one row per setting, index ``"no rerank"`` then ``"K=3, beta=0.15"`` ..., columns easy / medium / hard
        mAP (%) and ``mP@10`` (Medium, %).
    """
    def row(res):
        return {**res.summary(), "mP@10": round(100 * float(res["medium"]["mp"][-1]), 2)}

    if len(set(Ks)) != len(Ks) or len(set(betas)) != len(betas):
        raise ValueError(f"rerank_grid: repeated K or beta values (Ks={Ks!r}, betas={betas!r})")
    rows = {"no rerank": row(evaluate_retrieval(q, x, gnd))}
    for k in Ks:
        for beta in betas:
            rows[f"K={k}, beta={beta}"] = row(evaluate_retrieval(q, x, gnd, RerankSettings(M=M, K=k, beta=beta)))
    return pd.DataFrame.from_dict(rows, orient="index")
