"""Ranks that agree on their data: under ``torchrun`` every rank proves it reads the same.

On a cluster each node often reads its own copy of a store and of the annotation files. A
stale or different copy on one node would train that node's ranks on other data without a
sign. So before the first step every rank takes the identity of what each dataset reads:

* ``images``: the store's identity (``CacheReader.identity``: its settings, keys and stored
  checksums, kept in the manifest, so taking it is O(1)) when the dataset reads a cache;
  reading from disk, a digest of the annotated file names and sizes (no pixel is read);
* ``annotations``: the SHA-256 of the annotation file,

and all ranks gather them. Any disagreement stops every rank with the same message, which
names the ranks, their hosts and the differing identities (``DataMismatchError``, exit 2).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.dataset import CacheSource, OCRDataset
from .distributed import DistInfo, gather_objects


class DataMismatchError(ValueError):
    """The ranks of a run read different data."""


class PeerFailedError(RuntimeError):
    """Another rank of the run could not start it (its own error names the cause)."""


def _file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


def _disk_digest(root: Path, keys: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(keys):
        try:
            size = (root / key).stat().st_size
        except OSError:
            size = -1  # a missing file fails when it is read; here it only differs
        digest.update(f"{key}\x00{size}\x00".encode("utf-8", "surrogatepass"))
    return "files:" + digest.hexdigest()[:32]


def data_identity(dataset: OCRDataset, dataset_cfg: dict[str, Any]) -> dict[str, str]:
    """The identity of what ``dataset`` (built from ``dataset_cfg``) reads."""
    source = dataset.source
    if isinstance(source, CacheSource):
        images = "store:" + source.reader.identity
    else:
        images = _disk_digest(Path(dataset_cfg["image_path"]), dataset.keys)
    return {"images": images, "annotations": _file_digest(dataset_cfg["annotation_path"])}


def check_ranks_agree(
    identities: dict[str, dict[str, str]], info: DistInfo, failure: Exception | None = None
) -> None:
    """Gather every rank's ``identities`` (split -> ``data_identity``) and raise on every
    rank unless all are equal. A collective call: every rank must make it, also one whose
    datasets could not be built (``failure``), so that its peers stop with it instead of
    waiting for it at their first step.

    Raises:
        DataMismatchError: names each differing item, and the ranks and hosts behind each
            value.
        PeerFailedError: on the other ranks, when one rank could not build its datasets.
    """
    if not info.enabled:
        return
    mine = {
        "host": socket.gethostname(),
        "data": identities,
        "error": None if failure is None else str(failure),
    }
    everyone = gather_objects(mine, info)
    if failure is not None:
        return  # the caller raises its own error
    failed = [f"rank {r} ({p['host']}): {p['error']}" for r, p in enumerate(everyone) if p["error"]]
    if failed:
        raise PeerFailedError("another rank could not start the run:\n  " + "\n  ".join(failed))
    lines = []
    for split in sorted({s for rank in everyone for s in rank["data"]}):
        for item in ("images", "annotations"):
            values: dict[str | None, list[str]] = {}
            for rank, part in enumerate(everyone):
                value = part["data"].get(split, {}).get(item)
                values.setdefault(value, []).append(f"{rank} ({part['host']})")
            if len(values) > 1:
                shown = "; ".join(
                    f"rank{'s' if len(r) > 1 else ''} {', '.join(r)}: {v}"
                    for v, r in values.items()
                )
                lines.append(f"  datasets.{split} {item}: {shown}")
    if lines:
        raise DataMismatchError(
            "the ranks of this run read different data:\n"
            + "\n".join(lines)
            + "\nMake every node's copy the same (copy the store again, or compare two copies "
            "with 'lmdb-cache diff A B', which names the records that differ), then start "
            "the run again"
        )
