"""The retrieval path: one-pass multi-setting extraction equals per-setting describe; one cache key per
model and settings whoever builds the extractor; stale images re-extracted; shortlists; paper table."""
import numpy as np
import pytest
import torch

from sglib.experiments.ablations import pooling_grid
from sglib.data.revisitop import load_revisitop
from sglib.experiments.tables import CVNET_ROWS, RELU_PLUS_ROW, RERANK_ROW, map_table, paper_table, with_rows
from sglib.evaluate.protocol import revisited
from sglib.method.descriptors import SCALES, DescriptorSettings
from sglib.evaluate.retrieval import RerankSettings, RetrievalResult, evaluate_retrieval, rank_database, retrieve
from sglib.evaluate.shortlist import junk_to_end
from sglib.method.rerank import superglobal
from sglib.models import SuperGlobalNet, load_cvnet
from sglib.scale.extract import build_extractor, cache_key, cached_features, split_settings


def test_multi_settings_equal_single_describe():
    torch.manual_seed(0)
    net = SuperGlobalNet(50, relu_plus=True).eval()
    settings = {"a": DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False),
                "b": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg="max"),
                "c": DescriptorSettings(scales=SCALES[3], gem_p=4.6, regional=True, scale_agg=10.0),
                "d": DescriptorSettings(scales=(0.7071, 1.0), gem_p=None, regional=True, regional_kernel=3,
                                        scale_agg="mean")}
    x = torch.randn(1, 3, 96, 128)
    rows = split_settings(build_extractor(net, settings).describe_fn(x).numpy(), list(settings))
    for name, st in settings.items():
        assert np.allclose(rows[name], net.describe_with(x, st).numpy(), atol=1e-6), name


def test_one_cache_key_per_model_and_settings():
    net = SuperGlobalNet(50).eval()
    st = DescriptorSettings(scales=(1.0,))
    images = ["x.jpg", "y.jpg"]
    key = cache_key(images, build_extractor(net, st))
    # a bare setting, a one-entry mapping under any label, and other worker counts: the same entry
    assert cache_key(images, build_extractor(net, {"run": st})) == key
    assert cache_key(images, build_extractor(net, {"other label": st}, num_workers=0)) == key
    assert cache_key(images, build_extractor(net, DescriptorSettings(scales=(1.0,), regional=False))) != key
    assert cache_key(images, build_extractor(net, st, max_side=64)) != key
    assert cache_key(images, build_extractor(net, st, batch_size=4)) != key
    with torch.no_grad():
        net.head.fc.bias.add_(1.0)
    assert cache_key(images, build_extractor(net, st)) != key


def test_edited_image_is_extracted_again(tmp_path):
    from PIL import Image
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"synthetic_{i}.png")
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(paths[-1])
    net = SuperGlobalNet(50).eval()
    ex = build_extractor(net, DescriptorSettings(scales=(1.0,), regional=False))
    first = cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False)
    Image.fromarray(np.full((40, 48, 3), 250, np.uint8)).save(paths[0])      # edited after caching
    with pytest.warns(UserWarning, match="changed since extraction"):
        second = cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False)
    fresh = cached_features(tmp_path / "fresh", paths, ex, shard_size=2, progress=False)
    np.testing.assert_array_equal(second, fresh)
    assert not np.allclose(second[0], first[0])
    np.testing.assert_array_equal(second[1:], first[1:])


def test_retrieve_and_per_protocol_shortlist():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:3] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ranks = rank_database(q, x)
    assert np.array_equal(ranks, np.argsort(-(q @ x.T), axis=1, kind="stable"))
    rr = RerankSettings(M=100, K=3)                                     # M above N: capped
    assert np.array_equal(retrieve(q, x, rr), superglobal(q, x, ranks, M=60, K=3))
    gnd = [{"easy": [0, 5], "hard": [7], "junk": [int(ranks[i, 0])] if i else []} for i in range(3)]
    shared = evaluate_retrieval(q, x, gnd, rr)
    separate = evaluate_retrieval(q, x, gnd, rr, shortlist="per_protocol")
    assert isinstance(shared, RetrievalResult) and shared.M == separate.M == 60 and shared.N == 60
    assert (shared.shortlist, separate.shortlist) == ("shared", "per_protocol")
    for p in ("easy", "medium", "hard"):
        assert 0 <= separate[p]["map"] <= 1 and 0 <= shared[p]["map"] <= 1
        # per protocol: the reranked head is that protocol's junk-free ranking, recomputed here
        expected = revisited(superglobal(q, x, junk_to_end(ranks, gnd, p), 60, 3), gnd)[p]["map"]
        assert separate[p]["map"] == pytest.approx(expected, abs=1e-12)
    assert shared["easy"]["map"] == pytest.approx(revisited(retrieve(q, x, rr), gnd)["easy"]["map"], abs=1e-12)
    with pytest.raises(ValueError, match="shortlist policy"):
        evaluate_retrieval(q, x, gnd, rr, shortlist="junk-free")


