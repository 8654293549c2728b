"""sglib.experiments.committed: a run against the committed results/demo.json, on the same CPU and on another."""
import json

import pandas as pd
import pytest

from sglib import cli
from sglib.experiments import committed as cm

ROWS = ["GeM (p=3)", "+ SuperGlobal rerank"]


def write_demo(folder, values, machine=None):
    """A demo.json with two benchmarks whose rows hold ``values`` (easy, medium, hard) per row."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {r: dict(zip(("easy", "medium", "hard"), v)) for r, v in zip(ROWS, values)}
    (folder / "demo.json").write_text(json.dumps({"bench": rows, "other": rows}))
    if machine is not None:
        (folder / cm.MACHINE_FILE).write_text(json.dumps(machine))
    return folder


def table(values):
    return pd.DataFrame(values, index=ROWS, columns=["Easy", "Medium", "Hard"])


def test_spread_is_the_largest_difference_between_any_two_runs(tmp_path):
    a = write_demo(tmp_path / "a", [(80.0, 60.0, 30.0), (81.0, 62.0, 35.0)])
    b = write_demo(tmp_path / "b", [(80.0, 60.3, 30.0), (81.0, 62.0, 35.1)])
    c = write_demo(tmp_path / "c", [(80.0, 59.8, 30.0), (81.0, 62.0, 35.0)], machine={"cpu": "x"})
    got = cm.measure_spread({"a": a, "b": b, "c": c})
    # naive: every pair, every row and protocol
    assert got["spread"]["bench"] == pytest.approx(0.5)          # b vs c on Medium: 60.3 - 59.8
    assert got["runs"] == {"a": None, "b": None, "c": {"cpu": "x"}}
    assert len(got["pairs"]) == 3 * 2
    with pytest.raises(ValueError, match="two or more"):
        cm.measure_spread({"a": a})
    d = write_demo(tmp_path / "d", [(80.0, 60.0, 30.0)])            # one row fewer: not comparable
    with pytest.raises(ValueError, match="other rows"):
        cm.measure_spread({"a": a, "d": d})
    with pytest.raises(ValueError, match="demo.json not found"):
        cm.measure_spread({"a": a, "none": tmp_path / "none"})


def test_same_cpu_is_held_to_rounding_and_another_cpu_to_the_measured_spread(tmp_path):
    committed = write_demo(tmp_path / "results", [(80.0, 60.0, 30.0), (81.0, 62.0, 35.0)],
                           machine=cm.cpu_fingerprint())
    near = table([(80.0, 60.0, 30.0), (81.0, 62.1, 35.0)])
    far = table([(80.0, 60.0, 30.0), (81.0, 62.6, 35.0)])
    same = cm.compare_with_committed(near, committed, "bench")
    assert same.same_cpu and same.tolerance == cm.SAME_CPU_TOLERANCE and same.holds
    assert not cm.compare_with_committed(far, committed, "bench").holds

    # written on another CPU: without a measured spread the comparison refuses and names the command
    (committed / cm.MACHINE_FILE).write_text(json.dumps({"cpu": "another"}))
    with pytest.raises(ValueError, match="python -m sglib cpu-spread"):
        cm.compare_with_committed(far, committed, "bench")
    (committed / cm.SPREAD_FILE).write_text(json.dumps({"spread": {"bench": 0.41}}))
    other = cm.compare_with_committed(far, committed, "bench")
    assert not other.same_cpu and other.tolerance == pytest.approx(0.7)   # ceil(1.5 x 0.41, 0.1)
    assert other.gap == pytest.approx(0.6) and other.holds and "0.41" in other.reason
    assert not cm.compare_with_committed(table([(80.0, 60.0, 30.0), (81.0, 62.8, 35.0)]), committed, "bench").holds
    (committed / cm.SPREAD_FILE).write_text(json.dumps({"spread": {"bench": 0.4}}))
    assert cm.compare_with_committed(far, committed, "bench").tolerance == pytest.approx(0.6)   # not 0.7
    with pytest.raises(ValueError, match="no spread for 'other'"):
        cm.compare_with_committed(far, committed, "other")
    with pytest.raises(ValueError, match="rows"):
        cm.compare_with_committed(far.iloc[::-1], committed, "bench")


def test_cpu_spread_command_writes_the_file(tmp_path, capsys):
    a = write_demo(tmp_path / "a", [(80.0, 60.0, 30.0), (81.0, 62.0, 35.0)])
    b = write_demo(tmp_path / "b", [(80.0, 60.0, 30.2), (81.0, 62.0, 35.0)])
    out = tmp_path / "spread.json"
    assert cli.main(["cpu-spread", "--run", f"a={a}", "--run", f"b={b}", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["spread"] == {"bench": pytest.approx(0.2), "other": pytest.approx(0.2)}
    assert cli.main(["cpu-spread", "--run", f"a={a}", "--run", f"a={b}", "--out", str(out)]) == 2   # a label twice
    with pytest.raises(SystemExit):
        cli.main(["cpu-spread", "--run", "no-label"])
    assert "LABEL=RESULTS_DIR" in capsys.readouterr().err
