"""Descriptor extraction: the :class:`Extractor`, the resumable sharded loop, and the feature cache.

The rows are kept by the shard store (:mod:`sglib.scale.shards`: one folder per job, fixed-size
shards, records that catch changed images and bytes). Failed images (missing, corrupt, empty crop,
non-finite descriptor) never stop a job and are never dropped: their rows are NaN and
:func:`~sglib.scale.shards.failed_images` lists them; :func:`~sglib.scale.shards.load_features`
refuses to return NaN rows unless asked to (``on_failed="warn"``).

The describer is an :class:`Extractor`: ``load_fn(path, bbx) -> (1, 3, H, W)`` network input,
``describe_fn((B, 3, H, W)) -> (B, D)``, and an ``identity`` dict (backbone, weights hash, settings)
that, with the image list, keys the cache (:func:`cached_features`). :func:`build_extractor` builds
the one extractor of every :class:`~sglib.models.backbone.Backbone` (the CLI, ``make demo``, the
notebooks and ``torchrun -m sglib extract`` all use it, so one image list with one model
and settings has exactly one cache folder, whoever wrote it).

Example (synthetic images, a tiny describer):
    >>> import tempfile, numpy as np, torch
    >>> from PIL import Image
    >>> from sglib.data.preprocess import load_image
    >>> tmp = tempfile.mkdtemp()
    >>> paths = []
    >>> for i in range(3):
    ...     p = f"{tmp}/synthetic_{i}.png"
    ...     Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p); paths.append(p)
    >>> ex = Extractor(describe_fn=lambda x: x.mean(dim=(2, 3)),
    ...                load_fn=lambda p, b: torch.tensor(load_image(p)).permute(2, 0, 1)[None].float(),
    ...                identity={"name": "channel-mean"})
    >>> feats = cached_features(f"{tmp}/cache", paths, ex, shard_size=2, progress=False)
    >>> feats.shape, feats[2].tolist()
    ((3, 3), [80.0, 80.0, 80.0])
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import MIN_MAX_SIDE, MIN_SIDE, load_network_input
from ..method.descriptors import DescriptorSettings, combine_scales, pooled_vector, resize_input
from .shards import (DEFAULT_SHARD_SIZE, FORMAT, canonical_json, finalize_job, has_job, image_fingerprint,
                     image_list_sha256, job_status, load_features, pending_shards, prepare_job, read_job,
                     sha256_text, shard_range, write_shard)


@dataclasses.dataclass(frozen=True)
class Extractor:
    """How to turn one image file into one descriptor row.

    Attributes:
        describe_fn: (B, 3, H, W) tensor -> (B, D) tensor or array (any float dtype, any device).
        load_fn: ``(path, bbx or None) -> (1, 3, H, W)`` tensor; raises ``ValueError``/``OSError``
            for a bad file (:class:`sglib.data.preprocess.ImageReadError` is a ``ValueError``).
        identity: JSON-serialisable dict naming everything that changes the output (backbone,
            weights hash, descriptor settings, preprocessing). Part of the cache key.
        batch_size: consecutive images of equal input size are described together, up to this many.
            Batched and one-by-one results may differ in the last bits, so it is part of the key.
        num_workers: threads decoding images ahead of the network (0: decode in the main thread).
            Rows are identical whatever the value; it is not part of the key.
    """

    describe_fn: Callable[[torch.Tensor], torch.Tensor]
    load_fn: Callable[[str, Sequence[float] | None], torch.Tensor]
    identity: dict
    batch_size: int = 1
    num_workers: int = 0

    def __post_init__(self):
        if not callable(self.describe_fn) or not callable(self.load_fn):
            raise ValueError("Extractor: describe_fn and load_fn must be callables")
        if not isinstance(self.identity, dict) or not self.identity:
            raise ValueError(f"Extractor: identity must be a non-empty dict, got {self.identity!r}")
        try:
            canonical_json(self.identity)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Extractor: identity must be JSON-serialisable: {exc}") from exc
        for name, least in (("batch_size", 1), ("num_workers", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                raise ValueError(f"Extractor: {name} must be an integer >= {least}, got {v!r}")

    @property
    def key_identity(self) -> dict:
        """The identity stored in the manifest and hashed into the cache key."""
        return {**self.identity, "batch_size": int(self.batch_size)}


# ----------------------------------------------------------------------------- extraction

def _prefetch(fn: Callable, items: Iterable, workers: int, depth: int) -> Iterable:
    """``map(fn, items)`` in order, with up to ``depth`` calls running ahead on ``workers`` threads."""
    if workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _load_one(extractor: Extractor, paths, boxes, i: int):
    try:
        x = extractor.load_fn(paths[i], boxes[i])
    except (ValueError, OSError) as exc:
        return i, None, f"{type(exc).__name__}: {exc}"
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1:
        got = getattr(x, "shape", type(x))
        raise ValueError(f"load_fn must return a (1, 3, H, W) tensor, got {got} for {paths[i]}")
    return i, x, ""


def _describe(extractor: Extractor, xs: list[torch.Tensor]) -> tuple[np.ndarray | None, str]:
    try:
        with torch.no_grad():
            out = extractor.describe_fn(torch.cat(xs) if len(xs) > 1 else xs[0])
    except ValueError as exc:
        return None, f"describe_fn: {type(exc).__name__}: {exc}"
    out = out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
    if out.ndim != 2 or out.shape[0] != len(xs):
        raise ValueError(f"describe_fn must return ({len(xs)}, D), got shape {out.shape}")
    return out.astype(np.float32, copy=False), ""


def _extract_shard(extractor: Extractor, paths, boxes, start: int, stop: int, bar) -> tuple[np.ndarray, list]:
    descs: dict[int, np.ndarray] = {}  # index -> finite descriptor
    failed: list[dict] = []
    batch: list[tuple[int, torch.Tensor]] = []

    def fail(i, reason):
        failed.append({"index": i, "path": paths[i], "reason": reason})

    def flush():
        if not batch:
            return
        out, why = _describe(extractor, [x for _, x in batch])
        if out is not None:
            results = [(j, out[r], "") for r, (j, _) in enumerate(batch)]
        elif len(batch) == 1:
            results = [(batch[0][0], None, why)]
        else:  # retry image by image, to find the bad one
            results = []
            for j, x in batch:
                one, why = _describe(extractor, [x])
                results.append((j, None if one is None else one[0], why))
        for j, d, reason in results:
            if d is not None and np.isfinite(d).all():
                descs[j] = d
            else:
                fail(j, reason or "descriptor has NaN or infinite values")
        bar.update(len(batch))
        batch.clear()

    load = functools.partial(_load_one, extractor, paths, boxes)
    for i, x, why in _prefetch(load, range(start, stop), extractor.num_workers, 2 * extractor.num_workers + 1):
        if x is None:
            fail(i, why)
            bar.update(1)
            continue
        if batch and (x.shape != batch[0][1].shape or len(batch) >= extractor.batch_size):
            flush()
        batch.append((i, x))
    flush()

    dims = {d.shape[0] for d in descs.values()}
    if len(dims) > 1:
        raise ValueError(f"describe_fn returned descriptors of different sizes {sorted(dims)} in one shard")
    rows = np.full((stop - start, dims.pop() if dims else 0), np.nan, np.float32)
    for i, d in descs.items():
        rows[i - start] = d
    return rows, sorted(failed, key=lambda f: f["index"])


def run_shards(out_dir, images: Sequence, extractor: Extractor, bboxes: Sequence | None = None, *,
               rank: int = 0, world_size: int = 1, retry_failed: bool = False, progress: bool = True) -> list[int]:
    """Compute this worker's unfinished shards (``k % world_size == rank``) of a prepared job.

    Shards on disk that pass the checks (shape, dtype, finite rows, NaN exactly on failed rows,
    matching record) are kept as they are; ``retry_failed=True`` also recomputes shards that have
    failed images (after fixing the files). Returns the shard indices computed by this call.
    """
    out = Path(out_dir)
    manifest, paths, boxes, mine, todo, dim = pending_shards(out, images, extractor.key_identity, bboxes, rank=rank,
                                                             world_size=world_size, retry_failed=retry_failed)
    n_mine = sum(len(range(*shard_range(manifest, k))) for k in mine)
    n_todo = sum(len(range(*shard_range(manifest, k))) for k in todo)
    desc = "extract" if world_size == 1 else f"extract rank {rank}/{world_size}"
    with tqdm(total=n_mine, initial=n_mine - n_todo, unit="img", desc=desc, disable=not progress,
              position=rank if world_size > 1 else None, dynamic_ncols=True) as bar:
        for k in todo:
            start, stop = shard_range(manifest, k)
            t0 = time.perf_counter()
            stats = [image_fingerprint(p) for p in paths[start:stop]]   # before reading: a later edit is detected
            rows, failed = _extract_shard(extractor, paths, boxes, start, stop, bar)
            if rows.shape[1]:
                if dim is not None and rows.shape[1] != dim:
                    raise ValueError(f"describe_fn returned {rows.shape[1]}-d descriptors, earlier shards are {dim}-d")
                dim = rows.shape[1]
            write_shard(out, manifest, k, rows, failed, stats, seconds=time.perf_counter() - t0)
            if failed:
                bar.write(f"shard {k}: {len(failed)} image(s) failed, e.g. {failed[0]['path']}: {failed[0]['reason']}")
    return todo


def extract_features(out_dir, images: Sequence, extractor: Extractor, bboxes: Sequence | None = None, *,
                     shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False, retry_failed: bool = False,
                     progress: bool = True) -> dict:
    """Extract descriptors of ``images`` into ``out_dir`` in one process, resuming a killed run.

    :func:`prepare_job` + :func:`run_shards` + :func:`finalize_job`. Read the result with
    :func:`load_features`; failures with :func:`failed_images`. Returns the completed manifest.
    """
    prepare_job(out_dir, images, extractor, bboxes, shard_size=shard_size, overwrite=overwrite)
    run_shards(out_dir, images, extractor, bboxes, retry_failed=retry_failed, progress=progress)
    return finalize_job(out_dir)


# ----------------------------------------------------------------------------- cache

def cache_key(images: Sequence, extractor: Extractor, bboxes: Sequence | None = None) -> str:
    """Hex key of (extractor identity, image list): the cache folder's name."""
    blob = canonical_json({"format": FORMAT, "identity": extractor.key_identity,
                            "images": image_list_sha256(images, bboxes)})
    return sha256_text(blob)[:24]


