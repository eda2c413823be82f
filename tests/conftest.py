"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------
# Shared test data
#
# Real images (SROIE receipts, the EXIF orientation samples) live outside the repository in
# ``../shared/data`` beside the project root (see ../shared/README.md); they must never be
# copied into the repository. Set LMDB_CACHE_SHARED_DATA to use another folder. Tests that need
# them skip with a clear reason when the folder is absent, so the default run needs no data.
# ---------------------------------------------------------------------------------------------

SHARED_DATA_ENV = "LMDB_CACHE_SHARED_DATA"


def _shared_data_root() -> Path:
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _missing_reason(path: Path) -> str:
    return (
        f"shared test data not found at {path}; these tests need ../shared/data from the "
        f"project's shared folder (or set {SHARED_DATA_ENV} to its location)"
    )


def _shared_subdir(*parts: str) -> Path:
    path = _shared_data_root().joinpath(*parts)
    if not path.is_dir():
        pytest.skip(_missing_reason(path))
    return path


@pytest.fixture(scope="session")
def exif_dir() -> Path:
    """``exif-orientation/``: Landscape_N.jpg and Portrait_N.jpg for N = 0..8."""
    return _shared_subdir("exif-orientation")


@pytest.fixture(scope="session")
def sroie_img_dir() -> Path:
    """``sroie-dev/img/``: 105 scanned receipts as JPEG."""
    return _shared_subdir("sroie-dev", "img")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One test per receipt, with the file name as id, for tests asking for ``sroie_image_path``;
    # the list is needed at collection time, before any fixture runs.
    if "sroie_image_path" not in metafunc.fixturenames:
        return
    img_dir = _shared_data_root() / "sroie-dev" / "img"
    if img_dir.is_dir():
        paths = sorted(p for p in img_dir.iterdir() if p.is_file())
        metafunc.parametrize("sroie_image_path", paths, ids=[p.name for p in paths])
    else:
        skipped = pytest.param(None, marks=pytest.mark.skip(reason=_missing_reason(img_dir)))
        metafunc.parametrize("sroie_image_path", [skipped], ids=["no-shared-data"])
