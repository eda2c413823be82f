"""ResNet backbones for DBNet, built in the project (no torchvision, no downloads).

The layout and parameter names follow torchvision's ``resnet18`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0`` ...), so a torchvision state dict saved locally
loads with :func:`load_backbone_weights`. ``width`` scales the channels of every stage
(``width * (1, 2, 4, 8)``); 64 is the standard ResNet-18, smaller widths give CPU demos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_number

# BasicBlocks per stage, keyed by the names users put in configs.
_DEPTHS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2)}
BACKBONES: tuple[str, ...] = tuple(_DEPTHS)
STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)

# Keys a torchvision checkpoint may hold that the backbone has no use for.
_IGNORED_PREFIXES = ("fc.",)
# Wrappers training scripts put around a state dict.
_WRAPPERS = ("state_dict", "model")
_SHOWN = 3  # problems listed per kind in a mismatch message


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's ``BasicBlock``)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, channels, stride)]
    layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """A BasicBlock ResNet that returns the four stage outputs C2..C5.

    Args:
        arch: Backbone name, one of ``BACKBONES`` (``"resnet18"``).
        width: Channels of the first stage; the stages have ``width * (1, 2, 4, 8)``.
        zero_init_residual: Start the last BN of each block at zero, so every block begins
            as the identity (Goyal et al., 2017).

    Raises:
        ValueError: Unknown ``arch`` or a ``width`` below 1.
        TypeError: ``width`` is not an int.
    """

    def __init__(
        self, arch: str = "resnet18", width: int = 64, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        if arch not in _DEPTHS:
            raise ValueError(
                f"unknown backbone {arch!r}; valid backbones are {', '.join(BACKBONES)}"
            )
        check_number(
            "backbone width", width, integer=True, numpy=False, minimum=1, expected="at least 1"
        )
        self.arch = arch
        self.width = width
        self.out_channels: tuple[int, int, int, int] = (width, 2 * width, 4 * width, 8 * width)
        self.strides = STRIDES
        depths = _DEPTHS[arch]
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c2, c3, c4, c5 = self.out_channels
        self.layer1 = _stage(width, c2, depths[0], stride=1)
        self.layer2 = _stage(c2, c3, depths[1], stride=2)
        self.layer3 = _stage(c3, c4, depths[2], stride=2)
        self.layer4 = _stage(c4, c5, depths[3], stride=2)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """The state dict inside a checkpoint: unwrapped, prefixes stripped, ``fc.*`` dropped."""
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ValueError(
            f"weights '{path}' hold a {type(obj).__name__}, not a state dict; save one with "
            "torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}  # DistributedDataParallel
    if any(k.startswith("backbone.") for k in state):
        # A whole detector's checkpoint: only its backbone part is wanted here.
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    return {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}


def _listed(names: list[str], what: str) -> str:
    more = f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return f"{what} {', '.join(names[:_SHOWN])}{more}"


def _problems(state: dict[str, Any], expected: dict[str, torch.Tensor]) -> list[str]:
    # Old torchvision checkpoints predate BN's num_batches_tracked; BN fills it in itself.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = []
    for key, value in state.items():
        if key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            shapes.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            shapes.append(
                f"{key} has shape {tuple(value.shape)}, the model {tuple(expected[key].shape)}"
            )
    problems = []
    if missing:
        problems.append(_listed(missing, "missing keys"))
    if unexpected:
        problems.append(_listed(unexpected, "unexpected keys"))
    if shapes:
        more = f" (and {len(shapes) - 1} more mismatches)" if len(shapes) > 1 else ""
        problems.append(shapes[0] + more)
    return problems


def load_backbone_weights(backbone: ResNet, path: str | os.PathLike[str]) -> None:
    """Load a locally saved torchvision-style ResNet state dict into ``backbone``.

    The file is read with ``torch.load(weights_only=True)``, so it cannot run code. Accepted
    layouts: a plain state dict, one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``,
    and keys prefixed with ``module.`` (DistributedDataParallel) or ``backbone.`` (a whole
    detector's checkpoint, whose other parts are then left out). ``fc.*`` keys of an
    ImageNet classifier are ignored.

    Args:
        backbone: The backbone to fill in place.
        path: A ``.pth`` file.

    Raises:
        TypeError: ``backbone`` is not a :class:`ResNet`.
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file cannot be read, is not a state dict, or its keys or shapes do
            not fit ``backbone``; the message names the file and the first problems.
    """
    if not isinstance(backbone, ResNet):
        raise TypeError(f"backbone must be a ResNet, got {type(backbone).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights '{path}' do not exist; save a torchvision {backbone.arch} "
            "state dict there, or set model.weights to null to start from random weights"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise ValueError(f"cannot read backbone weights '{path}': {e}") from e
    state = _unwrap(obj, path)
    problems = _problems(state, backbone.state_dict())
    if problems:
        raise ValueError(
            f"weights '{path}' do not fit backbone {backbone.arch} (width {backbone.width}): "
            f"{'; '.join(problems)}; use a {backbone.arch} state dict saved for this width"
        )
    backbone.load_state_dict(state, strict=True)
