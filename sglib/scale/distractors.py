"""Distractors for large-scale retrieval: real revisitop1m, and a labelled Gaussian SIMULATION.

* **revisitop1m** (real, when on disk): :func:`revisitop1m_features` describes the 1,001,001 images of
  ``DATA_ROOT/datasets/revisitop1m/`` (:func:`sglib.data.revisitop.revisitop1m_image_paths`) through
  the feature cache. Describing a million images is GPU-hours (about 3 forward passes per image for
  Scale-GeM); run it sharded and resumable with ``torchrun``, writing into the same cache folder that
  :func:`sglib.scale.extract.cached_features` reads::

      python -c "from sglib.data.revisitop import revisitop1m_image_paths as r1m; \\
                 from sglib.scale.shards import write_image_list; \\
                 write_image_list('r1m.txt', r1m('data', require_images=True))"
      torchrun --nproc_per_node=8 -m sglib extract --images r1m.txt --cache-root data/cache \\
          --checkpoint CVPR2022_CVNet_R101.pyth --depth 101 --max-side 1024

  A killed run resumes from its finished shards (see :mod:`sglib.scale.distributed`).

* **Real photo crops** of photos no benchmark image shows: :mod:`sglib.bundled.crops`.

* **SIMULATED distractors** (:func:`fit_gaussian`, :func:`simulated_distractors`): Gaussian vectors with
  the mean and covariance (eigen-spectrum) of real distractor descriptors, then L2-normalised;
  deterministic from a seed, generated block by block, optionally into a ``.npy`` memmap (1M x D).
  This is a statistical stand-in, not data: a Gaussian has no clusters (no near-duplicates, no
  "buildings that look alike"), so it is easier than real distractors at equal N. Compare both at
  equal N before reading anything into simulated curves (notebook ``04_million_distractors``).

Evaluation against a database extended by distractors, never concatenated nor sorted:
:func:`sglib.evaluate.streaming.evaluate_with_distractors`.

Example (simulation only):
    >>> real = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    >>> model = fit_gaussian(real / np.linalg.norm(real, axis=1, keepdims=True))
    >>> x = simulated_distractors(model, 1000, seed=3)
    >>> x.shape, bool(np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5))
    ((1000, 16), True)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.revisitop import revisitop1m_image_paths
from .extract import Extractor, cached_features

SIM_BLOCK = 8192                      # rows per random block: row i depends only on (seed, i // SIM_BLOCK)


# --------------------------------------------------------------------------------- real revisitop1m


def revisitop1m_features(data_root, extractor: Extractor, cache_root, progress: bool = True) -> np.ndarray:
    """(1001001, D) descriptors of revisitop1m through :func:`sglib.scale.extract.cached_features`.

    Reads what ``torchrun -m sglib extract --cache-root`` (same images, same extractor) wrote;
    otherwise extracts here, resumably (GPU-hours for the full list).
    """
    paths = revisitop1m_image_paths(data_root, require_images=True)
    return cached_features(cache_root, paths, extractor, progress=progress)


# --------------------------------------------------------------------------------- SIMULATED distractors


@dataclasses.dataclass(frozen=True)
class GaussianModel:
    """A Gaussian N(mean, basis diag(std^2) basis^T) fitted to descriptors (a SIMULATION model).

    Attributes:
        mean: (D,) float64. basis: (D, r) orthonormal columns (principal directions).
        std: (r,) standard deviations along them, descending. n_fit: rows it was fitted on.
    """

    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    n_fit: int

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def covariance(self) -> np.ndarray:
        """(D, D) covariance of the model (before the L2 normalisation of the samples)."""
        return (self.basis * self.std ** 2) @ self.basis.T

    def digest(self) -> str:
        """sha256 of the parameters (identifies simulated files)."""
        h = hashlib.sha256()
        for a in (self.mean, self.basis, self.std):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()


def fit_gaussian(features, shrinkage: float = 0.0, rank_tol: float = 1e-9) -> GaussianModel:
    """Mean and covariance eigen-decomposition of real descriptors.

    Args:
        features: (n, D) real descriptors (n >= 2), finite.
        shrinkage: ``a`` in [0, 1]: covariance ``(1 - a) C + a (trace C / D) I``. With n <= D the
            sample covariance has rank < n, so a = 0 keeps simulated vectors in the span of the data.
        rank_tol: eigenvalues below ``rank_tol * largest`` are dropped (numerical zeros).

    Returns:
        :class:`GaussianModel` (covariance with the 1 / (n - 1) normalisation).
    """
    x = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features)
    if x.ndim != 2 or x.shape[0] < 2 or x.dtype.kind != "f":
        raise ValueError(f"features: expected a floating (n >= 2, D) array, got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("features: contains NaN or infinite values")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    x = x.astype(np.float64)
    mean = x.mean(0)
    xc = x - mean
    n, d = x.shape
    if shrinkage == 0 and n <= d:  # few rows: the SVD of the data is much cheaper than a (D, D) eigh
        _, sv, vt = np.linalg.svd(xc / math.sqrt(n - 1), full_matrices=False)
        vals, vecs = sv ** 2, vt.T
    else:
        cov = xc.T @ xc / (n - 1)
        if shrinkage:
            cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
        vals, vecs = np.linalg.eigh(cov)
        vals, vecs = vals[::-1], vecs[:, ::-1]
    keep = vals > rank_tol * max(vals[0], 0.0)
    if not keep.any():
        raise ValueError("features: all rows are identical (zero covariance); nothing to simulate")
    return GaussianModel(mean, np.ascontiguousarray(vecs[:, keep]), np.sqrt(vals[keep]), int(x.shape[0]))


def _simulated_block(model: GaussianModel, seed: int, b: int, rows: int, normalize: bool) -> np.ndarray:
    z = np.random.default_rng([seed, b]).standard_normal((rows, model.std.size))
    x = model.mean + (z * model.std) @ model.basis.T
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def simulated_distractors(model: GaussianModel, n: int, seed: int = 0, dtype=np.float32, path=None,
                          normalize: bool = True, progress: bool = False) -> np.ndarray:
    """``n`` SIMULATED distractor descriptors drawn from ``model`` (Gaussian, then L2-normalised).

    Row i depends only on ``(model, seed, i)``: the first m rows of any n >= m are the same, so
    distractor sets of growing N are nested. Rows are drawn in blocks of :data:`SIM_BLOCK`, each
    from ``numpy.random.default_rng([seed, block])``.

    Args:
        model: :func:`fit_gaussian` result.
        n: number of rows (>= 0). dtype: float32 or float16 (storage; drawn in float64).
        path: write a ``.npy`` file there and return it as a read-only ``np.memmap`` (1M x 1280
            float16 = 2.6 GB). A file written earlier with the same model, seed, n, dtype and
            normalisation (recorded in ``path + '.json'``) is reused.
        normalize: L2-normalise each row (as real descriptors are).

    Returns:
        (n, D) array, or memmap when ``path`` is given.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32):
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    if not isinstance(model, GaussianModel):
        raise ValueError(f"model: expected a GaussianModel (fit_gaussian), got {type(model).__name__}")
    n = int(n)
    shape = (n, model.dim)
    if path is None:
        out = np.empty(shape, dtype)
    else:
        path = Path(path)
        record = {"model": model.digest(), "seed": int(seed), "n": n, "dtype": dtype.name, "normalize": normalize,
                  "block": SIM_BLOCK}
        meta = path.with_name(path.name + ".json")
        if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == record:
            return np.load(path, mmap_mode="r")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for b in tqdm(range(-(-n // SIM_BLOCK)), desc="simulate", unit="block", disable=not progress):
        start = b * SIM_BLOCK
        stop = min(n, start + SIM_BLOCK)
        out[start:stop] = _simulated_block(model, seed, b, stop - start, normalize)
    if path is None:
        return out
    out.flush()
    del out
    os.replace(tmp, path)
    meta.write_text(json.dumps(record))
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------------- evaluation


__all__ = ["revisitop1m_features", "GaussianModel", "fit_gaussian", "simulated_distractors", "SIM_BLOCK"]
