"""Checks that catch bugs the rest of the suite let through (issue 22, found by planting one-line bugs):
widgets compared with a recomputation after each move, a shortlist smaller than the database with junk
inside it, whitening against its formulas, thresholds at their boundary. All data SYNTHETIC and small."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from sglib.bundled import synthetic_views as sv
from sglib.evaluate.protocol import protocol_sets, revisited, summary
from sglib.evaluate.retrieval import RerankSettings, evaluate_reranker, evaluate_retrieval, rank_database
from sglib.evaluate.streaming import evaluate_with_distractors
from sglib.experiments import widgets
from sglib.experiments.ablations import pooling_grid
from sglib.experiments.reranking import method_rerank_fn
from sglib.method import pooling
from sglib.models.whitening import fit_learned_whitening, fit_pca_whitening
from sglib.rerank import superglobal
from sglib.search import build_index, knn, recall_at_k, search_index


def clustered(seed=0, n_clusters=6, per_cluster=20, nq_per=2, d=16, noise=1.0):
    """Clustered unit vectors; a query's cluster is its positives (half easy, half hard), none junk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = (centres[labels] + noise * rng.standard_normal((len(labels), d))).astype(np.float32)
    q_labels = np.repeat(np.arange(n_clusters), nq_per)
    q = (centres[q_labels] + noise * rng.standard_normal((len(q_labels), d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gnd = []
    for c in q_labels:
        pos = np.flatnonzero(labels == c)
        gnd.append({"easy": pos[::2].tolist(), "hard": pos[1::2].tolist(), "junk": []})
    return q, x, gnd


class _Dataset:
    """What RerankExplorer reads of a dataset when its figure is not drawn (the figure is stubbed)."""

    def __init__(self, gnd):
        self.gnd, self.qimlist = gnd, [f"q{i}" for i in range(len(gnd))]


@pytest.fixture
def no_figure(monkeypatch):
    monkeypatch.setattr(widgets, "plot_before_after", lambda *args, **kwargs: plt.figure())


def test_rerank_explorer_shows_the_recomputed_table_after_each_move(no_figure):
    q, x, gnd = clustered(0)
    view = widgets.RerankExplorer(_Dataset(gnd), q, x)
    view.widget()
    ranks = rank_database(q, x)
    shown = []
    for control, value in ((view.M, 40), (view.beta, 2.0), (view.K, 2), (view.query, 3)):
        control.value = value
        M, K, beta = view.M.value, view.K.value, view.beta.value
        after = summary(revisited(superglobal(q, x, ranks, M, K, beta), gnd))
        expect = [after[p] for p in ("easy", "medium", "hard")]
        assert view.table.iloc[1].tolist() == expect, f"shown table is not the recomputation at M={M} K={K} beta={beta}"
        assert view.table.index[1] == f"SuperGlobal M={M} K={K} beta={beta:g}"
        shown.append(expect)
    assert shown[0] != shown[1] != shown[2], "the moves must change the numbers for this test to mean anything"


def test_distractor_explorer_rows_equal_direct_evaluation_after_each_move():
    q, x, gnd = clustered(1, d=8, noise=1.3)
    rng = np.random.default_rng(1)
    dis = rng.standard_normal((400, x.shape[1])).astype(np.float32)
    dis /= np.linalg.norm(dis, axis=1, keepdims=True)
    xb = np.concatenate([x, dis])
    index = build_index(xb, "ivfpq", nlist=16, m=4, refine=None, seed=0)
    _, exact = knn(q, xb, 20)
    settings = RerankSettings(M=40, K=4, beta=1.0)
    view = widgets.DistractorExplorer(q, x, gnd, [dis[:100], dis[100:]], [0, 150, 400], index, exact, [1, 8], settings)
    view.widget()
    for n, nprobe in ((400, 1), (150, 8)):
        view.N.value, view.nprobe.value = n, nprobe
        part = [dis[:100], dis[100:n]] if n > 100 else [dis[:n]]
        plain = evaluate_with_distractors(q, x, part, gnd).summary()
        reranked = evaluate_with_distractors(q, x, part, gnd, rerank=settings).summary()
        assert plain != reranked, "reranking must change the numbers for this test to mean anything"
        for label, want in (("global", plain), ("+ rerank", reranked)):
            got = view.table.loc[f"N = {n:,}, {label}", ["Easy", "Medium", "Hard"]].tolist()
            assert got == [want[p] for p in ("easy", "medium", "hard")], f"row {label!r} at N={n} is not recomputed"
        approx = search_index(index, q, exact.shape[1], nprobe=nprobe)[1]
        assert view.table.loc[f"IVF nprobe = {nprobe}", "recall@k"] == round(recall_at_k(approx, exact, 20), 3)


def test_setting_explorer_shows_the_chosen_rows_after_each_move():
    rng = np.random.default_rng(0)
    rows = [{"key": key, **desc, "easy": 85 + rng.normal(), "medium": 60 + rng.normal(), "hard": 32 + rng.normal()}
            for key, (desc, _) in pooling_grid().items()]
    scores = pd.DataFrame(rows).set_index("key")
    view = widgets.SettingExplorer(scores)
    view.widget()
    for family, key in (("gem", "gem p=8"), ("regional", "regional k=7 p=4"), ("regional", "regional k=3 p=2.5")):
        view.family.value = family
        view.setting.value = key
        row, base = scores.loc[key, ["easy", "medium", "hard"]], scores.loc["gem p=3", ["easy", "medium", "hard"]]
        expect = np.round(np.array([row, base, row - base], float), 2)
        assert np.array_equal(view.table.to_numpy(), expect), f"shown table is not {key!r}'s rows"


def _junk_first(seed=2):
    """Clustered data where each query's three nearest database images are its junk."""
    q, x, gnd = clustered(seed, noise=1.2)
    ranks = rank_database(q, x)
    for i, g in enumerate(gnd):
        near = ranks[i, :3].tolist()
        g["easy"] = [j for j in g["easy"] if j not in near]
        g["hard"] = [j for j in g["hard"] if j not in near]
        g["junk"] = near
    return q, x, gnd


@pytest.mark.parametrize("M", [10, 25])
def test_per_protocol_shortlist_drops_junk_from_a_top_m_smaller_than_the_database(M):
    q, x, gnd = _junk_first()
    fn = method_rerank_fn("superglobal", {"K": 3, "beta": 1.0})
    per = evaluate_reranker(q, x, gnd, fn, M, "per_protocol").summary()
    shared = evaluate_reranker(q, x, gnd, fn, M, "shared").summary()
    ranks = rank_database(q, x)
    for p in ("easy", "medium", "hard"):
        moved = np.array([[j for j in r if j not in protocol_sets(g, p)[1]] +
                          [j for j in r if j in protocol_sets(g, p)[1]] for r, g in zip(ranks, gnd)])
        naive = summary(revisited(superglobal(q, x, moved, M, 3, 1.0), gnd))[p]
        assert per[p] == naive, f"per_protocol {p}: not the top-{M} after that protocol's junk"
    assert per != shared, "junk inside the top-M must make the policies differ"


def test_learned_whitening_mean_is_over_pair_members_only():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4)) + np.arange(40)[:, None] / 10     # images differ in their means
    pairs = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]])
    w = fit_learned_whitening(X, pairs)
    np.testing.assert_array_equal(w.mean.numpy(), X[:12].mean(axis=0).astype(np.float32))


