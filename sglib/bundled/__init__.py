"""The bundled benchmarks: real photos of pinned packages (:mod:`~sglib.bundled.photos`, checked
against ``manifest.json``), the benchmarks built from them in the revisitop layout, and distractor
crops (:mod:`~sglib.bundled.crops`).

* :func:`build_multiview_real` -- real photos of the same scenes (``multiview_real``);
* :func:`build_synthetic_views` -- SYNTHETIC views of real photos (``synthetic_views`` + ``synthetic_views_train``);
* :func:`build_all` -- fetch the photos and build both (idempotent).

Example::

    paths = build_all("data")   # {'multiview_real': Path('data/datasets/multiview_real'), 'synthetic_views': ...}
"""
from __future__ import annotations

from pathlib import Path

from .photos import fetch_all, manifest_digest
from .multiview import build_multiview_real
from .synthetic_views import ViewSettings, build_synthetic_views

__all__ = ["build_all", "build_multiview_real", "build_synthetic_views", "ViewSettings"]


def build_all(data_root, seed: int = 0, allow_mismatch: bool = False, progress: bool = True,
              **synthetic_kwargs) -> dict:
    """Fetch photos into ``data_root/photo_cache`` and build both benchmarks under ``data_root/datasets``.

    Skips whatever is already built with the same parameters and manifest. ``synthetic_kwargs`` go to
    :func:`build_synthetic_views` (e.g. ``views_per_landmark=40`` for a larger set).

    Returns ``{'multiview_real': Path, 'synthetic_views': Path}``.
    """
    data_root = Path(data_root)
    photos = fetch_all(data_root / "photo_cache", allow_mismatch=allow_mismatch)
    digest = manifest_digest()
    datasets = data_root / "datasets"
    return {"multiview_real": build_multiview_real(datasets, photos, manifest_sha256=digest),
            "synthetic_views": build_synthetic_views(datasets, photos, seed=seed, manifest_sha256=digest,
                                                     progress=progress, **synthetic_kwargs)}
