"""Device normalization against the formula."""

from __future__ import annotations

import pytest
import torch

from ocr.data.normalize import DeviceNormalizer


def test_device_normalization_matches_the_formula():
    nhwc = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8)
    batch = nhwc.permute(0, 3, 1, 2)  # the channels-first image, by hand
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    out = DeviceNormalizer("cpu", mean, std)(nhwc)
    assert out.shape == (2, 3, 8, 6) and out.is_contiguous()
    expected = (batch.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_device_normalization_refuses_float_batches():
    with pytest.raises(TypeError, match="uint8"):
        DeviceNormalizer("cpu")(torch.zeros(1, 2, 2, 3))


def test_device_normalization_refuses_channels_first_batches():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        DeviceNormalizer("cpu")(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
