"""Bad inputs a user can give, one test per case: the error type and its key words, or the correct result.

Cases covered in other files (named in the README's "What bad input gets" table): image modes, pixel
budget, tiny images (test_preprocess.py), downloads (test_download.py), faiss index files
(test_search.py), CLI flag values (test_cli.py), edited images and altered shards (test_pipeline.py,
test_extract.py), thread-dependent whitening (test_whitening.py).
"""
import json
import os

import numpy as np
import pytest
import torch

import sglib
from sglib.evaluate.protocol import nan_to_none
from sglib.evaluate.retrieval import RerankSettings, evaluate_retrieval
from sglib.evaluate.protocol import revisited
from sglib.method.descriptors import DescriptorSettings
from sglib.models import CheckpointError, SuperGlobalNet, load_cvnet
from sglib.scale.extract import Extractor, build_extractor, extract_features
from sglib.scale.shards import failed_images, finalize_job, prepare_job

from test_extract import write_synthetic_images


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


GND = [{"easy": [0], "hard": [1], "junk": []}]


# ------------------------------------------------------------------------------- 1. silently wrong numbers

def test_negative_id_in_a_ranking_is_refused():
    # a faiss result padded with -1 used to count as image N-1 (AP 1.0 for a positive never retrieved)
    with pytest.raises(ValueError, match="negative database index.*-1"):
        revisited(np.array([[-1, 0, 1]]), [{"easy": [2], "hard": [], "junk": []}])


def test_negative_id_in_ground_truth_is_refused():
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\]: expected non-negative"):
        revisited(np.array([[0, 1, 2]]), [{"easy": [-1], "hard": [], "junk": []}])


def test_nan_database_descriptor_is_refused_without_reranking():
    x = unit_rows(20, 8)
    x[5] = np.nan
    with pytest.raises(ValueError, match="database row 5 holds NaN"):
        evaluate_retrieval(x[:1], x, GND)


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf")])
def test_nonsense_beta_is_refused(beta):
    x = unit_rows(30, 8)
    ranks = np.argsort(-x[:2] @ x.T, axis=1)
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        sglib.rerank.superglobal(x[:2], x, ranks, M=10, K=3, beta=beta)
    with pytest.raises(ValueError, match="beta"):
        RerankSettings(M=10, K=3, beta=beta)


def test_duplicate_ids_in_a_rerank_head_are_refused():
    x = unit_rows(30, 8)
    ranks = np.argsort(-x[:1] @ x.T, axis=1)
    ranks[0, 3] = ranks[0, 0]
    with pytest.raises(ValueError, match="repeats a database index"):
        sglib.rerank.superglobal(x[:1], x, ranks, M=10, K=3)


@pytest.mark.parametrize("kwargs,words", [
    ({"gem_p": 0.0}, "gem_p must be a finite number > 0"), ({"gem_p": -3.0}, "gem_p must be"),
    ({"scales": (0.0,)}, "scales must be finite positive"), ({"scale_agg": 0}, "scale_agg must be"),
    ({"regional_kernel": 4}, "positive odd integer"), ({"regional_p": float("nan")}, "regional_p"),
])
def test_nonsense_descriptor_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DescriptorSettings(**kwargs)


@pytest.mark.parametrize("max_side", [0, -5, 8])
def test_nonsense_max_side_is_refused(max_side):
    with pytest.raises(ValueError, match="max_side: expected an integer >= 16"):
        build_extractor(SuperGlobalNet(50).eval(), DescriptorSettings(scales=(1.0,)), max_side=max_side)


@pytest.mark.parametrize("ks", [(0,), (), (1.5,), (-1, 5)])
def test_nonsense_ks_are_refused(ks):
    with pytest.raises(ValueError, match="ks: expected"):
        revisited(np.array([[0, 1, 2]]), GND, ks=ks)


def test_checkpoint_with_zero_learned_p_is_refused(tmp_path):
    state = SuperGlobalNet(50).state_dict()
    state["head.pool.p"] = torch.zeros(1)
    torch.save({"model_state": state}, tmp_path / "p0.pyth")
    with pytest.raises(CheckpointError, match="head.pool.p is 0; GeM needs p > 0"):
        load_cvnet(tmp_path / "p0.pyth")


