"""Backbones: names and shapes of published architectures, weight loading, the registry."""

import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_psa.nn import ModuleBackbone, available_backbones, make_backbone, register_backbone
from sklearn_psa.nn.base import Backbone
from sklearn_psa.nn.heads import CAMHead, Network
from sklearn_psa.nn.tiny import TinyBackbone

# ----------------------------------------------------------------------------- recorded facts

# torchvision's ResNet-50 (torchvision/models/resnet.py, Bottleneck v1.5):
# (blocks, width) per layer, expansion 4; 25,557,032 parameters with its 1000-way fc.
RESNET50_LAYERS = [(3, 64), (4, 128), (6, 256), (3, 512)]
RESNET50_N_PARAMS_WITH_FC = 25_557_032
RESNET50_STATE_ENTRIES_WITH_FC = 320  # 161 parameters + 159 BatchNorm buffers
RESNET50_SAMPLES = {  # a few entries spelled out
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.conv3.weight": (1024, 256, 1, 1),
    "layer4.0.downsample.1.weight": (2048,),
    "layer4.2.bn3.running_var": (2048,),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}

# The AffinityNet reference code's ResNet-38 (network/resnet38d.py):
# (name, in, mid, out, has 1x1 shortcut) for the two-conv blocks,
# (name, in, out) for the bottleneck blocks b6, b7 (1x1 -> out/4, 3x3 -> out/2, 1x1 -> out).
RESNET38_BLOCKS = [
    ("b2", 64, 128, 128, True), ("b2_1", 128, 128, 128, False), ("b2_2", 128, 128, 128, False),
    ("b3", 128, 256, 256, True), ("b3_1", 256, 256, 256, False), ("b3_2", 256, 256, 256, False),
    ("b4", 256, 512, 512, True),
    *[(f"b4_{i}", 512, 512, 512, False) for i in range(1, 6)],
    ("b5", 512, 512, 1024, True), ("b5_1", 1024, 512, 1024, False), ("b5_2", 1024, 512, 1024, False),
]
RESNET38_BOTTLENECKS = [("b6", 1024, 2048), ("b7", 2048, 4096)]


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet50_shapes():
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    c_in = 64
    for li, (blocks, width) in enumerate(RESNET50_LAYERS, start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            shapes[f"{p}.conv1.weight"] = (width, c_in, 1, 1)
            shapes.update(_bn(f"{p}.bn1", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{p}.bn2", width))
            shapes[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            shapes.update(_bn(f"{p}.bn3", 4 * width))
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * width, c_in, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", 4 * width))
            c_in = 4 * width
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def reference_resnet38_shapes():
    shapes = {"conv1a.weight": (64, 3, 3, 3)}
    for name, c_in, mid, out, shortcut in RESNET38_BLOCKS:
        shapes.update(_bn(f"{name}.bn_branch2a", c_in))
        shapes[f"{name}.conv_branch2a.weight"] = (mid, c_in, 3, 3)
        shapes.update(_bn(f"{name}.bn_branch2b1", mid))
        shapes[f"{name}.conv_branch2b1.weight"] = (out, mid, 3, 3)
        if shortcut:
            shapes[f"{name}.conv_branch1.weight"] = (out, c_in, 1, 1)
    for name, c_in, out in RESNET38_BOTTLENECKS:
        shapes.update(_bn(f"{name}.bn_branch2a", c_in))
        shapes[f"{name}.conv_branch2a.weight"] = (out // 4, c_in, 1, 1)
        shapes.update(_bn(f"{name}.bn_branch2b1", out // 4))
        shapes[f"{name}.conv_branch2b1.weight"] = (out // 2, out // 4, 3, 3)
        shapes.update(_bn(f"{name}.bn_branch2b2", out // 2))
        shapes[f"{name}.conv_branch2b2.weight"] = (out, out // 2, 1, 1)
        shapes[f"{name}.conv_branch1.weight"] = (out, c_in, 1, 1)
    shapes.update(_bn("bn7", 4096))
    return shapes


def _random_state_dict(shapes, seed=0):
    """Random tensors for ``shapes``, all views of one shared buffer (torch.save stores it once)."""
    g = torch.Generator().manual_seed(seed)
    largest = max(int(np.prod(s)) for s in shapes.values())
    buffer = torch.rand(largest + 64, generator=g) + 0.5
    out = {}
    for i, (k, s) in enumerate(shapes.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        else:
            out[k] = buffer[i % 64: i % 64 + int(np.prod(s))].view(s)
    return out


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def resnet50_net():
    return make_backbone("resnet50")


@pytest.fixture(scope="module")
def resnet38_net():
    from sklearn_psa.nn.resnet import ResNet38d

    with torch.device("meta"):  # names, shapes and strides without allocating 105M weights
        return ResNet38d(init_weights=False)


# ----------------------------------------------------------------------------- ResNet-50


def test_resnet50_names_and_shapes_match_torchvision(resnet50_net):
    expected = torchvision_resnet50_shapes()
    assert len(expected) == RESNET50_STATE_ENTRIES_WITH_FC
    for k, s in RESNET50_SAMPLES.items():
        assert expected[k] == s
    n_params = sum(int(np.prod(s)) for k, s in expected.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == RESNET50_N_PARAMS_WITH_FC
    without_fc = {k: s for k, s in expected.items() if not k.startswith("fc.")}
    assert _shapes(resnet50_net) == without_fc


def test_resnet50_is_dilated_like_torchvision_output_stride_8(resnet50_net):
    # replace_stride_with_dilation=[False, True, True]: the first block of a
    # dilated layer keeps the previous dilation.
    convs = dict(resnet50_net.named_modules())
    assert convs["layer2.0.conv2"].stride == (2, 2)
    assert convs["layer3.0.conv2"].stride == (1, 1) and convs["layer3.0.conv2"].dilation == (1, 1)
    assert convs["layer3.1.conv2"].dilation == (2, 2)
    assert convs["layer4.0.conv2"].dilation == (2, 2) and convs["layer4.0.conv2"].stride == (1, 1)
    assert convs["layer4.2.conv2"].dilation == (4, 4)
    assert convs["layer3.0.downsample.0"].stride == (1, 1)
    resnet50_net.eval()
    with torch.no_grad():
        feats = resnet50_net(torch.zeros(1, 3, 64, 48))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 8, 6), (1, 1024, 8, 6), (1, 2048, 8, 6)]
    assert resnet50_net.out_channels == (512, 1024, 2048)


def test_resnet50_loads_a_torchvision_weight_file(tmp_path):
    state = _random_state_dict(torchvision_resnet50_shapes())
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(state, path)
    net = make_backbone("resnet50", pretrained=path)
    own = net.state_dict()
    for k in ("conv1.weight", "layer3.4.conv2.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(own[k], state[k])
    assert "fc.weight" not in own
    # pretrained: BatchNorm statistics stay fixed in training mode
    net.train()
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert not net.bn1.weight.requires_grad


def test_weight_file_that_does_not_match_lists_the_differences(tmp_path):
    state = _random_state_dict(torchvision_resnet50_shapes())
    del state["layer2.1.conv1.weight"]
    state["layer9.0.conv1.weight"] = torch.zeros(3)
    state["layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        make_backbone("resnet50", pretrained=path)
    msg = str(err.value)
    assert "missing 1: layer2.1.conv1.weight" in msg
    assert "unexpected 1: layer9.0.conv1.weight" in msg
    assert re.search(r"wrong shape 1: layer1\.0\.conv2\.weight: file \(64, 64, 5, 5\)", msg)
    assert "whole network" not in msg  # no prefix hint for a genuine mismatch


def test_weight_file_is_read_with_weights_only(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": object()}, path)  # not loadable weights-only
    with pytest.raises(ValueError, match="pickle.pth: holds pickled Python objects"):
        make_backbone("resnet50", pretrained=path)


def test_whole_module_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(TinyBackbone(width=4), path)  # torch.save(module) instead of its state dict
    with pytest.raises(ValueError) as err:
        make_backbone("tiny", width=4, pretrained=path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds pickled Python objects")
    assert "TinyBackbone" in msg and "rather than a state dict of tensors" in msg
    assert msg.endswith("save module.state_dict() instead")
    assert "\n" not in msg and "\x1b" not in msg and "weights_only=False" not in msg
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)


def test_unreadable_weight_file_says_what_was_expected_and_why(tmp_path):
    expected = r"expected a torch state dict file saved with torch\.save\(module\.state_dict\(\)\)"
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pth: not a readable torch weights file \(it "
                       r"starts with b'hell', neither torch\.save's zip format nor a pickle\); "
                       + expected):
        make_backbone("tiny", pretrained=tmp_path / "notes.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth: .*\(the file is empty\)"):
        make_backbone("tiny", pretrained=tmp_path / "empty.pth")
    folder = re.escape(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{folder}: is a folder; {expected}"):
        make_backbone("tiny", pretrained=tmp_path)


def test_dataparallel_prefix_is_stripped(tmp_path):
    a = make_backbone("tiny", width=4)
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in a.state_dict().items()}, path)
    b = make_backbone("tiny", width=4, pretrained=path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_whole_network_file_gives_a_hint_to_select_the_backbone(tmp_path):
    sd = Network(TinyBackbone(width=4), CAMHead(32, 3)).state_dict()
    path = tmp_path / "network.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        make_backbone("tiny", width=4, pretrained=path)
    msg = str(err.value)
    assert "missing 40: " in msg and "unexpected 49: backbone." in msg  # the listing stays
    assert "names in " + str(path) + " start with 'backbone.': it looks like a whole network" in msg
    hint = msg.split("e.g. ")[1]
    assert hint == "{k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}"
    torch.save(eval(hint), path)  # the suggested dict loads
    b = make_backbone("tiny", width=4, pretrained=path)
    assert torch.equal(b.state_dict()["stem.0.0.weight"], sd["backbone.stem.0.0.weight"])


def test_pretrained_true_without_packaged_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="no packaged weights"):
        make_backbone("resnet50", pretrained=True)
    with pytest.raises(ValueError, match="no packaged pretrained weights"):
        make_backbone("tiny", pretrained=True)


# ----------------------------------------------------------------------------- ResNet-38


def test_resnet38d_names_and_shapes_match_the_reference(resnet38_net):
    assert _shapes(resnet38_net) == reference_resnet38_shapes()


def test_resnet38d_output_stride_8_and_levels(resnet38_net):
    mods = dict(resnet38_net.named_modules())
    assert mods["b5.conv_branch2a"].dilation == (1, 1)
    assert mods["b5.conv_branch2b1"].dilation == (2, 2)
    assert mods["b6.conv_branch2b1"].dilation == (4, 4)
    strides = [m.stride[0] for name, m in mods.items() if name.endswith("conv_branch2a")]
    assert int(np.prod(strides)) == 8  # b2, b3, b4 halve; b5 .. b7 keep stride 8
    assert resnet38_net.out_channels == (512, 1024, 4096)


def test_resnet38d_loads_the_reference_classifier_file(tmp_path):
    shapes = reference_resnet38_shapes()
    state = _random_state_dict(shapes, seed=1)
    state["fc8.weight"] = torch.zeros(20, 4096, 1, 1)  # the reference classifier, skipped
    # the reference's converted weights predate BatchNorm's num_batches_tracked counters
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "res38_cls.pth"
    torch.save(state, path)
    net = make_backbone("resnet38d", pretrained=str(path))
    assert any(k.endswith("num_batches_tracked") for k in net.state_dict())
    net.train()  # pretrained: its BatchNorm layers stay in eval mode
    assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(net.state_dict()["b7.conv_branch2b2.weight"], state["b7.conv_branch2b2.weight"])
    assert not net.conv1a.weight.requires_grad and not net.b2_2.conv_branch2a.weight.requires_grad
    assert net.b3.conv_branch2a.weight.requires_grad
    with torch.no_grad():
        feats = net.eval()(torch.zeros(1, 3, 16, 24))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 2, 3), (1, 1024, 2, 3), (1, 4096, 2, 3)]


# ----------------------------------------------------------------------------- tiny


def _empirical_receptive_field(net, size=200):
    net.eval()
    x = torch.zeros(1, 3, size, size, requires_grad=True)
    high = net(x)[2]
    c = high.shape[-1] // 2
    high[0, :, c, c].sum().backward()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0).ravel()
    return int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("depth,dilation", [(0, 1), (1, 1), (2, 1), (2, 2)])
def test_tiny_receptive_field_is_what_it_reports(depth, dilation):
    torch.manual_seed(0)
    net = TinyBackbone(width=4, depth=depth, dilation=dilation)
    with torch.no_grad():  # make every weight positive so no gradient cancels out
        for p in net.parameters():
            p.copy_(p.abs() + 0.01)
    assert net.receptive_field == 27 + 16 * depth * dilation
    assert _empirical_receptive_field(net) == net.receptive_field


def test_tiny_levels_and_stride():
    net = make_backbone("tiny", width=8)
    assert isinstance(net, Backbone)
    with torch.no_grad():
        feats = net.eval()(torch.zeros(2, 3, 64, 40))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 10), (2, 32, 8, 5), (2, 64, 8, 5)]
    assert net.out_channels == (16, 32, 64)


def test_tiny_weights_round_trip(tmp_path):
    a = make_backbone("tiny", width=4)
    path = tmp_path / "tiny.pt"
    torch.save(a.state_dict(), path)
    b = make_backbone("tiny", width=4, pretrained=path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="wrong shape"):
        make_backbone("tiny", width=8, pretrained=path)


# ----------------------------------------------------------------------------- registry


class _Plain(nn.Module):
    def __init__(self, out="tensor"):
        super().__init__()
        self.out = out
        self.conv = nn.Conv2d(3, 5, 3, stride=8, padding=1)

    def forward(self, x):
        f = self.conv(x)
        if self.out == "tensor":
            return f
        if self.out == "dict":
            return {"a": f[:, :2], "b": f[:, :3], "c": f}
        return [1, 2]


def test_registry_lists_names_and_rejects_unknown():
    names = available_backbones()
    for name in ("tiny", "resnet50", "resnet38d", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in names
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'.*tiny"):
        make_backbone("resnet18")
    with pytest.raises(TypeError, match="name .* or an nn.Module"):
        make_backbone(3)
    with pytest.raises(ValueError, match="does not accept options"):
        make_backbone("resnet50", width=3)


def test_register_backbone():
    register_backbone("test-tiny4", lambda *, pretrained=None, **kw: TinyBackbone(width=4, **kw))
    assert "test-tiny4" in available_backbones()
    assert make_backbone("test-tiny4", depth=1).receptive_field == 43


@pytest.mark.parametrize("out,channels", [("tensor", (5, 5, 5)), ("dict", (2, 3, 5))])
def test_any_module_is_wrapped_into_three_levels(out, channels):
    user = _Plain(out)
    net = make_backbone(user)
    assert isinstance(net, ModuleBackbone)
    assert net.out_channels == channels
    assert net.module is not user  # deep copy: the caller's module is not trained in place
    feats = net(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(channels)


def test_a_module_of_another_stride_is_wrapped_with_a_warning():
    coarse = nn.Conv2d(3, 4, 3, stride=16, padding=1)
    with pytest.warns(UserWarning, match="output stride 16 .* expect 8"):
        assert make_backbone(coarse).output_stride == 16


def test_tiny_options_must_be_integers():
    for bad in ({"width": 2.7}, {"depth": "2"}, {"dilation": True}):
        with pytest.raises(TypeError, match="must be an integer"):
            make_backbone("tiny", **bad)
    assert make_backbone("tiny", width=np.int64(4), depth=1).width == 4


def test_numpy_bool_pretrained_is_a_bool(tmp_path):
    # scikit-learn's parameter validation lets np.True_ / np.False_ through as booleans
    assert make_backbone("tiny", pretrained=np.False_, width=4).width == 4
    with pytest.raises(ValueError, match="has no packaged pretrained weights"):
        make_backbone("tiny", pretrained=np.True_)


def test_bad_module_output_is_a_clear_error():
    with pytest.raises(ValueError, match="_Plain failed on a .*feature maps"):
        make_backbone(_Plain("junk"))


def test_backbone_instance_is_used_as_is_but_copied():
    tiny = TinyBackbone(width=4)
    net = make_backbone(tiny)
    assert type(net) is TinyBackbone and net is not tiny


def test_efficientnet_names_map_to_the_efficientnet_module():
    pytest.importorskip("sklearn_psa.nn.efficientnet")
    net = make_backbone("efficientnet_lite0", pretrained=None)
    assert isinstance(net, Backbone) and len(net.out_channels) == 3


# ----------------------------------------------------------------------------- CAM head


def test_cam_head_logits_are_the_mean_of_the_unrectified_maps():
    torch.manual_seed(0)
    net = Network(TinyBackbone(width=4), CAMHead(32, 3)).eval()
    x = torch.rand(2, 3, 40, 48) * 255
    with torch.no_grad():
        feats = net.features(x)
        logits = net(x)
        raw = torch.einsum("nchw,kc->nkhw", feats[2], net.head.classifier.weight[:, :, 0, 0])
        cams = net.head.cams(feats)
    torch.testing.assert_close(logits, raw.mean(dim=(2, 3)))
    torch.testing.assert_close(cams, raw.clamp(min=0))
    assert net.head.classifier.bias is None