def test_grid_holds_module_rows_once_per_key():
    grid = with_rows(pooling_grid(), {"row": DescriptorSettings()})
    assert "row" in grid and "gem p=4.6" in grid and "scales 3 scales max" in grid
    assert all(isinstance(st, DescriptorSettings) for _, st in grid.values())


def test_paper_table_with_cvnet_checkpoint(tiny_dataset, golden_checkpoint, tmp_path):
    ds = load_revisitop(tiny_dataset, "tiny_synthetic")
    table = paper_table(ds, tmp_path / "cache", checkpoint=golden_checkpoint, depth=50,
                        rerank=RerankSettings(M=6, K=2), progress=False)
    assert list(table.index) == [*CVNET_ROWS, RELU_PLUS_ROW, RERANK_ROW]
    assert list(table.columns) == ["Easy", "Medium", "Hard"]
    assert ((table.values >= 0) & (table.values <= 100)).all()
    # the baseline row is CVNet's own global descriptor, recomputed here directly
    from sglib.evaluate.protocol import summary
    from sglib.data.preprocess import load_network_input
    net = load_cvnet(golden_checkpoint, depth=50, relu_plus=False)
    st = CVNET_ROWS["CVNet global (baseline)"]
    x = torch.cat([net.describe_with(load_network_input(ds.db_path(i)), st) for i in range(ds.n_db)]).numpy()
    q = torch.cat([net.describe_with(load_network_input(ds.query_path(i), ds.query_bbx(i)), st)
                   for i in range(ds.n_queries)]).numpy()
    expected = summary(revisited(rank_database(q, x), ds.gnd))
    assert table.loc["CVNet global (baseline)", "Medium"] == pytest.approx(round(expected["medium"], 1), abs=0.051)
    assert map_table({"t": {"r": revisited(rank_database(q, x), ds.gnd)}}).shape == (1, 3)


def test_paper_table_runs_the_network_on_the_device_it_is_given(tiny_dataset, golden_checkpoint, tmp_path,
                                                                   monkeypatch):
    import sglib.models
    seen = []
    real = sglib.models.load_cvnet

    def recording(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sglib.models, "load_cvnet", recording)
    ds = load_revisitop(tiny_dataset, "tiny_synthetic")
    paper_table(ds, tmp_path / "cache", checkpoint=golden_checkpoint, depth=50, rerank=RerankSettings(M=6, K=2),
                device="cpu", progress=False)
    assert seen == ["cpu", "cpu"]


def test_sha256_verification_catches_an_edit_that_keeps_size_and_time(tmp_path, monkeypatch):
    import os
    from PIL import Image
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"synthetic_{i}.bmp")                         # uncompressed: equal sizes
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(paths[-1])
    ex = build_extractor(SuperGlobalNet(50).eval(), DescriptorSettings(scales=(1.0,), regional=False))
    monkeypatch.setenv("SGLIB_CACHE_VERIFY", "sha256")
    first = cached_features(tmp_path / "cache", paths, ex, progress=False)
    st = os.stat(paths[0])
    paths[0].write_bytes(paths[1].read_bytes())                               # same size ...
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))                   # ... and same time
    assert os.stat(paths[0]).st_size == st.st_size
    with pytest.warns(UserWarning, match="changed since extraction"):
        second = cached_features(tmp_path / "cache", paths, ex, progress=False)
    assert not np.array_equal(first[0], second[0], equal_nan=True)