def cached_features(cache_root, images: Sequence, extractor: Extractor, bboxes: Sequence | None = None, *,
                    shard_size: int = DEFAULT_SHARD_SIZE, on_failed: str = "raise", retry_failed: bool = False,
                    progress: bool = True) -> np.ndarray:
    """Descriptors of ``images`` from ``cache_root/<cache_key>/``, extracting (or resuming) only what is missing.

    Any change of the extractor's identity (backbone, weights, settings, batch size) or of the image
    list (paths, order, boxes) gives another folder. Shards whose images changed on disk (size or
    modification time) or whose bytes changed are recomputed, with a warning. Returns
    :func:`load_features`'s array.
    """
    out = Path(cache_root) / cache_key(images, extractor, bboxes)
    overwrite = False
    if has_job(out):
        try:
            manifest = read_job(out)
        except ValueError as exc:   # the folder is ours (named by its key): rebuild it
            warnings.warn(f"{exc}; extracting {out} again", stacklevel=2)
            manifest, overwrite = {"shard_size": shard_size}, True
        if manifest.get("status") == "complete" and not retry_failed:
            try:
                return load_features(out, on_failed)
            except ValueError:
                status = job_status(out)
                if not status["invalid"] and not status["missing"]:   # only failed images: nothing to recompute
                    raise
        shard_size = manifest["shard_size"]  # values do not depend on it: keep the started layout
    extract_features(out, images, extractor, bboxes, shard_size=shard_size, overwrite=overwrite,
                     retry_failed=retry_failed, progress=progress)
    return load_features(out, on_failed)


