"""Classifier, head, freezing (base / stages:N / none) and parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr.config import ModelConfig
from cxr.errors import CxrError
from cxr.models.build import Classifier, apply_freeze, build_model, count_parameters
from cxr.models.head import Head

SEED_HEAD_PARAMS = 2048 * 2048 + 2048 + 2048 * 512 + 512 + 512 * 128 + 128 + 128 * 4 + 4  # 5,311,620


def _batch(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size, generator=gen), torch.tensor([0, 3])


def _norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(scope="module")
def resnet_base() -> Classifier:
    return build_model(ModelConfig(backbone="resnet50", weights="random", freeze="base"), num_classes=4)


def test_seed_counts(resnet_base: Classifier) -> None:
    counts = count_parameters(resnet_base)
    assert counts["trainable"] == SEED_HEAD_PARAMS == 5_311_620
    assert counts["non_trainable"] == 23_508_032  # torchvision resnet50 without fc
    assert counts["total"] == counts["trainable"] + counts["non_trainable"]
    assert resnet_base.preprocessing.mode == "imagenet" and resnet_base.freeze == "base"


def test_forward_features_and_head(resnet_base: Classifier) -> None:
    x, _ = _batch()
    resnet_base.eval()
    with torch.no_grad():
        feats = resnet_base.forward_features(x)
        logits = resnet_base.forward_head(feats)
        pooled = resnet_base.forward_head(feats.mean((2, 3)))
        full = resnet_base(x)
    assert feats.shape == (2, 2048, 2, 2) and logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, full) and torch.allclose(logits, pooled, atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet50-keras", "efficientnet_lite0"])
def test_frozen_base_step_changes_only_the_head(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, weights="random", freeze="base"), num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.head.training and all(not m.training for m in _norms(model.backbone))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("backbone."):
            assert torch.equal(value, after[key]), key  # weights and BN buffers, bit for bit
        else:
            assert not torch.equal(value, after[key]), key


def test_stages_freeze_trains_the_last_stages() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet50", weights="random", freeze="stages:2"), num_classes=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("backbone.layer3.", "backbone.layer4.", "head."))
    }
    assert trainable == expected
    model.train()
    stages = model.backbone.stages
    assert all(not m.training for s in stages[:3] for m in _norms(s))
    assert all(m.training for s in stages[3:] for m in _norms(s))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    frozen = ("backbone.conv1", "backbone.bn1", "backbone.layer1.", "backbone.layer2.")
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith(frozen))
    assert not torch.equal(
        before["backbone.layer4.2.bn3.running_mean"], after["backbone.layer4.2.bn3.running_mean"]
    )
    assert not torch.equal(before["backbone.layer3.0.conv1.weight"], after["backbone.layer3.0.conv1.weight"])


def test_freeze_modes_switch_and_validate() -> None:
    model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="random", freeze="none"), num_classes=3)
    counts = count_parameters(model)
    assert counts["trainable"] == counts["total"]
    apply_freeze(model, "stages:0")
    assert count_parameters(model)["trainable"] == sum(p.numel() for p in model.head.parameters())
    apply_freeze(model, "stages:9")
    assert count_parameters(model)["non_trainable"] == 0
    model.eval()
    apply_freeze(model, "base")
    assert not model.training  # apply_freeze keeps the current train/eval mode
    for bad in ("stages:10", "stages:-1", "stages:x", "frozen", ""):
        with pytest.raises(CxrError, match="allowed: base, stages:N, none with N in 0..9"):
            apply_freeze(model, bad)
    assert model.freeze == "base"


def test_build_errors_and_no_file_access(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        CxrError, match="unknown backbone 'vgg16'; allowed: resnet50, resnet50-keras, efficientnet_lite0"
    ):
        build_model(ModelConfig(backbone="vgg16"), num_classes=4)
    with pytest.raises(CxrError, match="at least 2 classes"):
        build_model(ModelConfig(backbone="efficientnet_lite0", weights="random"), num_classes=1)

    def refuse(*_args, **_kwargs):
        raise AssertionError("load_weights=False must not read weights")

    monkeypatch.setattr("cxr.models.weights.WeightsRecord.load", refuse)
    model = build_model(
        ModelConfig(backbone="resnet50", weights="imagenet"), num_classes=4, load_weights=False
    )
    assert model.preprocessing.mode == "imagenet" and model.weights == "imagenet"


def test_head_layout_and_dropout() -> None:
    head = Head(1280, (2048, 512, 128), num_classes=4, dropout=0.25)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (1280, 2048),
        (2048, 512),
        (512, 128),
        (128, 4),
    ]
    assert sum(isinstance(m, nn.Dropout) for m in head.mlp) == 3
    assert sum(isinstance(m, nn.Dropout) for m in Head(8, (4,), 2).mlp) == 0
    with pytest.raises(CxrError, match="dropout"):
        Head(8, (4,), 2, dropout=1.0)
    with pytest.raises(CxrError, match="positive"):
        Head(8, (0,), 2)


def test_checkpoint_round_trip(tmp_path) -> None:
    from cxr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from cxr.config import RunConfig

    cfg = RunConfig()
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "random"
    model = build_model(cfg.model, num_classes=4).eval()
    path = save_checkpoint(
        tmp_path / "c.pt",
        model=model,
        config=cfg,
        classes=list("abcd"),
        preprocessing=model.preprocessing,
        epoch=1,
    )
    restored = model_from_checkpoint(load_checkpoint(path))
    x, _ = _batch(32)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))
    assert restored.preprocessing == model.preprocessing and restored.freeze == "base"
