"""Baseline rerankers (alpha-QE, DBA, k-reciprocal, diffusion) and SuperGlobal's side ablation, each checked
against a naive per-query loop written from its definition; the graph cache; bad inputs."""
import numpy as np
import pytest
import torch

from sglib import rerankers
from sglib.method import rerank
from sglib.method.rerank_reference import superglobal_per_query
from sglib.rerankers import diffusion, expansion, graph, k_reciprocal


def _problem(seed=0, nq=4, n=240, d=24, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    x = centres[rng.integers(0, 12, n)] + 0.8 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, nq, replace=False)] + 0.4 * rng.standard_normal((nq, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q, x = q.astype(dtype), x.astype(dtype)
    return q, x, np.argsort(-(q @ x.T), axis=1, kind="stable")


def _naive_graph(x, k):
    s = x @ x.T
    ids = np.empty((len(x), k), np.int64)
    for i in range(len(x)):
        order = [j for j in np.argsort(-s[i], kind="stable") if j != i]
        ids[i] = order[:k]
    return ids, np.take_along_axis(s, ids, 1)


def test_graph_equals_naive_and_is_cached(tmp_path):
    _, x, _ = _problem()
    ids, sims = _naive_graph(x.astype(np.float64), 7)
    g = graph.database_graph(x, 7)
    # measured: identical ids, float32 similarities within 1.8e-7 of the float64 ones
    assert np.array_equal(g.ids.numpy(), ids) and np.allclose(g.sims.numpy(), sims, rtol=0, atol=1e-6)
    cached = graph.database_graph(x, 7, cache_dir=tmp_path)
    files = list(tmp_path.glob("graph-*.npz"))
    assert len(files) == 1 and torch.equal(cached.ids, g.ids)
    assert torch.equal(graph.database_graph(x, 7, cache_dir=tmp_path).ids, g.ids)       # read back
    files[0].write_bytes(b"not an npz")                                                 # corrupt copy: recomputed
    assert torch.equal(graph.database_graph(x, 7, cache_dir=tmp_path).ids, g.ids)
    x2 = x.copy()
    x2[0] = x2[1]
    graph.database_graph(x2, 7, cache_dir=tmp_path)                                      # other vectors: other file
    assert len(list(tmp_path.glob("graph-*.npz"))) == 2
    assert g.truncated(3).ids.shape == (len(x), 3)


def _naive_qe(q, c, n, alpha):
    s = c[:n] @ q
    w = np.ones_like(s) if alpha == 0 else np.maximum(s, 0) ** alpha
    e = q + sum(w[i] * c[i] for i in range(n))
    return c @ (e / np.linalg.norm(e))


@pytest.mark.parametrize("n,alpha", [(1, 3.0), (10, 3.0), (5, 0.0)])
def test_alpha_qe_equals_naive(n, alpha):
    q, x, ranks = _problem(1, dtype=np.float64)
    M = 60
    out = expansion.alpha_qe_scores(torch.from_numpy(q), torch.from_numpy(x[ranks[:, :M]]), n, alpha).numpy()
    for i in range(len(q)):
        assert np.allclose(out[i], _naive_qe(q[i], x[ranks[i, :M]], n, alpha), atol=1e-10)
    q32, x32, r32 = _problem(1)
    new = rerankers.rerank("alpha_qe", q32, x32, r32, M, n=n, alpha=alpha)
    for i in range(len(q)):
        expect = r32[i, :M][np.argsort(-_naive_qe(q32[i].astype(np.float64), x32[r32[i, :M]].astype(np.float64),
                                                  n, alpha), kind="stable")]
        assert np.array_equal(new[i, :M], expect)                  # measured: identical for every query
    assert np.array_equal(new[:, M:], r32[:, M:])


@pytest.mark.parametrize("k,alpha", [(5, 0.0), (10, 3.0)])
def test_dba_equals_naive(k, alpha):
    q, x, ranks = _problem(2, dtype=np.float64)
    M = 50
    ids, sims = _naive_graph(x, k)
    g = graph.DatabaseGraph(torch.from_numpy(ids), torch.from_numpy(sims))
    out = rerankers.rerank("alpha_dba", torch.from_numpy(q), torch.from_numpy(x), torch.from_numpy(ranks), M,
                           graph=g, k=k, alpha=alpha).numpy()
    for i in range(len(q)):
        top = ranks[i, :M]
        scores = []
        for c in top:
            w = np.ones(k) if alpha == 0 else np.maximum(sims[c], 0) ** alpha
            v = x[c] + sum(w[j] * x[ids[c, j]] for j in range(k))
            scores.append(q[i] @ v / np.linalg.norm(v))
        assert np.array_equal(out[i, :M], top[np.argsort(-np.array(scores), kind="stable")])
    assert np.array_equal(rerankers.rerank("dba", q, x, ranks, M, graph=g, k=k),
                          rerankers.rerank("alpha_dba", q, x, ranks, M, graph=g, k=k, alpha=0.0))


def _naive_k_reciprocal(q, c, k1, k2, lam):
    v = np.vstack([q, c])
    n = len(v)
    sq = np.maximum(2 - 2 * v @ v.T, 0)
    d = sq / sq.max()
    order = [np.argsort(d[i], kind="stable") for i in range(n)]

    def recip(i, k):
        return {j for j in order[i][:k + 1] if i in set(order[j][:k + 1])}
    w = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        star = set(r)
        for cand in r:
            rc = recip(cand, round(k1 / 2))
            if 3 * len(r & rc) >= 2 * len(rc):
                star |= rc
        for j in star:
            w[i, j] = np.exp(-d[i, j])
        w[i] /= w[i].sum()
    if k2 > 1:
        w = np.array([w[order[i][:k2]].mean(0) for i in range(n)])
    out = []
    for j in range(1, n):
        jac = 1 - np.minimum(w[0], w[j]).sum() / np.maximum(w[0], w[j]).sum()
        out.append((1 - lam) * jac + lam * d[0, j])
    return np.array(out)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (9, 3, 1.0)])
