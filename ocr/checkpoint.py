"""Checkpoints: model, optimizer and scheduler state, the random states and the run's resolved
config.

Saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: a checkpoint
holds tensors, numbers, strings, lists and dicts only, so loading one cannot run code.
Files are written to a temporary name, fsynced and renamed, so a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmdb_cache.durable import sync_folder

CHECKPOINT_VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path names no file."""


class NotACheckpointError(CheckpointError):
    """The file is not a checkpoint written by ``ocr-train`` (a JSON file, a state dict...)."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (plus a version tag) atomically to ``path``.

    The file is written beside ``path`` (``<name>.tmp``), flushed to the disk, renamed over
    ``path``, and the rename flushed too: a process killed at any moment, or a machine that
    loses power, leaves either the previous checkpoint or the new one, whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"version": CHECKPOINT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync_folder(path.parent)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` onto the CPU.

    Raises:
        CheckpointNotFoundError: no such file.
        NotACheckpointError: a file of another kind, or a PyTorch file not written by
            ``ocr-train``.
        CheckpointError: a damaged checkpoint, or a version this code cannot read.
    """
    path = Path(path)
    if path.is_dir():
        raise NotACheckpointError(
            f"'{path}' is a folder, not a checkpoint; pass {path / 'last.pt'} or best.pt"
        )
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint '{path}' does not exist; ocr-train writes last.pt and best.pt into "
            "its output_dir"
        )
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a class: not a file of ours
        raise NotACheckpointError(
            f"'{path}' is not a checkpoint of ocr-train: it holds Python objects other than "
            "tensors and plain values (a whole pickled model, or another program's file)"
        ) from e
    except Exception as e:  # torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint '{path}' is damaged: {first}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise NotACheckpointError(
            f"'{path}' is not a checkpoint of ocr-train (a PyTorch file without a 'model' "
            "entry; backbone weights go to model.weights)"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has version {state.get('version')}, this code reads "
            f"{CHECKPOINT_VERSION}"
        )
    return state


def _check_archive(path: Path) -> None:
    """Tell a file of another kind and a cut-short checkpoint apart before torch reads it
    (torch's own errors for both advise unsafe loading or print a C++ assertion)."""
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise NotACheckpointError(
            f"'{path}' is not a checkpoint of ocr-train (not a PyTorch file); pass the last.pt "
            "or best.pt of a run folder"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is damaged: the file is cut short or corrupted ({e}); use "
            "another checkpoint of the run (best.pt or last.pt)"
        ) from e
    if not any(name.endswith("/data.pkl") for name in names):
        raise NotACheckpointError(
            f"'{path}' is not a checkpoint of ocr-train (a zip archive, not a PyTorch file)"
        )


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """Load a checkpoint's model weights, naming the file when they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        # torch lists every tensor that differs (over a hundred lines for another width).
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        first = f"{len(lines)} differences, the first: {lines[0]}" if lines else str(e)
        raise CheckpointError(
            f"checkpoint '{path}' does not fit the configured model ({first}); check the "
            "model section of the config against the one saved with the run"
        ) from e


def rng_state(
    device: torch.device, generators: Mapping[str, torch.Generator] | None = None
) -> dict[str, Any]:
    """This process's random states, as values a checkpoint can hold.

    Args:
        device: The run's device: a GPU's generator is saved too.
        generators: Other generators to save by name (a DataLoader's, whose draws seed its
            workers).

    Returns:
        torch's, numpy's and Python's global states, the GPU's and the named generators'.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss_next,
        },
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(
    state: dict[str, Any],
    device: torch.device,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Restore the states ``rng_state`` returned (``generators`` by name)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])
