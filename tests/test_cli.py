"""`python -m sglib evaluate` end to end on a tiny revisitop-format dataset built here.

The dataset's images are synthetic (random blobs rendered by the test); the network is the golden
random ResNet-50 in CVNet's layout. The CLI's mAP must equal the one recomputed directly from
the library's pieces, and a second run must come from the cache.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sglib.datasets import load_revisitop, write_revisitop_gnd
from sglib.evaluate import revisited, summary
from sglib.models import load_cvnet
from sglib.preprocess import load_network_input
from sglib.rerank import superglobal

N_DB, N_Q = 10, 3


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = root / "datasets" / "tiny_synthetic"
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 255, (N_Q, 6, 8, 3)).astype(np.uint8)
    imlist, qimlist, gnd = [], [], []
    for i in range(N_DB):
        base = protos[i % N_Q] if i < 6 else rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((96, 72), Image.BILINEAR)).astype(int)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "jpg" / f"db_{i}.jpg")
        imlist.append(f"db_{i}")
    for k in range(N_Q):
        img = np.asarray(Image.fromarray(protos[k]).resize((112, 84), Image.BILINEAR))
        Image.fromarray(img).save(folder / "jpg" / f"q_{k}.jpg")
        qimlist.append(f"q_{k}")
        gnd.append({"bbx": (4.7, 3.2, 108.9, 80.5), "easy": [k], "hard": [k + 3], "junk": [9] if k == 0 else []})
    write_revisitop_gnd(folder / "gnd_tiny_synthetic.pkl", imlist, qimlist, gnd)
    return root


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
