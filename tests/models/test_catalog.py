"""The backbone/weights catalog: one table that the factories, the resolver and the config all agree with."""

from __future__ import annotations

import pytest

from cxr.config import load_config
from cxr.errors import CxrError
from cxr.models import catalog
from cxr.models import weights as W
from cxr.models.backbones import FACTORIES, create_backbone
from cxr.models.efficientnet import EfficientNetLite
from cxr.models.resnet import ResNet
from cxr.models.weights import resolve_weights
from cxr.transforms import PREPROCESSING_MODES


def test_factories_and_catalog_name_the_same_backbones():
    assert list(FACTORIES) == list(catalog.BACKBONES)
    for name, entry in catalog.BACKBONES.items():
        model = create_backbone(name)
        if entry.variant == "lite0":
            assert isinstance(model, EfficientNetLite)
        else:
            assert isinstance(model, ResNet) and model.variant.name == entry.variant
        assert model.stages and model.num_features > 0


def test_every_entry_is_well_formed():
    for bb in catalog.BACKBONES.values():
        assert bb.preprocessing in PREPROCESSING_MODES and bb.description
        assert bb.weights[-len(catalog.COMMON_WEIGHTS) :] == catalog.COMMON_WEIGHTS
        for entry in bb.weights:
            assert entry.kind in catalog.KINDS and entry.help
            assert entry.preprocessing is None or entry.preprocessing in PREPROCESSING_MODES
            assert entry.kind == "random" or entry.kind in W._READERS  # one reader per kind
    assert set(W.HUB_FILES) == {e.spec for e in catalog.entries("hub")}


def test_the_resolver_follows_the_table():
    for bb in catalog.BACKBONES.values():
        for entry in bb.weights:
            spec = entry.spec.replace(":PATH", ":/models/w.bin")
            record = resolve_weights(spec, bb.name)
            assert record.kind == entry.kind and record.name == spec and record.backbone == bb.name
            assert record.preprocessing.mode == (entry.preprocessing or bb.preprocessing)
            assert record.variant == (entry.variant or bb.variant)
            if entry.prefix is not None:
                assert record.source == "/models/w.bin"


def test_listings_and_messages():
    assert catalog.all_weight_specs() == [
        "imagenet", "imagenet-v1", "keras-imagenet:PATH", "file:PATH", "lite0-imagenet", "random",
    ]
    assert catalog.allowed_for("efficientnet_lite0") == "lite0-imagenet, file:PATH, random"
    assert catalog.backbones_help() == "resnet50 | resnet50-keras | efficientnet_lite0 | timm:NAME | tv:NAME"
    assert "file:PATH | random (any backbone)" in catalog.weights_help()
    with pytest.raises(CxrError, match=r"unknown backbone 'efficientnet-lite0'.*did you mean 'efficientnet_lite0'"):
        catalog.get_backbone("efficientnet-lite0")
    with pytest.raises(CxrError, match=r"did you mean 'lite0-imagenet'"):
        catalog.find_weights("lite0-imagnet", "efficientnet_lite0")
    with pytest.raises(CxrError, match="are for backbone 'resnet50-keras', not 'resnet50'"):
        catalog.find_weights("keras-imagenet:/x.h5", "resnet50")


def test_check_weights_needs_an_existing_path(tmp_path):
    with pytest.raises(CxrError, match=f"file not found: {tmp_path / 'w.h5'}"):
        catalog.check_weights(f"keras-imagenet:{tmp_path / 'w.h5'}", "resnet50-keras")
    catalog.check_weights(f"keras-imagenet:{tmp_path / 'w.h5'}", "resnet50-keras", check_files=False)


def test_a_backbone_family_plugs_in_by_prefix(monkeypatch):
    """Later families (timm:NAME, tv:NAME) register a lookup; names, weights and the config follow."""
    xrv = catalog.WeightsEntry("xrv:NAME", "package", "a TorchXRayVision model", choices=("densenet121-res224-all",))

    def lookup(name: str) -> catalog.Backbone | None:
        if name != "tiny":
            return None
        return catalog.Backbone(f"fake:{name}", "tiny", "imagenet", "a fake family member",
                                (xrv, *catalog.COMMON_WEIGHTS))

    monkeypatch.setitem(catalog.FAMILIES, "fake:", catalog.BackboneFamily("fake:", "fake backbones", lookup))
    assert catalog.get_backbone("fake:tiny").variant == "tiny"
    assert "fake:NAME" in catalog.backbone_names()
    cfg = load_config(None, {"model.backbone": "fake:tiny", "model.weights": "xrv:densenet121-res224-all"})
    assert cfg.model.backbone == "fake:tiny"
    with pytest.raises(CxrError, match=r"xrv:densenet121.*did you mean 'densenet121-res224-all'"):
        load_config(None, {"model.backbone": "fake:tiny", "model.weights": "xrv:densenet121"})
    with pytest.raises(CxrError, match="unknown backbone 'fake:huge'"):
        catalog.get_backbone("fake:huge")
