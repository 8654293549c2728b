"""Revisited evaluation: reference outputs, the real ground truth, a naive per-position oracle."""
import pickle

import numpy as np
import pytest

from sglib.evaluate.protocol import PROTOCOLS, protocol_sets, results_table, revisited, summary
from sglib.evaluate.shortlist import junk_to_end
from conftest import DATA, REVISITOP


@pytest.mark.parametrize("name", ["eval_n500_q20.pkl", "eval_n3000_q11.pkl"])
def test_matches_reference(name):
    with open(DATA / name, "rb") as f:
        d = pickle.load(f)
    res = revisited(d["ranks"].T, d["gnd"], d["ks"])
    for p in PROTOCOLS:
        m, aps, mp, prs = d[p]
        assert abs(res[p]["map"] - m) <= 1e-9
        assert np.array_equal(np.isnan(res[p]["aps"]), np.isnan(aps))
        assert np.nanmax(np.abs(res[p]["aps"] - aps)) <= 1e-9
        assert np.abs(res[p]["mp"] - mp).max() <= 1e-9
        assert np.nanmax(np.abs(res[p]["prs"] - prs)) <= 1e-9


def naive_ap_and_pr(ranking, positives, junk, ks):
    """Walk the ranking position by position, as the revisitop definition reads."""
    if len(positives) == 0:
        return np.nan, [np.nan] * len(ks)
    found, skipped, ap, pos1 = 0, 0, 0.0, []
    for position, img in enumerate(ranking):
        if img in junk:
            skipped += 1
        elif img in positives:
            r = position - skipped
            p0 = 1.0 if r == 0 else found / r
            found += 1
            ap += (p0 + found / (r + 1)) / (2 * len(positives))
            pos1.append(r + 1)
    prs = []
    for k in ks:
        kq = min(max(pos1), k) if pos1 else 0
        prs.append(sum(p <= kq for p in pos1) / kq if kq else 0.0)
    return ap, prs


@pytest.mark.parametrize("dataset", ["roxford5k", "rparis6k"])
def test_real_gnd_perfect_ranking_and_naive(dataset):
    path = REVISITOP / f"gnd_{dataset}.pkl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    with open(path, "rb") as f:
        g = pickle.load(f)
    n, gnd = len(g["imlist"]), g["gnd"]
    assert len(gnd) == 70
    rng = np.random.default_rng(1)
    for p in PROTOCOLS:
        perfect = []
        for q in gnd:
            pos, _ = protocol_sets(q, p)
            perfect.append(np.r_[pos, np.setdiff1d(np.arange(n), pos)])
        res = revisited(np.stack(perfect), gnd)
        assert res[p]["map"] == pytest.approx(1.0)
        assert np.allclose(res[p]["mp"], 1.0)
    # a noisy ranking (positives nudged forward so APs are neither 0 nor 1) against the naive walk
    ranks = np.stack([rng.permutation(n) for _ in gnd[:8]])
    for i, q in enumerate(gnd[:8]):
        boost = np.isin(ranks[i], np.r_[q["easy"], q["hard"]]) & (rng.random(n) < 0.5)
        ranks[i] = np.r_[ranks[i][boost], ranks[i][~boost]]
    res = revisited(ranks, gnd[:8])
    for p in PROTOCOLS:
        for i, q in enumerate(gnd[:8]):
            pos, junk = protocol_sets(q, p)
            ap, prs = naive_ap_and_pr(ranks[i], set(pos.tolist()), set(junk.tolist()), (1, 5, 10))
            assert res[p]["aps"][i] == pytest.approx(ap, abs=1e-12, nan_ok=True)
            assert np.allclose(res[p]["prs"][i], prs, equal_nan=True)


def test_truncated_ranking_counts_missing_positives_as_not_found():
    gnd = [{"easy": [0, 5], "hard": [], "junk": []}]
    res = revisited(np.array([[0, 1, 2]]), gnd, ks=(1,))
    assert res["easy"]["aps"][0] == pytest.approx(0.5)


def test_table_and_summary():
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    res = revisited(np.array([[0, 2, 1, 3]]), gnd)
    table = results_table(res)
    assert list(table.index) == ["Easy", "Medium", "Hard"] and table.loc["Easy", "mAP"] == 100.0
    assert summary(res) == {"easy": 100.0, "medium": 100.0, "hard": 100.0}


def test_bad_inputs():
    gnd = [{"easy": [0], "hard": [], "junk": []}]
    with pytest.raises(ValueError, match="2 rows .* 1 queries"):
        revisited(np.zeros((2, 3), int), gnd)
    with pytest.raises(ValueError, match="integer"):
        revisited(np.zeros((1, 3)), gnd)
    with pytest.raises(ValueError, match="lacks key"):
        revisited(np.zeros((1, 3), int), [{"easy": [0]}])
    with pytest.raises(ValueError, match="protocol"):
        protocol_sets(gnd[0], "medium-rare")


def test_junk_to_end_keeps_scores_and_removes_junk_from_shortlist(gnd_roxford):
    rng = np.random.default_rng(0)
    gnd = gnd_roxford["gnd"][:5]
    ranks = np.stack([rng.permutation(len(gnd_roxford["imlist"])) for _ in gnd])
    moved = junk_to_end(ranks, gnd, "hard")
    assert revisited(moved, gnd)["hard"]["map"] == pytest.approx(revisited(ranks, gnd)["hard"]["map"], abs=1e-12)
    for i, g in enumerate(gnd):
        n_junk = len(set(g["junk"]) | set(g["easy"]))
        assert not np.isin(moved[i, : len(ranks[i]) - n_junk], np.r_[g["junk"], g["easy"]]).any()
