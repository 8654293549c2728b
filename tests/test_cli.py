"""`python -m sglib evaluate` end to end on a tiny revisitop-format dataset built here.

The dataset (conftest's ``tiny_dataset``) has synthetic images (random blobs); the network is the golden
random ResNet-50 in CVNet's layout. The CLI's mAP must equal the one recomputed directly from
the library's pieces, and a second run must come from the cache.
"""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sglib.data.revisitop import load_revisitop
from sglib.evaluate.protocol import revisited, summary
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
    ("--scale-agg", "0", "'max', 'mean' or a finite number > 0"),
    ("--scale-agg", "maximum", "expected max, mean or a number"),
    ("--scales", "0,1", "scales must be finite positive"),
    ("--scales", "1,x", "expected 1, 3, 5 or a comma list"),
    ("--scales", "2", "for one scale at factor 2 write 2.0"),
    ("--regional-kernel", "4", "positive odd integer"),
    ("--max-side", "0", "integer >= 16"),
    ("--threads", "-1", "integer >= 1"),
    ("--beta", "-0.1", "finite number >= 0"),
    ("--M", "20.0", "expected an integer"),
    ("--K", "-1", "need 0 <= K < M"),
    ("--K", "400", "need 0 <= K < M"),
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
    assert "argument" in last and flag in last and expected in last, last


def test_cuda_without_a_gpu_is_refused_when_parsed(capsys, tmp_path):
    from sglib import cli
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "x", "--backbone", "mobilenet_v2",
                  "--device", "cuda"])
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.parametrize("command,classes", [("evaluate", ("DescriptorSettings", "RerankSettings")),
                                             ("extract", ("DescriptorSettings",)), ("train", ("TrainConfig",))])
def test_every_settings_field_is_a_flag_with_the_same_default(command, classes):
    """The settings dataclasses are the one source of the flags: every field, its default, its help."""
    import dataclasses
    from sglib import cli
    from sglib.evaluate.retrieval import RerankSettings
    from sglib.method.descriptors import DescriptorSettings
    from sglib.training.loop import TrainConfig
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    actions = {a.dest: a for a in sub._actions}
    for cls in (DescriptorSettings, RerankSettings, TrainConfig):
        if cls.__name__ not in classes:
            continue
        for field in dataclasses.fields(cls):
            assert field.name in actions, f"{cls.__name__}.{field.name} has no flag in `sglib {command}`"
            action = actions[field.name]
            assert action.default == field.default, (field.name, action.default, field.default)
            assert action.help and field.metadata["help"].split(" (")[0][:20] in action.help.replace("%%", "%")
    # the defaults parsed from an empty command line are the dataclass's own defaults
    required = {"evaluate": ["--data-root", "d", "--dataset", "x", "--backbone", "mobilenet_v2"],
                "extract": ["--images", "l.txt", "--out", "o", "--backbone", "mobilenet_v2"],
                "train": ["--out", "runs/x"]}[command]
    settings = parser.parse_args([command, *required]).settings
    assert {name: type(s) for name, s in settings.items()} == {
        name: {"DescriptorSettings": DescriptorSettings, "RerankSettings": RerankSettings,
               "TrainConfig": TrainConfig}[name] for name in classes}
    for name, s in settings.items():
        assert s == type(s)(), f"{name}: an empty command line gives {s}, the dataclass's defaults are {type(s)()}"


def test_bool_settings_have_both_spellings_and_train_flags_reach_the_config(tmp_path):
    from sglib import cli
    args = cli.build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--no-learn-p", "--p-init", "4.6",
                                          "--momentum", "0.5", "--optimizer", "sgd", "--no-amp",
                                          "--backbone", "mobilenet-v2"])
    config = args.settings["TrainConfig"]
    assert (config.learn_p, config.p_init, config.momentum, config.optimizer, config.amp, config.backbone) == (
        False, 4.6, 0.5, "sgd", False, "mobilenet_v2")
    assert config.dim == 512
    args = cli.build_parser().parse_args(["evaluate", "--data-root", "d", "--dataset", "x", "--backbone",
                                          "mobilenet_v2", "--no-regional", "--gem-p", "3", "--scales", "1",
                                          "--scale-agg", "mean"])
    two = cli.build_parser().parse_args(["evaluate", "--data-root", "d", "--dataset", "x", "--backbone",
                                         "mobilenet_v2", "--scales", "2.0"])
    assert two.settings["DescriptorSettings"].scales == (2.0,)
    assert args.settings["DescriptorSettings"].as_dict() == {
        "scales": (1.0,), "gem_p": 3.0, "regional": False, "regional_p": 2.5, "regional_kernel": 5,
        "scale_agg": "mean"}


@pytest.mark.parametrize("command", [
    ["evaluate", "--data-root", "d", "--dataset", "x", "--backbone", "mobilenet_v2", "--json", "/proc/nope/out.json"],
    ["evaluate", "--data-root", "d", "--dataset", "x", "--backbone", "mobilenet_v2", "--cache", "/proc/nope"],
    ["train", "--out", "/proc/nope/run"], ["build-data", "--data-root", "/proc/nope"],
    ["demo", "--results", "/proc/nope"], ["stability", "--results", "/proc/nope"],
    ["rerankers", "--json", "/proc/nope.json"], ["design-check", "--json", "/proc/nope.json"],
    ["train-study", "--runs", "/proc/nope"],
])
def test_outputs_that_cannot_be_created_are_refused_when_parsed(command, capsys):
    """Issue 21: root passes os.access on /proc, so evaluate ran to the end before failing; now it is tried."""
    from sglib import cli
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(command)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "nothing can be created there" in last and "/proc/nope" in last, last
