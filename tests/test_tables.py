"""Experiment code shared by the notebooks and ``make demo``: the training-split whitening and figures."""
import nbformat
import pytest
import torch
from nbclient import NotebookClient

from sglib.embedded import build_synthetic_views
from sglib.experiments.tables import fit_training_whitening, training_images
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
    import pandas as pd
    from sglib.experiments.tables import PAPER_R101_RERANK_HARD, RERANK_ROW, with_paper_column
    table = pd.DataFrame({"Easy": [1.0, 2.0], "Medium": [3.0, 4.0], "Hard": [5.0, 6.0]}, index=["GeM (p=3)", RERANK_ROW])
    ours = with_paper_column(table, "roxford5k", checkpoint="cvnet.pyth", depth=101)
    assert ours.loc[RERANK_ROW, "paper Hard"] == PAPER_R101_RERANK_HARD["roxford5k"]
    assert ours.loc["GeM (p=3)", "paper Hard"] == "n/a" and not ours.isna().any().any()
    for kwargs in ({"checkpoint": None}, {"checkpoint": "x", "depth": 50}):
        assert (with_paper_column(table, "roxford5k", **kwargs)["paper Hard"] == "n/a").all()
    assert (with_paper_column(table, "synthetic_views", "x")["paper Hard"] == "n/a").all()
