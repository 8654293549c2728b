"""Experiment code shared by the notebooks and ``make demo``: the training-split whitening and figures."""
import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from sglib.bundled import build_synthetic_views
from sglib.bundled.whitening import fit_training_whitening, training_images
from sglib.models import load_backbone
from sglib.scale.extract import model_key

from test_benchmarks import TINY


@pytest.fixture(scope="module")
def tiny_root(photos, tmp_path_factory):
    """A data root holding a tiny synthetic-views build (real photos, few small views) and its training split."""
    root = tmp_path_factory.mktemp("root")
    build_synthetic_views(root / "datasets", photos, seed=3, **TINY)
    return root


def test_training_whitening_is_the_same_when_fitted_twice(tiny_root, tmp_path):
    model = load_backbone("efficientnet_lite0")
    first = fit_training_whitening(model, tiny_root, tmp_path / "cache", progress=False)
    model.head = first                      # what a notebook cell does; running it again must change nothing
    key = model_key(model)
    second = fit_training_whitening(model, tiny_root, tmp_path / "cache", progress=False)
    assert torch.equal(first.projection, second.projection) and torch.equal(first.mean, second.mean)
    model.head = second
    assert model_key(model) == key
    assert len(list((tmp_path / "cache").iterdir())) == 1       # one training-feature extraction, reused


def test_training_whitening_is_fitted_on_every_same_scene_pair_and_no_other(tiny_root, tmp_path, monkeypatch):
    import numpy as np
    from sglib.bundled import whitening as bundled
    paths, labels = training_images(tiny_root)
    feats = np.random.default_rng(0).standard_normal((len(paths), 8))      # stands in for the extraction
    monkeypatch.setattr(bundled, "cached_features", lambda *args, **kwargs: feats)
    seen = []
    monkeypatch.setattr(bundled, "fit_learned_whitening", lambda X, pairs, **kw: seen.append(pairs) or
                        bundled.Whitening(np.zeros(8), np.eye(8), kind="lw"))
    fit_training_whitening(load_backbone("efficientnet_lite0"), tiny_root, tmp_path / "cache", progress=False)
    want = {(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]}
    assert want and set(map(tuple, seen[0].tolist())) == want and len(seen[0]) == len(want)


def test_whitening_source_follows_the_training_images(tiny_root, tmp_path):
    model = load_backbone("efficientnet_lite0")
    before = fit_training_whitening(model, tiny_root, tmp_path / "cache", progress=False).source
    path = training_images(tiny_root)[0][0]
    with open(path, "ab") as f:             # an edited training image: another whitening, another key
        f.write(b"\0")
    after = fit_training_whitening(model, tiny_root, tmp_path / "cache", progress=False).source
    assert before != after


def test_a_figure_shows_in_a_jupyter_kernel(monkeypatch):
    # a kernel as JupyterLab starts it: no MPLBACKEND from the caller, so the inline backend applies
    monkeypatch.delenv("MPLBACKEND", raising=False)
    cell = nbformat.v4.new_code_cell("import sglib.experiments.plots\n"
                                     "import matplotlib.pyplot as plt\n"
                                     "fig, ax = plt.subplots(); ax.plot([0, 1], [1, 0])")
    nb = nbformat.v4.new_notebook(cells=[cell])
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    kinds = [set(out.get("data", {})) for out in nb.cells[0].outputs if out.output_type == "display_data"]
    assert any("image/png" in k for k in kinds), f"no image in the cell's outputs: {nb.cells[0].outputs}"


def test_paper_column_only_where_the_paper_has_a_number():
    from sglib.experiments.tables import PAPER_R101_RERANK_HARD, RERANK_ROW, with_paper_column
    table = pd.DataFrame({"Easy": [1.0, 2.0], "Medium": [3.0, 4.0], "Hard": [5.0, 6.0]}, index=["GeM (p=3)", RERANK_ROW])
    ours = with_paper_column(table, "roxford5k", checkpoint="cvnet.pyth", depth=101)
    assert ours.loc[RERANK_ROW, "paper Hard"] == PAPER_R101_RERANK_HARD["roxford5k"]
    assert ours.loc["GeM (p=3)", "paper Hard"] == "n/a" and not ours.isna().any().any()
    for kwargs in ({"checkpoint": None}, {"checkpoint": "x", "depth": 50}):
        assert (with_paper_column(table, "roxford5k", **kwargs)["paper Hard"] == "n/a").all()
    assert (with_paper_column(table, "synthetic_views", "x")["paper Hard"] == "n/a").all()


def test_module_ladder_changes_one_thing_per_row():
    """The paper's ladder: every row differs from the row before in exactly one setting (with one scale the
    aggregation over scales means nothing, so it is not counted), and Scale-GeM is the mean -> max step."""
    import dataclasses
    from sglib.experiments.tables import MODULE_SETTINGS, MULTISCALE_ROW, SCALE_GEM_ROW

    def effective(st):
        d = dataclasses.asdict(st)
        if len(st.scales) == 1:
            d["scale_agg"] = None
        if not st.regional:
            d.pop("regional_p"), d.pop("regional_kernel")
        return d

    rows = list(MODULE_SETTINGS.items())
    for (prev_name, prev), (name, st) in zip(rows, rows[1:]):
        a, b = effective(prev), effective(st)
        changed = {k for k in set(a) & set(b) if a[k] != b[k]}   # regional_p / kernel exist only when it is on
        if name == MULTISCALE_ROW:
            changed -= {"scale_agg"}          # one scale -> 3 scales brings an aggregation with it
        assert len(changed) == 1, (prev_name, name, changed)
    assert MODULE_SETTINGS[SCALE_GEM_ROW].scale_agg == "max"
    assert effective(rows[-2][1])["scale_agg"] == "mean" and len(rows[-2][1].scales) == 3


def test_ladder_effects_and_their_words(tmp_path):
    import json
    from sglib.experiments.tables import committed_table, effect_words, ladder_effects
    table = pd.DataFrame({"Easy": [80.0, 82.5, 82.2], "Medium": [60.0, 59.0, 61.0], "Hard": [30.0, 30.4, 29.0]},
                         index=["a", "b", "c"])
    eff = ladder_effects(table)
    assert list(eff.index) == ["b", "c"] and eff.loc["b", "Easy"] == 2.5 and eff.loc["c", "Hard"] == -1.4
    words = effect_words(eff)
    assert words.loc["b", "Easy"] == "gains +2.5" and words.loc["b", "Hard"] == "no effect"
    assert words.loc["b", "Medium"] == "costs -1.0"
    (tmp_path / "demo.json").write_text(json.dumps({"bench": {"a": {"easy": 1, "medium": 2, "hard": 3}}}))
    assert committed_table(tmp_path, "bench").loc["a", "Hard"] == 3
    with pytest.raises(ValueError, match="run make demo"):
        committed_table(tmp_path, "other")


def test_page_banner_names_the_run_size_and_its_sources(tmp_path):
    from sglib.experiments.pages import banner_text
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text("{}")
    small = banner_text(False, "python -m sglib x", ["results/x.json"], root=tmp_path)
    assert "CI-size run" in small and "`results/x.json`" in small and "python -m sglib x" in small
    assert "Full-size run" in banner_text(True, "cmd", [], root=tmp_path)
    with pytest.raises(ValueError, match="run `cmd`"):
        banner_text(False, "cmd", ["results/missing.json"], root=tmp_path)
