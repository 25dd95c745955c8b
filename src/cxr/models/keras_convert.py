"""Keras ResNet50 HDF5 weights -> state dict of our ``keras``-variant ResNet.

Keras names its layers ``conv1_conv``, ``conv1_bn``, ``conv{S}_block{B}_{J}_conv`` / ``_bn`` with
S = 2..5 (our layer1..layer4), B = 1.. (our block B-1) and J = 1, 2, 3 for the bottleneck convs
(our conv1..conv3) or J = 0 for the projection shortcut (our downsample.0 / downsample.1).
Conv kernels are stored HWIO and become OIHW; BatchNorm gamma/beta/moving_mean/moving_variance become
weight/bias/running_mean/running_var. The mapping is derived from the model's own modules, so it
works for any depth and width of the layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.resnet import ResNet

log = logging.getLogger(__name__)

KERAS_CONV = {"kernel": "weight", "bias": "bias"}
KERAS_BN = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
HWIO_TO_OIHW = (3, 2, 0, 1)


@dataclass
class KerasConversion:
    """Converted tensors (our names), Keras layers that were not used, and Keras layers that were absent."""

    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    unused_layers: list[str] = field(default_factory=list)
    missing_layers: list[str] = field(default_factory=list)


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Keras layer name -> {weight name (``kernel``, ``gamma``, ...) -> array} from a Keras HDF5 file.

    Reads Keras 2 / legacy HDF5 weights (``save_weights``, the published ``..._notop.h5``), full model
    files (weights under ``model_weights``) and Keras 3 ``.weights.h5`` files (``layers/NAME/vars/I``).
    """
    try:
        import h5py
    except ImportError:
        raise CxrError("reading Keras .h5 weights needs h5py: pip install 'cxr[keras]'") from None
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"Keras weights file not found: {path}")
    try:
        with h5py.File(path, "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" not in root.attrs and isinstance(root.get("layers"), h5py.Group):
                layers = _read_keras3(root["layers"], h5py)
            else:
                layers = _read_legacy(root, h5py)
    except OSError as exc:
        raise CxrError(f"{path} is not a readable HDF5 file ({exc})") from None
    if not layers:
        raise CxrError(f"{path} holds no Keras layer weights")
    return layers


def _read_legacy(root: Any, h5py: Any) -> dict[str, dict[str, np.ndarray]]:
    """Keras 2 layout: one group per layer, datasets ``NAME/kernel:0`` etc. below it."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, group in root.items():
        if not isinstance(group, h5py.Group):
            continue
        arrays: dict[str, np.ndarray] = {}

        def collect(sub: str, obj: object, arrays: dict[str, np.ndarray] = arrays) -> None:
            if isinstance(obj, h5py.Dataset):
                arrays[sub.rsplit("/", 1)[-1].split(":", 1)[0]] = np.asarray(obj[()])

        group.visititems(collect)
        if arrays:
            layers[name] = arrays
    return layers


def _read_keras3(root: Any, h5py: Any) -> dict[str, dict[str, np.ndarray]]:
    """Keras 3 layout: ``layers/NAME/vars/0..`` in creation order (conv: kernel, bias; BN: 4 vectors)."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, group in root.items():
        variables = group.get("vars") if isinstance(group, h5py.Group) else None
        if variables is None or len(variables) == 0:
            continue
        arrays = [np.asarray(variables[str(i)][()]) for i in range(len(variables))]
        if len(arrays) == len(KERAS_BN) and all(a.ndim == 1 for a in arrays):
            names = list(KERAS_BN)
        else:
            names = list(KERAS_CONV)[: len(arrays)]
        layers[name] = dict(zip(names, arrays, strict=False))
    return layers


def keras_layer_map(model: ResNet) -> dict[str, str]:
    """Keras layer name -> our module name (``conv2_block1_0_conv`` -> ``layer1.0.downsample.0``)."""
    mapping = {"conv1_conv": "conv1", "conv1_bn": "bn1"}
    for stage in range(model.num_stages):
        layer = getattr(model, f"layer{stage + 1}")
        for index, block in enumerate(layer):
            keras = f"conv{stage + 2}_block{index + 1}"
            ours = f"layer{stage + 1}.{index}"
            if block.downsample is not None:
                mapping[f"{keras}_0_conv"] = f"{ours}.downsample.0"
                mapping[f"{keras}_0_bn"] = f"{ours}.downsample.1"
            for j in (1, 2, 3):
                mapping[f"{keras}_{j}_conv"] = f"{ours}.conv{j}"
                mapping[f"{keras}_{j}_bn"] = f"{ours}.bn{j}"
    return mapping


def convert_keras_resnet(layers: dict[str, dict[str, np.ndarray]], model: ResNet) -> KerasConversion:
    """Convert Keras layer weights to a state dict for ``model`` (a ResNet of the ``keras`` variant)."""
    if not isinstance(model, ResNet) or model.variant.name != "keras":
        raise CxrError(f"Keras weights need the backbone resnet50-keras, got {type(model).__name__}")
    result = KerasConversion()
    mapping = keras_layer_map(model)
    for keras_name, ours in mapping.items():
        if keras_name not in layers:
            result.missing_layers.append(keras_name)
            continue
        module = model.get_submodule(ours)
        table = KERAS_BN if isinstance(module, nn.BatchNorm2d) else KERAS_CONV
        for keras_weight, array in layers[keras_name].items():
            if keras_weight not in table:
                allowed = ", ".join(table)
                raise CxrError(
                    f"Keras layer {keras_name} has an unknown weight {keras_weight!r}; expected {allowed}"
                )
            if keras_weight == "kernel":
                array = np.transpose(array, HWIO_TO_OIHW)
            result.state_dict[f"{ours}.{table[keras_weight]}"] = torch.from_numpy(np.ascontiguousarray(array))
    result.unused_layers = [name for name in layers if name not in mapping]
    log.debug("Keras conversion: %d tensors, unused layers %s", len(result.state_dict), result.unused_layers)
    return result