def test_integer_dtype_checkpoint_is_refused(tmp_path):
    state = SuperGlobalNet(50).state_dict()
    state["stem.conv.weight"] = state["stem.conv.weight"].to(torch.int32)
    torch.save({"model_state": state}, tmp_path / "int.pyth")
    with pytest.raises(CheckpointError, match="'stem.conv.weight' has dtype torch.int32, expected a floating"):
        load_cvnet(tmp_path / "int.pyth")


# ------------------------------------------------------------------------------- 2. the cache

def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    # finalising one job used to delete every .tmp in the folder, a concurrent writer's included
    paths = write_synthetic_images(tmp_path / "img", 2)
    ex = Extractor(lambda x: x.mean(dim=(2, 3)), lambda p, b: sglib.data.preprocess.load_network_input(p, b),
                   {"name": "channel-mean"})
    out = tmp_path / "out"
    extract_features(out, paths, ex, shard_size=1, progress=False)
    from sglib.scale.shards import _HOST
    live = out / f".shard_00000.npy.{_HOST}.{os.getpid()}.tmp"          # this process is alive
    dead = out / f".shard_00001.npy.{_HOST}.{2 ** 22 + 12345}.tmp"       # no such process
    live.write_bytes(b"in flight")
    dead.write_bytes(b"left by a killed run")
    finalize_job(out)
    assert live.exists() and not dead.exists()


# ------------------------------------------------------------------------------- 4. one bad image never aborts a run

def test_images_that_break_the_network_are_marked_failed(tmp_path):
    from PIL import Image
    paths = write_synthetic_images(tmp_path / "img", 2, sizes=((64, 64),))
    bomb = tmp_path / "img" / "bomb.png"
    Image.new("L", (1, 1)).save(bomb)
    data = bytearray(bomb.read_bytes())
    import struct
    import zlib
    data[16:24] = struct.pack(">II", 20000, 10000)                        # IHDR claims 200 M pixels
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    bomb.write_bytes(bytes(data))
    images = [paths[0], str(bomb), paths[1]]
    ex = build_extractor(SuperGlobalNet(50).eval(), DescriptorSettings(scales=(0.001, 1.0), regional=False))
    out = tmp_path / "out"
    prepare_job(out, images, ex, shard_size=3)
    extract_features(out, images, ex, shard_size=3, progress=False)
    reasons = {f["path"]: f["reason"] for f in failed_images(out)}
    assert "limit" in reasons[str(bomb)]
    assert all("scale 0.001" in reasons[p] for p in paths)              # scale 0.001 of 64 px is 0 px


# ------------------------------------------------------------------------------- 5. errors from entry points

