"""Margin losses (sglib.method.losses) against a per-sample formula written from the papers, gradients included."""
import math

import pytest
import torch
import torch.nn.functional as F

from sglib.method.losses import (ArcFace, CurricularFace, NormSoftmax, arcface_logits, curricular_logits, make_loss)


def naive_target(c: float, m: float, easy: bool) -> float:
    """cos(theta + m), or the papers' fall-backs, from the angle itself."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    if easy:
        return math.cos(theta + m) if c > 0 else c
    return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)


def naive_loss(cos, labels, s, per_logit):
    total = 0.0
    for i, y in enumerate(labels.tolist()):
        logits = [s * per_logit(i, j, y) for j in range(cos.shape[1])]
        top = max(logits)
        total += -(logits[y] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(labels)


def batch(seed=0, b=6, d=5, c=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    w = torch.randn(c, d, generator=g, dtype=dtype)
    labels = torch.arange(b) % c
    x[0] = -w[labels[0]]              # theta_y = pi: past the fall-back point
    return x, w, labels


@pytest.mark.parametrize("easy", [False, True])
def test_arcface_matches_per_sample_formula(easy):
    x, w, labels = batch()
    loss = ArcFace(5, 4, margin=0.5, scale=16.0, easy_margin=easy).double()
    with torch.no_grad():
        loss.weight.copy_(w)
    cos = (F.normalize(x, dim=1) @ F.normalize(w, dim=1).T)
    expected = naive_loss(cos, labels, 16.0,
                          lambda i, j, y: naive_target(float(cos[i, y]), 0.5, easy) if j == y else float(cos[i, j]))
    assert loss(x, labels).item() == pytest.approx(expected, rel=1e-10)


def test_softmax_control_is_scaled_cosine_cross_entropy():
    x, w, labels = batch(1)
    loss = NormSoftmax(5, 4, scale=10.0).double()
    with torch.no_grad():
        loss.weight.copy_(w)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    assert loss(x, labels).item() == pytest.approx(naive_loss(cos, labels, 10.0, lambda i, j, y: float(cos[i, j])))


def test_curricularface_matches_per_sample_formula_and_updates_t():
    x, w, labels = batch(2)
    loss = CurricularFace(5, 4, margin=0.5, scale=16.0, momentum=0.1).double()
    with torch.no_grad():
        loss.weight.copy_(w)
        loss.t.fill_(0.3)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    mean_target = float(cos[torch.arange(6), labels].mean())
    t = 0.9 * 0.3 + 0.1 * mean_target          # updated before the logits, as in the paper's code

    def logit(i, j, y):
        c, cy = float(cos[i, j]), float(cos[i, y])
        if j == y:
            return naive_target(cy, 0.5, False)
        hard = c > math.cos(math.acos(cy) + 0.5)
        return c * (t + c) if hard else c

    assert loss(x, labels).item() == pytest.approx(naive_loss(cos, labels, 16.0, logit), rel=1e-10)
    assert float(loss.t) == pytest.approx(t)
    loss.eval()
    loss(x, labels)
    assert float(loss.t) == pytest.approx(t), "t must not move in eval mode"


def test_gradients_match_finite_differences():
    x, w, labels = batch(3, b=4, d=3, c=5)
    x[0] = x[0] * 0.5                       # keep away from the fall-back's kink
    x.requires_grad_(True)
    w.requires_grad_(True)

    def arc(x, w):
        return F.cross_entropy(arcface_logits(F.normalize(x, dim=1) @ F.normalize(w, dim=1).T, labels, 0.3, 8.0),
                               labels)

    def curricular(x, w):
        cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
        return F.cross_entropy(curricular_logits(cos, labels, 0.2, 0.3, 8.0), labels)

    assert torch.autograd.gradcheck(arc, (x, w))
    assert torch.autograd.gradcheck(curricular, (x, w))
    loss = ArcFace(3, 5, margin=0.3, scale=8.0, easy_margin=True).double()
    assert torch.autograd.gradcheck(lambda v: loss(v, labels), (x,))


def test_bad_inputs_name_the_problem():
    loss = ArcFace(4, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"expected \(B, 4\) descriptors"):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        loss(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(loss(torch.randn(2, 4), torch.tensor([0, 2], dtype=torch.int32)))
    with pytest.raises(ValueError, match="radians"):
        ArcFace(4, 3, margin=2.0)
    with pytest.raises(ValueError, match="n_classes"):
        CurricularFace(4, 1)
    with pytest.raises(ValueError, match="unknown loss 'cosface'"):
        make_loss("cosface", 4, 3, 0.2, 30.0)
