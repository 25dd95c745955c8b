"""The seed's augmentation for whole batches on the compute device (the GPU input pipeline).

`cxr.transforms.SeedAugment` warps one image at a time in DataLoader workers: on a GPU host that
caps training at a few thousand images/s, far below the model. Here the workers only hand over
uint8 images (from `cxr.data.image_cache`) and the augmentation's drawn parameters, and
`DeviceAugment` warps, flips, scales brightness and normalises the whole batch where the model runs,
with the same arithmetic as `SeedAugment` (bilinear, edge pixels repeated for fill 'nearest', zeros
for 'constant'), so the same draws give the same images (to float rounding).

Parameters travel as a float32 vector per image, in `PARAM_ORDER`; an un-augmented image (val/test)
carries `IDENTITY`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr.errors import CxrError
from cxr.transforms import Preprocessing, affine_matrix, grid_theta, normalize

PARAM_ORDER = ("theta", "tx", "ty", "zx", "zy", "flip", "brightness")
IDENTITY = (0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0)
DEVICE_FILL_MODES = {"nearest": "border", "constant": "zeros"}  # Keras fill_mode -> grid_sample padding


def pack_params(params: dict[str, Any] | None) -> torch.Tensor:
    """A `SeedAugment.sample_params` draw (None: no augmentation) as a float32 vector in PARAM_ORDER."""
    values = IDENTITY if params is None else [float(params[name]) for name in PARAM_ORDER]
    return torch.tensor(values, dtype=torch.float32)


def _unpack(vector: np.ndarray) -> dict[str, Any]:
    return {name: float(v) for name, v in zip(PARAM_ORDER, vector, strict=True)}


def affine_thetas(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2, 3) `affine_grid` matrices (normalised coordinates, align_corners=True) for (N, 7) params."""
    thetas = [grid_theta(*affine_matrix(_unpack(v), (height, width)), (height, width)) for v in params.cpu().numpy()]
    return torch.from_numpy(np.stack(thetas)).to(torch.float32)


class DeviceAugment:
    """Turns `{"image": uint8 (N, S, S), "params": (N, 7)}` batches into normalised network input.

    Any other batch (a tensor: cached features or already-normalised images) passes through, so one
    instance serves every loader of a run. `channels_last` gives NHWC output for the convolutions.
    """

    def __init__(self, pre: Preprocessing, fill_mode: str = "nearest", channels_last: bool = False) -> None:
        if fill_mode not in DEVICE_FILL_MODES:
            raise CxrError(f"augment.fill_mode {fill_mode!r} cannot run on the device; allowed there: "
                           f"{', '.join(DEVICE_FILL_MODES)} (use data.decoded_cache=off for the others)")
        self.pre = pre
        self.padding = DEVICE_FILL_MODES[fill_mode]
        self.channels_last = channels_last

    def __call__(self, batch: Any) -> Any:
        if not isinstance(batch, dict):
            return batch
        images = batch["image"].to(torch.float32).unsqueeze(1)  # (N, 1, S, S) in [0, 255]
        params = batch["params"]
        augmented = ~torch.all(params == params.new_tensor(IDENTITY), dim=1)
        if bool(augmented.any()):
            images = self._warp(images, params, augmented)
        out = normalize(images, self.pre)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out.contiguous()

    def _warp(self, images: torch.Tensor, params: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        theta = affine_thetas(params, height, width).to(images.device)
        grid = F.affine_grid(theta, [n, 1, height, width], align_corners=True)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding, align_corners=True)
        flip = (params[:, 5] > 0.5).to(images.device)
        warped = torch.where(flip[:, None, None, None], warped.flip(-1), warped)
        brightness = params[:, 6].to(images.device)[:, None, None, None]
        warped = (warped * brightness).clamp_(0.0, 255.0)
        return torch.where(which.to(images.device)[:, None, None, None], warped, images)