@pytest.mark.parametrize("call,words", [
    (lambda: sglib.pooling.gem(np.ones((1, 2, 3, 3))), "floating torch.Tensor"),
    (lambda: sglib.pooling.gem(torch.ones(1, 2, 3, 3, dtype=torch.int64)), "floating dtype"),
    (lambda: sglib.pooling.gem(torch.ones(1, 2, 0, 3)), "empty dimension"),
    (lambda: sglib.pooling.regional_gem(torch.ones(1, 2, 3, 3), p=0.0), "p: expected a finite number > 0"),
    (lambda: sglib.pooling.scale_gem(torch.ones(3, 2, 4), p=-1.0), "p: expected a number > 0"),
    (lambda: SuperGlobalNet(50).eval().describe(np.zeros((1, 3, 32, 32), np.float32)), "floating torch.Tensor"),
    (lambda: SuperGlobalNet(50).eval().describe(torch.zeros(1, 3, 32, 32), scales=(0.0,)), "scales must be"),
    (lambda: sglib.rerank.superglobal(unit_rows(2, 4), unit_rows(30, 4), np.tile(np.arange(30), (2, 1)), M=10,
                                      K=-1), "need 0 <= K < M"),
    (lambda: sglib.rerank.superglobal(unit_rows(2, 4), unit_rows(30, 4), np.tile(np.arange(30), (2, 1)),
                                      M=20.0), "M: expected an integer"),
    (lambda: revisited(np.zeros((1, 0), int), GND), "empty"),
    (lambda: sglib.search.knn(np.ones((2, 4), np.int64), unit_rows(5, 4), 2), "floating dtype"),
])
def test_entry_points_raise_value_errors(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_float64_and_numpy_inputs_work_where_natural():
    x = unit_rows(40, 8).astype(np.float64)
    ranks = np.argsort(-x[:2] @ x.T, axis=1)
    out = sglib.rerank.superglobal(x[:2], x, ranks, M=10, K=3)
    assert isinstance(out, np.ndarray) and out.shape == ranks.shape
    assert sglib.pooling.gem(torch.rand(1, 2, 3, 3, dtype=torch.float64)).dtype == torch.float64


# ------------------------------------------------------------------------------- 6. messages that lead to the fix

def test_overflowing_rows_are_named_as_such():
    x = unit_rows(30, 8)
    x[4] *= 1e30
    ranks = np.tile(np.arange(30), (1, 1))
    with pytest.raises(ValueError, match=r"database row\(s\) \[4\] have L2 norm .* expect L2-normalised"):
        sglib.rerank.superglobal(x[:1], x, ranks, M=10, K=3)


def test_negative_batch_norm_variance_is_named(tmp_path):
    state = SuperGlobalNet(50).state_dict()
    state["s1.b1.f.a_bn.running_var"][0] = -1.0
    torch.save({"model_state": state}, tmp_path / "bn.pyth")
    with pytest.raises(CheckpointError, match="'s1.b1.f.a_bn.running_var' has negative values"):
        load_cvnet(tmp_path / "bn.pyth")


def test_a_protocol_without_positives_is_null_in_json():
    res = revisited(np.array([[0, 1, 2]]), [{"easy": [], "hard": [1], "junk": []}])
    assert np.isnan(res["easy"]["map"])
    text = json.dumps(nan_to_none({"map": {"easy": 100 * res["easy"]["map"]}}), allow_nan=False)
    assert json.loads(text) == {"map": {"easy": None}}


# ------------------------------------------------------------------------------- found by a hostile read

def test_results_table_labels_the_cut_offs_it_was_computed_with():
    x = unit_rows(12, 8)
    res = evaluate_retrieval(x[:1], x, GND, ks=(1, 2))
    assert list(res.table().columns) == ["mAP", "mP@1", "mP@2"]
    with pytest.raises(ValueError, match="pass the ks they were computed with"):
        sglib.evaluate.results_table(res.protocols, ks=(1, 5, 10))


def test_ground_truth_beyond_the_database_is_refused_when_the_whole_database_is_ranked():
    x = unit_rows(12, 8)
    gnd = [{"easy": [0], "hard": [11], "junk": []}]
    with pytest.raises(ValueError, match=r"gnd\[0\]\['hard'\].*\[0, N=5\).*same dataset"):
        evaluate_retrieval(x[:1], x[:5], gnd)
    from sglib.evaluate.streaming import evaluate_with_distractors
    with pytest.raises(ValueError, match="same dataset"):
        evaluate_with_distractors(x[:1], x[:5], None, gnd)
    with pytest.raises(ValueError, match="RerankSettings"):
        evaluate_retrieval(x[:1], x, GND, {"M": 5, "K": 2})
    with pytest.raises(ValueError, match="dimension"):
        evaluate_retrieval(x[:1, :4], x, GND)


def test_an_edited_head_with_the_same_recipe_gets_another_cache_key():
    from sglib.models.whitening import Whitening
    from sglib.scale.extract import model_key
    w = Whitening(np.zeros(4), np.eye(4), source="recipe-1")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), w)
    key = model_key(model)
    with torch.no_grad():
        w.projection.mul_(2)
    assert model_key(model) != key


@pytest.mark.parametrize("field,value", [("batch_size", 2.5), ("batch_size", "2"), ("batch_size", True),
                                         ("num_workers", -1)])
