"""sglib.search: exact blocked top-k against a naive full arg-sort, faiss indexes on synthetic data."""
import hashlib

import numpy as np
import pytest
import torch

from sglib import search


def naive_topk(q, x, k):
    full = q.astype(np.float64) @ x.astype(np.float64).T
    ids = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, ids, 1), ids


def synthetic_clustered(n, d, n_clusters, seed, noise=0.3):
    """Synthetic unit vectors: Gaussian clusters around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_size", [None, 7, 64])
def test_knn_equals_full_argsort(block_size):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((9, 16)).astype(np.float32)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    scores, ids = search.knn(q, x, 25, block_size=block_size, query_block=4)
    want_s, want_i = naive_topk(q, x, 25)
    assert isinstance(ids, np.ndarray) and ids.shape == (9, 25) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [5, 11, 1000])
def test_knn_ties_lower_index_first(block_size):
    # small integer vectors: scores are exact in float32 and tie a lot, at the cut-off too
    rng = np.random.default_rng(1)
    q = rng.integers(-2, 3, (12, 4)).astype(np.float32)
    x = rng.integers(-2, 3, (200, 4)).astype(np.float32)
    for k in (1, 10, 37, 200):
        scores, ids = search.knn(q, x, k, block_size=block_size)
        want_s, want_i = naive_topk(q, x, k)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_array_equal(scores, want_s)


def test_knn_torch_and_float16_storage():
    rng = np.random.default_rng(2)
    q = rng.integers(-3, 4, (5, 8)).astype(np.float32)
    x = rng.integers(-3, 4, (120, 8)).astype(np.float32)  # exact in float16 too
    want_s, want_i = naive_topk(q, x, 30)
    s, i = search.knn(torch.from_numpy(q), torch.from_numpy(x).half(), 30, block_size=16)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and i.dtype == torch.int64
    np.testing.assert_array_equal(i.numpy(), want_i)
    np.testing.assert_array_equal(s.numpy(), want_s)
    s16, i16 = search.knn(q, x.astype(np.float16), 30, block_size=16)  # numpy float16 -> float32 blocks
    np.testing.assert_array_equal(i16, want_i)
    assert s16.dtype == np.float32
    s64, _ = search.knn(q.astype(np.float64), x.astype(np.float64), 3)
    assert s64.dtype == np.float64


def test_knn_memmap_database(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 12)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    q = rng.standard_normal((4, 12)).astype(np.float32)
    _, ids = search.knn(q, np.load(tmp_path / "x.npy", mmap_mode="r"), 10, block_size=64)
    np.testing.assert_array_equal(ids, naive_topk(q, x, 10)[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on GPU machines)")
def test_knn_cuda_follows_device():
    rng = np.random.default_rng(4)
    q = rng.integers(-2, 3, (6, 8)).astype(np.float32)
    x = rng.integers(-2, 3, (400, 8)).astype(np.float32)
    s, i = search.knn(torch.from_numpy(q).cuda(), torch.from_numpy(x).cuda(), 50, block_size=64)
    assert s.device.type == "cuda" and i.device.type == "cuda"
    np.testing.assert_array_equal(i.cpu().numpy(), naive_topk(q, x, 50)[1])
    _, i2 = search.knn(torch.from_numpy(q).cuda(), x, 50, block_size=64)  # CPU database, GPU blocks
    np.testing.assert_array_equal(i2.cpu().numpy(), naive_topk(q, x, 50)[1])


def test_knn_errors():
    q, x = np.zeros((2, 4), np.float32), np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="dimension"):
        search.knn(q, np.zeros((10, 5), np.float32), 3)
    with pytest.raises(ValueError, match="2 dimensions"):
        search.knn(q[0], x, 3)
    with pytest.raises(ValueError, match="k must be"):
        search.knn(q, x, 11)
    with pytest.raises(ValueError, match="k must be"):
        search.knn(q, x, 0)
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7 contains NaN"):
        search.knn(q, bad, 3, block_size=4)
    with pytest.raises(ValueError, match="q: row 1"):
        search.knn(np.array([[0, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32), x, 3)
    with pytest.raises(ValueError, match="floating"):
        search.knn(q, np.zeros((10, 4), np.int32), 3)
    with pytest.raises(ValueError, match="torch.Tensor or numpy"):
        search.knn([[0.0] * 4], x, 3)


def test_ivfpq_recall_on_synthetic_clusters():
    x = synthetic_clustered(20000, 32, 50, seed=5)
    q = synthetic_clustered(40, 32, 50, seed=6)
    _, exact = search.knn(q, x, 100)
    index = search.build_index(x, "ivfpq", nlist=64, m=8, seed=0)
    _, approx = search.search_index(index, q, 100, nprobe=16, k_factor=8)
    assert search.recall_at_k(approx, exact, 100) >= 0.95
    # without the exact refine stage the PQ codes alone are clearly worse: the test can tell
    _, coarse = search.search_index(index.base_index, q, 100, nprobe=16)
    assert search.recall_at_k(coarse, exact, 100) < search.recall_at_k(approx, exact, 100)


def test_build_is_seeded():
    x = synthetic_clustered(3000, 16, 10, seed=7)
    a = search.build_index(x, "ivfpq", nlist=16, m=4, refine=None, seed=3)
    b = search.build_index(x, "ivfpq", nlist=16, m=4, refine=None, seed=3)
    q = x[:20]
    np.testing.assert_array_equal(search.search_index(a, q, 10, nprobe=4)[1], search.search_index(b, q, 10, nprobe=4)[1])


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "hnsw", "ivfpq"])
def test_save_load_round_trip(kind, tmp_path):
    x = synthetic_clustered(3000, 16, 10, seed=8)
    q = synthetic_clustered(10, 16, 10, seed=9)
    params = {"nlist": 16, "m": 4} if kind == "ivfpq" else {}
    index = search.build_index(x, kind, **params)
    before = search.search_index(index, q, 20, **({"nprobe": 4} if kind == "ivfpq" else {}))
    search.save_index(index, tmp_path / "sub" / "index.faiss")
    loaded = search.load_index(tmp_path / "sub" / "index.faiss")
    after = search.search_index(loaded, q, 20)  # nprobe / k_factor are saved with the index
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert search.index_bytes(index) > 0


def test_exact_indexes_match_knn_and_fp16_halves_memory():
    x = synthetic_clustered(2000, 32, 10, seed=10)
    q = synthetic_clustered(8, 32, 10, seed=11)
    _, exact = search.knn(q, x, 10)
    flat, fp16 = search.build_index(x, "flat"), search.build_index(x, "flat_fp16")
    assert search.recall_at_k(search.search_index(flat, q, 10)[1], exact, 10) == 1.0
    assert search.recall_at_k(search.search_index(fp16, q, 10)[1], exact, 10) >= 0.9
    assert search.index_bytes(fp16) < 0.6 * search.index_bytes(flat)


def test_load_index_errors(tmp_path):
    with pytest.raises(search.IndexFileError, match="not found"):
        search.load_index(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"this is not a faiss index")
    with pytest.raises(ValueError, match="corrupt"):
        search.load_index(bad)


def test_index_argument_errors():
    x = synthetic_clustered(500, 16, 5, seed=12)
    with pytest.raises(ValueError, match="kind"):
        search.build_index(x, "lsh")
    with pytest.raises(ValueError, match="divide"):
        search.build_index(x, "ivfpq", nlist=8, m=5)
    with pytest.raises(ValueError, match="nlist"):
        search.build_index(x, "ivfpq", nlist=1024)
    index = search.build_index(x, "flat")
    with pytest.raises(ValueError, match="dimension"):
        search.search_index(index, np.zeros((2, 8), np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        search.search_index(index, np.full((2, 16), np.nan, np.float32), 3)


def test_recall_at_k_counts_overlap():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 1, 9, -1], [7, 6, 5, 4]])
    assert search.recall_at_k(approx, exact, 4) == pytest.approx((2 + 4) / 8)
    assert search.recall_at_k(approx, exact, 2) == pytest.approx((1 + 0) / 4)
    with pytest.raises(ValueError):
        search.recall_at_k(approx, exact[:1], 2)


def test_altered_index_file_is_refused(tmp_path):
    x = synthetic_clustered(500, 16, 5, seed=13)
    q = synthetic_clustered(5, 16, 5, seed=14)
    path = tmp_path / "index.faiss"
    index = search.build_index(x, "flat")
    search.save_index(index, path)
    before = search.search_index(index, q, 10)
    untouched = search.search_index(search.load_index(path), q, 10)
    np.testing.assert_array_equal(before[1], untouched[1])
    np.testing.assert_array_equal(before[0], untouched[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                                   # one byte of vector data changes
    path.write_bytes(bytes(data))
    with pytest.raises(search.IndexFileError, match="checksum mismatch: the file changed after it was saved"):
        search.load_index(path)


def test_index_without_valid_checksum_record_is_refused(tmp_path):
    path = tmp_path / "index.faiss"
    search.save_index(search.build_index(synthetic_clustered(100, 8, 3, seed=15), "flat"), path)
    record = tmp_path / "index.faiss.sha256"
    record.write_text("not a digest\n")
    with pytest.raises(search.IndexFileError, match="unreadable.*re-save it"):
        search.load_index(path)
    record.unlink()
    with pytest.raises(search.IndexFileError, match=r"no checksum record .*index\.faiss\.sha256.*re-save it"):
        search.load_index(path)
    path.write_bytes(b"not a faiss index")                      # consistent record, unparseable bytes
    record.write_text(hashlib.sha256(b"not a faiss index").hexdigest() + "  index.faiss\n")
    with pytest.raises(search.IndexFileError, match="corrupt or not a faiss index"):
        search.load_index(path)


# ---- the pruned running top-k (each block's groups of columns against the running k-th score)


def _tied_data(nq, n, d, seed, low=-2, high=3):
    """Small integer vectors: exact in float16/float32, with many equal scores, at the cut-off too."""
    rng = np.random.default_rng(seed)
    return (rng.integers(low, high, (nq, d)).astype(np.float32), rng.integers(low, high, (n, d)).astype(np.float32))


@pytest.mark.parametrize("block_size", [256, 512, 300, 37, None])
@pytest.mark.parametrize("k", [1, 7, 100, 700])
def test_pruned_topk_equals_full_sort_with_ties(block_size, k):
    # 256/512 use groups of 256 columns; 300 and 37 (not multiples) whole rows; k=700 > every block
    q, x = _tied_data(13, 3000, 4, seed=20)
    want_s, want_i = naive_topk(q, x, k)
    s, i = search.knn(q, x, k, block_size=block_size)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(s, want_s)


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_pruned_topk_sorted_databases(order):
    # ascending scores: every block beats the running k-th (the per-row top-k path every time);
    # descending: after the first block nothing does (every later group is skipped)
    rng = np.random.default_rng(21)
    q = np.ones((3, 8), np.float32)
    x = rng.integers(-20, 21, (4096, 8)).astype(np.float32)
    x = x[np.argsort(x.sum(1), kind="stable")]
    if order == "descending":
        x = x[::-1].copy()
    for k in (5, 300):
        want_s, want_i = naive_topk(q, x, k)
        s, i = search.knn(q, x, k, block_size=512)
        np.testing.assert_array_equal(i, want_i)
        np.testing.assert_array_equal(s, want_s)


def test_pruned_topk_parts_float16_query_blocks():
    # several parts of mixed storage (float16 numpy, float32 torch, read-only float32 memmap-like),
    # blocks spanning parts (copied into one reused buffer), more queries than a query block
    q, x = _tied_data(37, 2500, 6, seed=22, low=-3, high=4)
    ro = x[1700:].copy()
    ro.flags.writeable = False
    parts = [x[:900].astype(np.float16), torch.from_numpy(x[900:1700].copy()), ro]
    for k, block_size, query_block in ((50, 256, 8), (333, 768, 37), (10, 1000, 5)):
        want_s, want_i = naive_topk(q, x, k)
        s, i = search.knn(q, parts, k, block_size=block_size, query_block=query_block)
        assert isinstance(s, torch.Tensor)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_array_equal(s.numpy(), want_s)
        s16, i16 = search.knn(q, x.astype(np.float16), k, block_size=block_size, query_block=query_block)
        np.testing.assert_array_equal(i16, want_i)


def test_pruned_topk_many_flushes_random_scores():
    # real-valued scores, many small blocks: pending entries are merged many times along the scan
    rng = np.random.default_rng(23)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    x = rng.standard_normal((20000, 16)).astype(np.float32)
    want_s, want_i = naive_topk(q, x, 64)
    s, i = search.knn(q, x, 64, block_size=256)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)


def test_running_topk_flush_every_block_and_never():
    q, x = _tied_data(9, 2048, 4, seed=24)
    want_s, want_i = naive_topk(q, x, 40)
    for flush_every in (0, 1, 10**9):  # 0: merge after every block; 10**9: only at the end
        top = search._RunningTopK(9, 40, torch.float32, "cpu", flush_every=flush_every)
        for x0 in range(0, 2048, 256):
            top.add(torch.from_numpy(q) @ torch.from_numpy(x[x0:x0 + 256]).T, x0)
        top.flush()
        np.testing.assert_array_equal(top.best_i.numpy(), want_i)
        np.testing.assert_array_equal(top.best_s.numpy(), want_s)


def test_database_blocks_reuse_one_buffer():
    rng = np.random.default_rng(25)
    x = rng.standard_normal((1000, 5)).astype(np.float32)
    db = search.Database([x[:300].astype(np.float16), x[300:650], torch.from_numpy(x[650:].copy())])
    plain = [(s, b.clone()) for s, b in db.blocks(256)]
    reused = [(s, b.clone()) for s, b in db.blocks(256, reuse=True)]
    assert [s for s, _ in plain] == [s for s, _ in reused] == [0, 256, 512, 768]
    for (_, a), (_, b) in zip(plain, reused):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    want = x.copy()
    want[:300] = want[:300].astype(np.float16)  # float16 storage, read as float32
    np.testing.assert_array_equal(torch.cat([b for _, b in reused]).numpy(), want)


def test_knn_overflow_to_minus_inf_is_refused():
    q = np.array([[1e30, 0.0]], np.float32)
    x = np.array([[-1e30, 0.0], [-1e30, 1.0]], np.float32)  # finite inputs, products -inf
    with pytest.raises(ValueError, match="overflow"):
        search.knn(q, x, 2)


def test_ivfpq_fast_scan_recall_and_round_trip(tmp_path):
    x = synthetic_clustered(20000, 32, 50, seed=26)
    q = synthetic_clustered(40, 32, 50, seed=27)
    _, exact = search.knn(q, x, 100)
    index = search.build_index(x, "ivfpq", nlist=64, m=16, nbits=4, fast_scan=True, refine="fp16", seed=0)
    assert isinstance(search.faiss.downcast_index(index.base_index), search.faiss.IndexIVFPQFastScan)
    scores, approx = search.search_index(index, q, 100, nprobe=16, k_factor=8)
    assert search.recall_at_k(approx, exact, 100) >= 0.95
    search.save_index(index, tmp_path / "fs.faiss")
    again = search.search_index(search.load_index(tmp_path / "fs.faiss"), q, 100)
    np.testing.assert_array_equal(again[1], approx)
    with pytest.raises(ValueError, match="fast_scan needs nbits=4"):
        search.build_index(x, "ivfpq", nlist=64, m=16, nbits=8, fast_scan=True)


def test_few_queries_on_a_resident_database_read_it_as_views_in_one_product():
    # under 16 queries a float32 database already in memory is scanned in blocks of up to 64 MiB of scores,
    # with no copy buffer: the same answers, ties at the cut included, as the copied path of several parts
    q, x = _tied_data(3, 5000, 4, seed=26)
    ro = x.copy()
    ro.flags.writeable = False
    assert search.Database(x).is_view() and search.Database(torch.from_numpy(x)).is_view()
    for storage in (ro, x.astype(np.float16), np.asfortranarray(x), [x[:2000], x[2000:]]):
        assert not search.Database(storage).is_view()
    assert search.default_block_size(1, d=4, resident=True) == (64 << 20) // 4 // 256 * 256
    assert search.default_block_size(15, d=4, resident=True) < search.default_block_size(1, d=4, resident=True)
    assert search.default_block_size(1, d=4) == 65536
    for nq in (1, 3):
        for k in (1, 9, 100):
            want_s, want_i = naive_topk(q[:nq], x, k)
            for storage in (x, torch.from_numpy(x), ro, [x[:2000], x[2000:]]):
                s, i = search.knn(q[:nq], storage, k)
                np.testing.assert_array_equal(np.asarray(i), want_i)
                np.testing.assert_array_equal(np.asarray(s), want_s)
    blocks = list(search.Database(x).blocks(10**6, reuse=True))
    assert len(blocks) == 1 and blocks[0][1].data_ptr() == torch.from_numpy(x).data_ptr()   # a view, not a copy


def test_one_query_gives_the_same_answer_on_any_thread_count():
    # one query is scored by faiss's SIMD kernel over rows split between the threads: the split changes nothing
    rng = np.random.default_rng(27)
    x = rng.standard_normal((20000, 48)).astype(np.float32)
    q = rng.standard_normal((1, 48)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        answers = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            answers.append(search.knn(q, x, 50))
    finally:
        torch.set_num_threads(before)
    for s, i in answers[1:]:
        np.testing.assert_array_equal(s, answers[0][0])
        np.testing.assert_array_equal(i, answers[0][1])
    want = np.sort((x.astype(np.float64) @ q[0].astype(np.float64)))[::-1][:50]
    np.testing.assert_allclose(answers[0][0][0], want, rtol=0, atol=1e-4)

