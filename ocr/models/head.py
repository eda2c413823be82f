"""DBNet's head: probability and threshold maps, and their differentiable binarization.

Each branch is conv3x3 (inner -> inner/4) + BN + ReLU, ConvTranspose2d(2x2, stride 2) + BN +
ReLU, ConvTranspose2d(2x2, stride 2) to one channel, which brings the fused 1/4-resolution
map back to the input resolution. The approximate binary map is
``B = sigmoid(k * (P - T))`` (Liao et al., AAAI 2020, eq. 2).

The last layers' outputs are cast to float32 before the sigmoids, so under bf16 autocast the
maps (and the steep ``k * (P - T)``, where bf16 rounding of P would be amplified k times) are
computed in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_number


def _branch(inner_channels: int) -> nn.Sequential:
    mid = inner_channels // 4
    return nn.Sequential(
        nn.Conv2d(inner_channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, mid, 2, stride=2),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(mid, 1, 2, stride=2),
    )


class DBHead(nn.Module):
    """Probability branch, threshold branch and differentiable binarization.

    Args:
        inner_channels: Channels of the fused neck output; a positive multiple of 4.
        k: Steepness of the binarization ``sigmoid(k * (P - T))``.

    Raises:
        ValueError: ``inner_channels`` is not a positive multiple of 4, or ``k`` is not a
            positive finite number.
        TypeError: ``inner_channels`` is not an int, or ``k`` not a number.
    """

    def __init__(self, inner_channels: int = 256, k: float = 50.0) -> None:
        super().__init__()
        check_number("inner_channels", inner_channels, integer=True, numpy=False)
        if inner_channels < 4 or inner_channels % 4:
            raise ValueError(
                f"inner_channels must be a positive multiple of 4, got {inner_channels}"
            )
        check_number(
            "k",
            k,
            numpy=False,
            minimum=0,
            exclusive_minimum=True,
            finite=True,
            expected="a positive finite number",
        )
        self.k = float(k)
        self.prob = _branch(inner_channels)
        self.thresh = _branch(inner_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, fused: torch.Tensor, with_thresh: bool = True) -> dict[str, torch.Tensor]:
        """Maps at 4x the resolution of ``fused``, each (N, 1, H, W) float32.

        Args:
            fused: The neck output (N, inner_channels, H / 4, W / 4).
            with_thresh: Also run the threshold branch and return ``thresh`` and
                ``binary`` (training); without it only ``prob_logits`` and ``prob``.

        Returns:
            ``prob_logits``, ``prob`` and, with ``with_thresh``, ``thresh`` and ``binary``.
        """
        logits = self.prob(fused).float()
        prob = torch.sigmoid(logits)
        out = {"prob_logits": logits, "prob": prob}
        if with_thresh:
            thresh = torch.sigmoid(self.thresh(fused).float())
            out["thresh"] = thresh
            out["binary"] = torch.sigmoid(self.k * (prob - thresh))
        return out
