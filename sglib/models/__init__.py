"""Backbones: the CVNet ResNet in pycls layout (``load_cvnet``) and ImageNet networks."""
from .cvnet import CheckpointError, SuperGlobalNet, load_cvnet
from .imagenet import BACKBONES, EFFICIENTNET_LITE, ImageNetBackbone, WeightsError, load_backbone
from .resnet import ResNetBody

__all__ = ["CheckpointError", "SuperGlobalNet", "load_cvnet", "ResNetBody", "BACKBONES", "EFFICIENTNET_LITE",
           "ImageNetBackbone", "WeightsError", "load_backbone"]
