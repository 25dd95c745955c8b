"""ResNet-50 from scratch: torchvision parity (v1.5), Keras layout (stride, bias, eps), shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.resnet import ResNet, resnet50

torchvision = pytest.importorskip("torchvision")

FC_KEYS = {"fc.weight", "fc.bias"}


def _randomize_bn_stats(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not an identity in the comparison."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(module.num_features, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(module.num_features, generator=gen))


@pytest.fixture(scope="module")
def torchvision_resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
        _randomize_bn_stats(model, seed=1)
    return model


def test_v15_state_dict_matches_torchvision(torchvision_resnet50: nn.Module) -> None:
    ours = resnet50("v1.5").state_dict()
    theirs = {k: v for k, v in torchvision_resnet50.state_dict().items() if k not in FC_KEYS}
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_v15_parity_with_torchvision(torchvision_resnet50: nn.Module) -> None:
    ours = resnet50("v1.5").eval()
    state = {k: v for k, v in torchvision_resnet50.state_dict().items() if k not in FC_KEYS}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torchvision_resnet50(x)
        feats = ours.forward_features(x)
        logits = torchvision_resnet50.fc(feats.mean((2, 3)))
    assert feats.shape == (2, 2048, 2, 2)
    assert expected.abs().max() > 1e-3  # a real comparison, not of two zero tensors
    assert (logits - expected).abs().max().item() < 1e-4


def test_keras_variant_layout() -> None:
    model = resnet50("keras")
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1.001e-5}
    v15 = resnet50("v1.5").layer2[0]
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2) and v15.conv1.bias is None
    # Same module names in both layouts; the Keras one has a bias per conv on top.
    keras_keys, v15_keys = set(model.state_dict()), set(resnet50("v1.5").state_dict())
    assert v15_keys < keras_keys
    assert all(k.endswith(".bias") for k in keras_keys - v15_keys)


@pytest.mark.parametrize("variant", ["v1.5", "keras"])
def test_forward_features_shape_and_stages(variant: str) -> None:
    model = resnet50(variant).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == 2048
    assert torch.isfinite(feats).all()
    stages = model.stages
    assert len(stages) == 5
    stage_params = {id(p) for stage in stages for p in stage.parameters()}
    assert stage_params == {id(p) for p in model.parameters()}
    # The stages, run in order, are the forward pass.
    with torch.no_grad():
        out = x
        for stage in stages:
            out = stage(out)
    assert torch.equal(out, feats)


def test_reduced_width_resnet() -> None:
    model = ResNet(blocks=(1, 1), widths=(8, 16), variant="keras").eval()
    assert model.num_features == 64
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 4, 4)


def test_bad_variant_and_shape_errors() -> None:
    with pytest.raises(CxrError, match="v1.5"):
        resnet50("v2")
    with pytest.raises(CxrError, match="one width per stage"):
        ResNet(blocks=(1, 2), widths=(8,))


TORCHVISION_FAMILY = {"families.py", "tv_backbones.py"}  # the tv:NAME family wraps torchvision by design


def test_package_never_uses_torchvision_models() -> None:
    """The built-in backbones are our own code; only the tv:NAME family modules import torchvision."""
    models_dir = Path(__file__).resolve().parents[2] / "src" / "cxr" / "models"
    assert TORCHVISION_FAMILY <= {p.name for p in models_dir.glob("*.py")}
    for path in models_dir.glob("*.py"):
        if path.name in TORCHVISION_FAMILY:
            continue
        source = path.read_text()
        assert "import torchvision" not in source and "from torchvision" not in source, path