def test_k_reciprocal_equals_naive(k1, k2, lam):
    q, x, ranks = _problem(3, dtype=np.float64)
    M = 70
    out = k_reciprocal.k_reciprocal_distances(torch.from_numpy(q), torch.from_numpy(x[ranks[:, :M]]), k1, k2, lam)
    for i in range(len(q)):
        assert np.allclose(out[i].numpy(), _naive_k_reciprocal(q[i], x[ranks[i, :M]], k1, k2, lam), atol=1e-9)


def _naive_diffusion(q, c, top, ids, sims, gamma, alpha, query_k):
    m = len(top)
    pos = {int(t): a for a, t in enumerate(top)}
    a = np.zeros((m, m))
    for i, t in enumerate(top):
        for j, s in zip(ids[t], sims[t]):
            if int(j) in pos:
                a[i, pos[int(j)]] = max(s, 0) ** gamma
    a = np.minimum(a, a.T)
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    s = inv[:, None] * a * inv[None, :]
    y = np.maximum(c @ q, 0) ** gamma
    y[query_k:] = 0
    return np.linalg.solve(np.eye(m) - alpha * s, y)


def test_diffusion_equals_naive_solve():
    q, x, ranks = _problem(4, dtype=np.float64)
    M, k = 80, 12
    ids, sims = _naive_graph(x, k)
    g = graph.DatabaseGraph(torch.from_numpy(ids), torch.from_numpy(sims))
    top = torch.from_numpy(ranks[:, :M])
    f = diffusion.diffusion_scores(torch.from_numpy(q), torch.from_numpy(x[ranks[:, :M]]), top, g, 3.0, 0.9,
                                   iterations=400, query_k=10, tol=1e-12).numpy()
    for i in range(len(q)):
        expect = _naive_diffusion(q[i], x[ranks[i, :M]], ranks[i, :M], ids, sims, 3.0, 0.9, 10)
        assert np.allclose(f[i], expect, atol=1e-5 * np.abs(expect).max())
    # the default 20 steps already give the solver's order on the candidates that matter
    out = rerankers.rerank("diffusion", q, x, ranks, M, graph=g, k=k, alpha=0.9, query_k=10)
    expect = ranks[0, :M][np.argsort(-_naive_diffusion(q[0], x[ranks[0, :M]], ranks[0, :M], ids, sims, 3.0, 0.9, 10),
                                      kind="stable")]
    assert np.array_equal(out[0, :10], expect[:10])


@pytest.mark.parametrize("sides", ["query", "database", "both"])
def test_superglobal_sides_equal_reference(sides):
    q, x, ranks = _problem(5)
    out = rerank.superglobal(q, x, ranks, 60, 5, 0.3, sides=sides)
    assert np.array_equal(out, superglobal_per_query(q, x, ranks, 60, 5, 0.3, sides=sides))   # measured: identical
    assert np.array_equal(rerankers.rerank(f"superglobal{'' if sides == 'both' else '_' + sides}", q, x, ranks, 60,
                                           K=5, beta=0.3), out)


def test_every_method_torch_numpy_and_chunking(monkeypatch):
    q, x, ranks = _problem(6)
    g = graph.database_graph(x, 50)
    for name, method in rerankers.RERANKERS.items():
        gr = g if method.uses_graph else None
        a = rerankers.rerank(name, q, x, ranks, 100, graph=gr)
        b = rerankers.rerank(name, torch.from_numpy(q), torch.from_numpy(x), torch.from_numpy(ranks), 100, graph=gr)
        assert isinstance(b, torch.Tensor) and np.array_equal(a, b.numpy()), name
        assert np.array_equal(np.sort(a[:, :100], 1), np.sort(ranks[:, :100], 1)), name   # a permutation
        assert np.array_equal(a[:, 100:], ranks[:, 100:]), name
    monkeypatch.setattr(rerank, "_query_chunk", lambda m, d: 1)
    assert np.array_equal(rerankers.rerank("k_reciprocal", q, x, ranks, 100),
                          k_reciprocal.k_reciprocal(q, x, ranks, 100))


