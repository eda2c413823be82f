"""Checkpoints: model, optimizer and scheduler state with the run's resolved config.

Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: a checkpoint
holds tensors, numbers, strings, lists and dicts only, so loading one cannot run code.
Files are written to a temporary name and renamed, so a run killed while saving leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (plus a version tag) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` onto the CPU.

    Raises:
        CheckpointError: missing file, not a checkpoint, or a version this code cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist; ocr-train writes last.pt and best.pt into "
            "its output_dir"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"cannot read checkpoint '{path}': {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"'{path}' is not an ocr-train checkpoint (no 'model' entry)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has version {state.get('version')}, this code reads "
            f"{CHECKPOINT_VERSION}"
        )
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """Load a checkpoint's model weights, naming the file when they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit the configured model (check the model section "
            f"of the config against the one saved with the run): {e}"
        ) from e
