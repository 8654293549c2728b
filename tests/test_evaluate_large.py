"""sglib.evaluate.streaming against sglib.evaluate.revisited on the full stable arg-sort ranking."""

import numpy as np
import pytest
import torch

from sglib.evaluate import streaming as el
from sglib.evaluate.protocol import PROTOCOLS, revisited



def assert_same_results(got, want):
    for p in PROTOCOLS:
        for key in ("aps", "prs", "mp"):
            a, b = np.asarray(got[p][key]), np.asarray(want[p][key])
            assert a.shape == b.shape
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert np.all(np.abs(a[~np.isnan(a)] - b[~np.isnan(b)]) <= 1e-12), (p, key)
        if np.isnan(want[p]["map"]):
            assert np.isnan(got[p]["map"])
        else:
            assert abs(got[p]["map"] - want[p]["map"]) <= 1e-12


def full_ranking(scores, head=None):
    order = np.argsort(-scores, axis=1, kind="stable")
    if head is None:
        return order
    rest = [o[~np.isin(o, h)] for o, h in zip(order, head)]
    return np.stack([np.concatenate([h, r]) for h, r in zip(head, rest)])


def random_gnd(rng, nq, n, size=8):
    # indices up to n + 3: some lie beyond the database, as in a truncated evaluation
    return [{k: rng.choice(n + 3, rng.integers(0, size), replace=False).tolist() for k in ("easy", "hard", "junk")}
            for _ in range(nq)]


@pytest.mark.parametrize("seed", range(6))
def test_equals_full_argsort_with_ties(seed):
    rng = np.random.default_rng(seed)
    nq, n = 7, int(rng.integers(30, 400))
    scores = rng.integers(0, 6, (nq, n)).astype(np.float32)  # many ties, also among positives/junk
    gnd = random_gnd(rng, nq, n)
    want = revisited(full_ranking(scores), gnd, ks=(1, 5, 10))
    for block_size in (1, 13, 10_000):
        assert_same_results(el.revisited_from_scores(scores, gnd, (1, 5, 10), block_size=block_size), want)


@pytest.mark.parametrize("seed", range(6))
def test_equals_full_argsort_with_head_ranks(seed):
    rng = np.random.default_rng(100 + seed)
    nq, n = 5, int(rng.integers(30, 300))
    scores = rng.integers(0, 4, (nq, n)).astype(np.float64)
    gnd = random_gnd(rng, nq, n)
    length = int(rng.integers(1, n))
    head = np.stack([rng.permutation(n)[:length] for _ in range(nq)])
    want = revisited(full_ranking(scores, head), gnd, ks=(1, 3))
    got = el.revisited_from_scores(scores, gnd, (1, 3), head_ranks=head, block_size=int(rng.integers(1, 40)))
    assert_same_results(got, want)


def test_target_positions_match_argsort():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, (3, 50)).astype(np.float32)
    targets = [rng.choice(50, 10, replace=False) for _ in range(3)]
    pos = el.target_positions(scores, targets, block_size=8)
    order = np.argsort(-scores, axis=1, kind="stable")
    for i in range(3):
        np.testing.assert_array_equal(pos[i], np.argsort(order[i])[targets[i]])


def test_real_oxford_gnd_with_synthetic_scores(gnd_roxford):
    gnd = gnd_roxford["gnd"]
    rng = np.random.default_rng(0)
    n = 4993 + 3000  # the Oxford database plus synthetic distractors
    synthetic_scores = rng.standard_normal((len(gnd), n)).astype(np.float32)
    for i, g in enumerate(gnd):  # positives score higher on average, so the metrics are not trivial
        synthetic_scores[i, g["easy"]] += 3.0
        synthetic_scores[i, g["hard"]] += 2.0
    synthetic_scores = np.round(synthetic_scores, 2)  # ties
    want = revisited(full_ranking(synthetic_scores), gnd)
    assert 0.2 < want["medium"]["map"] < 0.95
    assert_same_results(el.revisited_from_scores(synthetic_scores, gnd, block_size=1000), want)
    head = np.argsort(-synthetic_scores[:, :500], axis=1)[:, ::-1][:, :100]  # a deliberately odd shortlist
    want_head = revisited(full_ranking(synthetic_scores, head), gnd)
    assert_same_results(el.revisited_from_scores(synthetic_scores, gnd, head_ranks=head, block_size=999), want_head)


def test_callable_memmap_torch_and_features_agree(tmp_path):
    rng = np.random.default_rng(3)
    nq, n, d = 4, 700, 8
    q = rng.standard_normal((nq, d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    gnd = random_gnd(rng, nq, n, size=20)
    block = 128
    blocked = np.concatenate([q @ x[s:s + block].T for s in range(0, n, block)], axis=1)  # same BLAS calls
    want = revisited(full_ranking(blocked), gnd)
    np.save(tmp_path / "x.npy", x)
    x_mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert_same_results(el.revisited_from_features(q, x_mm, gnd, block_size=block), want)
    np.save(tmp_path / "s.npy", blocked)
    assert_same_results(el.revisited_from_scores(np.load(tmp_path / "s.npy", mmap_mode="r"), gnd, block_size=100), want)
    assert_same_results(el.revisited_from_scores(torch.from_numpy(blocked), gnd, block_size=100), want)
    calls = []

    def score_block(start, stop):
        calls.append((start, stop))
        return blocked[:, start:stop]

    assert_same_results(el.revisited_from_scores(score_block, gnd, n_db=n, block_size=100), want)
    assert max(stop - start for start, stop in calls) <= 100


def test_errors():
    scores = np.zeros((2, 10), np.float32)
    gnd = [{"easy": [1], "hard": [], "junk": []}] * 2
    with pytest.raises(ValueError, match="rows"):
        el.revisited_from_scores(scores[:1], gnd)
    with pytest.raises(ValueError, match="lacks"):
        el.revisited_from_scores(scores, [{"easy": [1]}] * 2)
    bad = scores.copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        el.revisited_from_scores(bad, gnd, block_size=3)
    with pytest.raises(ValueError, match="n_db"):
        el.revisited_from_scores(lambda a, b: scores[:, a:b], gnd)
    with pytest.raises(ValueError, match="shape"):
        el.revisited_from_scores(lambda a, b: scores[:, a:b - 1], gnd, n_db=10)
    with pytest.raises(ValueError, match="repeats"):
        el.revisited_from_scores(scores, gnd, head_ranks=np.array([[1, 1], [0, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        el.revisited_from_scores(scores, gnd, head_ranks=np.array([[1, 10], [0, 2]]))
    with pytest.raises(ValueError, match="negative"):
        el.revisited_from_scores(scores, [{"easy": [-1], "hard": [], "junk": []}] * 2)
    with pytest.raises(ValueError, match="dimension"):
        el.revisited_from_features(np.zeros((2, 3), np.float32), np.zeros((10, 4), np.float32), gnd)
