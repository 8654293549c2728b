"""Image files -> network input tensors, as the reference does it (spec section 1).

CVNet / pycls convention: BGR channel order, values / 255, per-channel ``(x - mean) / std`` with
mean ``(0.406, 0.456, 0.485)`` and std ``(0.225, 0.224, 0.229)`` listed in BGR order; full
resolution; queries cropped to ``image[int(y1):int(y2), int(x1):int(x2)]``.

Hostile or unusual files (see :func:`load_image` and :func:`to_network_input`): every PIL mode is
turned into 8-bit RGB by a documented rule, files claiming more than :data:`MAX_PIXELS` pixels are
refused from their header before decoding, and images smaller than ``min_side`` are upsampled.
"""
from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .._checks import check_box

MAX_PIXELS = 100_000_000
"""Default pixel budget (width * height) of :func:`load_image`; the environment variable
``SGLIB_MAX_PIXELS`` overrides it, the ``max_pixels`` argument overrides both."""

MIN_SIDE = 32
"""Default shorter side of :func:`to_network_input`: a network of stride 32 needs at least 32 px
for one output cell."""

MIN_MAX_SIDE = 16
"""The smallest downscaling target (``max_side``) accepted anywhere: CLI, build_extractor, here."""

MAX_ASPECT = 16
"""When a tiny image is upsampled, its long side grows to at most ``MAX_ASPECT * min_side`` px
(or stays as it was, if already longer): a 1 x 5000 sliver becomes 32 x 5000, not 32 x 160000."""

# PIL's check of its own pixel limit runs inside Image.open and reports through the process-wide
# warnings filters; the lock keeps concurrent loader threads from interleaving their filter edits.
_OPEN_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or too large."""


@dataclass(frozen=True)
class Normalization:
    """Channel order and per-channel statistics (listed in that channel order) of a network's input."""

    bgr: bool
    mean: tuple
    std: tuple