@pytest.mark.parametrize("shrinkage", [0.3, 1.0])
def test_shrinkage_pulls_towards_the_mean_variance_identity(shrinkage):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 8)) * np.arange(1, 9)                   # N < D: shrinkage is what makes it whiten
    cov = np.cov(X, rowvar=False)
    target = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / 8 * np.eye(8)
    p = fit_pca_whitening(X, shrinkage=shrinkage).projection.double().numpy()
    # max |P C_a P^T - I| measured 6.4e-8 (float32 projection)
    np.testing.assert_allclose(p @ target @ p.T, np.eye(8), rtol=0, atol=3e-7)
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    diffs = X[pairs[:, 0]] - X[pairs[:, 1]]
    intra = diffs.T @ diffs / len(diffs)
    intra_target = (1 - shrinkage) * intra + shrinkage * np.trace(intra) / 8 * np.eye(8)
    p = fit_learned_whitening(X, pairs, shrinkage=shrinkage).projection.double().numpy()
    np.testing.assert_allclose(p @ intra_target @ p.T, np.eye(8), rtol=0, atol=3e-7)   # measured 5.0e-8


@pytest.mark.parametrize("side, mode", [(2, "replicate"), (3, "reflect")])
def test_regional_gem_pads_by_reflection_only_when_the_map_is_larger_than_the_pad(side, mode):
    x = torch.rand(1, 2, side, side + 1, generator=torch.Generator().manual_seed(side))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode=mode)
    window = padded[0, 1, 0:5, 0:5].pow(2.5).mean().pow(1 / 2.5)
    expected = 0.5 * window + 0.5 * x[0, 1, 0, 0]
    # float32 error of one window measured 3e-8
    assert abs(float(pooling.regional_gem(x, 2.5, 5)[0, 1, 0, 0]) - float(expected)) < 2e-7


