"""From a backbone's feature map to a global descriptor: spec sections 3 and 4.

Shared by the CVNet ResNet (:mod:`sglib.models.cvnet`) and the ImageNet backbones, so every
module (GeM+, Regional-GeM, Scale-GeM) is the same code whatever produced the map.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import pooling
from .._checks import check_tensor
from .._settings import setting

SCALES = {1: (1.0,), 3: (0.7071, 1.0, 1.4142), 5: (0.5, 0.7071, 1.0, 1.4142, 2.0)}
GEM_PLUS_P = 4.6
# The reference floors the map at 1e-8 with its fixed p (GeM+) and at 1e-6 with the learned p. Every
# fixed p here (plain GeM p=3, the p sweeps) uses the GeM+ floor, so that rows of a sweep differ in p alone.
FIXED_P_EPS = 1e-8
LEARNED_P_EPS = 1e-6


def parse_scales(text: str) -> tuple:
    """``"1"``, ``"3"``, ``"5"``: that many scales (the usual sets); anything else a comma list of factors
    (``"0.7071,1,1.4142"``, or ``"2.0"`` for one scale at 2x). Another whole number (``"2"``) is refused:
    it could mean two scales or the factor 2."""
    if text in ("1", "3", "5"):
        return SCALES[int(text)]
    if text.strip().isdigit():
        raise ValueError(f"{text!r} is neither a number of scales (1, 3 or 5) nor a factor: for one scale at "
                         f"factor {text.strip()} write {text.strip()}.0")
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"expected 1, 3, 5 or a comma list of numbers like 0.7071,1,1.4142, got {text!r}") from None


def parse_gem_p(text: str) -> float | None:
    """A number, or ``"learned"`` (None: the model's learned p)."""
    if text == "learned":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number or 'learned', got {text!r}") from None


def parse_scale_agg(text: str) -> str | float:
    """``"max"``, ``"mean"`` or a number."""
    if text in ("max", "mean"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected max, mean or a number, got {text!r}") from None


@dataclass(frozen=True)
class DescriptorSettings:
    """Which SuperGlobal modules are on. Defaults: full SuperGlobal (3 scales, GeM+, Regional-GeM, Scale-GeM).

    gem_p: fixed GeM exponent (4.6 = GeM+); None -> the model's learned p.
    scale_agg: "max" (Scale-GeM, p = inf), "mean" (plain average), or a number (Scale-GeM with finite p).
    """

    scales: tuple = setting(SCALES[3], "image scales: 1, 3, 5 or a comma list of factors such as 0.7071,1,1.4142",
                            parse=parse_scales, metavar="{1,3,5,LIST}")
    gem_p: float | None = setting(GEM_PLUS_P, "fixed GeM p (4.6 = GeM+; 3 = plain GeM), or 'learned': the "
                                              "checkpoint's own p (CVNet's, or the one `sglib train` ended with)",
                                  parse=parse_gem_p, metavar="{P,learned}")
    regional: bool = setting(True, "Regional-GeM on the feature map")
    regional_p: float = setting(2.5, "Regional-GeM's p")
    regional_kernel: int = setting(5, "Regional-GeM's window, an odd number of feature-map cells")
    scale_agg: str | float = setting("max", "how scales are combined: max (Scale-GeM), mean, or a finite p",
                                     parse=parse_scale_agg, metavar="{max,mean,P}")

    def __post_init__(self):
        try:
            object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        except (TypeError, ValueError):
            raise ValueError(f"scales: expected a sequence of numbers, got {self.scales!r}") from None
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError(f"scales must be finite positive numbers, got {self.scales}")
        if self.gem_p is not None and not _positive(self.gem_p):
            raise ValueError(f"gem_p must be a finite number > 0 (or None for a learned p), got {self.gem_p!r}")
        if not _positive(self.regional_p):
            raise ValueError(f"regional_p must be a finite number > 0, got {self.regional_p!r}")
        if (isinstance(self.regional_kernel, bool) or not isinstance(self.regional_kernel, int) or
                self.regional_kernel < 1 or self.regional_kernel % 2 == 0):
            raise ValueError(f"regional_kernel must be a positive odd integer, got {self.regional_kernel!r}")
        if not (self.scale_agg in ("max", "mean") or _positive(self.scale_agg)):
            raise ValueError(f"scale_agg must be 'max', 'mean' or a finite number > 0, got {self.scale_agg!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def resize_input(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize the network input to ``(int(H*s), int(W*s))``, bilinear, no antialiasing (as the reference)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    if int(h * scale) < 1 or int(w * scale) < 1:
        raise ValueError(f"scale {scale:g} turns a {w}x{h} input into {int(w * scale)}x{int(h * scale)} pixels: "
                         "use a larger scale or a larger image")
    return F.interpolate(x, size=(int(h * scale), int(w * scale)), mode="bilinear",
                         align_corners=False, antialias=False)


def aggregate_scales(descs: torch.Tensor, scale_agg: str | float) -> torch.Tensor:
    """(S, B, D) per-scale descriptors -> (B, D), as ``scale_agg`` says (see DescriptorSettings)."""
    if scale_agg == "max":
        return pooling.scale_gem(descs, math.inf)
    if scale_agg == "mean":
        return pooling.scale_mean(descs)
    return pooling.scale_gem(descs, float(scale_agg))


def multiscale_descriptor(
    feature_map: Callable[[torch.Tensor], torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    settings: DescriptorSettings,
    learned_p: float | torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Global descriptor of a batch of network-ready images.

    Per scale: resize input -> ``feature_map`` -> [Regional-GeM] -> GeM -> L2-normalise -> ``head``.
    Then aggregate the scales and (if ``normalize``) L2-normalise.

    Args:
        feature_map: (B, 3, h, w) -> (B, C, h', w') non-negative map.
        head: (B, C) -> (B, D), e.g. the CVNet ``head.fc`` or a learned whitening.
        x: (B, 3, H, W) already normalised input.
        learned_p: exponent used when ``settings.gem_p`` is None.

    Returns:
        (B, D) float32.
    """
    check_tensor(x, "x", ndim=4)
    if x.shape[1] != 3:
        raise ValueError(f"x: expected 3 colour channels in dim 1, got shape {tuple(x.shape)}")
    maps = [feature_map(resize_input(x, s)) for s in settings.scales]
    return describe_from_maps(maps, head, settings, learned_p, normalize)


def describe_from_maps(
    maps: Sequence[torch.Tensor],
    head: Callable[[torch.Tensor], torch.Tensor],
    settings: DescriptorSettings,
    learned_p: float | torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Pool already computed per-scale feature maps into one descriptor.

    ``maps[i]`` is the (B, C, h, w) map at ``settings.scales[i]``. Ablations re-score many pooling
    settings from one extraction this way (the maps depend only on the scales). Returns (B, D).
    """
    if len(maps) != len(settings.scales):
        raise ValueError(f"got {len(maps)} feature maps for {len(settings.scales)} scales")
    return combine_scales([pooled_vector(m, head, settings, learned_p) for m in maps], settings, normalize)


def pooled_vector(fmap: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], settings: DescriptorSettings,
                  learned_p: float | torch.Tensor | None = None) -> torch.Tensor:
    """One scale: (B, C, h, w) map -> [Regional-GeM] -> GeM -> L2-normalise -> ``head`` -> (B, D).

    Depends on the settings' pooling fields only (not on ``scales`` or ``scale_agg``).
    """
    if settings.gem_p is None:
        if learned_p is None:
            raise ValueError("gem_p=None asks for the model's learned p, but this model has none")
        p, eps = learned_p, LEARNED_P_EPS
    else:
        p, eps = settings.gem_p, FIXED_P_EPS
    if settings.regional:
        fmap = pooling.regional_gem(fmap, settings.regional_p, settings.regional_kernel)
    return head(F.normalize(pooling.gem(fmap, p, eps), dim=-1))


def combine_scales(vectors: Sequence[torch.Tensor], settings: DescriptorSettings, normalize: bool = True) -> torch.Tensor:
    """Per-scale vectors from :func:`pooled_vector` -> (B, D) descriptor (aggregate, then L2-normalise)."""
    desc = aggregate_scales(torch.stack(list(vectors)), settings.scale_agg)
    return F.normalize(desc, dim=-1) if normalize else desc
