"""Fixtures shared by the ocr tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run tiny models on one thread: intra-op threads gain nothing at this size, and when
    other processes share the cores they can slow a step down a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
