"""The shard store of descriptor extraction: one folder per job, written so that nothing is lost or served stale.

A job turns an image list (paths, optional query boxes) into an ``(N, D)`` float32 matrix, row ``i``
for image ``i``, kept as fixed-size shards so that a killed run resumes where it stopped and several
processes (or machines sharing a file system) can split the work. This module reads and writes the
folder; :mod:`sglib.scale.extract` computes the rows.

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
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..runtime import process_runs

FORMAT = "sglib-features/2"   # 2: per-image sizes and times, shard checksums
DTYPE = "float32"
DEFAULT_SHARD_SIZE = 500
_MANIFEST, _IMAGES, _FAILED = "manifest.json", "images.txt", "failed.json"
# Manifest fields a resumed job must match; the others (dim, status) are filled in by finalize_job.
_JOB_FIELDS = ("format", "image_list_sha256", "n_images", "shard_size", "n_shards", "dtype", "identity")


# ----------------------------------------------------------------------------- image lists, hashing

def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _checked_image_list(images, bboxes) -> tuple[list[str], list]:
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
    paths, boxes = _checked_image_list(images, bboxes)
    return sha256_text("\n".join(_image_lines(paths, boxes)) + "\n")


def write_image_list(path, images: Sequence, bboxes: Sequence | None = None) -> None:
    """Write an image list file: one image a line, ``PATH`` or ``PATH<TAB>x1 y1 x2 y2``."""
    paths, boxes = _checked_image_list(images, bboxes)
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
    return len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit() and not process_runs(int(parts[2]))


def _write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def shard_path(out_dir, k: int) -> Path:
    """``OUT/shard_{k:05d}.npy``; its failure record is the same name with ``.json``."""
    return Path(out_dir) / f"shard_{k:05d}.npy"


def _shard_record_file(out_dir, k: int) -> Path:
    return Path(out_dir) / f"shard_{k:05d}.json"


def shard_range(manifest: dict, k: int) -> tuple[int, int]:
    start = k * manifest["shard_size"]
    return start, min(start + manifest["shard_size"], manifest["n_images"])


# ----------------------------------------------------------------------------- job folder

def _job_manifest(paths, boxes, identity: dict, shard_size: int) -> dict:
    n = len(paths)
    return {"format": FORMAT, "image_list_sha256": sha256_text("\n".join(_image_lines(paths, boxes)) + "\n"),
            "n_images": n, "shard_size": shard_size, "n_shards": -(-n // shard_size), "dtype": DTYPE,
            "identity": json.loads(canonical_json(identity)), "dim": None, "status": "running"}


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


def prepare_job(out_dir, images: Sequence, extractor, bboxes: Sequence | None = None, *,
                shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False) -> dict:
    """Create the job folder, or check that the one there is this same job (then it resumes).

    ``extractor``: the :class:`sglib.scale.extract.Extractor` (its ``key_identity`` is recorded).

    Raises:
        ValueError: the folder holds another job (other images, settings, weights or shard size);
            the message says what differs. Use a new folder or ``overwrite=True`` (which deletes the
            job files there, and only those).
    """
    paths, boxes = _checked_image_list(images, bboxes)
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
    text = canonical_json(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:200] + "..."


def image_fingerprint(path) -> list | None:
    """What identifies an image file's content for the cache; None when it cannot be read.

    ``$SGLIB_CACHE_VERIFY`` chooses: ``stat`` (default) ``[size, mtime_ns, ctime_ns, inode]``, cheap: a
    user can restore a file's size and modification time (``os.utime``) after editing it, but not its
    change time, and a file replaced by another has another inode; ``sha256`` ``[size, "sha256:<hex>"]``
    reads every image on every cache read and also survives copying the images and the cache elsewhere.
    A record made in one mode never matches the other, so switching recomputes (never serves stale rows).
    """
    mode = os.environ.get("SGLIB_CACHE_VERIFY", "stat")
    if mode not in ("stat", "sha256"):
        raise ValueError(f"SGLIB_CACHE_VERIFY: expected 'stat' or 'sha256', got {mode!r}")
    try:
        st = os.stat(path)
        if mode == "stat":
            return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
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
    npy, record_file = shard_path(out, k), _shard_record_file(out, k)
    if not npy.exists():
        return None, "missing"
    start, stop = shard_range(manifest, k)
    try:
        meta = _read_json(record_file)
        blob = npy.read_bytes()
        rows = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(meta, dict):
            raise ValueError(f"{record_file.name} is not a JSON object")
    except (OSError, ValueError) as exc:  # truncated / unreadable file
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if ((meta.get("start"), meta.get("stop")) != (start, stop) or meta.get("image_list_sha256") !=
            manifest["image_list_sha256"]):
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


# ----------------------------------------------------------------------------- reading

def failed_images(out_dir) -> list[dict]:
    """Images whose rows are NaN: ``[{"index", "path", "reason"}, ...]`` by index (also for unfinished jobs)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    failed = []
    for k in range(manifest["n_shards"]):
        if shard_path(out, k).exists() and _shard_record_file(out, k).exists():
            failed.extend(_read_json(_shard_record_file(out, k)).get("failed", []))
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
            start, stop = shard_range(manifest, k)
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



