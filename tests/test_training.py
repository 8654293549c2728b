"""Training (sglib.training): data layouts, seeded batches, kill-and-resume, torchrun equality, checkpoints that the
CLI evaluates, and bad input.

Images here are SYNTHETIC (seeded noise and colour blobs); the network is the packaged, pretrained
EfficientNet-Lite0 at tiny crop sizes: the tests check the mechanics, not what training achieves
(notebook 02 measures that on the bundled benchmark).
"""
import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sglib import cli
from sglib.models import CheckpointError, load_trained
from sglib.training import (Augmentation, TrainConfig, TrainingSet, class_map, bundled_training_set,
                            gldv2_training_set, lr_factor, train)
from sglib.training.data import batch_indices, gldv2_image_path, sample_seed
from sglib.training.loop import LOG_COLUMNS, TIMING_COLUMNS

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_CLASSES, PER_CLASS = 6, 4


def write_bundled_split(data_root: pathlib.Path, bad: int | None = None) -> pathlib.Path:
    """A SYNTHETIC training split in the bundled layout: per class a colour-blob prototype with noise."""
    folder = data_root / "datasets" / "synthetic_views_train"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for c in range(N_CLASSES):
        proto = rng.integers(0, 255, (4, 5, 3)).astype(np.uint8)
        for k in range(PER_CLASS):
            img = np.asarray(Image.fromarray(proto).resize((60, 48), Image.BILINEAR)).astype(int)
            img = np.clip(img + rng.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)
            name = f"c{c}_v{k}"
            Image.fromarray(img).save(folder / "jpg" / f"{name}.jpg")
            rows.append({"image": name, "label": f"scene_{c}", "photo": f"p{c}"})
    if bad is not None:
        (folder / "jpg" / f"{rows[bad]['image']}.jpg").write_bytes(b"not a jpeg")
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "photo"])
        w.writeheader()
        w.writerows(rows)
    return data_root


TINY = dict(dim=16, steps=8, warmup_steps=1, batch_size=4, image_size=64, val_every=4, checkpoint_every=2,
            lr=1e-3, seed=3)
