"""SuperGlobal reranking: reference outputs, a naive per-query oracle, numpy/torch, errors."""
import numpy as np
import pytest
import torch

from sglib.method import rerank
from sglib.method.rerank_reference import superglobal_one_query, superglobal_per_query
from conftest import load_npz


@pytest.mark.parametrize("name", ["rerank_n450_M400_K9_b0.15.npz", "rerank_n700_M100_K5_b0.3.npz",
                                  "rerank_n1500_M400_K9_b0.15.npz"])
def test_matches_reference(name):
    d = load_npz(name)
    M, K, beta = int(d["M"]), int(d["K"]), float(d["beta"])
    initial, final = d["ranks_initial"].T, d["ranks_final"].T   # golden files are (N, nq)
    out = rerank.superglobal(d["Q"], d["X"], initial, M=M, K=K, beta=beta)
    assert np.array_equal(out[:, M:], final[:, M:])
    assert np.array_equal(out[:, :M], final[:, :M])          # measured: identical on all three files
    assert (out[:, :M] != initial[:, :M]).any()          # it really reordered something


def _random_problem(seed, nq=5, n=300, d=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, nq)] + 0.3 * rng.standard_normal((nq, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, x, np.argsort(-q @ x.T, axis=1, kind="stable")


@pytest.mark.parametrize("M,K,beta", [(50, 3, 0.15), (120, 9, 0.5), (10, 9, 0.15)])
def test_equals_naive_per_query(M, K, beta):
    q, x, ranks = _random_problem(M)
    assert np.array_equal(rerank.superglobal(q, x, ranks, M, K, beta), superglobal_per_query(q, x, ranks, M, K, beta))


def test_torch_in_torch_out_and_candidates_api():
    q, x, ranks = _random_problem(1)
    out_np = rerank.superglobal(q, x, ranks, M=60, K=5)
    out_t = rerank.superglobal(torch.from_numpy(q), torch.from_numpy(x), torch.from_numpy(ranks), M=60, K=5)
    assert isinstance(out_t, torch.Tensor) and np.array_equal(out_t.numpy(), out_np)
    order, scores = rerank.superglobal_candidates(q[2], x[ranks[2, :60]], K=5)
    assert np.array_equal(ranks[2, :60][order], out_np[2, :60])
    assert np.allclose(scores, superglobal_one_query(q[2], x[ranks[2, :60]], K=5), atol=1e-6)
    order_t, _ = rerank.superglobal_candidates(torch.from_numpy(q[2]), torch.from_numpy(x[ranks[2, :60]]), K=5)
    assert np.array_equal(order_t.numpy(), order)


def test_query_chunking_gives_same_result(monkeypatch):
    q, x, ranks = _random_problem(2, nq=7)
    full = rerank.superglobal(q, x, ranks, M=40, K=4)
    monkeypatch.setattr(rerank, "_query_chunk", lambda m, d: 2)
    assert np.array_equal(rerank.superglobal(q, x, ranks, M=40, K=4), full)


def test_bad_inputs():
    q, x, ranks = _random_problem(3)
    with pytest.raises(ValueError, match="larger than the ranking length"):
        rerank.superglobal(q, x, ranks[:, :20], M=50)
    with pytest.raises(ValueError, match="dimension"):
        rerank.superglobal(q[:, :10], x, ranks, M=50)
    with pytest.raises(ValueError, match="one row per query"):
        rerank.superglobal(q, x, ranks[:3], M=50)
    with pytest.raises(ValueError, match="integer"):
        rerank.superglobal(q, x, ranks.astype(float), M=50)
    with pytest.raises(ValueError, match="K < M"):
        rerank.superglobal(q, x, ranks, M=5, K=9)
    bad = x.copy()
    bad[ranks[0, 3]] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rerank.superglobal(q, bad, ranks, M=50)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 300\)"):
        rerank.superglobal(q, x, ranks + 1, M=300)
    with pytest.raises(ValueError, match="at least K"):
        rerank.superglobal_candidates(q[0], x[:5], K=9)


def _naive_top(sim: np.ndarray, width: int):
    """Per row: the ``width`` largest values, descending, equal values by lower column (a stable sort)."""
    order = np.argsort(-sim, axis=-1, kind="stable")[..., :width]
    return np.take_along_axis(sim, order, -1), order


@pytest.mark.parametrize("m,width", [(400, 10), (37, 10), (10, 10), (12, 1), (5, 3), (400, 41)])
def test_top_neighbours_equal_a_stable_sort_ties_included(m, width):
    # continuous similarities, then small integers (many ties, at the cut too), then rows sorted either way
    from sglib.method.rerank import _top_neighbours_grouped, top_neighbours
    rng = np.random.default_rng(m + width)
    c = torch.nn.functional.normalize(torch.randn(3, m, 16, generator=torch.Generator().manual_seed(m)), dim=2)
    tied = torch.from_numpy(rng.integers(-3, 4, (3, m, m)).astype(np.float32))
    ascending = torch.arange(m, dtype=torch.float32).expand(2, m, m).contiguous()
    for sim in (rerank.gram(c), tied, ascending, ascending.flip(-1)):
        want_v, want_c = _naive_top(sim.numpy(), width)
        vals, cols = top_neighbours(sim, width)
        np.testing.assert_array_equal(vals.numpy(), want_v)
        np.testing.assert_array_equal(cols.numpy(), want_c)
        g_vals, g_cols = _top_neighbours_grouped(sim, width)      # the CUDA path: same values, any tied column
        np.testing.assert_array_equal(g_vals.numpy(), want_v)
        np.testing.assert_array_equal(np.take_along_axis(sim.numpy(), g_cols.numpy(), -1), want_v)


def test_top_neighbours_do_not_depend_on_the_thread_count():
    from sglib.method.rerank import top_neighbours
    c = torch.nn.functional.normalize(torch.randn(4, 400, 32, generator=torch.Generator().manual_seed(5)), dim=2)
    sim = rerank.gram(c)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = top_neighbours(sim, 10)
        torch.set_num_threads(2)
        two = top_neighbours(sim, 10)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
