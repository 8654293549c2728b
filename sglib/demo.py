"""The paper's module-by-module table on any revisitop-format dataset, and ``make demo``.

``make demo`` runs :func:`run_demo`: build the embedded benchmarks from real photos
(:mod:`sglib.benchmarks`), load the pretrained EfficientNet-Lite0, fit its whitening on the
disjoint training split, extract once (cached), and print E/M/H mAP for GeM (p = 3), GeM+,
+ Regional-GeM, + Scale-GeM and + SuperGlobal reranking on both benchmarks.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .ablations import grid_features, pooling_grid
from .describe import SCALES, DescriptorSettings
from .evaluate import summary
from .extract import cached_features
from .pipeline import RerankSettings, evaluate_retrieval, multi_settings_extractor, retrieve, with_data_identity

# the paper's ablation order: each row adds one module to the previous one
MODULE_SETTINGS = {
    "GeM (p=3)": DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False),
    "GeM+": DescriptorSettings(scales=(1.0,), gem_p=4.6, regional=False),
    "+ Regional-GeM": DescriptorSettings(scales=(1.0,), gem_p=4.6, regional=True),
    "+ Scale-GeM": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg="max"),
}
RERANK_ROW = "+ SuperGlobal rerank"


def with_rows(grid: dict, rows: dict) -> dict:
    """``grid`` (see :func:`sglib.ablations.pooling_grid`) plus each row's setting, keyed by row name.

    One extraction then serves the module table and every ablation: the embedded notebooks and
    ``make demo`` share a single cached feature set.
    """
    return {**grid, **{name: ({"family": "module"}, st) for name, st in rows.items()}}
BENCHMARKS = ("synthetic_views", "multiview_real")
WHITENING_SETTINGS = DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False)
# the training split's pair differences span at most (images - classes) directions, fewer than the
# descriptor size: shrinking their covariance towards the identity keeps the whitening well posed
WHITENING_SHRINKAGE = 0.3


def module_table(model, dataset, cache_root, settings: dict = MODULE_SETTINGS, rerank: RerankSettings = RerankSettings(),
                 grid: dict | None = None, max_side: int | None = None, progress: bool = True):
    """Evaluate every setting, then rerank the last one.

    Args:
        settings: ``{row name: DescriptorSettings}``, in table order.
        grid: extra settings extracted in the same pass (default: the ablation grid,
            :func:`sglib.ablations.pooling_grid`), so later ablations come from the cache.

    Returns:
        ``(results, features)``: results ``{row: revisited-dict}`` (rows = settings + :data:`RERANK_ROW`),
        features ``{key: (q (nq, D), x (N, D))}`` for every extracted setting (rows and grid).
    """
    features = grid_features(model, dataset, cache_root, with_rows(pooling_grid() if grid is None else grid, settings),
                             max_side=max_side, progress=progress)
    results = {name: evaluate_retrieval(*features[name], dataset.gnd) for name in settings}
    results[RERANK_ROW] = evaluate_retrieval(*features[list(settings)[-1]], dataset.gnd, rerank)
    return results, features


def map_table(per_benchmark: dict) -> pd.DataFrame:
    """``{benchmark: {row: revisited-dict}}`` -> DataFrame of mAP in percent, columns (benchmark, protocol)."""
    frames = {b: pd.DataFrame({row: summary(res) for row, res in rows.items()}).T.rename(columns=str.capitalize)
              for b, rows in per_benchmark.items()}
    return pd.concat(frames, axis=1).round(1)


def training_images(data_root) -> tuple[list[str], np.ndarray]:
    """Paths and integer labels of the synthetic-views training split (disjoint from both benchmarks)."""
    folder = Path(data_root) / "datasets" / "synthetic_views_train"
    with open(folder / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{folder / 'train.csv'} lists no training images")
    names = sorted({r["label"] for r in rows})
    return [str(folder / "jpg" / f"{r['image']}.jpg") for r in rows], np.array([names.index(r["label"]) for r in rows])


def fit_training_whitening(model, data_root, cache_root, progress: bool = True):
    """Supervised (Lw) whitening of ``model`` fitted on the training split's GeM (p = 3) descriptors.

    Views of the same training photo are the matching pairs. Plays the part of CVNet's trained
    2048 x 2048 layer for a backbone that has none. The shrinkage (:data:`WHITENING_SHRINKAGE`) makes the
    rank-deficient intra-pair covariance invertible; without it, directions the few training pairs never
    vary along are amplified without bound.
    """
    from .whitening import fit_learned_whitening
    paths, labels = training_images(data_root)
    extractor = with_data_identity(multi_settings_extractor(model, {"gem3": WHITENING_SETTINGS}),
                                   Path(data_root) / "datasets" / "synthetic_views_train")
    feats = cached_features(cache_root, paths, extractor, progress=progress)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    pairs = np.stack([i[same], j[same]], axis=1)
    return fit_learned_whitening(feats, pairs, shrinkage=WHITENING_SHRINKAGE)


def run_demo(data_root="data", results_dir="results", backbone: str = "efficientnet_lite0", whiten: bool = True,
             rerank: RerankSettings = RerankSettings(), progress: bool = True, **benchmark_kwargs) -> pd.DataFrame:
    """Build data, extract, retrieve, rerank, evaluate; print and save the table and a picture.

    Writes ``results_dir/demo.json`` (``{benchmark: {row: {"easy", "medium", "hard"}}}``, mAP in percent)
    and ``results_dir/demo_retrievals.png``. Returns the table.
    """
    from .benchmarks import build_all
    from .datasets import load_revisitop
    from .models import load_backbone
    from .viz import plot_retrievals

    start = time.time()
    data_root, results_dir = Path(data_root), Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    cache = data_root / "cache"
    build_all(data_root, progress=progress, **benchmark_kwargs)
    print(f"[demo] benchmarks ready ({time.time() - start:.0f} s)")
    model = load_backbone(backbone)
    if whiten:
        model.head = fit_training_whitening(model, data_root, cache, progress)
        print(f"[demo] whitening fitted on the training split ({time.time() - start:.0f} s)")
    per_benchmark, figure_done = {}, False
    for name in BENCHMARKS:
        dataset = load_revisitop(data_root, name, require_images=True)
        per_benchmark[name], feats = module_table(model, dataset, cache, rerank=rerank, progress=progress)
        print(f"[demo] {name}: {dataset.n_queries} queries, {dataset.n_db} database images "
              f"({time.time() - start:.0f} s)")
        if not figure_done:
            q, x = feats[list(MODULE_SETTINGS)[-1]]
            plot_retrievals(dataset, retrieve(q, x, rerank), range(min(6, dataset.n_queries)), k=6,
                            title=f"{name}: SuperGlobal ({backbone}), top 6 after reranking",
                            path=results_dir / "demo_retrievals.png")
            figure_done = True
    table = map_table(per_benchmark)
    record = {b: {row: summary(res) for row, res in rows.items()} for b, rows in per_benchmark.items()}
    (results_dir / "demo.json").write_text(json.dumps(record, indent=2))
    print(f"\nmAP (%) with {backbone}{' + learned whitening' if whiten else ''}; "
          f"rerank M={rerank.M} K={rerank.K} beta={rerank.beta}\n")
    print(table.to_string())
    print(f"\n[demo] wrote {results_dir / 'demo.json'} and {results_dir / 'demo_retrievals.png'} "
          f"in {time.time() - start:.0f} s")
    return table


__all__ = ["MODULE_SETTINGS", "RERANK_ROW", "BENCHMARKS", "with_rows", "module_table", "map_table", "training_images",
           "fit_training_whitening", "run_demo", "paper_table", "CVNET_ROWS", "RELU_PLUS_ROW", "PAPER_R101_RERANK_HARD"]


# CVNet's own global descriptor (learned p, mean over 3 scales, ReLU+ off), then SuperGlobal's modules one by one
CVNET_ROWS = {
    "CVNet global (baseline)": DescriptorSettings(scales=SCALES[3], gem_p=None, regional=False, scale_agg="mean"),
    "+ GeM+": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=False, scale_agg="mean"),
    "+ Regional-GeM": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg="mean"),
    "+ Scale-GeM": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg="max"),
}
RELU_PLUS_ROW = "+ ReLU+"
# What the paper reports with CVNet's ResNet-101 and reranking (mAP, %); see ../shared/spec/superglobal.md
PAPER_R101_RERANK_HARD = {"roxford5k": 80.2, "rparis6k": 86.7}


def paper_table(dataset, cache_root, checkpoint=None, depth: int = 101, backbone: str = "efficientnet_lite0",
                data_root=None, rerank: RerankSettings = RerankSettings(), max_side: int | None = None,
                progress: bool = True) -> pd.DataFrame:
    """The paper's module-by-module table (mAP %, Easy/Medium/Hard) on one revisitop-format dataset.

    With a CVNet ``checkpoint``: :data:`CVNET_ROWS` with ReLU+ off (the reference's "off"), then the
    same last row with ReLU+ on, then reranking: the paper's setting. Without one: the ImageNet
    ``backbone`` with the whitening fitted on the embedded training split (needs ``data_root``),
    rows :data:`MODULE_SETTINGS` then reranking.
    """
    from .models import load_backbone, load_cvnet
    if checkpoint is not None:
        off = load_cvnet(checkpoint, depth=depth, relu_plus=False)
        results, _ = module_table(off, dataset, cache_root, CVNET_ROWS, rerank, grid={}, max_side=max_side,
                                  progress=progress)
        del results[RERANK_ROW]
        on = load_cvnet(checkpoint, depth=depth, relu_plus=True)
        with_relu, _ = module_table(on, dataset, cache_root, {RELU_PLUS_ROW: CVNET_ROWS["+ Scale-GeM"]}, rerank,
                                    grid={}, max_side=max_side, progress=progress)
        results.update(with_relu)
    else:
        if data_root is None:
            raise ValueError("paper_table: an ImageNet backbone needs data_root (its whitening's training split)")
        model = load_backbone(backbone)
        model.head = fit_training_whitening(model, data_root, cache_root, progress)
        results, _ = module_table(model, dataset, cache_root, rerank=rerank, max_side=max_side, progress=progress)
    return map_table({dataset.name: results})[dataset.name]