CLI_FLAGS = ["--dim", "16", "--steps", "8", "--warmup-steps", "2", "--batch-size", "4", "--image-size", "64",
             "--val-every", "4", "--checkpoint-every", "2", "--lr", "1e-3", "--seed", "3", "--val-classes", "2",
             "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    return write_bundled_split(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def bad_split_root(tmp_path_factory):
    """The same split with one image (c1_v1) replaced by bytes that are not an image."""
    return write_bundled_split(tmp_path_factory.mktemp("bad_train_data"), bad=5)


def run_cli(*args, env_extra=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "sglib", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def log_rows(out):
    with open(out / "log.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def model_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------- data

def test_gldv2_layout_both_csvs_missing_images_and_class_filter(tmp_path, capsys):
    ids = {7: ["abc001", "abd002", "abe003"], 12: ["f00001", "f00002"], 5: ["0aa001"]}
    for lm, names in ids.items():
        for n in names:
            p = gldv2_image_path(tmp_path, n)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    assert gldv2_image_path(tmp_path, "abc001") == tmp_path / "train" / "a" / "b" / "c" / "abc001.jpg"
    os.remove(gldv2_image_path(tmp_path, "abe003"))
    with open(tmp_path / "train_clean.csv", "w") as f:
        f.write("landmark_id,images\n" + "".join(f"{lm},{' '.join(n)}\n" for lm, n in ids.items()))
    with open(tmp_path / "train.csv", "w") as f:
        f.write("id,url,landmark_id\n" + "".join(f"{n},http://x/{n}.jpg,{lm}\n" for lm, ns in ids.items() for n in ns))
    for name in ("train_clean.csv", "train.csv"):
        data = gldv2_training_set(tmp_path, name)
        assert "1 image(s) listed" in capsys.readouterr().err
        assert data.classes == ("7", "12")            # landmark 5 has one image: dropped; numeric order
        assert [pathlib.Path(p).stem for p in data.paths] == ["abc001", "abd002", "f00001", "f00002"]
        assert data.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="training needs 2 or more"):
        gldv2_training_set(tmp_path, min_images_per_class=3)
    (tmp_path / "bad.csv").write_text("image,landmark\n")
    with pytest.raises(ValueError, match="expected columns landmark_id,images"):
        gldv2_training_set(tmp_path, "bad.csv")
    with pytest.raises(ValueError, match="hexadecimal"):
        gldv2_image_path(tmp_path, "../etc")
    for text, match in (("landmark_id,images\n12\n", r"bad.csv:2: expected an integer landmark_id"),
                        ("landmark_id,images\nx,abc001\n", r"bad.csv:2: expected an integer landmark_id"),
                        ("landmark_id,images\n1,abc001\n2,abc001\n", r"bad.csv:3: image abc001 listed twice"),
                        ("id,url,landmark_id\nAB,u,1\n", r"bad.csv:2: GLDv2 image id must be lower-case")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(ValueError, match=match):
            gldv2_training_set(tmp_path, "bad.csv")
    for bad in (-1, 1, 1.5):
        with pytest.raises(ValueError, match="max_classes must be None or an integer >= 2"):
            gldv2_training_set(tmp_path, max_classes=bad)


def test_batches_and_augmentations_depend_only_on_seed_step_position(split_root):
    data = bundled_training_set(split_root)
    assert (data.n_classes, len(data)) == (N_CLASSES, N_CLASSES * PER_CLASS)
    epoch = np.concatenate([batch_indices(len(data), 5, 1, s) for s in range(4)])   # 24 // 5 = 4 batches
    assert len(set(epoch.tolist())) == 20
    assert np.array_equal(batch_indices(len(data), 5, 1, 4), np.random.default_rng([1, 1]).permutation(24)[:5])
    assert sample_seed(0, 3, 1) == sample_seed(0, 3, 1) != sample_seed(0, 3, 2)
    aug = Augmentation(size=40)
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    a, b = aug(img, 11), aug(img, 11)
    assert a.shape == (3, 40, 40) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, aug(img, 12))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = aug.crop_box(rng, 50, 70)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 70 and h > 0 and w > 0
    train_set, val = data.split_classes(2, seed=0)
    assert set(train_set.classes).isdisjoint(val.classes) and val.n_classes == 2 and len(val) == 2 * PER_CLASS


def test_class_map_recomputed_naively():
    rng = np.random.default_rng(0)
    desc = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(9, 4))), dim=1)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    aps = []
    for i in range(9):
        others = [j for j in range(9) if j != i]
        order = sorted(others, key=lambda j: -float(desc[i] @ desc[j]))
        hits, ap = 0, 0.0
        for r, j in enumerate(order, 1):
            if labels[j] == labels[i]:
                hits += 1
                ap += hits / r
        aps.append(ap / hits)
    assert class_map(desc, labels) == pytest.approx(np.mean(aps))


def test_schedule_warms_up_then_decays_to_zero():
    c = TrainConfig(steps=10, warmup_steps=2)
    f = [lr_factor(s, c) for s in range(10)]
    assert f[0] < f[1] < f[2] == 1.0 and all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] < 0.05


# ----------------------------------------------------------------------------- the run

