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

from .describe import SCALES, DescriptorSettings
from .evaluate import PROTOCOLS, summary
from .extract import cached_features
from .pipeline import (RerankSettings, dataset_features, evaluate_retrieval, multi_settings_extractor, retrieve,
                       split_settings)

# the paper's ablation order: each row adds one module to the previous one
MODULE_SETTINGS = {
    "GeM (p=3)": DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False),
    "GeM+": DescriptorSettings(scales=(1.0,), gem_p=4.6, regional=False),
    "+ Regional-GeM": DescriptorSettings(scales=(1.0,), gem_p=4.6, regional=True),
    "+ Scale-GeM": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg="max"),
}
RERANK_ROW = "+ SuperGlobal rerank"
BENCHMARKS = ("synthetic_views", "multiview_real")
WHITENING_SETTINGS = DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False)


def module_table(model, dataset, cache_root, settings: dict = MODULE_SETTINGS, rerank: RerankSettings = RerankSettings(),
                 max_side: int | None = None, progress: bool = True):
    """Evaluate every setting, then rerank the last one.

    Returns:
        ``(results, features)``: results ``{row: revisited-dict}`` (rows = settings + :data:`RERANK_ROW`),
        features ``{setting: (q (nq, D), x (N, D))}``.
    """
    extractor = multi_settings_extractor(model, settings, max_side=max_side)
    q, x = dataset_features(dataset, extractor, cache_root, progress=progress)
    qs, xs = split_settings(q, list(settings)), split_settings(x, list(settings))
    results = {name: evaluate_retrieval(qs[name], xs[name], dataset.gnd) for name in settings}
    last = list(settings)[-1]
    results[RERANK_ROW] = evaluate_retrieval(qs[last], xs[last], dataset.gnd, rerank)
    return results, {name: (qs[name], xs[name]) for name in settings}


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
    return [str(folder / "jpg" / r["image"]) for r in rows], np.array([names.index(r["label"]) for r in rows])


def fit_training_whitening(model, data_root, cache_root, progress: bool = True):
    """Supervised (Lw) whitening of ``model`` fitted on the training split's GeM (p = 3) descriptors.

    Views of the same training photo are the matching pairs. Plays the part of CVNet's trained
    2048 x 2048 layer for a backbone that has none.
    """
    from .whitening import fit_learned_whitening
    paths, labels = training_images(data_root)
    feats = cached_features(cache_root, paths, multi_settings_extractor(model, {"gem3": WHITENING_SETTINGS}),
                            progress=progress)
    pairs = np.array([(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]])
    return fit_learned_whitening(feats, pairs)


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


__all__ = ["MODULE_SETTINGS", "RERANK_ROW", "BENCHMARKS", "module_table", "map_table", "training_images",
           "fit_training_whitening", "run_demo", "PROTOCOLS"]