def test_view_labels_at_each_threshold():
    below = np.nextafter
    assert sv.label_view(sv.JUNK_MAX_VISIBLE, 0.0) == "hard"
    assert sv.label_view(below(sv.JUNK_MAX_VISIBLE, 0), 0.0) == "junk"
    assert sv.label_view(sv.EASY_MIN_VISIBLE, 0.0) == "easy"
    assert sv.label_view(below(sv.EASY_MIN_VISIBLE, 0), 0.0) == "hard"
    assert sv.label_view(1.0, below(sv.EASY_MAX_STRENGTH, 0)) == "easy"
    assert sv.label_view(1.0, sv.EASY_MAX_STRENGTH) == "hard"


def test_evaluate_retrieval_with_rerank_equals_a_direct_rerank():
    q, x, gnd = clustered(3)
    got = evaluate_retrieval(q, x, gnd, RerankSettings(M=30, K=4, beta=0.5)).summary()
    want = summary(revisited(superglobal(q, x, rank_database(q, x), 30, 4, 0.5), gnd))
    assert got == want


def test_gem_floors_at_eps_so_zero_and_negative_channels_stay_finite():
    x = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    x[0, 0] = 0.0                        # a dead channel (all zero after a ReLU)
    x[0, 1, :2] = -1.0                   # negatives: the floor applies before the power
    naive = x.double().clamp(min=1e-6).pow(3.0).mean(dim=(-2, -1)).pow(1 / 3.0)
    got = pooling.gem(x, p=3.0, eps=1e-6)
    # float32 against float64: measured relative error 6.2e-8
    torch.testing.assert_close(got.double(), naive, rtol=3e-7, atol=0)


def test_recall_at_k_equals_naive_set_overlap_row_by_row():
    assert recall_at_k(np.array([[2], [0]]), np.array([[5], [3]]), 1) == 0.0   # row 1's 0 is not row 0's 5
    rng = np.random.default_rng(0)
    exact = np.stack([rng.permutation(12)[:4] for _ in range(30)])
    approx = np.stack([rng.permutation(12)[:4] for _ in range(30)])
    naive = np.mean([len(set(a) & set(e)) / 4 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall_at_k(approx, exact, 4) == pytest.approx(naive, abs=1e-12)


def test_alpha_qe_gives_no_weight_to_candidates_of_negative_similarity():
    from sglib.rerankers.expansion import alpha_qe_scores
    rng = np.random.default_rng(0)
    q = rng.standard_normal(16)
    q /= np.linalg.norm(q)
    c = rng.standard_normal((12, 16))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    s = c @ q
    assert (s < 0).any(), "the test needs candidates that point away from the query"
    e = q + ((np.maximum(s, 0) ** 3)[:, None] * c).sum(0)
    naive = c @ (e / np.linalg.norm(e))
    got = alpha_qe_scores(torch.from_numpy(q)[None], torch.from_numpy(c)[None], n=12, alpha=3.0)[0].numpy()
    np.testing.assert_allclose(got, naive, rtol=0, atol=1e-12)          # float64 throughout


def test_distortion_strength_of_each_dial_at_its_full_scale():
    zero = {"perspective": 0.0, "rotation_deg": 0.0, "photometric": 0.0, "blur": 0.0}
    full = {"perspective": 0.25, "rotation_deg": 30.0, "photometric": 0.5, "blur": 3.0, "noise": 16.0}
    assert sv.distortion_strength(zero) == 0.0
    for dial, value in full.items():
        assert sv.distortion_strength({**zero, dial: value}) == 1.0, dial
    assert sv.distortion_strength({**zero, "rotation_deg": -15.0}) == 0.5, "a turn either way distorts as much"
    assert sv.distortion_strength({**zero, "jpeg_quality": 0}) == 1.0


def test_integer_flags_accept_their_minimum_and_refuse_one_less():
    import argparse
    from sglib.cli.flags import positive_int
    for minimum in (0, 1, 16):
        parse = positive_int("--x", minimum)
        assert parse(str(minimum)) == minimum
        with pytest.raises(argparse.ArgumentTypeError, match=f">= {minimum}"):
            parse(str(minimum - 1))


def test_checks_at_their_bounds():
    from sglib._checks import check_int, check_real
    assert check_real(0.0, "x", lo=0) == 0.0 and check_real(1.0, "x", hi=1) == 1.0
    for kwargs in ({"lo": 0, "open_lo": True}, {"hi": 0, "open_hi": True}):
        with pytest.raises(ValueError, match="x: expected"):
            check_real(0.0, "x", **kwargs)
    assert check_int(4, "n", 4, 4) == 4
    for value in (3, 5):
        with pytest.raises(ValueError, match=r"n: expected an integer in \[4, 4\]"):
            check_int(value, "n", 4, 4)


def test_ransac_fits_a_homography_from_exactly_four_matches():
    from sglib.local.verify import ransac_inlier_count
    xy = np.array([[0, 0], [10, 0], [0, 10], [10, 12]], np.float32)
    assert ransac_inlier_count(xy, xy * 2 + 3, np.stack([np.arange(4)] * 2, axis=1)) == 4
