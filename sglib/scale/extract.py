"""Resumable, sharded descriptor extraction and the feature cache.

A job turns an image list (paths, optional query boxes) into an ``(N, D)`` float32 matrix, row ``i``
for image ``i``, written to a folder as fixed-size shards so that a killed run resumes where it
stopped and several processes (or machines sharing a file system) can split the work:

==========================  ==========================================================================
``manifest.json``           what the folder holds: image-list sha256, the extractor's identity,
                            N, shard size, number of shards, dtype; ``dim`` and ``status: complete``
                            once :func:`finalize_job` has checked every shard
``images.txt``              the image list (:func:`write_image_list` format), for people and tools
``shard_00000.npy``         rows ``[k * shard_size, (k + 1) * shard_size)``; written to a temporary
``shard_00000.json``        name then ``os.replace``-d, so a shard on disk is whole. Its ``.json``
                            (written first) lists the images that failed, with the reason, the
                            size and modification time (or sha256, ``SGLIB_CACHE_VERIFY=sha256``) of
                            every image as read, and the sha256 of the ``.npy``: a shard whose
                            bytes or images changed is never served
``failed.json``             all failures, collected by :func:`finalize_job`
==========================  ==========================================================================

Failed images (missing, corrupt, empty crop, non-finite descriptor) never stop a job and are never
dropped: their rows are NaN and :func:`failed_images` lists them; :func:`load_features` refuses to
return NaN rows unless asked to (``on_failed="warn"``).

The describer is an :class:`Extractor`: ``load_fn(path, bbx) -> (1, 3, H, W)`` network input,
``describe_fn((B, 3, H, W)) -> (B, D)``, and an ``identity`` dict (backbone, weights hash, settings)
that, with the image list, keys the cache (:func:`cached_features`). :func:`build_extractor` builds
the one extractor of every :class:`~sglib.models.backbone.Backbone` (the CLI, ``make demo``, the
notebooks and ``torchrun -m sglib.scale.distributed`` all use it, so one image list with one model
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
import io
import json
import math
import os
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import MIN_SIDE, load_network_input
from ..method.descriptors import DescriptorSettings, combine_scales, pooled_vector, resize_input

FORMAT = "sglib-features/2"   # 2: per-image sizes and times, shard checksums
DTYPE = "float32"
DEFAULT_SHARD_SIZE = 500
_MANIFEST, _IMAGES, _FAILED = "manifest.json", "images.txt", "failed.json"
# Manifest fields a resumed job must match; the others (dim, status) are filled in by finalize_job.
_JOB_FIELDS = ("format", "image_list_sha256", "n_images", "shard_size", "n_shards", "dtype", "identity")


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
            _canonical_json(self.identity)
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


# ----------------------------------------------------------------------------- image lists, hashing

def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_image_list(images, bboxes) -> tuple[list[str], list]:
    if isinstance(images, (str, os.PathLike)):
        raise ValueError("images: expected a list of paths, got a single path")
    paths = []
    for i, p in enumerate(images):
        if not isinstance(p, (str, os.PathLike)) or isinstance(os.fspath(p), bytes):
            raise ValueError(f"images[{i}]: expected a path (str or pathlib.Path), got {p!r}")
        if any(c in os.fspath(p) for c in "\t\n\r"):
            raise ValueError(f"images[{i}]: a path with a tab or line break cannot be listed in an image list: {p!r}")
        paths.append(os.fspath(p))
    if not paths:
        raise ValueError("images: the image list is empty")
    if bboxes is None:
        boxes = [None] * len(paths)
    else:
        boxes = list(bboxes)
        if len(boxes) != len(paths):
            raise ValueError(f"bboxes: got {len(boxes)} boxes for {len(paths)} images")
        for i, b in enumerate(boxes):
            if b is not None:
                b = [float(v) for v in b]
                if len(b) != 4 or not all(math.isfinite(v) for v in b):
                    raise ValueError(f"bboxes[{i}]: expected 4 finite numbers (x1, y1, x2, y2), got {bboxes[i]!r}")
                boxes[i] = b
    return paths, boxes


def _image_lines(paths: Sequence[str], boxes: Sequence) -> list[str]:
    # absolute paths: the same relative list from another working directory is a different job
    return [os.path.abspath(p) if b is None else f"{os.path.abspath(p)}\t{' '.join(repr(v) for v in b)}"
            for p, b in zip(paths, boxes)]


def image_list_sha256(images: Sequence, bboxes: Sequence | None = None) -> str:
    """sha256 of the image list (absolute paths and boxes, in order). File contents are not read."""
    paths, boxes = _check_image_list(images, bboxes)
    return _sha256_text("\n".join(_image_lines(paths, boxes)) + "\n")


def write_image_list(path, images: Sequence, bboxes: Sequence | None = None) -> None:
    """Write an image list file: one image a line, ``PATH`` or ``PATH<TAB>x1 y1 x2 y2``."""
    paths, boxes = _check_image_list(images, bboxes)
    _atomic_write_text(Path(path), "\n".join(_image_lines(paths, boxes)) + "\n")


def read_image_list(path) -> tuple[list[str], list]:
    """Read a :func:`write_image_list` file -> ``(paths, bboxes)`` (a box is None or 4 floats)."""
    if not os.path.isfile(path):
        raise ValueError(f"image list file not found: {path}")
    paths, boxes = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) > 2:
                raise ValueError(f"{path}:{n}: expected 'PATH' or 'PATH<TAB>x1 y1 x2 y2', got {line!r}")
            box = None
            if len(fields) == 2:
                try:
                    box = [float(v) for v in fields[1].replace(",", " ").split()]
                except ValueError:
                    box = []
                if len(box) != 4:
                    raise ValueError(f"{path}:{n}: the box must be 4 numbers 'x1 y1 x2 y2', got {fields[1]!r}")
            paths.append(fields[0])
            boxes.append(box)
    if not paths:
        raise ValueError(f"image list file {path} holds no images")
    return paths, boxes


# ----------------------------------------------------------------------------- files

_HOST = socket.gethostname().replace(".", "_")


def _atomic_write_bytes(path: Path, write: Callable) -> None:
    # host and pid in the name: concurrent writers never touch each other's file (see _dead_writer)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def _dead_writer(tmp: Path) -> bool:
    """True when ``tmp`` was written by a process of this host that no longer runs."""
    parts = tmp.name.rsplit(".", 3)   # .NAME.HOST.PID.tmp
    if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def shard_path(out_dir, k: int) -> Path:
    """``OUT/shard_{k:05d}.npy``; its failure record is the same name with ``.json``."""
    return Path(out_dir) / f"shard_{k:05d}.npy"


def _shard_meta_path(out_dir, k: int) -> Path:
    return Path(out_dir) / f"shard_{k:05d}.json"


def _shard_range(manifest: dict, k: int) -> tuple[int, int]:
    start = k * manifest["shard_size"]
    return start, min(start + manifest["shard_size"], manifest["n_images"])


# ----------------------------------------------------------------------------- job folder

def _job_manifest(paths, boxes, identity: dict, shard_size: int) -> dict:
    n = len(paths)
    return {"format": FORMAT, "image_list_sha256": _sha256_text("\n".join(_image_lines(paths, boxes)) + "\n"),
            "n_images": n, "shard_size": shard_size, "n_shards": -(-n // shard_size), "dtype": DTYPE,
            "identity": json.loads(_canonical_json(identity)), "dim": None, "status": "running"}


def read_manifest(out_dir) -> dict:
    """The job's ``manifest.json``; ``ValueError`` when the folder holds no job."""
    path = Path(out_dir) / _MANIFEST
    if not path.is_file():
        raise ValueError(f"{out_dir} holds no extraction job ({_MANIFEST} not found)")
    try:
        manifest = _read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}; extract into a new folder or pass overwrite=True") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest")
    return manifest


