"""Margin-based classification losses for training global descriptors: ArcFace, CurricularFace, normalised softmax.

All three score a batch of descriptors against one learned unit vector per class, by cosine, and
apply a cross-entropy to scaled logits; they differ in how the target (and, for CurricularFace, the
hard non-target) cosines are modified:

===================  ===========================================================================================
loss                 logits, with ``c_j = cos(theta_j)`` between the descriptor and class ``j``, target ``y``
===================  ===========================================================================================
normalised softmax   ``s * c_j`` (no margin: the control)
ArcFace              ``s * cos(theta_y + m)`` for the target, ``s * c_j`` for the others (Deng et al., CVPR 2019)
CurricularFace       ArcFace's target; a non-target with ``c_j > cos(theta_y + m)`` (a hard one) becomes
                     ``s * c_j (t + c_j)``, ``t`` a running mean of the target cosine (Huang et al., CVPR 2020)
===================  ===========================================================================================

``cos(theta_y + m)`` is not monotonic past ``theta_y = pi - m``; as in both papers' code, the target
logit there falls back to ``c_y - m sin(m)`` (a CosFace-like margin that keeps it decreasing), or, with
``easy_margin``, the margin applies only where ``c_y > 0``. Defaults are the papers' (m = 0.5, s = 64,
CurricularFace momentum 0.01), chosen for face recognition; :mod:`sglib.training` sets its own.

The functional forms (:func:`arcface_logits`, :func:`curricular_logits`) take the cosine matrix and are
what the tests check against a per-sample formula, gradients included; the modules hold the class
weights (and CurricularFace's ``t``).

Example:
    >>> loss = ArcFace(dim=8, n_classes=5)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 4])).shape
    torch.Size([])
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_float_tensor

__all__ = ["cosine_logits", "arcface_logits", "curricular_logits", "NormSoftmax", "ArcFace", "CurricularFace",
           "LOSSES", "make_loss"]


def cosine_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, D) descriptors, (C, D) class weights -> (B, C) cosines (both sides L2-normalised)."""
    return F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T


def _margin_target(cos_y: torch.Tensor, margin: float, easy_margin: bool) -> torch.Tensor:
    """``cos(theta_y + m)`` with the papers' fall-back where it would stop decreasing. (B,) -> (B,)."""
    sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(min=0.0))   # theta in [0, pi]: sin >= 0
    with_margin = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    if easy_margin:
        return torch.where(cos_y > 0, with_margin, cos_y)
    return torch.where(cos_y > math.cos(math.pi - margin), with_margin, cos_y - math.sin(math.pi - margin) * margin)


def _check(cos: torch.Tensor, labels: torch.Tensor) -> None:
    check_float_tensor(cos, "cos", ndim=2)
    if labels.dtype not in (torch.int64, torch.int32) or labels.shape != cos.shape[:1]:
        raise ValueError(f"labels: expected ({cos.shape[0]},) integers, got {tuple(labels.shape)} {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cos.shape[1]):
        raise ValueError(f"labels must lie in [0, {cos.shape[1] - 1}] (one per class weight), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, scale: float = 64.0,
                   easy_margin: bool = False) -> torch.Tensor:
    """ArcFace logits: (B, C) cosines, (B,) labels -> (B, C); the target column gets the angular margin."""
    _check(cos, labels)
    rows = torch.arange(cos.shape[0], device=cos.device)
    target = _margin_target(cos[rows, labels], margin, easy_margin)
    return scale * cos.index_put((rows, labels), target)


def curricular_logits(cos: torch.Tensor, labels: torch.Tensor, t: float | torch.Tensor, margin: float = 0.5,
                      scale: float = 64.0) -> torch.Tensor:
    """CurricularFace logits for a given ``t``: (B, C) cosines, (B,) labels -> (B, C).

    Non-target cosines above the target's ``cos(theta_y + m)`` (hard negatives) become ``c (t + c)``.
    As in the paper's code, whether a class is hard is decided without gradient.
    """
    _check(cos, labels)
    rows = torch.arange(cos.shape[0], device=cos.device)
    cos_y = cos[rows, labels]
    cos_y_m = cos_y * math.cos(margin) - torch.sqrt((1.0 - cos_y * cos_y).clamp(min=0.0)) * math.sin(margin)
    target = _margin_target(cos_y, margin, easy_margin=False)
    hard = (cos > cos_y_m.detach()[:, None])
    modulated = torch.where(hard, cos * (t + cos), cos)
    return scale * modulated.index_put((rows, labels), target)


class _ClassWeights(nn.Module):
    """One learned (unnormalised) vector per class, Xavier-initialised from the global torch seed."""

    def __init__(self, dim: int, n_classes: int, scale: float):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        check_float_tensor(x, "x", ndim=2)
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"x: expected (B, {self.weight.shape[1]}) descriptors, got {tuple(x.shape)}")
        return cosine_logits(x, self.weight.to(x.dtype))


