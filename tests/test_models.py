"""CVNet-layout ResNet: golden descriptors for 8 settings x 2 images x ReLU+ on/off, strict loading."""
import numpy as np
import pytest
import torch

from sglib.models import CheckpointError, SuperGlobalNet, load_cvnet
from sglib.models.resnet import RELU_PLUS_FLOOR
from conftest import load_npz

SETTINGS = {
    "supg_s3": dict(scales=(0.7071, 1.0, 1.4142), gem_p=4.6, regional=True, scale_agg="max"),
    "gemp_s1": dict(scales=(1.0,), gem_p=4.6, regional=False, scale_agg="max"),
    "plain_s1": dict(scales=(1.0,), gem_p=None, regional=False, scale_agg="mean"),
    "rgem_mean_s3": dict(scales=(0.7071, 1.0, 1.4142), gem_p=4.6, regional=True, scale_agg="mean"),
}


@pytest.fixture(scope="module")
def golden():
    return load_npz("descriptors_R50.npz")


@pytest.mark.parametrize("relu_plus", [1, 0])
def test_descriptors_match_reference(golden_checkpoint, golden, relu_plus):
    net = load_cvnet(golden_checkpoint, depth=50, relu_plus=bool(relu_plus))
    assert abs(net.head.pool.p.item() - 2.75) < 1e-6
    for name, kwargs in SETTINGS.items():
        for i in (0, 1):
            d = net.describe(torch.from_numpy(golden[f"img{i}"]), **kwargs).numpy()[0]
            ref = golden[f"relup{relu_plus}_{name}_img{i}"][0]
            cos = float(d @ ref / np.linalg.norm(ref))
            # float32 rounding: 1 - cos measured at most 2.4e-7, the norm's error at most 1.2e-7
            assert 1 - cos <= 1e-6, f"descriptor {name} img{i} relu_plus={relu_plus}: 1 - cos = {1 - cos:.2e}"
            assert abs(np.linalg.norm(d) - 1) < 5e-7


def test_relu_plus_switch_changes_descriptor(golden_checkpoint, golden):
    x = torch.from_numpy(golden["img1"])
    on = load_cvnet(golden_checkpoint, relu_plus=True).describe(x, scales=(1.0,))
    off = load_cvnet(golden_checkpoint, relu_plus=False).describe(x, scales=(1.0,))
    none = load_cvnet(golden_checkpoint, relu_plus=None).describe(x, scales=(1.0,))
    assert not torch.allclose(on, off) and not torch.allclose(off, none)


def test_relu_plus_placement_follows_spec_table():
    """Where the floor 0.014 applies, read off activations with hooks (spec section 2)."""
    for flag, s1_inner, s1_3_out in [(True, True, True), (False, True, False), (None, False, False)]:
        net = SuperGlobalNet(50, relu_plus=flag).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.fill_(0.5)  # push many pre-activations below the floor
        outs = {}
        for name in ["s1.b2", "s2.b2", "s3.b2", "s4.b2"]:
            block = net.get_submodule(name)
            block.register_forward_hook(lambda _m, _i, o, n=name: outs.__setitem__(n, o.min().item()))
            block.f.a_bn.register_forward_hook(
                lambda m, _i, o, n=name: outs.__setitem__(n + ".inner", m))
        inner = {}
        for name in ["s1.b2", "s2.b2"]:
            f = net.get_submodule(name).f
            f.b.register_forward_hook(lambda _m, i, _o, n=name: inner.__setitem__(n, i[0].min().item()))
        net.feature_map(torch.randn(1, 3, 64, 64))
        floor = RELU_PLUS_FLOOR
        assert (abs(inner["s1.b2"] - floor) < 1e-7) == s1_inner, flag
        assert inner["s2.b2"] == 0.0
        for s in ("s1.b2", "s2.b2", "s3.b2"):
            assert (abs(outs[s] - floor) < 1e-7) == s1_3_out, (flag, s)
        assert outs["s4.b2"] == 0.0


def test_checkpoint_layouts_and_prefixes(golden_checkpoint, tmp_path):
    state = torch.load(golden_checkpoint, weights_only=True)["model_state"]
    bare = {k.removeprefix("encoder_q."): v for k, v in state.items() if k.startswith("encoder_q.")}
    x = torch.rand(1, 3, 64, 64)
    ref = load_cvnet(golden_checkpoint).describe(x, scales=(1.0,))
    for layout in ({"model_state": {"globalmodel." + k: v for k, v in bare.items()}}, bare):
        path = tmp_path / "alt.pyth"
        torch.save(layout, path)
        assert torch.allclose(load_cvnet(path).describe(x, scales=(1.0,)), ref)


def test_broken_checkpoints_name_the_tensor(golden_checkpoint, tmp_path):
    state = torch.load(golden_checkpoint, weights_only=True)["model_state"]
    missing = dict(state)
    del missing["encoder_q.s3.b2.f.b_bn.running_var"]
    torch.save({"model_state": missing}, tmp_path / "missing.pyth")
    with pytest.raises(CheckpointError, match=r"s3\.b2\.f\.b_bn\.running_var"):
        load_cvnet(tmp_path / "missing.pyth")
    bad = dict(state)
    bad["encoder_q.head.fc.weight"] = torch.zeros(2048, 1024)
    torch.save({"model_state": bad}, tmp_path / "shape.pyth")
    with pytest.raises(CheckpointError, match=r"head\.fc\.weight.*\(2048, 1024\)"):
        load_cvnet(tmp_path / "shape.pyth")
    nan = dict(state)
    nan["encoder_q.stem.conv.weight"] = torch.full_like(state["encoder_q.stem.conv.weight"], float("nan"))
    torch.save({"model_state": nan}, tmp_path / "nan.pyth")
    with pytest.raises(CheckpointError, match="stem.conv.weight.*NaN"):
        load_cvnet(tmp_path / "nan.pyth")
    with pytest.raises(CheckpointError, match="missing .* for a ResNet-101"):
        load_cvnet(golden_checkpoint, depth=101)
    deeper = dict(state)
    deeper["encoder_q.s3.b7.f.a.weight"] = torch.zeros(256, 1024, 1, 1)
    torch.save({"model_state": deeper}, tmp_path / "r101ish.pyth")
    with pytest.raises(CheckpointError, match="pass depth=101"):
        load_cvnet(tmp_path / "r101ish.pyth", depth=50)
    extra = dict(state)
    extra["encoder_q.s4.b1.f.z.weight"] = torch.zeros(1)
    torch.save({"model_state": extra}, tmp_path / "extra.pyth")
    with pytest.raises(CheckpointError, match=r"does not have: s4\.b1\.f\.z\.weight"):
        load_cvnet(tmp_path / "extra.pyth")
    with pytest.raises(CheckpointError, match="not found"):
        load_cvnet(tmp_path / "nope.pyth")
    (tmp_path / "junk.pyth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a torch.save file"):
        load_cvnet(tmp_path / "junk.pyth")
    (tmp_path / "cut.pyth").write_bytes((tmp_path / "extra.pyth").read_bytes()[:4096])   # a download cut short
    with pytest.raises(CheckpointError, match="could not read weights file .*cut.pyth \\(damaged\\?\\)"):
        load_cvnet(tmp_path / "cut.pyth")


def test_describe_input_checks():
    net = SuperGlobalNet(50).eval()
    with pytest.raises(ValueError, match="4 dimensions"):
        net.describe(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="3 colour channels"):
        net.describe(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="scale_agg"):
        net.describe(torch.rand(1, 3, 64, 64), scale_agg="median")
