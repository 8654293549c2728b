"""The notebooks' outputs policy: committed without outputs (``make html`` renders executed copies into docs/),
one kernel, a ``parameters`` cell, no absolute paths; and the checker of the rendered pages."""
import json
import sys
from pathlib import Path

import pytest

# the docs checker is a repository tool, not part of the library
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from docs_check import check_page  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs_one_kernel_and_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} holds outputs: clear them (jupyter nbconvert --clear-output --inplace {path.name}); "
        "`make html` renders executed copies")
    assert nb["metadata"]["kernelspec"]["name"] == "python3", f"{path.name}: use the python3 kernel"
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), f"{path.name}: no parameters cell"
    source = "".join("".join(c["source"]) for c in nb["cells"])
    # this machine's folders: the one holding the repository, and the home folder
    for prefix in (str(path.parents[2]) + "/", str(Path.home()) + "/"):
        assert prefix not in source, f"{path.name} names an absolute path ({prefix}...): use paths relative to notebooks/"


def test_docs_check_finds_leaks_reprs_and_missing_figures(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "a.ipynb").write_text('{"cells": [{"source": "fig = plot_x()"}]}')
    page = tmp_path / "a.html"
    page.write_text('<img src="data:image/png;base64,AAA"> ok')
    assert check_page(page, notebooks, ["/abs/repo"]) == []
    # a text output as nbconvert's lab template writes it
    page.write_text('<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="text/plain">'
                    "<pre>Text(0.5, 1.0, 'title')</pre></div> /abs/repo/data")
    problems = check_page(page, notebooks, ["/abs/repo"])
    assert len(problems) == 3 and "absolute path" in problems[0] and "no image" in problems[2]