def _remove_job_files(out: Path) -> None:
    # only files this module writes: a mistyped folder must not lose anything else
    for p in out.iterdir():
        name = p.name
        if p.is_file() and (name in (_MANIFEST, _IMAGES, _FAILED) or
                            (name.startswith("shard_") and name.endswith((".npy", ".json"))) or
                            (name.startswith(".") and name.endswith(".tmp"))):
            p.unlink()


def prepare_job(out_dir, images: Sequence, extractor: Extractor, bboxes: Sequence | None = None, *,
                shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> dict:
    """Create the job folder, or check that the one there is this same job (then it resumes).

    Raises:
        ValueError: the folder holds another job (other images, settings, weights or shard size);
            the message says what differs. Use a new folder or ``overwrite=True`` (which deletes the
            job files there, and only those).
    """
    paths, boxes = _check_image_list(images, bboxes)
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    want = _job_manifest(paths, boxes, extractor.key_identity, int(shard_size))
    if overwrite:
        _remove_job_files(out)
    if (out / _MANIFEST).exists():
        have = read_manifest(out)
        differ = [f for f in _JOB_FIELDS if have.get(f) != want[f]]
        if differ:
            detail = "; ".join(f"{f}: folder has {_short(have.get(f))}, this job {_short(want[f])}" for f in differ)
            raise ValueError(f"{out} holds a different extraction job ({detail}). Extract into a new folder, "
                             "or pass overwrite=True to delete that job's files.")
        return have
    if any(out.glob("shard_*.npy")):
        raise ValueError(f"{out} has shard files but no {_MANIFEST}: extract into a new folder or pass overwrite=True")
    _atomic_write_text(out / _IMAGES, "\n".join(_image_lines(paths, boxes)) + "\n")
    _write_json(out / _MANIFEST, want)
    return want


def _short(value) -> str:
    text = _canonical_json(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:200] + "..."


def image_fingerprint(path) -> list | None:
    """What identifies an image file's content for the cache; None when it cannot be read.

    ``$SGLIB_CACHE_VERIFY`` chooses: ``stat`` (default) ``[size, mtime_ns]``, cheap, misses an edit
    that keeps both; ``sha256`` ``[size, "sha256:<hex>"]``, reads every image on every cache read.
    A record made in one mode never matches the other, so switching recomputes (never serves stale rows).
    """
    mode = os.environ.get("SGLIB_CACHE_VERIFY", "stat")
    if mode not in ("stat", "sha256"):
        raise ValueError(f"SGLIB_CACHE_VERIFY: expected 'stat' or 'sha256', got {mode!r}")
    try:
        st = os.stat(path)
        if mode == "stat":
            return [st.st_size, st.st_mtime_ns]
        with open(path, "rb") as f:
            return [st.st_size, "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()]
    except OSError:
        return None


def _job_paths(out: Path) -> list[str]:
    """The job's image paths, from its ``images.txt``; ValueError when that file is gone or unreadable."""
    try:
        with open(out / _IMAGES, encoding="utf-8") as f:
            return [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{out / _IMAGES} is unreadable ({exc}): the job folder was damaged; extract into a new "
                         "folder or pass overwrite=True (cached_features repairs its own folders)") from exc


def _check_shard(out: Path, manifest: dict, k: int, dim: int | None = None,
                 paths: Sequence[str] | None = None) -> tuple[np.ndarray | None, str]:
    """Load shard k and check it against the manifest; -> (rows, "") or (None, why it is unusable).

    Checks the file's sha256 against its record and, with ``paths``, that every image still has the
    size and modification time it had when it was read.
    """
    npy, meta_path = shard_path(out, k), _shard_meta_path(out, k)
    if not npy.exists():
        return None, "missing"
    start, stop = _shard_range(manifest, k)
    try:
        meta = _read_json(meta_path)
        blob = npy.read_bytes()
        rows = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path.name} is not a JSON object")
    except (OSError, ValueError) as exc:  # truncated / unreadable file
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if (meta.get("start"), meta.get("stop")) != (start, stop) or meta.get("image_list_sha256") != \
            manifest["image_list_sha256"]:
        return None, "its record does not match the manifest"
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
        return None, "its bytes changed after it was written (sha256 differs from its record)"
    if rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[0] != stop - start:
        return None, f"shape {rows.shape} {rows.dtype}, expected ({stop - start}, D) float32"
    if paths is not None:
        stats = meta.get("stats")
        if not isinstance(stats, list) or len(stats) != stop - start:
            return None, "its record has no image sizes and times"
        changed = [paths[start + i] for i, st in enumerate(stats) if image_fingerprint(paths[start + i]) != st]
        if changed:
            return None, f"{len(changed)} image(s) changed since extraction, e.g. {changed[0]}"
    failed = np.zeros(stop - start, bool)
    try:
        failed[[f["index"] - start for f in meta["failed"]]] = True
    except (KeyError, IndexError, TypeError):
        return None, "its record of failed images is malformed"
    if rows.shape[1] == 0:  # every image of the shard failed before the dimension was known
        return (rows, "") if failed.all() else (None, "no columns but not every image failed")
    if dim is not None and rows.shape[1] != dim:
        return None, f"dimension {rows.shape[1]}, other shards have {dim}"
    if not np.isfinite(rows[~failed]).all():
        return None, "non-finite values in rows of images that did not fail"
    if not np.isnan(rows[failed]).all():
        return None, "rows of failed images are not NaN"
    return rows, ""


def job_status(out_dir) -> dict:
    """``{"n_shards", "done": [k...], "missing": [k...], "invalid": {k: why}}`` from the files (reads every shard)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    paths = _job_paths(out)
    done, missing, invalid = [], [], {}
    for k in range(manifest["n_shards"]):
        rows, why = _check_shard(out, manifest, k, paths=paths)
        if rows is not None:
            done.append(k)
        elif why == "missing":
            missing.append(k)
        else:
            invalid[k] = why
    return {"n_shards": manifest["n_shards"], "done": done, "missing": missing, "invalid": invalid}


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
    manifest = read_manifest(out)
    paths, boxes = _check_image_list(images, bboxes)
    want = _job_manifest(paths, boxes, extractor.key_identity, manifest["shard_size"])
    if (want["image_list_sha256"], want["identity"]) != (manifest["image_list_sha256"], manifest["identity"]):
        raise ValueError(f"{out} holds another job: call prepare_job with these images and extractor first")
    if not (0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    mine = range(rank, manifest["n_shards"], world_size)
    todo, dim = [], None
    for k in mine:
        rows, why = _check_shard(out, manifest, k, paths=paths)
        if rows is not None and not (retry_failed and _read_json(_shard_meta_path(out, k))["failed"]):
            dim = dim or (rows.shape[1] or None)
            continue
        if why not in ("", "missing"):
            warnings.warn(f"{shard_path(out, k)} is unusable ({why}); recomputing it")
        todo.append(k)
    n_mine = sum(len(range(*_shard_range(manifest, k))) for k in mine)
    n_todo = sum(len(range(*_shard_range(manifest, k))) for k in todo)
    desc = "extract" if world_size == 1 else f"extract rank {rank}/{world_size}"
    with tqdm(total=n_mine, initial=n_mine - n_todo, unit="img", desc=desc, disable=not progress,
              position=rank if world_size > 1 else None, dynamic_ncols=True) as bar:
        for k in todo:
            start, stop = _shard_range(manifest, k)
            t0 = time.perf_counter()
            stats = [image_fingerprint(p) for p in paths[start:stop]]   # before reading: a later edit is detected
            rows, failed = _extract_shard(extractor, paths, boxes, start, stop, bar)
            if rows.shape[1]:
                if dim is not None and rows.shape[1] != dim:
                    raise ValueError(f"describe_fn returned {rows.shape[1]}-d descriptors, earlier shards are {dim}-d")
                dim = rows.shape[1]
            buf = io.BytesIO()
            np.save(buf, rows, allow_pickle=False)
            # record first, rows second: a shard whose .npy exists always has its record
            _write_json(_shard_meta_path(out, k), {
                "shard": k, "start": start, "stop": stop, "dim": rows.shape[1] or None, "failed": failed,
                "stats": stats, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                "image_list_sha256": manifest["image_list_sha256"], "seconds": round(time.perf_counter() - t0, 3)})
            _atomic_write_bytes(shard_path(out, k), lambda f: f.write(buf.getvalue()))
            if failed:
                bar.write(f"shard {k}: {len(failed)} image(s) failed, e.g. {failed[0]['path']}: {failed[0]['reason']}")
    return todo


def finalize_job(out_dir) -> dict:
    """Check every shard, write ``failed.json`` and mark the manifest complete; returns the manifest.

    Raises:
        ValueError: shards are missing or unusable (the message lists them): rerun the extraction,
            it resumes.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    _, dim = _checked_shards(out, manifest)
    failed = failed_images(out)
    _write_json(out / _FAILED, failed)
    manifest.update(dim=dim, status="complete", n_failed=len(failed))
    _write_json(out / _MANIFEST, manifest)
    for tmp in out.glob(".*.tmp"):  # leftovers of killed writers; a live writer's file is left alone
        if _dead_writer(tmp):
            tmp.unlink(missing_ok=True)
    return manifest


def _checked_shards(out: Path, manifest: dict) -> tuple[list[np.ndarray], int | None]:
    """Every shard's rows, checked (:func:`_check_shard`), and their dimension; ValueError listing the bad ones."""
    paths = _job_paths(out)
    shards, dim, bad = [], None, {}
    for k in range(manifest["n_shards"]):
        rows, why = _check_shard(out, manifest, k, dim, paths)
        if rows is None:
            bad[k] = why
        elif rows.shape[1]:
            dim = rows.shape[1]
        shards.append(rows)
    if bad:
        raise ValueError(_incomplete_message(out, manifest, bad))
    return shards, dim


def _incomplete_message(out: Path, manifest: dict, bad: dict) -> str:
    missing = [k for k, why in bad.items() if why == "missing"]
    invalid = {k: why for k, why in bad.items() if why != "missing"}
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing shard(s): {_list_names(missing)}")
    if invalid:
        parts.append(f"{len(invalid)} unusable shard(s): " +
                     "; ".join(f"{shard_path(out, k).name} ({why})" for k, why in list(invalid.items())[:5]))
    return (f"{out}: extraction is incomplete ({manifest['n_shards']} shards of {manifest['shard_size']} images), "
            + ", ".join(parts) + ". Rerun the same extraction (cached_features or extract_features with the same "
            "images and extractor, or the same sglib command): it recomputes exactly these shards.")


def _list_names(ks: list[int], most: int = 10) -> str:
    names = ", ".join(f"shard_{k:05d}.npy" for k in ks[:most])
    return names + (f" and {len(ks) - most} more" if len(ks) > most else "")


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


# ----------------------------------------------------------------------------- reading

def failed_images(out_dir) -> list[dict]:
    """Images whose rows are NaN: ``[{"index", "path", "reason"}, ...]`` by index (also for unfinished jobs)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    failed = []
    for k in range(manifest["n_shards"]):
        if shard_path(out, k).exists() and _shard_meta_path(out, k).exists():
            failed.extend(_read_json(_shard_meta_path(out, k)).get("failed", []))
    return sorted(failed, key=lambda f: f["index"])


def load_features(out_dir, on_failed: str = "raise") -> np.ndarray:
    """The ``(N, D)`` float32 descriptors of a complete job, row i for image i.

    Every shard is checked before it is used: its sha256 against its record, and each image's size and
    modification time against those it had when it was read.

    Args:
        on_failed: ``"raise"``: ``ValueError`` listing the failed images, if any; ``"warn"``: return
            them as NaN rows, with a warning that names them (the caller must handle NaN).

    Raises:
        ValueError: the job is incomplete, a shard changed or its images did (the message lists them;
            :func:`extract_features` or :func:`cached_features` with the same images and extractor
            recomputes exactly those shards), or images failed and ``on_failed="raise"``.
    """
    if on_failed not in ("raise", "warn"):
        raise ValueError(f"on_failed must be 'raise' or 'warn', got {on_failed!r}")
    out = Path(out_dir)
    manifest = read_manifest(out)
    shards, dim = _checked_shards(out, manifest)
    if manifest.get("status") != "complete":
        manifest = finalize_job(out)  # every shard is there: a worker stopped before finalising
    feats = np.full((manifest["n_images"], dim or 0), np.nan, np.float32)
    for k, rows in enumerate(shards):
        if rows.shape[1]:
            start, stop = _shard_range(manifest, k)
            feats[start:stop] = rows
    failed = failed_images(out)
    if failed:
        listing = "; ".join(f"#{f['index']} {f['path']} ({f['reason']})" for f in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        msg = (f"{len(failed)} of {manifest['n_images']} images failed to extract: {listing}{more} "
               f"(all listed in {out / _FAILED}).")
        if on_failed == "raise":
            raise ValueError(msg + " Fix or remove them and extract again with retry_failed=True "
                             "(the CLI: --retry-failed), or pass on_failed='warn' to get their rows as NaN.")
        warnings.warn(msg + " Their rows are NaN.", stacklevel=2)
    return feats


# ----------------------------------------------------------------------------- cache

def cache_key(images: Sequence, extractor: Extractor, bboxes: Sequence | None = None) -> str:
    """Hex key of (extractor identity, image list): the cache folder's name."""
    blob = _canonical_json({"format": FORMAT, "identity": extractor.key_identity,
                            "images": image_list_sha256(images, bboxes)})
    return _sha256_text(blob)[:24]


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
    if (out / _MANIFEST).exists():
        try:
            manifest = read_manifest(out)
            _job_paths(out)
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
                                 max_side < 16):
        raise ValueError(f"max_side: expected an integer >= 16 or None, got {max_side!r}")
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


__all__ = ["Extractor", "build_extractor", "model_key", "image_fingerprint", "split_settings", "dataset_features", "prepare_job", "run_shards", "finalize_job",
           "extract_features", "load_features", "failed_images", "job_status", "read_manifest", "cached_features",
           "cache_key", "image_list_sha256", "read_image_list", "write_image_list", "shard_path",
           "FORMAT", "DEFAULT_SHARD_SIZE"]
