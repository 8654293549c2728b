"""The paper's module-by-module tables, shared by ``make demo`` and the notebooks.

Rows follow the paper's ablation order and each changes ONE thing from the row before it (the paper's
baseline, CVNet's global descriptor, is already multi-scale with mean aggregation; Scale-GeM is the change
from mean to max over scales):

1. GeM (p = 3) at one scale: the network's single-scale baseline;
2. + multi-scale: the paper's 3 scales (1/sqrt 2, 1, sqrt 2), descriptors averaged;
3. + GeM+: p = 4.6 instead of 3;
4. + Regional-GeM;
5. + Scale-GeM: max over the 3 scales instead of the mean;
6. + SuperGlobal reranking of row 5.

One extraction serves every row and the whole ablation grid (:func:`sglib.experiments.ablations.pooling_grid`),
so the notebooks and the demo share a single cached feature set.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..evaluate.retrieval import RerankSettings, evaluate_retrieval
from ..evaluate.protocol import summary
from ..method.descriptors import GEM_PLUS_P, SCALES, DescriptorSettings
from ..bundled.whitening import fit_training_whitening
from .ablations import grid_features, pooling_grid

BASE_ROW = "GeM (p=3)"
MULTISCALE_ROW = "+ multi-scale"
GEM_PLUS_ROW = "+ GeM+"
REGIONAL_ROW = "+ Regional-GeM"
SCALE_GEM_ROW = "+ Scale-GeM"
MODULE_SETTINGS = {
    BASE_ROW: DescriptorSettings(scales=SCALES[1], gem_p=3.0, regional=False),
    MULTISCALE_ROW: DescriptorSettings(scales=SCALES[3], gem_p=3.0, regional=False, scale_agg="mean"),
    GEM_PLUS_ROW: DescriptorSettings(scales=SCALES[3], gem_p=GEM_PLUS_P, regional=False, scale_agg="mean"),
    REGIONAL_ROW: DescriptorSettings(scales=SCALES[3], gem_p=GEM_PLUS_P, regional=True, scale_agg="mean"),
    SCALE_GEM_ROW: DescriptorSettings(scales=SCALES[3], gem_p=GEM_PLUS_P, regional=True, scale_agg="max"),
}
RERANK_ROW = "+ SuperGlobal rerank"
# CVNet's own global descriptor (learned p, mean over 3 scales, ReLU+ off), then SuperGlobal's modules one by one
CVNET_ROWS = {
    "CVNet global (baseline)": DescriptorSettings(scales=SCALES[3], gem_p=None, regional=False, scale_agg="mean"),
    GEM_PLUS_ROW: MODULE_SETTINGS[GEM_PLUS_ROW],
    REGIONAL_ROW: MODULE_SETTINGS[REGIONAL_ROW],
    SCALE_GEM_ROW: MODULE_SETTINGS[SCALE_GEM_ROW],
}
RELU_PLUS_ROW = "+ ReLU+"
# What the paper reports with CVNet's ResNet-101 and reranking (mAP, %); see ../shared/spec/superglobal.md
PAPER_R101_RERANK_HARD = {"roxford5k": 80.2, "rparis6k": 86.7}

def with_paper_column(table: pd.DataFrame, dataset: str, checkpoint=None, depth: int = 101) -> pd.DataFrame:
    """``table`` (rows = modules, columns Easy / Medium / Hard) plus ``paper Hard``: the paper's figure where it
    reports one for this setting (CVNet ResNet-101 + SuperGlobal reranking on ROxford / RParis, the
    :data:`RERANK_ROW`), ``"n/a"`` in every other cell (never NaN)."""
    out = table.copy()
    out["paper Hard"] = pd.Series("n/a", index=out.index, dtype=object)
    if checkpoint is not None and depth == 101 and dataset in PAPER_R101_RERANK_HARD and RERANK_ROW in out.index:
        out.loc[RERANK_ROW, "paper Hard"] = PAPER_R101_RERANK_HARD[dataset]
    return out


def with_rows(grid: dict, rows: dict) -> dict:
    """``grid`` (see :func:`sglib.experiments.ablations.pooling_grid`) plus each row's setting, keyed by row name."""
    return {**grid, **{name: ({"family": "module"}, st) for name, st in rows.items()}}


