"""Never a signal: a truncated data.mdb is refused before it is mapped, a store growing under
several readers of one process never remaps their views, and a view outlives its reader's
close without faulting. Every case runs in its own process: a signal there fails the test
instead of killing the test run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = str(Path(__file__).resolve().parents[2])

READ = "import sys; from lmdb_cache import open_cache; r = open_cache(sys.argv[1]); r[r.keys()[0]]"

SURFACES = {
    "reader": lambda store: [sys.executable, "-c", READ, store],
    "validate-cache": lambda store: [BIN / "validate-cache", store],
    "cache-info": lambda store: [BIN / "cache-info", store],
    "build-cache": lambda store: [BIN / "build-cache", store.parent / "many", "-o", store, "-q"],
}

CUTS = {"0 bytes": 0.0, "one page": 4096, "10%": 0.1, "50%": 0.5, "90%": 0.9, "99%": 0.99}


def _run(command: list) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
@pytest.mark.parametrize("surface", SURFACES, ids=str)
def test_truncated_store_is_a_clear_error_not_a_signal(many_cache, surface, cut):
    data = many_cache / "data.mdb"
    os.truncate(data, cut if isinstance(cut, int) else int(data.stat().st_size * cut))
    done = _run(SURFACES[surface](many_cache))
    assert done.returncode in (1, 2), (done.returncode, done.stderr[-2000:])
    output = done.stdout + done.stderr
    assert str(data) in output and "truncated" in output
    if surface != "reader":
        assert "Traceback" not in output


GROWTH = textwrap.dedent(
    """
    import subprocess, sys
    from lmdb_cache import open_cache
    store, grow = sys.argv[1], sys.argv[2:]
    a, b = open_cache(store), open_cache(store)
    view = b.view(b.keys()[0]).image
    before = int(view.sum())
    subprocess.run(grow, check=True)  # another process grows the store well past its map
    a.refresh()
    print(len(a), int(view.sum()) == before)
    """
)


# A build whose map starts at 1 MiB instead of 1 GiB, so a small store outgrows it.
SMALL_MAP_BUILD = textwrap.dedent(
    """
    import sys
    from lmdb_cache import build_cache
    from lmdb_cache.write import store
    store.MIN_MAP_SIZE = 1 << 20
    build_cache(sys.argv[1], sys.argv[2], workers=1)
    """
)


@pytest.mark.slow
def test_growth_and_refresh_of_one_reader_leave_the_views_of_another_valid(tmp_path):
    from PIL import Image

    source = tmp_path / "src"
    source.mkdir()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(source / "first.png")
    store = tmp_path / "c.lmdb"
    build = [sys.executable, "-c", SMALL_MAP_BUILD, source, store]
    _run(build).check_returncode()
    # 24 x 10 MB of pixels: past the map the first build sized (128 MiB with its headroom),
    # so the writer grows it and a reader beginning a new snapshot meets the larger map.
    for i in range(24):
        Image.new("RGB", (2000, 1700), (i, 2 * i, 3 * i)).save(source / f"more_{i:02d}.png")
    done = _run([sys.executable, "-c", GROWTH, store, *build])
    assert (done.returncode, done.stdout.split()) == (0, ["25", "True"]), done.stderr[-2000:]


VIEW_AFTER_CLOSE = textwrap.dedent(
    """
    import sys
    from lmdb_cache import open_cache
    reader = open_cache(sys.argv[1])
    view = reader.view(reader.keys()[0]).image
    expected = int(view.sum())
    reader.close()
    print(int(view.sum()) == expected, int(view[1:3].sum()) >= 0)
    """
)


def test_view_of_a_closed_reader_does_not_fault(many_cache):
    done = _run([sys.executable, "-c", VIEW_AFTER_CLOSE, many_cache])
    assert (done.returncode, done.stdout.split()) == (0, ["True", "True"]), done.stderr[-2000:]