# ----------------------------------------------------------------------------- the project's networks

def model_key(model: torch.nn.Module) -> str:
    """``"sha256:<hex>"`` identifying a network's state: its tensors (names, dtypes, shapes, values).

    A submodule with a ``source`` string (a head fitted by this library, e.g. the training-split
    whitening) is identified by that recipe, its tensors' shapes and the sums of their absolute values to
    4 significant digits instead of their exact values: refitting it from the same inputs gives the same
    key even when BLAS threading changed the last bits of its numbers, while an edited or different head
    with the same ``source`` does not.
    """
    digest = hashlib.sha256()
    sourced = {name: m.source for name, m in model.named_modules() if name and getattr(m, "source", None)}
    for name, t in sorted(model.state_dict().items()):
        if any(name.startswith(prefix + ".") for prefix in sourced):
            continue
        shape = tuple(t.shape)
        t = t.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{shape}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    for name, source in sorted(sourced.items()):
        module = model.get_submodule(name)
        summary = [(k, tuple(t.shape), f"{float(t.detach().double().abs().sum()):.4e}")
                   for k, t in sorted(module.state_dict().items())]
        digest.update(f"{name}|source|{source}|{summary}".encode())
    return "sha256:" + digest.hexdigest()


def build_extractor(model: torch.nn.Module, settings: DescriptorSettings | Mapping[str, DescriptorSettings] =
                    DescriptorSettings(), *, max_side: int | None = None, batch_size: int = 1,
                    num_workers: int = 2) -> Extractor:
    """The :class:`Extractor` of a :class:`~sglib.models.backbone.Backbone` for one or several settings.

    With several settings, a row is the concatenation of every setting's descriptor in order (split it
    with :func:`split_settings`): the backbone runs once per distinct scale and each setting re-pools
    those maps, which is exact since the maps depend on the input scale only.

    Args:
        model: CVNet (:func:`sglib.models.load_cvnet`) or an ImageNet backbone, on its device.
        settings: one :class:`DescriptorSettings` or ``{name: DescriptorSettings}`` (names are labels:
            they are not part of the cache key, the settings and their order are).
        max_side: downscale images whose long side is larger (None: full resolution, as the paper).
        batch_size: images of equal size described together (part of the cache key).
        num_workers: image-decoding threads (not part of the key).

    Example:
        >>> from sglib.models import SuperGlobalNet
        >>> ex = build_extractor(SuperGlobalNet(50).eval(), DescriptorSettings(scales=(1.0,)))
        >>> ex.identity["model"]
        'cvnet-R50'
    """
    group = list(settings.values()) if isinstance(settings, Mapping) else [settings]
    if not group or not all(isinstance(st, DescriptorSettings) for st in group):
        raise ValueError("settings: give a DescriptorSettings or a non-empty {name: DescriptorSettings} mapping")
    for st in group:
        model._check_settings(st)
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or
                                 max_side < MIN_MAX_SIDE):
        raise ValueError(f"max_side: expected an integer >= {MIN_MAX_SIDE} or None, got {max_side!r}")
    scales = sorted({s for st in group for s in st.scales})
    device = next(model.parameters()).device
    head, learned_p = model.descriptor_head, model.learned_p

    @torch.no_grad()
    def describe(x):
        x = x.to(device)
        maps = {s: model.feature_map(resize_input(x, s)) for s in scales}
        pooled = {}   # settings that differ only in scales / aggregation share their per-scale vectors
        out = []
        for st in group:
            pooling_key = (st.gem_p, st.regional) + ((st.regional_p, st.regional_kernel) if st.regional else ())
            for s in st.scales:
                if (s,) + pooling_key not in pooled:
                    pooled[(s,) + pooling_key] = pooled_vector(maps[s], head, st, learned_p)
            out.append(combine_scales([pooled[(s,) + pooling_key] for s in st.scales], st))
        return torch.cat(out, dim=1)

    norm = model.normalization
    identity = {"model": model.name, "state": model_key(model), "settings": [st.as_dict() for st in group],
                "norm": dataclasses.asdict(norm), "max_side": max_side, "min_side": MIN_SIDE,
                "relu_plus": getattr(model, "relu_plus", None)}
    load = functools.partial(load_network_input, norm=norm, max_side=max_side, min_side=MIN_SIDE)
    return Extractor(describe, load, identity, batch_size=batch_size, num_workers=num_workers)


