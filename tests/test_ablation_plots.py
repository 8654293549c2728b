"""Ablation figures and the setting explorer (notebook 01) on a SYNTHETIC score table over the real grid keys."""
import numpy as np
import pandas as pd
import pytest

from sglib.experiments.ablation_plots import (plot_gem_sweep, plot_regional_gain, plot_scale_gain,
                                              regional_gain_table, scale_gain_table)
from sglib.experiments.ablations import pooling_grid
from sglib.experiments.widgets import SettingExplorer


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    rows = []
    for key, (desc, _) in pooling_grid().items():
        e, m, h = 85 + rng.normal(), 60 + rng.normal(), 32 + rng.normal()
        rows.append({"key": key, **desc, "easy": e, "medium": m, "hard": h})
    return pd.DataFrame(rows).set_index("key")


def test_gain_tables_recomputed_naively(scores):
    reg = regional_gain_table(scores)
    assert reg.kernel.dtype.kind == "i" and not reg.isna().any().any()
    key = "regional k=5 p=2.5"
    assert reg.loc[key, "medium vs GeM+"] == round(scores.loc[key, "medium"] - scores.loc["gem p=4.6", "medium"], 2)
    sc = scale_gain_table(scores)
    assert not sc.isna().any().any() and len(sc) == (scores.family == "scale").sum()
    assert set(sc[sc.scales == "1"].aggregation) == {"max (p = inf)"}          # one scale: one aggregation only
    key = "scales 3 scales 10.0"
    assert sc.loc[key, "aggregation"] == "p = 10"
    assert sc.loc[key, "hard vs 1 scale"] == round(scores.loc[key, "hard"] - scores.loc["scales 1 max", "hard"], 2)


def test_figures_show_integers_a_point_of_range_and_the_highlight(scores):
    fig = plot_regional_gain(scores, highlight="regional k=7 p=4")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3 x 3", "5 x 5", "7 x 7"]
    lo, hi = ax.get_ylim()
    assert lo <= -1 and hi >= 1
    assert sum(bar.get_linewidth() > 2 for bar in ax.patches) == 1
    fig = plot_scale_gain(scores, highlight="scales 1+1.41 mean")
    assert sum(bar.get_linewidth() > 2 for bar in fig.axes[0].patches) == 1
    fig = plot_gem_sweep(scores, highlight="gem p=8")
    assert any("chosen: gem p=8" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    with pytest.raises(ValueError, match="family"):
        regional_gain_table(scores[scores.family != "regional"])


def test_setting_explorer_callback(scores):
    view = SettingExplorer(scores)
    table, _ = view.render("gem p=3")
    assert (table.loc["difference (points)"] == 0).all() and len(table) == 3
    table, _ = view.render("scales 3 scales max")
    expect = scores.loc["scales 3 scales max", "medium"] - scores.loc["gem p=3", "medium"]
    assert table.loc["difference (points)", "Medium"] == round(expect, 2)
    view.family.value = "regional"                                   # the slider follows the family
    assert view.setting.value.startswith("regional") and view.table.index[0] == f"chosen: {view.setting.value}"
    with pytest.raises(ValueError, match="no setting"):
        view.render("gem p=99")
    with pytest.raises(ValueError, match="gem p=3"):
        SettingExplorer(scores.drop(index="gem p=3"))


def test_shown_figures_are_closed_so_no_stale_copy_is_drawn_below_the_widget(scores):
    import matplotlib.pyplot as plt
    plt.close("all")
    view = SettingExplorer(scores)
    view.widget()
    view.setting.value = "gem p=8"
    assert plt.get_fignums() == [], "a displayed figure left open is drawn again by the inline backend"