def module_table(model, dataset, cache_root, settings: dict = MODULE_SETTINGS, rerank: RerankSettings = RerankSettings(),
                 grid: dict | None = None, max_side: int | None = None, progress: bool = True):
    """Evaluate every setting, then rerank the last one.

    Args:
        settings: ``{row name: DescriptorSettings}``, in table order.
        grid: extra settings extracted in the same pass (default: the ablation grid,
            :func:`sglib.experiments.ablations.pooling_grid`), so later ablations come from the cache.

    Returns:
        ``(results, features)``: results ``{row: RetrievalResult}`` (rows = settings + :data:`RERANK_ROW`),
        features ``{key: (q (nq, D), x (N, D))}`` for every extracted setting (rows and grid).
    """
    features = grid_features(model, dataset, cache_root, with_rows(pooling_grid() if grid is None else grid, settings),
                             max_side=max_side, progress=progress)
    results = {name: evaluate_retrieval(*features[name], dataset.gnd) for name in settings}
    results[RERANK_ROW] = evaluate_retrieval(*features[list(settings)[-1]], dataset.gnd, rerank)
    return results, features


def map_table(per_benchmark: dict) -> pd.DataFrame:
    """``{benchmark: {row: RetrievalResult}}`` -> DataFrame of mAP in percent, columns (benchmark, protocol)."""
    frames = {b: pd.DataFrame({row: summary(res) for row, res in rows.items()}).T.rename(columns=str.capitalize)
              for b, rows in per_benchmark.items()}
    return pd.concat(frames, axis=1).round(1)


def ladder_effects(table: pd.DataFrame) -> pd.DataFrame:
    """Each module's effect in a module table: its row minus the row before (mAP points), first row dropped.

    Args:
        table: rows in ladder order (e.g. one benchmark of :func:`map_table`), columns Easy / Medium / Hard.
    """
    return table.astype(float).diff().iloc[1:].round(2)


def effect_words(effects: pd.DataFrame, noise: float = 0.5) -> pd.DataFrame:
    """:func:`ladder_effects` in words: "gains +x.x", "costs -x.x", or "no effect" within ``noise`` points."""
    def word(v):
        return "no effect" if abs(v) < noise else (f"gains {v:+.1f}" if v > 0 else f"costs {v:+.1f}")
    return effects.apply(lambda col: col.map(word))


def committed_table(results_dir, benchmark: str) -> pd.DataFrame:
    """The module table of ``benchmark`` that ``make demo`` wrote to ``results_dir/demo.json`` (mAP %, rows in
    ladder order, columns Easy / Medium / Hard)."""
    path = Path(results_dir) / "demo.json"
    record = json.loads(path.read_text())
    if benchmark not in record:
        raise ValueError(f"{path} has no results for {benchmark!r} (it has {sorted(record)}): run make demo")
    return pd.DataFrame(record[benchmark]).T.rename(columns=str.capitalize)[["Easy", "Medium", "Hard"]]


def paper_table(dataset, cache_root, checkpoint=None, depth: int = 101, backbone: str = "efficientnet_lite0",
                data_root=None, rerank: RerankSettings = RerankSettings(), max_side: int | None = None,
                device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """The paper's module-by-module table (mAP %, Easy/Medium/Hard) on one revisitop-format dataset.

    With a CVNet ``checkpoint``: :data:`CVNET_ROWS` with ReLU+ off (the reference's "off"), then the
    same last row with ReLU+ on, then reranking: the paper's setting. Without one: the ImageNet
    ``backbone`` with the whitening fitted on the bundled training split (needs ``data_root``),
    rows :data:`MODULE_SETTINGS` then reranking. The network runs on ``device``.
    """
    from ..models import load_backbone, load_cvnet
    if checkpoint is not None:
        off = load_cvnet(checkpoint, depth=depth, relu_plus=False, device=device)
        results, _ = module_table(off, dataset, cache_root, CVNET_ROWS, rerank, grid={}, max_side=max_side,
                                  progress=progress)
        del results[RERANK_ROW]
        on = load_cvnet(checkpoint, depth=depth, relu_plus=True, device=device)
        with_relu, _ = module_table(on, dataset, cache_root, {RELU_PLUS_ROW: CVNET_ROWS[SCALE_GEM_ROW]}, rerank,
                                    grid={}, max_side=max_side, progress=progress)
        results.update(with_relu)
    else:
        if data_root is None:
            raise ValueError("paper_table: an ImageNet backbone needs data_root (its whitening's training split)")
        model = load_backbone(backbone, device=device)
        model.head = fit_training_whitening(model, data_root, cache_root, progress)
        results, _ = module_table(model, dataset, cache_root, rerank=rerank, max_side=max_side, progress=progress)
    return map_table({dataset.name: results})[dataset.name]


__all__ = ["BASE_ROW", "MULTISCALE_ROW", "GEM_PLUS_ROW", "REGIONAL_ROW", "SCALE_GEM_ROW", "MODULE_SETTINGS",
           "RERANK_ROW", "CVNET_ROWS", "RELU_PLUS_ROW", "PAPER_R101_RERANK_HARD", "with_rows", "with_paper_column",
           "module_table", "map_table", "ladder_effects", "effect_words", "committed_table", "paper_table"]
