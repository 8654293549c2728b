"""Image files -> network input tensors, as the reference does it (spec section 1).

CVNet / pycls convention: BGR channel order, values / 255, per-channel ``(x - mean) / std`` with
mean ``(0.406, 0.456, 0.485)`` and std ``(0.225, 0.224, 0.229)`` listed in BGR order; full
resolution; queries cropped to ``image[int(y1):int(y2), int(x1):int(x2)]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


@dataclass(frozen=True)
class Normalization:
    """Channel order and per-channel statistics (listed in that channel order) of a network's input."""

    bgr: bool
    mean: tuple
    std: tuple


CVNET = Normalization(bgr=True, mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229))
IMAGENET = Normalization(bgr=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def load_image(path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    Raises:
        ImageReadError: the file is missing, not an image, or truncated.
    """
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"could not decode image {path}: {exc}") from exc


def crop_to_box(image: np.ndarray, bbx) -> np.ndarray:
    """Crop (H, W, C) to ``bbx = (x1, y1, x2, y2)`` with the reference's truncation ``int()``."""
    if bbx is None:
        return image
    if len(bbx) != 4:
        raise ValueError(f"bbx must be (x1, y1, x2, y2), got {bbx!r}")
    x1, y1, x2, y2 = (int(v) for v in bbx)
    crop = image[max(y1, 0):y2, max(x1, 0):x2]
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"bbx {tuple(bbx)} selects an empty region of a {image.shape[1]}x{image.shape[0]} image")
    return crop


def to_network_input(image: np.ndarray, bbx=None, norm: Normalization = CVNET,
                     max_side: int | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> (1, 3, H', W') float32 normalised tensor.

    Args:
        image: RGB uint8 array, as from :func:`load_image`.
        bbx: optional query box (x1, y1, x2, y2), cropped with truncation.
        norm: the network's convention (:data:`CVNET` by default).
        max_side: if set, downscale (bilinear, antialiased) so the long side is at most this.
            The reference uses full resolution (None).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got {getattr(image, 'shape', type(image))}")
    image = crop_to_box(image, bbx)
    if max_side is not None and max(image.shape[:2]) > max_side:
        s = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
        image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    if norm.bgr:
        x = x.flip(0)
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def load_network_input(path, bbx=None, norm: Normalization = CVNET, max_side: int | None = None) -> torch.Tensor:
    """:func:`load_image` then :func:`to_network_input`: a file -> (1, 3, H, W) tensor."""
    return to_network_input(load_image(path), bbx, norm, max_side)
