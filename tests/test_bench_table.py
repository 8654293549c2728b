"""The table of every stage against its bound (issue 19): one file, ``results/bench.json``, behind the README's
generated ``bench`` block and notebook 05's table.

(a) the README's block is what the committed file gives, and a changed time in the file makes it differ; (b) the table
has a cell for every column of every row, no NaN, every row a status, optional columns (recall, peak memory) shown
where a row has them; (c) ``benchmarks/bench_table.py`` adds one "not measured" row per GPU-capable stage without a
CUDA row; (d) notebook 05's cell reads the file through the library, with no typed number.
"""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from sglib.experiments import report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOTEBOOK = ROOT / "notebooks" / "05_timing.ipynb"
BLOCK = {"bench": report.BLOCKS["bench"]}


def _bench_block(text: str) -> str:
    found = [m.group(0) for m in report.GENERATED_BLOCK.finditer(text) if m.group("name") == "bench"]
    assert len(found) == 1, "the README has no (or more than one) generated 'bench' block"
    return found[0]


def test_readme_bench_block_is_what_results_bench_json_gives():
    block = _bench_block(README.read_text(encoding="utf-8"))
    new, differences = report.render(block, ROOT / "results", BLOCK)
    assert differences == [], [d.message() for d in differences]
    assert new == block


def test_a_changed_time_in_the_file_changes_the_block(tmp_path):
    shutil.copy(ROOT / "results" / "bench.json", tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    row = next(r for r in data["rows"] if r.get("time_s") is not None)
    row["time_s"] *= 2
    (tmp_path / "bench.json").write_text(json.dumps(data))
    differences = report.render(_bench_block(README.read_text(encoding="utf-8")), tmp_path, BLOCK)[1]
    assert len(differences) == 1 and differences[0].name == "bench"


def _rows_file(tmp_path, rows, **meta):
    (tmp_path / "bench.json").write_text(json.dumps({"device": "cpu", **meta, "rows": rows}))
    return tmp_path


MEASURED = {"stage": "evaluation (streaming) 70 queries N=1000", "threads": 2, "device": "cpu", "time_s": 0.5,
            "bound": "full arg-sort", "bound_s": 2.0, "ratio": 0.25, "target": "<= 1", "status": "PASS",
            "peak_mib": 3.0, "bound_peak_mib": 300.0}
IVF = {"stage": "IVF-PQ N=1000", "threads": 2, "device": "cpu", "time_s": 0.01, "bound": "exact knn", "bound_s": 0.5,
       "ratio": 0.02, "target": "<= 1/20", "status": "PASS", "recall": 0.957}
GPU = {"stage": "exact knn on CUDA", "device": "cuda", "status": "not measured: no GPU lent to this run"}


def test_frame_has_every_cell_and_the_optional_columns(tmp_path):
    frame = report.bench_frame(_rows_file(tmp_path, [MEASURED, IVF, GPU], written="2026-01-01 00:00 UTC"))
    assert list(frame.columns) == list(report.BENCH_COLUMNS)
    assert not frame.isna().any().any() and (frame["status"].str.len() > 0).all()
    assert frame.loc[0, "peak MiB (stage / bound)"] == "3 / 300" and frame.loc[0, "recall@100"] == "-"
    assert frame.loc[1, "recall@100"] == "0.9570" and frame.loc[1, "ratio"] == "0.020"
    assert frame.loc[2, "time (s)"] == "-" and frame.loc[2, "status"].startswith("not measured")
    assert "written 2026-01-01 00:00 UTC" in report.bench_source(tmp_path)
    assert "not recorded" in report.bench_source(_rows_file(tmp_path, [MEASURED]))


def _bench_table_module():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks" / "bench_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_not_measured_row_per_gpu_stage_without_a_cuda_row():
    bt = _bench_table_module()
    cpu_only = [{"stage": "rerank SuperGlobal M=400", "device": "cpu"}, {"stage": "knn N=1", "device": "cpu"}]
    rows = bt.gpu_rows(cpu_only, cuda=False)
    assert len(rows) == len(bt.GPU_STAGES) and all(r["status"] == "not measured: no GPU lent to this run"
                                                   for r in rows)
    with_cuda = cpu_only + [{"stage": "rerank SuperGlobal M=400", "device": "cuda"}]
    rows = bt.gpu_rows(with_cuda, cuda=True)
    assert len(rows) == len(bt.GPU_STAGES) - 1 and not any(r["stage"].startswith("reranking") for r in rows)
    assert all("no CUDA row" in r["status"] for r in rows)


def test_notebook_05_reads_the_file_through_the_library():
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    bench = [c for c in cells if "bench_frame(" in "".join(c["source"])]
    assert len(bench) == 1, "notebook 05 has no (or more than one) cell showing results/bench.json via bench_frame"
    source = "".join(bench[0]["source"])
    assert "bench_source(" in source, "the cell must say which file, device and time the table comes from"
    assert not re.search(r"\d", source), f"the bench cell types a number instead of reading the file:\n{source}"


if __name__ == "__main__":
    pytest.main([__file__])
