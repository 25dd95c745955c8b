"""torchxrayvision weights (xrv:NAME): files in the package's own format and cache folder, made here;
one input channel in [-1024, 1024] through the data pipeline; restricted unpickling; offline errors."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.config import ModelConfig, load_config
from cxr.data.dataset import SplitDataset
from cxr.errors import CxrError
from cxr.models.build import build_model
from cxr.models.weights import resolve_weights
from cxr.rundir import SplitRow
from cxr.transforms import Preprocessing, normalize, to_input

xrv = pytest.importorskip("torchxrayvision")
DENSENET = "densenet121-res224-all"


@pytest.fixture
def xrv_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchxrayvision's cache folder under a temporary HOME; the network declared off."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    folder = Path(xrv.utils.get_cache_dir())
    assert folder.is_relative_to(tmp_path)
    return folder


def _file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / xrv.models.model_urls[name]["weights_url"].rsplit("/", 1)[-1]


def test_the_record_is_torchxrayvisions_preprocessing() -> None:
    pre = resolve_weights(f"xrv:{DENSENET}", "tv:densenet121").preprocessing
    assert (pre.mode, pre.channels, pre.size) == ("meanstd", 1, 224)
    assert resolve_weights("xrv:resnet50-res512-all", "tv:resnet50").preprocessing.size == 512
    pixels = np.array([[0, 255], [127.5, 51]], dtype=np.float32)
    out = to_input(pixels, pre)
    expected = xrv.datasets.normalize(pixels, 255)  # the package's own [-1024, 1024] mapping
    assert out.shape == (1, 2, 2) and np.allclose(out[0].numpy(), expected, atol=1e-3)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_densenet_weights_from_the_cache_folder_load_exactly(xrv_home: Path) -> None:
    torch.manual_seed(0)
    published = xrv.models.DenseNet(weights=None)
    torch.save(published, _file(xrv_home, DENSENET))  # xrv stores the whole pickled model
    model = build_model(ModelConfig(backbone="tv:densenet121", weights=f"xrv:{DENSENET}", head=(8,)), 3)
    assert model.preprocessing.channels == 1 and model.backbone.model.features.conv0.in_channels == 1
    expected = {k: v for k, v in published.state_dict().items() if not k.startswith("classifier")}
    got = {k.removeprefix("model."): v for k, v in model.backbone.state_dict().items()}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.slow
def test_resnet50_weights_state_dict_format(xrv_home: Path) -> None:
    import torchvision

    resnet = torchvision.models.resnet50(num_classes=18)
    resnet.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # as xrv.models.ResNet
    torch.save(resnet.state_dict(), _file(xrv_home, "resnet50-res512-all"))
    record = resolve_weights("xrv:resnet50-res512-all", "tv:resnet50")
    model = build_model(ModelConfig(backbone="tv:resnet50", weights="xrv:resnet50-res512-all", head=(8,)), 2)
    assert torch.equal(model.backbone.model.conv1.weight, resnet.conv1.weight)
    assert record.preprocessing.channels == 1


class Payload:
    """Not a module: a pickle naming it must be refused."""


def test_only_module_classes_are_unpickled(xrv_home: Path) -> None:
    torch.save({"state_dict": collections.OrderedDict(), "x": Payload()}, _file(xrv_home, DENSENET))
    with pytest.raises(CxrError, match="only unpickles torch and torchxrayvision modules"):
        build_model(ModelConfig(backbone="tv:densenet121", weights=f"xrv:{DENSENET}"), 2)


def test_offline_without_the_file_is_one_line(xrv_home: Path) -> None:
    with pytest.raises(CxrError) as info:
        build_model(ModelConfig(backbone="tv:densenet121", weights="xrv:densenet121-res224-chex"), 2)
    message = str(info.value)
    assert "\n" not in message and "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt" in message
    assert str(xrv_home) in message and "CXR_OFFLINE=1" in message


def test_names_and_backbones_are_checked_at_load() -> None:
    with pytest.raises(CxrError, match="did you mean 'densenet121-res224-rsna'"):
        load_config(None, {"model.backbone": "tv:densenet121", "model.weights": "xrv:densenet121-res224-rsa"})
    with pytest.raises(CxrError, match="fit tv:densenet121.*tv:resnet50"):
        load_config(None, {"model.backbone": "tv:resnet18", "model.weights": f"xrv:{DENSENET}"})


def test_one_channel_records_feed_one_channel_and_others_three(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(tmp_path / "a.png")
    rows = [SplitRow("a.png", "x", "train", "g")]
    one = Preprocessing("meanstd", 32, mean=(0.5,), std=(0.5 / 1024,), channels=1)
    x, _ = SplitDataset(tmp_path, rows, ["x"], one)[0]
    assert x.shape == (1, 32, 32) and torch.allclose(x, torch.full_like(x, (200 / 255 * 2 - 1) * 1024), atol=0.1)
    x3, _ = SplitDataset(tmp_path, rows, ["x"], Preprocessing("imagenet", 32))[0]
    assert x3.shape == (3, 32, 32)
    with pytest.raises(CxrError, match="expects 1 channel"):
        normalize(torch.zeros(3, 4, 4), one)


@pytest.mark.slow
def test_a_one_channel_checkpoint_predicts_explains_and_exports(tmp_path: Path) -> None:
    from PIL import Image

    from cxr.checkpoint import save_checkpoint
    from cxr.config import RunConfig
    from cxr.explain import explain
    from cxr.export import export_onnx, read_onnx_metadata
    from cxr.predict import Predictor

    cfg = RunConfig(name="xrv", model=ModelConfig(backbone="tv:densenet121", weights=f"xrv:{DENSENET}", head=(8,)))
    model = build_model(cfg.model, 2, load_weights=False).eval()  # no weights file needed to rebuild
    pre = Preprocessing.from_dict({**model.preprocessing.to_dict(), "size": 32})
    ckpt = save_checkpoint(tmp_path / "xrv.pt", model=model, config=cfg, classes=["a", "b"], preprocessing=pre,
                           epoch=1)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (50, 40), dtype=np.uint8)
    assert predictor.preprocess(image).shape == (1, 32, 32)
    prediction = predictor.predict(Image.fromarray(image))
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-6
    assert explain(predictor, image, layer="features.denseblock2").cam.shape == (32, 32)
    meta = read_onnx_metadata(export_onnx(ckpt, tmp_path / "xrv.onnx", check=True))
    assert meta["input_size"] == 32 and len(meta["mean"]) == 1 and "as one channel" in meta["input"]
