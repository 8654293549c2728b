"""Pairwise geometric verification: tentative matches, then the RANSAC homography inlier count.

SIFT pairs are matched with OpenCV's exact brute-force L2 matcher (deterministic, unlike FLANN's randomised
trees) and Lowe's ratio test; the inlier count is that of ``cv2.findHomography(..., cv2.RANSAC)``, with
OpenCV's RNG reseeded before every estimation so the count is identical across runs and thread counts.

Example:
    >>> import numpy as np, cv2
    >>> from sglib.local.features import sift_features
    >>> rng = np.random.default_rng(0)
    >>> img = cv2.GaussianBlur(rng.integers(0, 256, (300, 400), dtype=np.uint8), (0, 0), 2)
    >>> H = np.array([[0.9, 0.1, 20], [-0.1, 0.9, 30], [0, 0, 1]])
    >>> warped = cv2.warpPerspective(img, H, (400, 300))
    >>> sift_inlier_count(sift_features(img, 500), sift_features(warped, 500)) > 50
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .features import LocalFeatures

MIN_HOMOGRAPHY_MATCHES = 4  # a homography has 8 degrees of freedom: 4 point pairs


@dataclass(frozen=True)
class VerificationSettings:
    """Matching and RANSAC settings.

    Args:
        ratio: Lowe's ratio test: keep a match when nearest / second-nearest descriptor distance < ratio.
            0.8 is the value Lowe suggests (D. Lowe, "Distinctive Image Features from Scale-Invariant
            Keypoints", IJCV 2004, Sec. 7.1: it removes 90% of false matches and under 5% of correct ones).
            Used for SIFT only; LightGlue decides its own matches.
        ransac_px: RANSAC reprojection threshold in pixels of the processed images (longer side <=
            ``FeatureSettings.max_side``, default 1024). 5 px is ~0.5% of a 1024 px side: loose enough for
            keypoint localisation error at coarse SIFT scales and non-planar scenes, tight enough that
            unrelated pairs rarely get more than a handful of inliers.
        confidence, max_iters: passed to ``cv2.findHomography``.
        seed: OpenCV RNG seed, set before every estimation.
    """

    ratio: float = 0.8
    ransac_px: float = 5.0
    confidence: float = 0.999
    max_iters: int = 2000
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise ValueError(f"VerificationSettings.ratio must be in (0, 1], got {self.ratio!r}")
        if not self.ransac_px > 0:
            raise ValueError(f"VerificationSettings.ransac_px must be > 0 pixels, got {self.ransac_px!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"VerificationSettings.confidence must be in (0, 1), got {self.confidence!r}")
        for name, minimum in (("max_iters", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"VerificationSettings.{name} must be an integer >= {minimum}, got {value!r}")


def ratio_test_matches(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """Lowe ratio-test matches from ``desc_a`` (n, d) to ``desc_b`` (m, d): (k, 2) int64 index pairs (i in a, j in b).

    Exact L2 nearest neighbours (``cv2.BFMatcher``); a match is kept when its distance is < ``ratio`` times
    the second-nearest one. Fewer than 2 descriptors in ``desc_b`` gives no matches (no second neighbour).
    """
    if len(desc_a) == 0 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(np.asarray(desc_a, np.float32), np.asarray(desc_b, np.float32), k=2)
    pairs = [(m.queryIdx, m.trainIdx) for m, n in knn if m.distance < ratio * n.distance]
    return np.array(pairs, np.int64).reshape(-1, 2)


def ransac_inlier_count(xy_a: np.ndarray, xy_b: np.ndarray, matches: np.ndarray,
                        settings: VerificationSettings = VerificationSettings()) -> int:
    """Inliers of the RANSAC homography mapping ``xy_a[matches[:, 0]]`` to ``xy_b[matches[:, 1]]``.

    ``xy_a`` (n, 2), ``xy_b`` (m, 2) pixel positions, ``matches`` (k, 2) index pairs. Returns 0 with fewer than
    4 matches or when OpenCV finds no model (e.g. all points collinear).
    """
    if len(matches) < MIN_HOMOGRAPHY_MATCHES:
        return 0
    src = np.asarray(xy_a, np.float32)[matches[:, 0]]
    dst = np.asarray(xy_b, np.float32)[matches[:, 1]]
    cv2.setRNGSeed(int(settings.seed))  # OpenCV's RNG is per thread and shared: reseed for every estimation
    model, mask = cv2.findHomography(src, dst, cv2.RANSAC, float(settings.ransac_px),
                                     maxIters=int(settings.max_iters), confidence=float(settings.confidence))
    if model is None or mask is None:
        return 0
    return int(mask.sum())


def sift_inlier_count(a: LocalFeatures, b: LocalFeatures,
                      settings: VerificationSettings = VerificationSettings()) -> int:
    """Ratio-test matches of two SIFT feature sets, then their RANSAC homography inlier count (int >= 0)."""
    return ransac_inlier_count(a.xy, b.xy, ratio_test_matches(a.desc, b.desc, settings.ratio), settings)
