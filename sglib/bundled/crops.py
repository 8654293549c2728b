"""Real distractor images: deterministic crops of the manifest photos that no benchmark image shows.

:func:`distractor_photo_pool` picks the photos: excluded by default are every *landmark* photo (what
the queries look for), every *background* photo (context and occluders of every benchmark image,
queries included), and every photo that shares a real-scene ``group`` with an excluded one. What
remains are the benchmark's *distractor* photos (already negatives in its database) and its
*training* photos (the whitening was fitted on views of these), plus their group mates.
:func:`crop_boxes` lays the crops out (positions x scales x horizontal flip) and
:func:`write_distractor_crops` writes them as JPEGs, so that any extractor, sharded or not, reads
them like other images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

CROP_SCALES = (1.0, 0.7, 0.5, 0.35)   # crop side / photo side
CROP_FORMAT = 1
EXCLUDED_ROLES = ("landmarks", "backgrounds")


def distractor_photo_pool(photos: Sequence, benchmark_dir, exclude_roles: Sequence[str] = EXCLUDED_ROLES):
    """The photos whose crops may serve as distractors for a ``synthetic_views`` benchmark.

    Args:
        photos: :class:`sglib.bundled.photos.Photo` list (``sglib.bundled.photos.fetch_all``).
        benchmark_dir: the benchmark folder holding ``meta_synthetic_views.json`` (its ``roles``).
        exclude_roles: roles whose photos are left out (default landmarks and backgrounds); photos
            sharing a ``group`` (same real scene) with an excluded photo are left out too.

    Returns:
        ``(pool, excluded)``: pool = photos kept, sorted by key; excluded = ``{key: reason}``.
    """
    meta_file = Path(benchmark_dir) / "meta_synthetic_views.json"
    if not meta_file.is_file():
        raise ValueError(f"benchmark metadata not found: {meta_file} (build it with sglib.bundled.build_all)")
    try:
        roles = json.loads(meta_file.read_text())["roles"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_file}: no readable 'roles' ({exc})") from exc
    unknown = [r for r in exclude_roles if r not in roles]
    if unknown:
        raise ValueError(f"exclude_roles {unknown} are not roles of {meta_file} (has {sorted(roles)})")
    excluded = {key: f"benchmark {role[:-1]}" for role in exclude_roles for key in roles[role]}
    known = {p.key for p in photos}
    if not set(excluded) <= known:
        missing = sorted(set(excluded) - known)[:3]
        raise ValueError(f"photos lack benchmark photo(s) {missing}: the photo list and the benchmark differ")
    groups = {p.group: p.key for p in photos if p.key in excluded and p.group is not None}
    for p in photos:
        if p.key not in excluded and p.group in groups:
            excluded[p.key] = f"same scene ({p.group}) as {groups[p.group]}"
    pool = sorted((p for p in photos if p.key not in excluded), key=lambda p: p.key)
    return pool, excluded


def crop_boxes(width: int, height: int, scales: Sequence[float] = CROP_SCALES, flips: bool = True) -> list[tuple]:
    """Deterministic crop boxes of one photo: every scale on a grid with about 50 % overlap.

    A crop at scale ``s`` is ``round(s * width) x round(s * height)``; its top-left corners run over
    ``ceil(2 / s) - 1`` evenly spaced positions per axis (1 at s = 1, 2 at 0.7, 3 at 0.5, 5 at 0.35).

    Returns:
        ``[(x1, y1, x2, y2, flipped), ...]`` integer pixel boxes (x2, y2 exclusive), scales in the
        given order, then rows, then columns; with ``flips`` each box twice (unflipped first).

    Example:
        >>> crop_boxes(100, 50, scales=(1.0, 0.5), flips=False)[:2]
        [(0, 0, 100, 50, False), (0, 0, 50, 25, False)]
    """
    if width < 1 or height < 1:
        raise ValueError(f"crop_boxes: photo size must be positive, got {width} x {height}")
    if not scales or any(not (0 < s <= 1) for s in scales):
        raise ValueError(f"crop_boxes: scales must be in (0, 1], got {tuple(scales)}")
    boxes = []
    for s in scales:
        w, h = max(1, round(s * width)), max(1, round(s * height))
        n = max(1, math.ceil(2 / s - 1e-9) - 1)
        for y in np.linspace(0, height - h, n).round().astype(int):
            for x in np.linspace(0, width - w, n).round().astype(int):
                for flip in ((False, True) if flips else (False,)):
                    boxes.append((int(x), int(y), int(x) + w, int(y) + h, flip))
    return boxes


@dataclasses.dataclass(frozen=True)
class DistractorCrops:
    """JPEG crops on disk: ``paths[i]`` is crop i; ``records[i]`` says where it comes from
    (``{"photo": key, "sha256": photo sha256, "box": [x1, y1, x2, y2], "flipped": bool}``)."""

    folder: Path
    paths: list
    records: list

    def __len__(self) -> int:
        return len(self.paths)


def _crop_plan(photos, scales, flips, max_crops, seed) -> list[dict]:
    plan = []
    for p in photos:
        with Image.open(p.path) as im:
            size = im.size
        for x1, y1, x2, y2, flip in crop_boxes(*size, scales=scales, flips=flips):
            plan.append({"photo": p.key, "sha256": p.sha256, "box": [x1, y1, x2, y2], "flipped": flip})
    if max_crops is not None and len(plan) > max_crops:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(plan), max_crops, replace=False))
        plan = [plan[i] for i in keep]
    return plan


def write_distractor_crops(photos: Sequence, out_root, scales: Sequence[float] = CROP_SCALES, flips: bool = True,
                           max_crops: int | None = None, max_side: int = 384, quality: int = 90, seed: int = 0,
                           progress: bool = True) -> DistractorCrops:
    """Cut every :func:`crop_boxes` crop of ``photos`` and save it as a JPEG (long side <= ``max_side``).

    Args:
        photos: real photos to crop (usually :func:`distractor_photo_pool`'s pool).
        out_root: parent folder; the crops go to ``out_root/crops_<key>/`` where the key hashes the
            photos' sha256 and every argument, so another setting never reuses stale files.
        max_crops: keep a seeded random subset of this many crops (None: all).
        max_side: the benchmarks' images are 384 px long; crops are downscaled (never upscaled) to it.

    Returns:
        :class:`DistractorCrops`. A folder completed earlier (``crops.json`` present) is reused as is;
        an interrupted one is completed (existing JPEGs are kept).
    """
    if not photos:
        raise ValueError("write_distractor_crops: no photos to crop")
    if max_crops is not None and max_crops < 1:
        raise ValueError(f"max_crops must be >= 1 or None, got {max_crops}")
    if max_side < 16 or not 1 <= quality <= 100:
        raise ValueError(f"need max_side >= 16 and quality in [1, 100], got {max_side}, {quality}")
    info = {"format": CROP_FORMAT, "photos": sorted(p.sha256 for p in photos), "scales": [float(s) for s in scales],
            "flips": bool(flips), "max_crops": max_crops, "max_side": int(max_side), "quality": int(quality),
            "seed": int(seed)}
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(out_root) / f"crops_{key}"
    index = folder / "crops.json"
    if index.is_file():
        records = json.loads(index.read_text())["crops"]
        paths = [folder / r["file"] for r in records]
        if all(p.is_file() for p in paths):
            return DistractorCrops(folder, paths, records)
    folder.mkdir(parents=True, exist_ok=True)
    plan = _crop_plan(sorted(photos, key=lambda p: p.key), scales, flips, max_crops, seed)
    by_key = {p.key: p for p in photos}
    opened = (None, None)
    for i, rec in enumerate(tqdm(plan, desc="distractor crops", unit="crop", disable=not progress)):
        rec["file"] = f"crop_{i:06d}_{re.sub(r'[^A-Za-z0-9]+', '_', rec['photo'])}.jpg"
        dest = folder / rec["file"]
        if dest.is_file():
            continue
        if opened[0] != rec["photo"]:
            with Image.open(by_key[rec["photo"]].path) as im:
                opened = (rec["photo"], im.convert("RGB"))
        crop = opened[1].crop(tuple(rec["box"]))
        if rec["flipped"]:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crop.thumbnail((max_side, max_side), Image.BILINEAR)
        tmp = dest.with_name(f".{dest.name}.tmp")
        crop.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, dest)
    tmp = index.with_name(".crops.json.tmp")
    tmp.write_text(json.dumps({"info": info, "crops": plan}))
    os.replace(tmp, index)
    return DistractorCrops(folder, [folder / r["file"] for r in plan], plan)


__all__ = ["distractor_photo_pool", "crop_boxes", "DistractorCrops", "write_distractor_crops", "CROP_SCALES",
           "EXCLUDED_ROLES"]