CVNET = Normalization(bgr=True, mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229))
IMAGENET = Normalization(bgr=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _pixel_budget(max_pixels) -> int:
    """``max_pixels`` if given, else ``$SGLIB_MAX_PIXELS``, else :data:`MAX_PIXELS`; checked to be >= 1."""
    source = "max_pixels"
    if max_pixels is None:
        source, max_pixels = "SGLIB_MAX_PIXELS", os.environ.get("SGLIB_MAX_PIXELS", MAX_PIXELS)
    try:
        value = int(max_pixels)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or isinstance(max_pixels, bool):
        raise ValueError(f"{source} must be a positive integer number of pixels, got {max_pixels!r}")
    return value


def _grey_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One-channel (H, W) 16/32-bit integer or float array -> (H, W) uint8 in 0..255.

    Rules: 16-bit modes ("I;16*") are divided by 257 (65535 -> 255). 32-bit integer ("I", which
    PIL also uses for some 16-bit files) is read as 16-bit data when its maximum is <= 65535, else
    scaled by its maximum. Float ("F"): values are taken as [0, 1] when the maximum is <= 1, else
    scaled by the maximum. Negative values become 0, NaN and infinities become 0.
    """
    a = a.astype(np.float64)
    a[~np.isfinite(a)] = 0.0
    a = np.maximum(a, 0.0)
    top = float(a.max()) if a.size else 0.0
    if mode == "F":
        scale = 255.0 if top <= 1.0 else 255.0 / top
    elif mode == "I" and top > 65535:
        scale = 255.0 / top
    else:  # 16-bit integer data
        scale = 1.0 / 257.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8 RGB.

    8-bit colour and grey modes ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV") use PIL's
    conversion. Alpha ("RGBA", "LA", "PA", "La", "RGBa") is dropped, not composited: the stored
    colour of transparent pixels is kept (OpenCV's ``imread`` with its default flag does the same).
    16-bit, 32-bit integer and float grey modes follow :func:`_grey_to_uint8`.
    """
    mode = im.mode
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        grey = _grey_to_uint8(np.asarray(im), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "La":  # premultiplied grey + alpha: PIL converts it to RGB only through "LA"
        im = im.convert("LA")
    return np.array(im.convert("RGB"))


def load_image(path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    Args:
        path: image file; any mode PIL reads is converted to 8-bit RGB (see :func:`_to_rgb`:
            16-bit divided by 257, float by its range, alpha dropped).
        max_pixels: refuse images with more than this many pixels (width * height), checked from
            the file header before decoding. Default: ``$SGLIB_MAX_PIXELS`` or :data:`MAX_PIXELS`.
            PIL's own warning threshold is superseded by this budget, but PIL still refuses files
            over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 M pixels): raise that too for larger files.

    Raises:
        ImageReadError: the file is missing, not an image, truncated, or over the pixel budget.
        ValueError: ``max_pixels`` (or ``$SGLIB_MAX_PIXELS``) is not a positive integer.
    """
    budget = _pixel_budget(max_pixels)
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget below decides
            im = Image.open(path)  # reads the header only
        with im:
            width, height = im.size
            if width * height > budget:
                raise ImageReadError(f"image {path} is {width}x{height} = {width * height} pixels, more than "
                                     f"the limit of {budget} pixels (a possible decompression bomb); pass a "
                                     f"larger max_pixels or set SGLIB_MAX_PIXELS to read it")
            return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image {path} refused by PIL as a possible decompression bomb: {exc} "
                             f"(sglib's limit: {budget} pixels; PIL refuses more than 2 * "
                             f"PIL.Image.MAX_IMAGE_PIXELS = {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        raise ImageReadError(f"could not decode image {path}: {exc}") from exc
    except ImageReadError:
        raise
    except ValueError as exc:  # e.g. a mode PIL can open but not convert
        raise ImageReadError(f"could not convert image {path} to RGB: {exc}") from exc


def crop_to_box(image: np.ndarray, bbx) -> np.ndarray:
    """Crop (H, W, C) to ``bbx = (x1, y1, x2, y2)`` with the reference's truncation ``int()``."""
    if bbx is None:
        return image
    x1, y1, x2, y2 = (int(v) for v in check_box(bbx, "bbx"))
    crop = image[max(y1, 0):y2, max(x1, 0):x2]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"bbx {tuple(bbx)} selects an empty region of a {image.shape[1]}x{image.shape[0]} image")
    return crop


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8, bilinear (PIL, antialiased when shrinking)."""
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _raise_short_side(image: np.ndarray, min_side: int, max_side: int | None) -> np.ndarray:
    """Upsample (H, W, 3) so its shorter side is ``min_side`` px (bilinear), keeping the aspect ratio.

    The long side grows to at most ``max(long side, MAX_ASPECT * min_side)`` px and never beyond
    ``max_side``; where that bound cuts in, only the short side is stretched. When ``max_side`` is
    below ``min_side``, ``max_side`` wins (the shorter side is raised to ``max_side``).
    """
    h, w = image.shape[:2]
    target = min_side if max_side is None else min(min_side, max_side)
    short, long = min(h, w), max(h, w)
    if short >= target:
        return image
    bound = max(long, MAX_ASPECT * target)
    if max_side is not None:
        bound = min(bound, max(long, max_side))
    new_long = min(round(long * target / short), bound)
    return _resize(image, target, new_long) if h <= w else _resize(image, new_long, target)


def to_network_input(image: np.ndarray, bbx=None, norm: Normalization = CVNET,
                     max_side: int | None = None, min_side: int | None = MIN_SIDE) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> (1, 3, H', W') float32 normalised tensor.

    Args:
        image: RGB uint8 array, as from :func:`load_image`.
        bbx: optional query box (x1, y1, x2, y2), cropped with truncation; a box that is empty
            after truncation (e.g. 0.5 px wide) raises ValueError.
        norm: the network's convention (:data:`CVNET` by default).
        max_side: if set, downscale (bilinear, antialiased) so the long side is at most this.
            The reference uses full resolution (None).
        min_side: if the (cropped) image's shorter side is below this many px, upsample it
            (bilinear) to exactly this, keeping the aspect ratio (see :func:`_raise_short_side`
            for the cap on very elongated images). Default 32: networks of stride 32 need at
            least one output cell. None (or 1) keeps tiny images as they are. Images already this
            large are untouched, so normal photos are processed exactly as by the reference.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got {getattr(image, 'shape', type(image))}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected at least 1x1 pixels, got an empty {image.shape[1]}x{image.shape[0]} image")
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer))
                                 or min_side < 1):
        raise ValueError(f"min_side must be None or an integer >= 1, got {min_side!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                 or max_side < MIN_MAX_SIDE):
        raise ValueError(f"max_side must be None or an integer >= {MIN_MAX_SIDE} (below, the network sees no "
                         f"more than a few feature-map cells), got {max_side!r}")
    image = crop_to_box(image, bbx)
    if max_side is not None and max(image.shape[:2]) > max_side:
        s = max_side / max(image.shape[:2])
        image = _resize(image, max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s)))
    if min_side is not None:
        image = _raise_short_side(image, int(min_side), max_side)
    return normalize_pixels(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0), norm)


def normalize_pixels(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> float32 network input in ``norm``'s convention (channel order, mean, std)."""
    x = images.float().div_(255.0)
    if norm.bgr:
        x = x.flip(1)
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (x - mean) / std


def load_network_input(path, bbx=None, norm: Normalization = CVNET, max_side: int | None = None,
                       min_side: int | None = MIN_SIDE, max_pixels: int | None = None) -> torch.Tensor:
    """:func:`load_image` then :func:`to_network_input`: a file -> (1, 3, H, W) tensor."""
    return to_network_input(load_image(path, max_pixels), bbx, norm, max_side, min_side)
