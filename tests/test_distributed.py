"""torchrun extraction (`torchrun -m sglib extract`, sglib.scale.distributed): two CPU processes (gloo) give the single-process result,
into the cache folder that the CLI and the notebooks then read without a forward pass.

The images are synthetic (seeded noise PNGs) and the checkpoint is a synthetic, randomly initialised
(seed 0) ResNet-50 written in CVNet's release layout: the test checks the mechanism, not the weights.
"""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from sglib import cli
from sglib.data.revisitop import load_revisitop
from sglib.method.descriptors import DescriptorSettings
from sglib.models import SuperGlobalNet, load_cvnet
from sglib.scale.extract import build_extractor, cache_key, dataset_features, extract_features
from sglib.scale.shards import failed_images, load_features, read_manifest, write_image_list

from test_extract import write_synthetic_images

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    state = SuperGlobalNet(depth=50).state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "synthetic_random_R50.pyth"
    torch.save({"model_state": state}, path)
    return path


def torchrun(nproc, list_file, where, checkpoint, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sglib", "extract",
           "--images", str(list_file), *where, "--checkpoint", str(checkpoint),
           "--scales", "0.7071,1.0", "--device", "cpu", "--shard-size", "2", "--num-workers", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_two_processes_equal_one_process(tmp_path, synthetic_checkpoint):
    paths = write_synthetic_images(tmp_path / "img", 11, sizes=((40, 48), (48, 40)))
    images = paths + [str(tmp_path / "img" / "missing.png")]
    boxes = [None] * 12
    boxes[3] = (4, 6, 36, 40)  # a query crop
    write_image_list(tmp_path / "list.txt", images, boxes)

    cache = tmp_path / "cache"
    two = torchrun(2, tmp_path / "list.txt", ["--cache-root", str(cache)], synthetic_checkpoint)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1/2" in two.stderr and "rank 0/2" in two.stderr  # both ranks extracted (their progress bars)
    # the folder is the one the library's cache looks up for the same model and settings
    ex = build_extractor(load_cvnet(synthetic_checkpoint), DescriptorSettings(scales=(0.7071, 1.0)))
    two_dir = cache / cache_key(images, ex, boxes)
    assert [p.name for p in cache.iterdir()] == [two_dir.name]
    manifest = read_manifest(two_dir)
    assert manifest["status"] == "complete" and manifest["n_shards"] == 6 and manifest["dim"] == 2048
    assert [f["index"] for f in failed_images(two_dir)] == [11]
    with pytest.warns(UserWarning, match="1 of 12 images failed"):
        merged = load_features(two_dir, on_failed="warn")

    # the single-process run, here, with the workers' thread count so that rounding is the same
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_features(tmp_path / "one", images, ex, boxes, shard_size=5, progress=False)
    finally:
        torch.set_num_threads(threads)
    with pytest.warns(UserWarning):
        single = load_features(tmp_path / "one", on_failed="warn")
    assert np.array_equal(merged, single, equal_nan=True)
    assert np.isfinite(merged[:11]).all() and np.isnan(merged[11]).all()

    # a rerun with other settings into the same folder is refused on every rank, with the reason
    again = torchrun(2, tmp_path / "list.txt", ["--out", str(two_dir)], synthetic_checkpoint, "--no-regional")
    assert again.returncode != 0 and "different extraction job" in again.stderr


def test_torchrun_cache_is_read_by_cli_and_notebook_path_without_forward_pass(tiny_dataset, tmp_path,
                                                                               synthetic_checkpoint, monkeypatch):
    ds = load_revisitop(tiny_dataset, "tiny_synthetic")
    boxes = [ds.query_bbx(i) for i in range(ds.n_queries)]
    write_image_list(tmp_path / "db.txt", ds.db_paths())
    write_image_list(tmp_path / "q.txt", ds.query_paths(), boxes)
    cache = tmp_path / "cache"
    for name in ("db.txt", "q.txt"):
        run = torchrun(2, tmp_path / name, ["--cache-root", str(cache)], synthetic_checkpoint)
        assert run.returncode == 0, run.stderr[-3000:]

    def no_forward(self, x):
        raise AssertionError("a forward pass ran although torchrun had cached these features")

    monkeypatch.setattr(SuperGlobalNet, "feature_map", no_forward)
    ex = build_extractor(load_cvnet(synthetic_checkpoint), DescriptorSettings(scales=(0.7071, 1.0)))
    q, x = dataset_features(ds, ex, cache, progress=False)          # the notebooks' path
    assert q.shape == (ds.n_queries, 2048) and x.shape == (ds.n_db, 2048)
    code = cli.main(["evaluate", "--data-root", str(tiny_dataset), "--dataset", "tiny_synthetic",
                     "--checkpoint", str(synthetic_checkpoint), "--scales", "0.7071,1", "--cache", str(cache),
                     "--device", "cpu", "--M", "6", "--K", "2", "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert sorted(p.name for p in cache.iterdir()) == sorted([cache_key(ds.db_paths(), ex),
                                                              cache_key(ds.query_paths(), ex, boxes)])

