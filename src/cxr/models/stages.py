"""Stages of library backbones (for `freeze: stages:N`) and the layer lookups of Grad-CAM.

A stage is a `StageGroup`: a view of some modules and parameters of a backbone (never registered on it,
so state dicts are unchanged) with ``parameters()`` and ``modules()`` for freezing. The stages of a
backbone together hold every one of its parameters, in forward order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.suggest import did_you_mean


class StageGroup(nn.Module):
    """Some modules (and loose parameters) of a backbone, seen together as one stage."""

    def __init__(self, modules: Iterable[nn.Module] = (), params: Iterable[nn.Parameter] = ()) -> None:
        super().__init__()
        for module in modules:
            self.add(module)
        for param in params:
            self.add_param(param)

    def add(self, module: nn.Module) -> None:
        self.add_module(str(len(self._modules)), module)

    def add_param(self, param: nn.Parameter) -> None:
        self.register_parameter(f"p{len(self._parameters)}", param)

    def empty(self) -> bool:
        return not self._modules and not self._parameters


def groups_of_paths(model: nn.Module, groups: Sequence[Sequence[str]]) -> list[StageGroup]:
    """One StageGroup per list of module paths of `model` ('layer1', 'features.denseblock1')."""
    return [StageGroup(model.get_submodule(path) for path in paths) for paths in groups]


def groups_at_boundaries(model: nn.Module, boundaries: Sequence[str]) -> list[StageGroup]:
    """Split `model` into one stage per boundary module path (timm's ``feature_info`` modules).

    Modules are taken in registration order; a stage ends with its boundary module. Loose parameters
    (a ViT's ``cls_token``) join the stage running when their module is reached; whatever follows the
    last boundary (final norms, the head) joins the last stage. No boundary: one stage holds everything.
    """
    wanted = set(boundaries)
    groups = [StageGroup()]

    def visit(module: nn.Module, prefix: str) -> None:
        for param in module.parameters(recurse=False):
            groups[-1].add_param(param)
        for name, child in module.named_children():
            path = prefix + name
            if path in wanted:
                groups[-1].add(child)
                groups.append(StageGroup())
            elif any(b.startswith(path + ".") for b in wanted):
                visit(child, path + ".")
            else:
                groups[-1].add(child)

    visit(model, "")
    trailing = groups.pop()
    if not groups:
        return [trailing]
    for module in trailing.children():
        groups[-1].add(module)
    for param in trailing.parameters(recurse=False):
        groups[-1].add_param(param)
    return groups


def find_layer(backbone: nn.Module, path: str) -> nn.Module:
    """The module at `path` inside a backbone: a path of the library model (``layer4``, ``stages.3``,
    ``features.denseblock4``) or of the backbone itself; a CxrError lists close names."""
    roots = [r for r in (getattr(backbone, "model", None), backbone) if isinstance(r, nn.Module)]
    for root in roots:
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    names = [n for root in roots[:1] for n, _ in root.named_modules() if n]
    raise CxrError(f"model.cam_layer {path!r} is no layer of the backbone{did_you_mean(path, names)}; "
                   f"`cxr model summary` lists the layers (leave the 'backbone.' / 'backbone.model.' prefix out)")


def tokens_to_map(tokens: torch.Tensor, prefix_tokens: int, grid: tuple[int, int] | None) -> torch.Tensor:
    """Transformer tokens (N, L, C) -> feature map (N, C, h, w): prefix tokens (class, registers) are
    dropped and the patch tokens laid out on their grid (square when `grid` is None)."""
    patches = tokens[:, prefix_tokens:]
    count = patches.shape[1]
    if grid is None:
        side = int(round(count**0.5))
        grid = (side, side)
    if grid[0] * grid[1] != count:
        raise CxrError(f"cannot lay {count} patch tokens out on a {grid[0]}x{grid[1]} grid")
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)


def as_feature_map(out: torch.Tensor, *, channels_last: bool, prefix_tokens: int,
                   grid: tuple[int, int] | None) -> torch.Tensor:
    """A layer output as (N, C, h, w): NCHW as it is, NHWC permuted, tokens laid out on their grid."""
    if out.dim() == 4:
        return out.permute(0, 3, 1, 2) if channels_last else out
    if out.dim() == 3:
        return tokens_to_map(out, prefix_tokens, grid)
    raise CxrError(f"expected a (N, C, h, w) map or (N, L, C) tokens, got shape {tuple(out.shape)}")


def replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make the first convolution of `model` take `in_channels` (a one-channel X-ray network)."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise CxrError(f"{type(model).__name__} has no convolution to take {in_channels} input channels")
    name, conv = found
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode)
    parent_path, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
