"""Pictures of retrieval results: queries with their top results, correct and wrong marked.

The matplotlib backend is left to the caller (Jupyter's inline backend in a notebook, ``MPLBACKEND=Agg``
under ``make``): choosing one here would hide every figure in a notebook.
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from ..data.preprocess import load_image

COLOURS = {"easy": "#1a9850", "hard": "#fdae61", "junk": "#999999", "wrong": "#d73027"}


# panels per row of an image strip and their titles' size: 6 panels of 2.2 in are 1320 px at 100 dpi, about the
# page width of docs/*.html, so a 9 pt title stays about 12 px high there (a 7 pt title on an 11-panel strip
# scaled to the page came out at about 5 px)
ROW_PANELS = 6
TITLE_SIZE = 9


def _check_lengths(**arrays) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"expected equal lengths, got {lengths}")


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
        _draw_query(axes[row, 0], dataset, qi)
        for col in range(k):
            db = int(ranks[qi, col])
            label = result_label(dataset.gnd[qi], db)
            _draw_database_image(axes[row, col + 1], dataset, db, label, f"#{col + 1} {label}")
    return _finish(fig, title, path)


def _draw_query(ax, dataset, qi: int) -> None:
    ax.imshow(load_image(dataset.query_path(qi)))
    bbx = dataset.query_bbx(qi)
    if bbx is not None:
        x1, y1, x2, y2 = bbx
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="yellow", lw=2))
    ax.set_title(f"query {dataset.qimlist[qi]}", fontsize=TITLE_SIZE)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_database_image(ax, dataset, db: int, label: str, title: str) -> None:
    """One database thumbnail framed in its label's colour."""
    ax.imshow(load_image(dataset.db_path(db)))
    for side in ax.spines.values():
        side.set_edgecolor(COLOURS[label])
        side.set_linewidth(4)
    ax.set_title(title, fontsize=TITLE_SIZE, color=COLOURS[label])
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(fig, title, path, **save):
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80, **save)
    return fig


def plot_before_after(dataset, qi: int, before: np.ndarray, after: np.ndarray, k: int = 6, title=None, path=None):
    """Two rows for query ``qi``: its top-``k`` before reranking and after, framed by label.

    Args:
        before, after: (>= k,) database indices of that query, best first. Each title gives the image's
            position in the other ranking, so moves read at a glance.
    """
    fig, axes = plt.subplots(2, k + 1, figsize=(2.2 * (k + 1), 4.2), squeeze=False)
    g = dataset.gnd[qi]
    for row, (name, ranks, other) in enumerate((("before", before, after), ("after", after, before))):
        _draw_query(axes[row, 0], dataset, qi)
        axes[row, 0].set_ylabel(f"{name} rerank", fontsize=8)
        where = {int(db): i for i, db in enumerate(other)}
        for col in range(k):
            db = int(ranks[col])
            label = result_label(g, db)
            was = where.get(db)
            moved = "" if was is None else f" ({'was' if name == 'after' else 'then'} #{was + 1})"
            _draw_database_image(axes[row, col + 1], dataset, db, label, f"#{col + 1} {label}{moved}")
    return _finish(fig, title, path)


def plot_image_row(dataset, qi: int, db_ids, titles, title=None, path=None):
    """The query, then the given database images with their own titles, framed by label (e.g. the K neighbours
    that refine a candidate, titled with their weights), wrapped after ROW_PANELS panels; returns the Figure."""
    db_ids = [int(i) for i in db_ids]
    titles = list(titles)
    _check_lengths(db_ids=db_ids, titles=titles)
    panels = len(db_ids) + 1
    cols = min(panels, ROW_PANELS)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    flat = axes.ravel()
    _draw_query(flat[0], dataset, qi)
    for ax, db, text in zip(flat[1:], db_ids, titles):
        _draw_database_image(ax, dataset, db, result_label(dataset.gnd[qi], db), text)
    for ax in flat[panels:]:
        ax.set_axis_off()
    return _finish(fig, title, path)


