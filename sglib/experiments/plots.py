"""Pictures of retrieval results: queries with their top results, correct and wrong marked.

The matplotlib backend is left to the caller (Jupyter's inline backend in a notebook, ``MPLBACKEND=Agg``
under ``make``): choosing one here would hide every figure in a notebook.
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..data.preprocess import load_image

COLOURS = {"easy": "#1a9850", "hard": "#fdae61", "junk": "#999999", "wrong": "#d73027"}


def result_label(g: dict, db_index: int) -> str:
    """'easy', 'hard', 'junk' or 'wrong' for one database image of a query's gnd dict."""
    for key in ("easy", "hard", "junk"):
        if db_index in set(np.asarray(g[key]).tolist()):
            return key
    return "wrong"


def plot_retrievals(dataset, ranks: np.ndarray, queries, k: int = 5, title: str | None = None, path=None):
    """Grid: one row per query (its image with the box), then its top-``k`` database images.

    Frames: green = easy positive, orange = hard positive, grey = junk, red = wrong.

    Args:
        dataset: a :class:`sglib.data.revisitop.RevisitopDataset` (images must be present).
        ranks: (n_queries, >= k) database indices, best first.
        queries: query indices to show.
        path: save the figure there (PNG) when given.

    Returns:
        the matplotlib Figure.
    """
    queries = list(queries)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.2 * (k + 1), 2.0 * len(queries)), squeeze=False)
    for row, qi in enumerate(queries):
        ax = axes[row, 0]
        ax.imshow(load_image(dataset.query_path(qi)))
        bbx = dataset.query_bbx(qi)
        if bbx is not None:
            x1, y1, x2, y2 = bbx
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="yellow", lw=2))
        ax.set_title(f"query {dataset.qimlist[qi]}", fontsize=7)
        for col in range(k):
            db = int(ranks[qi, col])
            label = result_label(dataset.gnd[qi], db)
            ax = axes[row, col + 1]
            ax.imshow(load_image(dataset.db_path(db)))
            for side in ax.spines.values():
                side.set_edgecolor(COLOURS[label])
                side.set_linewidth(4)
            ax.set_title(f"#{col + 1} {label}", fontsize=7, color=COLOURS[label])
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


def plot_rerank_gain(rerank, path=None):
    """Reranking's Medium-mAP gain against the base ranking's precision: mP@10 (Medium) and Hard mAP.

    Args:
        rerank: :attr:`sglib.experiments.stability.StabilityResult.rerank` (one row per build, backbone,
            base ranking, whitening and K).
        path: save the figure there (PNG) when given.

    Returns:
        the matplotlib Figure: two panels sharing the y axis; colour = base ranking and whitening,
        marker = K, a dashed line at zero gain.
    """
    kinds = sorted({(r.backbone, r.base, bool(r.whitened)) for r in rerank.itertuples()})
    markers = dict(zip(sorted(set(rerank["K"])), itertools.cycle("os^Dv<>ph*")))
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, label in zip(axes, ("base_mP@10", "base_hard"), ("base mP@10, Medium (%)", "base Hard mAP (%)")):
        for i, (backbone, base, whitened) in enumerate(kinds):
            sel = rerank[(rerank.backbone == backbone) & (rerank.base == base) & (rerank.whitened == whitened)]
            for k, marker in markers.items():
                part = sel[sel.K == k]
                ax.scatter(part[x], part["gain_medium"], color=cmap(i % 10), marker=marker, s=28,
                           label=f"{backbone}, {base}, {'whitened' if whitened else 'raw'}, K={k}")
        ax.axhline(0, color="black", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rerank gain, Medium mAP (points)")
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("When reranking helps: gain against the base ranking's precision", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80, bbox_inches="tight")
    return fig