def test_extractor_counts_must_be_integers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer"):
        Extractor(lambda x: x, lambda p, b: p, {"name": "n"}, **{field: value})


@pytest.mark.parametrize("args,words", [
    (["--json", "{file}/sub/r.json"], "is a file, so nothing can be created under it"),
    (["--cache", ""], "expected a path, got an empty string"),
])
def test_cli_paths_under_a_file_or_empty_are_refused_when_parsed(args, words, tmp_path, capsys):
    from sglib import cli
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = [a.replace("{file}", str(blocker)) for a in args]
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "x", "--backbone", "mobilenet_v2", *args])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_cli_refuses_backbone_flags_with_a_checkpoint(tmp_path, capsys):
    from sglib import cli
    code = cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "x", "--checkpoint", "c.pyth",
                     "--whitening", "w.npz"])
    assert code == 2 and "--whitening and --weights go with --backbone" in capsys.readouterr().err


def test_damaged_cache_folder_is_rebuilt_by_cached_features(tmp_path):
    from sglib.scale.extract import cache_key, cached_features
    from sglib.scale.shards import shard_path
    paths = write_synthetic_images(tmp_path / "img", 3)
    ex = Extractor(lambda x: x.mean(dim=(2, 3)), lambda p, b: sglib.data.preprocess.load_network_input(p, b),
                   {"name": "channel-mean"})
    first = cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False)
    folder = tmp_path / "cache" / cache_key(paths, ex)
    (folder / "images.txt").unlink()
    with pytest.warns(UserWarning, match="images.txt is unreadable"):
        np.testing.assert_array_equal(cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False),
                                      first)
    shard_path(folder, 1).unlink()                                     # deleted after completion
    np.testing.assert_array_equal(cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False), first)


def test_paths_that_cannot_be_listed_and_non_integer_ids_are_refused(tmp_path):
    from sglib.scale.extract import cached_features
    from sglib.search import Database
    ex = Extractor(lambda x: x, lambda p, b: p, {"name": "n"})
    with pytest.raises(ValueError, match="tab or line break"):
        cached_features(tmp_path, [str(tmp_path / "a\tb.png")], ex)
    with pytest.raises(ValueError, match=r"images\[1\]: expected a path"):
        cached_features(tmp_path, [str(tmp_path / "a.png"), None], ex)
    with pytest.raises(ValueError, match="integer database indices"):
        Database([unit_rows(5, 4)]).take(np.array([1.7]))
    with pytest.raises(ValueError, match="start < stop"):
        Database([unit_rows(5, 4)]).rows(3, 3)


# ------------------------------------------------------------------------------- issue 21, second hostile pass

@pytest.mark.parametrize("max_side", [0, 8, 15, 2.5, True])
def test_network_input_refuses_a_max_side_below_16_at_the_source(max_side, tmp_path):
    from PIL import Image
    from sglib.data.preprocess import load_network_input
    path = tmp_path / "synthetic.png"
    Image.new("RGB", (64, 48)).save(path)
    with pytest.raises(ValueError, match="max_side must be None or an integer >= 16"):
        load_network_input(path, max_side=max_side)
    assert load_network_input(path, max_side=16).ndim == 4   # the smallest accepted target still gives an input


def test_pooling_never_returns_nan_for_inputs_it_accepts():
    x = torch.rand(2, 3, 7, 6)
    shifted = sglib.pooling.regional_gem(x - 0.5)
    assert torch.isfinite(shifted).all()
    # negative cells count as 0 in the power mean (gem floors them at eps), the identity half is kept
    expected = 0.5 * sglib.pooling.regional_gem(torch.zeros_like(x)) + 0.5 * (x - 0.5)
    floored = sglib.pooling.regional_gem((x - 0.5).clamp(min=0)) - 0.5 * (x - 0.5).clamp(min=0) + 0.5 * (x - 0.5)
    assert torch.allclose(shifted, floored, atol=1e-6) and expected.shape == shifted.shape
    with pytest.raises(ValueError, match="floor"):
        sglib.pooling.relu_plus(x, floor=float("nan"))


