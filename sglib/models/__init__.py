"""Networks and their heads: the CVNet ResNet (``load_cvnet``), ImageNet backbones, learned whitening.

Every network is a :class:`~sglib.models.backbone.Backbone`: the descriptor and extraction code
treat them alike.
"""
from .backbone import Backbone
from .checkpoint import CheckpointError
from .cvnet import SuperGlobalNet, load_cvnet
from .imagenet import BACKBONES, EFFICIENTNET_LITE, ImageNetBackbone, load_backbone
from .resnet import ResNetBody
from .trained import load_trained
from .whitening import Whitening

__all__ = ["Backbone", "CheckpointError", "SuperGlobalNet", "load_cvnet", "ResNetBody", "BACKBONES",
           "EFFICIENTNET_LITE", "ImageNetBackbone", "load_backbone", "load_trained", "Whitening"]
