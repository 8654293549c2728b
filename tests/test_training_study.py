"""The training study's tables, plots and loss picker, on hand-made (SYNTHETIC) results and logs."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from sglib.experiments import training_study as ts
from sglib.experiments.plots import plot_p_sweep, plot_training_curves
from sglib.experiments.tables import MODULE_SETTINGS, RERANK_ROW
from sglib.experiments.widgets import LossCurves, run_summary

PS = (1.0, 3.0, 4.6, 8.0)


def synthetic_result():
    rng = np.random.default_rng(0)
    rows = []

    def add(network, setting):
        e, m, h = sorted(rng.uniform(20, 90, 3))[::-1]
        rows.append({"network": network, "setting": setting, "easy": e, "medium": m, "hard": h})

    for net in (ts.BASELINE, "arcface: fine-tuned", "softmax: fine-tuned"):
        for s in (*MODULE_SETTINGS, RERANK_ROW, *(f"gem p={p:g}" for p in PS)):
            add(net, s)
    for loss in ("arcface", "softmax"):
        add(f"{loss}: before training", ts.TRAINED_P_ROW)
        add(f"{loss}: fine-tuned", ts.TRAINED_P_ROW)
    maps = pd.DataFrame(rows).set_index(["network", "setting"])
    return ts.StudyResult(maps, {"arcface": 2.6, "softmax": 3.4}, {"name": "synthetic", "gem_ps": list(PS),
                                                                   "losses": ["arcface", "softmax"]})


def synthetic_log(seed, p_end):
    rng = np.random.default_rng(seed)
    steps = np.arange(0, 41)
    val = np.where(steps % 10 == 0, np.linspace(0.5, 0.7, 41), np.nan)
    return pd.DataFrame({"step": steps, "loss": np.r_[np.nan, rng.uniform(0.5, 3, 40)],
                         "gem_p": np.linspace(3.0, p_end, 41), "val_map": val})


def test_finding_recomputed_from_the_sweep(tmp_path):
    r = synthetic_result()
    finding = ts.p_finding(r)
    for loss, p in r.learned_p.items():
        col = {q: r.maps.loc[(f"{loss}: fine-tuned", f"gem p={q:g}"), "medium"] for q in PS}
        best = max(col, key=col.get)
        trained = r.maps.loc[(f"{loss}: fine-tuned", ts.TRAINED_P_ROW), "medium"]
        assert finding.loc[loss, "best test p"] == best
        assert finding.loc[loss, "mAP at best p"] == pytest.approx(col[best])
        assert finding.loc[loss, "GeM+ - learned p (mAP)"] == pytest.approx(col[4.6] - trained, abs=0.01)
        assert finding.loc[loss, "best p - learned p"] == pytest.approx(best - p, abs=1e-3)
    ba = ts.before_after(r)
    assert list(ba.index) == [ts.BASELINE + " (GeM p=3)", "arcface: before", "arcface: after", "softmax: before",
                              "softmax: after"]
    assert ba.loc["arcface: after", "hard"] == r.maps.loc[("arcface: fine-tuned", ts.TRAINED_P_ROW), "hard"]
    mods = ts.module_rows(r)
    assert mods.shape == (len(MODULE_SETTINGS) + 1, 9) and not mods.isna().any().any()
    r.save(tmp_path / "s.json")
    again = ts.StudyResult.load(tmp_path / "s.json")
    pd.testing.assert_frame_equal(again.maps, r.maps)
    assert again.learned_p == r.learned_p
    (tmp_path / "bad.json").write_text('{"maps": 3}')
    with pytest.raises(ValueError, match="not a training-study result"):
        ts.StudyResult.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="run `python -m sglib train-study`"):
        ts.StudyResult.load(tmp_path / "missing.json")


def test_plots_draw_what_they_are_given():
    r = synthetic_result()
    fig = plot_p_sweep(ts.p_sweep(r), r.learned_p)
    ax = fig.axes[0]
    assert len(ax.get_lines()) >= 3
    assert [float(v) for v in ax.get_lines()[0].get_xdata()] == list(PS)
    logs = {"arcface": synthetic_log(0, 2.5), "softmax": synthetic_log(1, 3.2)}
    fig = plot_training_curves(logs, highlight="softmax")
    p_lines = fig.axes[1].get_lines()
    assert [line.get_label() for line in p_lines] == ["arcface", "softmax"]
    assert p_lines[1].get_linewidth() > p_lines[0].get_linewidth()
    assert float(p_lines[0].get_ydata()[-1]) == pytest.approx(2.5)
    assert len(fig.axes[2].get_lines()[0].get_xdata()) == 5          # validation points only
    with pytest.raises(ValueError, match="no run named 'cosface'"):
        plot_training_curves(logs, highlight="cosface")


def test_loss_picker_callback_changes_what_is_shown():
    logs = {"arcface": synthetic_log(0, 2.5), "softmax": synthetic_log(1, 3.2)}
    view = LossCurves(logs)
    view.widget()
    assert list(view.summary.index) == ["arcface"] and view.summary.loc["arcface", "p at end"] == 2.5
    first = view.figure
    view.picker.value = "softmax"                     # what moving the dropdown does
    assert list(view.summary.index) == ["softmax"] and view.summary.loc["softmax", "p at end"] == 3.2
    assert view.figure is not first
    bold = max(view.figure.axes[1].get_lines(), key=lambda line: line.get_linewidth())
    assert bold.get_label() == "softmax"
    s = run_summary(logs["arcface"])
    assert s["val mAP at start"] == 50.0 and s["val mAP at end"] == 70.0 and s["steps"] == 40
    with pytest.raises(ValueError, match="no training logs"):
        LossCurves({})


def test_findings_read_every_number_from_the_result():
    r = synthetic_result()
    r.plan["config"] = {"p_init": 3.0}
    lines = ts.findings(r)
    assert len(lines) == 2 * len(r.learned_p) + 1            # a sentence per loss, then per network
    ba, finding = ts.before_after(r), ts.p_finding(r)
    gain = ba.loc["softmax: after"] - ba.iloc[0]
    softmax = lines[1]
    assert softmax.startswith("softmax: p went from 3 to 3.40, at or above")   # 3.4 learned: signed wording
    assert f"Medium {gain.medium:+.1f}, Hard {gain.hard:+.1f}" in softmax
    assert f"{finding.loc['softmax', 'GeM+ - learned p (mAP)']:+.2f} Medium mAP" in softmax
    mods = ts.module_rows(r)[ts.BASELINE]
    step = mods.loc[RERANK_ROW, "medium"] - mods.loc[list(MODULE_SETTINGS)[-1], "medium"]
    word = "no effect" if abs(round(step, 2)) < 0.5 else f"{'gains' if step > 0 else 'costs'} {step:+.1f}"
    assert lines[2].startswith(f"{ts.BASELINE}, Medium: ") and lines[2].endswith(f"{RERANK_ROW} {word}")
