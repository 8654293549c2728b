"""Learned whitening (PCA and supervised Lw): recomputed naively on synthetic data, save/load, input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sglib.method.descriptors import DescriptorSettings
from sglib.models.whitening import (Whitening, canonical_eigh, fit_learned_whitening, fit_pca_whitening, fit_whitening_for,
                             pooled_descriptors)


def naive_cov(Y: np.ndarray) -> np.ndarray:
    """Unbiased covariance by explicit sums over samples."""
    mu = sum(Y) / len(Y)
    return sum(np.outer(y - mu, y - mu) for y in Y) / (len(Y) - 1)


def synthetic_correlated(n=300, d=12, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * rng.uniform(0.1, 3.0, size=d)
    return rng.normal(size=(n, d)) @ mixing.T + rng.normal(size=d)


def apply(w: Whitening, X: np.ndarray) -> np.ndarray:
    return w(torch.from_numpy(X).float()).double().numpy()


def test_pca_whitened_training_set_has_identity_covariance():
    X = synthetic_correlated()
    w = fit_pca_whitening(X)
    Y = apply(w, X)
    assert Y.shape == X.shape
    np.testing.assert_allclose(Y.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(naive_cov(Y), np.eye(12), atol=2e-4)


def test_pca_truncation_keeps_largest_variance_directions():
    X = synthetic_correlated()
    w = fit_pca_whitening(torch.from_numpy(X), dim=5)  # torch input too
    assert (w.in_dim, w.out_dim) == (12, 5)
    np.testing.assert_allclose(naive_cov(apply(w, X)), np.eye(5), atol=2e-4)
    # each row of P is u / sqrt(lambda): 1 / |row|^2 gives back the 5 largest eigenvalues
    top = np.sort(np.linalg.eigvalsh(naive_cov(X)))[::-1][:5]
    np.testing.assert_allclose(1 / (w.projection.double().numpy() ** 2).sum(axis=1), top, rtol=1e-4)


def test_shrinkage_allows_fewer_samples_than_dims():
    X = synthetic_correlated(n=6, d=20)
    with pytest.raises(ValueError, match="exceeds the 5 directions"):
        fit_pca_whitening(X, dim=10)
    w = fit_pca_whitening(X, dim=10, shrinkage=0.2)
    assert np.isfinite(apply(w, X)).all()
    assert fit_pca_whitening(X, dim=5).out_dim == 5


@pytest.mark.parametrize("X, kwargs, message", [
    (np.full((5, 3), np.nan), {}, "NaN"),
    (np.ones((1, 3)), {}, "at least 2"),
    (np.ones((5,)), {}, "2 dimensions"),
    (np.random.default_rng(0).normal(size=(50, 3)), {"dim": 4}, "dim must be between 1 and the descriptor size 3"),
    (np.random.default_rng(0).normal(size=(50, 3)), {"dim": 0}, "dim must be"),
    (np.random.default_rng(0).normal(size=(50, 3)), {"shrinkage": 1.5}, "shrinkage"),
    ([[1.0, 2.0], [3.0, 4.0]], {}, "numpy array"),
])
def test_pca_input_errors(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_pca_whitening(X, **kwargs)


def test_forward_checks_width():
    w = fit_pca_whitening(synthetic_correlated(), dim=4)
    with pytest.raises(ValueError, match=r"expected \(B, 12\)"):
        w(torch.zeros(2, 11))


def test_save_load_round_trip(tmp_path):
    X = synthetic_correlated()
    w = fit_pca_whitening(X, dim=7)
    w.save(tmp_path / "w.npz")
    back = Whitening.load(tmp_path / "w.npz")
    assert (back.kind, back.in_dim, back.out_dim, back.digest) == ("pca", 12, 7, w.digest)
    x = torch.from_numpy(X[:4]).float()
    torch.testing.assert_close(back(x), w(x), rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Whitening.load(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a whitening file"):
        Whitening.load(tmp_path / "bad.npz")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)   # a zip header, then nothing
    with pytest.raises(ValueError, match="could not read whitening file"):
        Whitening.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "part.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['kind', 'projection'\]"):
        Whitening.load(tmp_path / "part.npz")
    with pytest.raises(ValueError, match="NaN"):
        Whitening(np.zeros(2), np.full((2, 2), np.nan))


def synthetic_objects(n_objects=60, views=4, d=6, seed=0):
    """Synthetic descriptors: object centres plus view noise that is strong along a few axes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_objects, d))
    noise_scale = np.array([3.0, 2.0] + [0.2] * (d - 2))
    rotation = np.linalg.qr(np.random.default_rng(123).normal(size=(d, d)))[0]  # same noise axes for all seeds
    X = np.concatenate([c + (rng.normal(size=(views, d)) * noise_scale) @ rotation.T for c in centres])
    labels = np.repeat(np.arange(n_objects), views)
    pairs = np.array([(o * views + i, o * views + j) for o in range(n_objects)
                      for i in range(views) for j in range(i + 1, views)])
    return X, labels, pairs