def test_bad_inputs():
    q, x, ranks = _problem(7)
    g = graph.database_graph(x, 10)
    with pytest.raises(ValueError, match="unknown parameter"):
        rerankers.rerank("alpha_qe", q, x, ranks, 50, K=3)
    with pytest.raises(ValueError, match="does not read a database graph"):
        rerankers.rerank("alpha_qe", q, x, ranks, 50, graph=g)
    with pytest.raises(ValueError, match="expected one of"):
        rerankers.rerank("qe", q, x, ranks, 50)
    with pytest.raises(ValueError, match="larger than the database size"):
        rerankers.rerank("alpha_qe", q, x[:40], ranks[:, :60] % 40, 60)
    with pytest.raises(ValueError, match=r"M: expected an integer >= 1"):
        rerankers.rerank("k_reciprocal", q, x, ranks[:, :0], 0)
    with pytest.raises(ValueError, match=r"M: expected an integer >= 1"):
        rerankers.rerank("dba", q, x, ranks, 0, graph=g)
    with pytest.raises(ValueError, match="larger than the ranking length"):
        rerankers.rerank("diffusion", q, x, ranks[:, :20], 50, graph=g, k=10)
    with pytest.raises(ValueError, match=r"n: expected an integer in \[1, 50\]"):
        rerankers.rerank("alpha_qe", q, x, ranks, 50, n=80)
    with pytest.raises(ValueError, match="holds 10"):
        rerankers.rerank("diffusion", q, x, ranks, 50, graph=g)                 # default k=50 > graph's 10
    with pytest.raises(ValueError, match="built for 240"):
        rerankers.rerank("alpha_dba", q, x[:100], np.argsort(-q @ x[:100].T, axis=1), 50, graph=g)
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, 4\]"):
        graph.database_graph(x[:5], 10)
    with pytest.raises(ValueError, match=r"alpha: expected a finite number in \(0, 1\)"):
        rerankers.rerank("diffusion", q, x, ranks, 50, graph=g, k=10, alpha=1.0)
    with pytest.raises(ValueError, match="gamma"):
        rerankers.rerank("diffusion", q, x, ranks, 50, graph=g, k=10, gamma=float("inf"))
    with pytest.raises(ValueError, match=r"lam: expected a finite number in \[0, 1\]"):
        rerankers.rerank("k_reciprocal", q, x, ranks, 50, lam=2)
    bad = x.copy()
    bad[ranks[0, 2]] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rerankers.rerank("alpha_qe", q, bad, ranks, 50)
    with pytest.raises(ValueError, match=r"row\(s\) \[.*\] contain NaN"):
        rerankers.rerank("alpha_dba", q, bad, ranks, 50)                         # graph built from x: named row
    # descriptors that are not unit rows, or not floating, are refused (they would rank silently wrong)
    with pytest.raises(ValueError, match="L2-normalised"):
        rerankers.rerank("k_reciprocal", q, 2 * x, ranks, 50)
    with pytest.raises(ValueError, match="L2-normalised"):
        rerankers.rerank("superglobal", 0.5 * q, x, ranks, 50)
    with pytest.raises(ValueError, match="floating"):
        rerankers.rerank("alpha_qe", q, (x > 0).astype(np.int64), ranks, 50)
    # a graph of another database of the same size is detected
    other = x[np.random.default_rng(0).permutation(len(x))]
    with pytest.raises(ValueError, match="built for other descriptors"):
        rerankers.rerank("diffusion", q, x, ranks, 50, graph=graph.database_graph(other, 10), k=10)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, N=240\)"):
        graph.DatabaseGraph(g.ids + 1000, g.sims)
    with pytest.raises(ValueError, match="int64 ids"):
        graph.DatabaseGraph(g.ids.float(), g.sims)
    # numpy integers and floats are numbers too; unsigned rankings are read as indices
    a = rerankers.rerank("diffusion", q, x, ranks, np.int64(50), graph=g, k=np.int64(10), alpha=np.float32(0.5))
    b = rerankers.rerank("diffusion", q, x, ranks, 50, graph=g, k=10, alpha=0.5)
    assert np.array_equal(a, b)
    assert np.array_equal(rerankers.rerank("alpha_qe", q, x, ranks.astype(np.uint64), 50),
                          rerankers.rerank("alpha_qe", q, x, ranks, 50))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", "foreign"])
def test_graph_cache_recomputes_bad_files(tmp_path, content):
    _, x, _ = _problem(8)
    g = graph.database_graph(x, 6, cache_dir=tmp_path)
    path = next(tmp_path.glob("graph-*.npz"))
    if content == "foreign":
        np.savez(path, ids=np.zeros((len(x), 6), np.int64), sims=np.zeros((len(x), 6), np.float32) + np.nan)
    else:
        path.write_bytes(content)
    again = graph.database_graph(x, 6, cache_dir=tmp_path)
    assert torch.equal(again.ids, g.ids) and torch.equal(again.sims, g.sims)
    assert list(tmp_path.iterdir()) == [path] and path.stat().st_mode & 0o044     # no temp left, readable by others
    with pytest.raises(ValueError, match="not a folder"):
        graph.database_graph(x, 6, cache_dir=path)
