"""Keras ResNet50 h5 -> our keras-variant ResNet: names, layouts, and numerics against a Keras-semantics reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.errors import CxrError
from cxr.models.keras_convert import convert_keras_resnet, read_keras_h5
from cxr.models.resnet import ResNet, resnet50
from cxr.models.weights import resolve_weights

h5py = pytest.importorskip("h5py")

KERAS_EPS = 1.001e-5
SMALL = {"blocks": (2, 1, 1, 1), "widths": (8, 16, 32, 64)}
FULL = {"blocks": (3, 4, 6, 3), "widths": (64, 128, 256, 512)}


def keras_resnet_layers(blocks: tuple[int, ...], widths: tuple[int, ...], seed: int = 0) -> dict[str, dict]:
    """Random weights named and shaped as Keras' ResNet50 (kernels HWIO), written independently of cxr."""
    rng = np.random.default_rng(seed)
    layers: dict[str, dict[str, np.ndarray]] = {}

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        kernel = rng.standard_normal((k, k, cin, cout), dtype=np.float32) * np.float32(
            math.sqrt(2 / (k * k * cin))
        )
        layers[name] = {"kernel": kernel, "bias": 0.1 * rng.standard_normal(cout, dtype=np.float32)}

    def bn(name: str, c: int) -> None:
        layers[name] = {
            "gamma": (0.5 + rng.random(c, dtype=np.float32)),
            "beta": 0.1 * rng.standard_normal(c, dtype=np.float32),
            "moving_mean": 0.1 * rng.standard_normal(c, dtype=np.float32),
            "moving_variance": (0.5 + rng.random(c, dtype=np.float32)),
        }

    conv("conv1_conv", 7, 3, widths[0])
    bn("conv1_bn", widths[0])
    cin = widths[0]
    for stage, (count, f) in enumerate(zip(blocks, widths, strict=True)):
        for block in range(count):
            prefix = f"conv{stage + 2}_block{block + 1}"
            if block == 0:
                conv(f"{prefix}_0_conv", 1, cin, 4 * f)
                bn(f"{prefix}_0_bn", 4 * f)
            conv(f"{prefix}_1_conv", 1, cin, f)
            bn(f"{prefix}_1_bn", f)
            conv(f"{prefix}_2_conv", 3, f, f)
            bn(f"{prefix}_2_bn", f)
            conv(f"{prefix}_3_conv", 1, f, 4 * f)
            bn(f"{prefix}_3_bn", 4 * f)
            cin = 4 * f
    return layers


def write_legacy_h5(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> Path:
    """The Keras 2 HDF5 weights layout of the published ``..._notop.h5`` (weightless layers included)."""
    with h5py.File(path, "w") as handle:
        names = ["input_1", "conv1_pad", *layers, "avg_pool"]
        handle.attrs["layer_names"] = [n.encode() for n in names]
        handle.attrs["backend"] = b"tensorflow"
        for name in names:
            group = handle.create_group(name)
            weights = layers.get(name, {})
            group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in weights]
            for weight, array in weights.items():
                group.create_dataset(f"{name}/{weight}:0", data=array)
    return path


