"""`python -m sglib evaluate` end to end on a tiny revisitop-format dataset built here.

The dataset (conftest's ``tiny_dataset``) has synthetic images (random blobs); the network is the golden
random ResNet-50 in CVNet's layout. The CLI's mAP must equal the one recomputed directly from
the library's pieces, and a second run must come from the cache.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sglib.data.revisitop import load_revisitop
from sglib.evaluation.protocol import revisited, summary
from sglib.models import load_cvnet
from sglib.data.preprocess import load_network_input
from sglib.method.rerank import superglobal

from conftest import TINY_N_DB as N_DB, TINY_N_Q as N_Q


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sglib", *map(str, args)], capture_output=True, text=True)


def test_evaluate_end_to_end_matches_library(tiny_dataset, golden_checkpoint, tmp_path):
    out = tmp_path / "res.json"
    args = ["evaluate", "--data-root", tiny_dataset, "--dataset", "tiny_synthetic", "--checkpoint",
            golden_checkpoint, "--depth", "50", "--M", "6", "--K", "2", "--json", out, "--threads", "1"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "Medium" in first.stdout and "mAP" in first.stdout
    record = json.loads(out.read_text())

    ds = load_revisitop(tiny_dataset, "tiny_synthetic")
    net = load_cvnet(golden_checkpoint, depth=50)
    with torch.no_grad():
        x = torch.cat([net.describe(load_network_input(ds.db_path(i))) for i in range(N_DB)]).numpy()
        q = torch.cat([net.describe(load_network_input(ds.query_path(k), ds.query_bbx(k))) for k in range(N_Q)]).numpy()
    ranks = np.argsort(-q @ x.T, axis=1, kind="stable")
    expected = summary(revisited(superglobal(q, x, ranks, M=6, K=2), ds.gnd))
    assert record["map"] == pytest.approx(expected, abs=1e-6)

    cache = tiny_dataset / "cache"
    folders = sorted(p.name for p in cache.iterdir())
    second = run_cli(*args, "--no-rerank")          # same features: no new cache folder
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.iterdir()) == folders
    third = run_cli(*args, "--no-regional")          # another setting: a new cache entry
    assert third.returncode == 0, third.stderr
    assert len(list(cache.iterdir())) > len(folders)


def test_evaluate_reports_bad_input_clearly(tiny_dataset, golden_checkpoint, tmp_path):
    r = run_cli("evaluate", "--data-root", tmp_path, "--dataset", "tiny_synthetic", "--checkpoint", golden_checkpoint)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("evaluate", "--data-root", tiny_dataset, "--dataset", "tiny_synthetic", "--checkpoint", tmp_path / "x.pyth")
    assert r.returncode == 2 and "weights file not found" in r.stderr


@pytest.mark.parametrize("flag,value,expected", [
    ("--relu-plus", "bogus", "expected one of on, off, none"),
    ("--gem-p", "0", "finite number > 0"),
    ("--gem-p", "nan", "finite number > 0"),
    ("--scale-agg", "0", "max, mean or a finite number > 0"),
    ("--scales", "0.001", "factors in [0.05, 4]"),
    ("--max-side", "0", "integer >= 16"),
    ("--threads", "-1", "integer >= 1"),
    ("--beta", "-0.1", "finite number >= 0"),
    ("--M", "20.0", "integer >= 2"),
    ("--K", "-1", "integer >= 0"),
    ("--device", "tpu", "cpu, cuda or cuda:N"),
    ("--backbone", "vgg16", "expected one of efficientnet_lite0"),
])
def test_bad_flag_values_are_refused_when_parsed(flag, value, expected, capsys, tmp_path):
    from sglib import cli
    model = [] if flag == "--backbone" else ["--backbone", "efficientnet_lite0"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "nothing_here", *model, flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"argument {flag}" in last and expected in last, last


def test_cuda_without_a_gpu_is_refused_when_parsed(capsys, tmp_path):
    from sglib import cli
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "x", "--backbone", "mobilenet_v2",
                  "--device", "cuda"])
    assert "no CUDA device is visible" in capsys.readouterr().err
