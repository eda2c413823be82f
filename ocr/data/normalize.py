"""Normalization on the training device, after the host-to-device copy of uint8 batches.

The DataLoader hands over pinned uint8 batches (4x fewer bytes than float32 across the bus);
this converts them on the device, so the CPU does no float work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_MEAN = (0.5602, 0.5602, 0.5602)
DEFAULT_STD = (0.2539, 0.2539, 0.2539)


class DeviceNormalizer:
    """``(x / 255 - mean) / std`` per channel, computed on ``device``.

    Args:
        device: Where batches are normalized (``"cuda"`` when available).
        mean: Per-channel mean of pixel values scaled to [0, 1].
        std: Per-channel standard deviation, same scale.
    """

    def __init__(
        self,
        device: torch.device | str,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean}, {std}")
        self.device = torch.device(device)
        # Folded into one multiply-add: x * scale + shift.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(self.device)
        self.shift = (-mean_t / std_t).to(self.device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Copy an ``(N, H, W, 3)`` uint8 batch (``Batch.image``) to the device (non-blocking
        when pinned) and return it normalized there as a contiguous ``(N, 3, H, W)`` float32
        batch.

        Raises:
            TypeError: not a uint8 tensor.
            ValueError: not ``(N, H, W, 3)``.
        """
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 batch, got {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected an (N, H, W, 3) batch, got {tuple(images.shape)}")
        on_device = images.to(self.device, non_blocking=True)
        # Channels first on the device, on uint8 (a quarter of the bytes of float).
        nchw = on_device.permute(0, 3, 1, 2).contiguous()
        return torch.addcmul(self.shift, nchw.float(), self.scale)