def split_settings(features: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Undo :func:`build_extractor`'s concatenation: (N, S*D) -> {name: (N, D)}, in the settings' order."""
    if features.shape[1] % len(names):
        raise ValueError(f"features have {features.shape[1]} columns, not a multiple of {len(names)} settings")
    return dict(zip(names, np.split(features, len(names), axis=1)))


def dataset_features(dataset, extractor: Extractor, cache_root, progress: bool = True,
                     retry_failed: bool = False, crop_queries: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(queries (nq, D), database (N, D)) descriptors of a :class:`~sglib.data.revisitop.RevisitopDataset`, cached.

    Queries are cropped to their bounding boxes, as the reference does, unless ``crop_queries`` is False
    (the whole query image: a protocol switch). ``retry_failed``: see :func:`cached_features`.
    """
    db = cached_features(cache_root, dataset.db_paths(), extractor, progress=progress, retry_failed=retry_failed)
    boxes = [dataset.query_bbx(i) if crop_queries else None for i in range(dataset.n_queries)]
    q = cached_features(cache_root, dataset.query_paths(), extractor, bboxes=boxes, progress=progress,
                        retry_failed=retry_failed)
    return q, db


__all__ = ["Extractor", "build_extractor", "model_key", "split_settings", "dataset_features", "run_shards",
           "extract_features", "cached_features", "cache_key"]