def _check_margin(margin: float) -> float:
    if not (math.isfinite(margin) and 0 <= margin < math.pi / 2):
        raise ValueError(f"margin is an angle in radians in [0, pi/2), got {margin!r}")
    return float(margin)


class NormSoftmax(_ClassWeights):
    """Cross-entropy on ``s * cos``: the no-margin control. ``forward(x (B, D), labels (B,)) -> scalar``."""

    def __init__(self, dim: int, n_classes: int, scale: float = 64.0):
        super().__init__(dim, n_classes, scale)

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(x)
        _check(cos, labels)
        return self.scale * cos

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, labels), labels.long())


class ArcFace(_ClassWeights):
    """Additive angular margin loss. ``forward(x (B, D), labels (B,)) -> scalar`` (mean over the batch)."""

    def __init__(self, dim: int, n_classes: int, margin: float = 0.5, scale: float = 64.0, easy_margin: bool = False):
        super().__init__(dim, n_classes, scale)
        self.margin, self.easy_margin = _check_margin(margin), bool(easy_margin)

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return arcface_logits(self.cosines(x), labels, self.margin, self.scale, self.easy_margin)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, labels), labels.long())


class CurricularFace(_ClassWeights):
    """ArcFace's target margin plus adaptive emphasis on hard negatives; ``t`` (a buffer) follows the batches'
    mean target cosine with ``momentum``, updated in training mode only."""

    def __init__(self, dim: int, n_classes: int, margin: float = 0.5, scale: float = 64.0, momentum: float = 0.01):
        super().__init__(dim, n_classes, scale)
        if not (math.isfinite(momentum) and 0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.margin, self.momentum = _check_margin(margin), float(momentum)
        self.register_buffer("t", torch.zeros(()))

    def logits(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(x)
        _check(cos, labels)
        if self.training:
            with torch.no_grad():
                mean_target = cos[torch.arange(cos.shape[0], device=cos.device), labels].mean()
                if dist.is_available() and dist.is_initialized():   # one t for all processes: the union's mean
                    dist.all_reduce(mean_target)
                    mean_target /= dist.get_world_size()
                self.t.mul_(1 - self.momentum).add_(self.momentum * mean_target.to(self.t.dtype))
        return curricular_logits(cos, labels, self.t.to(cos.dtype), self.margin, self.scale)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x, labels), labels.long())


LOSSES = {"arcface": ArcFace, "curricularface": CurricularFace, "softmax": NormSoftmax}


def make_loss(name: str, dim: int, n_classes: int, margin: float, scale: float) -> nn.Module:
    """The loss ``name`` (a key of :data:`LOSSES`); ``margin`` is ignored by the softmax control."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}': choose one of {', '.join(LOSSES)}")
    if name == "softmax":
        return NormSoftmax(dim, n_classes, scale)
    return LOSSES[name](dim, n_classes, margin=margin, scale=scale)