def test_integer_checks_name_the_missing_bound_plainly():
    with pytest.raises(ValueError, match=r"M: expected an integer >= 1 \(the shortlist size\), got 20.0"):
        sglib.rerank.superglobal(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32),
                                 np.tile(np.arange(4), (4, 1)), M=20.0)


def test_more_threads_than_cpus_are_capped_with_a_warning(monkeypatch):
    from sglib import runtime
    monkeypatch.setenv("SGLIB_THREADS", "9999")
    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="9999 threads asked for"):
            n = runtime.configure_threads()
        assert n == runtime.available_cpus() == torch.get_num_threads()
    finally:
        runtime.configure_threads(before)


def test_describe_takes_float64_images_as_the_float32_network_would():
    net = SuperGlobalNet(50).eval()
    x = torch.rand(1, 3, 40, 48)
    assert torch.equal(net.describe(x.double(), scales=(1.0,)), net.describe(x.double().float(), scales=(1.0,)))


@pytest.mark.parametrize("kwargs,words", [
    ({"nprobe": 0}, "nprobe: expected an integer >= 1"), ({"nprobe": -3}, "nprobe: expected an integer >= 1"),
    ({"nprobe": 2.5}, "nprobe: expected an integer"), ({"ef_search": 10}, "ef_search is a setting of HNSW"),
    ({"k_factor": 4}, "k_factor is a setting of refined indexes"),
])
def test_faiss_settings_are_checked_before_faiss_sees_them(kwargs, words):
    from sglib.search import build_index, search_index
    x = unit_rows(300, 16)
    index = build_index(x, "ivfpq", nlist=4, m=4, nbits=4) if "nprobe" in kwargs else build_index(x, "flat")
    with pytest.raises(ValueError, match=words):
        search_index(index, x[:3], 5, **kwargs)
    flat = build_index(x, "flat")
    with pytest.raises(ValueError, match="nprobe is a setting of IVF indexes"):
        search_index(flat, x[:3], 5, nprobe=4)


def test_a_gnd_list_given_as_a_2d_array_is_named():
    gnd = [{"easy": np.array([[1, 2]]), "hard": [], "junk": []}]
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\]: expected a flat list of database indices, got an "
                                         r"array of shape \(1, 2\)"):
        sglib.evaluate.revisited(np.tile(np.arange(5), (1, 1)), gnd)


def test_gem_at_a_huge_exponent_is_finite_and_tends_to_the_max():
    x = torch.rand(2, 3, 5, 4) * 10
    pooled = sglib.pooling.gem(x, p=1000.0)
    assert torch.isfinite(pooled).all()   # x^1000 alone overflows float32 beyond x = 1.09
    torch.testing.assert_close(pooled, x.amax(dim=(-2, -1)), rtol=5e-3, atol=0)   # (1/20)^(1/1000) = 0.997
    small = sglib.pooling.gem(torch.full((1, 1, 2, 2), 1e-3), p=50.0)
    torch.testing.assert_close(small, torch.full((1, 1), 1e-3))   # 1e-3^50 alone underflows to 0


@pytest.mark.parametrize("bbx,words", [
    ([0, 0, float("nan"), 5], "expected 4 finite numbers"), ([0, 0, float("inf"), 5], "expected 4 finite numbers"),
    (["0", "0", "5", "5"], "expected 4 finite numbers"), ([0, 0, 5], "expected 4 finite numbers"),
    ([5, 0, 1, 5], "is an empty box"),
])
def test_a_query_box_that_is_not_four_finite_numbers_is_named(bbx, words, tmp_path):
    from PIL import Image
    from sglib.data.preprocess import load_network_input
    from sglib.data.revisitop import DatasetError, validate_gnd
    path = tmp_path / "synthetic.png"
    Image.new("RGB", (64, 48)).save(path)
    with pytest.raises(ValueError, match=f"^bbx: .*{words}"):
        load_network_input(path, bbx)
    with pytest.raises(DatasetError, match=r"gnd\[0\]\['bbx'\]: .*" + words):
        validate_gnd({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "hard": [], "junk": [], "bbx": bbx}]})


