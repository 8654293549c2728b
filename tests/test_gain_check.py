"""The label-free gain check: each signal recomputed naively, the verdict at its thresholds, the validation's
threshold choice and confusion."""
import numpy as np
import pytest

from sglib.experiments.gain_check_validation import _accuracy, choose_threshold
from sglib.rerankers.gain_check import (HELP_AT, HURT_BELOW, SCORE_SIGNAL, GainCheck, gain_signals,
                                        rerank_gain_check, score_verdict)


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _naive(q, x, ranks, M, K):
    """Loops over queries and candidates, straight from the module doc."""
    out = {k: [] for k in ("sig_top_z", "sig_reciprocal", "sig_coherence", "sig_expansion")}
    for b in range(len(q)):
        c = [x[j] for j in ranks[b, :M]]
        s = np.array([float(q[b] @ ci) for ci in c])
        out["sig_top_z"].append((s[:K].mean() - s.mean()) / s.std())
        kth = []
        for i in range(M):
            others = sorted((float(c[i] @ c[j]) for j in range(M) if j != i), reverse=True)
            kth.append(others[K - 1])
        out["sig_reciprocal"].append(np.mean([s[i] >= kth[i] for i in range(K)]))
        hits = sum(float(c[i] @ c[j]) >= kth[i] for i in range(K) for j in range(K) if j != i)
        out["sig_coherence"].append(hits / (K * (K - 1)) if K > 1 else 0.0)
        e = np.max(np.stack(c[: K + 1]), axis=0)
        out["sig_expansion"].append(float(q[b] @ e) / np.linalg.norm(e))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("M,K", [(12, 3), (7, 1), (30, 9), (100, 4)])
def test_signals_match_naive(M, K):
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(25, 6)))
    q = _unit(x[:4] + 0.3 * rng.normal(size=(4, 6)))
    ranks = np.argsort(-q @ x.T, axis=1)
    got = gain_signals(q, x, ranks, M=M, K=K)
    want = _naive(q, x, ranks, min(M, 25), K)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_signals_follow_the_given_ranking_not_the_scores():
    rng = np.random.default_rng(4)
    x = _unit(rng.normal(size=(20, 5)))
    q = _unit(rng.normal(size=(2, 5)))
    ranks = np.stack([rng.permutation(20) for _ in range(2)])
    got = gain_signals(q, x, ranks, M=10, K=3)
    want = _naive(q, x, ranks, 10, 3)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_a_standing_out_group_says_help_and_noise_says_hurt():
    rng = np.random.default_rng(5)
    centre = _unit(rng.normal(size=32))
    x = np.concatenate([_unit(centre + 0.05 * rng.normal(size=(3, 32))), _unit(rng.normal(size=(300, 32)))])
    q = centre[None]                    # nearer each member than the members are to each other
    ranks = np.argsort(-q @ x.T, axis=1)
    assert gain_signals(q, x, ranks, M=200, K=3)["sig_reciprocal"][0] == 1.0
    check = rerank_gain_check(q, x, ranks, M=200, K=3)
    assert isinstance(check, GainCheck) and check.verdict == "help" and check.signals[SCORE_SIGNAL] >= HELP_AT
    assert check.message.startswith("Reranking is likely to help here, because")
    assert f"{check.signals[SCORE_SIGNAL]:.2f}" in check.message and check.signals["M"] == 200
    noise_q = _unit(rng.normal(size=(4, 32)))
    noise = rerank_gain_check(noise_q, x, np.argsort(-noise_q @ x.T, axis=1), M=200, K=3)
    assert noise.verdict == "hurt" and noise.signals[SCORE_SIGNAL] < HURT_BELOW and "likely to hurt" in noise.message


def test_verdict_at_its_thresholds():
    assert score_verdict(HELP_AT) == "help"
    assert score_verdict(np.nextafter(HELP_AT, 0)) == "unclear"
    assert score_verdict(HURT_BELOW) == "unclear"
    assert score_verdict(np.nextafter(HURT_BELOW, 0)) == "hurt"
    assert score_verdict(0.4, help_at=0.4, hurt_below=0.4) == "help"


@pytest.mark.parametrize("K,M", [(0, 10), (10, 10), (3, 2)])
def test_bad_k_or_m_is_refused(K, M):
    x = _unit(np.random.default_rng(6).normal(size=(10, 4)))
    with pytest.raises(ValueError, match="K"):
        gain_signals(x[:2], x, np.argsort(-x[:2] @ x.T, axis=1), M=M, K=K)


def test_mismatched_shapes_are_refused():
    x = _unit(np.random.default_rng(7).normal(size=(10, 4)))
    with pytest.raises(ValueError, match="q"):
        gain_signals(x[:2, :3], x, np.zeros((2, 10), int))
    with pytest.raises(ValueError, match="ranks"):
        gain_signals(x[:2], x, np.zeros((3, 10), int))


def test_threshold_choice_and_confusion():
    rows = [{"s": v, "gain_medium": g} for v, g in [(0.1, -2), (0.2, -1), (0.3, 0.0), (0.6, 1), (0.7, 3), (0.4, -0.5)]]
    t = choose_threshold(rows, "s")
    assert 0.4 < t < 0.6
    acc = _accuracy(rows, "s", t)
    assert acc == {"help_gain": 2, "help_loss": 0, "hurt_gain": 0, "hurt_loss": 4, "n": 6, "accuracy": 1.0}
    assert _accuracy(rows, "s", 0.25)["help_loss"] == 2
