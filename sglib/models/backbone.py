"""The interface every network offers to the descriptor and extraction code.

A backbone is an ``nn.Module`` that also provides:

=====================  ==================================================================================
``name``               short string naming the architecture (part of the feature-cache key)
``normalization``      :class:`sglib.data.preprocess.Normalization` its inputs expect
``feature_map(x)``     (B, 3, H, W) normalised input -> (B, C, h, w) non-negative map
``descriptor_head``    (B, C) -> (B, D), applied per scale to the L2-normalised GeM vector (CVNet's
                       ``head.fc``, a learned whitening, or the identity)
``learned_p``          the learned GeM exponent (a 1-element tensor), or None
=====================  ==================================================================================

:class:`Backbone` adds the methods built on them, the same for the CVNet ResNet and the ImageNet
networks: :meth:`~Backbone.describe_with` (one SuperGlobal descriptor per image),
:meth:`~Backbone.feature_maps` and :meth:`~Backbone.describe_maps` (pool maps computed once).
:func:`sglib.scale.extract.build_extractor` turns any backbone into a cached, sharded extractor.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_float_tensor
from ..method.descriptors import DescriptorSettings, describe_from_maps, multiscale_descriptor, resize_input


class Backbone:
    """Mix-in for ``nn.Module`` backbones; see the module docstring for what a subclass provides."""

    name: str
    learned_p = None

    @property
    def descriptor_head(self):
        raise NotImplementedError

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def body_parameters(self) -> list:
        """The feature extractor's parameters in definition (= depth) order: all but the head, classifier and p.

        Training freezes a prefix of this list (:mod:`sglib.training`).
        """
        return [p for n, p in self.named_parameters() if not n.startswith(("head.", "classifier.", "gem_p"))]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_settings(self, settings: DescriptorSettings) -> None:
        if settings.gem_p is None and self.learned_p is None:
            raise ValueError(f"{self.name} has no learned GeM exponent (gem_p=None): pass gem_p=3.0 "
                             "(plain GeM) or gem_p=4.6 (GeM+)")

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the network's device and in its dtype (float64 or float16 images work as float32 ones)."""
        return x.to(self._device(), dtype=next(self.parameters()).dtype)

    @torch.no_grad()
    def describe_with(self, x: torch.Tensor, settings: DescriptorSettings = DescriptorSettings(),
                      normalize: bool = True) -> torch.Tensor:
        """SuperGlobal descriptor of network-ready images: (B, 3, H, W) -> (B, D), unit rows when ``normalize``."""
        check_float_tensor(x, "x", ndim=4)
        self._check_settings(settings)
        return multiscale_descriptor(self.feature_map, self.descriptor_head, self._network_input(x), settings,
                                     learned_p=self.learned_p, normalize=normalize)

    @torch.no_grad()
    def feature_maps(self, x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
        """The (B, C, h_s, w_s) map at each scale, for re-pooling with :meth:`describe_maps`."""
        check_float_tensor(x, "x", ndim=4)
        x = self._network_input(x)
        return [self.feature_map(resize_input(x, float(s))) for s in scales]

    @torch.no_grad()
    def describe_maps(self, maps: Sequence[torch.Tensor], settings: DescriptorSettings,
                      normalize: bool = True) -> torch.Tensor:
        """Pool maps from :meth:`feature_maps` (taken at ``settings.scales``) into (B, D)."""
        self._check_settings(settings)
        return describe_from_maps(maps, self.descriptor_head, settings, self.learned_p, normalize)