def write_keras3_h5(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> Path:
    """The Keras 3 ``.weights.h5`` layout: ``layers/NAME/vars/I`` in creation order."""
    with h5py.File(path, "w") as handle:
        handle.create_group("layers/input_layer/vars")
        for name, weights in layers.items():
            group = handle.create_group(f"layers/{name}/vars")
            for index, array in enumerate(weights.values()):
                group.create_dataset(str(index), data=array)
    return path


def keras_reference(layers: dict, x: torch.Tensor, blocks: tuple[int, ...]) -> torch.Tensor:
    """Keras ResNet50 semantics with torch.nn.functional: ZeroPadding, valid convs, stride in the first 1x1."""

    def conv(t: torch.Tensor, name: str, stride: int = 1, same: bool = False) -> torch.Tensor:
        kernel = torch.from_numpy(layers[name]["kernel"]).permute(3, 2, 0, 1)
        pad = (kernel.shape[-1] - 1) // 2 if same else 0
        return F.conv2d(t, kernel, torch.from_numpy(layers[name]["bias"]), stride=stride, padding=pad)

    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        p = {k: torch.from_numpy(v).view(1, -1, 1, 1) for k, v in layers[name].items()}
        return (t - p["moving_mean"]) / torch.sqrt(p["moving_variance"] + KERAS_EPS) * p["gamma"] + p["beta"]

    t = conv(F.pad(x, (3, 3, 3, 3)), "conv1_conv", stride=2)
    t = F.max_pool2d(F.pad(F.relu(bn(t, "conv1_bn")), (1, 1, 1, 1)), 3, 2)
    for stage, count in enumerate(blocks):
        for block in range(count):
            prefix = f"conv{stage + 2}_block{block + 1}"
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = bn(conv(t, f"{prefix}_0_conv", stride), f"{prefix}_0_bn") if block == 0 else t
            y = F.relu(bn(conv(t, f"{prefix}_1_conv", stride), f"{prefix}_1_bn"))
            y = F.relu(bn(conv(y, f"{prefix}_2_conv", same=True), f"{prefix}_2_bn"))
            y = bn(conv(y, f"{prefix}_3_conv"), f"{prefix}_3_bn")
            t = F.relu(shortcut + y)
    return t


@pytest.mark.parametrize("writer", [write_legacy_h5, write_keras3_h5])
def test_round_trip_small(tmp_path: Path, writer) -> None:
    layers = keras_resnet_layers(**SMALL)
    path = writer(tmp_path / "w.h5", layers)
    read = read_keras_h5(path)
    assert set(read) == set(layers)
    model = ResNet(SMALL["blocks"], SMALL["widths"], variant="keras").eval()
    conversion = convert_keras_resnet(read, model)
    assert conversion.missing_layers == [] and conversion.unused_layers == []
    model.load_state_dict(conversion.state_dict, strict=False)
    kernel = layers["conv3_block1_1_conv"]["kernel"]
    assert torch.equal(model.layer2[0].conv1.weight, torch.from_numpy(kernel).permute(3, 2, 0, 1))
    assert torch.equal(
        model.layer2[0].downsample[1].running_var,
        torch.from_numpy(layers["conv3_block1_0_bn"]["moving_variance"]),
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.forward_features(x)
        expected = keras_reference(layers, x, SMALL["blocks"])
    assert ours.shape == expected.shape == (2, 4 * SMALL["widths"][-1], 2, 2)
    assert (ours - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


@pytest.mark.slow
def test_full_resnet50_names_and_shapes(tmp_path: Path) -> None:
    layers = keras_resnet_layers(**FULL)
    path = write_legacy_h5(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", layers)
    record = resolve_weights(f"keras-imagenet:{path}", "resnet50-keras")
    assert record.preprocessing.mode == "caffe" and record.variant == "keras"
    model = resnet50("keras").eval()
    report = record.load(model)
    expected_tensors = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert report.loaded == len(expected_tensors) and report.missing == [] and report.unexpected == []
    assert torch.equal(model.conv1.bias, torch.from_numpy(layers["conv1_conv"]["bias"]))
    last = layers["conv5_block3_3_bn"]
    assert torch.equal(model.layer4[2].bn3.running_mean, torch.from_numpy(last["moving_mean"]))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, expected = model.forward_features(x), keras_reference(layers, x, FULL["blocks"])
    assert (ours - expected).abs().max().item() < 1e-4 * max(1.0, expected.abs().max().item())


def test_missing_layer_is_an_error(tmp_path: Path) -> None:
    layers = keras_resnet_layers(**SMALL)
    del layers["conv2_block2_2_bn"]
    conversion = convert_keras_resnet(layers, ResNet(SMALL["blocks"], SMALL["widths"], variant="keras"))
    assert conversion.missing_layers == ["conv2_block2_2_bn"]
    path = write_legacy_h5(tmp_path / "w.h5", {k: layers[k] for k in ("conv1_conv", "conv1_bn")})
    with pytest.raises(CxrError, match="missing"):
        resolve_weights(f"keras-imagenet:{path}", "resnet50-keras").load(resnet50("keras"))


def test_keras_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="resnet50-keras"):
        convert_keras_resnet({}, resnet50("v1.5"))
    with pytest.raises(CxrError, match="resnet50-keras"):
        resolve_weights(f"keras-imagenet:{tmp_path / 'x.h5'}", "resnet50")
    bad = tmp_path / "not.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(CxrError, match="not a readable HDF5"):
        read_keras_h5(bad)
    with pytest.raises(CxrError, match="not found"):
        read_keras_h5(tmp_path / "absent.h5")


def test_tensorflow_parity(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    keras_model = tf.keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    path = tmp_path / "tf.weights.h5"
    keras_model.save_weights(str(path))
    model = resnet50("keras").eval()
    resolve_weights(f"keras-imagenet:{path}", "resnet50-keras").load(model)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected = keras_model(x, training=False).numpy().transpose(0, 3, 1, 2)
    with torch.no_grad():
        ours = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
