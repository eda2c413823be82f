"""DBNet: a ResNet backbone, an FPN neck and the differentiable-binarization head.

Liao et al., "Real-time Scene Text Detection with Differentiable Binarization" (AAAI 2020);
the layout follows the authors' code (MhLiao/DB). In training mode the model returns the
probability, threshold and approximate binary maps the loss needs; in eval mode it skips the
threshold branch, since post-processing reads only the probability map.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .backbone import ResNet, load_backbone_weights
from .head import DBHead
from .neck import FPN

_STRIDE = 32  # the coarsest backbone stage; inputs must divide into it exactly


class DBNet(nn.Module):
    """DBNet text detector.

    Args:
        backbone: Backbone name (``"resnet18"``).
        width: Channels of the first backbone stage; 64 is the standard ResNet-18.
        inner_channels: FPN channels; a positive multiple of 4.
        k: Steepness of the binarization ``sigmoid(k * (P - T))``.
        weights: A local ``.pth`` of torchvision-style backbone weights to start from, or
            None for random initialization (see :func:`load_backbone_weights`).

    Raises:
        ValueError: An unknown backbone, a bad size, or weights that do not fit.
        TypeError: A size of the wrong type.
        FileNotFoundError: ``weights`` names a file that does not exist.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        width: int = 64,
        inner_channels: int = 256,
        k: float = 50.0,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, width)
        self.neck = FPN(self.backbone.out_channels, inner_channels)
        self.head = DBHead(inner_channels, k)
        if weights is not None:
            load_backbone_weights(self.backbone, weights)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect text in a batch of normalized images.

        Args:
            x: Images (N, 3, H, W), floating point, H and W multiples of 32.

        Returns:
            Maps (N, 1, H, W): ``prob_logits`` and ``prob`` always; in training mode also
            ``thresh`` and ``binary``.

        Raises:
            TypeError: ``x`` is not a floating-point tensor.
            ValueError: ``x`` is not (N, 3, H, W) or H, W are not multiples of 32.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DBNet takes a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"DBNet takes normalized float images, got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DBNet takes images of shape (N, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % _STRIDE or w % _STRIDE:
            fit_h, fit_w = -(-h // _STRIDE) * _STRIDE, -(-w // _STRIDE) * _STRIDE
            raise ValueError(
                f"DBNet needs a height and width that are multiples of {_STRIDE}, got {h}x{w}; "
                f"pad or resize the images (e.g. to {fit_h}x{fit_w})"
            )
        fused = self.neck(self.backbone(x))
        return self.head(fused, with_thresh=self.training)
