"""Pooling operators of SuperGlobal: GeM / GeM+, Regional-GeM, Scale-GeM and ReLU+.

Functional core (tensors in, tensors out, following the input's device) with thin
``nn.Module`` wrappers. Spec: ../shared/spec/superglobal.md, sections 2-4.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_float_tensor, check_int, check_positive, check_real

__all__ = [
    "gem", "regional_gem", "scale_gem", "scale_mean", "relu_plus",
    "GeM",
]


def relu_plus(x: torch.Tensor, floor: float = 0.014) -> torch.Tensor:
    """ReLU+: ``max(x, floor)`` element-wise (the floored ReLU of SuperGlobal).

    Example:
        >>> relu_plus(torch.tensor([-1.0, 0.0, 0.5]))
        tensor([0.0140, 0.0140, 0.5000])
    """
    check_float_tensor(x, "x", ndim=x.ndim if isinstance(x, torch.Tensor) else 0, nonempty=False)
    check_real(floor, "relu_plus: floor", lo=float(torch.finfo(x.dtype).min), hi=float(torch.finfo(x.dtype).max))
    return torch.clamp(x, min=floor)


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over all spatial positions.

    ``g_c = (mean_u max(x_cu, eps)^p)^(1/p)``. With ``p = 1`` it is average pooling, as
    ``p -> inf`` it tends to max pooling. GeM+ is this with a fixed ``p = 4.6``, ``eps = 1e-8``.

    Args:
        x: (B, C, H, W) feature map.
        p: exponent, a float or a tensor with one element (learnable).
        eps: floor applied before the power (keeps the power of zero/negatives defined).

    Returns:
        (B, C) pooled descriptors.

    Example:
        >>> gem(torch.ones(2, 8, 5, 7), p=4.6).shape
        torch.Size([2, 8])
    """
    check_float_tensor(x, "x", ndim=4)
    if isinstance(p, torch.Tensor):   # a learned p's value is checked where it is loaded: no GPU sync per call
        if p.numel() != 1:
            raise ValueError(f"gem: p must hold one value, got a tensor of shape {tuple(p.shape)}")
    else:
        check_positive(p, "p")
    check_positive(eps, "gem: eps")
    x = x.clamp(min=eps)
    # factor out each channel's largest value so that x^p can neither overflow (large p or large
    # activations) nor underflow to 0 (large p, small activations): the ratios lie in (0, 1]
    top = x.amax(dim=(-2, -1))
    return top * (x / top[..., None, None]).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def regional_gem(x: torch.Tensor, p: float = 2.5, kernel: int = 5) -> torch.Tensor:
    """Regional-GeM: mix a map with its local power mean, ``0.5 * P(x) + 0.5 * x``.

    ``P`` is a ``kernel x kernel`` stride-1 power mean with exponent ``p`` over the map
    reflection-padded by ``kernel // 2`` (so the size is kept). Computed, as the reference
    does, as an Lp pool of ``x / (kernel^2)^(1/p)``, i.e. ``(mean_window x^p)^(1/p)``.
    Expects a non-negative map (a ReLU output). A map with a side <= ``kernel // 2`` (a small
    query crop at a small scale), where reflection padding is undefined and the reference
    fails, is padded by replication instead.

    Args:
        x: (B, C, H, W).

    Returns:
        (B, C, H, W).

    Example:
        >>> regional_gem(torch.rand(1, 4, 6, 6)).shape
        torch.Size([1, 4, 6, 6])
    """
    check_float_tensor(x, "x", ndim=4)
    check_positive(p, "p")
    kernel = check_int(kernel, "regional_gem: kernel", lo=1, what="and odd")
    if kernel % 2 == 0:
        raise ValueError(f"regional_gem: kernel must be a positive odd integer, got {kernel}")
    pad = kernel // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode) if pad else x
    # the power mean of a negative value is undefined (NaN for a fractional p): floor at 0, as gem floors at eps;
    # each channel's largest value is factored out so that x^p cannot overflow (float16, large activations)
    padded = padded.clamp(min=0)
    top = padded.amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    pooled = top * F.avg_pool2d((padded / top).pow(p), kernel_size=kernel, stride=1).pow(1.0 / p)
    return 0.5 * pooled + 0.5 * x


def scale_gem(descs: torch.Tensor, p: float = float("inf")) -> torch.Tensor:
    """Scale-GeM: aggregate per-scale descriptors.

    ``p = inf``: element-wise max over the L2-normalised scales (SuperGlobal).
    finite ``p``: ``(mean_s (x_s - gamma)^p)^(1/p) + gamma`` with ``gamma`` the single
    minimum of the whole stacked tensor (the reference's shift; no normalisation).

    Args:
        descs: (S, B, D) descriptors, one slice per scale.

    Returns:
        (B, D), not normalised.

    Example:
        >>> scale_gem(torch.rand(3, 2, 16)).shape
        torch.Size([2, 16])
    """
    check_float_tensor(descs, "descs", ndim=3)
    check_positive(p, "p", allow_inf=True)
    if math.isinf(p):
        return F.normalize(descs, dim=-1).amax(dim=0)
    gamma = descs.min()
    shifted = descs - gamma
    # factor out the largest term so that x^p cannot overflow (whitened descriptors reach 1e2-1e4)
    top = shifted.amax(dim=0)
    ratio = torch.where(top > 0, shifted / top.clamp(min=torch.finfo(descs.dtype).tiny), torch.zeros_like(shifted))
    return top * ratio.pow(p).mean(dim=0).pow(1.0 / p) + gamma


def scale_mean(descs: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean of the raw per-scale descriptors (no Scale-GeM). (S, B, D) -> (B, D)."""
    check_float_tensor(descs, "descs", ndim=3)
    return descs.mean(dim=0)


class GeM(nn.Module):
    """GeM pooling module, (B, C, H, W) -> (B, C).

    ``learnable=True`` keeps ``p`` as a parameter (the trained CVNet head, ``head.pool.p``);
    ``learnable=False`` keeps it as a fixed buffer (GeM+ uses ``p = 4.6``, ``eps = 1e-8``).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        check_positive(p, "GeM: p")
        check_positive(eps, "GeM: eps")
        value = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"