def test_a_training_csv_that_is_not_utf8_is_named(tmp_path):
    from sglib.training.data import bundled_training_set, gldv2_training_set
    (tmp_path / "train_clean.csv").write_bytes(b"landmark_id,images\n1,abc\xff\xfe def\n")
    with pytest.raises(ValueError, match=r"train_clean.csv: not UTF-8 text .*expected a UTF-8 csv file"):
        gldv2_training_set(tmp_path)
    split = tmp_path / "datasets" / "split"
    split.mkdir(parents=True)
    (split / "train.csv").write_bytes(b"image,label\n\xe9t\xe9,1\n")
    with pytest.raises(ValueError, match=r"split/train.csv: not UTF-8 text"):
        bundled_training_set(tmp_path, "split")


def test_a_file_that_is_no_checkpoint_or_a_pickle_with_code_is_refused_in_one_line(tmp_path):
    from sglib.models.whitening import Whitening
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    with pytest.raises(CheckpointError, match=r"notes.txt is not a torch.save file \(it starts with b'not '\)"):
        load_cvnet(text)
    with pytest.raises(ValueError, match=r"notes.txt is not a whitening file .*it starts with b'not '"):
        Whitening.load(text)

    class Payload:   # what an attacker's pickle would run; weights_only refuses to build it
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    crafted = tmp_path / "crafted.pyth"
    torch.save({"model_state": Payload()}, crafted)
    with pytest.raises(CheckpointError) as caught:
        load_cvnet(crafted)
    message = str(caught.value)
    assert "holds Python objects other than tensors and plain data" in message and "\n" not in message, message
    assert "system" in message, message   # names the global it refused


def test_cvnet_flags_with_a_model_that_cannot_use_them_are_refused(tmp_path, capsys):
    from sglib import cli
    code = cli.main(["evaluate", "--data-root", str(tmp_path), "--dataset", "x", "--backbone", "mobilenet_v2",
                     "--relu-plus", "on"])
    assert code == 2 and "--depth and --relu-plus go with a CVNet --checkpoint" in capsys.readouterr().err


def test_depth_and_relu_plus_with_a_trained_checkpoint_are_refused_or_honoured(tmp_path):
    import argparse
    from sglib.cli.flags import load_model
    from sglib.models.trained import FORMAT, trained_backbone
    common = {"format": FORMAT, "step": 1, "config": {}, "classes": []}
    imagenet = tmp_path / "mobilenet.pt"
    torch.save({**common, "backbone": "mobilenet_v2",
                "model": trained_backbone("mobilenet_v2", 8, 3.0, False, "synthetic").state_dict()}, imagenet)
    cvnet = tmp_path / "cvnet.pt"
    torch.save({**common, "backbone": "cvnet_r50", "relu_plus": False, "model": SuperGlobalNet(50).state_dict()},
               cvnet)

    def model(path, depth=None, relu_plus=None):
        return load_model(argparse.Namespace(checkpoint=str(path), depth=depth, relu_plus=relu_plus))
    with pytest.raises(ValueError, match="--depth 101: .* is a trained mobilenet_v2.*leave out --depth"):
        model(imagenet, depth=101)
    with pytest.raises(ValueError, match="--relu-plus: .* trained mobilenet_v2, which has no ReLU\\+"):
        model(imagenet, relu_plus="on")
    with pytest.raises(ValueError, match="--depth 101: .* is a trained cvnet_r50"):
        model(cvnet, depth=101)
    assert model(cvnet).relu_plus is False                       # the recorded setting
    assert model(cvnet, depth=50, relu_plus="on").relu_plus is True   # an inference-time choice, honoured


