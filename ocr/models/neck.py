"""DBNet's feature pyramid: fuses C2..C5 into one map at 1/4 of the input resolution.

As in the reference DBNet (MhLiao/DB, ``SegDetector``): 1x1 lateral convolutions to
``inner_channels``, a top-down pathway (nearest x2 upsampling and addition), 3x3 smoothing
convolutions to ``inner_channels // 4`` each, then P3..P5 upsampled to the size of P2 and the
four maps concatenated (P5, P4, P3, P2) into ``inner_channels`` channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number


class FPN(nn.Module):
    """Feature pyramid neck of DBNet.

    Args:
        in_channels: Channels of C2, C3, C4, C5.
        inner_channels: Channels of the lateral maps and of the fused output; a multiple
            of 4.

    Raises:
        ValueError: Not four input levels, or ``inner_channels`` not a positive multiple
            of 4.
        TypeError: ``inner_channels`` is not an int.
    """

    def __init__(self, in_channels: Sequence[int], inner_channels: int = 256) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPN takes 4 feature levels (C2..C5), got {len(in_channels)}")
        check_number("inner_channels", inner_channels, integer=True, numpy=False)
        if inner_channels < 4 or inner_channels % 4:
            raise ValueError(
                f"inner_channels must be a positive multiple of 4 (the fused map concatenates "
                f"4 levels of inner_channels // 4), got {inner_channels}"
            )
        self.out_channels = inner_channels
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, inner_channels, 1, bias=False) for c in in_channels
        )
        self.smooth = nn.ModuleList(
            nn.Conv2d(inner_channels, inner_channels // 4, 3, padding=1, bias=False)
            for _ in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.append(
                lateral + F.interpolate(merged[-1], size=lateral.shape[-2:], mode="nearest")
            )
        merged.reverse()  # P2, P3, P4, P5
        size = merged[0].shape[-2:]
        outs = []
        for i, (conv, p) in enumerate(zip(self.smooth, merged, strict=True)):
            out = conv(p)
            outs.append(out if i == 0 else F.interpolate(out, size=size, mode="nearest"))
        return torch.cat(outs[::-1], dim=1)
