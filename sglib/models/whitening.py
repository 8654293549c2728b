"""Learned whitening of global descriptors: the head for backbones without CVNet's trained linear layer.

Two fits, both giving ``y = P (x - m)`` (a :class:`Whitening` module, (B, D) -> (B, dim)):

- :func:`fit_pca_whitening`: PCA-whitening of a training set, unsupervised: ``P = S^-1/2 U^T`` from
  the eigen-decomposition ``C = U S U^T`` of the descriptors' covariance, keeping the ``dim``
  largest components, so the whitened training set has identity covariance.
- :func:`fit_learned_whitening`: the supervised "Lw" of Radenovic et al. (TPAMI 2018), from
  matching pairs: first whiten the intra-pair differences (``S_w^-1/2``, ``S_w`` their
  covariance), then rotate onto the principal axes of the whitened descriptors, so
  that matching-pair differences have identity covariance and the descriptors' covariance is
  diagonal (largest first).

Where the head sits (:func:`sglib.method.descriptors.describe_from_maps`): per scale
``head(l2normalise(gem(map)))``, then scale aggregation and a final L2 normalisation. So a
whitening is fitted on L2-normalised GeM vectors; :func:`pooled_descriptors` computes exactly
those (one per image and scale) for a backbone, and :func:`fit_whitening_for` fits on them.
Fit on images other than the evaluation set (e.g. a disjoint landmark collection), or the
evaluation becomes optimistic.

Covariances and eigen-decompositions are computed in float64 (numpy) on one BLAS thread, and every
eigenbasis is made canonical (:func:`canonical_eigh`): LAPACK returns an arbitrary basis of a
repeated eigenvalue's eigenspace, and which one depends on the number of threads. A training split
smaller than the descriptor size has such a space (hundreds of zero variances), and Scale-GeM's
element-wise max is not rotation-invariant, so without this the numbers and the cache key would change
with the thread count. The module holds float32.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .._checks import check_float_tensor, check_tensor
from ..method.descriptors import DescriptorSettings, describe_from_maps


class Whitening(nn.Module):
    """``y = (x - mean) @ projection.T``: (B, in_dim) -> (B, out_dim).

    Example:
        >>> w = fit_pca_whitening(np.random.default_rng(0).normal(size=(50, 8)), dim=4)
        >>> w(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(self, mean, projection, kind: str = "pca", source: str | None = None):
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        projection = torch.as_tensor(np.asarray(projection), dtype=torch.float32)
        if mean.ndim != 1 or projection.ndim != 2 or projection.shape[1] != mean.shape[0]:
            raise ValueError(f"whitening: expected mean (D,) and projection (dim, D), got {tuple(mean.shape)} "
                             f"and {tuple(projection.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(projection).all()):
            raise ValueError("whitening: mean or projection contains NaN or infinite values")
        self.register_buffer("mean", mean)
        self.register_buffer("projection", projection)
        self.kind = kind
        # how it was fitted (inputs and parameters), when known: the feature cache keys on this instead
        # of the values, whose last bits depend on the BLAS threading of the features it was fitted on
        self.source = source

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def digest(self) -> str:
        """``"sha256:<hex>"`` of the parameters: a cache key for descriptors made with this head."""
        h = hashlib.sha256(self.kind.encode())
        for t in (self.mean, self.projection):
            h.update(t.detach().cpu().numpy().tobytes())
        return "sha256:" + h.hexdigest()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_float_tensor(x, "x", ndim=2, nonempty=False)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"whitening: expected (B, {self.in_dim}) descriptors, got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) @ self.projection.to(x.dtype).T

    def save(self, path) -> None:
        """Write ``mean``, ``projection``, ``kind`` and ``source`` to an ``.npz`` file."""
        with open(path, "wb") as f:   # exactly ``path``: np.savez would append ".npz" to a bare name
            np.savez(f, mean=self.mean.cpu().numpy(), projection=self.projection.cpu().numpy(),
                     kind=np.array(self.kind), source=np.array(self.source or ""))

    @classmethod
    def load(cls, path) -> "Whitening":
        """Read a file written by :meth:`save`; ValueError if missing, unreadable or incomplete."""
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory: expected a whitening .npz file")
        if not os.path.isfile(path):
            raise ValueError(f"whitening file not found: {path}")
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":   # an .npz is a zip archive; numpy's own message for others is about pickles
            raise ValueError(f"{path} is not a whitening file (an .npz written by Whitening.save; it starts with "
                             f"{head!r})")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # numpy raises ValueError / zipfile / OS errors for a corrupt file
            raise ValueError(f"could not read whitening file {path}: {type(exc).__name__}: {exc}") from exc
        missing = {"mean", "projection", "kind"} - set(arrays)
        if len(missing) == 3:   # none of its arrays: another zip archive, e.g. a torch.save file
            raise ValueError(f"{path} is not a whitening file (a zip archive without its arrays mean, projection, "
                             "kind: a torch file?)")
        if missing:
            raise ValueError(f"whitening file {path}: missing array(s) {sorted(missing)}")
        for key in ("kind", "source"):
            if key in arrays and arrays[key].shape != ():
                raise ValueError(f"whitening file {path}: '{key}' must be a single string, got shape {arrays[key].shape}")
        return cls(arrays["mean"], arrays["projection"], str(arrays["kind"]), str(arrays.get("source", "")) or None)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def _as_matrix(X, name: str = "X") -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    check_tensor(X, name, ndim=2, finite=True)
    if X.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 descriptors to estimate a covariance, got {X.shape[0]}")
    return np.asarray(X, dtype=np.float64)


def _check_dim(dim: int | None, D: int, rank_bound: int, shrinkage: float, what: str) -> int:
    dim = D if dim is None else int(dim)
    if not 1 <= dim <= D:
        raise ValueError(f"dim must be between 1 and the descriptor size {D}, got {dim}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    if shrinkage == 0.0 and dim > rank_bound:
        raise ValueError(f"dim={dim} exceeds the {rank_bound} directions that {what} span; the rest would be "
                         f"noise amplified without bound: pass dim<={rank_bound} or shrinkage>0")
    return dim


def _shrunk(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    # pull towards a scaled identity (same trace): keeps rank-deficient covariances invertible
    D = cov.shape[0]
    return (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / D) * np.eye(D)


def canonical_eigh(sym: np.ndarray, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric matrix with a basis that does not depend on LAPACK's threading.

    Eigenvalues come in descending order. Eigenvalues within ``rtol * max|eigenvalue|`` of their
    neighbour form a cluster; inside a cluster of more than one, the vectors are rotated to the basis
    that diagonalises ``diag(1, 2, ..., D)`` restricted to the cluster's space (unique for that space).
    Each vector's largest-magnitude entry is made positive.

    Args:
        sym: (D, D) symmetric matrix.

    Returns:
        ``(values (D,), vectors (D, D))``, column i the eigenvector of ``values[i]``.

    Example:
        >>> vals, vecs = canonical_eigh(np.eye(3))
        >>> vecs.round(6).tolist()
        [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    """
    vals, vecs = np.linalg.eigh(sym)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    d = vals.size
    scale = max(float(np.abs(vals).max()), np.finfo(np.float64).tiny) if d else 1.0
    bounds = [0, *(np.flatnonzero(vals[:-1] - vals[1:] > rtol * scale) + 1), d]
    ramp = np.arange(1, d + 1, dtype=np.float64)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start > 1:
            basis = vecs[:, start:stop]
            _, rotation = np.linalg.eigh((basis.T * ramp) @ basis)
            vecs[:, start:stop] = basis @ rotation[:, ::-1]
    vecs = np.ascontiguousarray(vecs)
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(d)])
    return vals, vecs * np.where(signs == 0, 1.0, signs)


def _inverse_sqrt(cov: np.ndarray, eps: float) -> np.ndarray:
    vals, vecs = canonical_eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, eps))) @ vecs.T


def fit_pca_whitening(X, dim: int | None = None, shrinkage: float = 0.0, eps: float = 1e-9) -> Whitening:
    """PCA-whitening fitted on training descriptors.

    Args:
        X: (N, D) descriptors (numpy or torch), finite, N >= 2.
        dim: components kept (largest variance first); None -> D. Without shrinkage at most N - 1.
        shrinkage: in [0, 1]; covariance ``(1 - a) C + a tr(C)/D I`` (regularises small N).
        eps: floor on eigenvalues before the inverse square root.

    Returns:
        :class:`Whitening` with ``P = S^-1/2 U^T`` (dim, D): ``P (X - m)`` has identity covariance
        on the training set when ``shrinkage == 0``.
    """
    X = _as_matrix(X)
    N, D = X.shape
    dim = _check_dim(dim, D, N - 1, shrinkage, f"{N} training descriptors")
    with threadpool_limits(1):                # bit-identical whatever the caller's thread settings
        mean = X.mean(axis=0)
        cov = _shrunk(np.cov(X - mean, rowvar=False, bias=False).reshape(D, D), shrinkage)
        vals, vecs = canonical_eigh(cov)
        projection = (vecs[:, :dim] / np.sqrt(np.maximum(vals[:dim], eps))).T
    return Whitening(mean, projection, kind="pca")


def fit_learned_whitening(X, pairs, dim: int | None = None, shrinkage: float = 0.0,
                          eps: float = 1e-9) -> Whitening:
    """Supervised whitening "Lw" (Radenovic et al.) from matching pairs.

    Args:
        X: (N, D) descriptors.
        pairs: (M, 2) integer indices into X of matching (same object) pairs, M >= 2.
        dim: components kept after the rotation (largest variance first); None -> D.
        shrinkage, eps: as in :func:`fit_pca_whitening`, applied to the intra-pair covariance.

    Returns:
        :class:`Whitening` with ``m`` the mean of the descriptors in the pairs and
        ``P = U^T S_w^-1/2``: pair differences get identity covariance (exactly, when dim == D and
        ``S_w`` is full rank), and the whitened pair descriptors a diagonal covariance.
    """
    X = _as_matrix(X)
    N, D = X.shape
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs: expected an (M, 2) integer array, got {pairs.dtype} {pairs.shape}")
    if pairs.shape[0] < 2:
        raise ValueError(f"pairs: need at least 2 matching pairs, got {pairs.shape[0]}")
    if pairs.min() < 0 or pairs.max() >= N:
        raise ValueError(f"pairs: indices must be in [0, {N - 1}], got range [{pairs.min()}, {pairs.max()}]")
    dim = _check_dim(dim, D, pairs.shape[0], shrinkage, f"{pairs.shape[0]} pair differences")
    with threadpool_limits(1):                # bit-identical whatever the caller's thread settings
        members = X[pairs.reshape(-1)]
        mean = members.mean(axis=0)
        diffs = X[pairs[:, 0]] - X[pairs[:, 1]]
        # pairs are unordered, so the differences are symmetric around 0: second moment, no centring
        intra = _shrunk(diffs.T @ diffs / diffs.shape[0], shrinkage)
        to_intra_white = _inverse_sqrt(intra, eps)
        whitened = (members - mean) @ to_intra_white.T
        _, vecs = canonical_eigh(np.cov(whitened, rowvar=False).reshape(D, D))
        projection = vecs[:, :dim].T @ to_intra_white
    return Whitening(mean, projection, kind="lw")


@torch.no_grad()
def pooled_descriptors(backbone, images: Iterable[torch.Tensor], settings: DescriptorSettings = DescriptorSettings(),
                       total: int | None = None) -> np.ndarray:
    """The vectors a head receives: ``l2normalise(gem(regional(map)))`` per image and scale.

    Args:
        backbone: a :class:`~sglib.models.backbone.Backbone` (``feature_maps(x, scales)``).
        images: iterable of (1, 3, H, W) tensors normalised with ``backbone.normalization``.
        settings: pooling settings (``gem_p``, ``regional``, ``scales``); each scale gives one row.
        total: number of images, for the progress bar.

    Returns:
        (N * len(settings.scales), C) float32 array.
    """
    if settings.gem_p is None:
        raise ValueError("pooled_descriptors: pass a fixed gem_p (e.g. 4.6 for GeM+); None needs a learned p")
    rows = []
    for x in tqdm(images, total=total, desc="pooled descriptors", unit="img"):
        check_tensor(x, "image", ndim=4)
        for scale, fmap in zip(settings.scales, backbone.feature_maps(x, settings.scales)):
            # one scale through the identity head = exactly the head's input
            one = dataclasses.replace(settings, scales=(scale,))
            rows.append(describe_from_maps([fmap], nn.Identity(), one).cpu().numpy())
    if not rows:
        raise ValueError("pooled_descriptors: no images given")
    return np.concatenate(rows).astype(np.float32)


def fit_whitening_for(backbone, images: Iterable[torch.Tensor], settings: DescriptorSettings = DescriptorSettings(),
                      dim: int | None = None, shrinkage: float = 0.0, total: int | None = None) -> Whitening:
    """PCA-whitening fitted on :func:`pooled_descriptors` of ``images``; set it with ``backbone.head = w``.

    Needs more rows (images x scales) than ``dim`` unless ``shrinkage > 0``.
    """
    return fit_pca_whitening(pooled_descriptors(backbone, images, settings, total), dim=dim, shrinkage=shrinkage)


__all__ = ["Whitening", "canonical_eigh", "fit_pca_whitening", "fit_learned_whitening", "pooled_descriptors", "fit_whitening_for"]