def test_a_full_ranking_that_overflows_says_so_not_nan():
    from sglib.evaluate.retrieval import rank_database
    x = unit_rows(30, 8)
    big = x.copy()
    big[4] *= 1e30
    with pytest.raises(ValueError, match=r"query 0 and database row 4 overflows float32 .*expected L2-normalised"):
        rank_database(big[4:5], big)   # its own score, 1e60, is beyond float32
    with pytest.raises(ValueError, match=r"database row 4 holds NaN or infinite values \(in float32\)"):
        rank_database(x[:1].astype(np.float64), np.where(np.arange(30)[:, None] == 4, 1e300, x.astype(np.float64)))


def test_second_hostile_pass_neighbours_are_refused_by_name():
    from sglib.data.download import fetch
    from sglib.evaluate.retrieval import rank_database
    x = unit_rows(5, 4)
    for call, words in (
            (lambda: rank_database(x[:1] * 1e-30, x), "q: row.* vanish in float32"),
            (lambda: rank_database(x[None], x), "q: expected a non-empty 2-D floating"),
            (lambda: rank_database(x[:1] + 5j, x), "q: expected a non-empty 2-D floating"),
            (lambda: rank_database(x[:1, :3], x), "q has 3 dims, x 4"),
            (lambda: sglib.pooling.gem(torch.rand(1, 2, 3, 3), torch.tensor([3.0, 2.0])), "p must hold one value"),
            (lambda: sglib.pooling.gem(torch.rand(1, 2, 3, 3), 10 ** 400), "p: expected a finite number > 0"),
            (lambda: sglib.pooling.gem(torch.zeros(1, 2, 3, 3), 3.0, eps=0.0), "eps: expected a finite number > 0"),
            (lambda: sglib.pooling.GeM(-1.0), "GeM: p: expected a finite number > 0"),
            (lambda: sglib.pooling.relu_plus(torch.rand(2).half(), 1e300), "floor: expected a finite number"),
            (lambda: RerankSettings(M=10, K=2, beta=10 ** 400), "beta: expected a finite number >= 0"),
            (lambda: fetch("http://127.0.0.1:9/x", "/tmp/never", retries=10 ** 400), "retries: expected an integer"),
            (lambda: fetch("http://127.0.0.1:9/x", "/tmp/never", timeout=1e300), "timeout: expected a finite number"),
    ):
        with pytest.raises(ValueError, match=words):
            call()
    half = torch.rand(1, 3, 6, 6).half() * 1000   # x^2.5 alone overflows float16
    assert torch.isfinite(sglib.pooling.regional_gem(half, 2.5)).all()
    assert torch.isfinite(sglib.pooling.regional_gem(torch.rand(1, 2, 6, 6), 1e-3)).all()
    assert sglib.pooling.regional_gem(torch.rand(1, 2, 6, 6), 2.5, np.int64(3)).shape == (1, 2, 6, 6)


def test_a_directory_an_npz_or_a_torch_file_in_the_wrong_loader_is_named(tmp_path):
    from sglib.models.whitening import Whitening
    np.savez(tmp_path / "w.npz", a=np.zeros(2))
    torch.save({"a": torch.zeros(2)}, tmp_path / "t.pt")
    for call, words in ((lambda: load_cvnet(tmp_path), "is a directory"),
                        (lambda: Whitening.load(tmp_path), "is a directory"),
                        (lambda: load_cvnet(tmp_path / "w.npz"), "zip archive but not a torch.save file"),
                        (lambda: Whitening.load(tmp_path / "t.pt"), "not a whitening file .*a torch file")):
        with pytest.raises(ValueError, match=words):
            call()


@pytest.mark.parametrize("nq", [1, 70])
@pytest.mark.parametrize("parts", [False, True])
def test_a_database_row_whose_scores_are_minus_inf_is_named(nq, parts):
    # -inf scores never reach a running top-k nor a group maximum: the check reads the minima too
    from sglib import search
    rng = np.random.default_rng(29)
    x = rng.standard_normal((50000, 16)).astype(np.float32)
    q = np.repeat(np.abs(x[:1]), nq, 0)          # positive weights: the row's score is -inf, not NaN
    x[31234, 3] = -np.inf
    with pytest.raises(ValueError, match="row 31234 contains NaN or infinite values"):
        search.knn(q, [x[:20000], x[20000:]] if parts else x, 5)
