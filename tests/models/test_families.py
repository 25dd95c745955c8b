"""timm:NAME and tv:NAME backbones: shapes and widths read from the model, the libraries' own
parameter counts, stages and freezing, pretrained files from the libraries' caches (built here),
offline errors in one line, file:PATH, Grad-CAM layers."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from cxr.config import ModelConfig
from cxr.errors import CxrError
from cxr.explain import grad_cam
from cxr.models import catalog
from cxr.models.backbones import create_backbone
from cxr.models.build import apply_freeze, build_model, count_parameters, frozen_norms
from cxr.models.weights import resolve_weights

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

HEAD = (16,)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _model(backbone: str, weights: str = "random", freeze: str = "base", classes: int = 3) -> nn.Module:
    return build_model(ModelConfig(backbone=backbone, weights=weights, freeze=freeze, head=HEAD), classes)


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty torch hub and HF hub caches; the HF endpoint refuses connections (as offline, but fast)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CXR_OFFLINE", raising=False)

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return {"torch": tmp_path / "torch" / "hub" / "checkpoints", "hf": tmp_path / "hf"}


def _hf_snapshot(hf: Path, repo_id: str, filename: str) -> Path:
    """Where huggingface_hub keeps `filename` of `repo_id` at the revision refs/main names."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hf / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision / filename
    path.parent.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("name,size", [("tv:resnet18", 64), ("tv:densenet121", 32), ("tv:mobilenet_v3_small", 64),
                                       ("timm:test_resnet", 64), ("timm:test_convnext", 64),
                                       ("timm:test_vit", 160), ("timm:mobilenetv3_small_050", 64)])
def test_feature_map_width_and_stages_come_from_the_model(name: str, size: int) -> None:
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        fmap = backbone.forward_features(torch.zeros(2, 3, size, size))
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, backbone.num_features)
    stages = backbone.stages
    ids = [id(p) for stage in stages for p in stage.parameters()]
    assert len(stages) >= 4 and len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}  # the stages hold every parameter once


def test_parameter_counts_are_the_libraries_without_their_classifier() -> None:
    for name, library in (("densenet121", torchvision.models.densenet121()), ("resnet18", torchvision.models.resnet18())):
        backbone = create_backbone(f"tv:{name}")
        classifier = library.classifier if name.startswith("densenet") else library.fc
        assert _params(backbone) == _params(library) - _params(classifier)
        weights = torchvision.models.get_model_weights(name).DEFAULT
        assert backbone.library_params == weights.meta["num_params"]
        assert f"{backbone.library_params:,}" in backbone.describe_params()
    for name in ("test_convnext", "test_vit"):
        assert _params(create_backbone(f"timm:{name}")) == _params(timm.create_model(name, num_classes=0))
        assert f"{_params(timm.create_model(name)):,}" in create_backbone(f"timm:{name}").describe_params()
    model = _model("tv:densenet121", classes=4)
    head = 1024 * 16 + 16 + 16 * 4 + 4
    assert count_parameters(model) == {"total": 6_953_856 + head, "trainable": head, "non_trainable": 6_953_856}