# ----------------------------------------------------------------------------- what a run computes

def pending_shards(out_dir, images: Sequence, identity: dict, bboxes: Sequence | None = None, *, rank: int = 0,
                   world_size: int = 1, retry_failed: bool = False) -> tuple[dict, list, list, range, list[int], int | None]:
    """``(manifest, paths, boxes, mine, todo, dim)`` of a prepared job for one worker: its shards
    (``k % world_size == rank``), those of them still to compute, and the descriptor size of the kept ones
    (None when none has a row).

    Shards on disk that pass the checks (shape, dtype, finite rows, NaN exactly on failed rows,
    matching record) are kept; ``retry_failed=True`` also lists shards that have failed images.
    ``identity`` is the extractor's ``key_identity``.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    paths, boxes = _checked_image_list(images, bboxes)
    want = _job_manifest(paths, boxes, identity, manifest["shard_size"])
    if (want["image_list_sha256"], want["identity"]) != (manifest["image_list_sha256"], manifest["identity"]):
        raise ValueError(f"{out} holds another job: call prepare_job with these images and extractor first")
    if not (0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    mine = range(rank, manifest["n_shards"], world_size)
    todo, dim = [], None
    for k in mine:
        rows, why = _check_shard(out, manifest, k, paths=paths)
        if rows is not None and not (retry_failed and _read_json(_shard_record_file(out, k))["failed"]):
            dim = dim or (rows.shape[1] or None)
            continue
        if why not in ("", "missing"):
            warnings.warn(f"{shard_path(out, k)} is unusable ({why}); recomputing it")
        todo.append(k)
    return manifest, paths, boxes, mine, todo, dim


def write_shard(out_dir, manifest: dict, k: int, rows: np.ndarray, failed: list, stats: list,
                seconds: float) -> None:
    """Write shard ``k``: its record (failures, image fingerprints, checksum) first, then its rows, each
    atomically, so a shard whose ``.npy`` exists always has its record."""
    buf = io.BytesIO()
    np.save(buf, rows, allow_pickle=False)
    start, stop = shard_range(manifest, k)
    _write_json(_shard_record_file(out_dir, k), {
        "shard": k, "start": start, "stop": stop, "dim": rows.shape[1] or None, "failed": failed,
        "stats": stats, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "image_list_sha256": manifest["image_list_sha256"], "seconds": round(seconds, 3)})
    _atomic_write_bytes(shard_path(out_dir, k), lambda f: f.write(buf.getvalue()))


def has_job(out_dir) -> bool:
    """Whether ``out_dir`` holds a job (a manifest)."""
    return (Path(out_dir) / _MANIFEST).exists()


def read_job(out_dir) -> dict:
    """The manifest, once it and the job's image list have been read without error (ValueError otherwise)."""
    manifest = read_manifest(out_dir)
    _job_paths(Path(out_dir))
    return manifest


__all__ = ["FORMAT", "DEFAULT_SHARD_SIZE", "image_list_sha256", "write_image_list", "read_image_list", "prepare_job",
           "read_manifest", "shard_path", "image_fingerprint", "job_status", "pending_shards", "write_shard",
           "finalize_job", "failed_images", "load_features"]
