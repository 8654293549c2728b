"""CVNet's global model (ResNet-50/101, GeM head, 2048x2048 fc) and the strict checkpoint loader.

``load_cvnet`` reads the files CVNet releases (``CVPR2022_CVNet_R50.pyth``, ``..._R101.pyth``).
``SuperGlobalNet.describe`` computes the SuperGlobal descriptor (spec sections 3-4).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..data.preprocess import CVNET
from ..method.descriptors import GEM_PLUS_P, SCALES, DescriptorSettings
from ..method.pooling import GeM
from .backbone import Backbone
from .checkpoint import CheckpointError, load_state_strict, read_state_dict
from .resnet import ResNetBody

PREFIXES = ("encoder_q.", "globalmodel.")
IGNORED_PREFIXES = ("conv2ds.", "cv_learner.", "encoder_k.")


class Head(nn.Module):
    def __init__(self, dim: int = 2048, p: float = 3.0):
        super().__init__()
        self.pool = GeM(p=p, eps=1e-6, learnable=True)
        self.fc = nn.Linear(dim, dim, bias=True)


class SuperGlobalNet(ResNetBody, Backbone):
    """CVNet global model with SuperGlobal's test-time modules (a :class:`~sglib.models.backbone.Backbone`).

    Example:
        >>> net = SuperGlobalNet(depth=50).eval()
        >>> net.describe(torch.zeros(1, 3, 64, 64), scales=(1.0,)).shape
        torch.Size([1, 2048])
    """

    def __init__(self, depth: int = 50, relu_plus: bool | None = True):
        super().__init__(depth, relu_plus)      # stem, s1..s4 at the top level: the checkpoint's own names
        self.depth, self.relu_plus = depth, relu_plus
        self.name = f"cvnet-R{depth}"
        self.normalization = CVNET
        self.head = Head()

    @property
    def descriptor_head(self) -> nn.Module:
        """CVNet's trained 2048 x 2048 ``head.fc``."""
        return self.head.fc

    @property
    def learned_p(self) -> torch.Tensor:
        """The checkpoint's GeM exponent ``head.pool.p``."""
        return self.head.pool.p

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2048, ~H/32, ~W/32), the last stage's map."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.describe(x)

    @torch.no_grad()
    def describe(self, x: torch.Tensor, scales: Sequence[float] = SCALES[3], gem_p: float | None = GEM_PLUS_P,
                 regional: bool = True, scale_agg: str | float = "max", normalize: bool = True) -> torch.Tensor:
        """SuperGlobal descriptor of network-ready images.

        Args:
            x: (B, 3, H, W) normalised input (see :func:`sglib.data.preprocess.to_network_input`).
            scales: input resize factors; ``(0.7071, 1.0, 1.4142)`` is the paper's 3 scales.
            gem_p: fixed GeM exponent (4.6 = GeM+, eps 1e-8); None -> checkpoint's learned p (eps 1e-6).
            regional: apply Regional-GeM (p 2.5, 5x5) to the map before GeM.
            scale_agg: "max" (Scale-GeM p=inf), "mean", or a finite Scale-GeM p.
            normalize: L2-normalise the result (the reference's final step).

        Returns:
            (B, 2048) float32 descriptors, unit rows when ``normalize``.
        """
        settings = DescriptorSettings(scales=tuple(scales), gem_p=gem_p, regional=regional, scale_agg=scale_agg)
        return self.describe_with(x, settings, normalize)


def _strip_prefix(state: dict) -> dict:
    kept = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in kept):
            return {k[len(prefix):]: v for k, v in kept.items() if k.startswith(prefix)}
    return kept


def load_cvnet(path, depth: int = 50, relu_plus: bool | None = True, device="cpu") -> SuperGlobalNet:
    """Load a CVNet checkpoint into a :class:`SuperGlobalNet`, strictly.

    Accepts ``{'model_state': state}`` or a bare state dict; backbone keys prefixed
    ``encoder_q.``, ``globalmodel.`` or unprefixed. Tensors of the correlation-verification
    head (``conv2ds.*``, ``cv_learner.*``) are ignored. Every backbone and head tensor must be
    present with the right shape, else :class:`CheckpointError` names it.

    Returns:
        the model in eval mode on ``device``.
    """
    state = _strip_prefix(read_state_dict(path))
    model = SuperGlobalNet(depth, relu_plus)
    if depth == 50 and "s3.b7.f.a.weight" in state:
        raise CheckpointError(f"{path}: holds a ResNet-101 (stage 3 has more than 6 blocks): pass depth=101")
    load_state_strict(model, state, path, f"ResNet-{depth}")
    p = float(model.head.pool.p.detach())
    if not p > 0:
        raise CheckpointError(f"{path}: the learned GeM exponent head.pool.p is {p:g}; GeM needs p > 0")
    return model.eval().to(device)
