"""Pooling against the reference outputs (tests/data, from ../shared/golden) and naive recomputations."""
import math

import numpy as np
import pytest
import torch

from sglib.method import pooling
from conftest import load_npz


@pytest.mark.parametrize("name", ["gemp_p4.6.npz", "gemp_p3.0.npz", "gemp_p1.0.npz"])
def test_gem_matches_reference(name):
    d = load_npz(name)
    x = torch.from_numpy(d["x"])
    b, c, hw = x.shape
    y = pooling.gem(x.reshape(b, c, 5, hw // 5), p=float(d["p"]), eps=float(d["eps"]))
    assert np.abs(y.numpy() - d["y"][..., 0]).max() <= 1e-5


@pytest.mark.parametrize("name", ["rgem_p2.5_k5.npz", "rgem_p3.0_k3.npz"])
def test_regional_gem_matches_reference(name):
    d = load_npz(name)
    y = pooling.regional_gem(torch.from_numpy(d["x"]), p=float(d["p"]), kernel=int(d["kernel"]))
    assert np.abs(y.numpy() - d["y"]).max() <= 1e-5


def test_regional_gem_naive_window():
    x = torch.rand(1, 2, 6, 7, dtype=torch.float64)
    p, k = 2.5, 5
    y = pooling.regional_gem(x, p, k)
    pad = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    u, v = 3, 1
    window = pad[0, 1, u:u + k, v:v + k]
    expected = 0.5 * window.pow(p).mean().pow(1 / p) + 0.5 * x[0, 1, u, v]
    assert torch.allclose(y[0, 1, u, v], expected)


def test_scale_gem_inf_matches_reference():
    d = load_npz("sgem_inf.npz")
    y = pooling.scale_gem(torch.from_numpy(d["x"]), p=math.inf)
    assert np.abs(y.numpy() - d["y"]).max() <= 1e-6


def test_scale_gem_p10_matches_reference():
    d = load_npz("sgem_p10.npz")
    y = pooling.scale_gem(torch.from_numpy(d["x"]), p=float(d["p"]))
    assert np.abs(y.numpy() - d["y"]).max() <= 1e-5


def test_scale_gem_finite_p_does_not_overflow():
    x = torch.tensor([[[1e4, -2.0]], [[3e4, 5.0]], [[2e4, 1.0]]])          # (S=3, B=1, D=2)
    y = pooling.scale_gem(x, p=10.0)
    naive = ((x.double() + 2.0).pow(10).mean(0).pow(0.1) - 2.0).float()
    assert torch.isfinite(y).all() and torch.allclose(y, naive, rtol=1e-5)


def test_gem_limits_naive():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64) + 0.1
    assert torch.allclose(pooling.gem(x, p=1.0), x.mean((-2, -1)))
    assert torch.allclose(pooling.gem(x, p=200.0), x.amax((-2, -1)), rtol=2e-2)


def test_regional_gem_tiny_map_replicates_border():
    x = torch.rand(1, 2, 2, 3)
    y = pooling.regional_gem(x, 2.5, 5)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    expected = 0.5 * padded[0, 0, 0:5, 0:5].pow(2.5).mean().pow(1 / 2.5) + 0.5 * x[0, 0, 0, 0]
    assert torch.allclose(y[0, 0, 0, 0], expected)


def test_relu_plus_and_modules():
    x = torch.tensor([-1.0, 0.0, 0.01, 0.5])
    assert torch.equal(pooling.relu_plus(x), torch.tensor([0.014, 0.014, 0.014, 0.5]))
    learned = pooling.GeM(p=3.0, learnable=True)
    fixed = pooling.GeM(p=4.6, eps=1e-8, learnable=False)
    assert [n for n, _ in learned.named_parameters()] == ["p"]
    assert list(fixed.parameters()) == [] and "p" in dict(fixed.named_buffers())
    m = torch.rand(2, 4, 3, 3)
    assert torch.allclose(fixed(m), pooling.gem(m, 4.6, 1e-8))


def test_learnable_p_gets_gradient():
    gem = pooling.GeM(p=3.0)
    gem(torch.rand(2, 4, 3, 3)).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="4 dimensions"):
        pooling.gem(torch.rand(3, 4))
    with pytest.raises(ValueError, match="odd"):
        pooling.regional_gem(torch.rand(1, 2, 6, 6), kernel=4)
    with pytest.raises(ValueError, match="3 dimensions"):
        pooling.scale_gem(torch.rand(3, 4))
    with pytest.raises(ValueError, match="torch.Tensor"):
        pooling.gem([[1.0]])
