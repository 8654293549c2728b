"""The whitening fitted on a bundled benchmark's training split: the learned head of an ImageNet backbone.

A backbone without a trained head (EfficientNet-Lite0, MobileNetV2) gets the supervised (Lw)
whitening of its GeM vectors, fitted on the synthetic-views training split, whose photos no test
image shares: the part CVNet's trained 2048 x 2048 layer plays in the paper. ``make demo``, the
notebooks, the stability and training studies use it; the features are cached like any extraction.

Example::

    model = load_backbone("efficientnet_lite0")
    model.head = fit_training_whitening(model, "data", "data/cache")
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from ..method.descriptors import DescriptorSettings
from ..models.whitening import Whitening, fit_learned_whitening
from ..scale.extract import build_extractor, cache_key, cached_features
from ..scale.shards import image_fingerprint

WHITENING_SETTINGS = DescriptorSettings(scales=(1.0,), gem_p=3.0, regional=False)
# the training split's pair differences span at most (images - classes) directions, fewer than the
# descriptor size: shrinking their covariance towards the identity keeps the whitening well posed
WHITENING_SHRINKAGE = 0.3
TRAIN_SPLIT = "synthetic_views_train"


def training_images(data_root, split: str = TRAIN_SPLIT) -> tuple[list[str], np.ndarray]:
    """Paths and integer labels of a synthetic-views training split (disjoint from its benchmark)."""
    folder = Path(data_root) / "datasets" / split
    with open(folder / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{folder / 'train.csv'} lists no training images")
    names = sorted({r["label"] for r in rows})
    return [str(folder / "jpg" / f"{r['image']}.jpg") for r in rows], np.array([names.index(r["label"]) for r in rows])


def fit_training_whitening(model, data_root, cache_root, progress: bool = True, split: str = TRAIN_SPLIT,
                           max_side: int | None = None) -> Whitening:
    """Supervised (Lw) whitening of ``model``'s backbone, fitted on the training split's GeM (p = 3) vectors.

    Views of the same training scene are the matching pairs. Plays the part of CVNet's trained
    2048 x 2048 layer for a backbone that has none. The vectors are pooled without any head, whatever
    ``model.head`` holds, so fitting twice gives the same whitening. The shrinkage
    (:data:`WHITENING_SHRINKAGE`) makes the rank-deficient intra-pair covariance invertible; without it,
    directions the few training pairs never vary along are amplified without bound.

    ``max_side`` downscales the training images as the test images are (None: as stored).

    Returns:
        a :class:`~sglib.models.whitening.Whitening` whose ``source`` names its inputs (features'
        cache key, the training images' sizes and times, the labels) and parameters.
    """
    if not hasattr(model, "with_head"):
        raise ValueError(f"{type(model).__name__} has its own trained head: the training-split whitening is for "
                         "ImageNet backbones")
    paths, labels = training_images(data_root, split)
    extractor = build_extractor(model.with_head(None), {"gem3": WHITENING_SETTINGS}, max_side=max_side)
    feats = cached_features(cache_root, paths, extractor, progress=progress)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    pairs = np.stack([i[same], j[same]], axis=1)
    whitening = fit_learned_whitening(feats, pairs, shrinkage=WHITENING_SHRINKAGE)
    inputs = hashlib.sha256(json.dumps([image_fingerprint(p) for p in paths]).encode()
                            + labels.tobytes()).hexdigest()[:24]
    whitening.source = (f"lw shrinkage={WHITENING_SHRINKAGE} features={cache_key(paths, extractor)} "
                        f"images+labels={inputs}")
    return whitening


__all__ = ["WHITENING_SETTINGS", "WHITENING_SHRINKAGE", "TRAIN_SPLIT", "training_images", "fit_training_whitening"]