def plot_rank_changes(before: np.ndarray, after: np.ndarray, labels, top: int, title=None, path=None):
    """Where each positive sat before and after reranking (log-scaled rank, 1 = best): a slope chart.

    Args:
        before, after: 0-based positions of the same images in both rankings; labels: ``"easy"``/``"hard"`` each.
        top: the shortlist size M, drawn as a dashed line (reranking cannot move what lies below it).
    """
    labels = list(labels)
    _check_lengths(before=before, after=after, labels=labels)
    unknown = set(labels) - set(COLOURS)
    if unknown:
        raise ValueError(f"labels: expected values among {sorted(COLOURS)}, got {sorted(unknown)}")
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for b, a, label in zip(before, after, labels):
        ax.plot([0, 1], [b + 1, a + 1], color=COLOURS[label], marker="o", ms=4, lw=1.2, alpha=0.8)
    ax.axhline(top, color="grey", ls="--", lw=1)
    ax.text(0.5, top, f"M = {top}", color="grey", fontsize=7, ha="center", va="bottom")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.invert_yaxis()
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["before", "after"])
    ax.set_xlim(-0.2, 1.2)
    ax.set_ylabel("rank of each positive (1 = first)")
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, title, path)


def plot_gain_vs_positives(frames: dict, path=None):
    """Per-query AP gain of reranking against the query's number of positives, one colour per benchmark.

    Args:
        frames: ``{benchmark: per_query_gain(...) DataFrame}`` (columns ``positives``, ``gain``).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, (name, frame) in enumerate(frames.items()):
        ax.scatter(frame.positives, frame.gain, s=16, alpha=0.7, color=cmap(i), label=f"{name} (mean {frame.gain.mean():+.1f})")
    ax.axhline(0, color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("positives of the query (log)")
    ax.set_ylabel("AP gain from reranking (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, None, path)


def plot_accuracy_latency(table, protocol: str = "medium", path=None):
    """Accuracy against rerank latency against memory: one point per method, area ~ bytes stored per image.

    Args:
        table: :func:`sglib.experiments.reranking.compare_rerankers`'s table (``rerank ms``, ``bytes/image``,
            and the protocol's mAP), extra rows (e.g. local verification) welcome.
    """
    protocol = protocol.lower()
    missing = {protocol, "rerank ms", "bytes/image"} - set(table.columns)
    if missing:
        raise ValueError(f"plot_accuracy_latency: table lacks column(s) {sorted(missing)} (protocol is one of "
                         "easy / medium / hard)")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    cmap = plt.get_cmap("tab20" if len(table) > 10 else "tab10")
    markers = itertools.cycle("o^sDv<>ph*")
    positive = table["rerank ms"] > 0
    floor = table["rerank ms"][positive].min() / 3 if positive.any() else 1e-3
    for i, (name, row) in enumerate(table.iterrows()):
        x = max(row["rerank ms"], floor)       # "no rerank" costs nothing: drawn at the left edge
        ax.scatter(x, row[protocol], s=20 + 60 * np.sqrt(row["bytes/image"] / table["bytes/image"].min()),
                   color=cmap(i), marker=next(markers), alpha=0.85, edgecolor="black", lw=0.5,
                   label=f"{name}: {row[protocol]:.1f}, {row['rerank ms']:.3g} ms, {row['bytes/image'] / 1024:.1f} KiB/img")
    ax.set_xscale("log")
    ax.set_xlabel("rerank time per query (ms, log; 'no rerank' at the left edge)")
    ax.set_ylabel(f"{protocol.capitalize()} mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), markerscale=0.6,
              title="method: mAP, rerank time, bytes stored", title_fontsize=7)
    return _finish(fig, "accuracy, latency and bytes stored per image (marker area)", path, bbox_inches="tight")


def plot_growth(curves: dict, xlabel: str, path=None):
    """Cost against a size on log-log axes, one line per method, its fitted slope in the legend.

    Args:
        curves: ``{name: (table, slope)}`` from :func:`sglib.timing.growth` (columns ``size``, ``median_ms``).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (table, slope) in curves.items():
        ax.plot(table["size"], table["median_ms"], marker="o", ms=4, label=f"{name} (slope {slope:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("median time (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _finish(fig, None, path)


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