def test_learned_whitening_whitens_pair_differences():
    X, _, pairs = synthetic_objects()
    w = fit_learned_whitening(X, pairs)
    assert w.kind == "lw" and (w.in_dim, w.out_dim) == (6, 6)
    diffs = apply(w, X[pairs[:, 0]]) - apply(w, X[pairs[:, 1]])
    second_moment = sum(np.outer(d, d) for d in diffs) / len(diffs)
    np.testing.assert_allclose(second_moment, np.eye(6), atol=1e-4)
    members = apply(w, X[pairs.reshape(-1)])
    cov = naive_cov(members)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)
    assert np.all(np.diff(np.diag(cov)) <= 1e-6)  # largest variance first


def test_learned_whitening_improves_nearest_neighbour_on_held_out_objects():
    X, _, pairs = synthetic_objects(seed=1)
    w = fit_learned_whitening(X, pairs)
    Xt, labels, _ = synthetic_objects(seed=2)  # other objects, same noise structure

    def nn_accuracy(Y):
        Y = F.normalize(torch.from_numpy(Y).double(), dim=1)
        sim = Y @ Y.T
        sim.fill_diagonal_(-2)
        return float((labels[sim.argmax(1).numpy()] == labels).mean())

    assert nn_accuracy(apply(w, Xt)) > nn_accuracy(Xt) + 0.1


def test_learned_whitening_input_errors():
    X, _, pairs = synthetic_objects()
    with pytest.raises(ValueError, match="indices must be in"):
        fit_learned_whitening(X, pairs + len(X))
    with pytest.raises(ValueError, match="integer"):
        fit_learned_whitening(X, pairs.astype(float))
    with pytest.raises(ValueError, match="at least 2 matching pairs"):
        fit_learned_whitening(X, pairs[:1])


class SyntheticReluBackbone(torch.nn.Module):
    """A seeded random conv + ReLU standing in for a network (synthetic, for the pooling plumbing only)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=4)

    def feature_maps(self, x, scales):
        from sglib.method.descriptors import resize_input
        return [torch.relu(self.conv(resize_input(x, s))) for s in scales]


def test_pooled_descriptors_are_the_heads_input():
    net = SyntheticReluBackbone()
    torch.manual_seed(1)
    images = [torch.randn(1, 3, 48, 40) for _ in range(5)]
    settings = DescriptorSettings(scales=(0.7071, 1.0), regional=False)
    rows = pooled_descriptors(net, images, settings)
    assert rows.shape == (10, 16)
    with torch.no_grad():
        fmap = net.feature_maps(images[2], (1.0,))[0][0].double()
    naive = fmap.clamp(min=1e-8).pow(4.6).mean(dim=(1, 2)).pow(1 / 4.6)
    np.testing.assert_allclose(rows[5], (naive / naive.norm()).numpy(), rtol=1e-4, atol=1e-6)
    w = fit_whitening_for(net, images, settings, dim=4)
    assert (w.in_dim, w.out_dim) == (16, 4)
    with pytest.raises(ValueError, match="no images"):
        pooled_descriptors(net, [], settings)
    with pytest.raises(ValueError, match="gem_p"):
        pooled_descriptors(net, images, DescriptorSettings(gem_p=None))


_THREADS_SCRIPT = """
import hashlib
import numpy as np
import torch
from sglib.models.whitening import fit_learned_whitening
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(19), 20)            # the demo's shape: 19 classes, 380 images, 1280-d
X = rng.standard_normal((19, 1280))[labels] + 0.5 * rng.standard_normal((380, 1280))
X /= np.linalg.norm(X, axis=1, keepdims=True)
i, j = np.triu_indices(len(labels), 1)
same = labels[i] == labels[j]
w = fit_learned_whitening(X, np.stack([i[same], j[same]], 1), shrinkage=0.3)
scales = torch.from_numpy(rng.standard_normal((3, 5, 1280)).astype(np.float32))
rows = torch.nn.functional.normalize(w(scales.reshape(15, 1280)).reshape(3, 5, -1), dim=-1).amax(0)
print(hashlib.sha256(w.projection.numpy().tobytes()).hexdigest(), hashlib.sha256(rows.numpy().tobytes()).hexdigest())
"""


def test_fit_is_identical_with_one_and_two_threads():
    # Before the canonical basis, the projections of these two runs differed by as much as their own
    # size (LAPACK picks any basis of the ~900-dimensional zero-variance space), and so did the
    # Scale-GeM rows (an element-wise max over whitened scales) computed from them.
    import os
    import subprocess
    import sys
    out = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        run = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        out.append(run.stdout.split())
    assert out[0][0] == out[1][0], "whitening projections differ between 1 and 2 threads"
    assert out[0][1] == out[1][1], "Scale-GeM rows through the whitening differ between 1 and 2 threads"


def test_canonical_eigh_is_a_decomposition_with_a_fixed_basis():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    vals = np.array([5.0, 3.0, 3.0, 3.0, 1.0] + [0.0] * 7)        # two repeated eigenvalues
    sym = (basis * vals) @ basis.T
    got_vals, vecs = canonical_eigh(sym)
    np.testing.assert_allclose(got_vals, vals, atol=1e-12)
    np.testing.assert_allclose((vecs * got_vals) @ vecs.T, sym, atol=1e-12)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(12), atol=1e-12)
    # another basis of the same repeated eigenspaces gives the same vectors
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    other = basis.copy()
    other[:, 1:4] = basis[:, 1:4] @ rot
    _, vecs2 = canonical_eigh((other * vals) @ other.T)
    np.testing.assert_allclose(vecs2, vecs, atol=1e-9)