def test_kill_and_resume_gives_the_uninterrupted_weights_and_log(bad_split_root, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["train", "--data-root", str(bad_split_root), *CLI_FLAGS, "--threads", "1"]
    done = run_cli(*args, "--out", str(whole))
    assert done.wait(timeout=300) == 0, done.stdout.read()
    proc = run_cli(*args, "--out", str(cut))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:      # kill it once a checkpoint exists, mid-run
        if (cut / "checkpoint.pt").exists() and len(log_rows(cut)) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: make it longer"
    saved = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= saved < 8
    again = run_cli(*args, "--out", str(cut))
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    assert f"resuming at step {saved}" in out
    assert log_rows(cut) == log_rows(whole)
    assert (cut / "failed.csv").read_text() == (whole / "failed.csv").read_text()
    assert not list(cut.glob(".*.tmp"))
    a, b = model_tensors(whole / "model.pt"), model_tensors(cut / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(log_rows(whole)) == 9 and [r["step"] for r in log_rows(whole)][:2] == ["0", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loss", ["arcface", "curricularface"])
def test_two_torchrun_processes_equal_one_on_the_union_of_batches(bad_split_root, tmp_path, loss):
    """SGD with the clipping out of reach: the weights after three steps are a function of the gradients, and
    each step's loss a function of the updates before it. The split holds an unreadable image: it is met
    at step 1 with seed 10, in rank 1's half of the batch; it is replaced alike in both runs, and rank 1's failure
    reaches rank 0's failed.csv."""
    flags = ["train", "--data-root", str(bad_split_root), *CLI_FLAGS, "--optimizer", "sgd", "--clip-grad", "1e9",
             "--steps", "3", "--loss", loss, "--val-classes", "0", "--seed", "10"]
    one = run_cli(*flags, "--out", str(tmp_path / "one"), "--threads", "1")
    assert one.wait(timeout=300) == 0, one.stdout.read()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "sglib", *flags,
           "--out", str(tmp_path / "two"), "--threads", "1"]
    two = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = model_tensors(tmp_path / "one" / "model.pt"), model_tensors(tmp_path / "two" / "model.pt")
    assert a["gem_p"].item() != 3.0, "p did not move: the test would not see its gradient"
    for k in a:   # equal up to float32 summation order: 1e-4 of each tensor's range
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4 * float(a[k].abs().max()) + 1e-7,
                                   msg=f"tensor {k} differs")
    la, lb = log_rows(tmp_path / "one"), log_rows(tmp_path / "two")
    assert [float(r["loss"]) for r in la] == pytest.approx([float(r["loss"]) for r in lb], rel=1e-5)
    failed = (tmp_path / "one" / "failed.csv").read_text()
    assert "c1_v1.jpg" in failed and (tmp_path / "two" / "failed.csv").read_text() == failed
    assert [r["failed"] for r in la] == [r["failed"] for r in lb]


def child_pids(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):   # a process that ended while listed
            pass
    return found


def runs(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def torchrun_ranks(launcher: subprocess.Popen, out: pathlib.Path, expect: int) -> dict[int, int]:
    """{rank: pid} of the training processes that ``launcher`` (torchrun) started, once ``out/log.csv`` has a step."""
    start = time.monotonic()
    while not ((out / "log.csv").is_file() and len((out / "log.csv").read_text().splitlines()) >= 2):
        assert launcher.poll() is None and time.monotonic() - start < 240, "training did not start"
        time.sleep(0.2)
    ranks = {}
    for pid in child_pids(launcher.pid):
        env = dict(v.split("=", 1) for v in pathlib.Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        ranks[int(env["RANK"])] = pid
    assert len(ranks) == expect, ranks
    return ranks


def launch_torchrun(tmp_path, name: str, torchrun_flags, train_flags) -> subprocess.Popen:
    """torchrun running `sglib train` with ``train_flags``, its output (all processes') to ``tmp_path/name.log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_flags, "--master_addr=127.0.0.1", "-m", "sglib",
           *train_flags]
    with open(tmp_path / f"{name}.log", "w") as log:
        return subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)


def endless_run_flags(root, out, dist_timeout: int, num_workers: int) -> list[str]:
    """`sglib train` flags of a run that would not end by itself within the test."""
    flags = ["train", "--data-root", str(root), *CLI_FLAGS, "--steps", "100000", "--checkpoint-every", "100000",
             "--val-classes", "0", "--projection-init", "random", "--dist-timeout", str(dist_timeout),
             "--out", str(out), "--threads", "1"]
    flags[flags.index("--num-workers") + 1] = str(num_workers)
    return flags


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
def test_a_stopped_torchrun_process_ends_every_process_after_the_dist_timeout(split_root, tmp_path):
    """Rank 1 is stopped (SIGSTOP) mid-run: rank 0, blocked in a collective, ends after --dist-timeout naming
    rank 1 and the timeout, and kills its stopped sibling (torchrun's SIGTERM would not reach it, and torchrun
    waits 30 s before its SIGKILL); torchrun ends. Before the fix rank 0 waited for the process group's 2 hours."""
    timeout = 15
    launcher = launch_torchrun(tmp_path, "torchrun", ["--nproc_per_node=2", f"--master_port={free_port()}"],
                               endless_run_flags(split_root, tmp_path / "run", timeout, 0))
    ranks = {}
    try:
        ranks = torchrun_ranks(launcher, tmp_path / "run", 2)
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            launcher.wait(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun still runs {timeout + 30} s after rank 1 was stopped")
        took = time.monotonic() - stopped
        output = (tmp_path / "torchrun.log").read_text()
        assert launcher.returncode != 0
        assert f"rank 1 (pid {ranks[1]} on " in output, output
        assert f"has run no code for {timeout} s (--dist-timeout)" in output, output
        # rank 1 beat last at most a watch interval (1 s) before it was stopped
        assert timeout - 1.5 <= took < timeout + 12, took
        assert not [pid for pid in ranks.values() if runs(pid)]
    finally:
        for pid in [*ranks.values(), launcher.pid]:
            if runs(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
def test_a_failed_torchrun_process_ends_every_process_at_once_with_its_reason(split_root, tmp_path):
    """Two torchrun launchers, one process each, as on two machines: rank 0's launcher does not see rank 1 fail.
    Rank 1's image-decoding process is killed, a real error in rank 1 only (RuntimeError: DataLoader worker
    ... is killed); every process ends within seconds and rank 0's output gives rank 1's reason. Before the
    fix rank 0 ended too (its socket to rank 1 closed), but said only "Connection closed by peer"."""
    port, out = free_port(), tmp_path / "run"
    launchers = [launch_torchrun(tmp_path, f"node{node}", ["--nproc_per_node=1", "--nnodes=2", f"--node_rank={node}",
                                                           f"--master_port={port}"],
                                 endless_run_flags(split_root, out, 60, 1)) for node in (0, 1)]
    ranks = {}
    try:
        ranks = {**torchrun_ranks(launchers[0], out, 1), **torchrun_ranks(launchers[1], out, 1)}
        loaders = [pid for pid in child_pids(ranks[1]) if pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
                   == "pt_data_worker"]
        assert len(loaders) == 1, loaders
        os.kill(loaders[0], signal.SIGKILL)
        failed = time.monotonic()
        for launcher in launchers:
            try:
                launcher.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pytest.fail("a torchrun launcher still runs 45 s after rank 1 failed")
        took = time.monotonic() - failed
        node0 = (tmp_path / "node0.log").read_text()
        assert all(launcher.returncode != 0 for launcher in launchers)
        assert f"rank 1 (pid {ranks[1]} on " in node0 and "failed: RuntimeError: DataLoader worker" in node0, node0
        assert took < 15, took
        assert not [pid for pid in ranks.values() if runs(pid)]
    finally:
        for pid in [*ranks.values(), *(launcher.pid for launcher in launchers)]:
            if runs(pid):
                os.kill(pid, signal.SIGKILL)
        for launcher in launchers:
            launcher.wait()


def test_checkpoint_loads_in_cli_evaluate_and_as_a_backbone(split_root, tiny_dataset, tmp_path):
    data, val = bundled_training_set(split_root).split_classes(2, seed=0)
    run = train(data, TrainConfig(**TINY), tmp_path / "run", val, num_workers=0, progress=False)
    model = load_trained(tmp_path / "run" / "model.pt")
    assert float(model.gem_p) == pytest.approx(float(run.model.gem_p)) and model.descriptor_dim == 16
    x = torch.rand(1, 3, 64, 64)
    from sglib.method.descriptors import DescriptorSettings
    d = model.describe(x, DescriptorSettings(scales=(1.0,), gem_p=None, regional=False))
    from sglib.training.loop import training_descriptor
    torch.testing.assert_close(d, training_descriptor(model, x), rtol=1e-5, atol=1e-6)
    common = ["evaluate", "--data-root", str(tiny_dataset), "--dataset", "tiny_synthetic", "--scales", "1",
              "--no-rerank", "--num-workers", "0", "--cache", str(tmp_path / "cache")]
    for which in ("model.pt", "checkpoint.pt"):
        out = tmp_path / f"{which}.json"
        assert cli.main([*common, "--checkpoint", str(tmp_path / "run" / which), "--gem-p", "learned", "--json", str(out)]) == 0
        record = json.loads(out.read_text())
        assert record["settings"]["gem_p"] is None and 0 <= record["map"]["medium"] <= 100
    assert cli.main([*common, "--backbone", "efficientnet_lite0", "--json", str(tmp_path / "base.json")]) == 0
    # the fine-tuned network is another network: its features are a different cache entry
    assert len(list((tmp_path / "cache").iterdir())) == 4   # (queries, database) x (trained, off-the-shelf)
    (tmp_path / "foreign.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="is not a torch.save file"):
        load_trained(tmp_path / "foreign.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an sglib training checkpoint"):
        load_trained(tmp_path / "other.pt")


def test_bad_runs_are_refused_with_the_reason(split_root, tmp_path):
    data, val = bundled_training_set(split_root).split_classes(2, seed=0)
    train(data, TrainConfig(**{**TINY, "steps": 2}), tmp_path / "run", val, num_workers=0, progress=False)
    with pytest.raises(ValueError, match=r"another configuration.*'margin': \(0.2, 0.3\)"):
        train(data, TrainConfig(**{**TINY, "steps": 2, "margin": 0.3}), tmp_path / "run", val, num_workers=0,
              progress=False)
    with pytest.raises(ValueError, match="larger than the training set"):
        train(data, TrainConfig(**{**TINY, "batch_size": 64}), tmp_path / "big", num_workers=0, progress=False)
    for bad, match in (({"loss": "cosface"}, "loss must be one of"), ({"image_size": 16}, "size must be"),
                       ({"trainable_fraction": 0}, "trainable_fraction"), ({"lr": float("nan")}, "lr must be"),
                       ({"backbone": "vgg"}, "unknown backbone")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="labels must lie"):
        TrainingSet(["a.jpg", "b.jpg"], [0, 2], ["x", "y"])
    with pytest.raises(ValueError, match="class names must be distinct"):
        TrainingSet(["a.jpg", "b.jpg"], [0, 1], ["x", "x"])
    unreadable = TrainingSet([str(tmp_path / "none_a.jpg"), str(tmp_path / "none_b.jpg")], [0, 1], ["a", "b"], "val")
    with pytest.raises(ValueError, match="val: 0 of its 2 images can be read"):
        train(data, TrainConfig(**{**TINY, "steps": 2}), tmp_path / "unreadable_val", unreadable, num_workers=0,
              progress=False)
    with pytest.raises(ValueError, match="data: expected a TrainingSet"):
        train(str(split_root), TrainConfig(**TINY), tmp_path / "str")
    with pytest.raises(ValueError, match="dist_timeout must be a number of seconds > 0, got 0"):
        train(data, TrainConfig(**TINY), tmp_path / "no_wait", dist_timeout=0)
    torch.save({"format": "sglib-train/1", "backbone": "efficientnet_lite0", "model": {}, "step": 1,
                "config": "oops", "classes": []}, tmp_path / "crafted.pt")
    with pytest.raises(CheckpointError, match="config has the wrong type"):
        load_trained(tmp_path / "crafted.pt")


def test_an_unreadable_training_image_is_logged_and_replaced(bad_split_root, tmp_path):
    from sglib.training.data import AugmentedImages
    data = bundled_training_set(bad_split_root)
    image, label, failed = AugmentedImages(data, Augmentation(size=40))[(5, 1)]
    assert failed == [5] and label == data.labels[6] and image.shape == (3, 40, 40)   # the next image stands in
    run = train(data, TrainConfig(**{**TINY, "steps": 6, "batch_size": 8}), tmp_path / "run", num_workers=0,
                progress=False)
    failed = (tmp_path / "run" / "failed.csv").read_text().splitlines()
    assert failed[0] == "step,image" and len(failed) >= 2 and all(line.endswith("c1_v1.jpg") for line in failed[1:])
    rows = log_rows(tmp_path / "run")
    assert sum(int(r["failed"]) for r in rows) == len(failed) - 1 and run.step == 6
    assert list(rows[0]) == [c for c in LOG_COLUMNS if c not in TIMING_COLUMNS]


def test_a_diverging_run_stops_with_the_reason_and_keeps_its_checkpoint(split_root, tmp_path):
    data = bundled_training_set(split_root)
    config = TrainConfig(**{**TINY, "lr": 1e30, "optimizer": "sgd", "clip_grad": 1e30})
    with pytest.raises(ValueError, match="training diverged at step .*lower the learning rate"):
        train(data, config, tmp_path / "run", num_workers=0, progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_restart_before_the_first_checkpoint_starts_a_clean_log(split_root, tmp_path):
    data, val = bundled_training_set(split_root).split_classes(2, seed=0)
    config = TrainConfig(**{**TINY, "steps": 2})
    train(data, config, tmp_path / "run", val, num_workers=0, progress=False)
    (tmp_path / "run" / "checkpoint.pt").unlink()
    train(data, config, tmp_path / "run", val, num_workers=0, progress=False)
    steps = [r["step"] for r in log_rows(tmp_path / "run")]
    assert steps == ["0", "1", "2"]


def test_a_cvnet_layout_resnet_fine_tunes_from_its_checkpoint(split_root, tmp_path):
    """A randomly initialised (seed 0, SYNTHETIC) ResNet-50 in CVNet's release layout: the mechanism, not the weights."""
    from sglib.models import SuperGlobalNet
    from sglib.models.cvnet import load_cvnet
    torch.manual_seed(0)
    torch.save({"model_state": SuperGlobalNet(depth=50).state_dict()}, tmp_path / "synthetic_R50.pyth")
    data = bundled_training_set(split_root)
    config = TrainConfig(**{**TINY, "dim": 2048, "steps": 2, "val_every": 2}, backbone="cvnet-r50",
                         weights=str(tmp_path / "synthetic_R50.pyth"), trainable_fraction=0.2)
    assert config.head_init == "keep"
    run = train(data, config, tmp_path / "run", num_workers=0, progress=False)
    before = load_cvnet(tmp_path / "synthetic_R50.pyth", relu_plus=False)
    after = load_trained(tmp_path / "run" / "model.pt")
    assert isinstance(after, SuperGlobalNet) and after.relu_plus is False
    assert after.learned_p.item() != before.learned_p.item() == 3.0 and run.step == 2
    assert not torch.equal(after.head.fc.weight, before.head.fc.weight)
    assert torch.equal(after.stem.conv.weight, before.stem.conv.weight), "the frozen stem moved"
    from sglib.method.descriptors import DescriptorSettings
    assert after.describe_with(torch.rand(1, 3, 64, 64), DescriptorSettings(gem_p=None)).shape == (1, 2048)
    with pytest.raises(ValueError, match="pass its file as weights"):
        TrainConfig(backbone="cvnet_r101")
    with pytest.raises(ValueError, match="dim must be 2048"):
        TrainConfig(backbone="cvnet_r50", weights="x.pyth", dim=512)
    assert TrainConfig(backbone="cvnet_r50", weights="x.pyth").dim == 2048 and TrainConfig().dim == 512
    with pytest.raises(ValueError, match="has none"):
        TrainConfig(projection_init="keep")


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(split_root, tmp_path):
    """Issue 21: two runs into one --out interleaved log.csv; now the second is refused (host, pid)."""
    import json
    import socket
    import subprocess
    data, val = bundled_training_set(split_root).split_classes(2, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        with pytest.raises(ValueError, match=rf"in use by another training run \(host .*, pid {other.pid}\)"):
            train(data, TrainConfig(**{**TINY, "steps": 2}), run, val, num_workers=0, progress=False)
        assert not (run / "log.csv").exists()
    finally:
        other.kill()
        other.wait()
    # the same lock from a process that no longer runs (a killed run) is taken over, and released at the end
    done = train(data, TrainConfig(**{**TINY, "steps": 2}), run, val, num_workers=0, progress=False)
    assert done.step == 2 and not (run / "run.lock").exists()
