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


def plot_training_curves(logs: dict, highlight: str | None = None, path=None):
    """Loss, GeM p and validation mAP over steps, one line per run.

    Args:
        logs: ``{run name: log DataFrame}`` (:func:`sglib.training.read_log`: columns step, loss, gem_p, val_map).
        highlight: draw this run bold and the others faded (None: all alike).

    Returns:
        the matplotlib Figure with three panels.
    """
    if not logs:
        raise ValueError("plot_training_curves: no logs to plot")
    if highlight is not None and highlight not in logs:
        raise ValueError(f"plot_training_curves: no run named {highlight!r} (runs: {', '.join(logs)})")
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for i, (name, log) in enumerate(logs.items()):
        style = {"color": cmap(i % 10), "label": name,
                 "lw": 2.2 if name == highlight else 1.2, "alpha": 1.0 if highlight in (None, name) else 0.35}
        steps = log[log.step > 0]
        # a 10-step running mean: one batch's loss is noisy
        axes[0].plot(steps.step, steps.loss.rolling(10, min_periods=1).mean(), **style)
        axes[1].plot(log.step, log.gem_p, **style)
        val = log.dropna(subset=["val_map"])
        axes[2].plot(val.step, 100 * val.val_map, marker="o", ms=3, **style)
    for ax, label in zip(axes, ("loss (10-step mean)", "GeM p", "validation mAP (%)")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


def plot_p_sweep(sweep, learned_p: dict, path=None):
    """Test-time GeM p against mAP, one line per network, each fine-tuned network's learned p marked.

    Args:
        sweep: DataFrame indexed by p, one column per network (:func:`sglib.experiments.training_study.p_sweep`).
        learned_p: ``{loss: p}``; the column ``"<loss>: fine-tuned"`` gets a marker at its learned p.
    """
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, col in enumerate(sweep.columns):
        ax.plot(sweep.index, sweep[col], marker="o", ms=3, color=cmap(i % 10), label=col)
        loss = col.split(":")[0]
        if loss in learned_p:
            p = learned_p[loss]
            ax.axvline(p, color=cmap(i % 10), ls=":", lw=1)
            # stacked under the top edge: learned p values lie close together
            ax.text(p * 1.02, 0.95 - 0.06 * i, f"learned p={p:.2f}", fontsize=7, color=cmap(i % 10),
                    transform=ax.get_xaxis_transform(), va="top")
    ax.axvline(4.6, color="grey", ls="--", lw=1)
    ax.text(4.7, ax.get_ylim()[0] + 0.5, "GeM+ (4.6)", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(list(sweep.index))
    ax.set_xticklabels([f"{p:g}" for p in sweep.index])
    ax.set_xlabel("test-time GeM p")
    ax.set_ylabel(f"{sweep.attrs.get('protocol', 'medium').capitalize()} mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig
