"""Flushing files and renames to the disk: what makes "written beside, then renamed" survive
a crash of the machine, not only of the process (a rename can reach the disk before the data
it names)."""

from __future__ import annotations

import os


def sync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the system allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)