def test_preprocessing_comes_from_the_pretrained_configs() -> None:
    cfg = timm.models.get_pretrained_cfg("test_vit")
    record = resolve_weights("random", "timm:test_vit").preprocessing
    assert (record.mode, record.size, record.interpolation) == ("half", cfg.input_size[-1], cfg.interpolation)
    convnext = resolve_weights("imagenet", "timm:convnext_tiny").preprocessing
    assert (convnext.mode, convnext.size, convnext.interpolation) == ("imagenet", 224, "bicubic")
    tv = torchvision.models.get_model_weights("efficientnet_b0").DEFAULT.transforms()
    record = resolve_weights("imagenet", "tv:efficientnet_b0").preprocessing
    assert (record.size, record.interpolation) == (tv.crop_size[0], tv.interpolation.value)
    custom = catalog.families.input_spec((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 96)
    assert custom.mode == "meanstd" and custom.mean == (0.5, 0.4, 0.3)


def test_freezing_by_stage_and_frozen_batchnorm() -> None:
    model = _model("tv:resnet18", freeze="stages:2")
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    model.train()
    assert frozen_norms(model) and all(not m.training for m in frozen_norms(model))
    vit = _model("timm:test_vit", freeze="stages:1")
    assert not vit.backbone.model.cls_token.requires_grad and vit.backbone.model.norm.weight.requires_grad
    assert apply_freeze(vit, "base") and not any(p.requires_grad for p in vit.backbone.parameters())
    with pytest.raises(CxrError, match="N in 0..5"):
        _model("tv:resnet18", freeze="stages:9")


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(CxrError, match="did you mean 'convnext_tiny'"):
        catalog.get_backbone("timm:convnext_tinny")
    with pytest.raises(CxrError, match="did you mean 'densenet121'"):
        catalog.get_backbone("tv:densenet122")
    with pytest.raises(CxrError, match="not supported as a backbone.*densenet"):
        catalog.get_backbone("tv:vgg16")


# ------------------------------------------------------------------------------------ weights


def test_tv_imagenet_from_the_torch_hub_cache(caches: dict[str, Path], tmp_path: Path) -> None:
    record = resolve_weights("imagenet", "tv:resnet18")
    assert record.source == torchvision.models.ResNet18_Weights.DEFAULT.url and record.sha256_prefix == "f37072fd"
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    caches["torch"].mkdir(parents=True)
    staging.rename(caches["torch"] / f"resnet18-{prefix}.pth")
    record = dataclasses.replace(record, source=f"https://download.pytorch.org/models/resnet18-{prefix}.pth",
                                 sha256_prefix=prefix)
    backbone = create_backbone("tv:resnet18")
    report = record.load(backbone)
    assert report.ignored == ["fc.weight", "fc.bias"] and not report.missing and not report.unexpected
    assert all(torch.equal(t, state[k.removeprefix("model.")]) for k, t in backbone.state_dict().items())


def test_tv_imagenet_offline_is_one_line_naming_file_and_folder(caches: dict[str, Path]) -> None:
    with pytest.raises(CxrError) as info:
        resolve_weights("imagenet", "tv:densenet121").load(create_backbone("tv:densenet121"))
    message = str(info.value)
    assert "\n" not in message and "densenet121-a639ec97.pth" in message and str(caches["torch"]) in message


def test_tv_densenet_files_with_torchvision_old_key_names_load() -> None:
    backbone = create_backbone("tv:densenet121")
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    old = {k.removeprefix("model.").replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
           for k, v in own.items()}  # torchvision's 2017 files: 'norm.1', no num_batches_tracked
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    assert set(backbone.adapt_state_dict(old)) == set(own)


def test_timm_imagenet_from_the_hf_cache_loads_those_tensors(caches: dict[str, Path]) -> None:
    from safetensors.torch import save_file

    cfg = timm.models.get_pretrained_cfg("test_resnet")
    torch.manual_seed(2)
    state = timm.create_model("test_resnet").state_dict()  # with its classifier, as published
    save_file(state, _hf_snapshot(caches["hf"], cfg.hf_hub_id, "model.safetensors"))
    model = _model("timm:test_resnet", weights="imagenet")
    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, state[key.removeprefix("model.")]), key
    report = resolve_weights("imagenet", "timm:test_resnet").load(create_backbone("timm:test_resnet"))
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"] and not report.missing and not report.unexpected
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    broken = _hf_snapshot(caches["hf"] / "other", cfg.hf_hub_id, "model.safetensors")
    save_file(state, broken)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(caches["hf"] / "other"))
        with pytest.raises(CxrError, match=r"1 missing keys \(first: model.layer1.0.conv1.weight\); 1 unexpected keys "
                                           r"\(first: extra.weight\)"):
            resolve_weights("imagenet", "timm:test_resnet").load(create_backbone("timm:test_resnet"))


def test_timm_legacy_torch_hub_cache_is_used(caches: dict[str, Path]) -> None:
    cfg = timm.models.get_pretrained_cfg("mobilenetv3_small_050")
    state = timm.create_model("mobilenetv3_small_050").state_dict()
    caches["torch"].mkdir(parents=True)
    torch.save(state, caches["torch"] / cfg.url.rsplit("/", 1)[-1])
    backbone = create_backbone("timm:mobilenetv3_small_050")
    report = resolve_weights("imagenet", "timm:mobilenetv3_small_050").load(backbone)
    assert report.loaded == len(backbone.state_dict()) and not report.missing


@pytest.mark.parametrize("offline_env", [True, False])
def test_timm_imagenet_offline_is_one_line(caches: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                           offline_env: bool) -> None:
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CxrError) as info:
        resolve_weights("imagenet", "timm:test_convnext").load(create_backbone("timm:test_convnext"))
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message
    assert str(caches["hf"] / "models--timm--test_convnext.r160_in1k") in message and "file:PATH" in message
    assert ("HF_HUB_OFFLINE=1" if offline_env else "127.0.0.1 unreachable") in message


def test_file_weights_work_for_every_family(tmp_path: Path) -> None:
    source = create_backbone("timm:test_convnext")
    path = tmp_path / "convnext.pth"
    torch.save(source.model.state_dict(), path)  # timm's own names
    target = _model("timm:test_convnext", weights=f"file:{path}")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.backbone.state_dict().values(),
                                                  strict=True))
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    report = resolve_weights(f"file:{tmp_path / 'resnet18.pth'}", "tv:resnet18").load(create_backbone("tv:resnet18"))
    assert report.ignored == ["fc.weight", "fc.bias"] and report.loaded == len(tv.state_dict()) - 2


# ------------------------------------------------------------------------------------ Grad-CAM


@pytest.mark.parametrize("name,size,layer", [("tv:resnet18", 64, "layer3"), ("timm:test_vit", 160, "blocks.3"),
                                             ("timm:test_convnext", 64, "stages.2")])
def test_grad_cam_on_the_feature_map_and_on_a_chosen_layer(name: str, size: int, layer: str) -> None:
    torch.manual_seed(0)
    model = _model(name).eval()
    x = torch.rand(3, size, size)
    for chosen in (None, layer):
        cam, index, probs = grad_cam(model, x, layer=chosen)
        assert cam.shape == (size, size) and 0 <= cam.min() and cam.max() <= 1.0
        assert 0 <= index < 3 and abs(probs.sum() - 1) < 1e-6
    with pytest.raises(CxrError, match=f"did you mean '{layer}'"):
        grad_cam(model, x, layer=layer + "x")
