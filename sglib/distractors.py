"""Distractors for large-scale retrieval: real revisitop1m, real photo crops, and a labelled Gaussian SIMULATION.

Three sources, from the most to the least faithful:

* **revisitop1m** (real, when on disk): :func:`revisitop1m_images` lists the 1,001,001 image paths of
  ``DATA_ROOT/datasets/revisitop1m/`` (list + jpg tree), :func:`revisitop1m_features` describes them
  through the feature cache. Describing a million images is GPU-hours (about 3 forward passes per
  image for Scale-GeM); run it sharded and resumable with ``torchrun``, writing into the same cache
  folder that :func:`sglib.extract.cached_features` reads::

      python -c "from sglib.distractors import revisitop1m_images; from sglib.extract import write_image_list; \\
                 write_image_list('r1m.txt', revisitop1m_images('data', require_images=True))"
      torchrun --nproc_per_node=8 -m sglib.distributed --images r1m.txt --cache-root data/cache \\
          --model cvnet --weights CVPR2022_CVNet_R101.pyth --depth 101 --max-side 1024

  A killed run resumes from its finished shards (see :mod:`sglib.distributed`).

* **Real photo crops** (:func:`distractor_photo_pool`, :func:`crop_boxes`, :func:`write_distractor_crops`):
  deterministic crops (positions x scales x horizontal flip) of the real photos of :mod:`sglib.photos`
  that the ``synthetic_views`` benchmark does not show. Excluded by default: every *landmark* photo
  (what the queries look for), every *background* photo (context and occluders of every benchmark
  image, queries included), and every photo that shares a real-scene ``group`` with an excluded one.
  What remains are the benchmark's *distractor* photos (already negatives in its database) and its
  *training* photos (the whitening was fitted on views of these), plus their group mates.
  The crops are written as JPEGs so that any extractor, sharded or not, reads them like other images.

* **SIMULATED distractors** (:func:`fit_gaussian`, :func:`simulated_distractors`): Gaussian vectors with
  the mean and covariance (eigen-spectrum) of real distractor descriptors, then L2-normalised;
  deterministic from a seed, generated block by block, optionally into a ``.npy`` memmap (1M x D).
  This is a statistical stand-in, not data: a Gaussian has no clusters (no near-duplicates, no
  "buildings that look alike"), so it is easier than real distractors at equal N. Compare both at
  equal N before reading anything into simulated curves (notebook ``04_million_distractors``).

Evaluation against a database extended by distractors, without materialising it or sorting it:
:func:`knn_over` (exact top-k over several parts) and :func:`evaluate_with_distractors` (revisited
E/M/H, with SuperGlobal reranking of the top-M).

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
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .datasets import revisitop1m_image_paths
from .evaluate_large import revisited_from_scores
from .extract import Extractor, cached_features
from .rerank import superglobal_scores
from .search import knn

CROP_SCALES = (1.0, 0.7, 0.5, 0.35)   # crop side / photo side
CROP_FORMAT = 1
EXCLUDED_ROLES = ("landmarks", "backgrounds")
SIM_BLOCK = 8192                      # rows per random block: row i depends only on (seed, i // SIM_BLOCK)


# --------------------------------------------------------------------------------- real revisitop1m


def revisitop1m_images(data_root, require_images: bool = False) -> list[Path]:
    """The revisitop1m image paths under ``data_root/datasets/revisitop1m/`` (list order = row order).

    Raises :class:`sglib.datasets.DatasetError` when the list is missing or malformed, and with
    ``require_images`` :class:`sglib.datasets.MissingImagesError` naming missing files.
    """
    return revisitop1m_image_paths(data_root, require_images=require_images)


def revisitop1m_features(data_root, extractor: Extractor, cache_root, progress: bool = True) -> np.ndarray:
    """(1001001, D) descriptors of revisitop1m through :func:`sglib.extract.cached_features`.

    Reads what ``torchrun -m sglib.distributed --cache-root`` (same images, same extractor) wrote;
    otherwise extracts here, resumably (GPU-hours for the full list).
    """
    paths = revisitop1m_images(data_root, require_images=True)
    return cached_features(cache_root, paths, extractor, progress=progress)


# --------------------------------------------------------------------------------- real photo crops


def distractor_photo_pool(photos: Sequence, benchmark_dir, exclude_roles: Sequence[str] = EXCLUDED_ROLES):
    """The photos whose crops may serve as distractors for a ``synthetic_views`` benchmark.

    Args:
        photos: :class:`sglib.photos.Photo` list (``sglib.photos.fetch_all``).
        benchmark_dir: the benchmark folder holding ``meta_synthetic_views.json`` (its ``roles``).
        exclude_roles: roles whose photos are left out (default landmarks and backgrounds); photos
            sharing a ``group`` (same real scene) with an excluded photo are left out too.

    Returns:
        ``(pool, excluded)``: pool = photos kept, sorted by key; excluded = ``{key: reason}``.
    """
    meta_path = Path(benchmark_dir) / "meta_synthetic_views.json"
    if not meta_path.is_file():
        raise ValueError(f"benchmark metadata not found: {meta_path} (build it with sglib.benchmarks.build_all)")
    try:
        roles = json.loads(meta_path.read_text())["roles"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path}: no readable 'roles' ({exc})") from exc
    unknown = [r for r in exclude_roles if r not in roles]
    if unknown:
        raise ValueError(f"exclude_roles {unknown} are not roles of {meta_path} (has {sorted(roles)})")
    excluded = {key: f"benchmark {role[:-1]}" for role in exclude_roles for key in roles[role]}
    known = {p.key for p in photos}
    if not set(excluded) <= known:
        missing = sorted(set(excluded) - known)[:3]
        raise ValueError(f"photos lack benchmark photo(s) {missing}: the photo list and the benchmark differ")
    groups = {p.group: p.key for p in photos if p.key in excluded and p.group is not None}
    for p in photos:
        if p.key not in excluded and p.group in groups:
            excluded[p.key] = f"same scene ({p.group}) as {groups[p.group]}"
    pool = sorted((p for p in photos if p.key not in excluded), key=lambda p: p.key)
    return pool, excluded


def crop_boxes(width: int, height: int, scales: Sequence[float] = CROP_SCALES, flips: bool = True) -> list[tuple]:
    """Deterministic crop boxes of one photo: every scale on a grid with about 50 % overlap.

    A crop at scale ``s`` is ``round(s * width) x round(s * height)``; its top-left corners run over
    ``ceil(2 / s) - 1`` evenly spaced positions per axis (1 at s = 1, 2 at 0.7, 3 at 0.5, 5 at 0.35).

    Returns:
        ``[(x1, y1, x2, y2, flipped), ...]`` integer pixel boxes (x2, y2 exclusive), scales in the
        given order, then rows, then columns; with ``flips`` each box twice (unflipped first).

    Example:
        >>> crop_boxes(100, 50, scales=(1.0, 0.5), flips=False)[:2]
        [(0, 0, 100, 50, False), (0, 0, 50, 25, False)]
    """
    if width < 1 or height < 1:
        raise ValueError(f"crop_boxes: photo size must be positive, got {width} x {height}")
    if not scales or any(not (0 < s <= 1) for s in scales):
        raise ValueError(f"crop_boxes: scales must be in (0, 1], got {tuple(scales)}")
    boxes = []
    for s in scales:
        w, h = max(1, round(s * width)), max(1, round(s * height))
        n = max(1, math.ceil(2 / s - 1e-9) - 1)
        for y in np.linspace(0, height - h, n).round().astype(int):
            for x in np.linspace(0, width - w, n).round().astype(int):
                for flip in ((False, True) if flips else (False,)):
                    boxes.append((int(x), int(y), int(x) + w, int(y) + h, flip))
    return boxes


@dataclasses.dataclass(frozen=True)
class DistractorCrops:
    """JPEG crops on disk: ``paths[i]`` is crop i; ``records[i]`` says where it comes from
    (``{"photo": key, "sha256": photo sha256, "box": [x1, y1, x2, y2], "flipped": bool}``)."""

    folder: Path
    paths: list
    records: list

    def __len__(self) -> int:
        return len(self.paths)


def _crop_plan(photos, scales, flips, max_crops, seed) -> list[dict]:
    plan = []
    for p in photos:
        with Image.open(p.path) as im:
            size = im.size
        for x1, y1, x2, y2, flip in crop_boxes(*size, scales=scales, flips=flips):
            plan.append({"photo": p.key, "sha256": p.sha256, "box": [x1, y1, x2, y2], "flipped": flip})
    if max_crops is not None and len(plan) > max_crops:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(plan), max_crops, replace=False))
        plan = [plan[i] for i in keep]
    return plan


def write_distractor_crops(photos: Sequence, out_root, scales: Sequence[float] = CROP_SCALES, flips: bool = True,
                           max_crops: int | None = None, max_side: int = 384, quality: int = 90, seed: int = 0,
                           progress: bool = True) -> DistractorCrops:
    """Cut every :func:`crop_boxes` crop of ``photos`` and save it as a JPEG (long side <= ``max_side``).

    Args:
        photos: real photos to crop (usually :func:`distractor_photo_pool`'s pool).
        out_root: parent folder; the crops go to ``out_root/crops_<key>/`` where the key hashes the
            photos' sha256 and every argument, so another setting never reuses stale files.
        max_crops: keep a seeded random subset of this many crops (None: all).
        max_side: the benchmarks' images are 384 px long; crops are downscaled (never upscaled) to it.

    Returns:
        :class:`DistractorCrops`. A folder completed earlier (``crops.json`` present) is reused as is;
        an interrupted one is completed (existing JPEGs are kept).
    """
    if not photos:
        raise ValueError("write_distractor_crops: no photos to crop")
    if max_crops is not None and max_crops < 1:
        raise ValueError(f"max_crops must be >= 1 or None, got {max_crops}")
    if max_side < 16 or not 1 <= quality <= 100:
        raise ValueError(f"need max_side >= 16 and quality in [1, 100], got {max_side}, {quality}")
    info = {"format": CROP_FORMAT, "photos": sorted(p.sha256 for p in photos), "scales": [float(s) for s in scales],
            "flips": bool(flips), "max_crops": max_crops, "max_side": int(max_side), "quality": int(quality),
            "seed": int(seed)}
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(out_root) / f"crops_{key}"
    index = folder / "crops.json"
    if index.is_file():
        records = json.loads(index.read_text())["crops"]
        paths = [folder / r["file"] for r in records]
        if all(p.is_file() for p in paths):
            return DistractorCrops(folder, paths, records)
    folder.mkdir(parents=True, exist_ok=True)
    plan = _crop_plan(sorted(photos, key=lambda p: p.key), scales, flips, max_crops, seed)
    by_key = {p.key: p for p in photos}
    opened = (None, None)
    for i, rec in enumerate(tqdm(plan, desc="distractor crops", unit="crop", disable=not progress)):
        rec["file"] = f"crop_{i:06d}_{re.sub(r'[^A-Za-z0-9]+', '_', rec['photo'])}.jpg"
        dest = folder / rec["file"]
        if dest.is_file():
            continue
        if opened[0] != rec["photo"]:
            with Image.open(by_key[rec["photo"]].path) as im:
                opened = (rec["photo"], im.convert("RGB"))
        crop = opened[1].crop(tuple(rec["box"]))
        if rec["flipped"]:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.thumbnail((max_side, max_side), Image.BILINEAR)
        tmp = dest.with_name(f".{dest.name}.tmp")
        crop.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, dest)
    tmp = index.with_name(".crops.json.tmp")
    tmp.write_text(json.dumps({"info": info, "crops": plan}))
    os.replace(tmp, index)
    return DistractorCrops(folder, [folder / r["file"] for r in plan], plan)


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


def _parts(db, distractors) -> list:
    parts = [db] + ([] if distractors is None else list(distractors) if isinstance(distractors, (list, tuple))
                    else [distractors])
    d = None
    out = []
    for i, p in enumerate(parts):
        if isinstance(p, torch.Tensor):
            p = p.detach().cpu().numpy()
        if not isinstance(p, np.ndarray) or p.ndim != 2 or p.dtype.kind != "f":
            raise ValueError(f"database part {i}: expected a 2-D floating array, got {getattr(p, 'shape', type(p))}")
        if d is not None and p.shape[1] != d:
            raise ValueError(f"database part {i} has dimension {p.shape[1]}, the database has {d}")
        d = p.shape[1]
        if p.shape[0]:
            out.append(p)
    return out


def knn_over(q, parts: Sequence, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``q`` over the row-wise concatenation of ``parts`` (never built).

    Returns (scores, ids) (nq, k), ids into the concatenation; equal scores: lower id first,
    as :func:`sglib.search.knn` on the concatenated array.
    """
    q = np.ascontiguousarray(q, np.float32)
    parts = [p for p in parts if p.shape[0]]
    total = sum(p.shape[0] for p in parts)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    scores, ids, offset = [], [], 0
    for p in parts:
        s, i = knn(q, p, min(k, p.shape[0]))
        scores.append(s)
        ids.append(i + offset)
        offset += p.shape[0]
    s, i = np.concatenate(scores, 1), np.concatenate(ids, 1)
    # lexsort: by score descending, then by id (parts are in id order, ties inside a part by id)
    order = np.lexsort((i, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def evaluate_with_distractors(q, db, distractors, gnd, rerank=None, ks=(1, 5, 10), block_size: int = 65536,
                              progress: bool | None = False) -> dict:
    """Revisited E/M/H of queries against ``db`` followed by ``distractors`` (indices n_db, n_db + 1, ...).

    Args:
        q: (nq, D) query descriptors; db: (N, D) benchmark database (gnd indexes its rows).
        distractors: None, an (n, D) array / memmap (float16 fine), or a list of them (appended in order).
        gnd: the benchmark's ground truth (distractors are negatives of every query).
        rerank: :class:`sglib.pipeline.RerankSettings` (or any object with M, K, beta): rerank each
            query's exact top-M over the whole extended database with SuperGlobal (shared shortlist,
            as :func:`sglib.pipeline.evaluate_retrieval`); None: plain ranking.

    Returns:
        :func:`sglib.evaluate.revisited`'s dict for that ranking (top-M reranked, then the rest by
        score), plus ``"N"`` (database size) and, when reranking, ``"M"``.
    """
    parts = _parts(db, distractors)
    q = np.ascontiguousarray(q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else q, np.float32)
    if q.ndim != 2 or q.shape[1] != parts[0].shape[1]:
        raise ValueError(f"q: expected (nq, {parts[0].shape[1]}), got {q.shape}")
    if q.shape[0] != len(gnd):
        raise ValueError(f"q has {q.shape[0]} queries but gnd has {len(gnd)}")
    bounds = np.cumsum([0] + [p.shape[0] for p in parts])
    n = int(bounds[-1])

    def block(start, stop):  # scores of items [start, stop) of the concatenation
        cols = []
        for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                cols.append(q @ np.asarray(p[a - lo:b - lo], dtype=np.float32).T)
        return np.concatenate(cols, 1)

    head, m = None, None
    if rerank is not None:
        m = min(int(rerank.M), n)
        _, top = knn_over(q, parts, m)
        head = np.empty_like(top)
        qt = torch.from_numpy(q)
        for i in range(q.shape[0]):  # one query at a time: (M, M) similarities, no (nq, M, M) tensor
            cands = np.empty((m, q.shape[1]), np.float32)
            for p, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
                inside = (top[i] >= lo) & (top[i] < hi)
                cands[inside] = p[top[i][inside] - lo]
            cands = torch.from_numpy(cands)
            s = superglobal_scores(qt[i:i + 1], cands[None], int(rerank.K), float(rerank.beta))[0]
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"non-finite reranking scores for query {i}: NaN in the candidates' descriptors")
            head[i] = top[i][torch.sort(s, descending=True, stable=True).indices.numpy()]
    out = revisited_from_scores(block, list(gnd), ks, head_ranks=head, n_db=n, block_size=block_size,
                                progress=progress)
    out["N"] = n
    if m is not None:
        out["M"] = m
    return out


__all__ = ["revisitop1m_images", "revisitop1m_features", "distractor_photo_pool", "crop_boxes", "DistractorCrops",
           "write_distractor_crops", "GaussianModel", "fit_gaussian", "simulated_distractors", "knn_over",
           "evaluate_with_distractors", "CROP_SCALES", "EXCLUDED_ROLES", "SIM_BLOCK"]
