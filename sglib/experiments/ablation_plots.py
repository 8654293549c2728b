"""Figures and tables of the pooling ablation grid (notebook 01), drawn honestly.

Differences are shown as differences: each family is plotted as its mAP change, in points, from the setting it
modifies (GeM p = 3 for the p sweep's reference line, GeM+ alone for Regional-GeM, one scale for Scale-GeM), on a
zero-based axis with the sign visible, so tenths of a point do not look like a colour gradient. Integer
parameters are labelled as integers, and combinations that do not exist (one scale has no aggregation) are
left out rather than shown as NaN. The chosen setting of :class:`sglib.experiments.widgets.SettingExplorer` can
be highlighted on each figure.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

FAMILIES = ("gem", "regional", "scale")
GEM_P3 = "gem p=3"
GEM_PLUS = "gem p=4.6"


def _family(scores: pd.DataFrame, family: str) -> pd.DataFrame:
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    rows = scores[scores.family == family]
    if rows.empty:
        raise ValueError(f"scores: no rows of family {family!r} (score_grid over pooling_grid() has all three)")
    return rows


MIN_SPAN = 1.0   # points: the y axis spans at least +-1 point, so changes of a few tenths look like a few tenths


def _honest_ylim(ax) -> None:
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -MIN_SPAN), max(hi, MIN_SPAN))


def _highlight_bar(ax, bars, keys, highlight):
    for bar, key in zip(bars, keys):
        if key == highlight:
            bar.set_edgecolor("black")
            bar.set_linewidth(2.5)


def plot_gem_sweep(scores: pd.DataFrame, highlight: str | None = None):
    """E/M/H mAP against the GeM exponent p (log axis), GeM+ (4.6) marked, the chosen setting highlighted."""
    gem = _family(scores, "gem").sort_values("gem_p")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for protocol in ("easy", "medium", "hard"):
        ax.plot(gem.gem_p, gem[protocol], marker="o", label=protocol.capitalize())
    ax.axvline(4.6, color="grey", ls="--", lw=1)
    ax.text(4.7, 0.02, "GeM+ (4.6)", color="grey", fontsize=8, transform=ax.get_xaxis_transform())
    if highlight in gem.index:
        ax.axvline(gem.loc[highlight, "gem_p"], color="black", lw=2, alpha=0.4, label=f"chosen: {highlight}")
    ax.set_xscale("log")
    ax.set_xticks(list(gem.gem_p))
    ax.set_xticklabels([f"{p:g}" for p in gem.gem_p])
    ax.set_xlabel("GeM p")
    ax.set_ylabel("mAP (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def regional_gain_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Regional-GeM rows: kernel (int), regional p, E/M/H mAP and Medium / Hard change from GeM+ alone (points)."""
    reg = _family(scores, "regional").copy()
    base = scores.loc[GEM_PLUS]
    reg["kernel"] = reg["kernel"].astype(int)
    reg["medium vs GeM+"] = reg.medium - base.medium
    reg["hard vs GeM+"] = reg.hard - base.hard
    return reg[["kernel", "regional_p", "easy", "medium", "hard", "medium vs GeM+", "hard vs GeM+"]].round(2)


def plot_regional_gain(scores: pd.DataFrame, highlight: str | None = None):
    """Medium mAP change from GeM+ alone, grouped by kernel (integers) with one bar per regional p."""
    table = regional_gain_table(scores)
    kernels, ps = sorted(table.kernel.unique()), sorted(table.regional_p.unique())
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / len(ps)
    cmap = plt.get_cmap("viridis")
    for j, p in enumerate(ps):
        part = table[table.regional_p == p].set_index("kernel").reindex(kernels)
        keys = [f"regional k={k} p={p:g}" for k in kernels]
        bars = ax.bar(np.arange(len(kernels)) + (j - (len(ps) - 1) / 2) * width, part["medium vs GeM+"], width,
                      color=cmap(j / max(1, len(ps) - 1)), label=f"regional p = {p:g}")
        _highlight_bar(ax, bars, keys, highlight)
    ax.axhline(0, color="black", lw=0.8)
    _honest_ylim(ax)
    ax.set_xticks(range(len(kernels)))
    ax.set_xticklabels([f"{k} x {k}" for k in kernels])
    ax.set_xlabel("Regional-GeM kernel")
    ax.set_ylabel("Medium mAP change from GeM+ (points)")
    ax.set_title(f"GeM+ alone: Medium {scores.loc[GEM_PLUS, 'medium']:.2f}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def scale_gain_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Scale-GeM rows that exist (one scale has one aggregation): scales, aggregation, E/M/H mAP and the Medium /
    Hard change from one scale (points)."""
    sc = _family(scores, "scale").copy()
    single = sc[sc.scales == "1"]
    if single.empty:
        raise ValueError("scores: the scale family has no single-scale row to compare with")
    base = single.iloc[0]
    sc["medium vs 1 scale"] = sc.medium - base.medium
    sc["hard vs 1 scale"] = sc.hard - base.hard
    names = {"max": "max (p = inf)", "mean": "mean"}
    sc["aggregation"] = sc["agg"].map(lambda a: names[a] if a in names else f"p = {float(a):g}")
    return sc[["scales", "aggregation", "easy", "medium", "hard", "medium vs 1 scale", "hard vs 1 scale"]].round(2)


def plot_scale_gain(scores: pd.DataFrame, highlight: str | None = None):
    """Medium mAP change from one scale, per set of scales, one bar per aggregation present."""
    table = scale_gain_table(scores)
    multi = table[table.scales != "1"]
    sets, aggs = list(dict.fromkeys(multi.scales)), list(dict.fromkeys(multi.aggregation))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / len(aggs)
    for j, agg in enumerate(aggs):
        part = multi[multi.aggregation == agg]
        x = [sets.index(s) + (j - (len(aggs) - 1) / 2) * width for s in part.scales]
        bars = ax.bar(x, part["medium vs 1 scale"], width, label=agg)
        _highlight_bar(ax, bars, list(part.index), highlight)
    ax.axhline(0, color="black", lw=0.8)
    _honest_ylim(ax)
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets)
    ax.set_xlabel("input scales")
    ax.set_ylabel("Medium mAP change from 1 scale (points)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, title="aggregation", title_fontsize=7)
    fig.tight_layout()
    return fig


FAMILY_PLOTS = {"gem": plot_gem_sweep, "regional": plot_regional_gain, "scale": plot_scale_gain}

__all__ = ["FAMILIES", "GEM_P3", "GEM_PLUS", "plot_gem_sweep", "regional_gain_table", "plot_regional_gain",
           "scale_gain_table", "plot_scale_gain", "FAMILY_PLOTS"]
