"""ResNet-50/101 in pycls / CVNet layout (parameter names ``stem.*``, ``s{k}.b{i}.*``, ``head.*``).

Bottleneck blocks with the stride on the 3x3 convolution (torchvision's v1.5 arithmetic).
ReLU+ placement follows the reference exactly (spec section 2, table):

==============================  ===================  ====================
activation                      ``relu_plus=True``   ``relu_plus=False``
==============================  ===================  ====================
stem                            ReLU                 ReLU
inside stage-1 bottlenecks      floor 0.014          floor 0.014 (quirk)
inside stage 2-4 bottlenecks    ReLU                 ReLU
block output, stages 1-3        floor 0.014          ReLU
block output, stage 4           ReLU                 ReLU
==============================  ===================  ====================

``relu_plus=None`` puts no floor anywhere: use it for a backbone that is not a CVNet
checkpoint. It differs from the reference's "off", which still floors inside stage 1.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..method.pooling import relu_plus as _relu_plus

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RELU_PLUS_FLOOR = 0.014
BN_EPS = 1e-5


def _activation(floor: float | None):
    return (lambda x: _relu_plus(x, floor)) if floor is not None else F.relu


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(64, eps=BN_EPS)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, stride=2, padding=1)


class BottleneckTransform(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1, each with batch norm; activations inside the block."""

    def __init__(self, w_in, w_out, stride, w_b, inner_floor):
        super().__init__()
        self.a = nn.Conv2d(w_in, w_b, 1, bias=False)
        self.a_bn = nn.BatchNorm2d(w_b, eps=BN_EPS)
        self.b = nn.Conv2d(w_b, w_b, 3, stride=stride, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(w_b, eps=BN_EPS)
        self.c = nn.Conv2d(w_b, w_out, 1, bias=False)
        self.c_bn = nn.BatchNorm2d(w_out, eps=BN_EPS)
        self.act = _activation(inner_floor)

    def forward(self, x):
        x = self.act(self.a_bn(self.a(x)))
        x = self.act(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    def __init__(self, w_in, w_out, stride, w_b, inner_floor, out_floor):
        super().__init__()
        if w_in != w_out or stride != 1:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(w_out, eps=BN_EPS)
        else:
            self.proj = None
        self.f = BottleneckTransform(w_in, w_out, stride, w_b, inner_floor)
        self.act = _activation(out_floor)

    def forward(self, x):
        shortcut = self.bn(self.proj(x)) if self.proj is not None else x
        return self.act(shortcut + self.f(x))


class ResStage(nn.Module):
    def __init__(self, w_in, w_out, stride, w_b, depth, inner_floor, out_floor):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", ResBlock(w_in if i == 0 else w_out, w_out,
                                                  stride if i == 0 else 1, w_b, inner_floor, out_floor))

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x


class ResNetBody(nn.Module):
    """Stem and four stages: (B, 3, H, W) -> (B, 2048, ~H/32, ~W/32).

    Args:
        depth: 50 or 101.
        relu_plus: True (reference "on"), False (reference "off", stage-1 quirk kept),
            None (no floor anywhere).
    """

    def __init__(self, depth: int = 50, relu_plus: bool | None = True):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        floor = RELU_PLUS_FLOOR
        s1_inner = floor if relu_plus is not None else None
        out_floor = floor if relu_plus else None
        self.stem = Stem()
        widths = [(64, 256, 1, 64), (256, 512, 2, 128), (512, 1024, 2, 256), (1024, 2048, 2, 512)]
        for k, ((w_in, w_out, stride, w_b), d) in enumerate(zip(widths, DEPTHS[depth]), start=1):
            inner = s1_inner if k == 1 else None
            out = out_floor if k < 4 else None
            self.add_module(f"s{k}", ResStage(w_in, w_out, stride, w_b, d, inner, out))

    def forward(self, x):
        x = self.stem(x)
        return self.s4(self.s3(self.s2(self.s1(x))))
